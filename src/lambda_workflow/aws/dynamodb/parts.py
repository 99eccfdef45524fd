"""The parts of the DynamoDB store's writes, each with its condition: an operation's put, a
reply's update, the instance's counter update or check, and a finish's update of the
instance. Each part says what a failed condition means (``on_fail``): already recorded,
another part to write instead, a missing instance, or a second writer
(:class:`ConcurrentWriteError`).
"""

from __future__ import annotations

from typing import Any

from ...models import InstanceStatus, OperationRecord, OperationState, Outcome
from .items import (
    VERSION_ATTRIBUTE,
    Item,
    _float,
    _instance_key,
    _int,
    _Items,
    _Known,
    _names,
    _op_key,
    _op_label,
    _OpInfo,
    _Payload,
    _s,
    _set_expression,
)
from .writes import (
    ConcurrentWriteError,
    ConflictingOperationError,
    OnFail,
    _InstanceMissing,
    _NotRunning,
    _Write,
)


class _Parts:
    """Builds the parts of writes to ``table``, encoding items with ``items``."""

    def __init__(self, table: str, items: _Items) -> None:
        self.table = table
        self.items = items

    def op_put(self, workflow_id: str, op: OperationRecord,
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
        item, offload, size = self.items.place(attrs, payloads, label)
        uploads.extend(offload)

        def recorded(old: Item | None, digest: str = op.request_digest) -> _Write | None:
            # Recorded already: by an earlier try of this activation (the same request), or
            # by another writer whose activation made a different one; then this activation
            # lost, and must not send what it made.
            if old is not None and old.get("request_digest", {}).get("S") != digest:
                raise ConflictingOperationError(workflow_id, op.op_id)
            return None

        return _Write({"Put": {"TableName": self.table, "Item": item,
                               "ConditionExpression": "attribute_not_exists(pk)",
                               "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                      size, label, on_fail=recorded, op_id=op.op_id)

    def outcome_update(self, workflow_id: str, outcome: Outcome, activation: int, at: float,
                       known: _Known | None, uploads: list[_Payload],
                       put: _Write | None) -> _Write:
        info = known.ops.get(outcome.op_id) if known is not None else None
        label = _op_label(workflow_id, outcome.op_id, info)
        attrs: Item = {"state": _s(outcome.state.value), "resolved_in": _int(activation),
                       "resolved_at": _float(at)}
        payload = _Payload("result", outcome.result,
                           f"{workflow_id}/op/{outcome.op_id}/result", f"the result of {label}")
        values, offload, size = self.items.place(attrs, [payload], label,
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

    def touch(self, workflow_id: str, activation: int, at: float | None,
              known: _Known | None) -> tuple[_Write, tuple[int, int | None] | None]:
        """The instance's part of a write: raise ``activations`` to ``activation`` (and
        ``updated_at`` with it) and, if remembered, the write version by one. Returns the
        part and the counter and version to remember once it is written (``None``: nothing
        to remember)."""
        key = _instance_key(workflow_id)
        label = f"workflow {workflow_id!r}"
        values: Item = {"activations": _int(activation)}
        if at is not None:
            values["updated_at"] = _float(at)
        if known is not None:
            seen = known.activations
            concurrent = _concurrent(workflow_id, seen)
            size = known.instance_size
            condition, cond_names, cond_vals = _unchanged(known)
            if activation > seen or (activation == seen and at is not None):
                version = (known.version or 0) + 1
                values[VERSION_ATTRIBUTE] = _int(version)
                expr, names, vals = _set_expression(values)
                names.update(cond_names)
                vals.update(cond_vals)
                return _Write({"Update": {
                    "TableName": self.table, "Key": key, "UpdateExpression": expr,
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                    size, label, essential=False, on_fail=concurrent), (activation, version)
            return _Write({"ConditionCheck": {
                "TableName": self.table, "Key": key,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": cond_names,
                "ExpressionAttributeValues": cond_vals,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
                size, label, essential=False, on_fail=concurrent), (seen, known.version)

        exists = self.exists_check(workflow_id)
        expr, names, vals = _set_expression(values)
        return _Write({"Update": {
            "TableName": self.table, "Key": key, "UpdateExpression": expr,
            "ConditionExpression": "attribute_exists(pk) AND #activations <= :activations",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": vals,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
            self.items.instance_estimate(), label, essential=False,
            on_fail=lambda old: _missing(old, exists)), None

    def exists_check(self, workflow_id: str) -> _Write:
        def missing(old: Item | None) -> _Write | None:
            raise _InstanceMissing

        return _Write({"ConditionCheck": {
            "TableName": self.table, "Key": _instance_key(workflow_id),
            "ConditionExpression": "attribute_exists(pk)"}},
            self.items.instance_estimate(), f"workflow {workflow_id!r}", essential=False,
            on_fail=missing)

    def guard(self, workflow_id: str, known: _Known | None) -> _Write:
        """The instance's part of an earlier transaction of a split write: the instance
        exists and, if remembered, its counter is unchanged."""
        if known is None:
            return self.exists_check(workflow_id)
        write, _ = self.touch(workflow_id, known.activations, None, known)
        return write

    def finish_write(self, workflow_id: str, values: Item, activation: int,
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
            other = _concurrent(workflow_id, seen)

            def concurrent(old: Item | None) -> _Write | None:
                not_running(old)
                return other(old)

            condition, cond_names, cond_vals = _unchanged(known)
            values = {**values, "activations": _int(max(seen, activation)),
                      VERSION_ATTRIBUTE: _int((known.version or 0) + 1)}
            write = build(values, f"#status = :running AND {condition}", cond_vals,
                          concurrent)
            update: Any = write.action["Update"]
            update["ExpressionAttributeNames"].update(cond_names)
            return write

        without_counter = build(values, "#status = :running", {}, not_running)

        def lower(old: Item | None) -> _Write | None:
            not_running(old)
            return without_counter  # the counter is already higher: leave it

        return build({**values, "activations": _int(activation)},
                     "#status = :running AND #activations <= :activation",
                     {":activation": _int(activation)}, lower)



def _unchanged(known: _Known) -> tuple[str, dict[str, str], Item]:
    """The condition that the instance is as this store last read or wrote it: the same
    activation counter and write version."""
    names = _names("activations")
    vals: Item = {":seen": _int(known.activations)}
    names["#ver"] = VERSION_ATTRIBUTE
    if known.version is None:
        return "#activations = :seen AND attribute_not_exists(#ver)", names, vals
    vals[":seen_ver"] = _int(known.version)
    return "#activations = :seen AND #ver = :seen_ver", names, vals


def _concurrent(workflow_id: str, seen: int) -> OnFail:
    def concurrent(old: Item | None) -> _Write | None:
        if old is None:
            raise _InstanceMissing
        raise ConcurrentWriteError(workflow_id, seen, int(old["activations"]["N"]))
    return concurrent


def _missing(old: Item | None, exists: _Write) -> _Write | None:
    """The fallback counter update failed: the instance is missing, or its counter is
    already higher (then only check that it exists)."""
    if old is None:
        raise _InstanceMissing
    return exists
