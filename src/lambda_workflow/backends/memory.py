"""In-memory backends: a state store and a FIFO queue that behaves like SQS FIFO."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from .._runtime.clock import SystemClock
from ..codecs import ENVELOPE_MAGIC, PayloadCodec
from ..models import (
    History,
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)
from .protocols import (
    Clock,
    InstancePage,
    InstanceSummary,
    InvalidPageTokenError,
    QueueMessage,
    decode_page_token,
    encode_page_token,
)

__all__ = ["DeadLetter", "InMemoryFifoQueue", "MemoryStateStore"]

# Message ids are unique across the queues of a process, as SQS message ids are.
_queue_numbers = itertools.count(1)


class MemoryStateStore:
    """A :class:`~lambda_workflow.backends.StateStore` in a dict (lost when the process ends).

    Records are copied in and out, so callers never share mutable state with the store, as
    with a real database. With a ``codec`` (docs/codecs.md) the copies kept hold encoded
    payloads, as a database would.
    """

    def __init__(self, *, codec: PayloadCodec | None = None) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        self._ops: dict[str, dict[str, OperationRecord]] = {}
        # (workflow id, callback id) -> (the callback's request digest, last heartbeat)
        self._beats: dict[tuple[str, str], tuple[str, float]] = {}
        self.codec = codec if codec is not None else PayloadCodec()

    def _in_instance(self, inst: InstanceRecord) -> InstanceRecord:
        c = self.codec
        return dataclasses.replace(inst, input=c.encode(inst.input),
                                   result=c.encode_optional(inst.result),
                                   error=c.encode_optional(inst.error))

    def _out_instance(self, inst: InstanceRecord) -> InstanceRecord:
        c = self.codec
        return dataclasses.replace(inst, input=c.decode(inst.input),
                                   result=c.decode_optional(inst.result),
                                   error=c.decode_optional(inst.error))

    def _in_op(self, op: OperationRecord) -> OperationRecord:
        return _with_payloads(op, self.codec.encode(op.request),
                              self.codec.encode_optional(op.result))

    def _out_op(self, op: OperationRecord) -> OperationRecord:
        # A payload without the codec envelope's magic is the payload itself (as decode
        # would say): loading a history skips the call for each of them.
        request, result = op.request, op.result
        if request.startswith(ENVELOPE_MAGIC):
            request = self.codec.decode(request)
        if result is not None and result.startswith(ENVELOPE_MAGIC):
            result = self.codec.decode(result)
        return _with_payloads(op, request, result)

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        existing = self._instances.get(instance.workflow_id)
        if existing is not None:
            return self._out_instance(existing), False
        self._instances[instance.workflow_id] = self._in_instance(instance)
        self._ops[instance.workflow_id] = {op.op_id: self._in_op(op) for op in operations}
        return dataclasses.replace(instance), True

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        inst = self._instances.get(workflow_id)
        return None if inst is None else self._out_instance(inst)

    def load_history(self, workflow_id: str) -> History | None:
        inst = self._instances.get(workflow_id)
        if inst is None:
            return None
        ops = sorted(self._ops[workflow_id].values(), key=lambda op: op.seq)
        return History(self._out_instance(inst), [self._out_op(op) for op in ops])

    def _touch(self, workflow_id: str, activation: int) -> dict[str, OperationRecord]:
        inst = self._instances.get(workflow_id)
        if inst is None:
            raise KeyError(f"no workflow instance {workflow_id!r}")
        inst.activations = max(inst.activations, activation)
        return self._ops[workflow_id]

    def add_operations(self, workflow_id: str, operations: Sequence[OperationRecord],
                       activation: int) -> None:
        ops = self._touch(workflow_id, activation)
        for op in operations:
            if op.op_id not in ops:
                ops[op.op_id] = self._in_op(op)

    def record_outcomes(self, workflow_id: str, outcomes: Sequence[Outcome], activation: int,
                        at: float) -> list[str]:
        ops = self._ops.get(workflow_id, {})
        recorded: list[str] = []
        for outcome in outcomes:
            op = ops.get(outcome.op_id)
            if op is None or op.state is not OperationState.PENDING:
                continue
            op.state, op.result, op.resolved_in, op.resolved_at = (
                outcome.state, self.codec.encode(outcome.result), activation, at)
            recorded.append(outcome.op_id)
        if recorded:
            self._touch(workflow_id, activation)
        return recorded

    def commit_activation(self, workflow_id: str, outcomes: Sequence[Outcome],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        recorded = self.record_outcomes(workflow_id, outcomes, activation, at)
        if operations:
            self.add_operations(workflow_id, operations, activation)
        return recorded

    def record_heartbeat(self, workflow_id: str, callback_id: str, request_digest: str,
                         at: float) -> str | None:
        inst = self._instances.get(workflow_id)
        op = self._ops.get(workflow_id, {}).get(callback_id)
        if (inst is None or op is None or op.kind != "callback"
                or op.request_digest != request_digest):
            return "unknown"
        if op.state is not OperationState.PENDING:
            return "completed"
        if inst.status is not InstanceStatus.RUNNING:
            return "ended"
        key = (workflow_id, callback_id)
        before = self._beats.get(key)
        if before is None or before[0] != request_digest or before[1] < at:
            self._beats[key] = (request_digest, at)
        return None

    def last_heartbeat(self, workflow_id: str, callback_id: str) -> float | None:
        op = self._ops.get(workflow_id, {}).get(callback_id)
        beat = self._beats.get((workflow_id, callback_id))
        if op is None or beat is None or beat[0] != op.request_digest:
            return None  # none, or one of a callback a reset replaced
        return beat[1]

    def mark_sent(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        ops = self._ops.get(workflow_id, {})
        for op_id in op_ids:
            if op_id in ops:
                ops[op_id].sent = True

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        inst = self._instances.get(workflow_id)
        if inst is None or inst.status is not InstanceStatus.RUNNING:
            return False
        self._touch(workflow_id, activation)
        inst.status, inst.result, inst.error, inst.updated_at = (
            status, self.codec.encode_optional(result), self.codec.encode_optional(error), at)
        return True

    def list_instances(self) -> list[InstanceRecord]:
        return [self._out_instance(i) for i in
                sorted(self._instances.values(), key=lambda i: i.created_at)]

    def list_page(self, *, status: InstanceStatus | None = None,
                  workflow_name: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 100,
                  next_token: str | None = None) -> InstancePage:
        """A page of instances, oldest first, as :class:`SQLiteStateStore` lists them."""
        if limit < 1:
            raise ValueError(f"limit={limit} must be at least 1")
        after: tuple[float, str] | None = None
        if next_token is not None:
            position = decode_page_token("memory", next_token)
            if (not isinstance(position, list) or len(position) != 2
                    or not isinstance(position[0], int | float)
                    or not isinstance(position[1], str)):
                raise InvalidPageTokenError(f"page token {next_token[:40]!r} does not hold a "
                                            "position in a listing of this store")
            after = (float(position[0]), position[1])
        chosen = sorted(
            (i for i in self._instances.values()
             if (status is None or i.status is InstanceStatus(status))
             and (workflow_name is None or i.workflow_name == workflow_name)
             and (since is None or i.created_at >= since)
             and (until is None or i.created_at <= until)
             and (after is None or (i.created_at, i.workflow_id) > after)),
            key=lambda i: (i.created_at, i.workflow_id))
        found = [InstanceSummary(i.workflow_id, i.workflow_name, i.status, i.created_at,
                                 i.updated_at, i.activations) for i in chosen[:limit]]
        token = (encode_page_token("memory", [found[-1].created_at, found[-1].workflow_id])
                 if len(chosen) > limit else None)
        return InstancePage(found, token)

    def repair(self, workflow_id: str, expected_activations: int, drop: Sequence[str],
               put: Sequence[OperationRecord], at: float) -> bool:
        inst = self._instances.get(workflow_id)
        if inst is None or inst.activations != expected_activations:
            return False
        ops = self._ops[workflow_id]
        for op_id in drop:
            ops.pop(op_id, None)
        for op in put:
            ops[op.op_id] = self._in_op(op)
        inst.status, inst.result, inst.error = InstanceStatus.RUNNING, None, None
        inst.updated_at, inst.activations = at, expected_activations + 1
        return True


@dataclass(slots=True)
class _Entry:
    body: bytes
    group_id: str
    dedup_id: str
    message_id: str
    seq: int
    receive_count: int = 0
    receipt: str | None = None


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A message moved to the dead-letter queue, and why."""

    body: bytes
    group_id: str
    dedup_id: str
    message_id: str
    reason: str


