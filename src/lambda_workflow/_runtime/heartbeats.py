"""Callback heartbeats without activations.

A heartbeat is a conditional write of the callback's last heartbeat time to the state store
(:meth:`~lambda_workflow.backends.protocols.HeartbeatStore.record_heartbeat`), made by the
client: no message, no activation. The callback's heartbeat timer (``heartbeat:<name>``,
request ``{"seconds": s, "callback": "<callback op id>"}``) reads the last heartbeat when it
fires, in the activation its ``timer_fired`` message starts, and records the heartbeat
timeout left after it as the timer's result, ``{"remaining": s}``. The workflow's replay then
arms a timer for the remainder, or raises ``CallbackHeartbeatTimeoutError`` when it is 0: the
decision is recorded, so every replay makes the same one.

Histories recorded before this have a plain heartbeat timer followed by a ``heartbeat``
operation that a ``callback_heartbeat`` message completes; :func:`record_callback_heartbeat`
still sends that message for them (see ``current_heartbeat``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .. import _core
from ..backends.protocols import StateStore
from ..callbacks import CallbackTokens
from ..errors import InvalidCallbackTokenError, WorkflowError
from ..models import History, InstanceStatus, OperationRecord, OperationState

__all__ = ["callback_timed_out", "heartbeat_callback_of", "heartbeat_timer_result",
           "record_callback_heartbeat"]


def _request(op: OperationRecord) -> dict[str, Any]:
    try:
        value = orjson.loads(op.request)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def heartbeat_callback_of(timer: OperationRecord) -> str | None:
    """The callback id a heartbeat timer watches, or ``None`` for any other operation (and
    for a heartbeat timer recorded before heartbeats were recorded on the callback)."""
    if timer.kind != "timer" or not timer.name.startswith("heartbeat:"):
        return None
    callback = _request(timer).get("callback")
    return callback if isinstance(callback, str) else None


def heartbeat_timer_result(callback: OperationRecord | None, last_heartbeat: float | None,
                           now: float) -> bytes:
    """The recorded result of a heartbeat timer firing at ``now``: ``{"remaining": s}``, the
    callback's heartbeat timeout left after its last heartbeat (0 when there was none, or
    the last one is a heartbeat timeout old). A heartbeat recorded after the activation read
    it counts as one that came after the timer fired: too late."""
    remaining = 0.0
    if callback is not None and last_heartbeat is not None:
        timeout = _request(callback).get("heartbeat_timeout")
        if isinstance(timeout, int | float) and timeout > 0:
            remaining = max(0.0, last_heartbeat + float(timeout) - now)
    return orjson.dumps({"remaining": remaining})


def callback_timed_out(callback: OperationRecord, operations: Sequence[OperationRecord]) -> bool:
    """Whether a callback's timeout or heartbeat timeout has fired: its record stays pending,
    but the workflow no longer waits on it (its ``await`` raised). A heartbeat timer that
    fired with time remaining re-armed instead (``{"remaining": s > 0}``)."""
    if callback.kind != "callback":
        return False
    for op in operations:
        if op.kind != "timer" or op.seq <= callback.seq or op.state is not OperationState.COMPLETED:
            continue
        if op.name == f"timeout:{callback.name}":
            return True
        if op.name == f"heartbeat:{callback.name}":
            watched = heartbeat_callback_of(op)
            if watched is None:
                return True  # recorded before heartbeats were recorded on the callback
            if watched != callback.op_id:
                continue
            try:
                left = orjson.loads(op.result or b"null")
            except orjson.JSONDecodeError:
                left = None
            if not isinstance(left, dict) or not left.get("remaining"):
                return True
    return False


def callback_of(store: StateStore, tokens: CallbackTokens | None,
                token: str) -> tuple[str, History, OperationRecord]:
    """The instance id, history and ``callback`` operation a token names, once the token is
    checked: its signature, and that it is the one recorded in the callback's request (not a
    token of an earlier run).

    Raises:
        InvalidCallbackTokenError: a forged or altered token, an unknown instance or callback.
        WorkflowError: no callback key is configured.
    """
    if tokens is None:
        raise WorkflowError("this runtime has no callback key to verify tokens with")
    workflow_id, callback_id = tokens.verify(token)
    history = store.load_history(workflow_id)
    op = next((o for o in history.operations if o.op_id == callback_id), None) if history else None
    if history is None or op is None or op.kind != "callback":
        raise InvalidCallbackTokenError(
            f"callback token rejected: instance {workflow_id!r} has no callback {callback_id!r}")
    tokens.check_recorded(token, op.request, workflow_id)  # not a token of an earlier run
    return workflow_id, history, op


def record_callback_heartbeat(store: StateStore, tokens: CallbackTokens | None, token: str,
                              now: float) -> tuple[str, str, bytes] | None:
    """Check a heartbeat's token against the state and record the heartbeat on the callback
    (one conditional write, no activation). Returns ``None``, or for a callback recorded
    before heartbeats were recorded on the callback, the ``callback_heartbeat`` message to
    send as then: ``(workflow_id, dedup_id, body)``.

    A heartbeat to a callback without a heartbeat timeout is accepted and records nothing.

    Raises:
        InvalidCallbackTokenError: a forged or altered token, an unknown instance or
            callback, a callback that completed or timed out, an instance that ended.
            Nothing is recorded.
        WorkflowError: no callback key is configured, or the store cannot record heartbeats.
    """
    workflow_id, history, op = callback_of(store, tokens, token)
    callback_id = op.op_id
    refusal = _refusal(op, history.instance.status, history.operations, workflow_id)
    if refusal is not None:
        raise InvalidCallbackTokenError(refusal)
    if not _request(op).get("heartbeat_timeout"):
        return None  # no heartbeat timeout: nothing waits for heartbeats
    from .engine import current_heartbeat  # the engine imports this module

    legacy = current_heartbeat(op, history.operations)
    if legacy is not None:
        body = orjson.dumps({"v": 1, "kind": "callback_heartbeat", "workflow_id": workflow_id,
                             "token": token})
        return (workflow_id,
                _core.dedup_id(workflow_id, "callback_heartbeat", f"{callback_id}:{legacy.op_id}"),
                body)
    record = getattr(store, "record_heartbeat", None)
    if record is None:
        raise WorkflowError(f"the state store {type(store).__name__} cannot record callback "
                            "heartbeats (it has no record_heartbeat)")
    reason = record(workflow_id, callback_id, op.request_digest, now)
    if reason is not None:
        raise InvalidCallbackTokenError(_REFUSALS.get(reason, reason).format(
            name=op.name, workflow_id=workflow_id, callback_id=callback_id))
    return None


_REFUSALS = {
    "unknown": "callback token rejected: instance {workflow_id!r} has no callback "
               "{callback_id!r}",
    "completed": "callback token rejected: callback {name!r} of {workflow_id!r} has already "
                 "completed (a token completes its callback once)",
    "ended": "callback token rejected: instance {workflow_id!r} has ended",
}


def _refusal(op: OperationRecord, status: InstanceStatus,
             operations: Sequence[OperationRecord], workflow_id: str) -> str | None:
    if op.state is not OperationState.PENDING:
        return _REFUSALS["completed"].format(name=op.name, workflow_id=workflow_id)
    if status is not InstanceStatus.RUNNING:
        return (f"callback token rejected: instance {workflow_id!r} has ended "
                f"({status.value})")
    if callback_timed_out(op, operations):
        return (f"callback token rejected: callback {op.name!r} of {workflow_id!r} has timed "
                "out (its timeout or heartbeat timeout passed)")
    return None
