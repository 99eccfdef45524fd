"""The items of the DynamoDB table: keys, attribute encoding and decoding, payload placement
(inline or in S3) and item size estimates.

Single-table design (the layout is documented in ``docs/aws-dynamodb.md``):

- the instance: ``pk = "wf#<workflow_id>"``, ``sk = "#instance"``;
- each operation: ``pk = "wf#<workflow_id>"``, ``sk = "op#<op_id>"``;
- the ``svc#`` partition-key prefix belongs to the service handlers' reply records.

Payloads over the threshold go to S3 (``<field>_s3`` holds the key) and come back
transparently.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...codecs import CodecError, PayloadCodec
from ...errors import PayloadTooLargeError
from ...models import (
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
)
from ..config import DYNAMODB_MAX_ITEM_BYTES, ConfigurationError
from ..payloads import PayloadMissingError, S3PayloadStore, dynamodb_item_size, require_room

INSTANCE_SK = "#instance"
OP_PREFIX = "op#"
WORKFLOW_PREFIX = "wf#"
TTL_ATTRIBUTE = "expires_at"
# The instance item's write version: every conditional write of an activation (its
# mid-activation saves, its commit, its finish) compares it with the version the store read
# and raises it by one. The activation counter alone cannot tell a second activation that read
# after the first one's mid-activation save (same counter) from the first one's commit.
VERSION_ATTRIBUTE = "ver"
_log = logging.getLogger(__name__)
# The instance item's string set of the op ids ``mark_sent`` recorded (``ADD``), at most
# ``MAX_SENT_IDS`` of them; past that, each operation item carries its own ``sent`` flag.
# Every write of the instance item is billed on its whole size, so the set stays small:
# 256 ids of 1 to 8 bytes each are at most 2 KB (ids "1" .. "256": about 660 bytes).
SENT_SET_ATTRIBUTE = "sent_ops"
MAX_SENT_IDS = 256
# What adding to the set can add to the instance item besides the ids: the attribute names
# sent_ops and sent_at and sent_at's number.
_SENT_OVERHEAD = 32
_ITEM_HINT = ("configure an S3 bucket for large payloads (LAMBDA_WORKFLOW_BUCKET): payloads "
              "that do not fit in the item then go to S3")
_NO_ROOM_HINT = "the attributes other than payloads alone are too large"
# The listing index (``table_definition``): its name and key attributes, set on instance
# items only.
STATUS_INDEX = "by_status"
STATUS_KEY = "lw_status"
CREATED_KEY = "lw_created"

Item = dict[str, Any]


def table_definition() -> dict[str, Any]:
    """The ``create_table`` arguments of the deployment's table, besides ``TableName``: keys
    ``pk`` (hash) and ``sk`` (range), both strings, on-demand billing, and the global
    secondary index ``by_status`` that lists instances (hash ``lw_status``, the status; range
    ``lw_created``, the creation time then ``#`` then the workflow id; ``workflow_name``
    projected). Only instance items carry the ``lw_*`` attributes, and they change only when
    the status does, so an activation that leaves the status alone writes nothing to the
    index. Enable TTL on ``expires_at`` separately (``update_time_to_live``)."""
    return {
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": STATUS_KEY, "AttributeType": "S"},
            {"AttributeName": CREATED_KEY, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [{
            "IndexName": STATUS_INDEX,
            "KeySchema": [
                {"AttributeName": STATUS_KEY, "KeyType": "HASH"},
                {"AttributeName": CREATED_KEY, "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "INCLUDE",
                           "NonKeyAttributes": ["workflow_name"]},
        }],
        "BillingMode": "PAY_PER_REQUEST",
    }


@dataclass(slots=True)
class _OpInfo:
    kind: str
    name: str
    size: int  # bytes of the item as last written (an estimate after an update)


@dataclass(slots=True)
class _Known:
    """What the store remembers of a workflow between its calls. Set by ``load_history``,
    kept up to date by the store's writes."""

    activations: int
    instance_size: int
    ops: dict[str, _OpInfo] = field(default_factory=dict)
    sent_ids: int = 0  # ids in the instance's sent set (an upper bound after mark_sent)
    version: int | None = None  # VERSION_ATTRIBUTE as read or written; None: not there yet


@dataclass(slots=True)
class _Payload:
    field: str
    data: bytes
    owner: str
    what: str


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _int(value: int) -> dict[str, str]:
    return {"N": str(int(value))}


