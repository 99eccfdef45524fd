"""The replay core, pure Python: the reference implementation and the single source of types.

Everything an activation does per operation lives here: operation ids, request encoding and
digests, and matching a new operation against the recorded history. A compiled twin with the
same names may replace this module (see ``lambda_workflow._core``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import orjson
from pydantic import TypeAdapter

__all__ = [
    "RecordedOperation",
    "ReplayIndex",
    "ReplayMismatch",
    "decode_value",
    "dedup_id",
    "digest",
    "encode_value",
    "operation_id",
]

_SORT = orjson.OPT_SORT_KEYS


class _Adapter(Protocol):
    def dump_python(self, value: Any, /, *, mode: str = ...) -> Any: ...

    def validate_json(self, data: bytes, /) -> Any: ...


class RecordedOperation(Protocol):
    """What the core reads from a recorded operation."""

    @property
    def op_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def request_digest(self) -> str: ...


def encode_value(adapter: TypeAdapter[Any], value: object) -> bytes:
    """Serialize ``value`` with its pydantic adapter to canonical JSON bytes (sorted keys).

    Canonical bytes make the digest independent of dict insertion order.
    """
    return orjson.dumps(adapter.dump_python(value, mode="json"), option=_SORT)


def decode_value(adapter: TypeAdapter[Any], payload: bytes) -> Any:
    """Validate recorded JSON bytes into the adapter's type."""
    return adapter.validate_json(payload)


def digest(payload: bytes) -> str:
    """A short, stable digest of an encoded request (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def operation_id(scope: str, seq: int) -> str:
    """The id of the ``seq``-th (from 0) operation created in ``scope``.

    Ids follow creation order, which the workflow's code fixes; they depend on nothing about
    the machine, the install path or the Python version, and not on comments, blank lines or
    code outside the workflow. The root scope is ``""``, giving ids ``"1"``, ``"2"``, ...
    """
    return f"{scope}.{seq + 1}" if scope else str(seq + 1)


def dedup_id(workflow_id: str, kind: str, key: str) -> str:
    """A deterministic FIFO deduplication id (64 hex chars, within SQS's 128-char limit)."""
    return hashlib.sha256(f"{kind}\x00{workflow_id}\x00{key}".encode()).hexdigest()


class ReplayMismatch(Exception):
    """The operation created at ``seq`` differs from the recorded one in ``field``."""

    def __init__(self, seq: int, field: str, recorded: RecordedOperation) -> None:
        self.seq = seq
        self.field = field
        self.recorded = recorded
        super().__init__(f"operation #{seq + 1} differs from the history in its {field}")


class ReplayIndex:
    """The recorded operations of one instance, matched in creation order during replay."""

    __slots__ = ("_ops",)

    def __init__(self, operations: Sequence[RecordedOperation]) -> None:
        self._ops = list(operations)

    def __len__(self) -> int:
        return len(self._ops)

    def match(self, seq: int, kind: str, name: str, request_digest: str) -> Any:
        """Return the record of operation ``seq`` if it was recorded, else ``None`` (a new one).

        Raises:
            ReplayMismatch: the record's kind, name or request digest differs.
        """
        if seq >= len(self._ops):
            return None
        rec = self._ops[seq]
        if rec.kind != kind:
            raise ReplayMismatch(seq, "kind", rec)
        if rec.name != name:
            raise ReplayMismatch(seq, "name", rec)
        if rec.request_digest != request_digest:
            raise ReplayMismatch(seq, "request", rec)
        return rec
