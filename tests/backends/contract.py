"""Contract test suites that every backend must pass.

Each suite is a class whose name does not start with ``Test`` (so pytest does not collect it
on its own). A backend's test module subclasses it under a ``Test*`` name and overrides one
fixture that says how to build the backend under test; every contract test then runs on it:

- :class:`StateStoreContract`: override ``make_store``, a fixture returning a zero-argument
  factory of fresh, empty :class:`~lambda_workflow.backends.StateStore` objects. The fixture
  owns what it builds (close connections, drop tables) at teardown.
- :class:`FifoQueueContract`: override ``make_queue``, a fixture returning a
  :class:`QueueFactory`: called with ``max_receives=`` it builds a fresh, empty
  :class:`~lambda_workflow.backends.FifoQueue` wrapped in a :class:`QueueUnderTest`, which
  also tells the suite how to move the queue's clock (for the deduplication window), how long
  that window is, and how to read the dead-letter queue. An in-process queue uses a
  ``VirtualClock``; an SQS queue on a local AWS-API server plugs in a clock it can move (a
  time-freezing clock, or the server's own) and reads its dead-letter queue through the API.
  Class attributes tune what may differ between backends without weakening a test:
  ``stale_receipt_errors`` (what deleting with a stale receipt raises) and
  ``reports_duplicates`` (whether ``send`` can tell that it dropped a duplicate: SQS answers
  with a message id either way; the duplicate must still never be delivered).

Example (in ``tests/backends/test_<backend>.py``)::

    class TestMyStateStore(StateStoreContract):
        @pytest.fixture
        def make_store(self) -> Iterator[StoreFactory]:
            stores: list[MyStore] = []
            def make() -> StateStore:
                stores.append(MyStore(...))
                return stores[-1]
            yield make
            for s in stores:
                s.close()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import pytest

from lambda_workflow.backends.memory import DeadLetter
from lambda_workflow.backends.protocols import FifoQueue, QueueMessage, StateStore
from lambda_workflow.models import (
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)

__all__ = [
    "FifoQueueContract",
    "QueueFactory",
    "QueueUnderTest",
    "StateStoreContract",
    "StoreFactory",
]

StoreFactory = Callable[[], StateStore]


@dataclass(frozen=True, slots=True)
class QueueUnderTest:
    """A FIFO queue built for one contract test, with the levers the suite needs."""

    queue: FifoQueue
    advance: Callable[[float], None]
    dead_letters: Callable[[], Sequence[DeadLetter]]
    dedup_window: float


class QueueFactory(Protocol):
    """Builds a fresh, empty queue that dead-letters after ``max_receives`` deliveries."""

    def __call__(self, *, max_receives: int = 5) -> QueueUnderTest: ...


def _instance(workflow_id: str = "wf-1", *, created_at: float = 100.0,
              payload: bytes = b'{"amount":5}') -> InstanceRecord:
    return InstanceRecord(workflow_id, "make_transaction", payload, "digest-" + workflow_id,
                          created_at=created_at, updated_at=created_at)


def _op(op_id: str, seq: int, *, workflow_id: str = "wf-1", request: bytes = b'{"n":1}',
        name: str = "balance") -> OperationRecord:
    return OperationRecord(workflow_id, op_id, seq, "call", name, request, "d-" + op_id,
                           site="flow.py:12 in flow", created_in=1, created_at=101.0)


class StateStoreContract:
    """Behaviour every :class:`~lambda_workflow.backends.StateStore` must have."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        """Override: a factory of fresh, empty stores of the backend under test."""
        raise NotImplementedError("a StateStoreContract subclass must override make_store")

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> StateStore:
        return make_store()

    def test_create_instance_stores_a_new_instance(self, store: StateStore) -> None:
        """The first create_instance of an id stores the record and reports it as created."""
        record, created = store.create_instance(_instance())
        assert created is True
        assert record == _instance()
        assert store.get_instance("wf-1") == _instance()

    def test_create_instance_of_an_existing_id_returns_the_stored_one(
            self, store: StateStore) -> None:
        """A second create_instance of an id changes nothing and returns the first record."""
        store.create_instance(_instance(payload=b'{"amount":5}'))
        record, created = store.create_instance(
            _instance(payload=b'{"amount":9}', created_at=200.0))
        assert created is False
        assert record.input == b'{"amount":5}'
        assert record.created_at == 100.0
        stored = store.get_instance("wf-1")
        assert stored is not None and stored.input == b'{"amount":5}'

    def test_unknown_instance_reads_as_none(self, store: StateStore) -> None:
        """get_instance and load_history of an id never created return None."""
        assert store.get_instance("nobody") is None
        assert store.load_history("nobody") is None

    def test_load_history_orders_operations_by_seq(self, store: StateStore) -> None:
        """load_history returns the instance and its operations in seq order, whatever the
        order they were added in."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("3", 2), _op("1", 0)], activation=1)
        store.add_operations("wf-1", [_op("2", 1)], activation=2)
        history = store.load_history("wf-1")
        assert history is not None
        assert history.instance.workflow_id == "wf-1"
        assert [op.op_id for op in history.operations] == ["1", "2", "3"]
        assert history.operations[0] == _op("1", 0)

    def test_operations_stay_with_their_instance(self, store: StateStore) -> None:
        """Operations added to one instance do not appear in another's history."""
        store.create_instance(_instance("wf-a", created_at=1.0))
        store.create_instance(_instance("wf-b", created_at=2.0))
        store.add_operations("wf-a", [_op("1", 0, workflow_id="wf-a")], activation=1)
        store.add_operations("wf-b", [_op("1", 0, workflow_id="wf-b", name="fraud")],
                             activation=1)
        a, b = store.load_history("wf-a"), store.load_history("wf-b")
        assert a is not None and b is not None
        assert [(op.workflow_id, op.name) for op in a.operations] == [("wf-a", "balance")]
        assert [(op.workflow_id, op.name) for op in b.operations] == [("wf-b", "fraud")]

    def test_add_operations_keeps_an_existing_operation(self, store: StateStore) -> None:
        """Adding an op_id that is already recorded keeps the original record untouched."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0, request=b'{"n":1}')], activation=1)
        store.record_outcomes("wf-1", [Outcome("1", OperationState.COMPLETED, b"7")], 2,
                              150.0)
        again = dataclasses.replace(_op("1", 0, request=b'{"n":2}'), sent=True)
        store.add_operations("wf-1", [again, _op("2", 1)], activation=3)
        history = store.load_history("wf-1")
        assert history is not None
        first = history.operations[0]
        assert (first.request, first.state, first.result, first.sent) == (
            b'{"n":1}', OperationState.COMPLETED, b"7", False)
        assert [op.op_id for op in history.operations] == ["1", "2"]

    def test_writes_raise_the_activation_counter_to_their_highest(
            self, store: StateStore) -> None:
        """The instance's activations is the highest activation any write carried."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1)], activation=3)
        store.record_outcomes("wf-1", [Outcome("1", OperationState.COMPLETED, b"1")], 2,
                              150.0)
        inst = store.get_instance("wf-1")
        assert inst is not None and inst.activations == 3
        store.record_outcomes("wf-1", [Outcome("2", OperationState.COMPLETED, b"2")], 4,
                              151.0)
        inst = store.get_instance("wf-1")
        assert inst is not None and inst.activations == 4
        store.finish("wf-1", InstanceStatus.COMPLETED, b"0", None, 6, 160.0)
        inst = store.get_instance("wf-1")
        assert inst is not None and inst.activations == 6

    def test_record_outcome_records_a_pending_operation(self, store: StateStore) -> None:
        """record_outcomes on a pending operation stores state, result, activation and time."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1)], activation=1)
        assert store.record_outcomes(
            "wf-1", [Outcome("1", OperationState.COMPLETED, b'{"b":3}')], 2, 150.0) == ["1"]
        error = b'{"type":"Boom","message":"m","details":null}'
        assert store.record_outcomes(
            "wf-1", [Outcome("2", OperationState.FAILED, error)], 2, 151.0) == ["2"]
        history = store.load_history("wf-1")
        assert history is not None
        one, two = history.operations
        assert (one.state, one.result, one.resolved_in, one.resolved_at) == (
            OperationState.COMPLETED, b'{"b":3}', 2, 150.0)
        assert (two.state, two.result) == (
            OperationState.FAILED, b'{"type":"Boom","message":"m","details":null}')

    def test_record_outcome_records_only_once(self, store: StateStore) -> None:
        """A second record_outcomes of an operation returns False and keeps the first value."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0)], activation=1)
        assert store.record_outcomes(
            "wf-1", [Outcome("1", OperationState.COMPLETED, b"1")], 2, 150.0) == ["1"]
        assert store.record_outcomes(
            "wf-1", [Outcome("1", OperationState.FAILED, b"2")], 3, 160.0) == []
        history = store.load_history("wf-1")
        assert history is not None
        op = history.operations[0]
        assert (op.state, op.result, op.resolved_in, op.resolved_at) == (
            OperationState.COMPLETED, b"1", 2, 150.0)

    def test_record_outcomes_records_a_batch_and_skips_duplicates(self, store: StateStore) -> None:
        """One record_outcomes call records every pending op it names, skips ones already
        recorded, and returns the ids it recorded in the order given."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1), _op("3", 2)], activation=1)
        store.record_outcomes("wf-1", [Outcome("2", OperationState.COMPLETED, b"0")], 2, 1.0)
        recorded = store.record_outcomes("wf-1", [
            Outcome("3", OperationState.COMPLETED, b"3"),
            Outcome("2", OperationState.COMPLETED, b"22"),
            Outcome("1", OperationState.FAILED, b'{"type":"E","message":"","details":null}'),
        ], 3, 2.0)
        assert recorded == ["3", "1"]
        history = store.load_history("wf-1")
        assert history is not None
        assert [(op.op_id, op.result, op.resolved_in) for op in history.operations] == [
            ("1", b'{"type":"E","message":"","details":null}', 3), ("2", b"0", 2),
            ("3", b"3", 3)]

    def test_commit_activation_records_replies_and_new_operations_together(
            self, store: StateStore) -> None:
        """commit_activation records the pending outcomes it names (skipping duplicates) and
        inserts the new operations (keeping existing ones), and bumps the activation count."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1)], activation=1)
        store.record_outcomes("wf-1", [Outcome("2", OperationState.COMPLETED, b"0")], 2, 1.0)
        recorded = store.commit_activation(
            "wf-1", [Outcome("1", OperationState.COMPLETED, b"1"),
                     Outcome("2", OperationState.COMPLETED, b"22")],
            [_op("3", 2), dataclasses.replace(_op("2", 1), request=b'{"n":9}')], 3, 2.0)
        assert recorded == ["1"]
        history = store.load_history("wf-1")
        assert history is not None
        assert [(op.op_id, op.state.value, op.result, op.request) for op in history.operations] == [
            ("1", "completed", b"1", _op("1", 0).request),
            ("2", "completed", b"0", _op("2", 1).request),
            ("3", "pending", None, _op("3", 2).request)]
        assert history.instance.activations == 3

    def test_record_outcome_of_an_unknown_operation_is_refused(self, store: StateStore) -> None:
        """record_outcomes returns False for an op or instance that does not exist, and
        creates nothing."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0)], activation=1)
        assert store.record_outcomes(
            "wf-1", [Outcome("9", OperationState.COMPLETED, b"1")], 2, 150.0) == []
        assert store.record_outcomes(
            "nobody", [Outcome("1", OperationState.COMPLETED, b"1")], 2, 150.0) == []
        history = store.load_history("wf-1")
        assert history is not None
        assert [(op.op_id, op.state) for op in history.operations] == [
            ("1", OperationState.PENDING)]
        assert store.get_instance("nobody") is None

    def test_mark_sent_marks_only_the_named_operations(self, store: StateStore) -> None:
        """mark_sent sets sent on the listed operations only, and ignores unknown ids."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1), _op("3", 2)], activation=1)
        store.mark_sent("wf-1", ["1", "3", "77"])
        history = store.load_history("wf-1")
        assert history is not None
        assert [op.sent for op in history.operations] == [True, False, True]
        assert [op.op_id for op in history.operations] == ["1", "2", "3"]

    def test_finish_ends_a_running_instance_once(self, store: StateStore) -> None:
        """finish succeeds on a running instance; a second finish returns False and changes
        nothing."""
        store.create_instance(_instance())
        assert store.finish("wf-1", InstanceStatus.COMPLETED, b'"success"', None, 2, 150.0)
        assert not store.finish("wf-1", InstanceStatus.FAILED, None, b'{"type":"X"}', 3, 160.0)
        inst = store.get_instance("wf-1")
        assert inst is not None
        assert (inst.status, inst.result, inst.error, inst.updated_at) == (
            InstanceStatus.COMPLETED, b'"success"', None, 150.0)

    def test_finish_records_a_failure(self, store: StateStore) -> None:
        """finish with FAILED stores the error and no result."""
        store.create_instance(_instance())
        error = b'{"type":"ServiceError","message":"m","details":null}'
        assert store.finish("wf-1", InstanceStatus.FAILED, None, error, 2, 150.0)
        history = store.load_history("wf-1")
        assert history is not None
        assert (history.instance.status, history.instance.result, history.instance.error) == (
            InstanceStatus.FAILED, None, error)

    def test_finish_of_an_unknown_instance_is_refused(self, store: StateStore) -> None:
        """finish of an id that was never created returns False and creates nothing."""
        assert not store.finish("nobody", InstanceStatus.COMPLETED, b"1", None, 1, 150.0)
        assert store.get_instance("nobody") is None

    def test_records_returned_are_copies(self, store: StateStore) -> None:
        """Mutating a record returned by the store (or passed into it) does not change what
        the store holds."""
        given = _instance()
        created, _ = store.create_instance(given)
        given.status = InstanceStatus.FAILED
        created.input = b"changed"
        got = store.get_instance("wf-1")
        assert got is not None
        got.activations = 99
        op = _op("1", 0)
        store.add_operations("wf-1", [op], activation=1)
        op.state = OperationState.FAILED
        history = store.load_history("wf-1")
        assert history is not None
        history.instance.result = b"changed"
        history.operations[0].result = b"changed"
        history.operations[0].sent = True
        history.operations.clear()
        listed = store.list_instances()
        listed[0].workflow_name = "changed"

        again = store.load_history("wf-1")
        assert again is not None
        assert again.instance == dataclasses.replace(_instance(), activations=1)
        assert again.operations == [_op("1", 0)]

    def test_list_instances_oldest_first(self, store: StateStore) -> None:
        """list_instances returns every instance ordered by creation time."""
        assert store.list_instances() == []
        store.create_instance(_instance("wf-b", created_at=20.0))
        store.create_instance(_instance("wf-c", created_at=30.0))
        store.create_instance(_instance("wf-a", created_at=10.0))
        assert [i.workflow_id for i in store.list_instances()] == ["wf-a", "wf-b", "wf-c"]

    def test_payloads_round_trip_as_bytes(self, store: StateStore) -> None:
        """Inputs, requests and results come back as the same bytes, including non-ASCII."""
        payload = '{"name":"Zoë","emoji":"\U0001f680"}'.encode()
        store.create_instance(_instance(payload=payload))
        store.add_operations("wf-1", [_op("1", 0, request=payload)], activation=1)
        store.record_outcomes("wf-1", [Outcome("1", OperationState.COMPLETED, payload)], 2,
                              150.0)
        store.finish("wf-1", InstanceStatus.COMPLETED, payload, None, 2, 150.0)
        history = store.load_history("wf-1")
        assert history is not None
        op = history.operations[0]
        for value in (history.instance.input, history.instance.result, op.request, op.result):
            assert type(value) is bytes
            assert value == payload

    def test_repair_reopens_drops_and_replaces_in_one_write(self, store: StateStore) -> None:
        """repair (resume, reset): named operations are deleted, the given records inserted
        or replaced whole (sent flag included), and the instance is running again with its
        result and error cleared and its counter one higher."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1), _op("3", 2)], activation=1)
        store.mark_sent("wf-1", ["1", "2", "3"])
        store.record_outcomes("wf-1", [Outcome("2", OperationState.COMPLETED, b"7")], 2, 120.0)
        store.finish("wf-1", InstanceStatus.FAILED, None, b'{"type":"X"}', 2, 130.0)
        unsent = dataclasses.replace(_op("1", 0), sent=False)
        record = OperationRecord("wf-1", "repair:1", -101, "repair", "reset", b'{"repair":1}',
                                 "d-r", state=OperationState.COMPLETED, result=b"null",
                                 created_in=3, resolved_in=3, created_at=140.0,
                                 resolved_at=140.0)
        assert store.repair("wf-1", 2, ["3"], [unsent, record], 140.0) is True
        history = store.load_history("wf-1")
        assert history is not None
        inst = history.instance
        assert (inst.status, inst.result, inst.error, inst.activations, inst.updated_at) == (
            InstanceStatus.RUNNING, None, None, 3, 140.0)
        assert [op.op_id for op in history.operations] == ["repair:1", "1", "2"]
        assert history.operations[0] == record
        assert history.operations[1].sent is False
        assert history.operations[2].sent is True
        assert history.operations[2].result == b"7"
        # The running instance takes new operations and ends again as usual.
        store.add_operations("wf-1", [_op("r1.3", 2)], activation=4)
        store.mark_sent("wf-1", ["repair:1"])
        assert store.finish("wf-1", InstanceStatus.COMPLETED, b"1", None, 4, 150.0)
        history = store.load_history("wf-1")
        assert history is not None
        assert [(op.op_id, op.sent) for op in history.operations] == [
            ("repair:1", True), ("1", False), ("2", True), ("r1.3", False)]

    def test_repair_is_refused_when_the_counter_moved(self, store: StateStore) -> None:
        """A repair computed from a history that an activation has changed since (or of an
        instance that does not exist) changes nothing."""
        store.create_instance(_instance())
        store.add_operations("wf-1", [_op("1", 0), _op("2", 1)], activation=1)
        store.finish("wf-1", InstanceStatus.FAILED, None, b'{"type":"X"}', 1, 130.0)
        assert store.repair("wf-1", 0, ["2"], [], 140.0) is False
        assert store.repair("nobody", 0, [], [], 140.0) is False
        history = store.load_history("wf-1")
        assert history is not None
        assert history.instance.status is InstanceStatus.FAILED
        assert history.instance.activations == 1
        assert [op.op_id for op in history.operations] == ["1", "2"]


def _body(queued: Sequence[QueueMessage]) -> list[bytes]:
    return [m.body for m in queued]


class FifoQueueContract:
    """Behaviour every :class:`~lambda_workflow.backends.FifoQueue` must have (SQS FIFO's)."""

    stale_receipt_errors: ClassVar[tuple[type[Exception], ...]] = (ValueError,)
    reports_duplicates: ClassVar[bool] = True

    @pytest.fixture
    def make_queue(self) -> QueueFactory:
        """Override: a factory of fresh, empty queues of the backend under test."""
        raise NotImplementedError("a FifoQueueContract subclass must override make_queue")

    @pytest.fixture
    def subject(self, make_queue: QueueFactory) -> QueueUnderTest:
        return make_queue()

    def test_send_returns_the_id_the_message_is_received_with(
            self, subject: QueueUnderTest) -> None:
        """A received message carries the id send returned, its body, group and dedup id."""
        q = subject.queue
        message_id = q.send(b"a1", group_id="g", dedup_id="d-a1")
        assert message_id is not None
        (got,) = q.receive(10)
        assert (got.message_id, got.body, got.group_id, got.dedup_id, got.receive_count) == (
            message_id, b"a1", "g", "d-a1", 1)

    def test_empty_queue_receives_nothing(self, subject: QueueUnderTest) -> None:
        """receive on an empty queue returns an empty list."""
        assert subject.queue.receive(10) == []

    def test_a_group_is_delivered_in_send_order(self, subject: QueueUnderTest) -> None:
        """Messages of one group come out in the order they were sent."""
        q = subject.queue
        for i in range(5):
            q.send(f"m{i}".encode(), group_id="g", dedup_id=f"d{i}")
        seen: list[bytes] = []
        while batch := q.receive(2):
            seen += _body(batch)
            for m in batch:
                q.delete(m)
        assert seen == [b"m0", b"m1", b"m2", b"m3", b"m4"]

    def test_no_delivery_from_a_group_with_a_message_in_flight(
            self, subject: QueueUnderTest) -> None:
        """While a message of a group is in flight, no later message of it is delivered."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        q.send(b"a2", group_id="a", dedup_id="a2")
        (first,) = q.receive(1)
        assert first.body == b"a1"
        assert q.receive(10) == []
        q.delete(first)
        assert _body(q.receive(10)) == [b"a2"]

    def test_a_busy_group_does_not_block_other_groups(self, subject: QueueUnderTest) -> None:
        """A group with a message in flight does not hold back the messages of other groups."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        q.send(b"a2", group_id="a", dedup_id="a2")
        q.send(b"b1", group_id="b", dedup_id="b1")
        (first,) = q.receive(1)
        assert first.body == b"a1"
        assert _body(q.receive(10)) == [b"b1"]

    def test_one_batch_holds_several_groups_each_in_order(self, subject: QueueUnderTest) -> None:
        """A batch may mix groups; within each group the send order holds."""
        q = subject.queue
        for body, group in [(b"a1", "a"), (b"b1", "b"), (b"a2", "a"), (b"c1", "c"),
                            (b"b2", "b")]:
            q.send(body, group_id=group, dedup_id=body.decode())
        batch = q.receive(10)
        assert sorted(_body(batch)) == [b"a1", b"a2", b"b1", b"b2", b"c1"]
        for group in "abc":
            in_group = [m.body for m in batch if m.group_id == group]
            assert in_group == sorted(in_group)

    def test_a_batch_holds_at_most_max_messages(self, subject: QueueUnderTest) -> None:
        """receive returns at most max_messages (10 at most), the rest on later receives."""
        q = subject.queue
        for i in range(13):
            q.send(f"m{i}".encode(), group_id=f"g{i}", dedup_id=f"d{i}")
        assert len(q.receive(3)) == 3
        assert len(q.receive(10)) == 10
        assert q.receive(10) == []

    @pytest.mark.parametrize("bad", [0, -1, 11])
    def test_max_messages_outside_1_to_10_is_refused(self, subject: QueueUnderTest,
                                                     bad: int) -> None:
        """receive with max_messages outside 1..10 raises ValueError."""
        with pytest.raises(ValueError, match="max_messages"):
            subject.queue.receive(bad)

    @pytest.mark.parametrize(("group_id", "dedup_id"),
                             [("", "d"), ("g", ""), ("g" * 129, "d"), ("g", "d" * 129)])
    def test_send_refuses_empty_or_overlong_ids(self, subject: QueueUnderTest, group_id: str,
                                                dedup_id: str) -> None:
        """Group and deduplication ids must be 1 to 128 characters, as on SQS."""
        with pytest.raises(ValueError):
            subject.queue.send(b"x", group_id=group_id, dedup_id=dedup_id)
        assert subject.queue.receive(10) == []

    def test_a_duplicate_within_the_window_is_dropped(self, subject: QueueUnderTest) -> None:
        """A message whose dedup id was sent within the window is dropped (send returns None)."""
        q = subject.queue
        assert q.send(b"first", group_id="g", dedup_id="same") is not None
        subject.advance(subject.dedup_window / 2)
        second = q.send(b"second", group_id="g", dedup_id="same")
        if self.reports_duplicates:
            assert second is None
        assert _body(q.receive(10)) == [b"first"]

    def test_a_duplicate_is_dropped_even_after_the_original_was_deleted(
            self, subject: QueueUnderTest) -> None:
        """Deleting a message does not forget its dedup id within the window."""
        q = subject.queue
        q.send(b"first", group_id="g", dedup_id="same")
        (got,) = q.receive(10)
        q.delete(got)
        again = q.send(b"again", group_id="g", dedup_id="same")
        if self.reports_duplicates:
            assert again is None
        assert q.receive(10) == []

    def test_a_dedup_id_is_accepted_again_after_the_window(self, subject: QueueUnderTest) -> None:
        """Once the window has passed, the same dedup id is a new message."""
        q = subject.queue
        q.send(b"first", group_id="g", dedup_id="same")
        (got,) = q.receive(10)
        q.delete(got)
        subject.advance(subject.dedup_window + 1)
        assert q.send(b"later", group_id="g", dedup_id="same") is not None
        assert _body(q.receive(10)) == [b"later"]

    def test_release_makes_a_message_visible_again_at_the_head_of_its_group(
            self, subject: QueueUnderTest) -> None:
        """A released message is delivered again, before the later messages of its group."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        q.send(b"a2", group_id="a", dedup_id="a2")
        (first,) = q.receive(1)
        q.release(first)
        again = q.receive(10)
        assert _body(again) == [b"a1", b"a2"]
        assert again[0].message_id == first.message_id
        assert again[0].receipt != first.receipt

    def test_receive_count_grows_with_each_delivery(self, subject: QueueUnderTest) -> None:
        """Each delivery of a message increments its receive_count."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        counts = []
        for _ in range(3):
            (got,) = q.receive(10)
            counts.append(got.receive_count)
            q.release(got)
        assert counts == [1, 2, 3]

    def test_delete_removes_a_message_for_good(self, subject: QueueUnderTest) -> None:
        """A deleted message is never delivered again."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        (got,) = q.receive(10)
        q.delete(got)
        assert q.receive(10) == []
        assert subject.dead_letters() == []

    def test_delete_with_a_stale_receipt_raises(self, subject: QueueUnderTest) -> None:
        """Deleting with the receipt of an earlier delivery raises and leaves the message in
        flight, where its current receipt still deletes it."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        (old,) = q.receive(10)
        q.release(old)
        (current,) = q.receive(10)
        with pytest.raises(self.stale_receipt_errors):
            q.delete(old)
        assert q.receive(10) == []
        q.delete(current)
        assert q.receive(10) == []

    def test_delete_twice_raises(self, subject: QueueUnderTest) -> None:
        """A receipt that was already used to delete cannot be used again."""
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        (got,) = q.receive(10)
        q.delete(got)
        with pytest.raises(self.stale_receipt_errors):
            q.delete(got)

    def test_a_message_received_max_receives_times_moves_to_dead_letters(
            self, make_queue: QueueFactory) -> None:
        """After max_receives deliveries without a delete, a message goes to the dead-letter
        queue with a reason, and the next message of its group is delivered."""
        subject = make_queue(max_receives=2)
        q = subject.queue
        q.send(b"poison", group_id="a", dedup_id="p")
        q.send(b"next", group_id="a", dedup_id="n")
        for expected in (1, 2):
            (got,) = q.receive(1)
            assert (got.body, got.receive_count) == (b"poison", expected)
            q.release(got)
        assert _body(q.receive(10)) == [b"next"]
        (letter,) = subject.dead_letters()
        assert (letter.body, letter.group_id, letter.dedup_id) == (b"poison", "a", "p")
        assert letter.reason

    def test_a_message_deleted_before_max_receives_is_not_dead_lettered(
            self, make_queue: QueueFactory) -> None:
        """A message deleted on its last allowed delivery never reaches the dead letters."""
        subject = make_queue(max_receives=2)
        q = subject.queue
        q.send(b"a1", group_id="a", dedup_id="a1")
        (got,) = q.receive(10)
        q.release(got)
        (got,) = q.receive(10)
        q.delete(got)
        assert q.receive(10) == []
        assert subject.dead_letters() == []
