"""The object a workflow receives: its input and its durable operations."""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from types import FrameType
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    import logging

    from .service import Service

__all__ = ["WorkflowContext"]

ReqT = TypeVar("ReqT")
CallReqT = TypeVar("CallReqT")
CallRespT = TypeVar("CallRespT")


class _Driver(Protocol):
    """What the activation engine offers the context (implemented in ``_runtime``)."""

    @property
    def is_replaying(self) -> bool: ...

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def call(
        self, service: Service[CallReqT, CallRespT], request: CallReqT, frame: FrameType | None
    ) -> Awaitable[CallRespT]: ...


class WorkflowContext(Generic[ReqT]):
    """The handle a workflow uses to read its input and run durable operations.

    The runtime creates one per activation; workflows never construct it. Every durable
    operation is recorded in the instance's history and, on replay, returns its recorded
    outcome at once instead of running again.
    """

    __slots__ = ("_driver", "_request", "_workflow_id")

    def __init__(self, driver: _Driver, request: ReqT, workflow_id: str) -> None:
        self._driver = driver
        self._request = request
        self._workflow_id = workflow_id

    @property
    def request(self) -> ReqT:
        """The workflow's typed input (the same value on every replay)."""
        return self._request

    @property
    def workflow_id(self) -> str:
        """The id of this workflow instance."""
        return self._workflow_id

    @property
    def is_replaying(self) -> bool:
        """True while the workflow re-executes code whose effects are already recorded."""
        return self._driver.is_replaying

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that drops lines while replaying, so each line is logged once."""
        return self._driver.logger

    def call(
        self, service: Service[CallReqT, CallRespT], request: CallReqT, /
    ) -> Awaitable[CallRespT]:
        """Call an asynchronous service and return an awaitable of its typed reply.

        The call is created (and its id fixed) when ``call`` is invoked, not when it is
        awaited, so calls passed to ``asyncio.gather`` get ids in program order and all leave
        in the same activation.

        Replay behaviour:
            Recorded: the operation's kind (``call``), the service name, the request (as
            canonical JSON) and its digest, then the reply. On replay a call that already has a
            reply returns it at once (validated into the response type, exactly as on the
            first execution); a call that is still pending is not sent again. A call whose
            service name or request differs from the recorded one raises
            :class:`~lambda_workflow.NonDeterminismError`.

        Raises:
            ServiceError: when awaited, if the service replied with an error.
            InvalidRequestError: if ``request`` does not validate against the service's
                request type.
        """
        return self._driver.call(service, request, sys._getframe(1))
