"""One replay of one workflow instance over its recorded history."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar

import orjson
import pydantic
import pydantic_core

from .. import _core
from ..context import WorkflowContext
from ..errors import InvalidRequestError, NonDeterminismError, ServiceError, WorkflowError
from ..models import OperationRecord, OperationState, describe_validation_error
from ..service import Service, type_name
from ..workflow import Workflow
from .loop import ReplayLoop

__all__ = ["Outcome", "ReplayResult", "Replayer", "StagedResult", "error_payload"]

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_log = logging.getLogger("lambda_workflow.workflow")


@dataclass(slots=True)
class StagedResult:
    """A reply that arrived in this activation and is not recorded yet."""

    state: OperationState
    payload: bytes
    message_index: int


@dataclass(slots=True)
class ReplayResult:
    """What one replay produced.

    ``outcome`` is ``"completed"`` (``result`` holds the encoded value), ``"failed"`` (``error``
    holds the encoded error), or ``"suspended"``.
    """

    outcome: str
    new_operations: list[OperationRecord]
    result: bytes | None = None
    error: bytes | None = None
    exception: BaseException | None = None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)


Outcome = ReplayResult


def error_payload(exc: BaseException) -> bytes:
    """Encode an exception as the protocol's error object, keeping its type name and message."""
    details: Any = None
    if isinstance(exc, ServiceError):
        details = {"error_type": exc.error_type, "message": exc.message,
                   "details": exc.details, "service": exc.service, "call_id": exc.call_id}
    return orjson.dumps({"type": type(exc).__name__, "message": str(exc), "details": details},
                        default=repr)


def site_of(frame: FrameType | None) -> str:
    """``file.py:LINE in function`` for the first frame outside this package."""
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_qualname}"


class _ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    def __init__(self, replayer: Replayer) -> None:
        super().__init__(_log, {"workflow_id": replayer.workflow_id})
        self._replayer = replayer

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._replayer.is_replaying or self._replayer.sealed:
            return
        super().log(level, msg, *args, **kwargs)


