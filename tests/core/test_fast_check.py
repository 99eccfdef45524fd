"""The replayed-request check's fast path: ``dump_json`` bytes compared with the recorded ones.

A recorded request is canonical JSON (pydantic's JSON mode, orjson with sorted keys). Both
twins first compare ``request_adapter.dump_json(request)`` with it and compute the canonical
encoding only when the bytes differ. That is sound if a ``dump_json`` output that is itself
canonical always equals the request's canonical encoding: then equal bytes accept exactly
what the canonical comparison accepts. The property test checks this premise on random
models; the replay tests check both twins accept and reject exactly what the canonical
comparison does.
"""

from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Any, Literal

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from lambda_workflow.errors import INTEGER_LIMIT
from lambda_workflow.models import OperationRecord, OperationState
from lambda_workflow.serdes import Serdes, SerdesAdapter

from .helpers import INT, make_index

C: ModuleType = importlib.import_module("lambda_workflow._core._c")
PY: ModuleType = importlib.import_module("lambda_workflow._core._py")

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Inner(BaseModel):
    """A nested model, its fields in sorted order."""

    label: str
    weight: float


class Sorted(BaseModel):
    """Fields in sorted order: dump_json is canonical unless a dict's keys are not."""

    amount: int
    data: dict[str, Any]
    inner: Inner | None
    items: list[Inner]
    note: str
    ratio: float


class Unsorted(BaseModel):
    """Fields out of sorted order: dump_json is never canonical."""

    zeta: int
    alpha: str
    mid: dict[str, float]


json_leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
               | st.text())
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=10,
)
# big ints beyond 64 bits included: orjson refuses them, pydantic's dump_json writes them
ints = st.integers() | st.integers(min_value=2**63 - 3, max_value=2**70)
inners = st.builds(Inner, label=st.text(), weight=st.floats())
sorted_models = st.builds(
    Sorted, amount=ints, data=st.dictionaries(st.text(max_size=5), json_values, max_size=5),
    inner=st.none() | inners, items=st.lists(inners, max_size=3), note=st.text(),
    ratio=st.floats())
unsorted_models = st.builds(
    Unsorted, zeta=ints, alpha=st.text(),
    mid=st.dictionaries(st.text(max_size=4), st.floats(), max_size=4))
models = sorted_models | unsorted_models


def canonical(model: BaseModel) -> bytes | None:
    """The canonical encoding (what the history records), or None if it cannot be made."""
    try:
        return orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return None


def is_canonical(payload: bytes) -> bool:
    try:
        return orjson.dumps(orjson.loads(payload), option=orjson.OPT_SORT_KEYS) == payload
    except orjson.JSONDecodeError:
        return False


@SETTINGS
@given(models)
def test_a_canonical_dump_json_is_the_canonical_encoding(model: BaseModel) -> None:
    """The premise of the fast path: whenever dump_json's bytes are canonical (so they could
    equal a recorded request), they are the model's canonical encoding."""
    adapter = pydantic.TypeAdapter(type(model))
    fast = adapter.dump_json(model)
    # what the cores call for a TypeAdapter: its serializer, with dump_json's defaults
    assert adapter.serializer.to_json(model) == fast
    assert adapter.serializer.to_python(model, mode="json") == adapter.dump_python(
        model, mode="json")
    if is_canonical(fast):
        assert fast == canonical(model)


def test_the_premise_is_not_vacuous() -> None:
    """Sorted models with sorted dict keys do hit the fast path; unsorted ones never do."""
    model = Sorted(amount=1, data={"a": 1, "b": [1.5, "é"]}, inner=Inner(label="x", weight=2.0),
                   items=[], note="ü", ratio=0.1)
    fast = pydantic.TypeAdapter(Sorted).dump_json(model)
    assert is_canonical(fast) and fast == canonical(model)
    other = Unsorted(zeta=1, alpha="a", mid={})
    assert not is_canonical(pydantic.TypeAdapter(Unsorted).dump_json(other))


def history_of(kind: str, name: str, payload: bytes) -> list[OperationRecord]:
    return [OperationRecord(workflow_id="wf", op_id="1", seq=0, kind=kind, name=name,
                            request=payload, request_digest="",
                            state=OperationState.COMPLETED, result=b"5", resolved_in=1)]


def replay_one(core: ModuleType, recorded: bytes, model: BaseModel) -> tuple[Any, ...]:
    """Step one recorded call whose request is ``model``: the decision and payload, or the
    error's type and field."""
    index, _ = make_index(core, history_of("call", "svc", recorded))
    adapter = pydantic.TypeAdapter(type(model))
    try:
        decision, _, rec, payload = index.step(0, "call", "svc", adapter, type(model), INT,
                                               model)
    except core.ReplayMismatch as exc:
        return ("mismatch", exc.field, exc.payload)
    except Exception as exc:
        return ("raise", type(exc).__name__)
    return (decision, payload, rec is not None)


