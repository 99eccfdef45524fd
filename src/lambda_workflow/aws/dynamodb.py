"""The AWS state store: every workflow instance and its operations in one DynamoDB table.

Single-table design (the layout is documented in ``docs/aws-dynamodb.md``):

- the instance: ``pk = "wf#<workflow_id>"``, ``sk = "#instance"``;
- each operation: ``pk = "wf#<workflow_id>"``, ``sk = "op#<op_id>"``;
- the ``svc#`` partition-key prefix belongs to the service handlers' reply records.

An activation reads its whole history with one paginated ``Query`` of its partition and writes
an activation's replies and new operations with one ``TransactWriteItems``; ``mark_sent`` adds
op ids to a string set on the instance item (one ``UpdateItem``), and ``finish`` updates the
instance, then sets each operation's TTL with plain ``UpdateItem``s. Every write is
conditional, so a repeated write changes nothing already recorded. Payloads over the threshold
go to S3 (``<field>_s3`` holds the key) and come back transparently.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from ..errors import PayloadTooLargeError, WorkflowError
from ..models import (
    History,
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)
from .config import (
    DEFAULT_PAYLOAD_THRESHOLD,
    DYNAMODB_MAX_ITEM_BYTES,
    AwsConfig,
    ConfigurationError,
)
from .payloads import S3PayloadStore, dynamodb_item_size, require_room

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

    from ._clients import AwsClients

__all__ = ["ConcurrentWriteError", "DynamoDBStateStore", "table_definition"]

INSTANCE_SK = "#instance"
OP_PREFIX = "op#"
WORKFLOW_PREFIX = "wf#"
TTL_ATTRIBUTE = "expires_at"
# The instance item's string set of the op ids ``mark_sent`` recorded (``ADD``), at most
# ``MAX_SENT_IDS`` of them; past that, each operation item carries its own ``sent`` flag.
# Every write of the instance item is billed on its whole size, so the set stays small:
# 256 ids of 1 to 8 bytes each are at most 2 KB (ids "1" .. "256": about 660 bytes).
SENT_SET_ATTRIBUTE = "sent_ops"
MAX_SENT_IDS = 256
# What adding to the set can add to the instance item besides the ids: the attribute names
# sent_ops and sent_at and sent_at's number.
_SENT_OVERHEAD = 32
MAX_TRANSACTION_ITEMS = 100
# TransactWriteItems refuses more than 4 MB of items; keep a margin under 4,000,000 bytes.
MAX_TRANSACTION_BYTES = 3_900_000
_DAY = 86_400
_REMEMBERED_WORKFLOWS = 256
# Per-item updates (TTL at finish, per-operation sent flags) go one after another up to this
# many, and on this many threads beyond.
_UPDATE_THREADS = 8
_log = logging.getLogger(__name__)
_ITEM_HINT = ("configure an S3 bucket for large payloads (LAMBDA_WORKFLOW_BUCKET): payloads "
              "that do not fit in the item then go to S3")
_NO_ROOM_HINT = "the attributes other than payloads alone are too large"

Item = dict[str, Any]


def table_definition() -> dict[str, Any]:
    """The ``create_table`` arguments of the deployment's table, besides ``TableName``: keys
    ``pk`` (hash) and ``sk`` (range), both strings, on-demand billing. Enable TTL on
    ``expires_at`` separately (``update_time_to_live``)."""
    return {
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


class ConcurrentWriteError(WorkflowError):
    """Another writer changed a workflow instance since this store read it.

    The store remembers the ``activations`` counter it last read (``load_history``) or wrote
    for each workflow; a write conditioned on it found another value. The write was not
    applied: the other writer's activation stands, and the messages of this one are
    redelivered and replayed on the history as it now is.

    Attributes:
        workflow_id: The instance.
        expected: The counter this store last read or wrote.
        actual: The counter the table holds.
    """

    def __init__(self, workflow_id: str, expected: int, actual: int) -> None:
        self.workflow_id = workflow_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"workflow {workflow_id!r} was written by another writer: this store read or "
            f"wrote activations={expected}, the table now holds activations={actual}; this "
            "write was not applied")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConcurrentWriteError, (self.workflow_id, self.expected, self.actual))


# -- what the store remembers of a workflow between its calls ---------------------------------

@dataclass(slots=True)
class _OpInfo:
    kind: str
    name: str
    size: int  # bytes of the item as last written (an estimate after an update)


@dataclass(slots=True)
class _Known:
    """Set by ``load_history``, kept up to date by this store's writes."""

    activations: int
    instance_size: int
    ops: dict[str, _OpInfo] = field(default_factory=dict)
    sent_ids: int = 0  # ids in the instance's sent set (an upper bound after mark_sent)


class _InstanceMissing(Exception):
    pass


class _NotRunning(Exception):
    pass


OnFail = Callable[[Item | None], "_Write | None"]


