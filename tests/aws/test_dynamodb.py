"""The DynamoDB state store on moto's server: the StateStore contract, and what only DynamoDB
has (paging, S3 offload, item limits, transactions, second writers, TTL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from backends.contract import StateStoreContract, StoreFactory

from lambda_workflow.aws._clients import AwsClients
from lambda_workflow.aws.dynamodb import (
    ConcurrentWriteError,
    DynamoDBStateStore,
    table_definition,
)
from lambda_workflow.aws.dynamodb import store as store_module
from lambda_workflow.aws.payloads import S3PayloadStore, dynamodb_item_size
from lambda_workflow.backends.protocols import StateStore
from lambda_workflow.errors import PayloadTooLargeError, WorkflowError
from lambda_workflow.models import (
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)

from .conftest import Aws


class TestDynamoDBStateStore(StateStoreContract):
    """DynamoDBStateStore, each store on a fresh table, meets the StateStore contract."""

    @pytest.fixture
    def make_store(self, aws: Aws) -> StoreFactory:
        def make() -> StateStore:
            return DynamoDBStateStore(aws.client("dynamodb"), aws.create_table())

        return make


# -- helpers -----------------------------------------------------------------------------------

WID = "tx-1"
KB = 1024


def _instance(workflow_id: str = WID, *, created_at: float = 100.0,
              payload: bytes = b'{"amount":5}') -> InstanceRecord:
    return InstanceRecord(workflow_id, "make_transaction", payload, "digest-" + workflow_id,
                          created_at=created_at, updated_at=created_at)


def _op(op_id: str, seq: int, *, workflow_id: str = WID, request: bytes = b'{"n":1}',
        name: str = "balance", kind: str = "call") -> OperationRecord:
    return OperationRecord(workflow_id, op_id, seq, kind, name, request, "d-" + op_id,
                           site="flow.py:12 in flow", created_in=1, created_at=101.0)


def _blob(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from one seed to the next (all byte values)."""
    return bytes((i * 7 + seed) % 256 for i in range(size))


MakeStore = Callable[..., DynamoDBStateStore]


@pytest.fixture
def make(aws: Aws) -> MakeStore:
    """A store on a fresh table (``table=`` reuses one); keyword arguments go to the store."""

    def build(*, table: str | None = None, **options: Any) -> DynamoDBStateStore:
        return DynamoDBStateStore(aws.client("dynamodb"), table or aws.create_table(), **options)

    return build


