"""Observability hooks the runtime calls: traces (``otel.py``), EMF metrics
(``lambda_workflow.aws.metrics``) and structured logs (``lambda_workflow.logs``).

This module is what the engine imports: it holds the switch and loads nothing else. While
tracing is off, :data:`TRACING` is ``None``, every hook is one ``is None`` test, and
``opentelemetry`` is never imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ..models import CallRequestMessage
    from .otel import Tracing

__all__ = ["TRACING", "serve_traced"]

#: The active tracing (``lambda_workflow.tracing.enable``), or ``None``.
TRACING: Tracing | None = None

T = TypeVar("T")


def serve_traced(service: str, request: CallRequestMessage,
                 run: Callable[[], tuple[bool, T]]) -> tuple[bool, T]:
    """Run a service function (``run`` returns ``(ok, payload)``) inside a span that joins the
    calling workflow's trace through the request's ``traceparent``; just ``run()`` while
    tracing is off."""
    tracing = TRACING
    if tracing is None:
        return run()
    return tracing.serve(service, request, run)
