"""Export and import of an instance's history as JSON (for the CLI and stored test histories),
and the description of how two encoded requests differ (for ``NonDeterminismError``).

Recorded requests are the bytes the runtime wrote and digested; :func:`history_to_json`
embeds them verbatim and :func:`history_from_json` is the one loader that gives them back
(docs/protocol.md, "Recorded requests").
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import _core
from ..models import History, InstanceRecord, InstanceStatus, OperationRecord, OperationState

__all__ = ["history_from_json", "history_to_json", "request_difference"]

FORMAT = 1


def _raw(payload: bytes | None) -> object:
    return None if payload is None else orjson.Fragment(payload)


def _bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _as_written(value: Any) -> bytes:
    """A payload with no digest (an operation's result, an error) in the document's key
    order: the bytes the runtime wrote, for an export nobody edited (an error object is
    ``type, message, details``, not sorted); it is read as a value, never compared as bytes."""
    return orjson.dumps(value)


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


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


class _Fields:
    """One JSON object of a history file, read field by field: a missing field or one of
    the wrong type raises ValueError naming where it is (``operations[2].seq``)."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'the history'}: expected a JSON object, found "
                             f"{_json_type(value)}")
        self.doc: dict[str, Any] = value
        self.where = where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def value(self, key: str) -> Any:
        if key not in self.doc:
            where = f"{self.where}: " if self.where else ""
            raise ValueError(f"{where}the field {key!r} is missing")
        return self.doc[key]

    def _typed(self, key: str, ok: bool, value: object, expected: str) -> None:
        if not ok:
            raise ValueError(f"{self._path(key)}: expected {expected}, found "
                             f"{_json_type(value)} ({_shown(value)})")

    def text(self, key: str) -> str:
        value = self.value(key)
        self._typed(key, isinstance(value, str), value, "a string")
        return str(value)

    def integer(self, key: str, *, optional: bool = False) -> Any:
        value = self.value(key)
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            optional and value is None)
        self._typed(key, ok, value, "an integer or null" if optional else "an integer")
        return value

    def time(self, key: str, *, optional: bool = False) -> Any:
        value = self.value(key)
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            optional and value is None)
        self._typed(key, ok, value, "a number (seconds) or null" if optional
                    else "a number (seconds)")
        return value

    def flag(self, key: str) -> bool:
        value = self.value(key)
        self._typed(key, isinstance(value, bool), value, "true or false")
        return bool(value)

    def choice(self, key: str, allowed: type[InstanceStatus] | type[OperationState]) -> Any:
        value = self.value(key)
        names = [member.value for member in allowed]
        self._typed(key, value in names, value, "one of " + ", ".join(names))
        return allowed(value)


