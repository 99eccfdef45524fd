"""Builders shared by the core tests: history records, a recording hooks object, a loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import FrameType, ModuleType
from typing import Any

import orjson
import pydantic
from pydantic import BaseModel

from lambda_workflow._runtime.loop import ReplayLoop
from lambda_workflow.models import OperationRecord, OperationState
from lambda_workflow.service import Service


class Req(BaseModel):
    """The request type of the test service."""

    n: int


SERVICE: Service[Req, int] = Service("svc", Req, int)
INT = pydantic.TypeAdapter(int)


def request_bytes(n: int) -> bytes:
    """The canonical encoding of ``Req(n=n)``, as the history records it."""
    return orjson.dumps({"n": n})


def error_bytes(type_: str = "Boom", message: str = "it broke", details: Any = None) -> bytes:
    """A recorded error object."""
    return orjson.dumps({"type": type_, "message": message, "details": details})


def record(
    seq: int,
    state: str = "pending",
    *,
    result: bytes | None = None,
    resolved_in: int | None = None,
    kind: str = "call",
    name: str = "svc",
    n: int | None = None,
) -> OperationRecord:
    """Operation ``seq`` of a test history (op id ``seq + 1``, request ``Req(n=seq)``)."""
    request = request_bytes(seq if n is None else n)
    return OperationRecord(
        workflow_id="wf", op_id=str(seq + 1), seq=seq, kind=kind, name=name, request=request,
        request_digest="", state=OperationState(state), result=result, resolved_in=resolved_in)


def new_loop() -> ReplayLoop:
    """A fresh ReplayLoop."""
    # typeshed marks AbstractEventLoop's I/O surface abstract; ReplayLoop has none by design.
    return ReplayLoop()  # type: ignore[abstract]


class HookError(Exception):
    """What the fake hooks return for the core to raise."""


class Hooks:
    """A ReplayHooks that records every call as a plain tuple."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.index: Any = None
        self.raise_on_new = False

    def invalid_reply(self, record: Any, future: Any, staged_payload: bytes | None,
                      exc: pydantic.ValidationError) -> None:
        self.calls.append(("invalid_reply", record.op_id, future.name, staged_payload,
                           exc.error_count()))

    def mismatch(self, exc: Any, kind: str, name: str, frame: FrameType | None) -> BaseException:
        self.calls.append(("mismatch", exc.seq, exc.field, exc.recorded.op_id, exc.payload,
                           kind, name))
        return HookError("mismatch")

    def bad_request(self, exc: Exception, service: Any, frame: FrameType | None) -> BaseException:
        self.calls.append(("bad_request", type(exc).__name__, service.name))
        return HookError("bad_request")

    def not_a_service(self, obj: object, frame: FrameType | None) -> BaseException:
        self.calls.append(("not_a_service", repr(obj)))
        return HookError("not_a_service")

    def new_operation(self, seq: int, kind: str, name: str, payload: bytes,
                      frame: FrameType | None) -> None:
        self.calls.append(("new_operation", seq, kind, name, payload,
                           None if self.index is None else self.index.new_allowed))
        if self.raise_on_new:
            raise HookError("new_operation")


def make_index(core: ModuleType, operations: Sequence[OperationRecord],
               staged: Mapping[str, tuple[bool, bytes]] | None = None, *,
               activation: int = 9, loop: ReplayLoop | None = None) -> tuple[Any, Hooks]:
    """A ReplayIndex of ``core`` over ``operations``, with recording hooks."""
    hooks = Hooks()
    index = core.ReplayIndex(operations, staged or {}, activation,
                             loop if loop is not None else new_loop(), hooks)
    hooks.index = index
    return index, hooks


def step(index: Any, seq: int, n: int | None = None, *, kind: str = "call",
         name: str = "svc", request: object = None) -> tuple[int, Any]:
    """Step operation ``seq`` as a call of the test service; returns (decision, future)."""
    req = request if request is not None else Req(n=seq if n is None else n)
    decision, future, _, _ = index.step(seq, kind, name, SERVICE.request_adapter, Req, INT, req,
                                        SERVICE)
    return decision, future
