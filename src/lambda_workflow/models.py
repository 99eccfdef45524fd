"""Wire messages (pydantic, the boundary any language can speak) and history records.

The JSON shapes here are the protocol documented in ``docs/protocol.md``. History records are
plain slotted dataclasses: they are built by the thousand when an activation loads a long
history, and their payloads stay as the JSON bytes that were recorded.
"""

from __future__ import annotations

import enum
import json
import re
import string
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from .errors import INTEGER_LIMIT, InvalidMessageError, InvalidWorkflowIdError

__all__ = [
    "PROTOCOL_VERSION",
    "CallRequestMessage",
    "CallResultMessage",
    "CallbackCompletedMessage",
    "CancelMessage",
    "ErrorInfo",
    "InstanceRecord",
    "InstanceStatus",
    "OperationRecord",
    "OperationState",
    "Outcome",
    "ResumeMessage",
    "StartMessage",
    "TimerFiredMessage",
    "WorkflowMessage",
    "check_workflow_id",
    "describe_validation_error",
    "parse_call_request",
    "parse_workflow_message",
]

PROTOCOL_VERSION = 1

# The workflow id rule, the same on every runtime: what SQS FIFO accepts as a MessageGroupId
# (the instance's message group), so an id the embedded runtime takes also works on AWS.
MAX_WORKFLOW_ID = 128
_ID_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)
# Generated child ids are ``<parent id>~<operation id>``: ids that users choose (starts, the
# client, ``ctx.child(..., workflow_id=...)``) may not contain it, so they never collide.
CHILD_ID_MARK = "~"
# Payload keys in S3 are ``<prefix>/<workflow id>/...``; services' own payloads live under
# these (their roles are limited to them), so no workflow id may start with one.
RESERVED_ID_PREFIXES = ("requests/", "replies/")


def workflow_id_problem(workflow_id: object) -> str | None:
    """What is wrong with a workflow id under the id rule, or ``None``."""
    if not isinstance(workflow_id, str):
        return f"a workflow id must be a string, got {type(workflow_id).__name__}"
    if not 1 <= len(workflow_id) <= MAX_WORKFLOW_ID:
        return (f"a workflow id must be 1 to {MAX_WORKFLOW_ID} characters, got "
                f"{len(workflow_id)}")
    bad = next((c for c in workflow_id if c not in _ID_CHARS), None)
    if bad is not None:
        return (f"a workflow id may hold only ASCII letters, digits and punctuation (what SQS "
                f"FIFO accepts as a message group id); {workflow_id[:40]!r} has {bad!r} at "
                f"position {workflow_id.index(bad)}")
    return None


def check_workflow_id(workflow_id: object, *, user: bool = True) -> str:
    """Return ``workflow_id`` if it follows the id rule (``user``: also without the child-id
    mark ``~``), else raise :class:`InvalidWorkflowIdError` naming what is wrong."""
    problem = workflow_id_problem(workflow_id)
    if problem is None:
        assert isinstance(workflow_id, str)
        if user and CHILD_ID_MARK in workflow_id:
            problem = (f"a workflow id may not contain {CHILD_ID_MARK!r}: it marks the ids of "
                       f"child workflows; got {workflow_id!r}")
        elif workflow_id.startswith(RESERVED_ID_PREFIXES):
            problem = (f"a workflow id may not start with {' or '.join(RESERVED_ID_PREFIXES)} "
                       f"(the S3 prefixes of services' payloads); got {workflow_id!r}")
        else:
            return workflow_id
    raise InvalidWorkflowIdError(problem)


def _valid_id(value: str) -> str:
    problem = workflow_id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