class InMemoryFifoQueue:
    """An in-process :class:`~lambda_workflow.backends.FifoQueue` with SQS FIFO's rules.

    - Messages of a group are delivered in send order; while any message of a group is in
      flight (received, neither deleted nor released) no other message of it is delivered.
    - A deduplication id seen within ``dedup_window`` seconds (SQS: 5 minutes) is dropped.
    - A message delivered ``max_receives`` times without being deleted moves to the
      dead-letter list on its next receive (SQS's redrive policy).

    Args:
        clock: Time source for the deduplication window.
        dedup_window: Seconds a deduplication id is remembered.
        max_receives: Deliveries before a message goes to the dead-letter list.
    """

    def __init__(self, *, clock: Clock | None = None, dedup_window: float = 300.0,
                 max_receives: int = 5) -> None:
        if max_receives < 1:
            raise ValueError(f"max_receives must be at least 1, got {max_receives}")
        self._clock = clock or SystemClock()
        self._dedup_window = dedup_window
        self.max_receives = max_receives
        self._groups: dict[str, deque[_Entry]] = {}
        self._in_flight: dict[str, _Entry] = {}
        self._busy_groups: dict[str, int] = {}
        self._seen: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._prefix = f"q{next(_queue_numbers)}-m-"
        self.dead_letters: list[DeadLetter] = []

    def __len__(self) -> int:
        """Messages not yet deleted (visible or in flight)."""
        return sum(len(q) for q in self._groups.values())

    def send(self, body: bytes, *, group_id: str, dedup_id: str) -> str | None:
        if not group_id or not dedup_id or len(dedup_id) > 128 or len(group_id) > 128:
            raise ValueError("group_id and dedup_id must be non-empty and at most 128 "
                             f"characters (group {group_id!r}, dedup {dedup_id!r})")
        now = self._clock.now()
        seen = self._seen.get(dedup_id)
        if seen is not None and now - seen < self._dedup_window:
            return None
        self._seen[dedup_id] = now
        seq = next(self._ids)
        entry = _Entry(body, group_id, dedup_id, f"{self._prefix}{seq}", seq)
        self._groups.setdefault(group_id, deque()).append(entry)
        return entry.message_id

    def receive(self, max_messages: int = 10) -> list[QueueMessage]:
        if not 1 <= max_messages <= 10:
            raise ValueError(f"max_messages must be between 1 and 10, got {max_messages}")
        out: list[QueueMessage] = []
        for group in self._ready_groups():
            queue = self._groups[group]
            for entry in list(queue):
                if len(out) >= max_messages:
                    return out
                if entry.receipt is not None:
                    break
                if entry.receive_count >= self.max_receives:
                    queue.remove(entry)
                    self.dead_letters.append(DeadLetter(
                        entry.body, entry.group_id, entry.dedup_id, entry.message_id,
                        f"received {entry.receive_count} times without being deleted"))
                    continue
                entry.receive_count += 1
                entry.receipt = f"{entry.message_id}#{entry.receive_count}"
                self._in_flight[entry.receipt] = entry
                self._busy_groups[group] = self._busy_groups.get(group, 0) + 1
                out.append(QueueMessage(entry.body, entry.group_id, entry.dedup_id,
                                        entry.message_id, entry.receipt, entry.receive_count))
        return out

    def _ready_groups(self) -> list[str]:
        # Groups are served in order of their oldest message.
        ready = [(q[0].seq, g) for g, q in self._groups.items()
                 if q and not self._busy_groups.get(g)]
        return [g for _, g in sorted(ready)]

    def _take(self, message: QueueMessage) -> _Entry:
        entry = self._in_flight.pop(message.receipt, None)
        if entry is None:
            raise ValueError(f"receipt {message.receipt!r} is not in flight (already deleted, "
                             "released, or from an earlier delivery)")
        entry.receipt = None
        left = self._busy_groups[entry.group_id] - 1
        if left:
            self._busy_groups[entry.group_id] = left
        else:
            del self._busy_groups[entry.group_id]
        return entry

    def delete(self, message: QueueMessage) -> None:
        entry = self._take(message)
        queue = self._groups[entry.group_id]
        queue.remove(entry)
        if not queue:
            del self._groups[entry.group_id]

    def release(self, message: QueueMessage) -> None:
        self._take(message)

    def dead_letter(self, message: QueueMessage, reason: str) -> None:
        """Move a delivered message to the dead-letter list at once, with the reason."""
        self.delete(message)
        self.dead_letters.append(DeadLetter(message.body, message.group_id, message.dedup_id,
                                            message.message_id, reason))


def _with_payloads(op: OperationRecord, request: bytes, result: bytes | None) -> OperationRecord:
    """A copy of ``op`` with its request and result replaced: the constructor called with
    every field in order (a quarter of ``dataclasses.replace``'s cost, which loading a history
    pays per operation; tests/backends check it copies every field)."""
    return OperationRecord(op.workflow_id, op.op_id, op.seq, op.kind, op.name, request,
                           op.request_digest, op.site, op.state, op.sent, result, op.created_in,
                           op.resolved_in, op.created_at, op.resolved_at)

