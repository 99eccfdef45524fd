"""Start workflows on AWS and follow them: the client side of a deployment."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import orjson

from .. import _core
from .._runtime.history import history_to_json
from .._runtime.instances import (
    CallbackCompletion,
    RepairCommands,
    instance_result,
    start_instance,
)
from ..backends.protocols import Clock, InstancePage, StateStore, Transport
from ..callbacks import CallbackTokens
from ..errors import WorkflowNotFinishedError, WorkflowNotFoundError
from ..models import History, InstanceRecord, InstanceStatus
from ..workflow import Workflow, WorkflowStart, start_arguments
from .config import AwsConfig
from .payloads import NO_BUCKET_HINT
from .runtime import AwsDeployment

if TYPE_CHECKING:
    import boto3

__all__ = ["AwsWorkflowHandle", "WorkflowClient"]

ReqT = TypeVar("ReqT")
ResT = TypeVar("ResT")
P = ParamSpec("P")


class AwsWorkflowHandle(Generic[ResT]):
    """A started instance on AWS, typed by its result."""

    __slots__ = ("client", "workflow", "workflow_id")

    def __init__(self, client: WorkflowClient, workflow: Workflow[Any, ResT],
                 workflow_id: str) -> None:
        self.client = client
        self.workflow = workflow
        self.workflow_id = workflow_id

    def status(self) -> InstanceStatus:
        return self.client.status(self.workflow_id)

    def result(self) -> ResT:
        """The typed result; raises :class:`WorkflowFailedError` or
        :class:`WorkflowNotFinishedError`."""
        return self.client.result(self.workflow_id, self.workflow)

    def wait(self, timeout: float = 60.0, poll: float = 0.5) -> ResT:
        """Poll until the instance ends, then return its result like :meth:`result`."""
        return self.client.wait(self.workflow_id, self.workflow, timeout=timeout, poll=poll)

    def cancel(self, reason: str = "") -> bool:
        return self.client.cancel(self.workflow_id, reason)

    def history(self) -> History:
        return self.client.history(self.workflow_id)

    def __repr__(self) -> str:
        return f"<AwsWorkflowHandle {self.workflow.name} {self.workflow_id!r}>"


class _RoutedTransport:
    """The deployment's transport for a client: a message whose sender does not name the
    instance's workflow (a callback's completion, a repair's resume or a child's cancel) is
    routed by the instance's workflow name, read with one GetItem, when the deployment has a
    queue per workflow function (``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``)."""

    def __init__(self, deployment: AwsDeployment) -> None:
        self.deployment = deployment

    @property
    def reply_address(self) -> str:
        return self.deployment.transport.reply_address

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        d = self.deployment
        if workflow is None and d.config.workflow_queues and not _is_start(body):
            inst = d.store.get_instance(workflow_id)
            workflow = inst.workflow_name if inst is not None else None
        d.transport.send_to_workflow(workflow_id, dedup_id, body, workflow)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self.deployment.transport.send_to_service(service, dedup_id, body)


def _is_start(body: bytes) -> bool:
    """A start message names its workflow itself (the transport reads it there)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("kind") == "start"


