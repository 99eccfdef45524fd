"""OpenTelemetry traces across activations (loaded by ``lambda_workflow.tracing.enable``).

Design:

* One trace per instance. Its context (trace id, the starter's span, the sampled flag) is
  recorded in the instance's history as a ``trace`` record (op id ``trace``, outside the
  workflow's own order, like ``parent``), by the first activation that runs with tracing on:
  from the start message's ``traceparent`` (the starter's current span) if it has one, else a
  new trace id derived from the workflow id and creation time (so a re-derivation, before the
  record is read back, names the same trace). Every activation reads it back.
* Span ids are derived, not drawn: the instance's span, each activation's span and each
  operation's span have ids fixed by (trace id, workflow id, what they are). A span emitted in
  one activation can therefore name, as its parent, the span of an activation that ended
  long ago, and a call's request can carry the id of the call's span before that span is
  emitted (a service's span joins the trace under it). With the SDK's tracer the chosen ids
  are the spans' ids; another tracer picks its own ids and only the parent links name them.
* An operation's span is emitted once, by the activation that records its outcome, with its
  start and end from the records (created at / resolved at). Replayed operations emit nothing:
  only outcomes the store reports as recorded by this activation (``report.applied``) and
  operations new in it that finished (steps) are spanned. The instance's span is emitted when
  it ends, from its creation to its end.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from .. import _core
from .._opnames import label_of, service_of
from ..models import OperationRecord, OperationState, StartMessage, WorkflowMessage

if TYPE_CHECKING:
    from .._runtime.engine import ActivationReport
    from .._runtime.replay import ReplayResult, StagedResult
    from ..models import CallRequestMessage, History

__all__ = ["TRACE_KIND", "TRACE_OP_ID", "ActivationTrace", "Tracing", "parse_traceparent"]

TRACE_OP_ID = "trace"
TRACE_KIND = "trace"
TRACE_SEQ = -3
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Operations that get a span (patch markers, cancel and link records do not).
_SPANNED = frozenset({"call", "step", "timer", "callback", "child", "context", "heartbeat"})
_ATTR = "lambda_workflow."
T = TypeVar("T")
_log = logging.getLogger("lambda_workflow.tracing")


def _tracing_failed(what: str) -> None:
    """Tracing never fails the work it observes (a span processor or exporter that raises,
    a trace record that cannot be read): the spans are lost, and a warning says why."""
    _log.warning("tracing: %s failed; its spans are lost", what, exc_info=True)


def parse_traceparent(value: str) -> tuple[int, int, int]:
    """``(trace id, span id, flags)`` of a W3C ``traceparent`` (version 00).

    Raises:
        ValueError: not ``00-<32 hex>-<16 hex>-<2 hex>`` with non-zero ids.
    """
    m = _TRACEPARENT.fullmatch(value)
    if m is None or int(m[1], 16) == 0 or int(m[2], 16) == 0:
        raise ValueError(f"a traceparent must be '00-<32 hex digits>-<16 hex digits>-<2 hex "
                         f"digits>' with non-zero ids (W3C Trace Context), got {value[:80]!r}")
    return int(m[1], 16), int(m[2], 16), int(m[3], 16)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _derived(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _ChosenIds(threading.local):
    """The SDK tracer's id generator, wrapped: the next span (and trace) id can be chosen,
    per thread (a span started meanwhile in another thread draws its own)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.span_id: int | None = None
        self.trace_id: int | None = None

    def generate_span_id(self) -> int:
        chosen, self.span_id = self.span_id, None
        return chosen if chosen is not None else int(self.inner.generate_span_id())

    def generate_trace_id(self) -> int:
        chosen, self.trace_id = self.trace_id, None
        return chosen if chosen is not None else int(self.inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return False


def _error_of(payload: bytes | None) -> tuple[str, str]:
    try:
        err = orjson.loads(payload or b"{}")
    except orjson.JSONDecodeError:
        return "Error", ""
    if not isinstance(err, dict):
        return "Error", str(err)
    return str(err.get("type", "Error")), str(err.get("message", ""))


class Tracing:
    """Tracing switched on: a tracer (from ``provider``, else the global provider, looked
    up at the first span: a handler module may be created before the application sets the
    global provider)."""

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self._tracer: Any = None
        self._ids: _ChosenIds | None = None

    @property
    def tracer(self) -> Any:
        if self._tracer is None:
            from .. import __version__

            provider = (self._provider if self._provider is not None
                        else trace_api.get_tracer_provider())
            tracer: Any = provider.get_tracer("lambda_workflow", __version__)
            inner = getattr(tracer, "id_generator", None)
            if inner is not None:
                self._ids = _ChosenIds(inner)
                tracer.id_generator = self._ids
            if isinstance(provider, trace_api.ProxyTracerProvider):
                return tracer  # no provider set yet: look again at the next span
            self._tracer = tracer
        return self._tracer

    # -- the starter ------------------------------------------------------------------------
    @staticmethod
    def start_traceparent() -> str | None:
        """The ``traceparent`` of the starter's current span, if it has a valid one."""
        ctx = trace_api.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))

    # -- activations ------------------------------------------------------------------------
    def begin(self, history: History, messages: Sequence[WorkflowMessage], activation: int,
              now: float) -> ActivationTrace | None:
        """The trace of an activation starting now (``None``: its context cannot be had,
        and the activation runs untraced)."""
        try:
            return ActivationTrace(self, history, messages, activation, now)
        except Exception:
            _tracing_failed(f"activation {activation} of {history.instance.workflow_id!r}")
            return None

    def emit(self, name: str, trace_id: int, flags: int, span_id: int, parent_id: int | None,
             start: float, end: float, attributes: Mapping[str, Any],
             error: tuple[str, str] | None = None, kind: SpanKind = SpanKind.INTERNAL) -> None:
        """One finished span with a chosen id, parent, start and end."""
        if parent_id is not None:
            ctx = trace_api.set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id, parent_id, is_remote=True, trace_flags=TraceFlags(flags))))
        else:
            ctx = Context()
        tracer = self.tracer
        ids = self._ids
        if ids is not None:
            ids.span_id, ids.trace_id = span_id, trace_id
        try:
            span = tracer.start_span(name, context=ctx, kind=kind,
                                          attributes=dict(attributes), start_time=_ns(start))
        finally:
            if ids is not None:
                ids.span_id = ids.trace_id = None
        if error is not None:
            _set_error(span, error, _ns(end))
        span.end(end_time=_ns(end))

    # -- services -----------------------------------------------------------------------------
    def serve(self, service: str, request: CallRequestMessage,
              run: Callable[[], tuple[bool, T]]) -> tuple[bool, T]:
        """Run a service function in a span under the call's span (from the request's
        ``traceparent``; a request without one starts its own trace)."""
        ctx: Context | None = None
        parent = _parsed(request.traceparent)
        if parent is not None:
            trace_id, span_id, flags = parent
            ctx = trace_api.set_span_in_context(NonRecordingSpan(SpanContext(
                trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))))
        try:
            span = self.tracer.start_span(
                f"service {service}", context=ctx, kind=SpanKind.SERVER,
                attributes={_ATTR + "service": service,
                            _ATTR + "workflow_id": request.workflow_id,
                            _ATTR + "operation.id": request.call_id})
            token = otel_context.attach(trace_api.set_span_in_context(span))
        except Exception:
            _tracing_failed(f"the span of service {service!r}")
            return run()
        try:
            ok, payload = run()
        except BaseException as exc:
            _end_service_span(span, token, (type(exc).__name__, str(exc)))
            raise
        _end_service_span(span, token, None if ok else _error_of(
            payload if isinstance(payload, bytes) else None))
        return ok, payload


