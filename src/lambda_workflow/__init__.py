"""lambda-workflow: durable, typed async workflows for AWS Lambda.

Workflows are ``async def`` functions that call services with ``await ctx.call(...)``. While a
call has no reply the workflow suspends; the reply arrives as a message and the workflow
replays from the top, returning recorded results at once.

Importing this package is cheap: no boto3, no sqlite3, no I/O.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from .batch import BatchError, BatchItem, BatchResult, Completion, CompletionReason, ItemStatus
from .callbacks import Callback
from .context import WorkflowContext
from .errors import (
    CallbackError,
    CallbackFailedError,
    CallbackHeartbeatTimeoutError,
    CallbackTimeoutError,
    CallTimeoutError,
    ChildContextError,
    ChildWorkflowError,
    ConditionNotMetError,
    InvalidCallbackTokenError,
    InvalidMessageError,
    InvalidRequestError,
    InvalidWorkflowIdError,
    NonDeterminismError,
    PayloadTooLargeError,
    RepairError,
    ServiceError,
    StateFileInUseError,
    UnknownCallError,
    UnknownWorkflowError,
    WorkflowAlreadyStartedError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
)
from .service import Service
from .steps import (
    Jitter,
    RetryPolicy,
    Semantics,
    Step,
    StepArgumentError,
    StepError,
    StepInfo,
    current_step,
    step,
)
from .workflow import Workflow, workflow

__all__ = [
    "IMPLEMENTATION",
    "BatchError",
    "BatchItem",
    "BatchResult",
    "CallTimeoutError",
    "Callback",
    "CallbackError",
    "CallbackFailedError",
    "CallbackHeartbeatTimeoutError",
    "CallbackTimeoutError",
    "ChildContextError",
    "ChildWorkflowError",
    "Completion",
    "CompletionReason",
    "ConditionNotMetError",
    "InstanceStatus",
    "InvalidCallbackTokenError",
    "InvalidMessageError",
    "InvalidRequestError",
    "InvalidWorkflowIdError",
    "ItemStatus",
    "Jitter",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "RepairError",
    "RetryPolicy",
    "Semantics",
    "Serdes",
    "Service",
    "ServiceError",
    "StateFileInUseError",
    "Step",
    "StepArgumentError",
    "StepError",
    "StepInfo",
    "UnknownCallError",
    "UnknownWorkflowError",
    "Workflow",
    "WorkflowAlreadyStartedError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowNotFinishedError",
    "WorkflowNotFoundError",
    "__version__",
    "current_step",
    "step",
    "workflow",
]

__version__ = "0.1.0"

if _TYPE_CHECKING:
    from ._core import IMPLEMENTATION
    from .models import InstanceStatus
    from .serdes import Serdes


def __getattr__(name: str) -> object:
    # Loaded on first use, so that `import lambda_workflow` stays cheap (Lambda cold start):
    # the replay core pulls in asyncio, and the models build pydantic schemas.
    if name == "IMPLEMENTATION":
        from ._core import IMPLEMENTATION

        return IMPLEMENTATION
    if name == "InstanceStatus":
        from .models import InstanceStatus

        return InstanceStatus
    if name == "Serdes":  # only workflows with a custom serialization compile serdes.py
        from .serdes import Serdes

        return Serdes
    raise AttributeError(f"module 'lambda_workflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