WorkflowId = Annotated[str, pydantic.AfterValidator(_valid_id)]
# A W3C Trace Context ``traceparent`` (version 00): the span a message's work continues.
Traceparent = Annotated[str, Field(pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    workflow_id: WorkflowId


class ErrorInfo(BaseModel):
    """An error as it travels and as it is recorded: its type name, message and details."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, Field(min_length=1)]
    message: str
    details: JsonValue = None


def _check_outcome(ok: bool, error: ErrorInfo | None, what: str) -> None:
    # The engine records the outcome of ok=false from ``error``: one must come with the other.
    if ok and error is not None:
        raise ValueError(f"{what} with ok=true must not carry an error")
    if not ok and error is None:
        raise ValueError(f"{what} with ok=false must carry an error {{type, message}}")


class ParentRef(BaseModel):
    """The parent of a child workflow: where its result goes (as a ``call_result``).
    ``workflow`` is the parent's workflow name, which routes the reply to the queue of the
    function that runs the parent (absent in messages of earlier versions: the reply then
    goes to the child's own queue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: WorkflowId
    call_id: Annotated[str, Field(min_length=1)]
    workflow: Annotated[str, Field(min_length=1)] | None = None


class StartMessage(_Message):
    """Starts (or, for an existing id, wakes) a workflow instance."""

    kind: Literal["start"] = "start"
    workflow: Annotated[str, Field(min_length=1)]
    input: JsonValue = None
    parent: ParentRef | None = None
    # The starter's span (tracing, docs/observability.md); absent in earlier messages.
    traceparent: Traceparent | None = None


class CallResultMessage(_Message):
    """A service's reply to a call: ``ok`` with a ``value``, or not ``ok`` with an ``error``."""

    kind: Literal["call_result"] = "call_result"
    call_id: Annotated[str, Field(min_length=1)]
    ok: bool
    value: JsonValue = None
    error: ErrorInfo | None = None

    @pydantic.model_validator(mode="after")
    def _error_iff_not_ok(self) -> CallResultMessage:
        _check_outcome(self.ok, self.error, "a reply")
        return self


class TimerFiredMessage(_Message):
    """A durable timer of the workflow has fired."""

    kind: Literal["timer_fired"] = "timer_fired"
    timer_id: Annotated[str, Field(min_length=1)]


class CallbackCompletedMessage(_Message):
    """An external system completed (or failed) a callback, identified by its signed token."""

    kind: Literal["callback_completed"] = "callback_completed"
    token: Annotated[str, Field(min_length=1)]
    ok: bool
    value: JsonValue = None
    error: ErrorInfo | None = None

    @pydantic.model_validator(mode="after")
    def _error_iff_not_ok(self) -> CallbackCompletedMessage:
        _check_outcome(self.ok, self.error, "a completion")
        return self


class CancelMessage(_Message):
    """Asks for the workflow instance to be cancelled."""

    kind: Literal["cancel"] = "cancel"
    reason: str = ""


class CallbackHeartbeatMessage(_Message):
    """An external system says it is still working on a callback (resets its heartbeat
    timeout)."""

    kind: Literal["callback_heartbeat"] = "callback_heartbeat"
    token: Annotated[str, Field(min_length=1)]


class ResumeMessage(_Message):
    """Re-activates an instance after a repair (``resume`` or ``reset``) reopened it;
    ``repair`` is the repair's number in the instance's history (its deduplication key)."""

    kind: Literal["resume"] = "resume"
    repair: Annotated[int, Field(ge=1)]


WorkflowMessage = Annotated[
    StartMessage | CallResultMessage | TimerFiredMessage | CallbackCompletedMessage
    | CallbackHeartbeatMessage | CancelMessage | ResumeMessage,
    Field(discriminator="kind"),
]
_WORKFLOW_MESSAGE: pydantic.TypeAdapter[WorkflowMessage] = pydantic.TypeAdapter(WorkflowMessage)
MESSAGE_KINDS = ("start", "call_result", "timer_fired", "callback_completed",
                 "callback_heartbeat", "cancel", "resume")


class CallRequestMessage(_Message):
    """A request from a workflow to a service. The service replies with a
    :class:`CallResultMessage` carrying the same ``workflow_id`` and ``call_id``."""

    kind: Literal["call"] = "call"
    call_id: Annotated[str, Field(min_length=1)]
    service: Annotated[str, Field(min_length=1)]
    request: JsonValue = None
    reply_to: str | None = None
    # The call's span, for the service's span to join (tracing); absent in earlier messages.
    traceparent: Traceparent | None = None


# 19 digits in a row: the only way a JSON text can hold an integer beyond 64 bits (which
# orjson would silently turn into a rounded float).
_LONG_DIGITS = re.compile(rb"\d{19}")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _checked_int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise InvalidMessageError(f"the integer {text[:40]} is out of range: {INTEGER_LIMIT}")
    return value


def _load_object(body: bytes | str, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        preview = body[:80] if isinstance(body, str) else body[:80].decode("utf-8", "replace")
        raise InvalidMessageError(f"{what} is not valid JSON ({exc}): {preview!r}") from None
    raw = body.encode() if isinstance(body, str) else body
    if _LONG_DIGITS.search(raw):
        # Rare (long digit runs, mostly inside strings): parse exactly to find integers that
        # orjson rounded to floats, and refuse them instead of recording a wrong number.
        try:
            json.loads(raw, parse_int=_checked_int)
        except InvalidMessageError as exc:
            raise InvalidMessageError(f"{what}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessageError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def describe_validation_error(exc: Exception, *, tag: str | None = None) -> str:
    """pydantic's errors on one line: ``field.path: message; ...`` (no URLs, no input dumps).

    ``tag`` drops a discriminated union's tag from the start of each path. Other exceptions
    (a serialization error) are described by their message.
    """
    if not isinstance(exc, pydantic.ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        if tag is not None and loc and loc[0] == tag:
            loc = loc[1:]
        parts.append(f"{'.'.join(str(p) for p in loc) or 'value'}: {err['msg']}")
    return "; ".join(parts)


def parse_workflow_message(body: bytes | str) -> WorkflowMessage:
    """Parse one message from a workflow queue.

    Raises:
        InvalidMessageError: the body is not JSON, names an unknown ``kind``, or a field is
            missing or of the wrong type. The message says which.
    """
    data = _load_object(body, "workflow message")
    kind = data.get("kind")
    if kind not in MESSAGE_KINDS:
        raise InvalidMessageError(
            f"unknown message kind {kind!r}; expected one of {', '.join(MESSAGE_KINDS)}"
        )
    try:
        return _WORKFLOW_MESSAGE.validate_python(data)
    except pydantic.ValidationError as exc:
        raise InvalidMessageError(
            f"malformed {kind} message: {describe_validation_error(exc, tag=kind)}") from None


def parse_call_request(body: bytes | str) -> CallRequestMessage:
    """Parse a request message as a service receives it."""
    data = _load_object(body, "call request")
    if data.get("kind") != "call":
        raise InvalidMessageError(f"expected a message of kind 'call', got {data.get('kind')!r}")
    try:
        return CallRequestMessage.model_validate(data)
    except pydantic.ValidationError as exc:
        raise InvalidMessageError(
            f"malformed call request: {describe_validation_error(exc)}") from None


class InstanceStatus(enum.StrEnum):
    """The lifecycle of a workflow instance."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class OperationState(enum.StrEnum):
    """The state of one recorded operation."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(slots=True)
class InstanceRecord:
    """One workflow instance as the state store keeps it."""

    workflow_id: str
    workflow_name: str
    input: bytes
    input_digest: str
    status: InstanceStatus = InstanceStatus.RUNNING
    result: bytes | None = None
    error: bytes | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    activations: int = 0


@dataclass(slots=True)
class OperationRecord:
    """One durable operation: what was asked (kind, name, request) and, once known, its outcome.

    ``result`` holds the JSON value for a completed operation and the JSON error
    (``{"type", "message", "details"}``) for a failed one.
    """

    workflow_id: str
    op_id: str
    seq: int
    kind: str
    name: str
    request: bytes
    request_digest: str
    site: str = ""
    state: OperationState = OperationState.PENDING
    sent: bool = False
    result: bytes | None = None
    created_in: int = 0
    resolved_in: int | None = None
    created_at: float = 0.0
    resolved_at: float | None = None


class Outcome(NamedTuple):
    """An operation's outcome to record: ``result`` is the JSON value (completed) or the JSON
    error (failed)."""

    op_id: str
    state: OperationState
    result: bytes


@dataclass(slots=True)
class History:
    """An instance with its operations in the order the workflow created them."""

    instance: InstanceRecord
    operations: list[OperationRecord] = field(default_factory=list)