def _end_service_span(span: Any, token: object, error: tuple[str, str] | None) -> None:
    try:
        otel_context.detach(token)  # type: ignore[arg-type]
        if error is not None:
            _set_error(span, error, None)
        span.end()
    except Exception:
        _tracing_failed("ending a service's span")


def _parsed(traceparent: str | None) -> tuple[int, int, int] | None:
    """A message's ``traceparent`` (its shape is checked by the message model), or ``None``
    for none or for zero ids, which W3C calls invalid: the work starts a trace of its own
    rather than failing on every delivery."""
    if traceparent is None:
        return None
    try:
        return parse_traceparent(traceparent)
    except ValueError:
        return None


def _set_error(span: Any, error: tuple[str, str], at: int | None) -> None:
    error_type, message = error
    span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
    span.add_event("exception", {"exception.type": error_type, "exception.message": message},
                   timestamp=at)


class ActivationTrace:
    """The trace of one activation: its instance's trace context, and the spans it emits
    when it ends."""

    def __init__(self, tracing: Tracing, history: History,
                 messages: Sequence[WorkflowMessage], activation: int, now: float) -> None:
        self.tracing = tracing
        inst = history.instance
        self.workflow_id = inst.workflow_id
        self.workflow_name = inst.workflow_name
        self.created_at = inst.created_at
        self.activation = activation
        self.now = now
        self._began = time.perf_counter()
        #: The ``trace`` record to add to the history (``None``: it has one).
        self.record: OperationRecord | None = None
        recorded: OperationRecord | None = None
        # The run: 0, then one more after each repair (a reset or resume reopens the
        # instance, which ends again): each run has its own instance span.
        self.run, self.run_started = 0, inst.created_at
        for op in history.operations:
            if op.kind == TRACE_KIND:
                recorded = op
            elif op.kind == "repair":
                self.run += 1
                self.run_started = max(self.run_started, op.created_at)
        if recorded is not None:
            ctx = orjson.loads(recorded.request)
            self.trace_id = int(ctx["trace_id"], 16)
            parent = ctx.get("parent")
            self.parent_id: int | None = int(parent, 16) if parent else None
            self.flags = int(ctx.get("flags", "01"), 16)
        else:
            starter = next((parsed for m in messages if isinstance(m, StartMessage)
                            and (parsed := _parsed(m.traceparent)) is not None), None)
            if starter is not None:
                self.trace_id, self.parent_id, self.flags = starter
            else:
                self.trace_id = _derived("trace", inst.workflow_id, repr(inst.created_at)) | (
                    _derived("trace2", inst.workflow_id, repr(inst.created_at)) << 64)
                self.parent_id, self.flags = None, 1
            request = orjson.dumps({"trace_id": f"{self.trace_id:032x}",
                                    "parent": (f"{self.parent_id:016x}"
                                               if self.parent_id is not None else None),
                                    "flags": f"{self.flags:02x}"})
            self.record = OperationRecord(
                inst.workflow_id, TRACE_OP_ID, TRACE_SEQ, TRACE_KIND, TRACE_KIND, request,
                _core.digest(request), state=OperationState.COMPLETED,
                result=b"null", created_in=activation, resolved_in=activation, created_at=now,
                resolved_at=now)

    # -- ids ------------------------------------------------------------------------------------
    def span_id(self, what: str) -> int:
        return _derived(f"{self.trace_id:032x}", self.workflow_id, what)

    @property
    def instance_span(self) -> int:
        """The id of this run's instance span."""
        return self.span_id(f"workflow:{self.run}" if self.run else "workflow")

    def operation_parent(self, op: OperationRecord) -> str:
        """The ``traceparent`` a call's request (or a child's start) carries: the span of the
        operation, which is emitted when its outcome is recorded."""
        return format_traceparent(self.trace_id, self.span_id(f"op:{op.op_id}"), self.flags)

    # -- the end of the activation ------------------------------------------------------------
    def end(self, report: ActivationReport, history: History, result: ReplayResult,
            staged: Mapping[str, StagedResult]) -> None:
        """Emit the spans of this activation: its own (from the activation's time, as long
        as it took), those of the operations whose outcome it recorded, and the instance's
        when the instance ended. A failure here is logged, never raised: the activation has
        recorded and sent everything already."""
        try:
            self._end(report, history, result, staged)
        except Exception:
            _tracing_failed(f"activation {self.activation} of {self.workflow_id!r}")

    def _end(self, report: ActivationReport, history: History, result: ReplayResult,
             staged: Mapping[str, StagedResult]) -> None:
        end = self.now + (time.perf_counter() - self._began)
        tracing, trace_id, flags = self.tracing, self.trace_id, self.flags
        applied = set(report.applied)
        outcomes: dict[str, tuple[OperationState, bytes | None]] = {
            op_id: (st.state, st.payload) for op_id, st in staged.items() if op_id in applied}
        for outcome in result.step_outcomes:
            if outcome.op_id in applied:
                outcomes[outcome.op_id] = (outcome.state, outcome.result)
        for op in result.new_operations:
            if op.state is not OperationState.PENDING and op.op_id not in outcomes:
                outcomes[op.op_id] = (op.state, op.result)
        by_id: dict[str, OperationRecord] = {}
        if outcomes:  # an activation that only replayed reads no record here
            needed = {*outcomes, *(op_id.rpartition(".")[0] for op_id in outcomes)}
            by_id = {op.op_id: op for op in history.operations if op.op_id in needed}
            by_id.update((op.op_id, op) for op in result.new_operations)
        activation_span = self.span_id(f"activation:{self.activation}")
        base = {_ATTR + "workflow_id": self.workflow_id,
                _ATTR + "workflow": self.workflow_name}
        for op_id, (state, payload) in outcomes.items():
            spanned = by_id.get(op_id)
            if spanned is None or spanned.kind not in _SPANNED:
                continue
            op = spanned
            scope = op_id.rpartition(".")[0]
            owner = by_id.get(scope) if scope else None
            parent = (self.span_id(f"op:{scope}") if owner is not None
                      and owner.kind == "context" else
                      self.span_id(f"activation:{op.created_in or self.activation}"))
            attributes = {**base, _ATTR + "operation.id": op_id,
                          _ATTR + "operation.kind": op.kind,
                          _ATTR + "operation.name": op.name,
                          _ATTR + "operation.state": state.value,
                          _ATTR + "activation.created": op.created_in,
                          _ATTR + "activation.resolved": self.activation}
            name = f"{op.kind} {op.name}"
            if op.kind == "call":
                name = f"call {service_of(op.name)}"
                attributes[_ATTR + "service"] = service_of(op.name)
                attributes[_ATTR + "operation.label"] = label_of(op.name)
            elif op.kind == "step":
                attempt = orjson.loads(op.request).get("attempt")
                if isinstance(attempt, int):
                    attributes[_ATTR + "step.attempt"] = attempt
            tracing.emit(name, trace_id, flags, self.span_id(f"op:{op_id}"), parent,
                         op.created_at, self.now, attributes,
                         _error_of(payload) if state is OperationState.FAILED else None,
                         SpanKind.CLIENT if op.kind in ("call", "child") else SpanKind.INTERNAL)
        error = (_error_of(result.error) if report.status == "failed" else None)
        tracing.emit(f"activation {self.workflow_name}", trace_id, flags, activation_span,
                     self.instance_span, self.now, end,
                     {**base, _ATTR + "activation": self.activation, _ATTR + "repairs": self.run,
                      _ATTR + "status": report.status,
                      _ATTR + "operations.recorded": len(history.operations),
                      _ATTR + "operations.new": len(result.new_operations),
                      _ATTR + "outcomes.recorded": len(outcomes)}, error)
        if report.status in ("completed", "failed", "cancelled"):
            tracing.emit(f"workflow {self.workflow_name}", trace_id, flags,
                         self.instance_span, self.parent_id, self.run_started, end,
                         {**base, _ATTR + "status": report.status, _ATTR + "repairs": self.run,
                          _ATTR + "activations": self.activation}, error)
