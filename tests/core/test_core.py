"""The replay core's contract, checked on both twins through the ``core`` fixture."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.machinery
import re
from types import ModuleType
from typing import Any, Literal

import orjson
import pydantic
import pytest
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from lambda_workflow._core import _py
from lambda_workflow.errors import ServiceError

from .helpers import (
    INT,
    SERVICE,
    HookError,
    Req,
    error_bytes,
    make_index,
    new_loop,
    record,
    request_bytes,
    step,
)

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX64 = re.compile(r"[0-9a-f]{64}")


class Inner(BaseModel):
    """A nested model."""

    z: int
    a: str


class Outer(BaseModel):
    """A model whose fields are declared out of alphabetical order."""

    zeta: Inner
    alpha: list[int]
    mid: dict[str, int] | None = None


@dataclasses.dataclass
class Point:
    """A dataclass request type."""

    y: int
    x: int


# -- the compiled twin really is compiled ------------------------------------------------------

def test_compiled_twin_is_an_extension_module() -> None:
    """lambda_workflow._core._c is a built extension module, not a Python file."""
    mod = importlib.import_module("lambda_workflow._core._c")
    assert mod.__file__ is not None
    assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert mod.ReplayIndex is not _py.ReplayIndex
    assert isinstance(mod.__loader__, importlib.machinery.ExtensionFileLoader)


def test_twins_export_the_same_names(core: ModuleType) -> None:
    """Each twin exports exactly the pure twin's ``__all__``, and every name exists."""
    assert sorted(core.__all__) == sorted(_py.__all__)
    for name in _py.__all__:
        assert hasattr(core, name), name


def test_decision_constants(core: ModuleType) -> None:
    """NEW, PENDING, READY and WAIT are the integers 0 to 3, as in the pure twin."""
    assert (core.NEW, core.PENDING, core.READY, core.WAIT) == (0, 1, 2, 3)


# -- encoding, digests and ids ---------------------------------------------------------------

def test_encode_value_sorts_dict_keys(core: ModuleType) -> None:
    """A dict is encoded with its keys sorted, whatever its insertion order."""
    adapter = pydantic.TypeAdapter(dict[str, Any])
    a = core.encode_value(adapter, {"b": 1, "a": {"d": [1, 2], "c": None}})
    b = core.encode_value(adapter, {"a": {"c": None, "d": [1, 2]}, "b": 1})
    assert a == b == b'{"a":{"c":null,"d":[1,2]},"b":1}'


def test_encode_value_of_a_model_is_canonical(core: ModuleType) -> None:
    """A model is encoded in JSON mode with sorted keys at every level."""
    value = Outer(zeta=Inner(z=1, a="x"), alpha=[3, 1], mid={"q": 1, "b": 2})
    assert core.encode_value(pydantic.TypeAdapter(Outer), value) == (
        b'{"alpha":[3,1],"mid":{"b":2,"q":1},"zeta":{"a":"x","z":1}}')


def test_encode_value_of_a_dataclass(core: ModuleType) -> None:
    """A dataclass is encoded like a model, keys sorted."""
    assert core.encode_value(pydantic.TypeAdapter(Point), Point(y=2, x=1)) == b'{"x":1,"y":2}'


@pytest.mark.parametrize(("tp", "value", "expected"), [
    (int, 7, b"7"),
    (str, "h\u00e9", '"h\u00e9"'.encode()),
    (bool, True, b"true"),
    (float, 1.5, b"1.5"),
    (None, None, b"null"),
    (list[int], [3, 2], b"[3,2]"),
    (tuple[int, str], (1, "a"), b'[1,"a"]'),
])
def test_encode_value_of_primitives(core: ModuleType, tp: Any, value: object,
                                    expected: bytes) -> None:
    """Primitives, None and containers encode to their plain JSON."""
    assert core.encode_value(pydantic.TypeAdapter(tp), value) == expected


def test_encode_value_rejects_what_cannot_be_serialized(core: ModuleType) -> None:
    """A value the adapter cannot serialize raises rather than encoding something else."""
    with pytest.raises((PydanticSerializationError, TypeError, ValueError)):
        core.encode_value(pydantic.TypeAdapter(Any), object())


