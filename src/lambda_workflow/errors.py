"""The package's exceptions. Every one derives from :class:`WorkflowError`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CallTimeoutError",
    "CallbackError",
    "CallbackFailedError",
    "CallbackHeartbeatTimeoutError",
    "CallbackTimeoutError",
    "ChildContextError",
    "ChildWorkflowError",
    "ConditionNotMetError",
    "InvalidCallbackTokenError",
    "InvalidMessageError",
    "InvalidRequestError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "ServiceError",
    "UnknownCallError",
    "UnknownWorkflowError",
    "WorkflowAlreadyStartedError",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowNotFinishedError",
    "WorkflowNotFoundError",
]


# Integers travel as JSON numbers, which most parsers (orjson, JavaScript, DynamoDB's
# tooling) hold in 64 bits: beyond that they fail or silently round. The protocol's limit.
INTEGER_LIMIT = ("integers in payloads must lie between -2**63 and 2**64-1 (the protocol's "
                 "64-bit limit, docs/protocol.md); send larger numbers as strings")


class WorkflowError(Exception):
    """Base class of every exception raised by lambda-workflow."""


class ServiceError(WorkflowError):
    """A service replied with an error.

    Raised inside the workflow at the ``await`` of the call. The workflow may catch it; on
    replay the same error (same type name, message and details) is raised again at the same
    point, so the workflow takes the same branch.

    Attributes:
        error_type: The name of the error the service reported (for a Python service, the
            class name of the exception it raised).
        message: The service's human-readable message.
        details: Optional JSON details the service attached.
        service: The name of the service that failed, when known.
        call_id: The id of the call that failed, when known.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        details: Any = None,
        *,
        service: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.error_type = error_type
        self.message = message
        self.details = details
        self.service = service
        self.call_id = call_id
        where = f" (service {service!r}, call {call_id})" if service else ""
        super().__init__(f"{error_type}: {message}{where}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_service_error, (self.error_type, self.message, self.details,
                                         self.service, self.call_id))


def _rebuild_service_error(
    error_type: str, message: str, details: Any, service: str | None, call_id: str | None
) -> ServiceError:
    return ServiceError(error_type, message, details, service=service, call_id=call_id)


class NonDeterminismError(WorkflowError):
    """The workflow's code no longer produces the operations its history recorded.

    The message names the workflow, the position of the operation, the file and line of the
    new code, and what the history recorded there (kind, name, request), so the change can be
    found without a debugger.
    """


class CallTimeoutError(WorkflowError):
    """A call did not receive its reply within its timeout. Its reply, if it comes later, is
    recorded and ignored."""


class CallbackError(WorkflowError):
    """A callback did not complete: it failed, or one of its timeouts passed.

    Attributes:
        callback: The callback's name.
        error_type: For a failed callback, the type the external system reported.
        message: The message.
        details: Optional JSON details.
    """

    def __init__(self, callback: str, error_type: str, message: str,
                 details: Any = None) -> None:
        self.callback = callback
        self.error_type = error_type
        self.message = message
        self.details = details
        super().__init__(f"callback {callback!r}: {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.callback, self.error_type, self.message, self.details))


class CallbackFailedError(CallbackError):
    """The external system failed the callback (``fail_callback``)."""


class CallbackTimeoutError(CallbackError):
    """The callback was not completed within its ``timeout``."""


class CallbackHeartbeatTimeoutError(CallbackError):
    """No heartbeat (or completion) arrived within the callback's ``heartbeat_timeout``."""


class ChildWorkflowError(WorkflowError):
    """A child workflow failed or was cancelled (raised at ``await ctx.child(...)``).

    Attributes:
        workflow_id: The child's id.
        error_type: The type of the error that ended the child (e.g. ``ValueError``,
            ``ServiceError``, ``Cancelled``).
        message: Its message.
        details: Optional JSON details.
    """

    def __init__(self, workflow_id: str, error_type: str, message: str,
                 details: Any = None) -> None:
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message
        self.details = details
        super().__init__(f"child workflow {workflow_id!r} failed with {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChildWorkflowError, (self.workflow_id, self.error_type, self.message,
                                     self.details))


