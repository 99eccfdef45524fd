"""What every client does with instances, whatever the backend: start one (idempotently)
and read its typed result."""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

import orjson
import pydantic
import pydantic_core

from .. import _core
from ..backends.protocols import Clock, StateStore, Transport
from ..callbacks import CallbackTokens
from ..errors import (
    InvalidCallbackTokenError,
    InvalidRequestError,
    PayloadTooLargeError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
    WorkflowNotFinishedError,
)
from ..models import (
    InstanceRecord,
    InstanceStatus,
    OperationState,
    check_workflow_id,
    describe_validation_error,
)
from ..service import type_name
from ..workflow import Workflow
from .engine import child_workflow_id, start_message_body
from .heartbeats import callback_of, record_callback_heartbeat
from .repair import RepairResult, Repairs

__all__ = ["CallbackCompletion", "RepairCommands", "callback_message", "instance_result",
           "start_instance"]

ResT = TypeVar("ResT")


def start_instance(store: StateStore, transport: Transport, workflow: Workflow[Any, Any],
                   request: object, workflow_id: str | None, now: float, *,
                   payload_limit: int | None = None, payload_hint: str = "") -> str:
    """Validate the input, create the instance (or find the same one) and send its start
    message. Returns the workflow id.

    Raises:
        InvalidWorkflowIdError: ``workflow_id`` breaks the id rule (``docs/protocol.md``).
        InvalidRequestError: ``request`` is not a valid input of the workflow.
        PayloadTooLargeError: the encoded input exceeds ``payload_limit``.
        WorkflowAlreadyStartedError: the id is taken by another workflow or input.
    """
    # The id first: nothing is written for an id a transport would refuse.
    workflow_id = check_workflow_id(
        workflow_id if workflow_id is not None else f"{workflow.name}-{uuid.uuid4().hex[:12]}")
    try:
        payload = _core.encode_value(
            workflow.request_adapter, workflow.request_adapter.validate_python(request))
    except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as exc:
        raise InvalidRequestError(
            f"the input of workflow {workflow.name!r} is not a valid "
            f"{type_name(workflow.request_type)}: {describe_validation_error(exc)}") from None
    if payload_limit is not None and len(payload) > payload_limit:
        raise PayloadTooLargeError(f"the input of workflow {workflow_id!r} ({workflow.name})",
                                   len(payload), payload_limit, payload_hint)
    digest = _core.digest(payload)
    inst, created = store.create_instance(InstanceRecord(
        workflow_id, workflow.name, payload, digest, created_at=now, updated_at=now))
    if not created and (inst.workflow_name != workflow.name or inst.input_digest != digest):
        what = ("workflow " + repr(inst.workflow_name)
                if inst.workflow_name != workflow.name else "a different input")
        raise WorkflowAlreadyStartedError(
            f"workflow id {workflow_id!r} is already used by an instance with {what}; "
            f"starting it again needs the same workflow and input, or a new id")
    transport.send_to_workflow(workflow_id, _core.dedup_id(workflow_id, "start", ""),
                               start_message_body(workflow_id, workflow.name, payload))
    return workflow_id


def instance_result(inst: InstanceRecord, workflow: Workflow[Any, ResT]) -> ResT:
    """The typed result of a completed instance.

    Raises:
        WorkflowFailedError: it failed or was cancelled (carries the error).
        WorkflowNotFinishedError: it is still running.
    """
    if inst.status is InstanceStatus.COMPLETED:
        value: ResT = _core.decode_value(workflow.result_adapter, inst.result or b"null")
        return value
    if inst.status is InstanceStatus.RUNNING:
        raise WorkflowNotFinishedError(f"workflow {inst.workflow_id!r} is still running")
    err = orjson.loads(inst.error or b"{}")
    raise WorkflowFailedError(inst.workflow_id, err.get("type", "Error"), err.get("message", ""),
                              err.get("details"))


def callback_message(store: StateStore, tokens: CallbackTokens | None, token: str, *,
                     value: object = None, error: dict[str, Any] | None = None
                     ) -> tuple[str, str, bytes]:
    """Check a callback token against the state and build the message completing the
    callback (or failing it, with ``error``). Returns ``(workflow_id, dedup_id, body)``.
    (Heartbeats are recorded on the callback: :func:`record_callback_heartbeat`.)

    Raises:
        InvalidCallbackTokenError: forged or altered token, unknown instance or callback, a
            callback that already completed or an instance that ended. Nothing is sent.
        InvalidRequestError: ``value`` is not JSON-serializable.
    """
    workflow_id, history, op = callback_of(store, tokens, token)
    if op.state is not OperationState.PENDING:
        raise InvalidCallbackTokenError(
            f"callback token rejected: callback {op.name!r} of {workflow_id!r} has already "
            "completed (a token completes its callback once)")
    if history.instance.status is not InstanceStatus.RUNNING:
        raise InvalidCallbackTokenError(
            f"callback token rejected: instance {workflow_id!r} has ended "
            f"({history.instance.status.value})")
    message: dict[str, Any] = {"v": 1, "kind": "callback_completed",
                               "workflow_id": workflow_id, "token": token,
                               "ok": error is None}
    if error is None:
        message["value"] = value
    else:
        message["error"] = error
    try:
        body = orjson.dumps(message, default=pydantic_core.to_jsonable_python)
    except (TypeError, pydantic_core.PydanticSerializationError) as exc:
        raise InvalidRequestError(f"the value completing callback {op.name!r} is not "
                                  f"JSON-serializable: {exc}") from None
    # Deduplicated per token and content: the same completion sent twice is one message, but
    # a corrected one after a completion that did not validate (dead-lettered, changing
    # nothing) is another; the workflow applies the first that completes the callback.
    return workflow_id, _core.dedup_id(workflow_id, "callback_completed",
                                       f"{token}\0{_core.digest(body)}"), body


