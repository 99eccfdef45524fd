"""Repairing an instance: ``resume`` (re-activate an instance that failed by non-determinism
or a poison message, history kept) and ``reset`` (drop the records after an operation and run
the workflow on from there). Shared by ``LocalRuntime`` and ``WorkflowClient``.

A repair is recorded in the instance's history as one record of kind ``repair`` (op id
``repair:<n>``, outside the workflow's own numbering), written in the same atomic store write
that reopens the instance (:meth:`StateStore.repair`). The record names what the repair
dropped. After it, a ``resume`` message (deduplication key ``<n>``) re-activates the instance
and the record is marked sent. A crash between the write and the send leaves the record
unsent: the next repair command on the instance sends it first.

Operations created after the k-th reset get ids in their own scope (``r<k>.<n>``): an id of
an operation a reset dropped is never used again, so a late reply, timer or callback for it
cannot reach a new operation. It is recognised (its id is listed in a reset record) and
dropped as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .. import _core
from ..backends.protocols import StateStore
from ..errors import RepairError, WorkflowNotFoundError
from ..models import History, InstanceStatus, OperationRecord, OperationState
from .contexts import SCOPED_SEQ_BASE

__all__ = ["RESUMABLE_ERRORS", "RepairError", "RepairResult", "RepairView", "Repairs",
           "repair_view", "resume_message_body"]

REPAIR_KIND = "repair"
# Failures that say nothing against the workflow's own logic: the code deployed did not match
# the history, or no deployment could run the instance (unknown workflow, poison message).
RESUMABLE_ERRORS = frozenset({"NonDeterminismError", "PoisonMessage", "UnknownWorkflowError"})
# Records kept outside the workflow's numbering, which a reset never drops by position.
_OUTSIDE = frozenset({REPAIR_KIND, "cancel", "parent", "trace"})
# Operations whose request leaves the activation (re-sent when a repair reopens an instance).
_SENT_KINDS = frozenset({"call", "timer", "child"})
_SEQ_BASE = -100
# ``reset(to=START)`` drops every operation: the workflow runs again from its first line.
START = "0"
CANCEL_ID = "cancel"


@dataclass(frozen=True, slots=True)
class RepairView:
    """What an activation needs to know of the repairs in a history.

    ``scope`` is the id scope of new operations (``""`` before any reset, ``"r<k>"`` after the
    k-th); ``fenced`` holds the ids of operations that resets dropped; ``relaxed_at`` is the
    number of the workflow's operations right after the latest reset: while the history still
    holds exactly that many, the workflow re-runs from the reset point and may create its next
    operation before the later recorded outcomes are delivered.
    """

    scope: str = ""
    fenced: frozenset[str] = frozenset()
    relaxed_at: int | None = None


_NO_REPAIRS = RepairView()


def _records(operations: Sequence[OperationRecord]) -> list[OperationRecord]:
    return sorted((op for op in operations if op.kind == REPAIR_KIND), key=lambda op: -op.seq)


def repair_view(operations: Sequence[OperationRecord]) -> RepairView:
    """The :class:`RepairView` of a history's operations."""
    resets = [orjson.loads(op.request) for op in _records(operations) if op.name == "reset"]
    if not resets:
        return _NO_REPAIRS
    fenced = frozenset(op_id for r in resets for op_id in r["dropped"])
    return RepairView(f"r{len(resets)}", fenced, int(resets[-1]["kept"]))


def resume_message_body(workflow_id: str, repair: int) -> bytes:
    """The JSON of a ``resume`` message."""
    return orjson.dumps({"v": 1, "kind": "resume", "workflow_id": workflow_id,
                         "repair": repair})


@dataclass(slots=True)
class RepairResult:
    """What a repair command did (or found done, when repeated)."""

    workflow_id: str
    repair: int
    command: str
    status_before: InstanceStatus
    to: str | None = None
    dropped: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    cancelled_children: list[str] = field(default_factory=list)


def _result_of(workflow_id: str, record: OperationRecord) -> RepairResult:
    req = orjson.loads(record.request)
    return RepairResult(workflow_id, int(req["repair"]), record.name,
                        InstanceStatus(req["before"]["status"]), req.get("to"),
                        [*req.get("dropped", ()), *([CANCEL_ID] if req.get("dropped_cancel")
                                                    else [])],
                        list(req.get("resent", ())), list(req.get("cancel_children", ())))


