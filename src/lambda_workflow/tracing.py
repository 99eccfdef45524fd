"""OpenTelemetry traces of workflow instances (the ``lambda-workflow[otel]`` extra).

``enable()`` switches tracing on for this process: every instance gets one trace, however
many activations it takes (``docs/observability.md``). Off (the default), nothing of
``opentelemetry`` is imported and the runtime's hooks cost one ``is None`` test each.
On AWS, the handlers switch it on when ``LAMBDA_WORKFLOW_TRACING`` is ``1``, ``true`` or
``on``.
"""

from __future__ import annotations

import os
from typing import Any

from . import _observe

__all__ = ["disable", "enable", "enable_from_environment", "is_enabled"]

ENVIRONMENT_VARIABLE = "LAMBDA_WORKFLOW_TRACING"


def enable(tracer_provider: Any = None) -> None:
    """Trace workflow activations, operations and services with ``tracer_provider`` (an
    OpenTelemetry ``TracerProvider``; default: the global one).

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``pip install
            'lambda-workflow[otel]'``).
    """
    try:
        from ._observe.otel import Tracing
    except ImportError as exc:
        raise ImportError(
            f"tracing needs OpenTelemetry ({exc}); install it with "
            "pip install 'lambda-workflow[otel]'") from None
    _observe.TRACING = Tracing(tracer_provider)


def disable() -> None:
    """Stop tracing (the default)."""
    _observe.TRACING = None


def is_enabled() -> bool:
    """Whether tracing is on in this process."""
    return _observe.TRACING is not None


def enable_from_environment() -> bool:
    """Enable tracing if ``LAMBDA_WORKFLOW_TRACING`` says so (``1``, ``true``, ``on``,
    ``yes``); returns whether tracing is on."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if value in ("1", "true", "on", "yes") and _observe.TRACING is None:
        enable()
    elif value not in ("", "0", "false", "off", "no", "1", "true", "on", "yes"):
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be one of 1, true, on, yes, 0, false, "
                         f"off, no; got {value!r}")
    return _observe.TRACING is not None