def _raw(store: DynamoDBStateStore) -> dict[tuple[str, str], dict[str, Any]]:
    """Every item of the store's table as DynamoDB holds it, by (pk, sk)."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"TableName": store.table, "ConsistentRead": True}
    while True:
        page = store.client.scan(**kwargs)
        for item in page["Items"]:
            items[(item["pk"]["S"], item["sk"]["S"])] = item
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _transaction_sizes(store: DynamoDBStateStore) -> list[int]:
    """The number of parts of each TransactWriteItems the store sends from now on."""
    sizes: list[int] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["TransactItems"]))

    store.client.meta.events.register(
        "provide-client-params.dynamodb.TransactWriteItems", note)
    return sizes


class Crash(Exception):
    """Stands for the Lambda being killed in the middle of a write."""


def _crash_on_call(store: DynamoDBStateStore, operation: str, number: int) -> None:
    """Make the store's ``number``-th ``operation`` request (1-based, from now on) fail
    before it is sent."""
    calls = [0]

    def maybe_crash(**_: Any) -> None:
        calls[0] += 1
        if calls[0] == number:
            raise Crash(f"killed before {operation} #{number}")

    store.client.meta.events.register(f"before-call.dynamodb.{operation}", maybe_crash)


# -- layout ------------------------------------------------------------------------------------

def test_items_follow_the_documented_layout(make: MakeStore) -> None:
    """An instance is one item (wf#<id>, #instance) and each operation one item
    (wf#<id>, op#<op_id>) holding every record field; payloads are Binary, times Numbers.
    mark_sent records sent op ids in the instance's string set sent_ops (unknown ids left
    out) and its time in sent_at; the operation item keeps sent = false."""
    store = make(clock=lambda: 555.5)
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0)], activation=1)
    store.record_outcomes(WID, [Outcome("1", OperationState.COMPLETED, b"7")], 2, 150.25)
    store.mark_sent(WID, ["1", "unknown"])
    raw = _raw(store)
    assert set(raw) == {("wf#tx-1", "#instance"), ("wf#tx-1", "op#1")}
    inst, op = raw[("wf#tx-1", "#instance")], raw[("wf#tx-1", "op#1")]
    assert inst["input"] == {"B": b'{"amount":5}'}
    assert inst["status"] == {"S": "running"}
    assert int(inst["activations"]["N"]) == 2
    assert float(inst["updated_at"]["N"]) == 150.25
    assert {name: next(iter(value)) for name, value in op.items()} == {
        "pk": "S", "sk": "S", "workflow_id": "S", "op_id": "S", "seq": "N", "kind": "S",
        "name": "S", "request": "B", "request_digest": "S", "site": "S", "state": "S",
        "sent": "BOOL", "result": "B", "created_in": "N", "created_at": "N",
        "resolved_in": "N", "resolved_at": "N"}
    assert (op["result"], op["sent"]) == ({"B": b"7"}, {"BOOL": False})
    assert (inst["sent_ops"], float(inst["sent_at"]["N"])) == ({"SS": ["1"]}, 555.5)
    assert "expires_at" not in inst and "expires_at" not in op


def test_table_definition_is_pk_and_sk_strings_on_demand() -> None:
    """table_definition() gives create_table's keys (pk hash, sk range, both S) and on-demand
    billing."""
    definition = table_definition()
    assert definition["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"},
                                       {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert definition["AttributeDefinitions"] == [
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
        {"AttributeName": "lw_status", "AttributeType": "S"},
        {"AttributeName": "lw_created", "AttributeType": "S"}]
    assert definition["GlobalSecondaryIndexes"] == [{
        "IndexName": "by_status",
        "KeySchema": [{"AttributeName": "lw_status", "KeyType": "HASH"},
                      {"AttributeName": "lw_created", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["workflow_name"]}}]
    assert definition["BillingMode"] == "PAY_PER_REQUEST"


def test_from_config_uses_the_deployments_table_bucket_and_limits(aws: Aws) -> None:
    """from_config builds the store on the configured table, with an S3 payload store when a
    bucket is configured, and the configured threshold and retention."""
    bucket = aws.create_bucket()
    config = aws.config(bucket=bucket, payload_threshold=2048, retention_days=7)
    store = DynamoDBStateStore.from_config(config, AwsClients(config, aws.session))
    assert (store.table, store.payload_threshold, store.retention_days) == (
        config.table, 2048, 7)
    assert store.payloads is not None and store.payloads.bucket == bucket
    big = _blob(5000)
    store.create_instance(_instance(payload=big))
    got = store.get_instance(WID)
    assert got is not None and got.input == big
    assert "input_s3" in _raw(store)[("wf#tx-1", "#instance")]
    plain = DynamoDBStateStore.from_config(aws.config(), AwsClients(aws.config(), aws.session))
    assert plain.payloads is None


# -- one load, in pages --------------------------------------------------------------------------

@pytest.mark.parametrize("with_s3", [False, True], ids=["inline", "s3"])
def test_a_history_over_one_query_page_is_one_paged_query(aws: Aws, make: MakeStore,
                                                          with_s3: bool) -> None:
    """A history larger than DynamoDB's 1 MB page (30 operations of 60 KB) loads with one
    Query followed through its pages (LastEvaluatedKey) and nothing else from DynamoDB; the
    operations come back complete and in seq order. With S3, payloads over the threshold are
    fetched from S3 (one GetObject each) within the same load."""
    store = make(payloads=S3PayloadStore(aws.client("s3"), aws.create_bucket())
                 if with_s3 else None)
    store.create_instance(_instance())
    ops = [_op(f"op-{i:02}", i, request=_blob(60 * KB, i)) for i in range(30)]
    offloaded = [_op(f"big-{i}", 30 + i, request=_blob(100 * KB, 100 + i))
                 for i in range(5)] if with_s3 else []
    store.add_operations(WID, list(reversed(ops + offloaded)), activation=1)

    pages = 0
    kwargs: dict[str, Any] = {"TableName": store.table, "KeyConditionExpression": "pk = :pk",
                              "ExpressionAttributeValues": {":pk": {"S": "wf#tx-1"}}}
    while True:
        pages += 1
        page = store.client.query(**kwargs)
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert pages >= 2

    aws.requests.clear()
    history = DynamoDBStateStore(store.client, store.table, payloads=store.payloads
                                 ).load_history(WID)
    assert history is not None
    assert [op.op_id for op in history.operations] == [op.op_id for op in ops + offloaded]
    assert history.operations == ops + offloaded
    dynamodb_calls = {k: v for k, v in aws.requests.items() if k.startswith("dynamodb.")}
    assert dynamodb_calls == {"dynamodb.Query": pages}
    assert aws.requests["s3.GetObject"] == len(offloaded)


# -- S3 offload -----------------------------------------------------------------------------------

def test_payloads_over_the_threshold_round_trip_through_s3(aws: Aws, make: MakeStore) -> None:
    """Input, request, result and workflow result over the threshold are written to S3 (the
    item keeps the key in <field>_s3, not the bytes) and read back byte for byte by
    load_history and get_instance; small payloads stay inline."""
    bucket = aws.create_bucket()
    store = make(payloads=S3PayloadStore(aws.client("s3"), bucket), payload_threshold=4 * KB)
    big_input, big_request, big_result, big_final = (
        _blob(300 * KB, 1), _blob(100 * KB, 2), _blob(390 * KB, 3), _blob(50 * KB, 4))
    store.create_instance(_instance(payload=big_input))
    store.load_history(WID)
    store.commit_activation(WID, [], [_op("1", 0, request=big_request), _op("2", 1)], 1, 5.0)
    store.commit_activation(WID, [Outcome("1", OperationState.COMPLETED, big_result),
                                  Outcome("2", OperationState.COMPLETED, b"2")], [], 2, 6.0)
    assert store.finish(WID, InstanceStatus.COMPLETED, big_final, None, 3, 7.0)

    raw = _raw(store)
    inst, one, two = (raw[("wf#tx-1", sk)] for sk in ("#instance", "op#1", "op#2"))
    assert {"input_s3", "result_s3"} <= set(inst) and not {"input", "result"} & set(inst)
    assert {"request_s3", "result_s3"} <= set(one) and not {"request", "result"} & set(one)
    assert two["request"] == {"B": b'{"n":1}'} and two["result"] == {"B": b"2"}
    assert one["request_s3"]["S"].startswith("lambda-workflow/tx-1/op/1/request/")
    assert inst["input_s3"]["S"].startswith("lambda-workflow/tx-1/input/")
    keys = {o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {inst["input_s3"]["S"], inst["result_s3"]["S"], one["request_s3"]["S"],
                    one["result_s3"]["S"]}

    fresh = DynamoDBStateStore(store.client, store.table, payloads=store.payloads)
    history = fresh.load_history(WID)
    assert history is not None
    assert (history.instance.input, history.instance.result) == (big_input, big_final)
    assert (history.operations[0].request, history.operations[0].result) == (
        big_request, big_result)
    got = fresh.get_instance(WID)
    assert got is not None and (got.input, got.result) == (big_input, big_final)


def _what(call: Callable[[], object]) -> PayloadTooLargeError:
    with pytest.raises(PayloadTooLargeError) as info:
        call()
    return info.value


def test_a_payload_over_the_threshold_without_a_bucket_is_refused_by_name(
        make: MakeStore) -> None:
    """Without a bucket, a payload over the threshold raises PayloadTooLargeError naming the
    workflow and the call (service and op id), its size and the limit, and writes nothing:
    not the instance, not the other parts of the same commit."""
    store = make(payload_threshold=8 * KB)
    big = _blob(10 * KB)

    err = _what(lambda: store.create_instance(_instance(payload=big)))
    assert (err.what, err.size, err.limit) == ("the input of workflow 'tx-1'", 10 * KB, 8 * KB)
    assert "LAMBDA_WORKFLOW_BUCKET" in str(err)
    assert _raw(store) == {}

    store.create_instance(_instance())
    store.load_history(WID)
    store.add_operations(WID, [_op("2", 0)], activation=1)
    before = _raw(store)
    err = _what(lambda: store.commit_activation(
        WID, [Outcome("2", OperationState.COMPLETED, b"1")],
        [_op("3", 1, name="fraud"), _op("4", 2, request=big, name="fraud")], 2, 5.0))
    assert err.what == "the request of call 4 (service 'fraud') of workflow 'tx-1'"
    err = _what(lambda: store.record_outcomes(
        WID, [Outcome("2", OperationState.COMPLETED, big)], 2, 5.0))
    assert err.what == "the result of call 2 (service 'balance') of workflow 'tx-1'"
    err = _what(lambda: store.finish(WID, InstanceStatus.COMPLETED, big, None, 2, 5.0))
    assert err.what == "the result of workflow 'tx-1'"
    err = _what(lambda: store.finish(WID, InstanceStatus.FAILED, None, big, 2, 5.0))
    assert err.what == "the error of workflow 'tx-1'"
    assert _raw(store) == before


def test_an_item_over_400_kb_is_refused_or_offloaded_whole(aws: Aws, make: MakeStore) -> None:
    """Payloads each under the threshold can still add up to more than DynamoDB's 400 KB
    item: without a bucket the write raises PayloadTooLargeError naming the record (checked
    before writing when the store knows the item, from DynamoDB's refusal otherwise) and
    changes nothing; with a bucket the payload goes to S3 and the write succeeds."""
    store = make(payload_threshold=300 * KB)
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0, request=_blob(250 * KB))], activation=1)
    store.load_history(WID)
    before = _raw(store)
    aws.requests.clear()
    result = _blob(250 * KB, 9)
    err = _what(lambda: store.record_outcomes(
        WID, [Outcome("1", OperationState.COMPLETED, result)], 2, 5.0))
    assert err.what == "the record of call 1 (service 'balance') of workflow 'tx-1'"
    assert err.limit == 400 * KB and err.size > 500 * KB
    assert not any(k.startswith("dynamodb.") for k in aws.requests)  # refused before writing

    unknown = DynamoDBStateStore(store.client, store.table, payload_threshold=300 * KB)
    err = _what(lambda: unknown.record_outcomes(
        WID, [Outcome("1", OperationState.COMPLETED, result)], 2, 5.0))
    assert "tx-1" in err.what and err.limit == 400 * KB
    assert _raw(store) == before

    with_bucket = DynamoDBStateStore(
        store.client, store.table, payload_threshold=300 * KB,
        payloads=S3PayloadStore(aws.client("s3"), aws.create_bucket()))
    with_bucket.load_history(WID)
    assert with_bucket.record_outcomes(
        WID, [Outcome("1", OperationState.COMPLETED, result)], 2, 5.0) == ["1"]
    assert "result_s3" in _raw(store)[("wf#tx-1", "op#1")]
    history = with_bucket.load_history(WID)
    assert history is not None and history.operations[0].result == result


def test_an_operation_alone_over_400_kb_is_refused(make: MakeStore) -> None:
    """A new operation whose item would exceed 400 KB (request under a high threshold) is
    refused with PayloadTooLargeError naming it; nothing of the commit is written."""
    store = make(payload_threshold=500 * KB)
    store.create_instance(_instance())
    store.load_history(WID)
    before = _raw(store)
    err = _what(lambda: store.commit_activation(
        WID, [], [_op("1", 0), _op("2", 1, request=_blob(410 * KB), name="fraud")], 1, 5.0))
    assert err.what == "the record of call 2 (service 'fraud') of workflow 'tx-1'"
    assert _raw(store) == before


# -- transactions ----------------------------------------------------------------------------------

def test_duplicates_inside_a_commit_are_dropped_and_the_rest_written_atomically(
        aws: Aws, make: MakeStore) -> None:
    """A commit whose transaction is cancelled because some parts were already recorded (a
    reply recorded earlier, an operation that exists) is retried without those parts: the
    new replies and operations are recorded, the old ones keep their values, and the ids
    recorded come back in the order given."""
    store = make()
    store.create_instance(_instance())
    store.load_history(WID)
    store.add_operations(WID, [_op("1", 0), _op("2", 1), _op("3", 2)], activation=1)
    store.record_outcomes(WID, [Outcome("2", OperationState.COMPLETED, b"first")], 2, 1.0)
    sizes = _transaction_sizes(store)
    recorded = store.commit_activation(
        WID, [Outcome("3", OperationState.COMPLETED, b"3"),
              Outcome("2", OperationState.FAILED, b"second"),
              Outcome("1", OperationState.COMPLETED, b"1")],
        [_op("2", 1, request=b"changed"), _op("4", 3)], 3, 2.0)
    assert recorded == ["3", "1"]
    assert len(sizes) == 2 and sizes[1] < sizes[0]  # one cancelled, one retried without dups
    history = store.load_history(WID)
    assert history is not None
    assert [(op.op_id, op.state.value, op.result, op.request, op.resolved_in)
            for op in history.operations] == [
        ("1", "completed", b"1", b'{"n":1}', 3), ("2", "completed", b"first", b'{"n":1}', 2),
        ("3", "completed", b"3", b'{"n":1}', 3), ("4", "pending", None, b'{"n":1}', None)]
    assert history.instance.activations == 3
    assert store.commit_activation(
        WID, [Outcome("1", OperationState.COMPLETED, b"x")], [_op("4", 3)], 4, 3.0) == []
    again = store.get_instance(WID)
    assert again is not None and again.activations == 3  # a write that records nothing


def test_a_commit_of_more_than_100_items_is_split_with_the_replies_last(
        aws: Aws, make: MakeStore) -> None:
    """A commit of 250 new operations and 2 replies goes out as several transactions of at
    most 100 parts; the replies and the instance's counter are in the last one, so a crash
    before it leaves only operations, which the redelivered commit finds and keeps."""
    store = make()
    store.create_instance(_instance())
    store.load_history(WID)
    store.add_operations(WID, [_op("a", 0), _op("b", 1)], activation=1)
    new_ops = [_op(f"n{i:03}", 2 + i) for i in range(250)]
    replies = [Outcome("a", OperationState.COMPLETED, b"1"),
               Outcome("b", OperationState.COMPLETED, b"2")]

    sizes = _transaction_sizes(store)
    _crash_on_call(store, "TransactWriteItems", 3)
    with pytest.raises(Crash):
        store.commit_activation(WID, replies, new_ops, 2, 5.0)
    assert len(sizes) == 3 and max(sizes) <= 100
    crashed = DynamoDBStateStore(store.client, store.table).load_history(WID)
    assert crashed is not None
    assert crashed.instance.activations == 1
    assert [op.state.value for op in crashed.operations[:2]] == ["pending", "pending"]
    assert 2 < len(crashed.operations) < 252

    redelivered = make(table=store.table)
    redelivered.load_history(WID)
    sizes = _transaction_sizes(redelivered)
    assert redelivered.commit_activation(WID, replies, new_ops, 2, 5.0) == ["a", "b"]
    assert max(sizes) <= 100
    history = redelivered.load_history(WID)
    assert history is not None
    assert history.instance.activations == 2
    assert [op.op_id for op in history.operations] == ["a", "b"] + [o.op_id for o in new_ops]
    assert [op.result for op in history.operations[:2]] == [b"1", b"2"]


# -- a second writer -------------------------------------------------------------------------------

def test_a_second_writer_is_detected_and_changes_nothing(make: MakeStore) -> None:
    """Two stores load the same history; the first commits; the second's commit and finish
    then raise ConcurrentWriteError naming the workflow and both counters, and leave the
    table as the first left it. After reloading, the second store writes again."""
    first = make()
    first.create_instance(_instance())
    first.add_operations(WID, [_op("1", 0)], activation=1)
    second = make(table=first.table)
    assert first.load_history(WID) is not None and second.load_history(WID) is not None

    assert first.commit_activation(WID, [Outcome("1", OperationState.COMPLETED, b"a")],
                                   [_op("2", 1)], 2, 5.0) == ["1"]
    after_first = _raw(first)
    with pytest.raises(ConcurrentWriteError) as info:
        second.commit_activation(WID, [Outcome("1", OperationState.COMPLETED, b"b")],
                                 [_op("2", 1, request=b"other"), _op("3", 2)], 2, 6.0)
    err = info.value
    assert (err.workflow_id, err.expected, err.actual) == (WID, 1, 2)
    assert "'tx-1'" in str(err) and "activations=1" in str(err) and "activations=2" in str(err)
    assert isinstance(err, WorkflowError)
    with pytest.raises(ConcurrentWriteError):
        second.finish(WID, InstanceStatus.COMPLETED, b"1", None, 2, 6.0)
    with pytest.raises(ConcurrentWriteError):
        second.add_operations(WID, [_op("9", 9)] + [_op(f"x{i}", 10 + i) for i in range(120)],
                              2)
    assert _raw(first) == after_first

    history = second.load_history(WID)
    assert history is not None and history.instance.activations == 2
    assert second.commit_activation(WID, [], [_op("3", 2)], 3, 7.0) == []
    assert second.finish(WID, InstanceStatus.COMPLETED, b'"ok"', None, 3, 8.0)


def test_a_write_without_a_read_raises_the_counter_to_its_highest(make: MakeStore) -> None:
    """A store that never loaded the history (no remembered counter) writes without the
    second-writer check: the counter becomes the highest activation written, and updated_at
    follows the write that raised it."""
    store = make()
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0), _op("2", 1)], activation=5)
    assert store.record_outcomes(WID, [Outcome("1", OperationState.COMPLETED, b"1")], 3,
                                 150.0) == ["1"]
    inst = store.get_instance(WID)
    assert inst is not None and (inst.activations, inst.updated_at) == (5, 100.0)
    assert store.record_outcomes(WID, [Outcome("2", OperationState.COMPLETED, b"2")], 7,
                                 160.0) == ["2"]
    inst = store.get_instance(WID)
    assert inst is not None and (inst.activations, inst.updated_at) == (7, 160.0)
    assert store.finish(WID, InstanceStatus.COMPLETED, b"0", None, 6, 170.0)
    inst = store.get_instance(WID)
    assert inst is not None and (inst.status, inst.activations, inst.updated_at) == (
        InstanceStatus.COMPLETED, 7, 170.0)
    with pytest.raises(KeyError, match="nobody"):
        store.add_operations("nobody", [_op("1", 0, workflow_id="nobody")], 1)
    assert store.get_instance("nobody") is None and store.load_history("nobody") is None


# -- TTL -------------------------------------------------------------------------------------------

def _expiries(store: DynamoDBStateStore, workflow_id: str = WID) -> dict[str, int | None]:
    return {sk: int(item["expires_at"]["N"]) if "expires_at" in item else None
            for (pk, sk), item in _raw(store).items() if pk == f"wf#{workflow_id}"}


@pytest.mark.parametrize("reads_first", [True, False], ids=["after-load", "without-load"])
def test_finish_sets_expires_at_on_every_item_of_the_workflow(
        make: MakeStore, reads_first: bool) -> None:
    """finish with retention_days sets expires_at = at + days * 86400 (epoch seconds) on the
    instance and on each of its operations, 120 of them (more than one transaction), whether
    the store knows the operations from load_history or lists their keys with a Query; other
    workflows' items, still running, have none."""
    store = make(retention_days=30)
    for wid, count in ((WID, 120), ("other", 2)):
        store.create_instance(_instance(wid))
        store.add_operations(wid, [_op(f"{i:03}", i, workflow_id=wid) for i in range(count)], 1)
    finisher = make(table=store.table, retention_days=30)
    if reads_first:
        finisher.load_history(WID)
    assert finisher.finish(WID, InstanceStatus.COMPLETED, b'"done"', None, 2, 1_000.75)
    expected = 1_000 + 30 * 86_400
    expiries = _expiries(store)
    assert len(expiries) == 121 and set(expiries.values()) == {expected}
    assert set(_expiries(store, "other").values()) == {None}
    assert not finisher.finish(WID, InstanceStatus.FAILED, None, b"{}", 3, 2_000.0)
    assert set(_expiries(store).values()) == {expected}


def test_retention_zero_sets_no_expiry(make: MakeStore) -> None:
    """With retention_days=0 a finished workflow's items carry no expires_at (kept for ever)."""
    store = make(retention_days=0)
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0)], 1)
    store.load_history(WID)
    assert store.finish(WID, InstanceStatus.COMPLETED, b"1", None, 2, 1_000.0)
    assert set(_expiries(store).values()) == {None}


