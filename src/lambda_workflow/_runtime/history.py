"""Export and import of an instance's history as JSON (for the CLI and stored test histories)."""

from __future__ import annotations

from typing import Any

import orjson

from .. import _core
from ..models import History, InstanceRecord, InstanceStatus, OperationRecord, OperationState

__all__ = ["history_from_json", "history_to_json"]

FORMAT = 1


def _raw(payload: bytes | None) -> object:
    return None if payload is None else orjson.Fragment(payload)


def _bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _request(value: Any, digest: str) -> bytes:
    """A request's recorded bytes: in the document's key order when that is what the digest
    was taken over (a step's request ends with ``"attempt"``, not in sorted order), else
    canonical (sorted keys)."""
    exact = orjson.dumps(value)
    return exact if _core.digest(exact) == digest else _bytes(value)


def history_to_json(history: History) -> bytes:
    """The history as indented JSON; payloads are embedded as JSON values."""
    inst = history.instance
    return orjson.dumps({
        "format": FORMAT, "workflow_id": inst.workflow_id, "workflow": inst.workflow_name,
        "status": inst.status.value, "input": _raw(inst.input),
        "input_digest": inst.input_digest, "result": _raw(inst.result),
        "error": _raw(inst.error), "activations": inst.activations,
        "created_at": inst.created_at, "updated_at": inst.updated_at,
        "operations": [{
            "id": op.op_id, "seq": op.seq, "kind": op.kind, "name": op.name, "site": op.site,
            "request": _raw(op.request), "request_digest": op.request_digest,
            "state": op.state.value, "sent": op.sent, "result": _raw(op.result),
            "created_in": op.created_in, "resolved_in": op.resolved_in,
            "created_at": op.created_at, "resolved_at": op.resolved_at,
        } for op in history.operations],
    }, option=orjson.OPT_INDENT_2)


def history_from_json(data: bytes | str) -> History:
    """Rebuild a :class:`History` from :func:`history_to_json`'s output."""
    doc = orjson.loads(data)
    if doc.get("format") != FORMAT:
        raise ValueError(f"unsupported history format {doc.get('format')!r}; expected {FORMAT}")
    wid = doc["workflow_id"]
    inst = InstanceRecord(
        wid, doc["workflow"], _bytes(doc["input"]), doc["input_digest"],
        InstanceStatus(doc["status"]),
        None if doc["result"] is None and doc["status"] != "completed" else _bytes(doc["result"]),
        None if doc["error"] is None else _bytes(doc["error"]),
        doc["created_at"], doc["updated_at"], doc["activations"])
    ops = [OperationRecord(
        wid, op["id"], op["seq"], op["kind"], op["name"],
        _request(op["request"], op["request_digest"]),
        op["request_digest"], op["site"], OperationState(op["state"]), op["sent"],
        None if op["state"] == "pending" else _bytes(op["result"]), op["created_in"],
        op["resolved_in"], op["created_at"], op["resolved_at"]) for op in doc["operations"]]
    return History(inst, ops)
