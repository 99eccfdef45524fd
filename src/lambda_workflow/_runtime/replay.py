"""One replay of one workflow instance over its recorded history."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import orjson
import pydantic
import pydantic_core

from .. import _core
from .._opnames import display, service_of
from ..callbacks import Callback, CallbackTokens, recorded_token
from ..context import WorkflowContext
from ..errors import (
    CallbackFailedError,
    CallbackHeartbeatTimeoutError,
    CallbackTimeoutError,
    InvalidRequestError,
    NonDeterminismError,
    PayloadTooLargeError,
    ServiceError,
    WorkflowError,
)
from ..models import (
    OperationRecord,
    OperationState,
    Outcome,
    check_workflow_id,
    describe_validation_error,
)
from ..service import Service, type_name
from ..steps import Semantics, Step, StepError, StepInfo
from ..workflow import Workflow
from .contexts import CURRENT, SCOPED_SEQ_BASE, scoped_layout
from .history import request_difference
from .loop import ReplayLoop

__all__ = ["ReplayResult", "Replayer", "StagedResult", "error_payload", "site_of"]


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
    step_outcomes: list[Outcome] = field(default_factory=list)



def error_payload(exc: BaseException) -> bytes:
    """Encode an exception as the protocol's error object, keeping its type name and message."""
    details: Any = None
    if isinstance(exc, ServiceError):
        details = {"error_type": exc.error_type, "message": exc.message,
                   "details": exc.details, "service": exc.service, "call_id": exc.call_id}
    return orjson.dumps({"type": type(exc).__name__, "message": str(exc), "details": details},
                        default=repr)


def _step_error(error_type: str, message: str, retry: bool) -> bytes:
    return orjson.dumps({"type": error_type, "message": message, "details": {"retry": retry}})


def site_of(frame: FrameType | None) -> str:
    """``file.py:LINE in function`` for the first frame outside this package."""
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_qualname}"


_SORT = orjson.OPT_SORT_KEYS
_TIMER_REQUEST: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(dict[str, float])
_NONE: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(None)
# {"timeout": s, "heartbeat_timeout": s, "token": "..."}: the token is recorded with its callback
_CALLBACK_REQUEST: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    dict[str, float | str | None])
_HEARTBEAT_REQUEST: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(dict[str, str])
# A heartbeat timer: {"seconds": s, "callback": "<callback op id>"}; it fires with
# {"remaining": s}, the heartbeat timeout left after the callback's last heartbeat (0: none
# came in time), recorded by the activation it fires in (heartbeats.py).
_BEAT_TIMER_REQUEST: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(dict[str, float | str])
_BEAT_TIMER_RESULT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(dict[str, float] | None)


_CHILD_ADAPTERS: dict[int, tuple[Workflow[Any, Any], pydantic.TypeAdapter[Any]]] = {}


def _child_request_adapter(workflow: Workflow[Any, Any]) -> pydantic.TypeAdapter[Any]:
    """``{"input": <the child's input type>, "workflow_id": str | None}``, made once per
    workflow."""
    cached = _CHILD_ADAPTERS.get(id(workflow))
    if cached is None or cached[0] is not workflow:
        fields: Any = {"input": (workflow.request_type, ...), "workflow_id": (str | None, None)}
        model = pydantic.create_model(f"ChildStart_{workflow.name}", **fields)
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(model)
        cached = _CHILD_ADAPTERS[id(workflow)] = (workflow, adapter)
    return cached[1]


class _ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    def __init__(self, replayer: Replayer) -> None:
        super().__init__(_log, {"workflow_id": replayer.workflow_id})
        self._replayer = replayer

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._replayer.is_replaying or self._replayer.sealed:
            return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """The line's structured fields (workflow id and name, run, activation, operation:
        lambda_workflow.logs), under the caller's own ``extra``."""
        from ..logs import record_fields

        kwargs["extra"] = {**record_fields(self._replayer), **(kwargs.get("extra") or {})}
        return msg, kwargs


# Objects the interpreter froze itself before any code ran (375 on CPython 3.12, 0 on 3.11
# and 3.13): more than these means the process froze objects of its own.
_FROZEN_AT_START = gc.get_freeze_count()