class Repairs:
    """The repair commands over a state store and a way to send to an instance's queue.

    Args:
        store: The state store.
        send_to_workflow: ``(workflow_id, dedup_id, body)``: sends a message to the instance's
            FIFO group (the transport's ``send_to_workflow``).
        now: The clock.
        child_id: ``(parent_id, op_id, given_id) -> child workflow id``.
    """

    def __init__(self, store: StateStore, send_to_workflow: Callable[[str, str, bytes], None],
                 now: Callable[[], float],
                 child_id: Callable[[str, str, str | None], str]) -> None:
        self._store = store
        self._send = send_to_workflow
        self._now = now
        self._child_id = child_id

    # -- the commands --------------------------------------------------------------------------
    def resume(self, workflow_id: str, *, request_id: str | None = None) -> RepairResult:
        """Re-activate an instance that failed by non-determinism or a poison message (an
        unknown workflow): its history is kept, it becomes running, and a ``resume`` message
        wakes it.

        Raises:
            WorkflowNotFoundError: no such instance.
            RepairError: the instance did not fail that way (the message names its state).
        """
        history = self._history(workflow_id)
        done = self._finish_interrupted(history, "resume", None, request_id)
        if done is not None:
            return done
        inst = history.instance
        if inst.status is not InstanceStatus.FAILED:
            raise RepairError(
                f"instance {workflow_id!r} is {inst.status.value}; resume re-activates only an "
                "instance that failed by non-determinism or a poison message (use reset to "
                "re-run it from an operation)")
        error_type = str(orjson.loads(inst.error or b"{}").get("type", ""))
        if error_type not in RESUMABLE_ERRORS:
            raise RepairError(
                f"instance {workflow_id!r} failed with {error_type or 'an unknown error'}, "
                "which its own code raised; resume re-activates only an instance that failed "
                f"by {', '.join(sorted(RESUMABLE_ERRORS))} (use reset to re-run it from an "
                "operation)")
        return self._apply(history, "resume", None, [], [], request_id)

    def reset(self, workflow_id: str, to: str, *,
              request_id: str | None = None) -> RepairResult:
        """Drop every operation recorded after operation ``to`` (and a recorded
        cancellation), reopen the instance whatever its state, and wake it: the workflow runs
        on from ``to``. Operations it creates from then on have new ids, so replies, timers
        and callbacks of dropped operations are ignored when they arrive later.

        Raises:
            WorkflowNotFoundError: no such instance.
            RepairError: ``to`` is not an operation of the instance.
        """
        history = self._history(workflow_id)
        done = self._finish_interrupted(history, "reset", to, request_id)
        if done is not None:
            return done
        fenced = repair_view(history.operations).fenced
        own = [op for op in history.operations
               if op.kind not in _OUTSIDE and op.op_id not in fenced]
        target = next((op for op in own if op.op_id == to), None)
        if target is not None and target.seq >= SCOPED_SEQ_BASE:
            root = _root_of(target.op_id, own)
            raise RepairError(
                f"operation {to!r} is inside child context {root!r} of {workflow_id!r}: a "
                f"reset keeps or drops a child context whole; reset to {root!r} to keep it "
                "or to the operation before it to run it again")
        if target is None and to != START:
            ids = [op.op_id for op in own]
            shown = (f"{ids[0]} to {ids[-1]}" if len(ids) > 3 else ", ".join(ids)) or "none"
            raise RepairError(
                f"instance {workflow_id!r} has no operation {to!r} to reset to; its "
                f"operations are {shown} ({len(ids)}; see its history), or {START!r} for "
                "the start")
        keep = -1 if target is None else target.seq
        # Operations inside child contexts (seq from SCOPED_SEQ_BASE on) go with the root
        # operation that encloses them: kept with a kept context, dropped with a dropped one.
        roots_kept = {op.op_id for op in own if op.seq < SCOPED_SEQ_BASE and op.seq <= keep}
        # The recorded cancellation first: a store that cannot delete everything in one
        # write deletes it with the instance's reopening (StateStore.repair).
        dropped = [op for op in history.operations if op.kind == "cancel"]
        dropped += [op for op in own if (op.seq > keep if op.seq < SCOPED_SEQ_BASE
                                         else _root_of(op.op_id, own) not in roots_kept)]
        children = [self._child_id(workflow_id, op.op_id,
                                   orjson.loads(op.request).get("workflow_id"))
                    for op in dropped if op.kind == "child"
                    and op.state is OperationState.PENDING]
        kept = len(roots_kept)
        return self._apply(history, "reset", (to, kept), dropped, children, request_id)

    # -- shared steps --------------------------------------------------------------------------
    def _history(self, workflow_id: str) -> History:
        history = self._store.load_history(workflow_id)
        if history is None:
            raise WorkflowNotFoundError(f"no workflow instance {workflow_id!r}")
        return history

    def _finish_interrupted(self, history: History, command: str, to: str | None,
                            request_id: str | None) -> RepairResult | None:
        """Send what a repair interrupted by a crash did not send, and return it when it is
        the same command (``request_id``, else the same command and target); ``None``
        means: apply a new repair."""
        records = _records(history.operations)
        wid = history.instance.workflow_id
        # Unsent and still running: the command stopped between its write and its send. (An
        # unsent repair of an instance that ended since was woken by something else.)
        interrupted = bool(records) and not records[0].sent and (
            history.instance.status is InstanceStatus.RUNNING)
        if interrupted:
            self._send_repair(wid, records[0])
        if request_id is not None:
            same = next((r for r in records
                         if orjson.loads(r.request).get("request_id") == request_id), None)
            if same is not None and (same.name != command
                                     or orjson.loads(same.request).get("to") != to):
                raise RepairError(f"request id {request_id!r} was used by an earlier repair "
                                  f"of {wid!r} ({same.name}); use a new one")
            return None if same is None else _result_of(wid, same)
        if interrupted and records[0].name == command and (
                orjson.loads(records[0].request).get("to") == to):
            return _result_of(wid, records[0])
        return None

    def _apply(self, history: History, command: str, target: tuple[str, int] | None,
               dropped: Sequence[OperationRecord], children: list[str],
               request_id: str | None) -> RepairResult:
        inst = history.instance
        wid = inst.workflow_id
        records = _records(history.operations)
        n = len(records) + 1
        now = self._now()
        activation = inst.activations + 1
        gone = [op.op_id for op in dropped]
        fenced = repair_view(history.operations).fenced
        # An instance that had ended withdrew its timers and may have lost a reply to a
        # poison message: its pending requests go out again (same ids; services are
        # idempotent per call id). A running one's requests are still on their way.
        resend = [] if inst.status is InstanceStatus.RUNNING else [
            replace(op, sent=False) for op in history.operations
            if op.kind in _SENT_KINDS and op.state is OperationState.PENDING
            and op.op_id not in gone and op.op_id not in fenced]
        before: dict[str, Any] = {"status": inst.status.value}
        if inst.error is not None:
            before["error"] = orjson.Fragment(inst.error)
        if inst.result is not None:
            before["result"] = orjson.Fragment(inst.result)
        request: dict[str, Any] = {
            "repair": n, "before": before, "request_id": request_id,
            "resent": [op.op_id for op in resend]}
        if target is not None:
            request.update(to=target[0], kept=target[1],
                           dropped=[i for i in gone if i != CANCEL_ID],
                           dropped_cancel=CANCEL_ID in gone, cancel_children=children)
        payload = orjson.dumps(request, option=orjson.OPT_SORT_KEYS)
        record = OperationRecord(
            wid, f"repair:{n}", _SEQ_BASE - n, REPAIR_KIND, command, payload,
            _core.digest(payload), state=OperationState.COMPLETED, result=b"null",
            created_in=activation, resolved_in=activation, created_at=now, resolved_at=now)
        if not self._store.repair(wid, inst.activations, gone, [record, *resend], now):
            raise RepairError(f"instance {wid!r} changed while it was being repaired (an "
                              "activation ran meanwhile); run the command again")
        self._send_repair(wid, record)
        return _result_of(wid, record)

    def _send_repair(self, workflow_id: str, record: OperationRecord) -> None:
        """Cancel the running children a reset dropped, wake the instance, mark it done.
        Every message has a deterministic deduplication id, so repeating this is harmless."""
        req = orjson.loads(record.request)
        for child in req.get("cancel_children", ()):
            body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": child,
                                 "reason": f"parent {workflow_id!r} was reset to operation "
                                           f"{req['to']}"})
            self._send(child, _core.dedup_id(child, "cancel", ""), body)
        n = int(req["repair"])
        self._send(workflow_id, _core.dedup_id(workflow_id, "resume", str(n)),
                   resume_message_body(workflow_id, n))
        self._store.mark_sent(workflow_id, [record.op_id])


def _root_of(op_id: str, operations: Sequence[OperationRecord]) -> str:
    """The root operation (the child context at the top) that encloses the operation
    ``op_id`` of a child context: ids within a context extend the context's id (``3.1``,
    ``3.2.1``; ``r2.3.1`` after a reset renamed ``3``)."""
    roots = {op.op_id for op in operations if op.seq < SCOPED_SEQ_BASE}
    head = op_id
    while head not in roots and "." in head:
        head = head.rsplit(".", 1)[0]
    return head