@SETTINGS
@given(models, models)
def test_both_twins_accept_exactly_what_the_canonical_comparison_accepts(
        recorded_model: BaseModel, model: BaseModel) -> None:
    """Against a recorded request (canonical), a replayed request is accepted iff its
    canonical encoding equals the recorded bytes, on both twins, fast path or not."""
    recorded = canonical(recorded_model)
    if recorded is None:
        return
    for candidate in (model, recorded_model):
        expected_bytes = canonical(candidate)
        c, py = replay_one(C, recorded, candidate), replay_one(PY, recorded, candidate)
        assert c == py
        if expected_bytes == recorded:
            assert c == (PY.WAIT, recorded, True)
        elif expected_bytes is None:
            assert c == ("raise", "PydanticSerializationError")
        else:
            assert c == ("mismatch", "request", expected_bytes)


def test_a_big_int_request_is_refused_not_matched(core: ModuleType) -> None:
    """dump_json writes integers beyond 64 bits, which a history can never hold: the canonical
    encoding refuses them, naming the limit, as before."""
    recorded = canonical(Unsorted(zeta=1, alpha="a", mid={}))
    assert recorded is not None
    index, _ = make_index(core, history_of("call", "svc", recorded))
    adapter = pydantic.TypeAdapter(Unsorted)
    big = Unsorted(zeta=2**70, alpha="a", mid={})
    with pytest.raises(PydanticSerializationError, match=re.escape(INTEGER_LIMIT[:20])):
        index.step(0, "call", "svc", adapter, Unsorted, INT, big)


class CountingAdapter:
    """A request adapter that counts dump_json calls (and delegates everything)."""

    def __init__(self, adapter: pydantic.TypeAdapter[Any]) -> None:
        self._adapter = adapter
        self.dump_json_calls = 0

    def dump_json(self, value: Any) -> bytes:
        self.dump_json_calls += 1
        return self._adapter.dump_json(value)

    def dump_python(self, value: Any, mode: Literal["json", "python"] = "python") -> Any:
        return self._adapter.dump_python(value, mode=mode)

    def validate_python(self, value: Any) -> Any:
        return self._adapter.validate_python(value)


def test_an_adapter_whose_json_is_not_canonical_is_tried_once(core: ModuleType) -> None:
    """A model with unsorted fields misses the fast path and matches canonically; the index
    then stops calling dump_json for that adapter. A sorted one keeps using it."""
    unsorted = [Unsorted(zeta=i, alpha="a", mid={"b": 1.0, "a": 2.0}) for i in range(3)]
    index, _ = make_index(core, [
        OperationRecord(workflow_id="wf", op_id=str(i + 1), seq=i, kind="call", name="svc",
                        request=canonical(m) or b"", request_digest="",
                        state=OperationState.COMPLETED, result=b"5", resolved_in=1)
        for i, m in enumerate(unsorted)])
    adapter = CountingAdapter(pydantic.TypeAdapter(Unsorted))
    for i, m in enumerate(unsorted):
        decision, _, _, payload = index.step(i, "call", "svc", adapter, Unsorted, INT, m)
        assert decision == core.WAIT and payload == canonical(m)
    assert adapter.dump_json_calls == 1

    inners = [Inner(label=str(i), weight=i) for i in range(3)]
    index, _ = make_index(core, [
        OperationRecord(workflow_id="wf", op_id=str(i + 1), seq=i, kind="call", name="svc",
                        request=canonical(m) or b"", request_digest="",
                        state=OperationState.COMPLETED, result=b"5", resolved_in=1)
        for i, m in enumerate(inners)])
    sorted_adapter = CountingAdapter(pydantic.TypeAdapter(Inner))
    for i, inner in enumerate(inners):
        assert index.step(i, "call", "svc", sorted_adapter, Inner, INT, inner)[0] == core.WAIT
    assert sorted_adapter.dump_json_calls == 3


class Upper(Serdes[str]):
    """A serdes whose adapter has no dump_json."""

    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        return data.lower() if isinstance(data, str) else data.decode().lower()


def test_a_request_adapter_without_dump_json_is_compared_canonically(core: ModuleType) -> None:
    """A Serdes' adapter has no dump_json: the request is compared by its canonical encoding
    (the first version of the fast path let the AttributeError escape, failing every replayed
    call of a service with a request serdes)."""
    adapter = SerdesAdapter(Upper(), pydantic.TypeAdapter(str))
    payload = orjson.dumps(adapter.dump_python("hello", mode="json"), option=orjson.OPT_SORT_KEYS)
    index, _ = make_index(core, history_of("call", "svc", payload))
    decision, _, rec, got = index.step(0, "call", "svc", adapter, None, INT, "hello")
    assert decision == core.WAIT and got == payload and rec is not None