def test_decode_value_validates_into_the_type(core: ModuleType) -> None:
    """decode_value turns recorded bytes back into an instance of the adapter's type."""
    value = core.decode_value(pydantic.TypeAdapter(Outer),
                              b'{"alpha":[1],"zeta":{"a":"x","z":2}}')
    assert value == Outer(zeta=Inner(z=2, a="x"), alpha=[1])
    assert core.decode_value(pydantic.TypeAdapter(None), b"null") is None


def test_decode_value_round_trips_encode_value(core: ModuleType) -> None:
    """Decoding an encoded value gives the value back."""
    adapter = pydantic.TypeAdapter(Outer)
    value = Outer(zeta=Inner(z=1, a="x"), alpha=[3, 1], mid=None)
    assert core.decode_value(adapter, core.encode_value(adapter, value)) == value


def test_decode_value_rejects_invalid_payloads(core: ModuleType) -> None:
    """A payload that does not validate raises pydantic's ValidationError."""
    with pytest.raises(pydantic.ValidationError):
        core.decode_value(INT, b'"not a number"')
    with pytest.raises(pydantic.ValidationError):
        core.decode_value(INT, b"{not json")


def test_digest_known_value(core: ModuleType) -> None:
    """digest is BLAKE2b-128 in hex: a fixed input has a fixed digest."""
    assert core.digest(b'{"a":1,"b":2}') == "b48465408132d0bff24c5d5f94bfe758"


def test_digest_is_32_hex_and_input_sensitive(core: ModuleType) -> None:
    """Digests are 32 lowercase hex characters, equal for equal bytes, different otherwise."""
    d = core.digest(b"payload")
    assert HEX32.fullmatch(d)
    assert core.digest(b"payload") == d
    assert core.digest(b"payloae") != d
    assert HEX32.fullmatch(core.digest(b""))


@pytest.mark.parametrize(("scope", "seq", "expected"), [
    ("", 0, "1"), ("", 9, "10"), ("3", 0, "3.1"), ("3.2", 4, "3.2.5"),
])
def test_operation_id(core: ModuleType, scope: str, seq: int, expected: str) -> None:
    """The seq-th operation of a scope has id ``scope.(seq+1)``, or ``seq+1`` at the root."""
    assert core.operation_id(scope, seq) == expected


def test_dedup_id_known_value(core: ModuleType) -> None:
    """dedup_id is SHA-256 of ``kind NUL workflow_id NUL key`` in hex."""
    assert core.dedup_id("wf-1", "call", "k") == (
        "10249c006a20558a5fc0ddcc368a60c9a8e8d86fcffe9dbd688acc53a8844e54")


def test_dedup_id_is_deterministic_and_distinguishes_its_parts(core: ModuleType) -> None:
    """dedup_id is 64 hex chars, stable, and changes with the kind, the workflow or the key."""
    base = core.dedup_id("wf", "call", "1")
    assert HEX64.fullmatch(base)
    assert core.dedup_id("wf", "call", "1") == base
    others = {core.dedup_id("wf", "timer", "1"), core.dedup_id("wf2", "call", "1"),
              core.dedup_id("wf", "call", "2"), core.dedup_id("wfcall", "", "1")}
    assert base not in others
    assert len(others) == 4


# -- ReplayMismatch and match ----------------------------------------------------------------

def test_replay_mismatch_fields_and_message(core: ModuleType) -> None:
    """ReplayMismatch keeps seq, field, recorded and payload and names the 1-based operation."""
    rec = record(2)
    assert issubclass(core.ReplayMismatch, Exception)
    exc = core.ReplayMismatch(2, "name", rec, b"{}")
    assert (exc.seq, exc.field, exc.recorded, exc.payload) == (2, "name", rec, b"{}")
    assert str(exc) == "operation #3 differs from the history in its name"
    assert core.ReplayMismatch(0, "kind", rec).payload == b""


def test_match_returns_the_record_or_none(core: ModuleType) -> None:
    """match returns the recorded operation when it agrees, and None past the history."""
    recs = [record(0), record(1)]
    index, _ = make_index(core, recs)
    assert len(index) == 2
    assert index.match(1, "call", "svc", request_bytes(1)) is recs[1]
    assert index.match(2, "call", "other", b"anything") is None


