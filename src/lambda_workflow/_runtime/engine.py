"""One activation: apply an instance's messages, replay once, then record and send (outbox)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
import pydantic_core

from .. import _core, _observe
from .._opnames import service_of
from ..backends.protocols import Clock, StateStore, TimerService, Transport
from ..callbacks import CallbackTokens
from ..errors import (
    InvalidCallbackTokenError,
    NonDeterminismError,
    UnknownWorkflowError,
    WorkflowError,
)
from ..models import (
    CHILD_ID_MARK,
    MAX_WORKFLOW_ID,
    CallbackCompletedMessage,
    CallbackHeartbeatMessage,
    CallResultMessage,
    CancelMessage,
    ErrorInfo,
    History,
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
    ResumeMessage,
    StartMessage,
    TimerFiredMessage,
    WorkflowMessage,
    describe_validation_error,
)
from ..service import type_name
from ..workflow import Workflow
from .heartbeats import heartbeat_callback_of, heartbeat_timer_result
from .repair import RepairView, repair_view
from .replay import Replayer, StagedResult
from .warm import InstanceCache, WarmEntry, code_identity, make_instance_cache

__all__ = ["ActivationReport", "Engine", "call_request_body", "call_result_body",
           "current_heartbeat", "start_message_body", "timer_fire_at", "timer_fired_body"]

_SORT = orjson.OPT_SORT_KEYS
# Operations that leave the activation: a call's request, a timer's schedule. Steps run in
# the activation; patch markers are only recorded.
_SENT_KINDS = frozenset({"call", "timer", "child"})
# Recorded outside the workflow's own order: not replayed as its operations.
_OUTSIDE_KINDS = frozenset({"cancel", "parent", "repair", "trace"})
PARENT_OP_ID = "parent"
CANCEL_OP_ID = "cancel"
_NO_REPAIRS = RepairView()


@dataclass(slots=True)
class _Warm:
    """One activation's use of the warm instance cache: the entry it continues (with the
    instance record just read), or none; the replayer that may be kept afterwards."""

    entry: WarmEntry | None = None
    instance: InstanceRecord | None = None
    status: str = "off"
    replayer: Replayer | None = None


def _store_remembers(store: StateStore, workflow_id: str, activations: int) -> bool:
    """Whether a store that remembers instances' counters for its conditional writes (the
    DynamoDB store) still remembers this one as it was read: a warm activation skips the
    read that would refresh it, and its writes must keep the second-writer check."""
    memory = getattr(store, "_memory", None)
    if not callable(memory):
        return True
    known = memory(workflow_id)
    return known is not None and getattr(known, "activations", None) == activations


@dataclass(slots=True)
class ActivationReport:
    """What one activation did, for logs, the CLI and tests.

    ``status`` is the instance's state afterwards: ``suspended``, ``completed``, ``failed``,
    ``cancelled``, ``finished-earlier`` (messages for an instance that had already ended) or
    ``rejected`` (no instance could be found or created from the messages).
    """

    workflow_id: str
    workflow_name: str | None
    activation: int
    status: str
    applied: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    sent: list[OperationRecord] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    result: bytes | None = None
    error: ErrorInfo | None = None
    # The warm instance cache (warm.py): "hit" (continued without replay), "miss" or "off".
    cache: str = "off"
    # For metrics (aws/metrics.py): the replay's duration, and new operations by kind.
    replay_seconds: float = 0.0
    created: dict[str, int] = field(default_factory=dict)


def start_message_body(workflow_id: str, workflow_name: str, input_payload: bytes) -> bytes:
    """The JSON of a start message, embedding the already-encoded input (and, with tracing
    on, the starter's current span as ``traceparent``)."""
    body: dict[str, Any] = {"v": 1, "kind": "start", "workflow_id": workflow_id,
                            "workflow": workflow_name, "input": orjson.Fragment(input_payload)}
    if _observe.TRACING is not None and (tp := _observe.TRACING.start_traceparent()):
        body["traceparent"] = tp
    return orjson.dumps(body)


def call_request_body(op: OperationRecord, reply_to: str,
                      traceparent: str | None = None) -> bytes:
    """The JSON of a call request message, embedding the recorded request bytes;
    ``traceparent`` (tracing) names the call's span."""
    body = {"v": 1, "kind": "call", "workflow_id": op.workflow_id,
            "call_id": op.op_id, "service": service_of(op.name), "reply_to": reply_to,
            "request": orjson.Fragment(op.request)}
    if traceparent is not None:
        body["traceparent"] = traceparent
    return orjson.dumps(body)


def call_result_body(workflow_id: str, call_id: str, ok: bool, payload: bytes) -> bytes:
    """The JSON of a service's reply, embedding the encoded value (ok) or error (not ok)."""
    return orjson.dumps({"v": 1, "kind": "call_result", "workflow_id": workflow_id,
                         "call_id": call_id, "ok": ok,
                         "value" if ok else "error": orjson.Fragment(payload)})


def replay_inputs(operations: Sequence[OperationRecord]
                  ) -> tuple[list[OperationRecord], tuple[int, str] | None]:
    """What a replay is given: the workflow's own operations in order (not the records kept
    outside it: a cancellation, a child's parent), and the recorded cancellation as
    ``(stage, reason)``."""
    ops = [op for op in operations if op.kind not in _OUTSIDE_KINDS]
    record = next((op for op in operations if op.op_id == CANCEL_OP_ID), None)
    if record is None:
        return ops, None
    return ops, (record.resolved_in or record.created_in,
                 str(orjson.loads(record.request).get("reason", "")))


def child_workflow_id(parent_id: str, op_id: str, given: str | None) -> str:
    """The id of a child workflow: the given one, else ``<parent id>~<operation id>`` (a
    digest of the parent id when that would exceed 128 characters). Ids that users choose
    may not contain ``~``, so a generated child id is never an id a user started."""
    if given:
        return given
    child_id = f"{parent_id}{CHILD_ID_MARK}{op_id}"
    if len(child_id) > MAX_WORKFLOW_ID:
        child_id = f"{_core.digest(parent_id.encode())[:64]}{CHILD_ID_MARK}{op_id}"
    return child_id


def timer_fire_at(op: OperationRecord) -> float:
    """When a timer operation fires: its creation time plus its duration."""
    return op.created_at + float(orjson.loads(op.request)["seconds"])


def timer_fired_body(workflow_id: str, timer_id: str) -> bytes:
    """The JSON of a ``timer_fired`` message."""
    return orjson.dumps({"v": 1, "kind": "timer_fired", "workflow_id": workflow_id,
                         "timer_id": timer_id})


def current_heartbeat(callback: OperationRecord,
                      operations: Sequence[OperationRecord]) -> OperationRecord | None:
    """The pending heartbeat operation of a callback that is still waiting, if any."""
    if callback.state is not OperationState.PENDING:
        return None
    request = orjson.dumps({"callback": callback.op_id})
    for op in reversed(operations):
        if op.kind == "heartbeat" and op.request == request:
            return op if op.state is OperationState.PENDING else None
    return None


def _outcome_of(msg: CallResultMessage | CallbackCompletedMessage) -> tuple[OperationState, bytes]:
    if msg.ok:
        return OperationState.COMPLETED, orjson.dumps(msg.value, option=_SORT)
    assert msg.error is not None  # the model guarantees an error when not ok
    return OperationState.FAILED, orjson.dumps(msg.error.model_dump(), option=_SORT)


class Engine:
    """Runs activations against a state store and a transport.

    An activation raises only for failures of the store or the transport (or a workflow name
    this deployment does not know): the caller then releases the messages for redelivery, and
    everything the activation did is repeatable: conditional records, the same operation ids,
    the same deduplication ids. Bad messages are not raised: they come back in
    ``ActivationReport.rejected`` with the reason, for the dead-letter queue.
    """

    def __init__(self, store: StateStore, transport: Transport,
                 workflows: Mapping[str, Workflow[Any, Any]], clock: Clock, *,
                 payload_limit: int | None = None, payload_hint: str = "",
                 timers: TimerService | None = None,
                 tokens: CallbackTokens | None = None,
                 instance_cache: InstanceCache | int | None = None) -> None:
        """``payload_limit`` (bytes) caps a new call's request and the workflow's result:
        over it, the workflow fails with :class:`PayloadTooLargeError` (``payload_hint`` says
        how to lift the limit) instead of recording what the store or queue cannot hold.
        ``instance_cache`` keeps suspended instances alive (warm.py): a number of instances
        (``0``: off), an :class:`InstanceCache`, or ``None`` for
        ``LAMBDA_WORKFLOW_INSTANCE_CACHE`` (default 1024)."""
        self.instance_cache = make_instance_cache(instance_cache)
        self.payload_limit = payload_limit
        self.payload_hint = payload_hint
        self.timers = timers
        self.tokens = tokens
        self.store = store
        self.transport = transport
        self.workflows = workflows
        self.clock = clock

    def _registered(self) -> str:
        return ", ".join(sorted(self.workflows)) or "none"

    def _create_from_start(self, workflow_id: str, messages: Sequence[WorkflowMessage],
                           report: ActivationReport) -> History | None:
        start = next((m for m in messages if isinstance(m, StartMessage)), None)
        if start is None:
            for i in range(len(messages)):
                report.rejected[i] = (f"no workflow instance {workflow_id!r} exists (a message "
                                      "for an instance that was never started)")
            return None
        wf = self.workflows.get(start.workflow)
        if wf is None:
            reason = (f"unknown workflow {start.workflow!r} for instance {workflow_id!r}; "
                      f"registered: {self._registered()}")
            report.rejected.update(dict.fromkeys(range(len(messages)), reason))
            self._refuse_child(start, "UnknownWorkflowError", reason)
            return None
        try:
            payload = _core.encode_value(
                wf.request_adapter, wf.request_adapter.validate_python(start.input))
        except pydantic.ValidationError as exc:
            reason = (f"the input of workflow {wf.name!r} ({workflow_id}) is not a valid "
                      f"{type_name(wf.request_type)}: {describe_validation_error(exc)}")
            report.rejected.update(dict.fromkeys(range(len(messages)), reason))
            self._refuse_child(start, "InvalidRequestError", reason)
            return None
        now = self.clock.now()
        link: list[OperationRecord] = []
        if start.parent is not None:
            # A child remembers its parent in its own history: its result goes there. The
            # link is written with the instance, in one atomic write: a crash between two
            # writes would leave a child that finishes with nobody to tell.
            ref = orjson.dumps(start.parent.model_dump(exclude_none=True), option=_SORT)
            link.append(OperationRecord(
                workflow_id, PARENT_OP_ID, -2, "parent", start.parent.workflow_id, ref,
                _core.digest(ref), state=OperationState.COMPLETED, result=b"null",
                created_in=0, resolved_in=0, created_at=now, resolved_at=now))
        inst, _ = self.store.create_instance(InstanceRecord(
            workflow_id, wf.name, payload, _core.digest(payload), created_at=now,
            updated_at=now), link)
        report.workflow_name = inst.workflow_name
        return self.store.load_history(workflow_id)

    def _refuse_child(self, start: StartMessage, error_type: str, reason: str) -> None:
        """A child that cannot be created fails the parent's ``child`` operation with the
        reason, instead of leaving the parent waiting on a child that will never run."""
        if start.parent is None:
            return
        self._reply_to_parent(start.parent.workflow_id, start.parent.call_id, False,
                              orjson.dumps({"type": error_type,
                                            "message": f"child workflow not started: {reason}",
                                            "details": {"workflow_id": start.workflow_id,
                                                        "details": None}}),
                              start.parent.workflow)

    def _reply_to_parent(self, parent_id: str, call_id: str, ok: bool, payload: bytes,
                         parent_workflow: str | None) -> None:
        """The reply of a parent's ``child`` operation: one deduplication id whoever sends
        it (the child that ended, or the refusal of a child that could not be created), so
        the parent applies one. It goes to the queue of the parent's workflow
        (``parent_workflow``; ``None`` for a link recorded without it: the own queue)."""
        self.transport.send_to_workflow(
            parent_id, _core.dedup_id(parent_id, "call_result", call_id),
            call_result_body(parent_id, call_id, ok, payload), parent_workflow)

    @staticmethod
    def _parent_of(operations: Sequence[OperationRecord]) -> tuple[str, str] | None:
        ref = next((op for op in operations if op.op_id == PARENT_OP_ID), None)
        if ref is None:
            return None
        parent = orjson.loads(ref.request)
        return parent["workflow_id"], parent["call_id"]

    @staticmethod
    def _parent_workflow(operations: Sequence[OperationRecord]) -> str | None:
        """The parent's workflow name its recorded link carries (``None`` for a link of an
        earlier version, recorded without it)."""
        ref = next((op for op in operations if op.op_id == PARENT_OP_ID), None)
        name = orjson.loads(ref.request).get("workflow") if ref is not None else None
        return name if isinstance(name, str) else None

    @staticmethod
    def _same_input(wf: Workflow[Any, Any], msg: StartMessage, inst: InstanceRecord) -> bool:
        try:
            payload = _core.encode_value(wf.request_adapter,
                                         wf.request_adapter.validate_python(msg.input))
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError):
            return False
        return _core.digest(payload) == inst.input_digest

    def _callback_target(self, token: str, workflow_id: str,
                         ops: Mapping[str, OperationRecord], report: ActivationReport,
                         index: int, fenced: frozenset[str] = frozenset()
                         ) -> OperationRecord | None:
        """The callback operation a token names, or ``None`` (the message is rejected with
        the reason, or is a duplicate: its callback was dropped by a reset)."""
        if self.tokens is None:
            report.rejected[index] = (f"callback message for workflow instance {workflow_id!r}"
                                      ", but this runtime has no callback key to verify it")
            return None
        try:
            token_workflow, callback_id = self.tokens.verify(token)
        except InvalidCallbackTokenError as exc:
            report.rejected[index] = f"{exc} (workflow instance {workflow_id!r})"
            return None
        op = ops.get(callback_id)
        if token_workflow == workflow_id and op is None and callback_id in fenced:
            report.duplicates.append(callback_id)
            return None
        if token_workflow != workflow_id or op is None or op.kind != "callback":
            report.rejected[index] = (f"callback token names callback {callback_id!r} of "
                                      f"{token_workflow!r}, which instance {workflow_id!r} "
                                      "does not have")
            return None
        try:  # only the token recorded for this callback: not one of an earlier run
            self.tokens.check_recorded(token, op.request, workflow_id)
        except InvalidCallbackTokenError as exc:
            report.rejected[index] = str(exc)
            return None
        return op

    def start_child(self, op: OperationRecord, parent_workflow: str | None = None,
                    traceparent: str | None = None) -> None:
        """Send the start message of the child workflow a ``child`` operation names, to the
        queue of the child's workflow. ``parent_workflow`` (the parent's workflow name) goes
        in the message's ``parent`` object: the child's reply is routed by it."""
        request = orjson.loads(op.request)
        child_id = child_workflow_id(op.workflow_id, op.op_id, request.get("workflow_id"))
        parent: dict[str, str] = {"workflow_id": op.workflow_id, "call_id": op.op_id}
        # Only a transport that routes by workflow needs the name; without routing the link
        # stays as earlier versions read it, so a deploy that replaces them loses no child
        # start to a function still on the old code (whose ParentRef has no such field).
        if parent_workflow is not None and getattr(self.transport, "routes_workflows", False):
            parent["workflow"] = parent_workflow
        start: dict[str, Any] = {"v": 1, "kind": "start", "workflow_id": child_id,
                                 "workflow": op.name, "input": request["input"],
                                 "parent": parent}
        if traceparent is not None:  # the child's trace continues the parent's
            start["traceparent"] = traceparent
        body = orjson.dumps(start)
        # Deduplicated per parent operation, not per child id: a user's start of the same id
        # must not swallow this one (the parent would never hear that the id is taken).
        self.transport.send_to_workflow(
            child_id, _core.dedup_id(child_id, "start", f"{op.workflow_id}\0{op.op_id}"), body,
            op.name)

    def _timer_result(self, timer: OperationRecord, ops: Mapping[str, OperationRecord],
                      now: float) -> bytes:
        """A timer's recorded result: ``null``, or for a callback's heartbeat timer the
        heartbeat timeout left after the callback's last heartbeat (heartbeats.py)."""
        callback_id = heartbeat_callback_of(timer)
        if callback_id is None:
            return b"null"
        last = getattr(self.store, "last_heartbeat", None)
        callback = ops.get(callback_id)
        return heartbeat_timer_result(
            callback, last(timer.workflow_id, callback_id) if last is not None else None, now)

    def _withdraw_timers(self, operations: Sequence[OperationRecord],
                         staged: Mapping[str, StagedResult]) -> None:
        """The instance is ending: its timers still pending (a timeout that lost its race,
        say) will change nothing, so their carrier may drop them. Best effort."""
        if self.timers is None:
            return
        for op in operations:
            if op.kind == "timer" and op.state is OperationState.PENDING and (
                    op.op_id not in staged):
                try:
                    self.timers.withdraw(op.workflow_id, op.op_id)
                except Exception:  # a timer left behind fires later and changes nothing
                    continue

    def _cancel_children(self, operations: Sequence[OperationRecord],
                         staged: Mapping[str, StagedResult], reason: str) -> None:
        for op in operations:
            if (op.kind != "child" or op.state is not OperationState.PENDING
                    or op.op_id in staged):
                continue
            child_id = child_workflow_id(op.workflow_id, op.op_id,
                                         orjson.loads(op.request).get("workflow_id"))
            body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": child_id,
                                 "reason": f"parent {op.workflow_id!r} cancelled: {reason}"})
            self.transport.send_to_workflow(child_id, _core.dedup_id(child_id, "cancel", ""),
                                            body, op.name)

    def _notify_parent(self, history: History, status: InstanceStatus, result: bytes | None,
                       error: bytes | None) -> None:
        """A child that ended sends its result (or error) to its parent as the reply of the
        parent's ``child`` operation. Repeated deliveries are harmless (same dedup id)."""
        parent = self._parent_of(history.operations)
        if parent is None or status is InstanceStatus.RUNNING:
            return
        parent_id, call_id = parent
        parent_workflow = self._parent_workflow(history.operations)
        child_id = history.instance.workflow_id
        if status is InstanceStatus.COMPLETED:
            self._reply_to_parent(parent_id, call_id, True, result or b"null", parent_workflow)
            return
        err = orjson.loads(error or b"{}")
        self._reply_to_parent(parent_id, call_id, False, orjson.dumps(
            {"type": err.get("type", "Error"), "message": err.get("message", ""),
             "details": {"workflow_id": child_id, "details": err.get("details")}}),
            parent_workflow)

    def _schedule(self, op: OperationRecord) -> None:
        if self.timers is None:
            raise WorkflowError(
                f"workflow instance {op.workflow_id!r} started a durable timer, but this "
                "runtime has no timer service (Engine(timers=...))")
        self.timers.schedule(op.workflow_id, op.op_id, timer_fire_at(op))

    def activate(self, workflow_id: str, messages: Sequence[WorkflowMessage]) -> ActivationReport:
        """Apply every message of one instance, replay once (or continue its warm instance),
        record and send."""
        warm = self._warm_begin(workflow_id, messages)
        try:
            return self._activate(workflow_id, messages, warm)
        except BaseException:
            # The store or the transport failed: the live state may be ahead of the store.
            if warm.replayer is not None:
                warm.replayer.discard()
            raise

    def _warm_begin(self, workflow_id: str, messages: Sequence[WorkflowMessage]) -> _Warm:
        """The warm instance of ``workflow_id`` if it may continue: the store confirms, in one
        read of the instance record, that nobody advanced it since this process did, and the
        code that runs it is the same. Anything else evicts it."""
        warm = _Warm()
        cache = self.instance_cache
        if not cache.enabled:
            return warm
        entry = cache.take(workflow_id)
        reason = "none"
        if entry is not None:
            reason = ""
            if any(isinstance(m, CancelMessage | ResumeMessage) for m in messages):
                reason = "message"  # a cancellation is delivered by a replay
            else:
                inst = self.store.get_instance(workflow_id)
                if inst is None or inst.status is not InstanceStatus.RUNNING:
                    reason = "finished"
                elif not inst.input:
                    # The input's S3 object is gone (a store reads it as empty): the replay
                    # reports the damage, as it would without the cache.
                    reason = "input"
                elif inst.activations != entry.activations or not _store_remembers(
                        self.store, workflow_id, inst.activations):
                    reason = "advanced"
                elif (self.workflows.get(inst.workflow_name) is not entry.workflow
                      or entry.identity != code_identity()):
                    reason = "deploy"
                else:
                    warm.entry, warm.instance, warm.status = entry, inst, "hit"
            if reason:
                cache.discard(entry, reason)
        if warm.entry is None:
            cache.count("miss")
            warm.status = "miss"
        return warm

    def _warm_keep(self, warm: _Warm, history: History, ops: dict[str, OperationRecord],
                   result: Any, report: ActivationReport, staged: Mapping[str, StagedResult],
                   read_activations: int, now: float) -> None:
        """After an activation that completed every write: keep its instance alive if it
        suspended and the store recorded exactly what it did."""
        replayer, warm.replayer = warm.replayer, None
        if replayer is None:
            return
        cache = self.instance_cache
        if not replayer.kept or report.status != "suspended":
            replayer.discard()
            return
        applied = set(report.applied)
        outcomes = [(op_id, staged[op_id].state, staged[op_id].payload)
                    for op_id in result.accepted]
        outcomes += [(o.op_id, o.state, o.result) for o in result.step_outcomes]
        if any(op_id not in applied for op_id, _, _ in outcomes):
            # the store refused a reply: another writer got there first
            replayer.discard()
            cache.evicted("conflict")
            return
        entry = warm.entry
        if entry is None:
            wf = self.workflows[history.instance.workflow_name]
            entry = WarmEntry(history.instance.workflow_id, wf, code_identity(), replayer,
                              history.operations, ops, read_activations)
        operations = entry.operations
        for op in result.new_operations:
            if op.op_id not in entry.ops:
                copy = dataclasses.replace(op)
                operations.append(copy)
                entry.ops[op.op_id] = copy
        for op_id, state, payload in outcomes:
            rec = entry.ops[op_id]
            rec.state, rec.result, rec.resolved_in, rec.resolved_at = (
                state, payload, report.activation, now)
        for op in report.sent:
            entry.ops[op.op_id].sent = True
        if outcomes or result.new_operations:
            entry.activations = report.activation
        else:
            entry.activations = read_activations
        cache.put(entry)

    def _activate(self, workflow_id: str, messages: Sequence[WorkflowMessage],
                  warm: _Warm) -> ActivationReport:
        report = ActivationReport(workflow_id, None, 0, "rejected")
        report.cache = warm.status
        entry = warm.entry
        history = (History(warm.instance, entry.operations)
                   if entry is not None and warm.instance is not None
                   else self.store.load_history(workflow_id))
        if history is None:
            history = self._create_from_start(workflow_id, messages, report)
            if history is None:
                return report
        inst = history.instance
        report.workflow_name = inst.workflow_name
        activation = report.activation = inst.activations + 1
        now = self.clock.now()

        # Ids of operations a reset dropped: their late messages are duplicates, and records a
        # store had not deleted yet are not part of the history (repair.py).
        repairs = repair_view(history.operations) if entry is None else _NO_REPAIRS
        if repairs.fenced:
            history.operations = [op for op in history.operations
                                  if op.op_id not in repairs.fenced]
        ops = {op.op_id: op for op in history.operations} if entry is None else entry.ops
        staged: dict[str, StagedResult] = {}
        cancel: CancelMessage | None = None
        for i, msg in enumerate(messages):
            if isinstance(msg, StartMessage):
                if msg.parent is not None and self._parent_of(history.operations) != (
                        msg.parent.workflow_id, msg.parent.call_id):
                    # The id is taken by an instance this parent did not start.
                    report.rejected[i] = (
                        f"child workflow id {workflow_id!r} of {msg.parent.workflow_id!r} is "
                        f"already used by an instance of {inst.workflow_name!r} that it did "
                        "not start")
                    self._refuse_child(msg, "WorkflowAlreadyStartedError", report.rejected[i])
                elif msg.workflow != inst.workflow_name:
                    report.rejected[i] = (
                        f"instance {workflow_id!r} runs workflow {inst.workflow_name!r}; a start "
                        f"message for workflow {msg.workflow!r} cannot reuse its id")
            elif isinstance(msg, CallResultMessage):
                op = ops.get(msg.call_id)
                if op is None and msg.call_id in repairs.fenced:
                    report.duplicates.append(msg.call_id)
                elif op is None or op.kind not in ("call", "child"):
                    report.rejected[i] = (
                        f"reply for unknown call id {msg.call_id!r} of workflow instance "
                        f"{workflow_id!r} ({inst.workflow_name}); it has "
                        f"{sum(o.kind == 'call' for o in history.operations)} calls")
                elif op.state is not OperationState.PENDING or msg.call_id in staged:
                    report.duplicates.append(msg.call_id)
                else:
                    state, payload = _outcome_of(msg)
                    staged[msg.call_id] = StagedResult(state, payload, i)
            elif isinstance(msg, TimerFiredMessage):
                op = ops.get(msg.timer_id)
                if op is None and msg.timer_id in repairs.fenced:
                    report.duplicates.append(msg.timer_id)
                elif op is None or op.kind != "timer":
                    report.rejected[i] = (f"unknown timer id {msg.timer_id!r} for workflow "
                                          f"instance {workflow_id!r}")
                elif op.state is not OperationState.PENDING or msg.timer_id in staged:
                    report.duplicates.append(msg.timer_id)
                else:
                    staged[msg.timer_id] = StagedResult(
                        OperationState.COMPLETED, self._timer_result(op, ops, now), i)
            elif isinstance(msg, CallbackCompletedMessage | CallbackHeartbeatMessage):
                target = self._callback_target(msg.token, workflow_id, ops, report, i,
                                               repairs.fenced)
                if target is None:
                    continue
                if isinstance(msg, CallbackHeartbeatMessage):
                    target = current_heartbeat(target, history.operations)
                    if target is None or target.op_id in staged:
                        report.duplicates.append(msg.token[:16])
                        continue
                    staged[target.op_id] = StagedResult(OperationState.COMPLETED, b"null", i)
                elif target.state is not OperationState.PENDING or target.op_id in staged:
                    report.duplicates.append(target.op_id)
                else:
                    state, payload = _outcome_of(msg)
                    staged[target.op_id] = StagedResult(state, payload, i)
            elif isinstance(msg, ResumeMessage):
                continue  # a wake-up after a repair: the activation itself is the point
            elif cancel is not None:
                report.duplicates.append(CANCEL_OP_ID)  # the first cancel's reason stands
            else:
                cancel = msg

        if inst.status is not InstanceStatus.RUNNING:
            # Late replies are kept in the history; the workflow does not run again.
            report.applied = self.store.record_outcomes(
                workflow_id, [Outcome(op_id, st.state, st.payload) for op_id, st in staged.items()],
                activation, now) if staged else []
            report.status = "finished-earlier"
            self._notify_parent(history, inst.status, inst.result, inst.error)
            return report
        # A cancellation is recorded once (op id "cancel", outside the workflow's own order)
        # and delivered to the workflow after the stage it arrived in, on every replay.
        recorded_cancel = ops.get(CANCEL_OP_ID)
        new_cancel: OperationRecord | None = None
        if cancel is not None and recorded_cancel is None:
            reason = cancel.reason or "cancelled by request"
            payload = orjson.dumps({"reason": reason})
            new_cancel = recorded_cancel = OperationRecord(
                workflow_id, CANCEL_OP_ID, -1, "cancel", "cancel", payload,
                _core.digest(payload), state=OperationState.COMPLETED, result=b"null",
                created_in=activation, resolved_in=activation, created_at=now, resolved_at=now)
        elif cancel is not None:
            report.duplicates.append(CANCEL_OP_ID)
        replayed, cancel_at = replay_inputs(
            [*history.operations, *([new_cancel] if new_cancel is not None else [])]
        ) if entry is None else ([], None)

        wf = self.workflows.get(inst.workflow_name)
        if wf is None:
            raise UnknownWorkflowError(
                f"instance {workflow_id!r} runs workflow {inst.workflow_name!r}, which is not "
                f"registered here (registered: {self._registered()})")
        for i, msg in enumerate(messages):
            if (isinstance(msg, StartMessage) and i not in report.rejected
                    and not self._same_input(wf, msg, inst)):
                report.rejected[i] = (
                    f"workflow id {workflow_id!r} is already used by an instance of "
                    f"{inst.workflow_name!r} with a different input; a start message may only "
                    "repeat the original input")
        def checkpoint(new: Sequence[OperationRecord], outcomes: Sequence[Outcome]
                       ) -> list[str]:
            return self.store.commit_activation(workflow_id, outcomes, new, activation, now)

        warm_values = entry.replayer.warm_values(staged) if entry is not None else None
        if entry is not None and warm_values is None:
            # The live instance cannot take these outcomes as they are: replay instead.
            self.instance_cache.discard(entry, "outcomes")
            self.instance_cache.count("miss")
            warm.entry, warm.instance, warm.status = None, None, "miss"
            return self._activate(workflow_id, messages, warm)
        replayer = Replayer(wf, workflow_id, inst.input, replayed, staged,
                            activation=activation, now=now, payload_limit=self.payload_limit,
                            payload_hint=self.payload_hint, checkpoint=checkpoint,
                            tokens=self.tokens, cancel=cancel_at, scope=repairs.scope,
                            relaxed=repairs.relaxed_at == len(replayed),
                            keep_alive=self.instance_cache.enabled
                            ) if entry is None else entry.replayer
        warm.replayer = replayer
        if entry is not None:
            self.instance_cache.count("hit")
        trace = (_observe.TRACING.begin(history, messages, activation, now)
                 if _observe.TRACING is not None else None)
        began = time.perf_counter()
        result = (replayer.run() if warm_values is None else replayer.resume(
            staged, warm_values, activation=activation, now=now, checkpoint=checkpoint))
        report.replay_seconds = time.perf_counter() - began
        for op in result.new_operations:
            report.created[op.kind] = report.created.get(op.kind, 0) + 1
        if new_cancel is not None:
            result.new_operations.append(new_cancel)
        if trace is not None and trace.record is not None:
            result.new_operations.append(trace.record)
        report.rejected.update(result.rejected)
        report.pending = result.pending

        # Outbox: record the replies and the new requests (one atomic write), send, mark
        # sent. A crash between any two steps repeats them with the same ids on redelivery.
        # Replies and operations a checkpoint recorded already are skipped by the commit
        # (each write is conditional): report what both recorded.
        report.applied = list(replayer.saved_applied)
        if result.accepted or result.new_operations or result.step_outcomes:
            report.applied += self.store.commit_activation(
                workflow_id, [Outcome(op_id, staged[op_id].state, staged[op_id].payload)
                              for op_id in result.accepted] + result.step_outcomes,
                result.new_operations, activation, now)
        outbox: list[OperationRecord] = []
        # Requests recorded by an earlier activation whose send crashed go out even when the
        # workflow now fails: the outbox promises every recorded request leaves. Only a
        # history that no longer matches the code sends nothing.
        if isinstance(result.exception, NonDeterminismError):
            pass
        elif entry is not None:
            # Continued warm: the earlier activations sent everything they recorded.
            outbox = [op for op in result.new_operations
                      if op.state is OperationState.PENDING and op.kind in _SENT_KINDS]
        else:
            outbox = [op for op in history.operations
                      if not op.sent and op.state is OperationState.PENDING
                      and op.kind in _SENT_KINDS and op.op_id not in staged]
            outbox += [op for op in result.new_operations
                       if op.state is OperationState.PENDING and op.kind in _SENT_KINDS]
        if outbox:
            reply_to = self.transport.reply_address
            for op in outbox:
                if op.kind == "timer":
                    self._schedule(op)
                    continue
                traceparent = trace.operation_parent(op) if trace is not None else None
                if op.kind == "child":
                    self.start_child(op, inst.workflow_name, traceparent)
                    continue
                self.transport.send_to_service(
                    service_of(op.name), _core.dedup_id(workflow_id, "call", op.op_id),
                    call_request_body(op, reply_to, traceparent))
            self.store.mark_sent(workflow_id, [op.op_id for op in outbox])
            report.sent = outbox
        if cancel_at is not None:
            # A cancelled parent cancels its children still running (on every activation
            # after the cancel: the same deduplication id makes repeats harmless).
            self._cancel_children(
                [*history.operations, *result.new_operations], staged, cancel_at[1])

        if result.outcome != "suspended":
            self._withdraw_timers([*history.operations, *result.new_operations], staged)
        if result.outcome == "completed":
            self.store.finish(workflow_id, InstanceStatus.COMPLETED, result.result, None,
                              activation, now)
            report.status = "completed"
            report.result = result.result
            self._notify_parent(history, InstanceStatus.COMPLETED, result.result, None)
        elif result.outcome in ("failed", "cancelled"):
            assert result.error is not None
            status = (InstanceStatus.FAILED if result.outcome == "failed"
                      else InstanceStatus.CANCELLED)
            self.store.finish(workflow_id, status, None, result.error, activation, now)
            report.status = result.outcome
            report.error = ErrorInfo.model_validate_json(result.error)
            self._notify_parent(history, status, None, result.error)
        else:
            report.status = "suspended"
        if trace is not None:
            trace.end(report, history, result, staged)
        self._warm_keep(warm, history, ops, result, report, staged, inst.activations, now)
        return report
