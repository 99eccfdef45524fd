"""The ``@workflow`` decorator and the typed ``Workflow`` object it returns."""

from __future__ import annotations

import contextlib
import inspect
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import pydantic

from .context import WorkflowContext
from .service import Service

if typing.TYPE_CHECKING:
    from .serdes import Serdes

__all__ = ["Workflow", "WorkflowStart", "start_arguments", "workflow"]

ReqT = TypeVar("ReqT")
ResT = TypeVar("ResT")

WorkflowFunction = Callable[[WorkflowContext[ReqT]], Awaitable[ResT]]
ResT_co = TypeVar("ResT_co", covariant=True)
P = ParamSpec("P")
_References = tuple[tuple[Service[Any, Any], ...], tuple["Workflow[Any, Any]", ...]]
# Code that never names a user's services: discovery does not follow functions into it.
_NOT_FOLLOWED = frozenset({*sys.stdlib_module_names, "lambda_workflow", "pydantic",
                           "pydantic_core", "orjson", "boto3", "botocore", "typing_extensions"})


class Workflow(Generic[ReqT, ResT]):
    """A registered workflow definition: its name, its typed input and its typed result.

    Made by :func:`workflow`; pass it to a runtime's ``register`` and ``start``.
    """

    __slots__ = ("_declared", "_referenced", "fn", "name", "request_adapter", "request_type",
                 "result_adapter", "result_type")

    def __init__(self, fn: WorkflowFunction[ReqT, ResT], *, name: str | None = None,
                 localns: Mapping[str, Any] | None = None,
                 services: Iterable[Service[Any, Any]] = (),
                 serdes: Serdes[ResT] | None = None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@workflow needs an 'async def' function, got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        declared = tuple(services)
        for svc in declared:
            if not isinstance(svc, Service):
                raise TypeError(f"workflow {self.name!r}: services= takes Service objects, "
                                f"got {svc!r}")
        self._declared = declared
        self._referenced: _References | None = None
        self.request_type, self.result_type = _signature_types(fn, localns)
        self.request_adapter: pydantic.TypeAdapter[ReqT] = pydantic.TypeAdapter(self.request_type)
        self.result_adapter: pydantic.TypeAdapter[ResT]
        if serdes is None:
            self.result_adapter = pydantic.TypeAdapter(self.result_type)
        else:  # the result recorded (and returned to a parent) through it
            from .serdes import base_adapter, with_serdes

            self.result_adapter = with_serdes(serdes, base_adapter(self.result_type))

    if typing.TYPE_CHECKING:
        # For type checkers only (no such method exists at run time): the parameters of
        # ``start(workflow, request, *, workflow_id=...)`` (and ``ctx.child``) once the workflow
        # is given, so the workflow alone fixes the request type and a wrong input is reported
        # as "Argument 2 ... has incompatible type X; expected Y".
        def _start_signature(self, request: ReqT, /, *,
                             workflow_id: str | None = None) -> ResT: ...

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}>"

    def _references(self) -> _References:
        if self._referenced is None:
            found_services, found_workflows = _referenced_objects(self.fn)
            by_name = {svc.name: svc for svc in (*self._declared, *found_services)}
            self._referenced = (
                tuple(by_name[n] for n in sorted(by_name)),
                tuple(wf for wf in found_workflows if wf is not self))
        return self._referenced

    @property
    def services(self) -> tuple[Service[Any, Any], ...]:
        """The services this workflow can call, sorted by name: those given to
        ``@workflow(services=[...])`` and those its code refers to (the function, the functions
        and modules it names, and their closures, followed through the workflow's own module
        and helpers). The AWS workflow handler checks at cold start that each has a target, and
        ``lambda-workflow template`` makes a function or a parameter for each. A workflow that
        picks its services at run time (from a dict built elsewhere, say) declares them."""
        return self._references()[0]

    @property
    def children(self) -> tuple[Workflow[Any, Any], ...]:
        """The other workflows this workflow's code refers to (its child workflows)."""
        return self._references()[1]