def _writes(aws: Aws) -> dict[str, int]:
    return {k: v for k, v in aws.requests.items()
            if k in ("dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.TransactWriteItems",
                     "dynamodb.DeleteItem", "dynamodb.BatchWriteItem")}


@pytest.mark.parametrize("reads_first", [True, False], ids=["after-load", "without-load"])
def test_finish_is_one_instance_update_then_one_plain_update_per_operation(
        aws: Aws, make: MakeStore, reads_first: bool) -> None:
    """finish of a workflow with 3 operations makes 1 UpdateItem of the instance and then 3
    plain UpdateItems (expires_at on each operation item), no TransactWriteItems; without a
    loaded history the operations' keys come from one keys-only Query."""
    store = make(retention_days=30)
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0), _op("2", 1), _op("3", 2)], 1)
    finisher = make(table=store.table, retention_days=30)
    if reads_first:
        finisher.load_history(WID)
    keys: list[str] = []
    finisher.client.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem",
        lambda params, **_: keys.append(params["Key"]["sk"]["S"]))
    aws.requests.clear()
    assert finisher.finish(WID, InstanceStatus.COMPLETED, b'"done"', None, 2, 1_000.0)
    assert _writes(aws) == {"dynamodb.UpdateItem": 4}
    assert keys == ["#instance", "op#1", "op#2", "op#3"]  # the instance first
    assert aws.requests["dynamodb.Query"] == (0 if reads_first else 1)
    assert set(_expiries(store).values()) == {1_000 + 30 * 86_400}


