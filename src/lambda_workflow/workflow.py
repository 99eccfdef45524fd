"""The ``@workflow`` decorator and the typed ``Workflow`` object it returns."""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar, overload

import pydantic

from .context import WorkflowContext

__all__ = ["Workflow", "workflow"]

ReqT = TypeVar("ReqT")
ResT = TypeVar("ResT")

WorkflowFunction = Callable[[WorkflowContext[ReqT]], Awaitable[ResT]]


class Workflow(Generic[ReqT, ResT]):
    """A registered workflow definition: its name, its typed input and its typed result.

    Made by :func:`workflow`; pass it to a runtime's ``register`` and ``start``.
    """

    __slots__ = ("fn", "name", "request_adapter", "request_type", "result_adapter",
                 "result_type")

    def __init__(self, fn: WorkflowFunction[ReqT, ResT], *, name: str | None = None,
                 localns: Mapping[str, Any] | None = None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@workflow needs an 'async def' function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self.request_type, self.result_type = _signature_types(fn, localns)
        self.request_adapter: pydantic.TypeAdapter[ReqT] = pydantic.TypeAdapter(self.request_type)
        self.result_adapter: pydantic.TypeAdapter[ResT] = pydantic.TypeAdapter(self.result_type)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}>"


def _signature_types(fn: Callable[..., object],
                     localns: Mapping[str, Any] | None) -> tuple[Any, Any]:
    where = f"workflow {fn.__qualname__!r} ({inspect.getsourcefile(fn)})"
    try:
        # The defining scope's locals resolve string annotations (`from __future__ import
        # annotations`) that name classes local to a function, as in tests and factories.
        hints = typing.get_type_hints(fn, localns=dict(localns) if localns else None)
    except Exception as exc:  # NameError for an unresolvable forward reference, and others
        raise TypeError(f"{where}: cannot resolve its annotations: {exc}") from exc
    params = list(inspect.signature(fn).parameters)
    if len(params) != 1:
        raise TypeError(f"{where}: a workflow takes exactly one parameter, "
                        f"ctx: WorkflowContext[RequestType]; it takes {len(params)}")
    ctx_type = hints.get(params[0])
    if typing.get_origin(ctx_type) is not WorkflowContext:
        raise TypeError(f"{where}: annotate its parameter as WorkflowContext[RequestType] "
                        f"(found {ctx_type!r})")
    (request_type,) = typing.get_args(ctx_type)
    if "return" not in hints:
        raise TypeError(f"{where}: annotate its return type (use -> None if it returns nothing)")
    return request_type, hints["return"]


@overload
def workflow(
    fn: WorkflowFunction[ReqT, ResT], /, *, name: str | None = None
) -> Workflow[ReqT, ResT]: ...


@overload
def workflow(
    *, name: str | None = None
) -> Callable[[WorkflowFunction[ReqT, ResT]], Workflow[ReqT, ResT]]: ...


def workflow(
    fn: WorkflowFunction[ReqT, ResT] | None = None, /, *, name: str | None = None
) -> Workflow[ReqT, ResT] | Callable[[WorkflowFunction[ReqT, ResT]], Workflow[ReqT, ResT]]:
    """Declare an ``async def`` as a durable workflow.

    The function takes one parameter annotated ``WorkflowContext[RequestType]`` and returns its
    result type; both types are validated (and serialized) with pydantic.

    Example:
        >>> @workflow
        ... async def make_transaction(ctx: WorkflowContext[BankTransaction]) -> str: ...

    Args:
        fn: The workflow function (when used as ``@workflow``).
        name: The registered name (``@workflow(name=...)``); defaults to the function's name.
            Keep it stable: in-flight instances are matched to code by this name.
    """
    if fn is not None:
        return Workflow(fn, name=name, localns=sys._getframe(1).f_locals)

    def decorate(f: WorkflowFunction[ReqT, ResT]) -> Workflow[ReqT, ResT]:
        return Workflow(f, name=name, localns=sys._getframe(1).f_locals)

    return decorate
