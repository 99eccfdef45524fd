"""What a "request differs" message says: never an empty diff. Field by field changes when the
values differ; when only the bytes differ, how (key order, formatting) and where."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow._runtime.history import request_difference
from lambda_workflow.errors import NonDeterminismError
from lambda_workflow.models import History
from lambda_workflow.testing import WorkflowTestRuntime, check_replay


def test_changed_added_and_removed_fields_are_listed_by_path() -> None:
    text = request_difference(b'{"a":1,"b":{"c":"x"},"d":true}',
                              b'{"a":2,"b":{"c":"y","e":null}}')
    assert text == ("a: recorded 1, now 2; b.c: recorded 'x', now 'y'; b.e: added None; "
                    "d: removed (was True)")


def test_list_items_are_compared_one_by_one() -> None:
    assert request_difference(b'{"xs":[1,2,3]}', b'{"xs":[1,5]}') == (
        "xs[1]: recorded 2, now 5; xs: recorded 3 items, now 2")


def test_a_value_of_another_json_type_differs_even_when_python_says_equal() -> None:
    """1 and 1.0, 1 and true compare equal in Python; as requests they are other bytes."""
    assert request_difference(b'{"n":1}', b'{"n":1.0}') == (
        "n: recorded 1 (integer), now 1.0 (number)")
    assert request_difference(b'[1]', b'[true]') == (
        "[0]: recorded 1 (integer), now True (boolean)")


def test_the_same_fields_in_another_key_order_name_the_object_and_both_orders() -> None:
    text = request_difference(b'{"args":[{"b":1,"a":2}],"attempt":1,"kwargs":{}}',
                              b'{"args":[{"a":2,"b":1}],"kwargs":{},"attempt":1}')
    assert text.startswith("the same fields, encoded differently: ")
    assert "the keys of the request are in another order: recorded args, attempt, kwargs; " \
           "now args, kwargs, attempt" in text
    assert "the keys of args[0] are in another order: recorded b, a; now a, b" in text
    assert "the bytes first differ at offset 11 (recorded 48 bytes, now 48)" in text


@pytest.mark.parametrize(("recorded", "new", "offset"), [
    (b'{"a": 1}', b'{"a":1}', 5),                      # whitespace
    (b'{"a":"\\u00e9"}', '{"a":"\u00e9"}'.encode(), 6),  # an escape against UTF-8
    (b'{"a":1e2}', b'{"a":100.0}', 6),                  # number spelling
])
def test_formatting_differences_give_the_offset_and_both_excerpts(
        recorded: bytes, new: bytes, offset: int) -> None:
    text = request_difference(recorded, new)
    assert text.startswith("the same fields in the same order, formatted differently "
                           "(whitespace, escapes or number spelling): the bytes first differ "
                           f"at offset {offset} (recorded {len(recorded)} bytes, now "
                           f"{len(new)}): recorded ")
    assert repr(recorded.decode()) in text


def test_bytes_that_are_not_json_or_are_identical_still_say_something() -> None:
    assert request_difference(b"{", b"{}").startswith("the recorded request is not valid JSON")
    assert request_difference(b"{}", b"{x").startswith("the new request is not valid JSON")
    assert request_difference(b"{}", b"{}") == "the bytes are identical (2 bytes)"
    assert "offset 5" in request_difference(b"[1,2]", b"[1,2] ")


Order = Service("order", dict[str, int], int)


@workflow
async def ordering(ctx: WorkflowContext[dict[str, int]]) -> int:
    return await ctx.call(Order, ctx.request)


def test_a_recorded_request_in_another_key_order_fails_the_replay_saying_so() -> None:
    """A history whose recorded request holds the same fields in another order (written by
    another encoder): NonDeterminismError names the order, not an empty diff."""
    with WorkflowTestRuntime() as rt:
        rt.implement(Order, lambda req: sum(req.values()))
        rt.start(ordering, {"b": 1, "a": 2}, workflow_id="o-1")
        rt.run_until_idle()
        history = rt.history("o-1")
    (call,) = history.operations
    assert call.request == b'{"a":2,"b":1}'
    call.request = b'{"b":1,"a":2}'
    check = check_replay(ordering, History(history.instance, [call]))
    assert not check.ok
    assert "the request differs from the recorded one: the same fields, encoded differently: " \
           "the keys of the request are in another order: recorded b, a; now a, b" \
           in check.message
    assert isinstance(check.error(), NonDeterminismError)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=4),
    max_leaves=12)


def _shuffled(value: object, rng: random.Random) -> object:
    """The same value with every object's keys in another (random) order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _encodings(value: object, seed: int) -> list[bytes]:
    """Encodings of one value: canonical, keys shuffled, and the standard library's
    (spaces, ASCII escapes)."""
    rng = random.Random(seed)
    return [orjson.dumps(value, option=orjson.OPT_SORT_KEYS),
            orjson.dumps(_shuffled(value, rng)),
            json.dumps(_shuffled(value, rng)).encode()]


@settings(max_examples=300, deadline=None)
@given(_json, _json, st.integers(0, 2**32), st.integers(0, 2), st.integers(0, 2))
def test_two_different_encodings_never_give_an_empty_description(
        a: object, b: object, seed: int, i: int, j: int) -> None:
    """Whatever two requests are, when their bytes differ the description says something;
    when they decode to the same fields it says they are encoded or formatted differently,
    with the offset where the bytes part."""
    recorded, new = _encodings(a, seed)[i], _encodings(b, seed + 1)[j]
    text = request_difference(recorded, new)
    assert text.strip()
    if recorded != new and orjson.dumps(orjson.loads(recorded), option=orjson.OPT_SORT_KEYS) \
            == orjson.dumps(orjson.loads(new), option=orjson.OPT_SORT_KEYS):
        assert text.startswith(("the same fields, encoded differently",
                                "the same fields in the same order, formatted differently"))
        assert "the bytes first differ at offset" in text