@pytest.mark.parametrize(("kind", "name", "n", "field"), [
    ("step", "svc", 0, "kind"),
    ("call", "other", 0, "name"),
    ("call", "svc", 5, "request"),
    ("step", "other", 5, "kind"),
    ("call", "other", 5, "name"),
])
def test_match_mismatch_names_the_first_differing_field(core: ModuleType, kind: str, name: str,
                                                        n: int, field: str) -> None:
    """A differing kind, name or request raises ReplayMismatch for that field (in that order)."""
    rec = record(0)
    index, _ = make_index(core, [rec])
    payload = request_bytes(n)
    with pytest.raises(core.ReplayMismatch) as info:
        index.match(0, kind, name, payload)
    assert (info.value.seq, info.value.field) == (0, field)
    assert info.value.recorded is rec
    assert info.value.payload == payload


def test_match_compares_requests_as_bytes(core: ModuleType) -> None:
    """An equal JSON document with other bytes (key order, spacing) is a request mismatch."""
    rec = record(0)
    rec.request = b'{"a":1,"b":2}'
    index, _ = make_index(core, [rec])
    with pytest.raises(core.ReplayMismatch) as info:
        index.match(0, "call", "svc", b'{"b":2,"a":1}')
    assert info.value.field == "request"


# -- step decisions ------------------------------------------------------------------------

def small_history() -> list[Any]:
    """completed in stage 1, failed in stage 2, pending without reply, pending with a reply."""
    return [
        record(0, "completed", result=b"10", resolved_in=1),
        record(1, "failed", result=error_bytes("Boom", "no", {"k": 1}), resolved_in=2),
        record(2),
        record(3),
    ]


def test_step_of_an_operation_from_a_later_stage_waits(core: ModuleType) -> None:
    """A recorded outcome not delivered yet gives WAIT and an unresolved, waiting future."""
    index, hooks = make_index(core, small_history(), {"4": (True, b"40")}, activation=3)
    decision, future = step(index, 0)
    assert decision == core.WAIT
    assert isinstance(future, core.CallFuture)
    assert not future.done()
    assert future.seq == 0
    assert index.waiting == {0: future}
    assert hooks.calls == []


def test_step_of_a_delivered_outcome_is_ready(core: ModuleType) -> None:
    """After its stage was delivered, a recorded outcome gives READY and a resolved future."""
    index, _ = make_index(core, small_history(), activation=3)
    assert index.advance()
    decision, future = step(index, 0)
    assert decision == core.READY
    assert future.result() == 10
    assert future.seq == -1
    assert index.waiting == {}


def test_step_of_an_unanswered_call_is_pending(core: ModuleType) -> None:
    """A recorded call without a reply gives PENDING and joins ``pending``."""
    index, _ = make_index(core, small_history(), {"4": (True, b"40")}, activation=3)
    decision, future = step(index, 2)
    assert decision == core.PENDING
    assert not future.done()
    assert index.pending == ["3"]
    assert index.waiting == {}


def test_step_of_a_pending_call_with_a_staged_reply_waits(core: ModuleType) -> None:
    """A pending call whose reply arrived in this activation waits for the final stage."""
    index, _ = make_index(core, small_history(), {"4": (True, b"40")}, activation=3)
    decision, future = step(index, 3)
    assert decision == core.WAIT
    assert index.pending == []
    assert index.advance() and index.advance()
    assert not future.done()
    assert index.advance()
    assert future.result() == 40
    assert index.accepted == ["4"]


def test_step_past_the_history_is_new(core: ModuleType) -> None:
    """An operation the history does not have gives NEW, its payload and no record."""
    index, _ = make_index(core, small_history(), activation=3)
    decision, future, rec, payload = index.step(4, "call", "svc", SERVICE.request_adapter, Req,
                                                INT, {"n": 4})
    assert decision == core.NEW
    assert rec is None
    assert payload == b'{"n":4}'
    assert not future.done()
    assert index.pending == []


def test_step_raises_replay_mismatch(core: ModuleType) -> None:
    """step raises ReplayMismatch when the operation differs from the record."""
    index, _ = make_index(core, small_history(), activation=3)
    with pytest.raises(core.ReplayMismatch) as info:
        step(index, 1, name="other")
    assert info.value.field == "name"


def test_step_rejects_an_invalid_request(core: ModuleType) -> None:
    """A request that does not validate raises pydantic's ValidationError."""
    index, _ = make_index(core, small_history(), activation=3)
    with pytest.raises(pydantic.ValidationError):
        step(index, 0, request={"n": "x"})


