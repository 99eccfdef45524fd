"""The in-memory backends against the contract suites, plus what only they offer."""

from __future__ import annotations

import pytest

from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.backends.memory import InMemoryFifoQueue, MemoryStateStore
from lambda_workflow.backends.protocols import StateStore

from .contract import (
    FifoQueueContract,
    QueueFactory,
    QueueUnderTest,
    StateStoreContract,
    StoreFactory,
)

DEDUP_WINDOW = 300.0


class TestMemoryStateStore(StateStoreContract):
    """MemoryStateStore meets the StateStore contract."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        def make() -> StateStore:
            return MemoryStateStore()
        return make


def _make_queue(*, max_receives: int = 5) -> QueueUnderTest:
    clock = VirtualClock(1_000.0)
    queue = InMemoryFifoQueue(clock=clock, dedup_window=DEDUP_WINDOW, max_receives=max_receives)
    return QueueUnderTest(queue, clock.advance, lambda: queue.dead_letters, DEDUP_WINDOW)


class TestInMemoryFifoQueue(FifoQueueContract):
    """InMemoryFifoQueue meets the FifoQueue contract."""

    @pytest.fixture
    def make_queue(self) -> QueueFactory:
        return _make_queue


def test_queue_length_counts_visible_and_in_flight_messages() -> None:
    """len() of the queue counts messages not yet deleted, in flight or not."""
    queue = _make_queue().queue
    assert isinstance(queue, InMemoryFifoQueue)
    queue.send(b"a", group_id="g", dedup_id="a")
    queue.send(b"b", group_id="h", dedup_id="b")
    (first, second) = queue.receive(10)
    assert len(queue) == 2
    queue.delete(first)
    assert len(queue) == 1
    queue.release(second)
    assert len(queue) == 1


def test_dead_letter_moves_a_delivered_message_at_once_with_its_reason() -> None:
    """dead_letter removes an in-flight message and keeps it with the given reason."""
    queue = _make_queue().queue
    assert isinstance(queue, InMemoryFifoQueue)
    queue.send(b"bad", group_id="g", dedup_id="bad")
    queue.send(b"good", group_id="g", dedup_id="good")
    (bad,) = queue.receive(1)
    queue.dead_letter(bad, "not JSON")
    assert [(d.body, d.reason) for d in queue.dead_letters] == [(b"bad", "not JSON")]
    assert [m.body for m in queue.receive(10)] == [b"good"]


def test_max_receives_below_one_is_refused() -> None:
    """A queue that could never deliver a message (max_receives < 1) cannot be built."""
    with pytest.raises(ValueError, match="max_receives"):
        InMemoryFifoQueue(max_receives=0)


def test_loading_a_history_copies_every_field_of_each_operation() -> None:
    """The memory store copies records in and out field by field (a constructor call, for
    speed): a field added to OperationRecord and left out of the copy fails here."""
    import dataclasses

    from lambda_workflow.backends.memory import MemoryStateStore, _with_payloads
    from lambda_workflow.models import OperationRecord, OperationState

    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(OperationRecord)):
        if f.name == "state":
            values[f.name] = OperationState.FAILED
        elif f.name == "sent":
            values[f.name] = True
        elif f.type in ("bytes", "bytes | None"):
            values[f.name] = f"payload-{i}".encode()
        elif f.type in ("int", "int | None"):
            values[f.name] = 100 + i
        elif f.type in ("float", "float | None"):
            values[f.name] = 1000.5 + i
        else:
            values[f.name] = f"value-{i}"
    op = OperationRecord(**values)  # type: ignore[arg-type]
    assert _with_payloads(op, op.request, op.result) == op
    assert _with_payloads(op, op.request, op.result) is not op
    store = MemoryStateStore()
    copied = store._out_op(store._in_op(op))
    assert dataclasses.asdict(copied) == dataclasses.asdict(op)
