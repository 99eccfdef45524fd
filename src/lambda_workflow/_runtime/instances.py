"""What every client does with instances, whatever the backend: start one (idempotently)
and read its typed result."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import orjson
import pydantic
import pydantic_core

from .. import _core
from ..backends.protocols import StateStore, Transport
from ..errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
    WorkflowNotFinishedError,
)
from ..models import InstanceRecord, InstanceStatus, describe_validation_error
from ..service import type_name
from ..workflow import Workflow
from .engine import start_message_body

__all__ = ["instance_result", "start_instance"]

ResT = TypeVar("ResT")


def start_instance(store: StateStore, transport: Transport, workflow: Workflow[Any, Any],
                   request: object, workflow_id: str | None, now: float, *,
                   payload_limit: int | None = None, payload_hint: str = "") -> str:
    """Validate the input, create the instance (or find the same one) and send its start
    message. Returns the workflow id.

    Raises:
        InvalidRequestError: ``request`` is not a valid input of the workflow.
        PayloadTooLargeError: the encoded input exceeds ``payload_limit``.
        WorkflowAlreadyStartedError: the id is taken by another workflow or input.
    """
    try:
        payload = _core.encode_value(
            workflow.request_adapter, workflow.request_adapter.validate_python(request))
    except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as exc:
        raise InvalidRequestError(
            f"the input of workflow {workflow.name!r} is not a valid "
            f"{type_name(workflow.request_type)}: {describe_validation_error(exc)}") from None
    workflow_id = workflow_id or f"{workflow.name}-{uuid.uuid4().hex[:12]}"
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