def _shown(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def history_from_json(data: bytes | str) -> History:
    """Rebuild a :class:`History` from :func:`history_to_json`'s output.

    Raises:
        ValueError: the data is not such a history: not JSON, another format, or a field
            missing or of the wrong type (the message names it, as ``operations[2].seq``).
    """
    doc = _Fields(orjson.loads(data), "")
    if doc.doc.get("format") != FORMAT:
        raise ValueError(f"unsupported history format {doc.doc.get('format')!r}; expected "
                         f"{FORMAT}")
    wid = doc.text("workflow_id")
    status = doc.choice("status", InstanceStatus)
    result, error = doc.value("result"), doc.value("error")
    inst = InstanceRecord(
        wid, doc.text("workflow"), _request(doc.value("input"), doc.text("input_digest")),
        doc.text("input_digest"), status,
        # The result is canonical (the replay check compares it as bytes).
        None if result is None and status is not InstanceStatus.COMPLETED else _bytes(result),
        None if error is None else _as_written(error),
        doc.time("created_at"), doc.time("updated_at"), doc.integer("activations"))
    operations = doc.value("operations")
    if not isinstance(operations, list):
        raise ValueError(f"operations: expected an array, found {_json_type(operations)}")
    ops = []
    for i, value in enumerate(operations):
        op = _Fields(value, f"operations[{i}]")
        state = op.choice("state", OperationState)
        digest = op.text("request_digest")
        ops.append(OperationRecord(
            wid, op.text("id"), op.integer("seq"), op.text("kind"), op.text("name"),
            _request(op.value("request"), digest), digest, op.text("site"), state,
            op.flag("sent"),
            None if state is OperationState.PENDING else _as_written(op.value("result")),
            op.integer("created_in"), op.integer("resolved_in", optional=True),
            op.time("created_at"), op.time("resolved_at", optional=True)))
    return History(inst, ops)


# -- how two requests differ ---------------------------------------------------------------------
_MAX_CHANGES = 10
_EXCERPT = 24


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _field_changes(path: str, a: object, b: object, changes: list[str]) -> None:
    """Field by field differences; a value of another JSON type differs even where Python
    says equal (``1`` and ``1.0``, ``1`` and ``true``)."""
    where = path or "the request"
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                changes.append(f"{sub}: added {b[key]!r}")
            elif key not in b:
                changes.append(f"{sub}: removed (was {a[key]!r})")
            else:
                _field_changes(sub, a[key], b[key], changes)
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _field_changes(f"{path}[{i}]", x, y, changes)
        if len(a) != len(b):
            changes.append(f"{where}: recorded {len(a)} items, now {len(b)}")
    elif _kind(a) != _kind(b):
        changes.append(f"{where}: recorded {a!r} ({_kind(a)}), now {b!r} ({_kind(b)})")
    elif a != b:
        changes.append(f"{where}: recorded {a!r}, now {b!r}")


def _order_changes(path: str, a: object, b: object, changes: list[str]) -> None:
    """Objects whose keys are the same but in another order (``a`` and ``b`` are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            changes.append(f"the keys of {path or 'the request'} are in another order: "
                           f"recorded {', '.join(map(str, a))}; now {', '.join(map(str, b))}")
        for key in a:
            _order_changes(f"{path}.{key}" if path else str(key), a[key], b[key], changes)
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _order_changes(f"{path}[{i}]", x, y, changes)


def _first_byte_difference(recorded: bytes, new: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(recorded, new, strict=False)) if x != y),
              min(len(recorded), len(new)))
    start = max(0, at - _EXCERPT)

    def excerpt(data: bytes) -> str:
        text = data[start:at + _EXCERPT].decode(errors="replace")
        return ("..." if start else "") + text + ("..." if at + _EXCERPT < len(data) else "")

    return (f"the bytes first differ at offset {at} (recorded {len(recorded)} bytes, now "
            f"{len(new)}): recorded {excerpt(recorded)!r}, now {excerpt(new)!r}")


def _summary(changes: list[str]) -> str:
    more = len(changes) - _MAX_CHANGES
    return "; ".join(changes[:_MAX_CHANGES]) + (f"; and {more} more" if more > 0 else "")


def request_difference(recorded: bytes, new: bytes) -> str:
    """What differs between a recorded request and the one the code builds now, for error
    messages; never empty.

    Field by field differences when the decoded values differ (a value of another JSON type
    counts, ``1`` against ``1.0``). When the fields are the same and only the bytes differ, it
    says how: keys in another order (which object, both orders), or formatting (whitespace,
    escapes, number spelling), with the first differing byte offset and both excerpts.
    """
    if recorded == new:
        return f"the bytes are identical ({len(new)} bytes)"
    try:
        old_v = orjson.loads(recorded)
    except orjson.JSONDecodeError as exc:
        return f"the recorded request is not valid JSON ({exc}); " \
               f"{_first_byte_difference(recorded, new)}"
    try:
        new_v = orjson.loads(new)
    except orjson.JSONDecodeError as exc:
        return f"the new request is not valid JSON ({exc}); " \
               f"{_first_byte_difference(recorded, new)}"
    changes: list[str] = []
    _field_changes("", old_v, new_v, changes)
    if changes:
        return _summary(changes)
    _order_changes("", old_v, new_v, changes)
    if changes:
        return (f"the same fields, encoded differently: {_summary(changes)} (recorded "
                f"requests are compared as bytes; {_first_byte_difference(recorded, new)})")
    return (f"the same fields in the same order, formatted differently (whitespace, escapes "
            f"or number spelling): {_first_byte_difference(recorded, new)}")