def test_a_finish_that_loses_touches_no_operation(aws: Aws, make: MakeStore) -> None:
    """A finish that loses to a second writer (ConcurrentWriteError) or to an earlier finish
    (returns False) makes its one conditional UpdateItem of the instance and nothing more:
    no expires_at anywhere, the instance goes on as the other writer left it."""
    first = make(retention_days=30)
    first.create_instance(_instance())
    first.add_operations(WID, [_op(f"{i:03}", i) for i in range(120)], 1)
    second = make(table=first.table, retention_days=30)
    first.load_history(WID)
    second.load_history(WID)
    first.commit_activation(WID, [Outcome("000", OperationState.COMPLETED, b"1")], [], 2, 5.0)

    aws.requests.clear()
    with pytest.raises(ConcurrentWriteError):
        second.finish(WID, InstanceStatus.COMPLETED, b"1", None, 2, 6.0)
    assert _writes(aws) == {"dynamodb.UpdateItem": 1}
    assert set(_expiries(first).values()) == {None}
    inst = first.get_instance(WID)
    assert inst is not None and (inst.status, inst.activations) == (InstanceStatus.RUNNING, 2)

    assert first.finish(WID, InstanceStatus.COMPLETED, b"1", None, 3, 7.0)
    expected = 7 + 30 * 86_400
    assert set(_expiries(first).values()) == {expected}
    late = make(table=first.table, retention_days=1)
    late.load_history(WID)
    aws.requests.clear()
    assert not late.finish(WID, InstanceStatus.FAILED, None, b"{}", 4, 9_000.0)
    assert _writes(aws) == {"dynamodb.UpdateItem": 1}
    assert set(_expiries(first).values()) == {expected}