class WorkflowClient(CallbackCompletion, RepairCommands):
    """Start, inspect and cancel workflow instances of one deployment.

    In a deployment with several workflow functions (``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``),
    every message goes to the queue of the function that runs its instance's workflow: a
    start by the workflow's name, the others by the instance's.

    Example:
        >>> client = WorkflowClient()          # LAMBDA_WORKFLOW_* from the environment
        >>> handle = client.start(make_transaction, tx, workflow_id="tx-1")
        >>> handle.status()
        <InstanceStatus.RUNNING: 'running'>
    """

    def __init__(self, config: AwsConfig | None = None, *, session: boto3.Session | None = None,
                 clock: Clock | None = None) -> None:
        self.deployment = AwsDeployment(config, session=session, clock=clock)
        self._transport = _RoutedTransport(self.deployment)

    def start(self, workflow: WorkflowStart[P, ResT], /, *args: P.args,
              **kwargs: P.kwargs) -> AwsWorkflowHandle[ResT]:
        """``start(workflow, request, /, *, workflow_id=None)``: start an instance; idempotent
        per ``workflow_id`` (the same workflow and input return the existing instance). The
        parameters after ``workflow`` are the workflow's, so a type checker reports a wrong
        input as an argument of the wrong type.

        Raises:
            InvalidRequestError: ``request`` is not a valid input of the workflow.
            PayloadTooLargeError: the input is over the threshold and no bucket is set.
            WorkflowAlreadyStartedError: the id is taken by another workflow or input.
        """
        request, workflow_id = start_arguments("start", args, kwargs)
        if not isinstance(workflow, Workflow):
            raise TypeError(f"start() takes a @workflow object, got {workflow!r}")
        d = self.deployment
        workflow_id = start_instance(d.store, self._transport, workflow, request, workflow_id,
                                     d.clock.now(), payload_limit=d.payload_limit,
                                     payload_hint=NO_BUCKET_HINT)
        return AwsWorkflowHandle(self, workflow, workflow_id)

    def handle(self, workflow: Workflow[Any, ResT], workflow_id: str) -> AwsWorkflowHandle[ResT]:
        """A handle on an existing instance (not checked until used)."""
        return AwsWorkflowHandle(self, workflow, workflow_id)

    def describe(self, workflow_id: str) -> InstanceRecord:
        """The instance record (status, timestamps, activations, result or error bytes).

        Raises:
            WorkflowNotFoundError: no such instance (or it expired by TTL).
        """
        inst = self.deployment.store.get_instance(workflow_id)
        if inst is None:
            raise WorkflowNotFoundError(f"no workflow instance {workflow_id!r} in table "
                                        f"{self.deployment.config.table!r}")
        return inst

    def status(self, workflow_id: str) -> InstanceStatus:
        return self.describe(workflow_id).status

    def result(self, workflow_id: str, workflow: Workflow[Any, ResT]) -> ResT:
        """The typed result of a completed instance.

        Raises:
            WorkflowFailedError: it failed or was cancelled.
            WorkflowNotFinishedError: it is still running.
        """
        return instance_result(self.describe(workflow_id), workflow)

    def wait(self, workflow_id: str, workflow: Workflow[Any, ResT], *, timeout: float = 60.0,
             poll: float = 0.5) -> ResT:
        """Poll the table until the instance ends (or ``timeout`` seconds pass, raising
        :class:`WorkflowNotFinishedError`), then return like :meth:`result`."""
        deadline = time.monotonic() + timeout
        while True:
            inst = self.describe(workflow_id)
            if inst.status is not InstanceStatus.RUNNING or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        if inst.status is InstanceStatus.RUNNING:
            raise WorkflowNotFinishedError(
                f"workflow {workflow_id!r} is still running after {timeout} s")
        return instance_result(inst, workflow)

    def cancel(self, workflow_id: str, reason: str = "") -> bool:
        """Ask a running instance to stop (a ``cancel`` message on its queue). Returns
        ``False`` if it had already ended.

        Raises:
            WorkflowNotFoundError: no such instance.
        """
        inst = self.describe(workflow_id)
        if inst.status is not InstanceStatus.RUNNING:
            return False
        body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": workflow_id,
                             "reason": reason})
        self._transport.send_to_workflow(
            workflow_id, _core.dedup_id(workflow_id, "cancel", ""), body, inst.workflow_name)
        return True

    def history(self, workflow_id: str) -> History:
        """The instance and every recorded operation, in creation order.

        Raises:
            WorkflowNotFoundError: no such instance.
        """
        history = self.deployment.store.load_history(workflow_id)
        if history is None:
            raise WorkflowNotFoundError(f"no workflow instance {workflow_id!r}")
        return history

    def export_history(self, workflow_id: str) -> bytes:
        """The history as JSON, as ``lambda-workflow history`` writes it (for the replayer
        and for bug reports)."""
        return history_to_json(self.history(workflow_id))

    # -- callbacks (complete/fail/heartbeat_callback come from CallbackCompletion; the keys
    # come from LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET or _PARAMETER, see callback_keys.py) -----
    def _callback_parts(self) -> tuple[StateStore, CallbackTokens | None, Transport]:
        d = self.deployment
        return d.store, d.tokens, self._transport

    def _callback_now(self) -> float:
        return self.deployment.clock.now()

    def list_instances(self) -> list[InstanceRecord]:
        """Every instance in the table, oldest first (a Scan: for tooling, not hot paths;
        :meth:`list_page` reads through the listing index instead)."""
        return self.deployment.store.list_instances()

    def list_page(self, *, status: InstanceStatus | None = None,
                  workflow_name: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 100,
                  next_token: str | None = None) -> InstancePage:
        """A page of instances with this status and workflow name, created between
        ``since`` and ``until`` (seconds since the epoch), through the table's ``by_status``
        index: ``Query`` and ``BatchGetItem``, never ``Scan``. Pass the page's
        ``next_token`` back for the next page.

        Raises:
            ConfigurationError: the table has no ``by_status`` index (says how to add it).
            InvalidPageTokenError: ``next_token`` is not one a listing handed out.
        """
        return self.deployment.store.list_page(
            status=status, workflow_name=workflow_name, since=since, until=until,
            limit=limit, next_token=next_token)

    # -- repair ----------------------------------------------------------------------------
    def _repair_parts(self) -> tuple[StateStore, Transport, Clock]:
        d = self.deployment
        return d.store, self._transport, d.clock
