"""lambda-workflow: durable, typed async workflows for AWS Lambda.

Workflows are ``async def`` functions that call services with ``await ctx.call(...)``. While a
call has no reply the workflow suspends; the reply arrives as a message and the workflow
replays from the top, returning recorded results at once.

Importing this package is cheap: no boto3, no sqlite3, no I/O.
"""

from ._core import IMPLEMENTATION
from .context import WorkflowContext
from .errors import (
    CallTimeoutError,
    InvalidMessageError,
    InvalidRequestError,
    NonDeterminismError,
    PayloadTooLargeError,
    ServiceError,
    UnknownCallError,
    UnknownWorkflowError,
    WorkflowAlreadyStartedError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFinishedError,
    WorkflowNotFoundError,
)
from .models import InstanceStatus
from .service import Service
from .workflow import Workflow, workflow

__all__ = [
    "IMPLEMENTATION",
    "CallTimeoutError",
    "InstanceStatus",
    "InvalidMessageError",
    "InvalidRequestError",
    "NonDeterminismError",
    "PayloadTooLargeError",
    "Service",
    "ServiceError",
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
    "workflow",
]

__version__ = "0.1.0"