class SpyAdapter:
    """A request adapter that counts validations."""

    def __init__(self) -> None:
        self.validated = 0

    def validate_python(self, value: object) -> object:
        self.validated += 1
        return SERVICE.request_adapter.validate_python(value)

    def dump_python(self, value: Any, mode: Literal["json", "python"]) -> object:
        return SERVICE.request_adapter.dump_python(value, mode=mode)


def test_step_validates_only_what_is_not_an_exact_model_instance(core: ModuleType) -> None:
    """An instance of exactly ``request_model`` is not validated again; a dict is."""
    spy = SpyAdapter()
    index, _ = make_index(core, [])
    index.step(0, "call", "svc", spy, Req, INT, Req(n=1))
    assert spy.validated == 0
    index.step(1, "call", "svc", spy, Req, INT, {"n": 1})
    assert spy.validated == 1
    index.step(2, "call", "svc", spy, None, INT, Req(n=1))
    assert spy.validated == 2


def test_step_sets_future_adapter_name_and_owner(core: ModuleType) -> None:
    """A recorded operation's future carries its response adapter, name and owner."""
    index, _ = make_index(core, small_history(), activation=3)
    _, future = step(index, 0)
    assert future.adapter is INT
    assert future.name == "svc"
    assert future.owner is SERVICE
    assert future.index is index


# -- the stage schedule ----------------------------------------------------------------------

class OrderAdapter:
    """A response adapter that records the payloads it validates, in order."""

    def __init__(self, log: list[bytes]) -> None:
        self.log = log

    def validate_json(self, payload: bytes) -> object:
        self.log.append(payload)
        return INT.validate_json(payload)


def test_advance_delivers_stages_oldest_first(core: ModuleType) -> None:
    """advance delivers the oldest stage first, whatever the order of the operations."""
    recs = [record(0, "completed", result=b"0", resolved_in=2),
            record(1, "completed", result=b"1", resolved_in=1)]
    index, _ = make_index(core, recs)
    _, f0 = step(index, 0)
    _, f1 = step(index, 1)
    assert index.advance()
    assert f1.done() and not f0.done()
    assert index.advance()
    assert f0.result() == 0
    assert not index.advance()


def test_advance_settles_a_stage_in_seq_order(core: ModuleType) -> None:
    """Within a stage, outcomes are settled in operation order, not in order of creation."""
    recs = [record(i, "completed", result=str(i).encode(), resolved_in=1) for i in range(3)]
    index, _ = make_index(core, recs)
    log: list[bytes] = []
    for seq in (2, 0, 1):
        index.step(seq, "call", "svc", SERVICE.request_adapter, Req, OrderAdapter(log),
                   Req(n=seq))
    assert index.advance()
    assert log == [b"0", b"1", b"2"]
    assert index.waiting == {}


def test_staged_replies_come_last(core: ModuleType) -> None:
    """This activation's replies are the last stage, after every recorded one."""
    recs = [record(0), record(1, "completed", result=b"1", resolved_in=5)]
    index, _ = make_index(core, recs, {"1": (True, b"7")}, activation=2)
    _, f0 = step(index, 0)
    _, f1 = step(index, 1)
    assert index.advance()
    assert f1.result() == 1 and not f0.done()
    assert index.advance()
    assert f0.result() == 7
    assert not index.advance()


def test_new_allowed_and_final_stage_flip_with_the_schedule(core: ModuleType) -> None:
    """new_allowed turns on at the last recorded stage, final_stage with the staged replies."""
    recs = [record(0, "completed", result=b"0", resolved_in=1),
            record(1, "completed", result=b"1", resolved_in=2), record(2)]
    index, _ = make_index(core, recs, {"3": (True, b"3")}, activation=3)
    seen = []
    while True:
        seen.append((index.new_allowed, index.final_stage))
        if not index.advance():
            break
    assert seen == [(False, False), (False, False), (True, False), (True, True)]


def test_without_staged_replies_there_is_no_final_stage(core: ModuleType) -> None:
    """Without staged replies new operations are allowed after the last recorded stage and
    final_stage never turns on."""
    index, _ = make_index(core, [record(0, "completed", result=b"0", resolved_in=1)])
    assert (index.new_allowed, index.final_stage) == (False, False)
    assert index.advance()
    assert (index.new_allowed, index.final_stage) == (True, False)
    assert not index.advance()
    assert (index.new_allowed, index.final_stage) == (True, False)