class Replayer:
    """Runs a workflow's code once over its history plus this activation's replies.

    Recorded operations are matched in creation order. Their outcomes are delivered in
    *stages*, one per activation that recorded them (in operation order within a stage), and
    the workflow runs until idle after each stage, ending with the replies that arrived in this
    activation. Every activation therefore continues exactly the execution of the one before:
    code that reacts to whichever reply came first (``asyncio.gather`` raising the first error,
    ``asyncio.wait(FIRST_COMPLETED)``) takes the same branch on every replay. New operations are
    collected in ``new_operations`` for the outbox; nothing is written here. The per-operation
    work is the replay core's (:class:`lambda_workflow._core.ReplayIndex`).
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
        payload_limit: int | None = None,
        payload_hint: str = "",
        checkpoint: Callable[[Sequence[OperationRecord], Sequence[Outcome]], Sequence[str]]
        | None = None,
        tokens: CallbackTokens | None = None,
        cancel: tuple[int, str] | None = None,
        scope: str = "",
        relaxed: bool = False,
        keep_alive: bool = False,
    ) -> None:
        self.workflow = workflow
        self.workflow_id = workflow_id
        self._request_payload = request_payload
        self._history = history
        self._staged = staged
        self._activation = activation
        self._now = now
        # AbstractEventLoop's typeshed stub marks its whole I/O surface abstract; a workflow
        # loop has no I/O, and at run time the class is not an ABC.
        self._loop = ReplayLoop()  # type: ignore[abstract]
        self._index = _core.ReplayIndex(
            history, {op_id: (st.state is OperationState.COMPLETED, st.payload)
                      for op_id, st in staged.items()},
            activation, self._loop, self)
        # ctx.call goes straight to the core: no Python frame of ours per operation.
        self.call: Callable[[Service[Any, Any], Any, FrameType | None], Awaitable[Any]] = (
            self._index.call_service)
        self._replaying = bool(history)
        self.new_operations: list[OperationRecord] = []
        self.rejected: dict[int, str] = {}
        self._mismatch: NonDeterminismError | None = None
        # An error no catch can undo (a request too large to record): the workflow fails.
        self._fatal: PayloadTooLargeError | None = None
        self._payload_limit = payload_limit
        self._times: dict[int, float] | None = None
        self._rng: random.Random | None = None
        self._checkpoint_to = checkpoint
        # The store failed while the workflow ran (a checkpoint): the activation did not
        # happen, and run() raises it so the messages are delivered again.
        self._store_error: Exception | None = None
        self._persisted = 0  # new_operations[:_persisted] are recorded already
        # accepted[:_saved_replies] and step_outcomes[:_saved_steps] are recorded already, by
        # checkpoints; saved_applied: the ids those recorded.
        self._saved_replies = 0
        self._saved_steps = 0
        self.saved_applied: list[str] = []
        self._tokens = tokens
        # (stage, reason): cancel the workflow once that stage has been delivered
        self._cancel = cancel
        self._cancel_delivered = False
        # Outcomes of steps whose operation was recorded before it ran (at-most-once).
        self.step_outcomes: list[Outcome] = []
        self._payload_hint = payload_hint
        self._logger = _ReplayAwareLogger(self)
        # After a reset (repair.py): new operations get ids in their own scope, and the first
        # one after the reset point may appear before later recorded outcomes are delivered.
        self._scope = scope
        self._relaxed = relaxed
        # Child contexts (contexts.py): the history's root operations come first, then those
        # of child contexts, grouped here by context id.
        self._n_root, self._scoped = scoped_layout(history)
        self._index.bound = self._n_root
        self._n_scoped_new = 0
        self._woken_contexts: set[str] | None = None
        self._spinning = 0  # cancelled contexts running their bodies to their waiting point
        if self._scoped:
            self.call = self._scoped_call
        # Warm instances (warm.py): a replay that may be kept alive when it suspends holds the
        # future of every operation still pending, to deliver later outcomes to it.
        self.keep_alive = keep_alive and not self._scoped and not scope and not relaxed and (
            cancel is None)
        self.kept = False
        self._live: dict[str, tuple[asyncio.Future[Any], pydantic.TypeAdapter[Any], str,
                                    object, int]] = {}
        self._warm_stage = 0
        self._task: asyncio.Task[Any] | None = None
        if self.keep_alive:
            self.call = self._live_call

    @property
    def accepted(self) -> list[str]:
        """Ids of this activation's replies to record."""
        return self._index.accepted

    @property
    def pending(self) -> list[str]:
        """Ids of the calls still waiting for a reply."""
        if not self._scope:
            return self._index.pending
        # The core names a new call by its position; after a reset its id has a scope.
        new = {_core.operation_id("", op.seq): op.op_id for op in self.new_operations}
        return [new.get(op_id, op_id) for op_id in self._index.pending]

    # -- the driver protocol the context uses -------------------------------------------------
    @property
    def sealed(self) -> bool:
        """Whether the activation decided to suspend: nothing more is recorded or sent."""
        return self._index.sealed

    @property
    def is_replaying(self) -> bool:
        return self._replaying and not self._index.final_stage

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._logger

    # -- durable operations beyond calls -------------------------------------------------------
    def durable(self, kind: str, name: str, request_adapter: pydantic.TypeAdapter[Any],
                response_adapter: pydantic.TypeAdapter[Any], request: object,
                frame: FrameType | None) -> asyncio.Future[Any]:
        """The next operation is a ``kind`` operation named ``name``: match it against the
        history (or record it as new) and return the future of its outcome."""
        idx = self._index
        if idx.sealed:
            future: asyncio.Future[Any] = self._loop.create_future()
            future.cancel()
            return future
        seq, op_id, record_seq = self._next_operation()
        try:
            decision, future, _, payload = idx.step(seq, kind, name, request_adapter, None,
                                                    response_adapter, request, None)
        except _core.ReplayMismatch as exc:
            raise self._nondeterminism(exc, kind, name, frame) from None
        if decision == _core.NEW:
            self.new_operation(seq, kind, name, payload, frame, op_id=op_id,
                               record_seq=record_seq)
            idx.pending.append(op_id)
        if self.keep_alive and (decision == _core.NEW or decision == _core.PENDING):
            self._live[op_id] = (future, response_adapter, name, None, record_seq)
        return future

    def _live_call(self, service: Service[Any, Any], request: Any,
                   frame: FrameType | None) -> asyncio.Future[Any]:
        """``ctx.call`` of a replay that may be kept alive: the core's call, holding the
        future of a call that stays pending (recorded without a reply, or new)."""
        pending = self._index.pending
        n = len(pending)
        seq = self._index.seq
        future = self._index.call_service(service, request, frame)
        if len(pending) > n and self.keep_alive:
            self._live[pending[-1]] = (future, service.response_adapter, service.name, service,
                                       seq)
        return future

    def sleep(self, seconds: float, frame: FrameType | None,
              name: str = "sleep") -> asyncio.Future[None]:
        """A durable timer: resolves when its ``timer_fired`` message arrives."""
        return self.durable("timer", name, _TIMER_REQUEST, _NONE, {"seconds": seconds},
                            frame)

    def now(self) -> float:
        """The time at which the code running now first ran: the time of the activation
        whose outcomes were delivered last (activation 1 before any), the same value on
        every replay."""
        stage = max(self._index.stage, self._warm_stage, 1)
        if stage >= self._activation:
            return self._now
        if self._times is None:
            self._times = {}
            for op in self._history:
                self._times.setdefault(op.created_in, op.created_at)
                if op.resolved_in is not None and op.resolved_at is not None:
                    self._times.setdefault(op.resolved_in, op.resolved_at)
        return self._times.get(stage, self._now)

    @property
    def rng(self) -> random.Random:
        """The workflow's deterministic random generator: seeded by its id, drawn in program
        order, so every replay draws the same values."""
        if self._rng is None:
            digest = hashlib.sha256(self.workflow_id.encode()).digest()
            self._rng = random.Random(int.from_bytes(digest[:16], "big"))
        return self._rng

    def patched(self, patch_id: str, frame: FrameType | None) -> bool:
        """Versioning: ``True`` where the history has this patch's marker or where the
        workflow runs code the history has not reached (the marker is recorded then);
        ``False`` where the history was recorded by the code before the patch."""
        idx = self._index
        if self._peek()[0] is not None:
            return self._consume_patch_marker(patch_id)
        if idx.sealed:
            return True
        seq, op_id, record_seq = self._next_operation()
        self.new_operation(seq, "patch", patch_id, b"null", frame, op_id=op_id,
                           record_seq=record_seq)
        marker = self.new_operations[-1]
        marker.state = OperationState.COMPLETED
        marker.result = b"null"
        marker.resolved_in = self._activation
        marker.resolved_at = self._now
        return True

    async def run_step(self, st: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                       frame: FrameType | None) -> Any:
        """``ctx.step``: run ``st`` once per attempt, recorded, with retries on timers."""
        try:
            arguments = orjson.dumps({"args": args, "kwargs": kwargs}, option=_SORT,
                                     default=pydantic_core.to_jsonable_python)
        except (TypeError, pydantic_core.PydanticSerializationError) as exc:
            raise InvalidRequestError(
                f"the arguments of step {st.name!r} at {site_of(frame)} are not JSON "
                f"serializable: {exc}") from None
        key = f"{self.workflow_id}\0{st.name}\0{self._index.seq}"
        for attempt in range(1, st.retry.max_attempts + 1):
            ok, payload = self._attempt(st, attempt, arguments, args, kwargs, frame)
            if ok:
                if st.serdes is not None:
                    return self._read_serdes(st, payload, frame)
                return st.result_adapter.validate_json(payload)
            error = orjson.loads(payload)
            retry = (error.get("details") or {}).get("retry", False)
            if attempt == st.retry.max_attempts or not retry:
                raise StepError(st.name, error["type"], error["message"], attempt)
            await self.durable("timer", f"retry:{st.name}", _TIMER_REQUEST, _NONE,
                               {"seconds": st.retry.delay(attempt, key)}, frame)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _read_serdes(self, st: Step[Any, Any], payload: bytes, frame: FrameType | None) -> Any:
        """A step's recorded result read back by its serdes. The first run checked the round
        trip before recording, so this fails only when the serdes changed under a running
        instance (another name, or it no longer reads what it wrote)."""
        try:
            return st.result_adapter.validate_json(payload)
        except pydantic.ValidationError as exc:
            self._mismatch = NonDeterminismError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}): the recorded result of "
                f"step {st.name!r} at {site_of(frame)} cannot be read back: "
                f"{describe_validation_error(exc)}; did its serdes change while the workflow "
                "ran? (use ctx.patched to change it)")
            raise self._mismatch from None

    def _attempt(self, st: Step[Any, Any], attempt: int, arguments: bytes,
                 args: tuple[Any, ...], kwargs: dict[str, Any], frame: FrameType | None
                 ) -> tuple[bool, bytes]:
        """One attempt: its recorded outcome, or run it now and record it. A failure's error
        object records, in ``details.retry``, whether the policy retries it (decided once,
        while the exception's class is known, so every replay takes the same path)."""
        idx = self._index
        if idx.sealed:
            raise asyncio.CancelledError
        seq, op_id, record_seq = self._next_operation()
        # {"args": [...], "kwargs": {...}, "attempt": n}
        request = arguments[:-1] + b',"attempt":' + str(attempt).encode() + b"}"
        try:
            rec = idx.match(seq, "step", st.name, request)
        except _core.ReplayMismatch as exc:
            raise self._nondeterminism(exc, "step", st.name, frame) from None
        if rec is not None and rec.state is not OperationState.PENDING:
            return rec.state is OperationState.COMPLETED, rec.result or b"null"
        if rec is not None:
            # Recorded as started, never finished: the activation that ran it crashed.
            error = _step_error(
                "StepInterrupted", f"attempt {attempt} of step {st.name!r} was interrupted "
                "by a crash (at-most-once: it is not run again)",
                st.retry.retries(None, "StepInterrupted"))
            self.step_outcomes.append(Outcome(rec.op_id, OperationState.FAILED, error))
            return False, error
        self.new_operation(seq, "step", st.name, request, frame, op_id=op_id,
                           record_seq=record_seq)
        op = self.new_operations[-1]
        if st.semantics is Semantics.AT_MOST_ONCE:
            if self._checkpoint_to is None:
                raise WorkflowError(f"step {st.name!r} is at-most-once, but this runtime "
                                    "cannot record an attempt before it runs")
            # Every operation created so far, this attempt last: recording the attempt
            # alone left a gap (calls a parallel branch created just before it) that no
            # replay could match after a crash (found by the fault simulator).
            self.persist_new_operations()
        ok, payload = True, b"null"
        info = StepInfo(st.name, attempt, self.workflow_id)
        try:
            payload = _core.encode_value(st.result_adapter, st.run(info, args, kwargs))
            if st.serdes is not None:  # the round trip fails here, recorded, or never
                st.result_adapter.validate_json(payload)
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as exc:
            ok, payload = False, _step_error(
                "StepResultError", f"step {st.name!r} returned a value that is not a valid "
                f"{type_name(st.result_type)}: {describe_validation_error(exc)}", False)
        except Exception as exc:
            ok, payload = False, _step_error(type(exc).__name__, str(exc),
                                             st.retry.retries(type(exc), type(exc).__name__))
        state = OperationState.COMPLETED if ok else OperationState.FAILED
        if st.semantics is Semantics.AT_MOST_ONCE:
            self.step_outcomes.append(Outcome(op.op_id, state, payload))
        else:
            op.state, op.result = state, payload
            op.resolved_in, op.resolved_at = self._activation, self._now
        return ok, payload

    def _checkpoint(self, ops: Sequence[OperationRecord]) -> None:
        """Record operations now, with the replies delivered so far and the outcomes of
        at-most-once attempts: the operations may have been made from those replies, and a
        crash before the commit must not leave them in a history without the replies (the
        reply could come again only after another message, and the replay would not make
        them). A store failure here is not the workflow's: it must not reach workflow code
        as an exception it could catch or fail with."""
        assert self._checkpoint_to is not None
        accepted = self.accepted
        outcomes = [Outcome(op_id, self._staged[op_id].state, self._staged[op_id].payload)
                    for op_id in accepted[self._saved_replies:]]
        outcomes += self.step_outcomes[self._saved_steps:]
        try:
            self.saved_applied += self._checkpoint_to(ops, outcomes)
        except Exception as exc:
            self._store_error = exc
            raise _StoreFailed from exc
        self._saved_replies, self._saved_steps = len(accepted), len(self.step_outcomes)

    def persist_new_operations(self) -> None:
        """Record the operations created so far in this activation now, before code that
        lets the outside world act on them (a callback's submitter, a token read): the
        activation's commit records them again, conditionally, and sends what they need.
        Every operation created so far is recorded (finished steps too): recording only some
        would leave a gap in the history's order, which no replay could match."""
        new = self.new_operations[self._persisted:]
        if self._checkpoint_to is not None and new and not self._index.sealed:
            self._checkpoint(new)
            self._persisted = len(self.new_operations)

    def create_callback(self, name: str, result_adapter: pydantic.TypeAdapter[Any],
                        timeout: float | None, heartbeat_timeout: float | None,
                        frame: FrameType | None) -> Callback[Any]:
        """``ctx.create_callback``: record the callback (and its timers) now, in program
        order, and return its token with the awaitable of its outcome.

        A new callback gets a new token (a fresh nonce, the current key), recorded in its
        request; a replayed one returns the recorded token, so replay never depends on the
        key. A callback recorded before tokens were recorded keeps its derived token."""
        rec, callback_id = self._peek()
        token = recorded_token(rec.request) if rec is not None and rec.kind == "callback" else None
        request: dict[str, object] = {"timeout": timeout, "heartbeat_timeout": heartbeat_timeout}
        if token is not None:
            request["token"] = token
        elif self._tokens is not None and rec is not None and rec.kind == "callback":
            # recorded before tokens were recorded: the token derived as it was then
            token = self._tokens.legacy_token(self.workflow_id, callback_id)
        elif self._tokens is not None:
            token = self._tokens.issue(self.workflow_id, callback_id)
            request["token"] = token
        elif (rec is None or rec.kind == "callback") and not self._index.sealed:
            raise WorkflowError(
                f"workflow {self.workflow.name!r} created callback {name!r}, but this runtime "
                "has no callback key to sign tokens (LocalRuntime(callback_key=...), or "
                "LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET or _PARAMETER on AWS)")
        future = self.durable("callback", name, _CALLBACK_REQUEST, result_adapter,
                              request, frame)
        deadline = (self.durable("timer", f"timeout:{name}", _TIMER_REQUEST, _NONE,
                                 {"seconds": timeout}, frame) if timeout else None)
        beat = (self._heartbeat_period(name, callback_id, heartbeat_timeout, frame)
                if heartbeat_timeout else None)
        # A new callback is recorded before its token can leave the workflow (on the first
        # read of the token), so the token that leaves is the one a replay hands out again.
        reveal = self.persist_new_operations if rec is None else None
        return Callback(name, token or "", lambda: self._await_callback(
            name, callback_id, future, deadline, timeout, heartbeat_timeout, beat, frame),
            reveal)

    def _heartbeat_period(self, name: str, callback_id: str, seconds: float,
                          frame: FrameType | None
                          ) -> tuple[asyncio.Future[Any], asyncio.Future[Any] | None]:
        """The heartbeat timer of a callback: heartbeats are recorded on the callback's
        record by the client, and the timer reads the last one when it fires. A history
        recorded before that has a plain timer and a ``heartbeat`` operation that each
        heartbeat message completed: it replays (and continues) that way."""
        rec = self._peek()[0]  # the next operation of the running scope
        if (rec is not None and rec.kind == "timer" and not self._index.sealed
                and "callback" not in orjson.loads(rec.request)):
            timer = self.durable("timer", f"heartbeat:{name}", _TIMER_REQUEST, _NONE,
                                 {"seconds": seconds}, frame)
            signal = self.durable("heartbeat", name, _HEARTBEAT_REQUEST, _NONE,
                                  {"callback": callback_id}, frame)
            return timer, signal
        timer = self.durable("timer", f"heartbeat:{name}", _BEAT_TIMER_REQUEST,
                             _BEAT_TIMER_RESULT, {"seconds": seconds, "callback": callback_id},
                             frame)
        return timer, None

    async def _await_callback(self, name: str, callback_id: str, future: asyncio.Future[Any],
                              deadline: asyncio.Future[Any] | None, timeout: float | None,
                              heartbeat_timeout: float | None,
                              beat: tuple[asyncio.Future[Any], asyncio.Future[Any] | None]
                              | None, frame: FrameType | None) -> Any:
        while True:
            waits: set[asyncio.Future[Any]] = {future}
            if deadline is not None:
                waits.add(deadline)
            if beat is not None:
                waits.update(f for f in beat if f is not None)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                try:
                    return future.result()
                except ServiceError as exc:
                    raise CallbackFailedError(name, exc.error_type, exc.message,
                                              exc.details) from None
            if deadline is not None and deadline in done:
                raise CallbackTimeoutError(name, "CallbackTimeout",
                                           f"not completed within {timeout:g} s")
            assert beat is not None and heartbeat_timeout is not None
            timer, signal = beat
            if signal is None:
                # The timer fired with the time left after the last heartbeat: wait for
                # that long again (a timer for the remainder), or time out.
                remaining = float((timer.result() or {}).get("remaining", 0.0))
                if remaining <= 0:
                    raise CallbackHeartbeatTimeoutError(
                        name, "CallbackHeartbeatTimeout",
                        f"no heartbeat within {heartbeat_timeout:g} s")
                beat = self._heartbeat_period(name, callback_id, remaining, frame)
                continue
            if not signal.done():
                raise CallbackHeartbeatTimeoutError(
                    name, "CallbackHeartbeatTimeout",
                    f"no heartbeat within {heartbeat_timeout:g} s")
            beat = self._heartbeat_period(name, callback_id, heartbeat_timeout, frame)

    def child(self, workflow: Workflow[Any, Any], request: Any, workflow_id: str | None,
              frame: FrameType | None) -> asyncio.Future[Any]:
        """``ctx.child``: a ``child`` operation whose request is the child's input (and its id
        when given); its reply is the child's result."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"ctx.child takes a @workflow object, got {workflow!r}")
        if workflow_id is not None:
            check_workflow_id(workflow_id)
        adapter = _child_request_adapter(workflow)
        try:
            return self.durable("child", workflow.name, adapter, workflow.result_adapter,
                                {"input": request, "workflow_id": workflow_id}, frame)
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as exc:
            raise InvalidRequestError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}): the input of child "
                f"workflow {workflow.name!r} at {site_of(frame)} is not a valid "
                f"{type_name(workflow.request_type)}: {describe_validation_error(exc)}"
            ) from None

    def deprecate_patch(self, patch_id: str) -> None:
        """The old code path is gone: consume the patch's marker where the history has one,
        record nothing new."""
        self._consume_patch_marker(patch_id)

    def _consume_patch_marker(self, patch_id: str) -> bool:
        """If the next recorded operation is this patch's marker, step past it (``True``)."""
        rec = self._peek()[0]
        if rec is not None and rec.kind == "patch" and rec.name == patch_id:
            self._next_operation()
            return True
        return False

    # -- child contexts (contexts.py) ----------------------------------------------------------
    def _next_operation(self) -> tuple[int, str, int]:
        """Take the next operation of the running scope: ``(position, id, seq)``. The
        position is the recorded operation's in the replay core, or one past every record
        (a new operation, whose id and seq are the other two)."""
        scope = CURRENT.get()
        idx = self._index
        if scope is None or scope.owner is not self:
            seq = idx.seq
            idx.seq = seq + 1
            if seq < self._n_root:
                # A recorded root operation keeps its recorded id: after a reset the scope
                # names new operations ("r1.3"), not those the reset kept ("1"), and a kept
                # child context finds its operations by its own id.
                return seq, self._history[seq].op_id, seq
            return seq + len(self._history), _core.operation_id(self._scope, seq), seq
        local = scope.count
        scope.count = local + 1
        if local < len(scope.recorded):
            pos = scope.recorded[local]
            return pos, self._history[pos].op_id, self._history[pos].seq
        # after the last recorded one (a repair may have left gaps below it)
        last = self._history[-1].seq if len(self._history) > self._n_root else -1
        record_seq = max(SCOPED_SEQ_BASE, last + 1) + self._n_scoped_new
        return (len(self._history) + record_seq, _core.operation_id(scope.prefix, local),
                record_seq)

    def _peek(self) -> tuple[OperationRecord | None, str]:
        """The recorded next operation of the running scope (``None``: it is new) and its
        id, without taking it."""
        scope = CURRENT.get()
        if scope is None or scope.owner is not self:
            seq = self._index.seq
            if seq < self._n_root:
                return self._history[seq], self._history[seq].op_id
            return None, _core.operation_id(self._scope, seq)
        if scope.count < len(scope.recorded):
            rec = self._history[scope.recorded[scope.count]]
            return rec, rec.op_id
        return None, _core.operation_id(scope.prefix, scope.count)

    def _scoped_call(self, service: Service[Any, Any], request: Any,
                     frame: FrameType | None) -> asyncio.Future[Any]:
        """``ctx.call`` once child contexts exist: in the root scope the core's call, in a
        child context a call matched within it."""
        scope = CURRENT.get()
        idx = self._index
        if scope is None or scope.owner is not self:
            return idx.call_service(service, request, frame)
        if idx.sealed:
            future: asyncio.Future[Any] = self._loop.create_future()
            future.cancel()
            return future
        try:
            name = service.name
            request_adapter = service.request_adapter
            request_model = service.request_model
            response_adapter = service.response_adapter
        except AttributeError:
            raise self.not_a_service(service, frame) from None
        seq, op_id, record_seq = self._next_operation()
        try:
            decision, future, _, payload = idx.step(seq, "call", name, request_adapter,
                                                    request_model, response_adapter, request,
                                                    service)
        except _core.ReplayMismatch as exc:
            raise self._nondeterminism(exc, "call", name, frame) from None
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError, TypeError,
                ValueError) as exc:
            raise self.bad_request(exc, service, frame) from None
        if decision == _core.NEW:
            self.new_operation(seq, "call", name, payload, frame, op_id=op_id,
                               record_seq=record_seq)
            idx.pending.append(op_id)
        return future

    def run_context(self, name: str, index: int | None, body: Callable[[], Awaitable[Any]],
                    adapter: pydantic.TypeAdapter[Any], frame: FrameType | None
                    ) -> Awaitable[Any]:
        """``ctx.run_in_child_context`` and each nested batch branch (contexts.py)."""
        from .contexts import run_context

        self._not_kept()
        return run_context(self, name, index, body, adapter, frame)

    def recorded_flat(self) -> bool:
        """Whether the history has an operation other than a child context next: a batch
        recorded before branches ran as child contexts (or with ``flat=True``)."""
        rec = self._peek()[0]
        return rec is not None and rec.kind != "context"

    # -- the hooks of the replay core ---------------------------------------------------------
    def not_a_service(self, obj: object, frame: FrameType | None) -> BaseException:
        return TypeError(f"ctx.call expects a Service as its first argument, got {obj!r} at "
                         f"{site_of(frame)}")

    def bad_request(self, exc: Exception, service: Any, frame: FrameType | None) -> BaseException:
        return InvalidRequestError(
            f"workflow {self.workflow.name!r} ({self.workflow_id}): the request to service "
            f"{service_of(service.name)!r} at {site_of(frame)} is not a valid "
            f"{type_name(service.request_type)}: {describe_validation_error(exc)}")

    def mismatch(self, exc: _core.ReplayMismatch, kind: str, name: str,
                 frame: FrameType | None) -> BaseException:
        return self._nondeterminism(exc, kind, name, frame)

    def new_operation(self, seq: int, kind: str, name: str, payload: bytes,
                      frame: FrameType | None, op_id: str | None = None,
                      record_seq: int | None = None) -> None:
        """Record a new operation: ``seq`` is its root position (the core's ``ctx.call``);
        ``op_id`` and ``record_seq`` are given for others (:meth:`_next_operation`)."""
        if op_id is None or record_seq is None:
            op_id, record_seq = _core.operation_id(self._scope, seq), seq
        if not self._index.new_allowed and not self._relaxed:
            raise self._early_new_operation(seq, kind, name, frame)
        self._replaying = False
        if self._payload_limit is not None and len(payload) > self._payload_limit:
            self._fatal = PayloadTooLargeError(
                f"the request of call {op_id} (service "
                f"{display(kind, name)!r}, at "
                f"{site_of(frame)}) of workflow {self.workflow_id!r}", len(payload),
                self._payload_limit, self._payload_hint)
            raise self._fatal
        if record_seq >= SCOPED_SEQ_BASE:
            self._n_scoped_new += 1
        self.new_operations.append(OperationRecord(
            workflow_id=self.workflow_id, op_id=op_id, seq=record_seq,
            kind=kind,
            name=name, request=payload, request_digest=_core.digest(payload),
            site=site_of(frame), created_in=self._activation, created_at=self._now))

    # -- helpers -----------------------------------------------------------------------------
    def invalid_reply(self, record: OperationRecord, future: asyncio.Future[Any],
                      staged_payload: bytes | None, exc: pydantic.ValidationError) -> None:
        """A reply that does not validate against its response type. One that arrived now is
        rejected, never recorded: the call stays pending and a valid reply may still arrive.
        A recorded one means the response type changed under a running workflow."""
        self._not_kept()
        owner = getattr(future, "owner", None)
        if isinstance(owner, Service):
            reason = (f"reply to call {record.op_id} of workflow {self.workflow_id!r} (service "
                      f"{owner.name!r}) is not a valid {type_name(owner.response_type)}: "
                      f"{describe_validation_error(exc)}")
        else:
            reason = (f"the value completing {record.kind} "
                      f"{display(record.kind, record.name)!r} ({record.op_id}) of "
                      f"workflow {self.workflow_id!r} is not valid: "
                      f"{describe_validation_error(exc)}")
        self._index.pending.append(record.op_id)
        if staged_payload is not None:
            self.rejected[self._staged[record.op_id].message_index] = reason
        elif self._mismatch is None:
            self._mismatch = NonDeterminismError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}): the recorded {reason}; "
                "did the response type change while the workflow ran?")

    def _early_new_operation(self, seq: int, kind: str, name: str,
                             frame: FrameType | None) -> NonDeterminismError:
        self._mismatch = NonDeterminismError(
            f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
            f"history: the code at {site_of(frame)} created {kind} {display(kind, name)!r} as "
            f"operation "
            f"#{seq + 1} before the recorded replies were replayed, but the history recorded "
            f"only {len(self._history)} operations at that point")
        return self._mismatch

    def _nondeterminism(self, mismatch: _core.ReplayMismatch, kind: str, name: str,
                        frame: FrameType | None) -> NonDeterminismError:
        rec = self._history[mismatch.seq]
        head = (f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
                f"history at operation #{mismatch.seq + 1}: the code at {site_of(frame)} "
                f"created {kind} {display(kind, name)!r}, but the history recorded {rec.kind} "
                f"{display(rec.kind, rec.name)!r} "
                f"(created at {rec.site or 'an unknown site'})")
        if mismatch.field == "request":
            what = "the timer's duration" if rec.kind == "timer" else "the request"
            head = (f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
                    f"history at operation #{mismatch.seq + 1} ({kind} {display(kind, name)!r} at "
                    f"{site_of(frame)}): {what} differs from the recorded one: "
                    f"{_diff(rec.request, mismatch.payload)}")
        # The advice (ctx.patched, docs/versioning.md) comes from the replay core.
        error = NonDeterminismError(f"{head}. {mismatch.advice}")
        # Concurrent branches may each meet a mismatch: the workflow fails with the first.
        if self._mismatch is None:
            self._mismatch = error
        return error

    # -- running -------------------------------------------------------------------------------
    def run(self) -> ReplayResult:
        """Replay the workflow until it completes, fails or can make no progress.

        Raises:
            Exception: the store failed while the workflow ran (a checkpoint): nothing of
                this activation may be recorded or sent; its messages come again.
        """
        # The loaded history (and everything else alive now) is left out of the cyclic
        # collector's scans while the workflow replays: a full collection would otherwise
        # scan the N records at every trigger, and replaying N calls triggers O(N) of them.
        # gc.freeze/unfreeze move lists, O(1); a process that froze objects itself is left alone.
        frozen = gc.isenabled() and gc.get_freeze_count() <= _FROZEN_AT_START
        if frozen:
            gc.freeze()
        try:
            result = self._run()
        finally:
            if frozen:
                gc.unfreeze()
        if self._store_error is not None:
            self.discard()
            raise self._store_error
        return result

    # -- warm instances (warm.py) --------------------------------------------------------------
    def _not_kept(self) -> None:
        """Something the live state cannot follow exactly: this replay is not kept alive."""
        self.keep_alive = False

    def discard(self) -> None:
        """Seal the context, then tear down the workflow's tasks (their ``finally`` blocks run
        now, recording and sending nothing)."""
        self.kept = False
        self._live.clear()
        if not self._loop.is_closed():
            self._index.sealed = True
            self._loop.abandon()

    def warm_values(self, staged: Mapping[str, StagedResult]) -> dict[str, Any] | None:
        """The values of this activation's replies, validated for the live futures they
        resolve, if this kept instance can take them all: ``None`` when it holds no future
        for one of them, or a reply does not validate (a replay rejects it with its reason).
        Nothing is delivered here."""
        live = self._live
        if not self.kept:
            return None
        values: dict[str, Any] = {}
        for op_id, st in staged.items():
            held = live.get(op_id)
            if held is None:
                return None
            future, adapter = held[0], held[1]
            if st.state is OperationState.COMPLETED and not future.done():
                try:
                    values[op_id] = adapter.validate_json(st.payload)
                except pydantic.ValidationError:
                    return None
        return values

    def resume(self, staged: Mapping[str, StagedResult], values: Mapping[str, Any], *,
               activation: int, now: float,
               checkpoint: Callable[[Sequence[OperationRecord], Sequence[Outcome]],
                                    Sequence[str]] | None = None) -> ReplayResult:
        """Continue a kept instance in a later activation, without replaying: deliver this
        activation's outcomes to the live futures in operation order (as a replay delivers
        its last stage), run until idle, and conclude as :meth:`run` does. ``values`` come from
        :meth:`warm_values`; the caller checked that nobody else advanced the instance.

        Raises:
            Exception: the store failed while the workflow ran (a checkpoint).
        """
        assert self.kept and self._task is not None
        live = self._live
        order = sorted(staged, key=lambda op_id: live[op_id][4])
        self.kept = False
        idx = self._index
        self._staged = staged
        self._activation = activation
        self._now = now
        self._warm_stage = activation
        self._replaying = False
        self._checkpoint_to = checkpoint
        self.new_operations = []
        self.rejected = {}
        self.step_outcomes = []
        self.saved_applied = []
        self._persisted = self._saved_replies = self._saved_steps = 0
        self._store_error = None
        idx.accepted = []
        for op_id in order:
            self._deliver(op_id, staged[op_id], values.get(op_id))
        idx.pending = list(live)
        self._loop.forget_finished()
        self._loop.run_until_idle()
        result = self._conclude(self._task)
        if self._store_error is not None:
            self.discard()
            raise self._store_error
        return result

    def _deliver(self, op_id: str, staged: StagedResult, value: Any) -> None:
        """Resolve a live operation's future with its new outcome (the replay core's settle,
        for a future the core no longer tracks); ``value`` is the validated value."""
        future, _, name, _, _ = self._live.pop(op_id)
        self._index.accepted.append(op_id)
        if future.done():
            return  # cancelled (the workflow stopped waiting for it): recorded, ignored
        if staged.state is OperationState.COMPLETED:
            future.set_result(value)
        else:
            err = orjson.loads(staged.payload)
            future.set_exception(ServiceError(
                err.get("type", "Error"), err.get("message", ""), err.get("details"),
                service=name, call_id=op_id))


    def _run(self) -> ReplayResult:
        wf = self.workflow
        try:
            request = _core.decode_value(wf.request_adapter, self._request_payload)
        except pydantic.ValidationError as invalid:
            return self._finish_failed(NonDeterminismError(
                f"workflow {wf.name!r} ({self.workflow_id}): its recorded input is no longer a "
                f"valid {type_name(wf.request_type)}: {describe_validation_error(invalid)}"))
        ctx: WorkflowContext[Any] = WorkflowContext(self, request, self.workflow_id)
        task = self._task = self._loop.create_task(wf.fn(ctx))
        loop = self._loop
        idx = self._index
        if self._cancel is not None:
            idx.barrier = self._cancel[0]
        loop.run_until_idle()
        advance = idx.advance
        while not task.done() and self._mismatch is None and self._fatal is None:
            if self._cancel is not None and not self._cancel_delivered and (
                    idx.next_stage == -1 or idx.next_stage > self._cancel[0]):
                self._cancel_delivered = True
                idx.barrier = sys.maxsize
                task.cancel(self._cancel[1])
                loop.run_until_idle()
                continue
            if not advance():
                break
            loop.run_until_idle()
        return self._conclude(task)

    def _conclude(self, task: asyncio.Task[Any]) -> ReplayResult:
        """The result of a replay (or a warm continuation) that ran until idle."""
        wf = self.workflow
        if not task.done():
            return self._suspend()
        if task.cancelled() and self._cancel_delivered and self._mismatch is None:
            return self._finish_cancelled()
        exc: BaseException | None = (
            WorkflowError("the workflow's main task was cancelled") if task.cancelled()
            else task.exception())
        if self._mismatch is not None:
            return self._finish_failed(self._mismatch)
        if self._fatal is not None:
            return self._finish_failed(self._fatal)
        if exc is not None:
            return self._finish_failed(exc)
        if self._index.seq < self._n_root:
            missing = self._history[self._index.seq]
            return self._finish_failed(NonDeterminismError(
                f"workflow {wf.name!r} ({self.workflow_id}) finished after creating "
                f"{_count(self._index.seq)}, but its history recorded {len(self._history)}; the "
                f"first missing one is #{missing.seq + 1}, {missing.kind} "
                f"{display(missing.kind, missing.name)!r} "
                f"(created at {missing.site or 'an unknown site'})"))
        try:
            result = _core.encode_value(wf.result_adapter, task.result())
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as bad:
            return self._finish_failed(WorkflowError(
                f"workflow {wf.name!r} ({self.workflow_id}) returned a value that is not a "
                f"valid {type_name(wf.result_type)}: {describe_validation_error(bad)}"))
        if self._payload_limit is not None and len(result) > self._payload_limit:
            return self._finish_failed(PayloadTooLargeError(
                f"the result of workflow {self.workflow_id!r} ({wf.name})", len(result),
                self._payload_limit, self._payload_hint))
        self._index.settle_unreached()
        self._loop.close()
        return ReplayResult("completed", self.new_operations, result=result,
                            accepted=self.accepted, rejected=self.rejected,
                            step_outcomes=self.step_outcomes)

    def _suspend(self) -> ReplayResult:
        if (self.keep_alive and self._mismatch is None and self._fatal is None
                and self._index.seq >= self._n_root):
            # Kept alive (warm.py): not sealed, its tasks stay blocked on their futures.
            if not self._warm_stage:
                self._index.settle_unreached()
            self.kept = True
            return ReplayResult("suspended", self.new_operations, accepted=self.accepted,
                                rejected=self.rejected, pending=self.pending,
                                step_outcomes=self.step_outcomes)
        self._index.sealed = True
        self._index.settle_unreached()
        self._loop.abandon()
        if self._mismatch is not None:
            # The workflow caught the NonDeterminismError and waited on: it still failed.
            return self._finish_failed(self._mismatch)
        if self._fatal is not None:
            return self._finish_failed(self._fatal)
        if self._index.seq < self._n_root:
            missing = self._history[self._index.seq]
            return self._finish_failed(NonDeterminismError(
                f"workflow {self.workflow.name!r} ({self.workflow_id}) suspended after "
                f"creating {_count(self._index.seq)}, but its history recorded "
                f"{len(self._history)}; the first not created again is #{missing.seq + 1}, "
                f"{missing.kind} {display(missing.kind, missing.name)!r} (created at "
                f"{missing.site or 'an unknown site'})"))
        return ReplayResult("suspended", self.new_operations, accepted=self.accepted,
                            rejected=self.rejected, pending=self.pending,
                            step_outcomes=self.step_outcomes)

    def _finish_cancelled(self) -> ReplayResult:
        assert self._cancel is not None
        self._index.sealed = True
        self._index.settle_unreached()
        if not self._loop.is_closed():
            self._loop.abandon()
        error = orjson.dumps({"type": "Cancelled", "message": self._cancel[1], "details": None})
        return ReplayResult("cancelled", self.new_operations, error=error,
                            accepted=self.accepted, rejected=self.rejected,
                            step_outcomes=self.step_outcomes)

    def _finish_failed(self, exc: BaseException) -> ReplayResult:
        self._index.sealed = True
        self._index.settle_unreached()
        if not self._loop.is_closed():
            self._loop.abandon()
        # A failed replay sends nothing new when the history no longer matches the code.
        new_ops = [] if isinstance(exc, NonDeterminismError) else self.new_operations
        return ReplayResult("failed", new_ops, error=error_payload(exc), exception=exc,
                            accepted=self.accepted, rejected=self.rejected,
                            step_outcomes=[] if isinstance(exc, NonDeterminismError)
                            else self.step_outcomes)


class _StoreFailed(BaseException):
    """Unwinds workflow code after a failed checkpoint (a BaseException, so ``except
    Exception`` in workflow code cannot swallow it)."""


def _count(n: int) -> str:
    return f"{n} operation" if n == 1 else f"{n} operations"


def _diff(recorded: bytes, new: bytes) -> str:
    """What differs between two encoded requests, for error messages (never empty)."""
    return request_difference(recorded, new)