def test_a_crash_between_finish_and_the_ttl_updates_heals_on_the_next_load(
        make: MakeStore) -> None:
    """The instance's update and the operations' TTL updates are separate requests: a crash
    after the first leaves the workflow finished with operation items that have no
    expires_at. The next load_history (the redelivered activation) gives them the instance's
    expiry; a load that finds nothing missing writes nothing."""
    store = make(retention_days=30)
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0), _op("2", 1), _op("3", 2)], 1)
    store.load_history(WID)
    _crash_on_call(store, "UpdateItem", 3)  # the instance, op 1, then killed before op 2
    with pytest.raises(Crash):
        store.finish(WID, InstanceStatus.COMPLETED, b'"done"', None, 2, 1_000.0)
    expected = 1_000 + 30 * 86_400
    assert _expiries(store) == {"#instance": expected, "op#1": expected, "op#2": None,
                                "op#3": None}

    redelivered = make(table=store.table, retention_days=7)
    history = redelivered.load_history(WID)
    assert history is not None and history.instance.status is InstanceStatus.COMPLETED
    assert set(_expiries(store).values()) == {expected}  # the instance's, not its own
    sizes = _transaction_sizes(redelivered)
    updates: list[object] = []
    redelivered.client.meta.events.register("before-call.dynamodb.UpdateItem",
                                            lambda **kw: updates.append(kw))
    assert redelivered.load_history(WID) is not None
    assert (updates, sizes) == ([], [])