def test_an_empty_history_allows_new_operations_at_once(core: ModuleType) -> None:
    """With no history and no replies, new operations are allowed and there is nothing to
    deliver."""
    index, _ = make_index(core, [])
    assert len(index) == 0
    assert index.new_allowed
    assert not index.final_stage
    assert not index.advance()


def test_outcomes_recorded_by_this_activation_join_the_final_stage(core: ModuleType) -> None:
    """Outcomes recorded by a crashed run of this activation are delivered with its staged
    replies, and new operations are allowed before that stage."""
    recs = [record(0, "completed", result=b"0", resolved_in=1),
            record(1, "completed", result=b"1", resolved_in=4), record(2)]
    index, _ = make_index(core, recs, {"3": (True, b"3")}, activation=4)
    futures = [step(index, i)[1] for i in range(3)]
    assert index.advance()
    assert index.new_allowed and not index.final_stage
    assert not futures[1].done()
    assert index.advance()
    assert index.final_stage
    assert [f.result() for f in futures] == [0, 1, 3]
    assert not index.advance()


def test_a_record_without_resolved_in_is_stage_zero(core: ModuleType) -> None:
    """A finished record without ``resolved_in`` belongs to stage 0, before stage 1."""
    recs = [record(0, "completed", result=b"0", resolved_in=1),
            record(1, "completed", result=b"1", resolved_in=None)]
    index, _ = make_index(core, recs)
    _, f0 = step(index, 0)
    _, f1 = step(index, 1)
    assert index.advance()
    assert f1.done() and not f0.done()


# -- on_await --------------------------------------------------------------------------------

def test_on_await_delivers_the_only_waiting_future_at_once(core: ModuleType) -> None:
    """Awaiting the only waiting future, whose stage is next, on an idle loop resolves it now."""
    index, _ = make_index(core, small_history(), activation=3)
    _, future = step(index, 0)
    future.__await__()
    assert future.result() == 10
    assert future.seq == -1
    assert index.waiting == {}
    assert index.advance()  # stage 2 is next; stage 1 was consumed by the early delivery
    assert not index.advance()


def test_on_await_through_a_task(core: ModuleType) -> None:
    """A task awaiting its only call gets the outcome without the driver calling advance."""
    loop = new_loop()
    index, _ = make_index(core, small_history(), activation=3, loop=loop)

    async def body() -> int:
        _, future = step(index, 0)
        value: int = await future
        return value

    task = loop.create_task(body())
    loop.run_until_idle()
    assert task.result() == 10


def test_on_await_waits_when_another_future_waits(core: ModuleType) -> None:
    """With two waiting futures nothing is delivered early."""
    index, _ = make_index(core, small_history(), activation=3)
    _, f0 = step(index, 0)
    _, f1 = step(index, 1)
    f0.__await__()
    assert not f0.done() and not f1.done()
    assert set(index.waiting) == {0, 1}


def test_on_await_waits_when_its_stage_is_not_next(core: ModuleType) -> None:
    """A future whose stage is not the next one is not delivered early."""
    index, _ = make_index(core, small_history(), activation=3)
    _, f1 = step(index, 1)
    index.on_await(f1)
    assert not f1.done()
    assert not index.new_allowed


def test_on_await_waits_when_a_task_is_runnable(core: ModuleType) -> None:
    """A ready callback on the loop (another runnable task) prevents early delivery."""
    loop = new_loop()
    index, _ = make_index(core, small_history(), activation=3, loop=loop)
    _, f0 = step(index, 0)
    loop.call_soon(lambda: None)
    index.on_await(f0)
    assert not f0.done()
    loop.run_until_idle()
    index.on_await(f0)
    assert f0.result() == 10


def test_on_await_ignores_a_delivered_future(core: ModuleType) -> None:
    """Awaiting a future that is not waiting changes nothing."""
    index, _ = make_index(core, small_history(), activation=3)
    assert index.advance()
    _, f0 = step(index, 0)
    _, f1 = step(index, 1)
    index.on_await(f0)
    assert not f1.done()
    assert index.waiting == {1: f1}


