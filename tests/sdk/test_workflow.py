"""The @workflow decorator: names, the types read from the signature, and its refusals."""

from __future__ import annotations

from typing import Any, cast

import pydantic
import pytest
from pydantic import BaseModel

from lambda_workflow import Workflow, WorkflowContext, workflow


class Order(BaseModel):
    sku: str
    qty: int


class Receipt(BaseModel):
    total: int


def decorate(fn: object) -> Workflow[Any, Any]:
    """Apply @workflow to a function mypy would (rightly) refuse."""
    wf: Workflow[Any, Any] = workflow(cast(Any, fn))
    return wf


def test_bare_decorator_uses_the_function_name() -> None:
    """@workflow without arguments registers the workflow under the function's name."""

    @workflow
    async def place_order(ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(total=ctx.request.qty)

    assert isinstance(place_order, Workflow)
    assert place_order.name == "place_order"
    assert repr(place_order) == "<Workflow 'place_order'>"


def test_decorator_with_name_overrides_the_function_name() -> None:
    """@workflow(name=...) registers the workflow under the given name."""

    @workflow(name="orders.place-v2")
    async def place_order(ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(total=ctx.request.qty)

    assert place_order.name == "orders.place-v2"


def test_decorator_keeps_the_function() -> None:
    """The Workflow object keeps the decorated coroutine function as ``fn``."""

    async def place_order(ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(total=ctx.request.qty)

    assert workflow(place_order).fn is place_order


def test_request_and_result_types_come_from_the_signature() -> None:
    """The request type is WorkflowContext's argument and the result type the return type."""

    @workflow
    async def place_order(ctx: WorkflowContext[Order]) -> list[Receipt]:
        return []

    assert place_order.request_type is Order
    assert place_order.result_type == list[Receipt]
    assert place_order.request_adapter.validate_python({"sku": "a", "qty": 1}) == Order(
        sku="a", qty=1)
    assert place_order.result_adapter.validate_python([{"total": 3}]) == [Receipt(total=3)]
    with pytest.raises(pydantic.ValidationError):
        place_order.request_adapter.validate_python({"sku": "a"})


def test_a_workflow_returning_none_has_result_type_none() -> None:
    """``-> None`` gives a result adapter that accepts only None."""

    @workflow
    async def fire(ctx: WorkflowContext[int]) -> None:
        return None

    assert fire.result_type is type(None)
    assert fire.result_adapter.validate_python(None) is None
    with pytest.raises(pydantic.ValidationError):
        fire.result_adapter.validate_python(1)


def test_a_plain_function_is_refused() -> None:
    """A non-async function is refused with a message asking for ``async def``."""

    def place_order(ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(total=1)

    with pytest.raises(TypeError, match="needs an 'async def' function"):
        decorate(place_order)


def test_an_async_generator_is_refused() -> None:
    """An ``async def`` with ``yield`` is not a coroutine function and is refused."""

    async def place_order(ctx: WorkflowContext[Order]) -> Any:
        yield 1

    with pytest.raises(TypeError, match="needs an 'async def' function"):
        decorate(place_order)


def test_a_missing_return_annotation_is_refused() -> None:
    """Without a return annotation the error says to annotate it (``-> None`` if nothing)."""

    async def place_order(ctx: WorkflowContext[Order]):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(TypeError, match=r"annotate its return type \(use -> None") as info:
        decorate(place_order)
    assert "place_order" in str(info.value)


def test_a_missing_parameter_annotation_is_refused() -> None:
    """An unannotated parameter is refused with a message naming WorkflowContext."""

    async def place_order(ctx) -> Receipt:  # type: ignore[no-untyped-def]
        return Receipt(total=1)

    with pytest.raises(TypeError, match=r"annotate its parameter as WorkflowContext\[") as info:
        decorate(place_order)
    assert "found None" in str(info.value)


def test_a_wrong_parameter_annotation_is_refused() -> None:
    """A parameter annotated with the request type itself is refused, showing what was found."""

    async def place_order(ctx: Order) -> Receipt:
        return Receipt(total=ctx.qty)

    with pytest.raises(TypeError, match="annotate its parameter as WorkflowContext") as info:
        decorate(place_order)
    assert "found <class" in str(info.value)
    assert "Order" in str(info.value)
    assert "place_order" in str(info.value)


@pytest.mark.parametrize("count", [0, 2])
def test_a_wrong_parameter_count_is_refused(count: int) -> None:
    """A workflow must take exactly one parameter; the message says how many it takes."""

    async def none() -> Receipt:
        return Receipt(total=1)

    async def two(ctx: WorkflowContext[Order], extra: int) -> Receipt:
        return Receipt(total=extra)

    fn = none if count == 0 else two
    with pytest.raises(TypeError, match=f"exactly one parameter.*it takes {count}"):
        decorate(fn)


def test_an_unresolvable_annotation_is_refused() -> None:
    """A forward reference that cannot be resolved is reported, not raised as NameError."""

    async def place_order(ctx: WorkflowContext[Order]) -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(TypeError, match="cannot resolve its annotations") as info:
        decorate(place_order)
    assert "NoSuchType" in str(info.value)
    assert isinstance(info.value.__cause__, NameError)


def test_string_annotations_naming_local_classes_resolve() -> None:
    """A workflow defined inside a function, whose string annotations (as under
    `from __future__ import annotations`) name classes local to that function, gets its
    request and result types."""

    class LocalRequest(BaseModel):
        n: int

    class LocalResult(BaseModel):
        total: int

    async def body(ctx: WorkflowContext[LocalRequest]) -> LocalResult:
        return LocalResult(total=ctx.request.n)

    body.__annotations__ = {"ctx": "WorkflowContext[LocalRequest]", "return": "LocalResult"}
    wf = workflow(body)
    named = workflow(name="named")(body)
    assert (wf.request_type, wf.result_type) == (LocalRequest, LocalResult)
    assert (named.request_type, named.result_type) == (LocalRequest, LocalResult)
