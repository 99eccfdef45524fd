"""Differential tests: the compiled twin and the pure twin agree on random inputs.

The pure twin is the reference; any difference in a result, an exception, a decision, a
future's state or a hook call is a bug in one of them.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue

from lambda_workflow.errors import ServiceError
from lambda_workflow.models import OperationRecord, OperationState

from .helpers import INT, SERVICE, Hooks, Req, error_bytes, new_loop, request_bytes

C: ModuleType = importlib.import_module("lambda_workflow._core._c")
PY: ModuleType = importlib.import_module("lambda_workflow._core._py")

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """``("ok", result)`` or ``("raise", exception type, message)``."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("raise", type(exc).__name__, str(exc))


def both(name: str, *args: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The outcome of ``name(*args)`` on the compiled twin and on the pure twin."""
    return outcome(getattr(C, name), *args), outcome(getattr(PY, name), *args)


# -- values ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=15,
)
ANY = pydantic.TypeAdapter(Any)
JSON: pydantic.TypeAdapter[JsonValue] = pydantic.TypeAdapter(JsonValue)


class Item(BaseModel):
    """A model with primitives, containers and optional fields."""

    qty: int
    name: str
    price: float
    tags: list[str] = []
    meta: dict[str, int] | None = None
    when: datetime.datetime | None = None


class Order(BaseModel):
    """A model nesting models, with a uuid and free-form JSON."""

    id: uuid.UUID
    items: list[Item]
    note: str | None = None
    extra: dict[str, JsonValue] = {}


@dataclasses.dataclass
class Pair:
    """A dataclass value."""

    right: bytes
    left: tuple[int, ...]


items = st.builds(
    Item, qty=st.integers(-(2**63), 2**63 - 1), name=st.text(), price=st.floats(),
    tags=st.lists(st.text(max_size=3), max_size=3),
    meta=st.none() | st.dictionaries(st.text(max_size=3), st.integers(-100, 100), max_size=3),
    when=st.none() | st.datetimes(timezones=st.none() | st.timezones()))
orders = st.builds(Order, id=st.uuids(), items=st.lists(items, max_size=3),
                   note=st.none() | st.text(),
                   extra=st.dictionaries(st.text(max_size=4), json_values, max_size=3))
pairs = st.builds(Pair, right=st.binary(max_size=8),
                  left=st.lists(st.integers(-5, 5), max_size=4).map(tuple))
typed_values = st.one_of(
    st.tuples(st.just(pydantic.TypeAdapter(Item)), items),
    st.tuples(st.just(pydantic.TypeAdapter(Order)), orders),
    st.tuples(st.just(pydantic.TypeAdapter(Pair)), pairs),
    st.tuples(st.just(pydantic.TypeAdapter(list[Item])), st.lists(items, max_size=3)),
    st.tuples(st.just(pydantic.TypeAdapter(datetime.date)), st.dates()),
)
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=8)


@SETTINGS
@given(json_values)
def test_encode_value_and_digest_agree_on_json(value: object) -> None:
    """encode_value, decode_value and digest give the same results for random JSON values."""
    for adapter in (ANY, JSON):
        enc_c, enc_py = both("encode_value", adapter, value)
        assert enc_c == enc_py
        if enc_py[0] == "ok":
            payload = enc_py[1]
            assert both("digest", payload)[0] == both("digest", payload)[1]
            assert both("decode_value", adapter, payload)[0] == both("decode_value", adapter,
                                                                     payload)[1]


@SETTINGS
@given(typed_values)
def test_encode_value_agrees_on_validated_values(adapter_value: tuple[Any, Any]) -> None:
    """encode_value and decode_value agree on values of models, dataclasses and dates."""
    adapter, value = adapter_value
    enc_c, enc_py = both("encode_value", adapter, value)
    assert enc_c == enc_py
    if enc_py[0] == "ok":
        dec_c, dec_py = both("decode_value", adapter, enc_py[1])
        assert dec_c == dec_py


@SETTINGS
@given(st.binary(max_size=64) | st.text().map(str.encode))
def test_digest_agrees(payload: bytes) -> None:
    """digest gives the same 32 hex characters on both twins."""
    d_c, d_py = both("digest", payload)
    assert d_c == d_py
    assert d_py[0] == "ok" and len(d_py[1]) == 32


@SETTINGS
@given(any_text, any_text, any_text)
def test_dedup_id_agrees(workflow_id: str, kind: str, key: str) -> None:
    """dedup_id agrees on any text, including text that cannot be encoded as UTF-8."""
    r_c, r_py = both("dedup_id", workflow_id, kind, key)
    assert r_c == r_py


@SETTINGS
@given(st.text(max_size=10), st.integers(0, 2**40))
def test_operation_id_agrees(scope: str, seq: int) -> None:
    """operation_id gives the same id for any scope and sequence number."""
    assert both("operation_id", scope, seq)[0] == both("operation_id", scope, seq)[1]


# -- replay decisions ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Op:
    """One recorded operation of a generated history."""

    state: str
    kind: str
    name: str
    n: int
    result: bytes | None
    resolved_in: int | None


ok_payloads = st.sampled_from([b"1", b"2", b"null", b'"x"', b"{bad"])
err_payloads = st.sampled_from([error_bytes(), error_bytes("E", "m", [1]), b"{}",
                                b'{"type":"T"}'])


@st.composite
def ops(draw: st.DrawFn, stage: int | None) -> Op:
    """A recorded operation in a random state and outcome; finished in ``stage`` if given,
    else in a random one."""
    state = draw(st.sampled_from(["pending", "completed", "failed"]))
    result = {"pending": st.none(), "completed": st.none() | ok_payloads,
              "failed": err_payloads}[state]
    resolved_in = stage if stage is not None else draw(st.none() | st.integers(0, 5))
    return Op(state=state, kind=draw(st.sampled_from(["call", "call", "step"])),
              name=draw(st.sampled_from(["svc", "svc", "other"])), n=draw(st.integers(0, 2)),
              result=draw(result), resolved_in=resolved_in)


staged_replies = st.one_of(st.tuples(st.just(True), ok_payloads),
                           st.tuples(st.just(False), err_payloads))

variants = st.sampled_from(["same"] * 6 + ["kind", "name", "request", "invalid"])
# Weighted towards what workflows do: await each call as it is made, or make a few and advance.
actions = st.one_of(
    st.tuples(st.just("call_await"), variants, st.booleans()),
    st.tuples(st.just("call_await"), variants, st.booleans()),
    st.tuples(st.just("step"), variants),
    st.tuples(st.just("call"), variants | st.sampled_from(["model", "not_a_service"])),
    st.tuples(st.just("advance")),
    st.tuples(st.just("advance")),
    st.tuples(st.just("await"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("settle_unreached")),
    st.tuples(st.just("seal")),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Op], dict[str, tuple[bool, bytes]], int,
                                        list[tuple[Any, ...]]]:
    """A history, this activation's staged replies, the activation number and driver
    actions."""
    size = draw(st.integers(0, 6))
    # Stages as a sequential workflow records them, in pairs (gather), or at random.
    layout = draw(st.sampled_from(["sequential", "pairs", "random"]))
    history = [draw(ops(seq + 1 if layout == "sequential" else seq // 2 + 1
                        if layout == "pairs" else None)) for seq in range(size)]
    staged: dict[str, tuple[bool, bytes]] = {}
    for seq, op in enumerate(history):
        # Mostly replies to pending calls (what the engine stages); sometimes a stray one.
        if draw(st.integers(0, 9)) < (7 if op.state == "pending" else 1):
            staged[str(seq + 1)] = draw(staged_replies)
    if draw(st.integers(0, 19)) == 0:
        staged["99"] = draw(staged_replies)
    activation = draw(st.integers(1, 7))
    return history, staged, activation, draw(st.lists(actions, max_size=14))


def records(history: list[Op]) -> list[OperationRecord]:
    """Fresh OperationRecords for a generated history."""
    return [OperationRecord(
        workflow_id="wf", op_id=str(seq + 1), seq=seq, kind=op.kind, name=op.name,
        request=request_bytes(op.n), request_digest="", state=OperationState(op.state),
        result=op.result, resolved_in=op.resolved_in) for seq, op in enumerate(history)]


def describe_future(future: Any) -> tuple[Any, ...]:
    """A future's state, comparable across twins."""
    if future.cancelled():
        return ("cancelled",)
    if not future.done():
        return ("pending", getattr(future, "seq", None))
    exc = future.exception()
    if exc is None:
        return ("result", future.result())
    if isinstance(exc, ServiceError):
        return ("service_error", exc.error_type, exc.message, exc.details, exc.service,
                exc.call_id, str(exc))
    return ("exception", type(exc).__name__, str(exc))


def describe_exception(exc: Exception) -> tuple[Any, ...]:
    """An exception's type and, for a mismatch, its fields."""
    if type(exc).__name__ == "ReplayMismatch":
        rec = exc.recorded  # type: ignore[attr-defined]
        return ("ReplayMismatch", exc.seq, exc.field, rec.op_id,  # type: ignore[attr-defined]
                exc.payload, str(exc), exc.advice)  # type: ignore[attr-defined]
    return (type(exc).__name__, str(exc))


class LoggedAdapter:
    """A response adapter that logs each payload it validates, so settle order is observed."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def validate_json(self, payload: bytes) -> object:
        self.log.append(("validate_json", payload))
        return INT.validate_json(payload)


class LoggedService:
    """The test service, with a logging response adapter."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.name = SERVICE.name
        self.request_adapter = SERVICE.request_adapter
        self.request_model = SERVICE.request_model
        self.response_adapter = LoggedAdapter(log)


def drive(core: ModuleType, history: list[Op], staged: dict[str, tuple[bool, bytes]],
          activation: int, script: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Run ``script`` against a fresh ReplayIndex of ``core``; return what was observed."""
    loop = new_loop()
    hooks = Hooks()
    index = core.ReplayIndex(records(history), staged, activation, loop, hooks)
    hooks.index = index
    service = LoggedService(hooks.calls)
    futures: list[Any] = []
    trace: list[tuple[Any, ...]] = [(len(index), index.new_allowed, index.final_stage)]
    for action in script:
        what = action[0]
        result: tuple[Any, ...] = ()
        try:
            if what in ("step", "call", "call_await"):
                seq = index.seq
                op = history[seq] if seq < len(history) else Op("pending", "call", "svc", 0,
                                                                None, None)
                variant = action[1]
                kind = "step" if variant == "kind" and op.kind == "call" else op.kind
                kind = "call" if variant == "kind" and op.kind == "step" else kind
                name = "renamed" if variant == "name" else op.name
                n = op.n + 1 if variant == "request" else op.n
                request: object = {"n": "not a number"} if variant == "invalid" else (
                    Req(n=n) if variant == "model" or what == "step" else {"n": n})
                if what == "step":
                    index.seq = seq + 1
                    decision, future, rec, payload = index.step(
                        seq, kind, name, service.request_adapter, Req,
                        service.response_adapter, request, service)
                    futures.append(future)
                    result = ("decision", decision, None if rec is None else rec.op_id, payload)
                elif variant == "not_a_service":
                    index.call_service(object, request, None)
                else:
                    futures.append(index.call_service(service, request, None))
                    result = ("called",)
                    if what == "call_await":
                        if action[2]:
                            loop.call_soon(lambda: None)
                        futures[-1].__await__()
                        loop.run_until_idle()
            elif what == "advance":
                result = ("advanced", index.advance())
            elif what == "await":
                waiting = [f for f in futures if getattr(f, "seq", -1) >= 0] or futures
                if waiting:
                    future = waiting[action[1] % len(waiting)]
                    if action[2]:
                        loop.call_soon(lambda: None)
                    future.__await__()
                    loop.run_until_idle()
                    result = ("awaited", futures.index(future))
            elif what == "settle_unreached":
                index.settle_unreached()
            elif what == "seal":
                index.sealed = True
        except Exception as exc:
            result = ("raised", *describe_exception(exc))
        trace.append((action, result, index.seq, list(index.pending), list(index.accepted),
                      sorted(index.consumed), sorted(index.waiting), bool(index.sealed),
                      index.new_allowed, index.final_stage,
                      [describe_future(f) for f in futures], list(hooks.calls)))
    return trace


@SETTINGS
@given(scenarios())
def test_replay_decisions_agree(scenario: tuple[list[Op], dict[str, tuple[bool, bytes]], int,
                                                list[tuple[Any, ...]]]) -> None:
    """Both twins make the same decisions, raise the same errors, resolve the same futures and
    call the same hooks for random histories and driver actions."""
    history, staged, activation, script = scenario
    assert drive(C, history, staged, activation, script) == drive(
        PY, history, staged, activation, script)


def test_drive_observes_decisions() -> None:
    """The differential driver sees decisions and hook calls (so agreement is not vacuous)."""
    history = [Op("completed", "call", "svc", 0, b"1", 1), Op("pending", "call", "svc", 1,
                                                              None, None)]
    trace = drive(PY, history, {"2": (True, b"5")}, 2,
                  [("step", "same"), ("await", 0, False), ("call", "same"), ("advance",),
                   ("call", "same"), ("step", "kind")])
    assert trace[1][1] == ("decision", PY.WAIT, "1", request_bytes(0))
    assert trace[2][-2][0] == ("result", 1)
    assert trace[4][-2][1] == ("result", 5)
    assert trace[5][-1] == [("validate_json", b"1"), ("validate_json", b"5"),
                            ("new_operation", 2, "call", "svc", b'{"n":0}', True)]
    assert trace[6][1] == ("decision", PY.NEW, None, request_bytes(0))
    mismatch = drive(PY, history, {}, 2, [("step", "name")])
    assert mismatch[1][1] == ("raised", "ReplayMismatch", 0, "name", "1", request_bytes(0),
                              "operation #1 differs from the history in its name",
                              PY.mismatch_advice("name", "call"))