def _referenced_objects(
        fn: Callable[..., object]) -> tuple[list[Service[Any, Any]], list[Workflow[Any, Any]]]:
    """The services and workflows that ``fn``'s code can reach: the global names its code
    objects (nested ones included) load, the values in its closure and defaults, followed
    into the plain functions, methods and modules they name. Static: what the code names,
    whether or not a run reaches it."""
    services: dict[int, Service[Any, Any]] = {}
    workflows: dict[int, Workflow[Any, Any]] = {}
    seen: set[int] = set()

    def names_of(code: types.CodeType) -> set[str]:
        names = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                names |= names_of(const)
        return names

    def visit(value: object, depth: int) -> None:
        if id(value) in seen or depth > 8:
            return
        seen.add(id(value))
        if isinstance(value, Service):
            services.setdefault(id(value), value)
        elif isinstance(value, Workflow):
            workflows.setdefault(id(value), value)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                visit(item, depth + 1)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif isinstance(value, (types.FunctionType, types.MethodType)):
            func = value.__func__ if isinstance(value, types.MethodType) else value
            if isinstance(func, types.FunctionType) and (
                    (func.__module__ or "").partition(".")[0] not in _NOT_FOLLOWED):
                visit_function(func, depth)

    def visit_function(func: types.FunctionType, depth: int) -> None:
        names = names_of(func.__code__)
        scope = func.__globals__
        for name in names:
            if name in scope:
                target = scope[name]
                if isinstance(target, types.ModuleType):
                    # `services.balance`: the attributes of a module that the code names
                    for attr in names:
                        visit(getattr(target, attr, None), depth + 1)
                else:
                    visit(target, depth + 1)
        for cell in func.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell has no contents
                visit(cell.cell_contents, depth + 1)
        for default in (*(func.__defaults__ or ()), *(func.__kwdefaults__ or {}).values()):
            visit(default, depth + 1)

    if isinstance(fn, types.FunctionType):
        visit_function(fn, 0)
    return list(services.values()), list(workflows.values())


class WorkflowStart(Protocol[P, ResT_co]):
    """What ``start`` (and ``ctx.child``) accept, for type checkers: a :class:`Workflow` whose
    input type gives the parameters ``P`` and whose result type gives the handle's."""

    def _start_signature(self, *args: P.args, **kwargs: P.kwargs) -> ResT_co: ...


def start_arguments(method: str, args: tuple[Any, ...],
                    kwargs: Mapping[str, Any]) -> tuple[Any, str | None]:
    """``(request, workflow_id)`` from what ``method`` received after the workflow."""
    unexpected = sorted(set(kwargs) - {"workflow_id"})
    if len(args) != 1 or unexpected:
        got = f"{len(args)} positional argument{'s' if len(args) != 1 else ''}"
        if unexpected:
            got += f" and keyword argument{'s' if len(unexpected) != 1 else ''} " + ", ".join(
                repr(k) for k in unexpected)
        raise TypeError(f"{method} takes (workflow, request, /, *, workflow_id=None): the "
                        f"workflow, then one request; got {got} after the workflow")
    return args[0], kwargs.get("workflow_id")


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
    fn: WorkflowFunction[ReqT, ResT], /, *, name: str | None = None,
    services: Iterable[Service[Any, Any]] = (), serdes: Serdes[ResT] | None = None
) -> Workflow[ReqT, ResT]: ...


@overload
def workflow(
    *, name: str | None = None, services: Iterable[Service[Any, Any]] = (),
    serdes: Serdes[Any] | None = None
) -> Callable[[WorkflowFunction[ReqT, ResT]], Workflow[ReqT, ResT]]: ...


def workflow(
    fn: WorkflowFunction[ReqT, ResT] | None = None, /, *, name: str | None = None,
    services: Iterable[Service[Any, Any]] = (), serdes: Serdes[Any] | None = None
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
        services: Services the workflow calls that its code does not name directly (see
            :attr:`Workflow.services`; those it names are found without this).
        serdes: A :class:`~lambda_workflow.Serdes` that records the result instead of JSON
            through the result type; a parent's ``ctx.child`` reads it back with it.
    """
    if fn is not None:
        return Workflow(fn, name=name, localns=sys._getframe(1).f_locals, services=services,
                        serdes=serdes)

    def decorate(f: WorkflowFunction[ReqT, ResT]) -> Workflow[ReqT, ResT]:
        return Workflow(f, name=name, localns=sys._getframe(1).f_locals, services=services,
                        serdes=serdes)

    return decorate
