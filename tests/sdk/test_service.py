"""Service: construction, names, repr, and the pydantic adapters built for its types."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pydantic
import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from lambda_workflow import Service


class Order(BaseModel):
    sku: str
    qty: int


@dataclasses.dataclass
class Parcel:
    weight_g: int
    fragile: bool = False


class Address(TypedDict):
    street: str
    zip: str


def test_service_keeps_its_name_and_types() -> None:
    """A Service exposes the name and the request and response types it was built with."""
    svc = Service("orders", Order, Parcel)
    assert svc.name == "orders"
    assert svc.request_type is Order
    assert svc.response_type is Parcel


@pytest.mark.parametrize("name", ["", "x" * 81, None, 42, "audit\x1flog", "tab\tbed"],
                         ids=["empty", "81-chars", "None", "int", "unit-separator", "tab"])
def test_service_rejects_a_bad_name(name: object) -> None:
    """An empty, over-long, non-string or non-printable name is refused with a message showing
    the name (a named call records '<service>\x1f<name>', so the separator cannot be in a
    service name)."""
    with pytest.raises(ValueError,
                       match="service name must be a non-empty printable string") as info:
        Service(cast(Any, name), Order, Order)
    assert repr(name)[:20] in str(info.value)


def test_service_accepts_a_name_of_80_characters() -> None:
    """80 characters is the longest name allowed."""
    assert Service("s" * 80, Order, Order).name == "s" * 80


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (Service("balance", Order, Parcel), "Service('balance', Order, Parcel)"),
        (Service("audit", Order, None), "Service('audit', Order, None)"),
        (Service("sum", list[int], int), "Service('sum', list[int], int)"),
        (Service("geo", Address, str), "Service('geo', Address, str)"),
    ],
    ids=["model-dataclass", "none", "generic", "typeddict"],
)
def test_repr_names_the_service_and_its_types(service: Service[Any, Any], expected: str) -> None:
    """repr shows the name and readable type names (``None``, ``list[int]``, class names)."""
    assert repr(service) == expected


@pytest.mark.parametrize(
    ("tp", "value", "json_value"),
    [
        (Order, Order(sku="a", qty=2), {"sku": "a", "qty": 2}),
        (Parcel, Parcel(weight_g=300, fragile=True), {"weight_g": 300, "fragile": True}),
        (Address, {"street": "Main St 1", "zip": "1000"}, {"street": "Main St 1", "zip": "1000"}),
        (int, 7, 7),
        (str, "hello", "hello"),
        (list[int], [1, 2, 3], [1, 2, 3]),
        (None, None, None),
    ],
    ids=["model", "dataclass", "typeddict", "int", "str", "list", "none"],
)
def test_adapters_round_trip_every_supported_kind_of_type(
    tp: Any, value: object, json_value: object
) -> None:
    """Request and response adapters dump to JSON and validate back to an equal value."""
    svc: Service[Any, Any] = Service("svc", tp, tp)
    for adapter in (svc.request_adapter, svc.response_adapter):
        dumped = adapter.dump_python(value, mode="json")
        assert dumped == json_value
        assert adapter.validate_python(dumped) == value


@pytest.mark.parametrize(
    ("tp", "bad"),
    [
        (Order, {"sku": "a"}),
        (Parcel, {"weight_g": "heavy"}),
        (Address, {"street": "Main St 1"}),
        (int, "seven"),
        (None, 0),
    ],
    ids=["model-missing-field", "dataclass-bad-int", "typeddict-missing-key", "int", "none"],
)
def test_adapters_reject_invalid_values(tp: Any, bad: object) -> None:
    """An adapter refuses a value that is not of its type (None accepts only None)."""
    svc: Service[Any, Any] = Service("svc", tp, tp)
    with pytest.raises(pydantic.ValidationError):
        svc.request_adapter.validate_python(bad)
    with pytest.raises(pydantic.ValidationError):
        svc.response_adapter.validate_python(bad)


def test_request_and_response_adapters_are_built_per_type() -> None:
    """The two adapters validate their own types, not each other's."""
    svc = Service("orders", Order, Parcel)
    assert svc.request_adapter.validate_python({"sku": "a", "qty": 1}) == Order(sku="a", qty=1)
    assert svc.response_adapter.validate_python({"weight_g": 5}) == Parcel(weight_g=5)
    with pytest.raises(pydantic.ValidationError):
        svc.response_adapter.validate_python({"sku": "a", "qty": 1})