def test_on_await_after_the_schedule_ends_does_nothing(core: ModuleType) -> None:
    """Once every stage was delivered, on_await delivers nothing."""
    index, _ = make_index(core, [record(0, "completed", result=b"0", resolved_in=1)])
    assert index.advance()
    fut = core.CallFuture(index, index.loop)
    fut.seq = 0
    index.waiting[0] = fut
    index.on_await(fut)
    assert not fut.done()


# -- settle ----------------------------------------------------------------------------------

def test_settle_of_a_completed_record_sets_the_value(core: ModuleType) -> None:
    """A completed record resolves the future with its validated value."""
    index, _ = make_index(core, [])
    fut = core.CallFuture(index, index.loop)
    fut.adapter = pydantic.TypeAdapter(Inner)
    index.settle(record(0, "completed", result=b'{"z":1,"a":"x"}', resolved_in=1), fut)
    assert fut.result() == Inner(z=1, a="x")
    assert index.accepted == []


def test_settle_of_a_completed_record_without_result_is_null(core: ModuleType) -> None:
    """A completed record with no result bytes decodes as JSON null."""
    index, _ = make_index(core, [])
    fut = core.CallFuture(index, index.loop)
    fut.adapter = pydantic.TypeAdapter(None)
    index.settle(record(0, "completed", resolved_in=1), fut)
    assert fut.done() and fut.result() is None


def test_settle_of_a_failed_record_raises_service_error(core: ModuleType) -> None:
    """A failed record resolves the future with a ServiceError carrying the recorded error."""
    index, _ = make_index(core, [])
    fut = core.CallFuture(index, index.loop)
    fut.adapter = INT
    fut.name = "svc"
    index.settle(record(4, "failed", result=error_bytes("Boom", "no", {"k": [1]}),
                        resolved_in=1), fut)
    exc = fut.exception()
    assert isinstance(exc, ServiceError)
    assert (exc.error_type, exc.message, exc.details, exc.service, exc.call_id) == (
        "Boom", "no", {"k": [1]}, "svc", "5")


def test_settle_of_a_bare_error_uses_defaults(core: ModuleType) -> None:
    """An error object without type or message gives ServiceError("Error", "")."""
    index, _ = make_index(core, [])
    fut = core.CallFuture(index, index.loop)
    fut.name = "svc"
    index.settle(record(0, "failed", result=b"{}", resolved_in=1), fut)
    exc = fut.exception()
    assert isinstance(exc, ServiceError)
    assert (exc.error_type, exc.message, exc.details) == ("Error", "", None)


def test_settle_of_staged_replies_accepts_them(core: ModuleType) -> None:
    """A staged ok reply sets the value, a staged error the ServiceError; both are accepted."""
    recs = [record(0), record(1)]
    index, _ = make_index(core, recs, {"1": (True, b"5"), "2": (False, error_bytes("E", "m"))})
    f0 = core.CallFuture(index, index.loop)
    f0.adapter = INT
    f1 = core.CallFuture(index, index.loop)
    f1.adapter = INT
    f1.name = "svc"
    index.settle(recs[0], f0)
    index.settle(recs[1], f1)
    assert f0.result() == 5
    err = f1.exception()
    assert isinstance(err, ServiceError)
    assert (err.error_type, err.message, err.call_id) == ("E", "m", "2")
    assert index.accepted == ["1", "2"]
    assert index.consumed == {"1", "2"}


def test_staged_replies_do_not_apply_to_finished_records(core: ModuleType) -> None:
    """A staged entry for a record that is no longer pending is ignored in favour of the
    record."""
    rec = record(0, "completed", result=b"1", resolved_in=1)
    index, _ = make_index(core, [rec], {"1": (True, b"2")})
    fut = core.CallFuture(index, index.loop)
    fut.adapter = INT
    index.settle(rec, fut)
    assert fut.result() == 1
    assert index.accepted == []
    assert index.consumed == set()


def test_invalid_recorded_reply_calls_invalid_reply(core: ModuleType) -> None:
    """A recorded value that does not validate goes to hooks.invalid_reply with no staged
    payload, and the future stays unresolved."""
    rec = record(0, "completed", result=b'"x"', resolved_in=1)
    index, hooks = make_index(core, [rec])
    _, fut = step(index, 0)
    assert index.advance()
    assert not fut.done()
    assert hooks.calls == [("invalid_reply", "1", "svc", None, 1)]
    assert index.accepted == []