@dataclass(slots=True, eq=False)
class _Write:
    """One part of a transaction. A part whose condition fails is dropped (``on_fail`` is
    ``None``: already recorded), replaced by what ``on_fail`` returns, or ends the write
    (``on_fail`` raises). A transaction is only sent while an ``essential`` part is left."""

    action: TransactWriteItemTypeDef
    size: int
    label: str
    essential: bool = True
    on_fail: OnFail | None = None
    op_id: str | None = None


@dataclass(slots=True)
class _Payload:
    field: str
    data: bytes
    owner: str
    what: str


# -- encoding -----------------------------------------------------------------------------------

def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _int(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def _float(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def _pk(workflow_id: str) -> str:
    return WORKFLOW_PREFIX + workflow_id


def _instance_key(workflow_id: str) -> Item:
    return {"pk": _s(_pk(workflow_id)), "sk": _s(INSTANCE_SK)}


def _op_key(workflow_id: str, op_id: str) -> Item:
    return {"pk": _s(_pk(workflow_id)), "sk": _s(OP_PREFIX + op_id)}


def _op_label(workflow_id: str, op_id: str, info: _OpInfo | None) -> str:
    if info is None:
        return f"operation {op_id} of workflow {workflow_id!r}"
    if info.kind == "call":
        return f"call {op_id} (service {info.name!r}) of workflow {workflow_id!r}"
    return f"operation {op_id} ({info.kind} {info.name!r}) of workflow {workflow_id!r}"


def _names(*attrs: str) -> dict[str, str]:
    return {f"#{a}": a for a in attrs}


def _set_expression(values: Mapping[str, Any]) -> tuple[str, dict[str, str], Item]:
    """``SET #a = :a, ...`` for ``values`` (attribute name to typed value)."""
    expr = "SET " + ", ".join(f"#{name} = :{name}" for name in values)
    return expr, _names(*values), {f":{name}": value for name, value in values.items()}


def _is_size_error(message: str) -> bool:
    return "size" in message.lower() and "exceeded" in message.lower()


class DynamoDBStateStore:
    """A :class:`~lambda_workflow.backends.StateStore` on one DynamoDB table.

    Args:
        client: A boto3 DynamoDB client.
        table: The table's name; create it with :func:`table_definition` and TTL on
            ``expires_at``.
        payloads: Where payloads over ``payload_threshold`` bytes go. Without it, such a
            payload raises :class:`~lambda_workflow.errors.PayloadTooLargeError`.
        payload_threshold: Bytes above which an input, request or result leaves the item.
        retention_days: Days a finished workflow's items live before TTL deletes them; ``0``
            keeps them for ever.
        clock: The time source for ``sent_at`` (when :meth:`mark_sent` last recorded sent
            requests).

    One store object may serve many workflows (a Lambda container keeps it across
    invocations). It remembers, for the workflows it read recently, the ``activations``
    counter it last read or wrote; a later write to such a workflow is conditioned on the
    counter being unchanged and raises :class:`ConcurrentWriteError` otherwise.
    """

    def __init__(self, client: DynamoDBClient, table: str, *,
                 payloads: S3PayloadStore | None = None,
                 payload_threshold: int = DEFAULT_PAYLOAD_THRESHOLD, retention_days: int = 30,
                 clock: Callable[[], float] = time.time) -> None:
        if payload_threshold < 1:
            raise ConfigurationError(f"payload_threshold={payload_threshold} must be >= 1")
        if retention_days < 0:
            raise ConfigurationError(f"retention_days={retention_days} must be >= 0")
        self.client = client
        self.table = table
        self.payloads = payloads
        self.payload_threshold = payload_threshold
        self.retention_days = retention_days
        self.clock = clock
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: AwsConfig, clients: AwsClients) -> DynamoDBStateStore:
        """The store of a deployment: its table, its bucket (if any), threshold and
        retention."""
        payloads = (S3PayloadStore(clients.s3, config.bucket)
                    if config.bucket is not None else None)
        return cls(clients.dynamodb, config.table, payloads=payloads,
                   payload_threshold=config.payload_threshold,
                   retention_days=config.retention_days)

    # -- memory of recently read workflows ---------------------------------------------------
    def _memory(self, workflow_id: str) -> _Known | None:
        with self._lock:
            known = self._known.get(workflow_id)
            if known is not None:
                self._known.move_to_end(workflow_id)
            return known

    def _remember(self, workflow_id: str, known: _Known) -> None:
        with self._lock:
            self._known[workflow_id] = known
            self._known.move_to_end(workflow_id)
            while len(self._known) > _REMEMBERED_WORKFLOWS:
                self._known.popitem(last=False)

    def forget(self, workflow_id: str | None = None) -> None:
        """Drop what the store remembers of one workflow (or of all): its next writes are
        not checked for a second writer until it is read again."""
        with self._lock:
            if workflow_id is None:
                self._known.clear()
            else:
                self._known.pop(workflow_id, None)

    # -- sizes --------------------------------------------------------------------------------
    def _op_estimate(self) -> int:
        # An operation item holds at most two inline payloads (request, result), each within
        # the threshold, and a few hundred bytes of other attributes.
        return min(2 * self.payload_threshold + 4096, DYNAMODB_MAX_ITEM_BYTES)

    def _instance_estimate(self) -> int:
        return min(3 * self.payload_threshold + 4096, DYNAMODB_MAX_ITEM_BYTES)

    def _place(self, attrs: Item, payloads: Sequence[_Payload], label: str,
               base: int = 0) -> tuple[Item, list[_Payload], int]:
        """Put each payload inline (Binary) or in S3 (``<field>_s3``), so that no payload is
        over the threshold and the item stays within DynamoDB's 400 KB. Nothing is
        uploaded here. Returns the attributes, the payloads to upload and the item's size
        (``base`` is what the item holds besides ``attrs``, for an update).

        Raises:
            PayloadTooLargeError: a payload is over the threshold, or the item over 400 KB,
                and no bucket is configured (or the item is too large even without its
                payloads).
        """
        store = self.payloads
        offload: dict[str, _Payload] = {}
        inline: dict[str, _Payload] = {}
        for p in payloads:
            if require_room(len(p.data), self.payload_threshold, p.what, store):
                offload[p.field] = p
            else:
                inline[p.field] = p

        def build() -> Item:
            item = dict(attrs)
            for name, p in inline.items():
                item[name] = {"B": p.data}
            for name, p in offload.items():
                assert store is not None
                item[f"{name}_s3"] = _s(store.key_for(p.owner, p.data))
            return item

        out = build()
        total = base + dynamodb_item_size(out)
        while total > DYNAMODB_MAX_ITEM_BYTES and store is not None and inline:
            largest = max(inline, key=lambda name: len(inline[name].data))
            offload[largest] = inline.pop(largest)
            out = build()
            total = base + dynamodb_item_size(out)
        if total > DYNAMODB_MAX_ITEM_BYTES:
            raise PayloadTooLargeError(f"the record of {label}", total, DYNAMODB_MAX_ITEM_BYTES,
                                       _ITEM_HINT if store is None else _NO_ROOM_HINT)
        return out, list(offload.values()), total

    def _upload(self, uploads: Sequence[_Payload]) -> None:
        if uploads:
            assert self.payloads is not None
            for p in uploads:
                self.payloads.put(p.owner, p.data)

    def _payload(self, item: Item, name: str, what: str) -> bytes | None:
        value = item.get(name)
        if value is not None:
            data: bytes = value["B"]
            return data
        pointer = item.get(f"{name}_s3")
        if pointer is None:
            return None
        if self.payloads is None:
            raise ConfigurationError(
                f"{what} is stored in S3 (key {pointer['S']!r}) but this store has no bucket "
                "configured (LAMBDA_WORKFLOW_BUCKET)")
        return self.payloads.get(pointer["S"])

    # -- decoding -----------------------------------------------------------------------------
    def _instance(self, item: Item) -> InstanceRecord:
        wid = item["workflow_id"]["S"]
        data = self._payload(item, "input", f"the input of workflow {wid!r}")
        return InstanceRecord(
            workflow_id=wid,
            workflow_name=item["workflow_name"]["S"],
            input=data if data is not None else b"",
            input_digest=item["input_digest"]["S"],
            status=InstanceStatus(item["status"]["S"]),
            result=self._payload(item, "result", f"the result of workflow {wid!r}"),
            error=self._payload(item, "error", f"the error of workflow {wid!r}"),
            created_at=float(item["created_at"]["N"]),
            updated_at=float(item["updated_at"]["N"]),
            activations=int(item["activations"]["N"]),
        )

    def _operation(self, item: Item, sent_ids: frozenset[str] = frozenset()) -> OperationRecord:
        """An operation item as a record; ``sent_ids`` is the instance's sent set: the
        operation was sent if its id is there or its own ``sent`` flag is set (tables written
        before the set existed, and operations past ``MAX_SENT_IDS``)."""
        wid, op_id = item["workflow_id"]["S"], item["op_id"]["S"]
        request = self._payload(item, "request", f"the request of operation {op_id} of "
                                                  f"workflow {wid!r}")
        resolved_in = item.get("resolved_in")
        resolved_at = item.get("resolved_at")
        return OperationRecord(
            workflow_id=wid,
            op_id=op_id,
            seq=int(item["seq"]["N"]),
            kind=item["kind"]["S"],
            name=item["name"]["S"],
            request=request if request is not None else b"",
            request_digest=item["request_digest"]["S"],
            site=item["site"]["S"],
            state=OperationState(item["state"]["S"]),
            sent=bool(item["sent"]["BOOL"]) or op_id in sent_ids,
            result=self._payload(item, "result", f"the result of operation {op_id} of "
                                                 f"workflow {wid!r}"),
            created_in=int(item["created_in"]["N"]),
            resolved_in=None if resolved_in is None else int(resolved_in["N"]),
            created_at=float(item["created_at"]["N"]),
            resolved_at=None if resolved_at is None else float(resolved_at["N"]),
        )

    # -- building writes ----------------------------------------------------------------------
    def _instance_item(self, inst: InstanceRecord) -> tuple[Item, list[_Payload], int]:
        wid = inst.workflow_id
        attrs: Item = {
            **_instance_key(wid),
            "workflow_id": _s(wid),
            "workflow_name": _s(inst.workflow_name),
            "input_digest": _s(inst.input_digest),
            "status": _s(inst.status.value),
            "created_at": _float(inst.created_at),
            "updated_at": _float(inst.updated_at),
            "activations": _int(inst.activations),
        }
        payloads = [_Payload("input", inst.input, f"{wid}/input",
                             f"the input of workflow {wid!r}")]
        if inst.result is not None:
            payloads.append(_Payload("result", inst.result, f"{wid}/result",
                                     f"the result of workflow {wid!r}"))
        if inst.error is not None:
            payloads.append(_Payload("error", inst.error, f"{wid}/error",
                                     f"the error of workflow {wid!r}"))
        return self._place(attrs, payloads, f"workflow {wid!r}")

    def _op_put(self, workflow_id: str, op: OperationRecord,
                uploads: list[_Payload]) -> _Write:
        info = _OpInfo(op.kind, op.name, 0)
        label = _op_label(workflow_id, op.op_id, info)
        attrs: Item = {
            **_op_key(workflow_id, op.op_id),
            "workflow_id": _s(workflow_id),
            "op_id": _s(op.op_id),
            "seq": _int(op.seq),
            "kind": _s(op.kind),
            "name": _s(op.name),
            "request_digest": _s(op.request_digest),
            "site": _s(op.site),
            "state": _s(op.state.value),
            "sent": {"BOOL": op.sent},
            "created_in": _int(op.created_in),
            "created_at": _float(op.created_at),
        }
        if op.resolved_in is not None:
            attrs["resolved_in"] = _int(op.resolved_in)
        if op.resolved_at is not None:
            attrs["resolved_at"] = _float(op.resolved_at)
        base = f"{workflow_id}/op/{op.op_id}"
        payloads = [_Payload("request", op.request, f"{base}/request", f"the request of {label}")]
        if op.result is not None:
            payloads.append(_Payload("result", op.result, f"{base}/result",
                                     f"the result of {label}"))
        item, offload, size = self._place(attrs, payloads, label)
        uploads.extend(offload)
        return _Write({"Put": {"TableName": self.table, "Item": item,
                               "ConditionExpression": "attribute_not_exists(pk)"}},
                      size, label, op_id=op.op_id)

    def _outcome_update(self, workflow_id: str, outcome: Outcome, activation: int, at: float,
                        known: _Known | None, uploads: list[_Payload],
                        put: _Write | None) -> _Write:
        info = known.ops.get(outcome.op_id) if known is not None else None
        label = _op_label(workflow_id, outcome.op_id, info)
        attrs: Item = {"state": _s(outcome.state.value), "resolved_in": _int(activation),
                       "resolved_at": _float(at)}
        payload = _Payload("result", outcome.result,
                           f"{workflow_id}/op/{outcome.op_id}/result", f"the result of {label}")
        values, offload, size = self._place(attrs, [payload], label,
                                            base=info.size if info is not None else 0)
        uploads.extend(offload)
        expr, names, vals = _set_expression(values)
        names["#state"] = "state"
        vals[":pending"] = _s(OperationState.PENDING.value)
        update: Any = {"TableName": self.table, "Key": _op_key(workflow_id, outcome.op_id),
                       "UpdateExpression": expr, "ConditionExpression": "#state = :pending",
                       "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals}
        on_fail: OnFail | None = None
        if put is not None:
            # The same commit also creates this operation: the reply is recorded if the
            # operation was already pending, else the operation is created (as a store that
            # records replies before adding operations would do).
            update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"

            def on_fail(old: Item | None, put: _Write = put) -> _Write | None:
                return put if old is None else None
        return _Write({"Update": update}, size, label, on_fail=on_fail, op_id=outcome.op_id)

    def _touch(self, workflow_id: str, activation: int, at: float | None,
               known: _Known | None) -> tuple[_Write, int | None]:
        """The instance's part of a write: raise ``activations`` to ``activation`` (and
        ``updated_at`` with it). Returns the part and the counter to remember once it is
        written (``None``: nothing to remember)."""
        key = _instance_key(workflow_id)
        label = f"workflow {workflow_id!r}"
        values: Item = {"activations": _int(activation)}
        if at is not None:
            values["updated_at"] = _float(at)
        if known is not None:
            seen = known.activations

            def concurrent(old: Item | None) -> _Write | None:
                if old is None:
                    raise _InstanceMissing
                raise ConcurrentWriteError(workflow_id, seen, int(old["activations"]["N"]))

            size = known.instance_size
            if activation > seen or (activation == seen and at is not None):
                expr, names, vals = _set_expression(values)
                vals[":seen"] = _int(seen)
                return _Write({"Update": {
                    "TableName": self.table, "Key": key, "UpdateExpression": expr,
                    "ConditionExpression": "#activations = :seen",
                    "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                    size, label, essential=False, on_fail=concurrent), activation
            return _Write({"ConditionCheck": {
                "TableName": self.table, "Key": key,
                "ConditionExpression": "#activations = :seen",
                "ExpressionAttributeNames": _names("activations"),
                "ExpressionAttributeValues": {":seen": _int(seen)},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                size, label, essential=False, on_fail=concurrent), seen

        exists = self._exists_check(workflow_id)
        expr, names, vals = _set_expression(values)
        return _Write({"Update": {
            "TableName": self.table, "Key": key, "UpdateExpression": expr,
            "ConditionExpression": "attribute_exists(pk) AND #activations <= :activations",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            self._instance_estimate(), label, essential=False,
            on_fail=lambda old: _missing(old, exists)), None

    def _exists_check(self, workflow_id: str) -> _Write:
        def missing(old: Item | None) -> _Write | None:
            raise _InstanceMissing

        return _Write({"ConditionCheck": {
            "TableName": self.table, "Key": _instance_key(workflow_id),
            "ConditionExpression": "attribute_exists(pk)"}},
            self._instance_estimate(), f"workflow {workflow_id!r}", essential=False,
            on_fail=missing)

    def _guard(self, workflow_id: str, known: _Known | None) -> _Write:
        """The instance's part of an earlier transaction of a split write: the instance
        exists and, if remembered, its counter is unchanged."""
        if known is None:
            return self._exists_check(workflow_id)
        write, _ = self._touch(workflow_id, known.activations, None, known)
        return write

    # -- running transactions -----------------------------------------------------------------
    def _send(self, writes: Sequence[_Write]) -> None:
        if len(writes) > 1:
            self.client.transact_write_items(TransactItems=[w.action for w in writes])
            return
        action: Any = writes[0].action
        if "Put" in action:
            self.client.put_item(**action["Put"])
        elif "Update" in action:
            self.client.update_item(**action["Update"])
        else:  # pragma: no cover - a lone ConditionCheck is never essential, never sent
            raise AssertionError("a lone ConditionCheck")

    def _execute(self, workflow_id: str, writes: Sequence[_Write]) -> list[_Write]:
        """Write ``writes`` atomically, each part conditional: a part whose condition fails
        is handled by its ``on_fail`` and the rest sent again (DynamoDB cancels a whole
        transaction when one condition fails). Returns the parts written."""
        pending = list(writes)
        for _ in range(2 * len(pending) + 2):
            if not any(w.essential for w in pending):
                return []
            try:
                self._send(pending)
            except ClientError as exc:
                pending = self._after_failure(workflow_id, exc, pending)
            else:
                return pending
        raise AssertionError("a conditional write did not settle")  # pragma: no cover

    def _after_failure(self, workflow_id: str, exc: ClientError,
                       pending: list[_Write]) -> list[_Write]:
        response = cast(Mapping[str, Any], exc.response)
        error = response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", "")
        reasons: list[tuple[str | None, Item | None, str]]
        if code == "ConditionalCheckFailedException" and len(pending) == 1:
            reasons = [("ConditionalCheckFailed", response.get("Item"), message)]
        elif code == "TransactionCanceledException" and len(
                response.get("CancellationReasons") or ()) == len(pending):
            reasons = [(None if r.get("Code") in (None, "None") else r["Code"], r.get("Item"),
                        r.get("Message", "")) for r in response["CancellationReasons"]]
        elif code == "ValidationException" and _is_size_error(message):
            size = max(w.size for w in pending)
            raise PayloadTooLargeError(
                f"a record of workflow {workflow_id!r}", size, DYNAMODB_MAX_ITEM_BYTES,
                f"DynamoDB refused the write: {message}") from None
        else:
            raise exc
        retry: list[_Write] = []
        for write, (reason, old, why) in zip(pending, reasons, strict=True):
            if reason is None:
                retry.append(write)
            elif reason == "ConditionalCheckFailed":
                replacement = write.on_fail(old) if write.on_fail is not None else None
                if replacement is not None:
                    retry.append(replacement)
            elif reason == "ValidationError" and _is_size_error(why):
                raise PayloadTooLargeError(
                    f"the record of {write.label}", write.size, DYNAMODB_MAX_ITEM_BYTES,
                    f"DynamoDB refused the write: {why}") from None
            else:
                raise exc
        return retry

    def _transactions(self, body: Sequence[_Write], tail: Sequence[_Write],
                      guard: _Write | None) -> list[list[_Write]]:
        """Split a write that exceeds one transaction (100 parts, 4 MB): ``tail`` goes in
        the last transaction, filled up with ``body``; the rest of ``body`` goes first, in
        transactions that each carry ``guard``."""

        def fits(parts: Sequence[_Write]) -> bool:
            return (len(parts) <= MAX_TRANSACTION_ITEMS
                    and sum(w.size for w in parts) <= MAX_TRANSACTION_BYTES)

        everything = [*body, *tail]
        if fits(everything):
            return [everything]
        early, last = list(body), list(tail)
        while len(last) > 1 and not fits(last):
            early.append(last.pop(0))  # more replies than one transaction holds
        while early and fits([*last, early[-1]]):
            last.append(early.pop())
        extra = [guard] if guard is not None else []
        chunks: list[list[_Write]] = []
        current: list[_Write] = []
        for write in early:
            if current and not fits([*current, write, *extra]):
                chunks.append([*current, *extra])
                current = []
            current.append(write)
        if current:
            chunks.append([*current, *extra])
        return [*chunks, last]

    def _run(self, workflow_id: str, transactions: Sequence[Sequence[_Write]]) -> list[_Write]:
        written: list[_Write] = []
        for parts in transactions:
            written += self._execute(workflow_id, parts)
        return written

    # -- StateStore ---------------------------------------------------------------------------
    def create_instance(self, instance: InstanceRecord) -> tuple[InstanceRecord, bool]:
        item, uploads, _ = self._instance_item(instance)
        self._upload(uploads)
        try:
            self.client.put_item(TableName=self.table, Item=item,
                                 ConditionExpression="attribute_not_exists(pk)",
                                 ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            response = cast(Mapping[str, Any], exc.response)
            if response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            old = response.get("Item")
            if old is None:  # pragma: no cover - DynamoDB returns the item it kept
                stored = self.get_instance(instance.workflow_id)
                if stored is None:
                    raise
                return stored, False
            return self._instance(old), False
        return dataclasses.replace(instance), True

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        got = self.client.get_item(TableName=self.table, Key=_instance_key(workflow_id),
                                   ConsistentRead=True)
        item = got.get("Item")
        return None if item is None else self._instance(item)

    def _query(self, workflow_id: str, **extra: Any) -> list[Item]:
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "KeyConditionExpression": "#pk = :pk", "ExpressionAttributeNames": {"#pk": "pk"},
            "ExpressionAttributeValues": {":pk": _s(_pk(workflow_id))}, **extra}
        items: list[Item] = []
        while True:
            page = self.client.query(**kwargs)
            items += page["Items"]
            last = page.get("LastEvaluatedKey")
            if not last:
                return items
            kwargs["ExclusiveStartKey"] = last

    def load_history(self, workflow_id: str) -> History | None:
        instance: Item | None = None
        ops: list[Item] = []
        for item in self._query(workflow_id):
            sk = item["sk"]["S"]
            if sk == INSTANCE_SK:
                instance = item
            elif sk.startswith(OP_PREFIX):
                ops.append(item)
        if instance is None:
            self.forget(workflow_id)
            return None
        sent = frozenset(instance.get(SENT_SET_ATTRIBUTE, {}).get("SS", ()))
        history = History(self._instance(instance), sorted(
            (self._operation(op, sent) for op in ops), key=lambda op: op.seq))
        if history.instance.status is not InstanceStatus.RUNNING:
            self._heal_expiry(workflow_id, instance, ops)
        self._remember(workflow_id, _Known(
            history.instance.activations, dynamodb_item_size(instance),
            {op["op_id"]["S"]: _OpInfo(op["kind"]["S"], op["name"]["S"], dynamodb_item_size(op))
             for op in ops}, len(sent)))
        return history

    def _heal_expiry(self, workflow_id: str, instance: Item, ops: Sequence[Item]) -> None:
        """A finished instance carries ``expires_at`` but some of its operation items do not:
        a ``finish`` stopped (crashed, timed out, throttled) between the instance's update
        and the operations' TTL updates. Give them the instance's expiry now. Best effort: a
        failure is logged and the load goes on (the next load tries again)."""
        expires = instance.get(TTL_ATTRIBUTE)
        if expires is None:
            return
        missing = [op["op_id"]["S"] for op in ops if TTL_ATTRIBUTE not in op]
        if not missing:
            return
        try:
            self._set_expiry(workflow_id, missing, int(expires["N"]))
        except ClientError as exc:
            _log.warning("could not set expires_at on %d operation item(s) of finished "
                         "workflow %r: %s", len(missing), workflow_id, exc)

    def _commit(self, workflow_id: str, outcomes: Sequence[Outcome],
                operations: Sequence[OperationRecord], activation: int,
                at: float | None) -> list[str]:
        known = self._memory(workflow_id)
        uploads: list[_Payload] = []
        puts: dict[str, _Write] = {}
        for op in operations:
            if op.op_id not in puts:
                puts[op.op_id] = self._op_put(workflow_id, op, uploads)
        updates: dict[str, _Write] = {}
        for outcome in outcomes:
            if outcome.op_id not in updates:
                updates[outcome.op_id] = self._outcome_update(
                    workflow_id, outcome, activation, at if at is not None else 0.0, known,
                    uploads, puts.pop(outcome.op_id, None))
        touch, remember = self._touch(workflow_id, activation, at, known)
        self._upload(uploads)
        transactions = self._transactions(
            list(puts.values()), [*updates.values(), touch], self._guard(workflow_id, known))
        try:
            written = self._run(workflow_id, transactions)
        except _InstanceMissing:
            if operations:
                raise KeyError(f"no workflow instance {workflow_id!r}") from None
            return []
        if known is not None:
            if touch in written and remember is not None:
                known.activations = remember
            by_id = {op.op_id: op for op in operations}
            for write in written:
                if write.op_id is None:
                    continue
                if "Put" in write.action:
                    op = by_id[write.op_id]
                    known.ops[write.op_id] = _OpInfo(op.kind, op.name, write.size)
                elif write.op_id in known.ops:
                    known.ops[write.op_id].size = write.size
        recorded = {w.op_id for w in written if "Update" in w.action and w.op_id is not None}
        return [o for o in dict.fromkeys(o.op_id for o in outcomes) if o in recorded]

    def add_operations(self, workflow_id: str, operations: Sequence[OperationRecord],
                       activation: int) -> None:
        self._commit(workflow_id, (), operations, activation, None)

    def record_outcomes(self, workflow_id: str, outcomes: Sequence[Outcome], activation: int,
                        at: float) -> list[str]:
        return self._commit(workflow_id, outcomes, (), activation, at)

    def commit_activation(self, workflow_id: str, outcomes: Sequence[Outcome],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        return self._commit(workflow_id, outcomes, operations, activation, at)

    def mark_sent(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        """Record that the requests of ``op_ids`` left: one ``UpdateItem`` of the instance
        item, ``ADD sent_ops :ids`` (a string set) and ``SET sent_at``. Only ids of operations
        that exist are added (from the store's memory, or a keys-only ``Query`` without it),
        so an operation created later under an unknown id never looks sent. The update leaves
        ``activations`` alone: it neither needs nor disturbs the second-writer check. Past
        ``MAX_SENT_IDS`` ids, or when the instance item would outgrow 400 KB, each operation
        item gets its own ``sent`` flag instead (one plain ``UpdateItem`` each)."""
        known = self._memory(workflow_id)
        exists = set(self._op_ids(workflow_id, known))
        ids = [op_id for op_id in dict.fromkeys(op_ids) if op_id in exists]
        if not ids:
            return
        now = _float(self.clock())
        added = sum(len(op_id.encode()) for op_id in ids) + _SENT_OVERHEAD
        if len(ids) > MAX_SENT_IDS or (known is not None and (
                known.sent_ids + len(ids) > MAX_SENT_IDS
                or known.instance_size + added > DYNAMODB_MAX_ITEM_BYTES)):
            self._flag_each(workflow_id, ids, now)
            return
        try:
            self.client.update_item(
                TableName=self.table, Key=_instance_key(workflow_id),
                UpdateExpression="ADD #sent_ops :ids SET #sent_at = :now",
                ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(#sent_ops) "
                                    "OR size(#sent_ops) <= :room)",
                ExpressionAttributeNames=_names(SENT_SET_ATTRIBUTE, "sent_at"),
                ExpressionAttributeValues={":ids": {"SS": ids}, ":now": now,
                                           ":room": _int(MAX_SENT_IDS - len(ids))},
                ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            response = cast(Mapping[str, Any], exc.response)
            error = response.get("Error", {})
            code, message = error.get("Code", ""), error.get("Message", "")
            if code == "ConditionalCheckFailedException":
                if response.get("Item") is None:
                    return  # no such instance: nothing to mark
            elif not (code == "ValidationException" and _is_size_error(message)):
                raise
            # The set is full, or the instance item has no room left for it.
            if known is not None:
                known.sent_ids = MAX_SENT_IDS
            self._flag_each(workflow_id, ids, now)
            return
        if known is not None:
            known.sent_ids += len(ids)
            known.instance_size += added

    def _flag_each(self, workflow_id: str, op_ids: Sequence[str], now: Item) -> None:
        """``sent = true, sent_at`` on each operation item (the per-item fallback)."""
        self._update_each([{
            "TableName": self.table, "Key": _op_key(workflow_id, op_id),
            "UpdateExpression": "SET #sent = :true, #sent_at = :now",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": _names("sent", "sent_at"),
            "ExpressionAttributeValues": {":true": {"BOOL": True}, ":now": now}}
            for op_id in op_ids])

    def _set_expiry(self, workflow_id: str, op_ids: Sequence[str], expires: int) -> None:
        """``expires_at`` on each operation item: plain, idempotent ``UpdateItem``s."""
        self._update_each([{
            "TableName": self.table, "Key": _op_key(workflow_id, op_id),
            "UpdateExpression": "SET #ttl = :ttl",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":ttl": _int(expires)}} for op_id in op_ids])

    def _update_each(self, updates: Sequence[Mapping[str, Any]]) -> None:
        """Independent single-item updates, each conditional on its item existing (a missing
        item is skipped, never created); several threads when there are many."""

        def update(kwargs: Mapping[str, Any]) -> None:
            try:
                self.client.update_item(**kwargs)
            except ClientError as exc:
                response = cast(Mapping[str, Any], exc.response)
                if response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise

        if len(updates) <= _UPDATE_THREADS:
            for kwargs in updates:
                update(kwargs)
            return
        with ThreadPoolExecutor(max_workers=_UPDATE_THREADS) as pool:
            for _ in pool.map(update, updates):
                pass

    def _op_ids(self, workflow_id: str, known: _Known | None) -> list[str]:
        if known is not None:
            return list(known.ops)
        items = self._query(workflow_id, ProjectionExpression="#pk, #sk",
                            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"})
        return [item["sk"]["S"][len(OP_PREFIX):] for item in items
                if item["sk"]["S"].startswith(OP_PREFIX)]

    def _finish_write(self, workflow_id: str, values: Item, activation: int,
                      known: _Known | None, size: int) -> _Write:
        label = f"workflow {workflow_id!r}"
        running = _s(InstanceStatus.RUNNING.value)

        def build(values: Item, condition: str, extra: Item, on_fail: OnFail) -> _Write:
            expr, names, vals = _set_expression(values)
            names.update(_names("status", "activations"))
            vals.update(extra)
            vals[":running"] = running
            if "#activations" not in condition and "activations" not in values:
                del names["#activations"]
            return _Write({"Update": {
                "TableName": self.table, "Key": _instance_key(workflow_id),
                "UpdateExpression": expr, "ConditionExpression": condition,
                "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}, size, label,
                on_fail=on_fail)

        def not_running(old: Item | None) -> _Write | None:
            if old is None or old["status"]["S"] != running["S"]:
                raise _NotRunning
            return None

        if known is not None:
            seen = known.activations

            def concurrent(old: Item | None) -> _Write | None:
                not_running(old)
                assert old is not None
                raise ConcurrentWriteError(workflow_id, seen, int(old["activations"]["N"]))

            values = {**values, "activations": _int(max(seen, activation))}
            return build(values, "#status = :running AND #activations = :seen",
                         {":seen": _int(seen)}, concurrent)

        without_counter = build(values, "#status = :running", {}, not_running)

        def lower(old: Item | None) -> _Write | None:
            not_running(old)
            return without_counter  # the counter is already higher: leave it

        return build({**values, "activations": _int(activation)},
                     "#status = :running AND #activations <= :activation",
                     {":activation": _int(activation)}, lower)

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        """One conditional ``UpdateItem`` of the instance (``status = running``, and the
        remembered counter); once it succeeded, with retention on, a plain ``UpdateItem``
        per operation item setting ``expires_at``. A finish that loses (not running, or a
        second writer) has touched no operation."""
        known = self._memory(workflow_id)
        values: Item = {"status": _s(status.value), "updated_at": _float(at)}
        expires = int(at) + self.retention_days * _DAY if self.retention_days else None
        if expires is not None:
            values[TTL_ATTRIBUTE] = _int(expires)
        payloads = []
        if result is not None:
            payloads.append(_Payload("result", result, f"{workflow_id}/result",
                                      f"the result of workflow {workflow_id!r}"))
        if error is not None:
            payloads.append(_Payload("error", error, f"{workflow_id}/error",
                                     f"the error of workflow {workflow_id!r}"))
        values, uploads, size = self._place(
            values, payloads, f"workflow {workflow_id!r}",
            base=known.instance_size if known is not None else 0)
        write = self._finish_write(workflow_id, values, activation, known,
                                   max(size, known.instance_size if known else 0))
        self._upload(uploads)
        try:
            self._execute(workflow_id, [write])
        except _NotRunning:
            return False
        op_ids = self._op_ids(workflow_id, known) if expires is not None else []
        self.forget(workflow_id)
        if expires is not None:
            # Not atomic with the instance's update: a crash in between leaves operation
            # items without expires_at until the next load_history of the workflow (a
            # redelivered activation) sets it (_heal_expiry).
            self._set_expiry(workflow_id, op_ids, expires)
        return True

    def list_instances(self) -> list[InstanceRecord]:
        """Every instance, oldest first. A ``Scan`` of the whole table (for tools, never on
        an activation's path): it reads every item, operations included."""
        kwargs: dict[str, Any] = {
            "TableName": self.table, "ConsistentRead": True,
            "FilterExpression": "#sk = :instance", "ExpressionAttributeNames": {"#sk": "sk"},
            "ExpressionAttributeValues": {":instance": _s(INSTANCE_SK)}}
        records: list[InstanceRecord] = []
        while True:
            page = self.client.scan(**kwargs)
            records += [self._instance(item) for item in page["Items"]
                        if item["pk"]["S"].startswith(WORKFLOW_PREFIX)]
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return sorted(records, key=lambda r: (r.created_at, r.workflow_id))


def _missing(old: Item | None, exists: _Write) -> _Write | None:
    """The fallback counter update failed: the instance is missing, or its counter is
    already higher (then only check that it exists)."""
    if old is None:
        raise _InstanceMissing
    return exists