class CallbackCompletion:
    """``complete_callback``, ``fail_callback`` and ``heartbeat_callback`` for a client of a
    runtime (the local runtime, the AWS client): each checks the token against the state with
    :func:`callback_message` and sends what it builds to the workflow."""

    def _callback_parts(self) -> tuple[StateStore, CallbackTokens | None, Transport]:
        """The store the token is checked against, the key, and the way to the workflow."""
        raise NotImplementedError

    def complete_callback(self, token: str, value: object = None) -> None:
        """Complete the callback ``token`` names with ``value`` (validated as the callback's
        result type when the workflow receives it).

        Raises:
            InvalidCallbackTokenError: a forged or altered token, one signed with another
                key, or one whose callback already completed or whose instance ended; nothing
                is sent.
            WorkflowError: no callback key is configured.
        """
        store, tokens, _ = self._callback_parts()
        self._send_callback(callback_message(store, tokens, token, value=value))

    def fail_callback(self, token: str, error_type: str, message: str,
                      details: object = None) -> None:
        """Fail the callback: the workflow's ``await`` raises ``CallbackFailedError`` with
        this type, message and details. Raises like :meth:`complete_callback`."""
        if not isinstance(error_type, str) or not error_type:
            raise ValueError(f"error_type must be a non-empty string, got {error_type!r}")
        store, tokens, _ = self._callback_parts()
        self._send_callback(callback_message(
            store, tokens, token,
            error={"type": error_type, "message": str(message), "details": details}))

    def heartbeat_callback(self, token: str) -> None:
        """Report progress on the callback: its heartbeat timeout starts again. The heartbeat
        is one conditional write of the callback's record (its last heartbeat time): it
        sends no message and starts no activation (``docs/primitives.md``). Raises like
        :meth:`complete_callback`, and for a callback that timed out."""
        store, tokens, _ = self._callback_parts()
        self._send_callback(record_callback_heartbeat(store, tokens, token,
                                                      self._callback_now()))

    def _callback_now(self) -> float:
        """The time a heartbeat is recorded at (the runtime's clock)."""
        return time.time()

    def _send_callback(self, message: tuple[str, str, bytes] | None) -> None:
        if message is not None:
            workflow_id, dedup, body = message
            self._callback_parts()[2].send_to_workflow(workflow_id, dedup, body)


class RepairCommands:
    """``resume`` and ``reset`` for a client of a runtime (the local runtime, the AWS
    client), over :class:`~lambda_workflow._runtime.repair.Repairs`."""

    def _repair_parts(self) -> tuple[StateStore, Transport, Clock]:
        """The store repairs are written in, the way to the workflow, and the clock."""
        raise NotImplementedError

    def _repairs(self) -> Repairs:
        store, transport, clock = self._repair_parts()
        return Repairs(store, transport.send_to_workflow, clock.now, child_workflow_id)

    def resume(self, workflow_id: str, *, request_id: str | None = None) -> RepairResult:
        """Re-activate an instance that failed by non-determinism or a poison message (an
        unknown workflow), once the code that runs it is fixed or rolled back: its history
        is kept, it becomes running and a ``resume`` message on its queue wakes it.
        Repeating the command after a crash finishes it.

        Raises:
            WorkflowNotFoundError: no such instance.
            RepairError: the instance did not fail that way; the message names its state.
        """
        return self._repairs().resume(workflow_id, request_id=request_id)

    def reset(self, workflow_id: str, to: str, *,
              request_id: str | None = None) -> RepairResult:
        """Drop the records after operation ``to`` (``"0"``: all of them) and run the
        instance on from there, whatever its state (a completed or failed instance is
        reopened). Late replies, timers and callbacks of the dropped operations are ignored;
        running children they started are cancelled. ``request_id`` makes a retried command
        apply once.

        Raises:
            WorkflowNotFoundError: no such instance.
            RepairError: ``to`` is not one of its operations.
        """
        return self._repairs().reset(workflow_id, to, request_id=request_id)
