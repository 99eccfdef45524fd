"""Picks the replay core: the compiled extension when present, else the pure-Python twin.

``LAMBDA_WORKFLOW_NO_EXTENSIONS=1`` forces the pure twin; ``LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1``
turns a missing or broken extension into an ImportError (for deployments that must not fall
back silently). ``IMPLEMENTATION`` says which one is loaded: ``"c"`` or ``"py"``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = [
    "IMPLEMENTATION",
    "NEW",
    "PENDING",
    "READY",
    "WAIT",
    "CallFuture",
    "ReplayIndex",
    "ReplayMismatch",
    "decode_operations",
    "decode_value",
    "dedup_id",
    "digest",
    "encode_value",
    "mismatch_advice",
    "operation_id",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


_NO = _flag("LAMBDA_WORKFLOW_NO_EXTENSIONS")
_REQUIRE = _flag("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS")
if _NO and _REQUIRE:
    raise ImportError("LAMBDA_WORKFLOW_NO_EXTENSIONS and LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS "
                      "are both set; set only one")

if TYPE_CHECKING:
    from ._py import (
        NEW,
        PENDING,
        READY,
        WAIT,
        CallFuture,
        ReplayIndex,
        ReplayMismatch,
        decode_operations,
        decode_value,
        dedup_id,
        digest,
        encode_value,
        mismatch_advice,
        operation_id,
    )

    IMPLEMENTATION: str
else:
    _impl = None
    if not _NO:
        try:
            from . import _c as _impl
        except ImportError as exc:
            if _REQUIRE:
                raise ImportError(
                    "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 but the compiled replay core "
                    f"(lambda_workflow._core._c) cannot be imported: {exc}. Install a wheel "
                    "built for this platform, or build from source with a C compiler"
                ) from exc
    IMPLEMENTATION = "c" if _impl is not None else "py"
    if _impl is None:
        from . import _py as _impl
    NEW = _impl.NEW
    PENDING = _impl.PENDING
    READY = _impl.READY
    WAIT = _impl.WAIT
    CallFuture = _impl.CallFuture
    ReplayIndex = _impl.ReplayIndex
    ReplayMismatch = _impl.ReplayMismatch
    mismatch_advice = _impl.mismatch_advice
    decode_operations = _impl.decode_operations
    decode_value = _impl.decode_value
    dedup_id = _impl.dedup_id
    digest = _impl.digest
    encode_value = _impl.encode_value
    operation_id = _impl.operation_id