# -- sent requests ----------------------------------------------------------------------------

def test_mark_sent_is_one_update_of_the_instance(aws: Aws, make: MakeStore) -> None:
    """mark_sent of 3 operations is exactly 1 UpdateItem (ADD to the instance's sent_ops
    set), for a store that loaded the history and for one that did not (which lists the
    operations' keys with one Query first, to leave unknown ids out). Repeating it changes
    nothing; the operations load as sent."""
    store = make()
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0), _op("2", 1), _op("3", 2), _op("4", 3)], 1)
    store.load_history(WID)
    aws.requests.clear()
    store.mark_sent(WID, ["1", "2", "3", "2"])
    assert _writes(aws) == {"dynamodb.UpdateItem": 1}
    assert "dynamodb.Query" not in aws.requests
    assert sorted(_raw(store)[("wf#tx-1", "#instance")]["sent_ops"]["SS"]) == ["1", "2", "3"]

    other = make(table=store.table)
    aws.requests.clear()
    other.mark_sent(WID, ["3", "4", "99"])
    assert _writes(aws) == {"dynamodb.UpdateItem": 1}
    assert aws.requests["dynamodb.Query"] == 1
    history = other.load_history(WID)
    assert history is not None and [op.sent for op in history.operations] == [True] * 4
    assert sorted(_raw(store)[("wf#tx-1", "#instance")]["sent_ops"]["SS"]) == [
        "1", "2", "3", "4"]
    aws.requests.clear()
    other.mark_sent(WID, ["77"])
    other.mark_sent("nobody", ["1"])
    assert _writes(aws) == {}


