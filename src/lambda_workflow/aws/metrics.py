"""Metrics from the Lambda handlers in CloudWatch Embedded Metric Format (EMF).

Each invocation of the workflow function writes its metrics as JSON lines on standard output
(CloudWatch Logs turns them into metrics; no API call, no dependency): one document with the
function's counts, and one per operation kind with the operations the invocation created.
The metrics and the alarms to set on them are in ``docs/observability.md``.

Switch: ``LAMBDA_WORKFLOW_METRICS`` = ``on`` / ``off`` (default: on inside Lambda, that is
when ``AWS_LAMBDA_FUNCTION_NAME`` is set); ``LAMBDA_WORKFLOW_METRICS_NAMESPACE`` names the
namespace (default ``LambdaWorkflow``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .._runtime.engine import ActivationReport

__all__ = ["DEFAULT_NAMESPACE", "InvocationMetrics", "emf_document", "metrics_enabled"]

DEFAULT_NAMESPACE = "LambdaWorkflow"
_SWITCH = "LAMBDA_WORKFLOW_METRICS"
_NAMESPACE = "LAMBDA_WORKFLOW_METRICS_NAMESPACE"
# The EMF limits: 100 metrics per directive, 30 dimensions per set, 100 values per metric.
_MAX_VALUES = 100


def metrics_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the handlers write EMF metrics (``LAMBDA_WORKFLOW_METRICS``, see above).

    Raises:
        ValueError: the variable holds something other than on/off (1/0, true/false).
    """
    env = os.environ if environ is None else environ
    value = env.get(_SWITCH, "").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    if value:
        raise ValueError(f"{_SWITCH} must be on or off (1/0, true/false, yes/no); got "
                         f"{value!r}")
    return bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))


def emf_document(namespace: str, dimensions: dict[str, str],
                 metrics: dict[str, tuple[str, float | list[float]]],
                 timestamp_ms: int) -> dict[str, Any]:
    """One EMF document: ``metrics`` maps a name to ``(unit, value or values)``; every
    dimension is in the one dimension set.

    Raises:
        ValueError: no metric, more than 100 metrics or 30 dimensions, or a metric that has
            the name of a dimension (EMF reads both from the same top-level members).
    """
    if not metrics or len(metrics) > 100 or len(dimensions) > 30:
        raise ValueError(f"an EMF document holds 1 to 100 metrics and at most 30 dimensions; "
                         f"got {len(metrics)} metrics, {len(dimensions)} dimensions")
    clash = set(metrics) & set(dimensions)
    if clash:
        raise ValueError(f"metric names {sorted(clash)} are also dimension names")
    doc: dict[str, Any] = {
        "_aws": {"Timestamp": timestamp_ms,
                 "CloudWatchMetrics": [{
                     "Namespace": namespace,
                     "Dimensions": [list(dimensions)],
                     "Metrics": [{"Name": name, "Unit": unit}
                                 for name, (unit, _) in metrics.items()]}]},
        **dimensions}
    for name, (_, value) in metrics.items():
        doc[name] = value[-_MAX_VALUES:] if isinstance(value, list) else value
    return doc


@dataclass
class InvocationMetrics:
    """What one invocation of the workflow function did, written as EMF by :meth:`flush`."""

    namespace: str = DEFAULT_NAMESPACE
    function: str = "local"
    activations: int = 0
    messages: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    activation_errors: int = 0
    dead_letters: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    replay_ms: list[float] = field(default_factory=list)
    operations: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls) -> InvocationMetrics | None:
        """The collector of an invocation, or ``None`` when metrics are off."""
        if not metrics_enabled():
            return None
        return cls(namespace=os.environ.get(_NAMESPACE) or DEFAULT_NAMESPACE,
                   function=os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "local")

    def activation(self, report: ActivationReport, messages: int) -> None:
        """Count an activation from its report."""
        self.activations += 1
        self.messages += messages
        self.completed += report.status == "completed"
        self.failed += report.status == "failed"
        self.cancelled += report.status == "cancelled"
        cache = getattr(report, "cache", "off")
        self.cache_hits += cache == "hit"
        self.cache_misses += cache == "miss"
        self.replay_ms.append(round(report.replay_seconds * 1000, 3))
        for kind, n in report.created.items():
            self.operations[kind] = self.operations.get(kind, 0) + n

    def documents(self, timestamp_ms: int | None = None) -> list[dict[str, Any]]:
        """The EMF documents of this invocation (none if it did nothing)."""
        if not (self.activations or self.dead_letters or self.activation_errors):
            return []
        at = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        dims = {"Function": self.function}
        counts: dict[str, tuple[str, float | list[float]]] = {
            "Activations": ("Count", self.activations),
            "Messages": ("Count", self.messages),
            "WorkflowsCompleted": ("Count", self.completed),
            "WorkflowsFailed": ("Count", self.failed),
            "WorkflowsCancelled": ("Count", self.cancelled),
            "ActivationErrors": ("Count", self.activation_errors),
            "DeadLetters": ("Count", self.dead_letters),
            "CacheHits": ("Count", self.cache_hits),
            "CacheMisses": ("Count", self.cache_misses)}
        if self.replay_ms:
            counts["ReplayTime"] = ("Milliseconds", self.replay_ms)
        docs = [emf_document(self.namespace, dims, counts, at)]
        for kind, n in sorted(self.operations.items()):
            docs.append(emf_document(self.namespace, {**dims, "OperationKind": kind},
                                     {"Operations": ("Count", n)}, at))
        return docs

    def flush(self, write: Callable[[str], object] | None = None) -> None:
        """Write the documents, one JSON line each (to standard output by default)."""
        out = write if write is not None else sys.stdout.write
        for doc in self.documents():
            out(orjson.dumps(doc).decode() + "\n")
