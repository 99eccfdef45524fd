"""Picks the replay core: the compiled extension when present, else the pure-Python twin.

``LAMBDA_WORKFLOW_NO_EXTENSIONS=1`` forces the pure twin; ``LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1``
turns a missing or broken extension into an ImportError (for deployments that must not fall
back silently).
"""

from __future__ import annotations

import os

from ._py import (
    NEW,
    PENDING,
    READY,
    WAIT,
    ReplayIndex,
    ReplayMismatch,
    decode_value,
    dedup_id,
    digest,
    encode_value,
    operation_id,
)

__all__ = [
    "IMPLEMENTATION",
    "NEW",
    "PENDING",
    "READY",
    "WAIT",
    "ReplayIndex",
    "ReplayMismatch",
    "decode_value",
    "dedup_id",
    "digest",
    "encode_value",
    "operation_id",
]

IMPLEMENTATION = "py"

if os.environ.get("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS") == "1":  # pragma: no cover
    raise ImportError(
        "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 but this build of lambda_workflow has no compiled "
        "replay core (lambda_workflow._core._c); install a wheel with the extension or unset it"
    )