def test_an_unknown_id_never_marks_an_operation_created_later(make: MakeStore) -> None:
    """An id mark_sent is given for an operation that does not exist (yet) is not recorded:
    the operation created later under that id loads as not sent, and is sent by the
    outbox."""
    store = make()
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0)], 1)
    store.load_history(WID)
    store.mark_sent(WID, ["1", "2"])
    DynamoDBStateStore(store.client, store.table).mark_sent(WID, ["3"])
    store.add_operations(WID, [_op("2", 1), _op("3", 2)], 2)
    history = store.load_history(WID)
    assert history is not None
    assert [(op.op_id, op.sent) for op in history.operations] == [
        ("1", True), ("2", False), ("3", False)]


def test_mark_sent_leaves_the_second_writer_check_alone(make: MakeStore) -> None:
    """mark_sent does not change activations and is not conditioned on it: another store's
    mark_sent between this store's load and its commit raises no ConcurrentWriteError, and
    this store's mark_sent after another writer committed still records."""
    first = make()
    first.create_instance(_instance())
    first.add_operations(WID, [_op("1", 0), _op("2", 1)], 1)
    second = make(table=first.table)
    first.load_history(WID)
    second.load_history(WID)
    second.mark_sent(WID, ["1"])
    assert first.commit_activation(WID, [Outcome("1", OperationState.COMPLETED, b"1")],
                                   [_op("3", 2)], 2, 5.0) == ["1"]
    second.mark_sent(WID, ["2"])
    first.mark_sent(WID, ["3"])
    assert first.finish(WID, InstanceStatus.COMPLETED, b"1", None, 2, 6.0)
    history = first.load_history(WID)
    assert history is not None
    assert history.instance.activations == 2
    assert [op.sent for op in history.operations] == [True, True, True]


def test_the_per_operation_sent_flag_of_earlier_tables_still_counts(make: MakeStore) -> None:
    """An operation item whose own sent flag is true (written by the earlier version of the
    store, which set it per item) loads as sent, beside ids in the instance's set."""
    store = make()
    store.create_instance(_instance())
    store.add_operations(WID, [_op("1", 0), _op("2", 1), _op("3", 2)], 1)
    store.client.update_item(
        TableName=store.table, Key={"pk": {"S": "wf#tx-1"}, "sk": {"S": "op#1"}},
        UpdateExpression="SET sent = :t, sent_at = :now",
        ExpressionAttributeValues={":t": {"BOOL": True}, ":now": {"N": "5"}})
    store.mark_sent(WID, ["3"])
    history = store.load_history(WID)
    assert history is not None
    assert [op.sent for op in history.operations] == [True, False, True]


