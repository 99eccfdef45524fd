"""lambda-workflow: durable, typed async workflows for AWS Lambda.

Workflows are ``async def`` functions that call services with ``await ctx.call(...)``. While a
call has no reply the workflow suspends; the reply arrives as a message and the workflow
replays from the top, returning recorded results at once.

Importing this package is cheap: no boto3, no sqlite3, no I/O, and no submodule until one of
its names is used. Each public name loads its submodule on first access (PEP 562), so
``from lambda_workflow import workflow, WorkflowContext`` loads what a workflow module needs
and leaves batches, callbacks, the replay core and asyncio for the first activation.
"""

import sys as _sys
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING as _TYPE_CHECKING

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

if _TYPE_CHECKING:  # the real imports, for type checkers and IDEs
    from ._core import IMPLEMENTATION
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
    from .models import InstanceStatus
    from .serdes import Serdes
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

#: The submodule that defines each public name (the same modules as the imports above).
_WHERE = {
    "IMPLEMENTATION": "_core",
    **dict.fromkeys(("BatchError", "BatchItem", "BatchResult", "Completion",
                     "CompletionReason", "ItemStatus"), "batch"),
    "Callback": "callbacks",
    "WorkflowContext": "context",
    **dict.fromkeys(("CallbackError", "CallbackFailedError", "CallbackHeartbeatTimeoutError",
                     "CallbackTimeoutError", "CallTimeoutError", "ChildContextError",
                     "ChildWorkflowError", "ConditionNotMetError", "InvalidCallbackTokenError",
                     "InvalidMessageError", "InvalidRequestError", "InvalidWorkflowIdError",
                     "NonDeterminismError", "PayloadTooLargeError", "RepairError",
                     "ServiceError", "StateFileInUseError", "UnknownCallError",
                     "UnknownWorkflowError", "WorkflowAlreadyStartedError", "WorkflowError",
                     "WorkflowFailedError", "WorkflowNotFinishedError",
                     "WorkflowNotFoundError"), "errors"),
    "InstanceStatus": "models",
    "Serdes": "serdes",
    "Service": "service",
    **dict.fromkeys(("Jitter", "RetryPolicy", "Semantics", "Step", "StepArgumentError",
                     "StepError", "StepInfo", "current_step", "step"), "steps"),
    "Workflow": "workflow",
    "workflow": "workflow",
}


#: Submodules the package used to import eagerly: ``lambda_workflow.errors`` and the like still
#: resolve after a bare ``import lambda_workflow``.
_SUBMODULES = frozenset({"batch", "callbacks", "context", "errors", "service", "steps"})


def __getattr__(name: str) -> object:
    # Loaded on first use, so that `import lambda_workflow` stays cheap (Lambda cold start):
    # the replay core pulls in asyncio, the models build pydantic schemas, callbacks load
    # hashlib and hmac, and each dataclass or enum costs a fraction of a millisecond.
    # __import__ rather than importlib.import_module: the same import, and one that
    # `python -X importtime` reports (it times the import statement's path only).
    if name in _SUBMODULES:
        return __import__(f"{__name__}.{name}", fromlist=["__name__"])
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(__import__(f"{__name__}.{where}", fromlist=[name]), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


class _Package(_ModuleType):
    """The package's module type: importing the submodule ``lambda_workflow.workflow`` binds
    the package's ``workflow`` attribute, which names the decorator, not the module."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "workflow" and isinstance(value, _ModuleType):
            value = value.workflow  # the import system binding the submodule, once it ran
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
