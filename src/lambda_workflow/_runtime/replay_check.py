"""Replay a recorded history against the current code and say whether the code still matches.

Used after every activation by :class:`lambda_workflow.testing.WorkflowTestRuntime`
(``always_replay``) and by ``lambda-workflow replay`` on exported histories.

The check replays the instance from the top in a fresh :class:`Replayer` with no new messages,
exactly as the next activation would, and fails when

- the replay raises :class:`NonDeterminismError` (an operation of another kind, service or
  request than recorded, fewer operations than recorded, a recorded reply that no longer
  validates),
- the code creates an operation the history does not have (it is stopped there: a new step is
  never run, a new call never sent), or
- it ends differently than recorded: completes while the history says it is still running,
  returns another result, fails with another error type, ...

Nothing is written or sent: the check only reads the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson

from .._opnames import display
from ..callbacks import CallbackTokens
from ..errors import NonDeterminismError
from ..models import History, InstanceStatus, OperationRecord, OperationState
from ..workflow import Workflow
from .engine import CANCEL_OP_ID, replay_inputs
from .repair import repair_view
from .replay import Replayer

__all__ = ["ReplayCheck", "check_replay"]

# Endings the code does not decide, so a replay cannot reproduce them: a poison message, a
# request or result over the store's limit. For these the check only asks that the recorded
# operations replay unchanged.
_EXTERNAL_ENDINGS = frozenset({"PoisonMessage", "PayloadTooLargeError"})
_EXPECTED = {InstanceStatus.RUNNING: "suspended", InstanceStatus.COMPLETED: "completed",
             InstanceStatus.FAILED: "failed", InstanceStatus.CANCELLED: "cancelled"}


@dataclass(slots=True)
class ReplayCheck:
    """The verdict of :func:`check_replay`.

    ``ok`` says whether the current code reproduces the history; ``message`` says why not (with
    the file and line of the code where it can), or summarises what was replayed. ``outcome``
    is how the replay ended (``completed``, ``failed``, ``suspended``, or ``error`` when the
    replay itself raised). ``new_operation`` is the first operation the code created that the
    history does not have, if any.
    """

    ok: bool
    message: str
    workflow_id: str
    workflow_name: str
    recorded_status: str
    outcome: str
    operations: int
    new_operation: OperationRecord | None = None

    def __bool__(self) -> bool:
        return self.ok

    def error(self) -> NonDeterminismError:
        """The failure as a :class:`NonDeterminismError` (to raise)."""
        return NonDeterminismError(self.message)


class _UnrecordedOperation(NonDeterminismError):
    """The replay created an operation the history does not have."""

    def __init__(self, message: str, op: OperationRecord) -> None:
        super().__init__(message)
        self.op = op


class _CheckingReplayer(Replayer):
    """A replayer that refuses to go past the history: the first operation the history lacks
    stops the workflow with :class:`NonDeterminismError` before it is run or sent."""

    unrecorded: _UnrecordedOperation | None = None

    def new_operation(self, seq: int, kind: str, name: str, payload: bytes,
                      frame: FrameType | None, op_id: str | None = None,
                      record_seq: int | None = None) -> None:
        if self.unrecorded is None:
            super().new_operation(seq, kind, name, payload, frame, op_id, record_seq)
            op = self.new_operations.pop()
            self.unrecorded = _UnrecordedOperation(
                f"workflow {self.workflow.name!r} ({self.workflow_id}) no longer matches its "
                f"history: replayed from the top, the code at {op.site} created {kind} "
                f"{name!r} as operation #{seq + 1}, which the history does not have (it "
                f"recorded {_count(len(self._history))})", op)
            # The run ends failed with this error even if the workflow catches it.
            self._mismatch = self.unrecorded
        raise self.unrecorded


def _count(n: int) -> str:
    return f"{n} operation" if n == 1 else f"{n} operations"


def _short(payload: bytes | None, width: int = 200) -> str:
    text = (payload or b"null").decode(errors="replace")
    return text if len(text) <= width else text[: width - 3] + "..."


def _error_of(payload: bytes | None) -> tuple[str, str]:
    try:
        doc = orjson.loads(payload or b"{}")
    except orjson.JSONDecodeError:
        return "unknown", _short(payload)
    if not isinstance(doc, dict):
        return "unknown", _short(payload)
    return str(doc.get("type", "unknown")), str(doc.get("message", ""))


def _recorded(history: History) -> str:
    """How the history says the instance ended, for messages."""
    inst = history.instance
    if inst.status is InstanceStatus.RUNNING:
        pending = [f"{op.kind} {op.op_id} {display(op.kind, op.name)!r}"
                   for op in history.operations
                   if op.state is OperationState.PENDING]
        waiting = f"waiting on {', '.join(pending)}" if pending else "waiting on nothing"
        return f"still running ({waiting})"
    if inst.status is InstanceStatus.COMPLETED:
        return f"completed with result {_short(inst.result)}"
    kind, message = _error_of(inst.error)
    return f"{inst.status.value} with {kind}: {message}"


def check_replay(workflow: Workflow[Any, Any], history: History, *,
                 tokens: CallbackTokens | None = None) -> ReplayCheck:
    """Replay ``history`` from the top against ``workflow``'s current code.

    Args:
        workflow: The workflow to replay (normally the one named by the history).
        history: A recorded instance, from a state store or :func:`history_from_json`.
        tokens: The callback token signer of the deployment that recorded the history, for
            workflows that create callbacks (a token is part of the requests it goes into).

    Returns:
        A :class:`ReplayCheck`; ``ok`` is false when the code no longer reproduces the
        history, and ``message`` says where.
    """
    inst = history.instance
    # As the engine replays: records of operations a reset dropped (a store that had not
    # deleted them yet) are not part of the history; the cancellation is not one of the
    # workflow's own operations; it is delivered as CancelledError after the stage it
    # arrived in.
    repairs = repair_view(history.operations)
    ops, cancel = replay_inputs(sorted(
        (op for op in history.operations if op.op_id not in repairs.fenced),
        key=lambda op: op.seq))
    cancel_op = next((op for op in history.operations if op.op_id == CANCEL_OP_ID), None)
    status = inst.status

    def verdict(ok: bool, message: str, outcome: str,
                new_op: OperationRecord | None = None) -> ReplayCheck:
        return ReplayCheck(ok, message, inst.workflow_id, inst.workflow_name, status.value,
                           outcome, len(ops), new_op)

    if inst.activations == 0 and not ops:
        return verdict(True, f"OK: workflow {inst.workflow_name!r} ({inst.workflow_id}) has "
                             "not run yet; there is nothing to replay", "not-run")
    replayer = _CheckingReplayer(
        workflow, inst.workflow_id, inst.input, ops, {}, activation=inst.activations + 1,
        # The time of the last activation: ctx.now() in code first run by it.
        now=inst.updated_at or inst.created_at, tokens=tokens, cancel=cancel,
        scope=repairs.scope, relaxed=repairs.relaxed_at == len(ops))
    try:
        result = replayer.run()
    except Exception as exc:  # the runtime itself broke: still a verdict, not a crash
        return verdict(False, f"replaying workflow {inst.workflow_name!r} "
                              f"({inst.workflow_id}) raised {type(exc).__name__}: {exc}",
                       "error")
    unrecorded = replayer.unrecorded
    # A cancellation recorded before cancels were replayed ends the instance without an
    # operation saying so.
    external = (status is InstanceStatus.CANCELLED and cancel_op is None) or (
        status is InstanceStatus.FAILED and _error_of(inst.error)[0] in _EXTERNAL_ENDINGS)
    if external and (unrecorded is not None or result.outcome == "suspended"):
        # The recorded operations all replayed; what came next was not the code's decision.
        return verdict(True, f"OK: {inst.workflow_name} ({inst.workflow_id}) replays its "
                             f"{_count(len(ops))}; it ended {_recorded(history)}, which "
                             "replay does not reproduce", result.outcome)
    if unrecorded is not None:
        return verdict(False, f"{unrecorded}; the history says it is {_recorded(history)}",
                       result.outcome, unrecorded.op)
    if isinstance(result.exception, NonDeterminismError):
        return verdict(False, str(result.exception), result.outcome)

    name = f"workflow {inst.workflow_name!r} ({inst.workflow_id})"
    expected = _EXPECTED[status]
    if result.outcome != expected:
        if result.outcome == "completed":
            now = f"completed with result {_short(result.result)}"
        elif result.outcome in ("failed", "cancelled"):
            kind, message = _error_of(result.error)
            now = f"{result.outcome} with {kind}: {message}"
        else:
            pending = ", ".join(result.pending) or "nothing"
            now = f"suspended waiting on operation {pending}"
        return verdict(False, f"{name} no longer matches its history: replayed from the top, "
                              f"it {now}, but the history says it is {_recorded(history)}",
                       result.outcome)
    if result.outcome == "completed" and result.result != inst.result:
        return verdict(False, f"{name} no longer matches its history: replayed from the top, "
                              f"it completed with result {_short(result.result)}, but the "
                              f"history recorded the result {_short(inst.result)}",
                       result.outcome)
    if result.outcome == "failed":
        kind, message = _error_of(result.error)
        recorded_type, recorded_message = _error_of(inst.error)
        if kind != recorded_type:
            return verdict(False, f"{name} no longer matches its history: replayed from the "
                                  f"top, it failed with {kind}: {message}, but the history "
                                  f"recorded {recorded_type}: {recorded_message}",
                           result.outcome)
    return verdict(True, f"OK: {name} replays its {_count(len(ops))} and ends "
                         f"{result.outcome} as recorded", result.outcome)