def test_invalid_staged_reply_calls_invalid_reply(core: ModuleType) -> None:
    """A staged value that does not validate goes to hooks.invalid_reply with its payload and
    is not accepted."""
    index, hooks = make_index(core, [record(0)], {"1": (True, b'"x"')})
    _, fut = step(index, 0)
    assert index.advance()
    assert not fut.done()
    assert hooks.calls == [("invalid_reply", "1", "svc", b'"x"', 1)]
    assert index.accepted == []
    assert index.consumed == {"1"}


# -- settle_unreached ------------------------------------------------------------------------

def test_settle_unreached_accepts_replies_never_delivered(core: ModuleType) -> None:
    """Staged replies to calls the replay never reached are accepted, once each."""
    recs = [record(0), record(1), record(2)]
    index, hooks = make_index(core, recs, {"1": (True, b"1"), "3": (False, error_bytes())})
    index.settle_unreached()
    assert index.accepted == ["1", "3"]
    index.settle_unreached()
    assert index.accepted == ["1", "3"]
    assert hooks.calls == []


def test_settle_unreached_skips_delivered_replies(core: ModuleType) -> None:
    """A staged reply already delivered is not accepted a second time."""
    recs = [record(0), record(1)]
    index, _ = make_index(core, recs, {"1": (True, b"1"), "2": (True, b"2")})
    _, f0 = step(index, 0)
    assert index.advance()
    assert f0.result() == 1
    index.settle_unreached()
    assert index.accepted == ["1", "2"]


def test_settle_unreached_validates_replies_to_waiting_calls(core: ModuleType) -> None:
    """A waiting call's undelivered reply is validated: invalid ones go to invalid_reply,
    errors and valid values are accepted."""
    recs = [record(0), record(1), record(2)]
    staged = {"1": (True, b'"x"'), "2": (True, b"2"), "3": (False, b"{}")}
    index, hooks = make_index(core, recs, staged)
    futures = [step(index, i)[1] for i in range(3)]
    index.settle_unreached()
    assert index.accepted == ["2", "3"]
    assert hooks.calls == [("invalid_reply", "1", "svc", b'"x"', 1)]
    assert not any(f.done() for f in futures)


# -- call_service ------------------------------------------------------------------------------

def test_call_service_records_a_new_operation(core: ModuleType) -> None:
    """A call past the history calls hooks.new_operation and appends its id to pending."""
    index, hooks = make_index(core, [record(0)])
    index.call_service(SERVICE, Req(n=0), None)
    fut = index.call_service(SERVICE, {"n": 1}, None)
    assert isinstance(fut, core.CallFuture)
    assert not fut.done()
    assert hooks.calls == [("new_operation", 1, "call", "svc", b'{"n":1}', True)]
    assert index.pending == ["1", "2"]
    assert index.seq == 2


def test_call_service_replays_a_recorded_outcome(core: ModuleType) -> None:
    """A recorded call returns its future and records nothing new."""
    index, hooks = make_index(core, small_history(), activation=3)
    fut = index.call_service(SERVICE, Req(n=0), None)
    assert index.waiting == {0: fut}
    assert index.advance()
    assert fut.result() == 10
    assert hooks.calls == []


def test_call_service_when_sealed_returns_a_cancelled_future(core: ModuleType) -> None:
    """After suspension a call returns a cancelled future and records nothing."""
    index, hooks = make_index(core, [])
    index.sealed = True
    fut = index.call_service(SERVICE, Req(n=0), None)
    assert fut.cancelled()
    assert index.seq == 0
    assert index.pending == []
    assert hooks.calls == []


def test_call_service_with_a_non_service(core: ModuleType) -> None:
    """A first argument without a service's attributes raises hooks.not_a_service's error."""
    index, hooks = make_index(core, [])
    with pytest.raises(HookError, match="not_a_service"):
        index.call_service("svc", Req(n=0), None)
    assert hooks.calls == [("not_a_service", "'svc'")]
    assert index.seq == 0


def test_call_service_with_an_invalid_request(core: ModuleType) -> None:
    """A request that does not validate raises hooks.bad_request's error."""
    index, hooks = make_index(core, [])
    with pytest.raises(HookError, match="bad_request"):
        index.call_service(SERVICE, {"n": "many"}, None)
    assert hooks.calls == [("bad_request", "ValidationError", "svc")]
    assert index.pending == []