class ChildContextError(WorkflowError):
    """A child context's body raised (raised at ``await ctx.run_in_child_context(...)``, on
    the first execution and, from the recorded failure, on every replay).

    Attributes:
        name: The child context's name.
        error_type: The class name of the exception the body raised.
        message: Its message.
    """

    def __init__(self, name: str, error_type: str, message: str) -> None:
        self.name = name
        self.error_type = error_type
        self.message = message
        super().__init__(f"child context {name!r} failed with {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChildContextError, (self.name, self.error_type, self.message))


class ConditionNotMetError(WorkflowError):
    """``ctx.wait_for_condition`` ran out of attempts."""


class InvalidCallbackTokenError(WorkflowError, ValueError):
    """A callback token is forged, altered, for another deployment, or its callback has
    already completed. Nothing was changed."""


class PayloadTooLargeError(WorkflowError):
    """A request, result or message exceeds the byte limit of the store or the queue.

    Raised, never retried: the same payload would be too large on every attempt. On AWS,
    payloads above the threshold go to S3 when a bucket is configured; this error means none
    is (or the payload exceeds even what S3 offloading allows).

    Attributes:
        what: What was too large, naming the workflow and the call (for example
            ``"the request of call 3 (service 'fraud') of workflow 'tx-1'"``).
        size: Its size in bytes.
        limit: The limit it exceeded, in bytes.
    """

    def __init__(self, what: str, size: int, limit: int, hint: str = "") -> None:
        self.what = what
        self.size = size
        self.limit = limit
        self.hint = hint
        super().__init__(f"{what} is {size:,} bytes, over the limit of {limit:,} bytes"
                         + (f"; {hint}" if hint else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (PayloadTooLargeError, (self.what, self.size, self.limit, self.hint))


class InvalidRequestError(WorkflowError, ValueError):
    """A request does not validate against the type the workflow or service declares."""


class InvalidWorkflowIdError(WorkflowError, ValueError):
    """A workflow id breaks the id rule (``docs/protocol.md``): 1 to 128 ASCII letters,
    digits and punctuation, and no ``~`` in ids that users choose (it marks child ids)."""


class RepairError(WorkflowError):
    """A repair command (``resume``, ``reset``) cannot be applied to the instance as it is
    (the message says why)."""


class StateFileInUseError(WorkflowError):
    """Another runtime (this process or another) already runs workflows on this state file."""


class InvalidMessageError(WorkflowError, ValueError):
    """A queue message is not a well-formed lambda-workflow message."""


class UnknownWorkflowError(WorkflowError, LookupError):
    """A workflow name is not registered with the runtime."""


class UnknownCallError(WorkflowError, LookupError):
    """A reply names a call id that the workflow never made."""


class WorkflowNotFoundError(WorkflowError, LookupError):
    """No workflow instance exists with the given id."""


class WorkflowAlreadyStartedError(WorkflowError):
    """A workflow id was started again with a different workflow or a different input."""


class WorkflowNotFinishedError(WorkflowError):
    """The result of a workflow that is still running was asked for."""


class WorkflowFailedError(WorkflowError):
    """The workflow ended with an error; raised by ``result()``.

    Attributes:
        workflow_id: The instance that failed.
        error_type: The type name of the error that ended it.
        message: Its message.
        details: Optional JSON details (for a :class:`ServiceError`, the service's details).
    """

    def __init__(self, workflow_id: str, error_type: str, message: str, details: Any = None):
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.message = message
        self.details = details
        super().__init__(f"workflow {workflow_id!r} failed with {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkflowFailedError, (self.workflow_id, self.error_type, self.message,
                                      self.details))
