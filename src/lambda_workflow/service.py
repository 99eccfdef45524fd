"""Typed handles to remote services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

import pydantic

if TYPE_CHECKING:
    from datetime import timedelta

    from .serdes import Serdes

__all__ = ["Service"]

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RespT_co = TypeVar("RespT_co", covariant=True)
P = ParamSpec("P")


def type_name(tp: object) -> str:
    """A readable name of a type for error messages (``Balance``, ``list[int]``, ``None``)."""
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


class Service(Generic[ReqT, RespT]):
    """A typed handle to an asynchronous service.

    A ``Service`` says what a service is called and what it accepts and returns; it says
    nothing about where the service runs (an async function on the local runtime, a Lambda
    function or a program in any language on AWS). Request and response types are anything
    pydantic validates: models, dataclasses, TypedDicts, primitives or ``None``.

    Example:
        >>> balance_service = Service("balance", BankTransaction, Balance)

    Args:
        name: The service's name; requests are routed by it.
        request_type: The type of the requests the service accepts.
        response_type: The type of its replies, ``None`` for a service that returns nothing.
        request_serdes: A :class:`~lambda_workflow.Serdes` that records and sends requests
            instead of JSON through the request type (invoke 5.15); the service, built with
            the same ``Service``, reads them back with it.
        response_serdes: A :class:`~lambda_workflow.Serdes` for replies (invoke 5.16).
    """

    __slots__ = ("name", "request_adapter", "request_model", "request_type", "response_adapter",
                 "response_type")

    @overload
    def __init__(
        self: Service[ReqT, None], name: str, request_type: type[ReqT], response_type: None, /,
        *, request_serdes: Serdes[ReqT] | None = None, response_serdes: None = None
    ) -> None: ...

    @overload
    def __init__(
        self, name: str, request_type: type[ReqT], response_type: type[RespT], /,
        *, request_serdes: Serdes[ReqT] | None = None,
        response_serdes: Serdes[RespT] | None = None
    ) -> None: ...

    def __init__(self, name: str, request_type: Any, response_type: Any, /, *,
                 request_serdes: Serdes[Any] | None = None,
                 response_serdes: Serdes[Any] | None = None) -> None:
        # Printable: a named call records "<service>\x1f<name>" (see _opnames).
        if not isinstance(name, str) or not name or len(name) > 80 or not name.isprintable():
            raise ValueError(f"a service name must be a non-empty printable string of at most 80 "
                             f"characters, got {name!r}")
        self.name = name
        self.request_type: object = request_type
        self.response_type: object = response_type
        # Adapters are built once per service, never per call.
        self.request_adapter: pydantic.TypeAdapter[ReqT]
        self.response_adapter: pydantic.TypeAdapter[RespT]
        if request_serdes is None and response_serdes is None:
            self.request_adapter = pydantic.TypeAdapter(request_type)
            self.response_adapter = pydantic.TypeAdapter(response_type)
        else:  # each type's own adapter, or its serdes's (which may take any class)
            from .serdes import base_adapter, with_serdes

            self.request_adapter = (pydantic.TypeAdapter(request_type) if request_serdes is None
                                    else with_serdes(request_serdes, base_adapter(request_type)))
            self.response_adapter = (
                pydantic.TypeAdapter(response_type) if response_serdes is None
                else with_serdes(response_serdes, base_adapter(response_type)))
        # An instance of exactly this model class passes pydantic's validation unchanged
        # (instances are not revalidated), so the replay core skips validating it.
        self.request_model: type | None = (
            request_type if isinstance(request_type, type) and request_serdes is None
            and issubclass(request_type, pydantic.BaseModel) else None)

    if TYPE_CHECKING:
        # For type checkers only (no such method exists at run time): the signature of
        # ``ctx.call(service, request, *, timeout=..., name=...)`` once the service is given.
        # ``ctx.call`` takes its parameters from here, so the service alone fixes the request
        # type and a wrong request is reported as "Argument 2 ... has incompatible type X;
        # expected Y" rather than as a type variable mypy cannot solve.
        def _call_signature(self, request: ReqT, /, *,
                            timeout: float | timedelta | None = None,
                            name: str | None = None) -> RespT: ...

    def __repr__(self) -> str:
        return (f"Service({self.name!r}, {type_name(self.request_type)}, "
                f"{type_name(self.response_type)})")


class ServiceCall(Protocol[P, RespT_co]):
    """What ``ctx.call`` accepts, for type checkers: a :class:`Service` whose request type
    gives the parameters ``P`` of the call and whose response type gives its result."""

    def _call_signature(self, *args: P.args, **kwargs: P.kwargs) -> RespT_co: ...