class Replayer:
    """Runs a workflow's code once over its history plus this activation's replies.

    Recorded operations are matched in creation order. Their outcomes are delivered in
    *stages*, one per activation that recorded them (in operation order within a stage), and
    the workflow runs until idle after each stage, ending with the replies that arrived in this
    activation. Every activation therefore continues exactly the execution of the one before:
    code that reacts to whichever reply came first (``asyncio.gather`` raising the first error,
    ``asyncio.wait(FIRST_COMPLETED)``) takes the same branch on every replay. New operations are
    collected in ``new_operations`` for the outbox; nothing is written here.
    """

    def __init__(
        self,
        workflow: Workflow[Any, Any],
        workflow_id: str,
        request_payload: bytes,
        history: Sequence[OperationRecord],
        staged: Mapping[str, StagedResult],
        *,
        activation: int,
        now: float,
    ) -> None:
        self.workflow = workflow
        self.workflow_id = workflow_id
        self._request_payload = request_payload
        self._history = history
        self._index = _core.ReplayIndex(history)
        self._staged = staged
        self._activation = activation
        self._now = now
        self._seq = 0
        # AbstractEventLoop's typeshed stub marks its whole I/O surface abstract; a workflow
        # loop has no I/O, and at run time the class is not an ABC.
        self._loop = ReplayLoop()  # type: ignore[abstract]
        self._replaying = bool(history)
        self.sealed = False
        self.new_operations: list[OperationRecord] = []
        self.accepted: list[str] = []
        self.rejected: dict[int, str] = {}
        self.pending: list[str] = []
        self._mismatch: NonDeterminismError | None = None
        self._logger = _ReplayAwareLogger(self)
        # Futures of recorded operations whose outcome belongs to a stage not reached yet.
        self._waiting: dict[int, tuple[asyncio.Future[Any], Service[Any, Any]]] = {}
        self._stage = 0
        self._new_allowed = False
        self._final_stage = False
        self._consumed: set[str] = set()

    # -- the driver protocol the context uses -------------------------------------------------
    @property
    def is_replaying(self) -> bool:
        return self._replaying

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._logger

    def call(
        self, service: Service[ReqT, RespT], request: ReqT, frame: FrameType | None
    ) -> Awaitable[RespT]:
        loop = self._loop
        future: asyncio.Future[RespT] = loop.create_future()
        if self.sealed:
            # Teardown code after suspension: nothing is recorded or sent.
            future.cancel()
            return future
        if not isinstance(service, Service):
            raise TypeError(f"ctx.call expects a Service as its first argument, got {service!r} "
                            f"at {site_of(frame)}")
        seq = self._seq
        self._seq += 1
        try:
            # Validate first: serializing alone accepts an instance of another model (it
            # dumps the fields the two share) and would send a request the service rejects.
            payload = _core.encode_value(service.request_adapter,
                                         service.request_adapter.validate_python(request))
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError, TypeError,
                ValueError) as exc:
            raise InvalidRequestError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}): the request to service "
                f"{service.name!r} at {site_of(frame)} is not a valid "
                f"{type_name(service.request_type)}: {describe_validation_error(exc)}") from None
        request_digest = _core.digest(payload)
        try:
            record: OperationRecord | None = self._index.match(seq, "call", service.name,
                                                                request_digest)
        except _core.ReplayMismatch as mismatch:
            raise self._nondeterminism(mismatch, "call", service.name, payload, frame) from None
        if record is None:
            if not self._new_allowed:
                raise self._early_new_operation(seq, "call", service.name, frame)
            self._replaying = False
            op_id = _core.operation_id("", seq)
            self.new_operations.append(OperationRecord(
                workflow_id=self.workflow_id, op_id=op_id, seq=seq, kind="call",
                name=service.name, request=payload, request_digest=request_digest,
                site=site_of(frame), created_in=self._activation, created_at=self._now))
            self.pending.append(op_id)
            return future
        if record.state is OperationState.PENDING:
            if record.op_id not in self._staged:
                self.pending.append(record.op_id)
            elif self._final_stage:
                self._resolve(record, service, future)
            else:
                self._waiting[seq] = (future, service)
        elif record.resolved_in is not None and record.resolved_in <= self._stage:
            self._resolve(record, service, future)
        else:
            self._waiting[seq] = (future, service)
        return future

    # -- helpers -----------------------------------------------------------------------------
    def _outcome(self, record: OperationRecord, service: Service[Any, Any],
                 staged: StagedResult | None) -> tuple[bool, Any] | None:
        """The decoded outcome ``(ok, value or ServiceError)`` of a recorded or staged reply,
        or ``None`` if it does not validate: a staged reply is then rejected (never recorded;
        the call stays pending and a valid reply may still arrive); a recorded one means the
        response type changed under a running workflow."""
        state, payload = ((staged.state, staged.payload) if staged is not None
                          else (record.state, record.result or b"null"))
        if state is not OperationState.COMPLETED:
            err = orjson.loads(payload)
            return False, ServiceError(err.get("type", "Error"), err.get("message", ""),
                                       err.get("details"), service=service.name,
                                       call_id=record.op_id)
        try:
            return True, _core.decode_value(service.response_adapter, payload)
        except pydantic.ValidationError as exc:
            reason = (f"reply to call {record.op_id} of workflow {self.workflow_id!r} "
                      f"(service {service.name!r}) is not a valid "
                      f"{type_name(service.response_type)}: {describe_validation_error(exc)}")
        if staged is not None:
            self.rejected[staged.message_index] = reason
        elif self._mismatch is None:
            self._mismatch = NonDeterminismError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}): the recorded {reason}; "
                "did the response type change while the workflow ran?")
        return None

    def _resolve(self, record: OperationRecord, service: Service[Any, RespT],
                 future: asyncio.Future[RespT]) -> None:
        staged = self._staged.get(record.op_id) if record.state is OperationState.PENDING else None
        if record.state is OperationState.PENDING and staged is None:
            self.pending.append(record.op_id)
            return
        if staged is not None:
            self._consumed.add(record.op_id)
        outcome = self._outcome(record, service, staged)
        if outcome is None:
            self.pending.append(record.op_id)
            return
        ok, value = outcome
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
        if staged is not None:
            self.accepted.append(record.op_id)

    def _settle_staged(self) -> None:
        """Accept the replies of this activation that the replay never reached (the workflow
        ended at an earlier stage, or never created the call again): they are valid replies
        to pending calls and are recorded, so nothing that arrived is lost."""
        for rec in self._history:
            staged = self._staged.get(rec.op_id)
            if staged is None or rec.op_id in self._consumed:
                continue
            self._consumed.add(rec.op_id)
            waiting = self._waiting.get(rec.seq)
            if waiting is None or self._outcome(rec, waiting[1], staged) is not None:
                self.accepted.append(rec.op_id)

    def _early_new_operation(self, seq: int, kind: str, name: str,
                             frame: FrameType | None) -> NonDeterminismError:
        self._mismatch = NonDeterminismError(
            f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
            f"history: the code at {site_of(frame)} created {kind} {name!r} as operation "
            f"#{seq + 1} before the recorded replies were replayed, but the history recorded "
            f"only {len(self._history)} operations at that point")
        return self._mismatch

    def _stages(self) -> list[tuple[int, list[OperationRecord]]]:
        """Recorded outcomes grouped by the activation that recorded them, oldest first."""
        by_activation: dict[int, list[OperationRecord]] = {}
        for rec in self._history:  # in seq order
            if rec.state is not OperationState.PENDING:
                by_activation.setdefault(rec.resolved_in or 0, []).append(rec)
        return sorted(by_activation.items())

    def _deliver(self, records: Sequence[OperationRecord]) -> None:
        for rec in records:
            waiting = self._waiting.pop(rec.seq, None)
            if waiting is not None:
                self._resolve(rec, waiting[1], waiting[0])

    def _nondeterminism(self, mismatch: _core.ReplayMismatch, kind: str, name: str,
                        payload: bytes, frame: FrameType | None) -> NonDeterminismError:
        rec = self._history[mismatch.seq]
        head = (f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
                f"history at operation #{mismatch.seq + 1}: the code at {site_of(frame)} "
                f"created {kind} {name!r}, but the history recorded {rec.kind} {rec.name!r} "
                f"(created at {rec.site or 'an unknown site'})")
        if mismatch.field == "request":
            head = (f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
                    f"history at operation #{mismatch.seq + 1} ({kind} {name!r} at "
                    f"{site_of(frame)}): the request differs from the recorded one: "
                    f"{_diff(rec.request, payload)}. Build requests only from the workflow's "
                    f"input and recorded results (not the clock or random numbers)")
        self._mismatch = NonDeterminismError(head)
        return self._mismatch

    # -- running -------------------------------------------------------------------------------
    def run(self) -> ReplayResult:
        """Replay the workflow until it completes, fails or can make no progress."""
        wf = self.workflow
        try:
            request = _core.decode_value(wf.request_adapter, self._request_payload)
        except pydantic.ValidationError as invalid:
            return self._finish_failed(NonDeterminismError(
                f"workflow {wf.name!r} ({self.workflow_id}): its recorded input is no longer a "
                f"valid {type_name(wf.request_type)}: {describe_validation_error(invalid)}"))
        ctx: WorkflowContext[Any] = WorkflowContext(self, request, self.workflow_id)
        task = self._loop.create_task(wf.fn(ctx))
        loop = self._loop
        stages = self._stages()
        # New operations may appear from the last recorded stage on: an activation that
        # crashed after recording its replies but before recording its new calls left them
        # to be created again there. Earlier, a call the history lacks means the code changed.
        self._new_allowed = not stages
        loop.run_until_idle()
        for i, (stage, records) in enumerate(stages):
            if task.done() or self._mismatch is not None:
                break
            self._stage = stage
            self._new_allowed = i == len(stages) - 1
            self._deliver(records)
            loop.run_until_idle()
        if self._staged and not task.done() and self._mismatch is None:
            self._stage = self._activation
            self._new_allowed = self._final_stage = True
            self._replaying = False
            by_seq = sorted((rec for rec in self._history if rec.op_id in self._staged),
                            key=lambda rec: rec.seq)
            self._deliver(by_seq)
            loop.run_until_idle()
        if not task.done():
            return self._suspend()
        exc: BaseException | None = (
            WorkflowError("the workflow's main task was cancelled") if task.cancelled()
            else task.exception())
        if self._mismatch is not None:
            return self._finish_failed(self._mismatch)
        if exc is not None:
            return self._finish_failed(exc)
        if self._seq < len(self._history):
            missing = self._history[self._seq]
            return self._finish_failed(NonDeterminismError(
                f"workflow {wf.name!r} ({self.workflow_id}) finished after creating "
                f"{_count(self._seq)}, but its history recorded {len(self._history)}; the "
                f"first missing one is #{missing.seq + 1}, {missing.kind} {missing.name!r} "
                f"(created at {missing.site or 'an unknown site'})"))
        try:
            result = _core.encode_value(wf.result_adapter, task.result())
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as bad:
            return self._finish_failed(WorkflowError(
                f"workflow {wf.name!r} ({self.workflow_id}) returned a value that is not a "
                f"valid {type_name(wf.result_type)}: {describe_validation_error(bad)}"))
        self._settle_staged()
        self._loop.close()
        return ReplayResult("completed", self.new_operations, result=result,
                            accepted=self.accepted, rejected=self.rejected)

    def _suspend(self) -> ReplayResult:
        self.sealed = True
        self._settle_staged()
        self._loop.abandon()
        if self._mismatch is not None:
            # The workflow caught the NonDeterminismError and waited on: it still failed.
            return self._finish_failed(self._mismatch)
        if self._seq < len(self._history):
            missing = self._history[self._seq]
            return self._finish_failed(NonDeterminismError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}) suspended after "
                f"creating {_count(self._seq)}, but its history recorded "
                f"{len(self._history)}; the first not created again is #{missing.seq + 1}, "
                f"{missing.kind} {missing.name!r} (created at "
                f"{missing.site or 'an unknown site'})"))
        return ReplayResult("suspended", self.new_operations, accepted=self.accepted,
                            rejected=self.rejected, pending=self.pending)

    def _finish_failed(self, exc: BaseException) -> ReplayResult:
        self.sealed = True
        self._settle_staged()
        if not self._loop.is_closed():
            self._loop.abandon()
        # A failed replay sends nothing new when the history no longer matches the code.
        new_ops = [] if isinstance(exc, NonDeterminismError) else self.new_operations
        return ReplayResult("failed", new_ops, error=error_payload(exc), exception=exc,
                            accepted=self.accepted, rejected=self.rejected)


def _count(n: int) -> str:
    return f"{n} operation" if n == 1 else f"{n} operations"


def _diff(recorded: bytes, new: bytes) -> str:
    """Field by field differences between two JSON documents, for error messages."""
    old_v, new_v = orjson.loads(recorded), orjson.loads(new)
    changes: list[str] = []

    def walk(path: str, a: object, b: object) -> None:
        if isinstance(a, MutableMapping) and isinstance(b, MutableMapping):
            for key in sorted(set(a) | set(b), key=str):
                sub = f"{path}.{key}" if path else str(key)
                if key not in a:
                    changes.append(f"{sub}: added {b[key]!r}")
                elif key not in b:
                    changes.append(f"{sub}: removed (was {a[key]!r})")
                else:
                    walk(sub, a[key], b[key])
        elif a != b:
            changes.append(f"{path or 'value'}: recorded {a!r}, now {b!r}")

    walk("", old_v, new_v)
    return "; ".join(changes[:10]) + (f"; and {len(changes) - 10} more" if len(changes) > 10
                                       else "")