def _float(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def created_key(created_at: float, workflow_id: str = "") -> str:
    """The ``lw_created`` value: the creation time as fixed-width ISO 8601 UTC (so that the
    strings sort as the times do), then ``#`` and the workflow id. Without an id: the
    prefix, a lower bound for the times from ``created_at`` on."""
    when = datetime.fromtimestamp(created_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{when}#{workflow_id}" if workflow_id else when


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


class _Items:
    """Encodes records as items and decodes them back, placing each payload inline (Binary)
    or in S3 (``payloads``) by ``payload_threshold`` and the 400 KB item limit. Every payload
    is encoded by ``codec`` before it is placed (so sizes and S3 objects are the encoded
    bytes) and decoded when read."""

    def __init__(self, payloads: S3PayloadStore | None, payload_threshold: int,
                 codec: PayloadCodec | None = None) -> None:
        self.payloads = payloads
        self.payload_threshold = payload_threshold
        self.codec = codec if codec is not None else PayloadCodec()

    def instance_estimate(self) -> int:
        return min(3 * self.payload_threshold + 4096, DYNAMODB_MAX_ITEM_BYTES)

    def place(self, attrs: Item, payloads: Sequence[_Payload], label: str,
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
        payloads = [dataclasses.replace(p, data=self.codec.encode(p.data)) for p in payloads]
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

    def upload(self, uploads: Sequence[_Payload]) -> None:
        if uploads:
            assert self.payloads is not None
            for p in uploads:
                self.payloads.put(p.owner, p.data)

    def payload(self, item: Item, name: str, what: str) -> bytes | None:
        value = item.get(name)
        if value is not None:
            data: bytes = value["B"]
            return self._decode(data, what)
        pointer = item.get(f"{name}_s3")
        if pointer is None:
            return None
        if self.payloads is None:
            raise ConfigurationError(
                f"{what} is stored in S3 (key {pointer['S']!r}) but this store has no bucket "
                "configured (LAMBDA_WORKFLOW_BUCKET)")
        return self._decode(self.payloads.get(pointer["S"], what=what), what)

    def _decode(self, data: bytes, what: str) -> bytes:
        try:
            return self.codec.decode(data)
        except CodecError as exc:
            exc.args = (f"{what}: {exc}",)
            raise

    def instance(self, item: Item, *, missing_ok: bool = False) -> InstanceRecord:
        """An instance item as a record. With ``missing_ok`` (describing, listing, marking
        failed) a payload whose S3 object is gone reads as empty (``b""`` for the input,
        ``None`` for the result and the error) with a warning naming the key, instead of
        raising :class:`PayloadMissingError` (which replaying needs)."""
        wid = item["workflow_id"]["S"]

        def read(name: str, what: str) -> bytes | None:
            try:
                return self.payload(item, name, what)
            except PayloadMissingError as exc:
                if not missing_ok:
                    raise
                _log.warning("%s", exc)
                return None

        data = read("input", f"the input of workflow {wid!r}")
        return InstanceRecord(
            workflow_id=wid,
            workflow_name=item["workflow_name"]["S"],
            input=data if data is not None else b"",
            input_digest=item["input_digest"]["S"],
            status=InstanceStatus(item["status"]["S"]),
            result=read("result", f"the result of workflow {wid!r}"),
            error=read("error", f"the error of workflow {wid!r}"),
            created_at=float(item["created_at"]["N"]),
            updated_at=float(item["updated_at"]["N"]),
            activations=int(item["activations"]["N"]),
        )

    def operation(self, item: Item, sent_ids: frozenset[str] = frozenset()) -> OperationRecord:
        """An operation item as a record; ``sent_ids`` is the instance's sent set: the
        operation was sent if its id is there or its own ``sent`` flag is set (tables written
        before the set existed, and operations past ``MAX_SENT_IDS``)."""
        wid, op_id = item["workflow_id"]["S"], item["op_id"]["S"]
        request = self.payload(item, "request", f"the request of operation {op_id} of "
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
            result=self.payload(item, "result", f"the result of operation {op_id} of "
                                                f"workflow {wid!r}"),
            created_in=int(item["created_in"]["N"]),
            resolved_in=None if resolved_in is None else int(resolved_in["N"]),
            created_at=float(item["created_at"]["N"]),
            resolved_at=None if resolved_at is None else float(resolved_at["N"]),
        )

    def instance_item(self, inst: InstanceRecord) -> tuple[Item, list[_Payload], int]:
        wid = inst.workflow_id
        attrs: Item = {
            **_instance_key(wid),
            "workflow_id": _s(wid),
            "workflow_name": _s(inst.workflow_name),
            "input_digest": _s(inst.input_digest),
            "status": _s(inst.status.value),
            STATUS_KEY: _s(inst.status.value),
            CREATED_KEY: _s(created_key(inst.created_at, wid)),
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
        return self.place(attrs, payloads, f"workflow {wid!r}")