def test_call_service_with_a_mismatch(core: ModuleType) -> None:
    """A call that differs from the record raises hooks.mismatch's error."""
    index, hooks = make_index(core, [record(0)])
    with pytest.raises(HookError, match="mismatch"):
        index.call_service(SERVICE, Req(n=3), None)
    assert hooks.calls == [("mismatch", 0, "request", "1", b'{"n":3}', "call", "svc")]


def test_call_service_when_new_operation_raises(core: ModuleType) -> None:
    """An error from hooks.new_operation propagates and the id is not added to pending."""
    index, hooks = make_index(core, [])
    hooks.raise_on_new = True
    with pytest.raises(HookError, match="new_operation"):
        index.call_service(SERVICE, Req(n=0), None)
    assert index.pending == []


def test_call_future_of_a_new_call_does_not_notify_the_index(core: ModuleType) -> None:
    """Awaiting a future with no seq (a new call) does not touch the schedule."""
    loop = new_loop()
    index, _ = make_index(core, [record(0, "completed", result=b"0", resolved_in=1)], loop=loop)
    fut = core.CallFuture(index, loop)
    it = fut.__await__()
    assert next(it) is fut
    assert not index.new_allowed


def test_awaiting_a_replayed_failure_raises_service_error(core: ModuleType) -> None:
    """A workflow task awaiting a recorded failure gets the ServiceError at its await."""
    loop = new_loop()
    recs = [record(0, "failed", result=error_bytes("Nope", "m"), resolved_in=1)]
    index, _ = make_index(core, recs, loop=loop)

    async def body() -> str:
        try:
            await index.call_service(SERVICE, Req(n=0), None)
        except ServiceError as exc:
            return exc.error_type
        return "no error"

    task = loop.create_task(body())
    loop.run_until_idle()
    assert task.result() == "Nope"


def test_gather_waits_for_advance(core: ModuleType) -> None:
    """Two concurrent calls are delivered by advance, not early, in stage order."""
    loop = new_loop()
    recs = [record(0, "completed", result=b"0", resolved_in=2),
            record(1, "completed", result=b"1", resolved_in=1)]
    index, _ = make_index(core, recs, loop=loop)
    order: list[int] = []

    async def one(n: int) -> None:
        order.append(await index.call_service(SERVICE, Req(n=n), None))

    async def body() -> None:
        await asyncio.gather(one(0), one(1))

    task = loop.create_task(body())
    loop.run_until_idle()
    assert order == []
    while index.advance():
        loop.run_until_idle()
    assert task.done()
    assert order == [1, 0]


def test_error_payload_round_trip(core: ModuleType) -> None:
    """An error recorded with orjson comes back with its details intact."""
    details = {"nested": {"b": 1, "a": [None, True]}}
    index, _ = make_index(core, [])
    fut = core.CallFuture(index, index.loop)
    index.settle(record(0, "failed", result=orjson.dumps(
        {"type": "T", "message": "m", "details": details}), resolved_in=0), fut)
    exc = fut.exception()
    assert isinstance(exc, ServiceError)
    assert exc.details == details


def test_match_refuses_a_negative_seq(core: ModuleType) -> None:
    """A negative operation number is a ValueError on both twins (never an unchecked read)."""
    index, _ = make_index(core, [record(0), record(1)])
    with pytest.raises(ValueError, match="seq must be >= 0"):
        index.match(-1, "call", "svc", request_bytes(1))


def test_a_staged_reply_for_an_unknown_operation_does_not_break_advance(
        core: ModuleType) -> None:
    """A final stage that holds no known operation is delivered as empty, not a KeyError."""
    index, _ = make_index(core, [], {"9": (True, b"1")}, activation=1)
    assert index.advance() is True
    assert index.advance() is False


def test_a_future_without_an_index_raises_instead_of_crashing(core: ModuleType) -> None:
    """Awaiting a hand-made CallFuture whose index is not a ReplayIndex raises an exception
    on both twins (the compiled one checks its cast)."""
    future = core.CallFuture(None, new_loop())
    future.seq = 0
    with pytest.raises((TypeError, AttributeError)):
        future.__await__()
