"""Running a service implementation on one request, the same way on every runtime."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pydantic

from .. import _core
from ..errors import ServiceError
from ..models import describe_validation_error
from ..service import Service, type_name
from .replay import error_payload

__all__ = ["run_service"]


def run_service(service: Service[Any, Any], fn: Callable[[Any], Any], request: object,
                run_async: Callable[[Awaitable[Any]], Any]) -> tuple[bool, bytes]:
    """Validate ``request``, run ``fn`` on it and encode the reply.

    Returns ``(ok, payload)``: the encoded response, or the encoded error object. A request
    that does not validate is an ``InvalidRequest`` error; a :class:`ServiceError` keeps its
    type, message and details; any other exception reports its class name and message.
    ``run_async`` runs ``fn``'s awaitable when ``fn`` is ``async``.
    """
    try:
        value = service.request_adapter.validate_python(request)
    except pydantic.ValidationError as exc:
        return False, orjson.dumps({
            "type": "InvalidRequest", "details": None,
            "message": f"request to {service.name!r} is not a valid "
                       f"{type_name(service.request_type)}: {describe_validation_error(exc)}"})
    try:
        response = fn(value)
        if inspect.isawaitable(response):
            response = run_async(response)
        return True, _core.encode_value(service.response_adapter, response)
    except ServiceError as exc:
        return False, orjson.dumps({"type": exc.error_type, "message": exc.message,
                                    "details": exc.details}, default=repr)
    except Exception as exc:
        return False, error_payload(exc)
