"""The AWS state store: every workflow instance and its operations in one DynamoDB table
(the items are described in :mod:`.items`, the layout in ``docs/aws-dynamodb.md``).

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
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from ...backends.protocols import (
    InstancePage,
    InstanceSummary,
    InvalidPageTokenError,
    decode_page_token,
    encode_page_token,
)
from ...codecs import PayloadCodec, codec_from_spec
from ...models import (
    History,
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)
from ..config import (
    DEFAULT_PAYLOAD_THRESHOLD,
    DYNAMODB_MAX_ITEM_BYTES,
    AwsConfig,
    ConfigurationError,
)
from ..payloads import S3PayloadStore, dynamodb_item_size
from .items import (
    _SENT_OVERHEAD,
    CREATED_KEY,
    INSTANCE_SK,
    MAX_SENT_IDS,
    OP_PREFIX,
    SENT_SET_ATTRIBUTE,
    STATUS_INDEX,
    STATUS_KEY,
    TTL_ATTRIBUTE,
    VERSION_ATTRIBUTE,
    WORKFLOW_PREFIX,
    Item,
    _float,
    _instance_key,
    _int,
    _is_size_error,
    _Items,
    _Known,
    _names,
    _op_key,
    _OpInfo,
    _Payload,
    _pk,
    _s,
    created_key,
)
from .parts import _Parts
from .writes import _InstanceMissing, _NotRunning, _Write, execute, run, split, update_each

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from .._clients import AwsClients

_DAY = 86_400
_MAX_TRANSACTION = 100  # parts of one TransactWriteItems
_REMEMBERED_WORKFLOWS = 256
_log = logging.getLogger(__name__)


def _plain(key: Item) -> dict[str, str]:
    """A string-typed DynamoDB key as plain strings (for a page token)."""
    return {name: value["S"] for name, value in key.items()}


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
        codec: Encodes every payload written (inline and in S3) and decodes every payload
            read (docs/codecs.md); default: payloads stored as they are.

    One store object may serve many workflows (a Lambda container keeps it across
    invocations). It remembers, for the workflows it read recently, the ``activations``
    counter it last read or wrote; a later write to such a workflow is conditioned on the
    counter being unchanged and raises :class:`ConcurrentWriteError` otherwise.
    """

    def __init__(self, client: DynamoDBClient, table: str, *,
                 payloads: S3PayloadStore | None = None,
                 payload_threshold: int = DEFAULT_PAYLOAD_THRESHOLD, retention_days: int = 30,
                 clock: Callable[[], float] = time.time,
                 codec: PayloadCodec | None = None) -> None:
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
        self.codec = codec if codec is not None else PayloadCodec()
        self._items = _Items(payloads, payload_threshold, self.codec)
        self._parts = _Parts(table, self._items)

    @classmethod
    def from_config(cls, config: AwsConfig, clients: AwsClients) -> DynamoDBStateStore:
        """The store of a deployment: its table, its bucket (if any), threshold and
        retention."""
        payloads = (S3PayloadStore(clients.s3, config.bucket)
                    if config.bucket is not None else None)
        return cls(clients.dynamodb, config.table, payloads=payloads,
                   payload_threshold=config.payload_threshold,
                   retention_days=config.retention_days,
                   codec=codec_from_spec(config.codec, kms=lambda: clients.kms))

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

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        item, uploads, _ = self._items.instance_item(instance)
        puts = [self._parts.op_put(instance.workflow_id, op, uploads) for op in operations]
        self._items.upload(uploads)
        if puts:
            # The instance and its first records (a child's parent link) in one transaction.
            try:
                self.client.transact_write_items(TransactItems=[
                    {"Put": {"TableName": self.table, "Item": item,
                             "ConditionExpression": "attribute_not_exists(pk)"}},
                    *(w.action for w in puts)])
            except ClientError as exc:
                code = cast(Mapping[str, Any], exc.response).get("Error", {}).get("Code")
                stored = self.get_instance(instance.workflow_id)
                if code != "TransactionCanceledException" or stored is None:
                    raise
                return stored, False
            return dataclasses.replace(instance), True
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
            return self._items.instance(old), False
        return dataclasses.replace(instance), True

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        got = self.client.get_item(TableName=self.table, Key=_instance_key(workflow_id),
                                   ConsistentRead=True)
        item = got.get("Item")
        return None if item is None else self._items.instance(item, missing_ok=True)

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
        history = History(self._items.instance(instance), sorted(
            (self._items.operation(op, sent) for op in ops), key=lambda op: op.seq))
        if history.instance.status is not InstanceStatus.RUNNING:
            self._heal_expiry(workflow_id, instance, ops)
        self._remember(workflow_id, _Known(
            history.instance.activations, dynamodb_item_size(instance),
            {op["op_id"]["S"]: _OpInfo(op["kind"]["S"], op["name"]["S"], dynamodb_item_size(op))
             for op in ops}, len(sent),
            int(instance[VERSION_ATTRIBUTE]["N"]) if VERSION_ATTRIBUTE in instance else None))
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
                puts[op.op_id] = self._parts.op_put(workflow_id, op, uploads)
        updates: dict[str, _Write] = {}
        for outcome in outcomes:
            if outcome.op_id not in updates:
                updates[outcome.op_id] = self._parts.outcome_update(
                    workflow_id, outcome, activation, at if at is not None else 0.0, known,
                    uploads, puts.pop(outcome.op_id, None))
        touch, remember = self._parts.touch(workflow_id, activation, at, known)
        self._items.upload(uploads)
        transactions = split(
            list(puts.values()), [*updates.values(), touch], self._parts.guard(workflow_id, known))
        try:
            written = run(self.client, workflow_id, transactions)
        except _InstanceMissing:
            if operations:
                raise KeyError(f"no workflow instance {workflow_id!r}") from None
            return []
        if known is not None:
            if touch in written and remember is not None:
                known.activations, known.version = remember
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

    def record_heartbeat(self, workflow_id: str, callback_id: str, request_digest: str,
                         at: float) -> str | None:
        """One ``TransactWriteItems``: a ``ConditionCheck`` that the instance is running,
        and an ``Update`` of the callback's item, ``SET heartbeat_at``, on condition
        that it is a pending callback with this request digest and no later heartbeat is
        recorded. The write leaves ``activations`` alone: an activation running meanwhile
        keeps its commit. When a condition fails, one consistent read of each item says
        which (a later heartbeat already recorded is not a refusal)."""
        op_key = _op_key(workflow_id, callback_id)
        try:
            self.client.transact_write_items(TransactItems=[
                {"ConditionCheck": {
                    "TableName": self.table, "Key": _instance_key(workflow_id),
                    "ConditionExpression": "#status = :running",
                    "ExpressionAttributeNames": _names("status"),
                    "ExpressionAttributeValues": {":running": _s(InstanceStatus.RUNNING.value)},
                }},
                {"Update": {
                    "TableName": self.table, "Key": op_key,
                    "UpdateExpression": "SET #heartbeat_at = :at",
                    "ConditionExpression": (
                        "#kind = :callback AND #state = :pending AND #request_digest = :digest "
                        "AND (attribute_not_exists(#heartbeat_at) OR #heartbeat_at < :at)"),
                    "ExpressionAttributeNames": _names("heartbeat_at", "kind", "state",
                                                       "request_digest"),
                    "ExpressionAttributeValues": {
                        ":at": _float(at), ":callback": _s("callback"),
                        ":pending": _s(OperationState.PENDING.value),
                        ":digest": _s(request_digest)},
                }},
            ])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
        else:
            return None
        op = self.client.get_item(TableName=self.table, Key=op_key,
                                  ConsistentRead=True).get("Item")
        if (op is None or op.get("kind", {}).get("S") != "callback"
                or op.get("request_digest", {}).get("S") != request_digest):
            return "unknown"
        if op.get("state", {}).get("S") != OperationState.PENDING.value:
            return "completed"
        inst = self.client.get_item(TableName=self.table, Key=_instance_key(workflow_id),
                                    ConsistentRead=True).get("Item")
        if inst is None or inst.get("status", {}).get("S") != InstanceStatus.RUNNING.value:
            return "ended"
        return None  # a heartbeat at the same time or later is recorded: it stands

    def last_heartbeat(self, workflow_id: str, callback_id: str) -> float | None:
        """The callback item's ``heartbeat_at`` (one consistent ``GetItem``, 0.5 RRU)."""
        got = self.client.get_item(TableName=self.table, Key=_op_key(workflow_id, callback_id),
                                   ConsistentRead=True, ProjectionExpression="#heartbeat_at",
                                   ExpressionAttributeNames=_names("heartbeat_at"))
        value = got.get("Item", {}).get("heartbeat_at")
        return None if value is None else float(value["N"])

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
        update_each(self.client, [{
            "TableName": self.table, "Key": _op_key(workflow_id, op_id),
            "UpdateExpression": "SET #sent = :true, #sent_at = :now",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": _names("sent", "sent_at"),
            "ExpressionAttributeValues": {":true": {"BOOL": True}, ":now": now}}
            for op_id in op_ids])

    def _set_expiry(self, workflow_id: str, op_ids: Sequence[str], expires: int) -> None:
        """``expires_at`` on each operation item: plain, idempotent ``UpdateItem``s."""
        update_each(self.client, [{
            "TableName": self.table, "Key": _op_key(workflow_id, op_id),
            "UpdateExpression": "SET #ttl = :ttl",
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":ttl": _int(expires)}} for op_id in op_ids])

    def _op_ids(self, workflow_id: str, known: _Known | None) -> list[str]:
        if known is not None:
            return list(known.ops)
        items = self._query(workflow_id, ProjectionExpression="#pk, #sk",
                            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk"})
        return [item["sk"]["S"][len(OP_PREFIX):] for item in items
                if item["sk"]["S"].startswith(OP_PREFIX)]

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        """One conditional ``UpdateItem`` of the instance (``status = running``, and the
        remembered counter); once it succeeded, with retention on, a plain ``UpdateItem``
        per operation item setting ``expires_at``. A finish that loses (not running, or a
        second writer) has touched no operation."""
        known = self._memory(workflow_id)
        values: Item = {"status": _s(status.value), STATUS_KEY: _s(status.value),
                        "updated_at": _float(at)}
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
        values, uploads, size = self._items.place(
            values, payloads, f"workflow {workflow_id!r}",
            base=known.instance_size if known is not None else 0)
        write = self._parts.finish_write(workflow_id, values, activation, known,
                                         max(size, known.instance_size if known else 0))
        self._items.upload(uploads)
        try:
            execute(self.client, workflow_id, [write])
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
            records += [self._items.instance(item, missing_ok=True) for item in page["Items"]
                        if item["pk"]["S"].startswith(WORKFLOW_PREFIX)]
            last = page.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
        return sorted(records, key=lambda r: (r.created_at, r.workflow_id))

    def list_page(self, *, status: InstanceStatus | None = None,
                  workflow_name: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 100,
                  next_token: str | None = None) -> InstancePage:
        """A page of instances through the ``by_status`` index: a paginated ``Query`` of
        each status's partition (oldest first; without a status, running then completed,
        failed and cancelled), the time range in the key condition and the workflow name in
        a filter, then one ``BatchGetItem`` (100 keys a request) of the page's instance
        items for their counters and times, without payloads. Never a ``Scan``. Instance
        items written before the index existed carry no ``lw_*`` attributes and are not
        listed.

        Raises:
            ConfigurationError: the table has no ``by_status`` index (says how to add it).
            InvalidPageTokenError: ``next_token`` is not one this store handed out.
        """
        if limit < 1:
            raise ValueError(f"limit={limit} must be at least 1")
        statuses = [InstanceStatus(status)] if status is not None else list(InstanceStatus)
        first, start_key = 0, None
        if next_token is not None:
            first, start_key = self._page_position(next_token, statuses)
        keys: list[Item] = []
        token: str | None = None
        for index in range(first, len(statuses)):
            state = statuses[index].value
            kwargs: dict[str, Any] = self._index_query(state, workflow_name, since, until)
            exclusive: Item | None = start_key if index == first else None
            while True:
                if exclusive is not None:
                    kwargs["ExclusiveStartKey"] = exclusive
                kwargs["Limit"] = limit - len(keys)
                page = self._query_index(kwargs)
                keys += [{"pk": item["pk"], "sk": item["sk"]} for item in page["Items"]]
                exclusive = page.get("LastEvaluatedKey") or None
                if exclusive is None or len(keys) >= limit:
                    break
            if len(keys) >= limit:
                if exclusive is not None:
                    token = encode_page_token("dynamodb", [state, _plain(exclusive)])
                elif index + 1 < len(statuses):
                    token = encode_page_token("dynamodb", [statuses[index + 1].value, None])
                break
        return InstancePage(self._summaries(keys), token)

    def _page_position(self, token: str, statuses: Sequence[InstanceStatus]
                       ) -> tuple[int, Item | None]:
        position = decode_page_token("dynamodb", token)
        names = [s.value for s in statuses]
        key_names = {"pk", "sk", STATUS_KEY, CREATED_KEY}
        if (not isinstance(position, list) or len(position) != 2
                or position[0] not in names
                or not (position[1] is None or (
                    isinstance(position[1], dict) and set(position[1]) == key_names
                    and all(isinstance(v, str) for v in position[1].values())))):
            raise InvalidPageTokenError(
                f"page token {token[:40]!r} does not continue this listing (it was printed "
                "for other filters, or altered)")
        key = position[1]
        return names.index(position[0]), (
            None if key is None else {name: _s(value) for name, value in key.items()})

    def _index_query(self, state: str, workflow_name: str | None, since: float | None,
                     until: float | None) -> dict[str, Any]:
        condition = "#st = :st"
        names = {"#st": STATUS_KEY}
        values: Item = {":st": _s(state)}
        if since is not None or until is not None:
            names["#cr"] = CREATED_KEY
            if since is not None:
                values[":lo"] = _s(created_key(since))
            if until is not None:
                # "$" sorts after "#": every id created at ``until`` is below the bound.
                values[":hi"] = _s(created_key(until) + "$")
            condition += (" AND #cr BETWEEN :lo AND :hi" if since is not None and
                          until is not None else " AND #cr >= :lo" if since is not None
                          else " AND #cr <= :hi")
        kwargs: dict[str, Any] = {"TableName": self.table, "IndexName": STATUS_INDEX,
                                  "KeyConditionExpression": condition}
        if workflow_name is not None:
            kwargs["FilterExpression"] = "#wn = :wn"
            names["#wn"] = "workflow_name"
            values[":wn"] = _s(workflow_name)
        kwargs["ExpressionAttributeNames"] = names
        kwargs["ExpressionAttributeValues"] = values
        return kwargs

    def _query_index(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self.client.query(**kwargs)
        except ClientError as exc:
            error = cast(Mapping[str, Any], exc.response).get("Error", {})
            message = str(error.get("Message", ""))
            # DynamoDB says ValidationException ("The table does not have the specified
            # index"); moto's server says ResourceNotFoundException ("Invalid index").
            if error.get("Code") in ("ValidationException", "ResourceNotFoundException") \
                    and "index" in message.lower():
                raise ConfigurationError(
                    f"table {self.table!r} has no global secondary index {STATUS_INDEX!r}, "
                    "which listing instances needs (DynamoDB said: " + message + "); add it "
                    "with `aws dynamodb update-table --table-name " + self.table +
                    " --attribute-definitions AttributeName=lw_status,AttributeType=S "
                    "AttributeName=lw_created,AttributeType=S --global-secondary-index-updates "
                    "'[{\"Create\": {\"IndexName\": \"by_status\", \"KeySchema\": "
                    "[{\"AttributeName\": \"lw_status\", \"KeyType\": \"HASH\"}, "
                    "{\"AttributeName\": \"lw_created\", \"KeyType\": \"RANGE\"}], "
                    "\"Projection\": {\"ProjectionType\": \"INCLUDE\", "
                    "\"NonKeyAttributes\": [\"workflow_name\"]}}}]'` or by deploying the "
                    "template `lambda-workflow template` generates") from None
            raise

    def _summaries(self, keys: Sequence[Item]) -> list[InstanceSummary]:
        """The instance items of ``keys`` (``BatchGetItem``, 100 keys a request, unprocessed
        keys asked again), in the order of ``keys``; items gone since (TTL) are left out."""
        found: dict[str, Item] = {}
        projection = ("#wid, #wn, #st, #ca, #ua, #ac")
        names = {"#wid": "workflow_id", "#wn": "workflow_name", "#st": "status",
                 "#ca": "created_at", "#ua": "updated_at", "#ac": "activations"}
        for start in range(0, len(keys), 100):
            pending: Any = {self.table: {"Keys": list(keys[start:start + 100]),
                                         "ProjectionExpression": projection,
                                         "ExpressionAttributeNames": names}}
            for attempt in range(10):
                got = self.client.batch_get_item(RequestItems=pending)
                for item in got["Responses"].get(self.table, []):
                    found[item["workflow_id"]["S"]] = item
                pending = got.get("UnprocessedKeys")
                if not pending:
                    break
                time.sleep(0.05 * 2 ** attempt)
            else:
                raise ConfigurationError(f"table {self.table!r} kept throttling BatchGetItem "
                                         "while listing instances; try again")
        out: list[InstanceSummary] = []
        for key in keys:
            got_item = found.get(key["pk"]["S"][len(WORKFLOW_PREFIX):])
            if got_item is not None:
                out.append(InstanceSummary(
                    got_item["workflow_id"]["S"], got_item["workflow_name"]["S"],
                    InstanceStatus(got_item["status"]["S"]),
                    float(got_item["created_at"]["N"]), float(got_item["updated_at"]["N"]),
                    int(got_item["activations"]["N"])))
        return out

    def repair(self, workflow_id: str, expected_activations: int, drop: Sequence[str],
               put: Sequence[OperationRecord], at: float) -> bool:
        """Reopen an instance (``resume``, ``reset``). The commit point is one
        ``TransactWriteItems``: the instance's ``UpdateItem`` (conditional on its counter:
        ``running``, counter + 1, result, error and ``expires_at`` removed, the ids of ``put``
        records taken out of ``sent_ops``), a ``Put`` of each record of ``put`` and a
        ``Delete`` of each operation of ``drop``, as many as fit one transaction (100 parts);
        the other deletes follow it (the engine ignores operations a reset fenced, so a crash
        between leaves only items to clean up). Before it, idempotent preparations that
        change nothing while the instance is finished: ``expires_at`` is removed from the
        operation items that stay (a finished instance that was not reopened gets it back on
        its next load)."""
        keep_ids = {op.op_id for op in put}
        gone = list(dict.fromkeys(drop))
        items = self._query(workflow_id, ProjectionExpression="#pk, #sk, #ttl",
                            ExpressionAttributeNames={"#pk": "pk", "#sk": "sk",
                                                      "#ttl": TTL_ATTRIBUTE})
        if not any(item["sk"]["S"] == INSTANCE_SK for item in items):
            return False
        stale = [item["sk"]["S"][len(OP_PREFIX):] for item in items
                 if item["sk"]["S"].startswith(OP_PREFIX) and TTL_ATTRIBUTE in item]
        update_each(self.client, [{
            "TableName": self.table, "Key": _op_key(workflow_id, op_id),
            "UpdateExpression": "REMOVE #ttl", "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE}}
            for op_id in stale if op_id not in gone and op_id not in keep_ids])
        uploads: list[_Payload] = []
        puts: list[Any] = []
        for op in put:
            action: Any = self._parts.op_put(workflow_id, op, uploads).action
            del action["Put"]["ConditionExpression"]  # a record of ``put`` replaces its op
            puts.append(action)
        self._items.upload(uploads)
        unsent = [op.op_id for op in put if not op.sent]
        update = ("SET #status = :running, #lw_status = :running, #updated_at = :at, "
                  "#activations = :next "
                  f"REMOVE #result, #result_s3, #error, #error_s3, #{TTL_ATTRIBUTE}")
        values: Item = {":running": _s(InstanceStatus.RUNNING.value), ":at": _float(at),
                        ":next": _int(expected_activations + 1),
                        ":expected": _int(expected_activations)}
        if unsent:
            update += f" DELETE #{SENT_SET_ATTRIBUTE} :unsent"
            values[":unsent"] = {"SS": unsent}
        instance: Any = {"Update": {
            "TableName": self.table, "Key": _instance_key(workflow_id),
            "UpdateExpression": update,
            "ConditionExpression": "attribute_exists(pk) AND #activations = :expected",
            "ExpressionAttributeNames": _names(
                "status", STATUS_KEY, "updated_at", "activations", "result", "result_s3",
                "error",
                "error_s3", TTL_ATTRIBUTE, *([SENT_SET_ATTRIBUTE] if unsent else [])),
            "ExpressionAttributeValues": values}}
        room = max(0, _MAX_TRANSACTION - 1 - len(puts))
        deletes: list[Any] = [{"Delete": {"TableName": self.table,
                                          "Key": _op_key(workflow_id, op_id)}}
                              for op_id in gone]
        try:
            self.client.transact_write_items(
                TransactItems=[instance, *puts, *deletes[:room]])
        except ClientError as exc:
            reasons = cast(Mapping[str, Any], exc.response).get("CancellationReasons") or []
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise
        finally:
            self.forget(workflow_id)
        for start in range(room, len(deletes), 25):
            pending: Any = {self.table: [{"DeleteRequest": {"Key": d["Delete"]["Key"]}}
                                         for d in deletes[start:start + 25]]}
            for attempt in range(8):
                pending = self.client.batch_write_item(RequestItems=pending).get(
                    "UnprocessedItems")
                if not pending:
                    break
                time.sleep(0.05 * 2 ** attempt)
            else:  # throttled throughout: the records stay, fenced and ignored
                _log.warning("could not delete the operations a reset of %r dropped; they "
                             "stay in the table and are ignored", workflow_id)
                break
        return True