def test_past_the_set_limit_each_operation_gets_its_own_flag(
        aws: Aws, make: MakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance's set holds at most MAX_SENT_IDS ids. Past that, mark_sent sets the
    sent flag on each operation item (a plain UpdateItem each): decided from the store's
    memory when it loaded the history, from the refused conditional ADD when it did not."""
    monkeypatch.setattr(store_module, "MAX_SENT_IDS", 3)
    store = make()
    store.create_instance(_instance())
    store.add_operations(WID, [_op(str(i), i) for i in range(1, 9)], 1)
    store.load_history(WID)
    store.mark_sent(WID, ["1", "2"])
    aws.requests.clear()
    store.mark_sent(WID, ["3", "4"])  # 2 + 2 > 3: known, no ADD tried
    assert _writes(aws) == {"dynamodb.UpdateItem": 2}
    fresh = make(table=store.table)
    aws.requests.clear()
    fresh.mark_sent(WID, ["5", "6"])  # size(set) 2 > 3 - 2: the ADD is refused
    assert _writes(aws) == {"dynamodb.UpdateItem": 3}
    aws.requests.clear()
    fresh.mark_sent(WID, ["7", "8", "5", "6"])  # more ids than the set holds at all
    assert _writes(aws) == {"dynamodb.UpdateItem": 4}
    raw = _raw(store)
    assert sorted(raw[("wf#tx-1", "#instance")]["sent_ops"]["SS"]) == ["1", "2"]
    assert [raw[("wf#tx-1", f"op#{i}")]["sent"]["BOOL"] for i in range(1, 9)] == [
        False, False, True, True, True, True, True, True]
    history = fresh.load_history(WID)
    assert history is not None and all(op.sent for op in history.operations)


def test_mark_sent_on_an_instance_item_without_room_flags_each_operation(
        aws: Aws, make: MakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The set counts in the instance item's size: when adding it would take the item over
    the 400 KB limit (checked from the known size, or DynamoDB's refusal without it),
    mark_sent flags each operation item instead and the instance is left as it was."""
    store = make(payload_threshold=500 * KB)
    store.create_instance(_instance(payload=_blob(404_000)))  # moto's limit: 405,000 bytes
    store.add_operations(WID, [_op("1", 0), _op("2", 1)], 1)
    store.load_history(WID)
    size = dynamodb_item_size(_raw(store)[("wf#tx-1", "#instance")])
    monkeypatch.setattr(store_module, "DYNAMODB_MAX_ITEM_BYTES", size + 20)
    aws.requests.clear()
    store.mark_sent(WID, ["1"])
    assert _writes(aws) == {"dynamodb.UpdateItem": 1}
    assert "sent_ops" not in _raw(store)[("wf#tx-1", "#instance")]
    monkeypatch.undo()

    pad = 404_990 - size - len("padding")  # the instance item grows to just under moto's
    store.client.update_item(  # limit (405,000 bytes): sent_ops and sent_at take it over
        TableName=store.table, Key={"pk": {"S": "wf#tx-1"}, "sk": {"S": "#instance"}},
        UpdateExpression="SET padding = :p", ExpressionAttributeValues={":p": {"S": "x" * pad}})
    fresh = make(table=store.table, payload_threshold=500 * KB)
    aws.requests.clear()
    fresh.mark_sent(WID, ["2"])
    assert _writes(aws) == {"dynamodb.UpdateItem": 2}  # the refused ADD, then op 2's flag
    raw = _raw(store)
    assert "sent_ops" not in raw[("wf#tx-1", "#instance")]
    history = fresh.load_history(WID)
    assert history is not None and [op.sent for op in history.operations] == [True, True]


def test_a_reply_and_the_creation_of_its_operation_in_one_commit(make: MakeStore) -> None:
    """When one commit both records a reply for an op id and creates that op, the reply is
    recorded if the operation was already pending; otherwise the operation is created
    pending and the reply is not recorded (as a store that applies replies before adding
    operations would)."""
    store = make()
    store.create_instance(_instance())
    store.load_history(WID)
    store.add_operations(WID, [_op("1", 0)], activation=1)
    recorded = store.commit_activation(
        WID, [Outcome("1", OperationState.COMPLETED, b"1"),
              Outcome("2", OperationState.COMPLETED, b"2")],
        [_op("1", 0, request=b"other"), _op("2", 1)], 2, 5.0)
    assert recorded == ["1"]
    history = store.load_history(WID)
    assert history is not None
    assert [(op.op_id, op.state.value, op.result, op.request) for op in history.operations] == [
        ("1", "completed", b"1", b'{"n":1}'), ("2", "pending", None, b'{"n":1}')]


# -- listing ---------------------------------------------------------------------------------------

def test_list_instances_scans_every_page_oldest_first(aws: Aws, make: MakeStore) -> None:
    """list_instances returns every instance (and nothing else: not operations, not service
    reply records) oldest first, following the Scan's pages over a table of more than 1 MB."""
    store = make()
    for wid, created in (("c", 30.0), ("a", 10.0), ("b", 20.0)):
        store.create_instance(_instance(wid, created_at=created))
    store.add_operations("a", [_op(f"{i}", i, workflow_id="a", request=_blob(60 * KB, i))
                               for i in range(30)], 1)
    store.client.put_item(TableName=store.table, Item={
        "pk": {"S": "svc#fraud#a"}, "sk": {"S": "#instance"}, "reply": {"B": b"{}"}})
    aws.requests.clear()
    listed = store.list_instances()
    assert [i.workflow_id for i in listed] == ["a", "b", "c"]
    assert listed[1] == _instance("b", created_at=20.0)
    assert aws.requests["dynamodb.Scan"] >= 2


def test_a_second_activation_that_read_after_a_mid_activation_save_loses(
        make: MakeStore) -> None:
    """Activation 2 saves an at-most-once attempt mid-activation (the counter is 2 after
    it); another Lambda's activation 3 of the same instance reads the history then; the
    first commits (counter still 2). The second's commit expects counter 2 too: the write
    version tells them apart, and it raises instead of recording a retry the first never
    made (found by the fault simulator, DynamoDB seed 302 with payloads removed)."""
    first = make()
    first.create_instance(_instance())
    first.add_operations(WID, [_op("1", 0)], activation=1)
    assert first.load_history(WID) is not None
    attempt = _op("2", 1, kind="step", name="once")
    first.commit_activation(WID, [Outcome("1", OperationState.COMPLETED, b"5")], [attempt],
                            2, 5.0)  # the save before the body runs
    second = make(table=first.table)
    seen = second.load_history(WID)
    assert seen is not None and seen.instance.activations == 2
    assert first.commit_activation(WID, [Outcome("2", OperationState.COMPLETED, b"9")], [],
                                   2, 5.5) == ["2"]
    with pytest.raises(ConcurrentWriteError, match="write version moved"):
        second.commit_activation(WID, [Outcome("2", OperationState.FAILED, b"{}")],
                                 [_op("3", 2, kind="timer", name="retry:once")], 3, 6.0)
    history = first.load_history(WID)
    assert history is not None
    assert [(op.op_id, op.state) for op in history.operations] == [
        ("1", OperationState.COMPLETED), ("2", OperationState.COMPLETED)]
