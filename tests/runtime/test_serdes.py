"""Custom serialization (``Serdes``) on every operation that records a value (issue 12 item 1),
on the embedded runtime.

Each serdes here changes the value it round-trips (upper-cases, rounds, drops a field), so a
test can tell whether the workflow saw the value before or after the round trip. Every test
records what the workflow saw on each activation: the first run and every replay must see
the same, round-tripped, value."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest

from lambda_workflow import (
    ChildContextError,
    InvalidRequestError,
    NonDeterminismError,
    Serdes,
    Service,
    StepError,
    WorkflowContext,
    WorkflowFailedError,
    step,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime

SEEN: list[Any] = []
TOKENS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()
    TOKENS.clear()


class Upper(Serdes[str]):
    """Records a string upper-cased: the value changes on the round trip."""

    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        assert isinstance(data, str)
        return data


class Rounded(Serdes[float]):
    """Records a float with two decimals, as bytes."""

    def serialize(self, value: float) -> bytes:
        return f"{value:.2f}".encode()

    def deserialize(self, data: str | bytes) -> float:
        assert isinstance(data, bytes)
        return float(data)


class Card(pydantic.BaseModel):
    holder: str
    number: str | None = None


class NoNumber(Serdes[Card]):
    """Drops the card number: what is recorded never holds it."""

    def serialize(self, value: Card) -> str:
        return value.holder

    def deserialize(self, data: str | bytes) -> Card:
        return Card(holder=str(data))


class Wrapped(Serdes[Any]):
    """parallel 8.15's serdes: ``{"wrapped": v}`` on the way in, ``v`` on the way out."""

    def serialize(self, value: Any) -> str:
        return orjson.dumps({"wrapped": value}).decode()

    def deserialize(self, data: str | bytes) -> Any:
        return orjson.loads(data)["wrapped"]


class Broken(Serdes[str]):
    """Fails to serialize."""

    def serialize(self, value: str) -> str:
        raise ValueError(f"cannot write {value!r}")

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


class Unreadable(Serdes[str]):
    """Writes what it cannot read."""

    def serialize(self, value: str) -> str:
        return value

    def deserialize(self, data: str | bytes) -> str:
        raise ValueError("unreadable")


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(*workflows)
    return rt


def _results(rt: LocalRuntime, workflow_id: str) -> dict[str, bytes | None]:
    return {op.name: op.result for op in rt.history(workflow_id).operations}


# -- steps (step 1.6) ------------------------------------------------------------------------

@step(serdes=Upper())
def shout(text: str) -> str:
    return text


@step(serdes=Rounded())
def third() -> float:
    return 1 / 3


@step(serdes=NoNumber())
def read_card() -> Card:
    return Card(holder="ana", number="4111")


@workflow
async def steps(ctx: WorkflowContext[str]) -> list[Any]:
    seen = [await ctx.step(shout, ctx.request), await ctx.step(third),
            await ctx.step(read_card)]
    SEEN.append(seen)
    await ctx.sleep(10)  # a replay follows
    return seen


def test_a_step_result_is_round_tripped_on_the_first_run_as_on_replay() -> None:
    """step 1.6: the first run returns the value after serialize and deserialize, the
    replay returns the same value from the recorded bytes."""
    with _runtime(steps) as rt:
        handle = rt.start(steps, "hello world", workflow_id="s1")
        rt.run_until_idle()
        first = ["HELLO WORLD", 0.33, Card(holder="ana")]
        assert [first, first] == SEEN
        assert handle.result() == ["HELLO WORLD", 0.33, {"holder": "ana", "number": None}]
        recorded = _results(rt, "s1")
    assert orjson.loads(recorded["shout"] or b"") == {"serdes": "Upper", "text": "HELLO WORLD"}
    assert orjson.loads(recorded["third"] or b"") == {"serdes": "Rounded", "base64": "MC4zMw=="}
    assert b"4111" not in (recorded["read_card"] or b"")


# -- child contexts (child 3.14) ---------------------------------------------------------------

async def echo(ctx: WorkflowContext[Any], text: str) -> str:
    return await ctx.step(step(name="echo")(lambda: text))


@workflow
async def in_context(ctx: WorkflowContext[str]) -> str:
    value = await ctx.run_in_child_context(echo, ctx.request, name="ctx", serdes=Upper())
    SEEN.append(value)
    await ctx.sleep(10)
    return value


def test_a_child_context_result_is_round_tripped() -> None:
    """child 3.14: the context's result is recorded as the serdes wrote it; the first run
    and the replay (which does not run the body) both see the serdes's value."""
    with _runtime(in_context) as rt:
        handle = rt.start(in_context, "hello child", workflow_id="c1")
        rt.run_until_idle()
        assert handle.result() == "HELLO CHILD"
        assert SEEN == ["HELLO CHILD", "HELLO CHILD"]
        recorded = _results(rt, "c1")
    assert orjson.loads(recorded["echo"] or b"") == "hello child"
    assert orjson.loads(recorded["ctx"] or b"") == {"v": {"serdes": "Upper",
                                                          "text": "HELLO CHILD"}}


# -- parallel and map items (parallel 8.15, map 9.14) ---------------------------------------

@workflow
async def batches(ctx: WorkflowContext[None]) -> dict[str, list[Any]]:
    async def x() -> str:
        return "x"

    async def y() -> str:
        return "y"

    async def up(item: str) -> str:
        return item

    branches = await ctx.parallel([x, y], max_concurrency=1, item_serdes=Wrapped())
    items = await ctx.map(["x", "y"], up, max_concurrency=1, item_serdes=Upper())
    seen = {"parallel": branches.values(), "map": items.values()}
    SEEN.append(seen)
    await ctx.sleep(10)
    return seen


def test_batch_item_values_are_round_tripped() -> None:
    """parallel 8.15 and map 9.14: each branch's and item's value is recorded as its
    item_serdes wrote it and read back through it, on the first run as on replay."""
    with _runtime(batches) as rt:
        handle = rt.start(batches, None, workflow_id="b1")
        rt.run_until_idle()
        expected = {"parallel": ["x", "y"], "map": ["X", "Y"]}
        assert handle.result() == expected
        assert [expected, expected] == SEEN
        ops = rt.history("b1").operations
    contexts = [orjson.loads(op.result or b"")["v"] for op in ops if op.kind == "context"]
    assert contexts == [{"serdes": "Wrapped", "text": '{"wrapped":"x"}'},
                        {"serdes": "Wrapped", "text": '{"wrapped":"y"}'},
                        {"serdes": "Upper", "text": "X"}, {"serdes": "Upper", "text": "Y"}]


def test_item_serdes_on_a_flat_batch_is_refused_before_anything_runs() -> None:
    @workflow
    async def flat(ctx: WorkflowContext[None]) -> None:
        async def one(item: int) -> int:
            return item

        await ctx.map([1], one, flat=True, item_serdes=Upper())  # type: ignore[arg-type]

    with _runtime(flat) as rt:
        handle = rt.start(flat, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError, match=r"item_serdes.*flat"):
            handle.result()
        assert handle.history().operations == []


# -- wait_for_condition (wait_for_condition 6.11) ------------------------------------------

class Doubled(Serdes[str]):
    """Records the state twice over ("x" as "x|x") and reads back the first half: not the
    identity on the recorded bytes, the identity on the value."""

    def serialize(self, value: str) -> str:
        return f"{value}|{value}"

    def deserialize(self, data: str | bytes) -> str:
        return str(data).split("|")[0]


class Trimmed(Serdes[str]):
    """Keeps at most 3 characters: changes the state."""

    def serialize(self, value: str) -> str:
        return value[:3]

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


@workflow
async def polling(ctx: WorkflowContext[str]) -> str:
    def check(state: str) -> str:
        SEEN.append(state)
        return state + "x"

    serdes = Doubled() if ctx.request == "doubled" else Trimmed()
    return await ctx.wait_for_condition(
        check, "", lambda state, attempt: None if attempt >= 4 else 1.0, name="poll",
        serdes=serdes)


def test_wait_for_condition_state_is_round_tripped_across_suspensions() -> None:
    """wait_for_condition 6.11: each check's state is recorded by the serdes; the next
    check (after a suspension) sees it decoded; a serdes that changes the state changes it
    the same way on the first run and on every replay."""
    with _runtime(polling) as rt:
        doubled = rt.start(polling, "doubled", workflow_id="w1")
        trimmed = rt.start(polling, "trimmed", workflow_id="w2")
        rt.run_until_idle()
        assert doubled.result() == "xxxx"
        assert trimmed.result() == "xxx"
        states = [orjson.loads(op.result or b"")["text"] for op in
                  rt.history("w1").operations if op.kind == "step"]
    assert states == ["x|x", "xx|xx", "xxx|xxx", "xxxx|xxxx"]
    # each check runs once (replays return recorded states): the trimmed state stays at 3
    assert SEEN.count("xxx") == 2 and "xxxx" not in SEEN[4:]


# -- callbacks (callback 4.15, 4.16) ------------------------------------------------------------

class Count(Serdes[int]):
    """callback 4.16: the completion's JSON text parsed as a number."""

    def serialize(self, value: int) -> str:
        return str(value)

    def deserialize(self, data: str | bytes) -> int:
        return int(data)


@workflow
async def counted(ctx: WorkflowContext[None]) -> dict[str, int]:
    cb = ctx.create_callback("count", int, serdes=Count())
    TOKENS["count"] = cb.token
    count = await cb
    SEEN.append(count)
    await ctx.sleep(10)
    return {"count": count, "doubled": count * 2}


def test_a_callback_payload_is_read_by_its_serdes() -> None:
    """callback 4.16: the deserializer receives the completion's JSON text; a replay reads
    the recorded completion the same way."""
    with _runtime(counted) as rt:
        handle = rt.start(counted, None)
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["count"], 42)
        rt.run_until_idle()
        assert handle.result() == {"count": 42, "doubled": 84}
        assert SEEN == [42, 42]


@workflow
async def counted_badly(ctx: WorkflowContext[None]) -> int:
    async def send(token: str) -> None:
        TOKENS["bad"] = token

    return await ctx.wait_for_callback("bad", send, int, serdes=Count())


def test_a_callback_payload_its_serdes_cannot_read_is_dead_lettered_never_recorded() -> None:
    """A completion the serdes cannot read is rejected like a reply of the wrong type: the
    message is dead-lettered with the reason (naming the callback and the serdes), nothing is
    recorded and the callback still waits."""
    with _runtime(counted_badly) as rt:
        handle = rt.start(counted_badly, None)
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["bad"], "forty-two")
        rt.run_until_idle(skip_time=False)
        assert handle.status().value == "running"
        [callback] = [op for op in handle.history().operations if op.kind == "callback"]
        assert callback.result is None
        [dead] = rt.dead_letters()
    assert "callback 'bad'" in dead.reason
    assert "serdes 'Count' could not deserialize '\"forty-two\"': ValueError" in dead.reason


# -- calls (invoke 5.15, 5.16) ----------------------------------------------------------------

shouting = Service("shouting", str, str, request_serdes=Upper(), response_serdes=Upper())
RECEIVED: list[str] = []


@workflow
async def calling(ctx: WorkflowContext[str]) -> str:
    reply = await ctx.call(shouting, ctx.request)
    SEEN.append(reply)
    await ctx.sleep(10)
    return reply


def test_call_requests_and_replies_go_through_the_service_serdes() -> None:
    """invoke 5.15: the request is recorded and sent as the request serdes wrote it, and
    the service reads it back with it; invoke 5.16: the reply is read by the response serdes
    on the first run and on replay."""
    RECEIVED.clear()

    async def impl(text: str) -> str:
        RECEIVED.append(text)
        return text + " back"

    with _runtime(calling) as rt:
        rt.implement(shouting, impl)
        handle = rt.start(calling, "hello", workflow_id="k1")
        rt.run_until_idle()
        assert RECEIVED == ["HELLO"]
        assert handle.result() == "HELLO BACK"
        assert SEEN == ["HELLO BACK", "HELLO BACK"]
        [call] = [op for op in rt.history("k1").operations if op.kind == "call"]
    assert orjson.loads(call.request) == {"serdes": "Upper", "text": "HELLO"}
    assert orjson.loads(call.result or b"") == {"serdes": "Upper", "text": "HELLO BACK"}


broken_service = Service("broken", str, str, request_serdes=Broken())


@workflow
async def calling_broken(ctx: WorkflowContext[None]) -> str:
    try:
        return await ctx.call(broken_service, "secret")
    except InvalidRequestError as exc:
        return str(exc)


def test_a_request_the_serdes_cannot_write_is_an_invalid_request_naming_the_service() -> None:
    with _runtime(calling_broken) as rt:
        handle = rt.start(calling_broken, None)
        rt.run_until_idle()
        message = handle.result()
        assert "'broken'" in message
        assert "serdes 'Broken' could not serialize the value: ValueError" in message
        assert handle.history().operations == []


# -- child workflows -------------------------------------------------------------------------

@workflow(serdes=Upper())
async def shouted(ctx: WorkflowContext[str]) -> str:
    return ctx.request


@workflow
async def parent(ctx: WorkflowContext[str]) -> str:
    value = await ctx.child(shouted, ctx.request)
    SEEN.append(value)
    await ctx.sleep(10)
    return value


def test_a_child_workflow_result_is_read_by_its_workflow_serdes() -> None:
    with _runtime(parent, shouted) as rt:
        handle = rt.start(parent, "quiet", workflow_id="p1")
        rt.run_until_idle()
        assert handle.result() == "QUIET"
        assert SEEN == ["QUIET", "QUIET"]
        [child] = [op for op in rt.history("p1").operations if op.kind == "child"]
    assert orjson.loads(child.result or b"") == {"serdes": "Upper", "text": "QUIET"}


# -- errors ------------------------------------------------------------------------------------

RUNS: list[str] = []


@step(serdes=Broken(), name="broken")
def broken_step() -> str:
    RUNS.append("broken")
    return "x"


@step(serdes=Unreadable(), name="unreadable")
def unreadable_step() -> str:
    RUNS.append("unreadable")
    return "x"


@workflow
async def failing(ctx: WorkflowContext[str]) -> str:
    fn = broken_step if ctx.request == "broken" else unreadable_step
    try:
        await ctx.step(fn)
    except StepError as exc:
        SEEN.append((exc.error_type, exc.message))
    await ctx.sleep(10)
    return "done"


@pytest.mark.parametrize(("which", "text"), [
    ("broken", "serdes 'Broken' could not serialize the value: ValueError: cannot write 'x'"),
    ("unreadable", "serdes 'Unreadable' could not deserialize 'x': ValueError: unreadable"),
])
def test_a_serdes_that_raises_fails_the_step_recorded_naming_it(which: str, text: str) -> None:
    """A serialize or deserialize that raises on the first run fails the step (recorded, not
    retried: it would fail again); the replay raises the same error from the record without
    running the body or the serdes."""
    RUNS.clear()
    with _runtime(failing) as rt:
        handle = rt.start(failing, which, workflow_id=which)
        rt.run_until_idle()
        assert handle.result() == "done"
        [(kind, message)] = set(SEEN)
        assert len(SEEN) == 2
        [op] = [op for op in rt.history(which).operations if op.kind == "step"]
    assert [which] == RUNS
    assert kind == "StepResultError"
    assert f"step {which!r}" in message and text in message
    assert op.state.value == "failed"


@workflow
async def failing_context(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.run_in_child_context(echo, "x", name="ctx", serdes=Broken())
    except ChildContextError as exc:
        SEEN.append(str(exc))
    await ctx.sleep(10)
    return "done"


def test_a_serdes_that_raises_fails_the_child_context_recorded() -> None:
    with _runtime(failing_context) as rt:
        handle = rt.start(failing_context, None, workflow_id="f1")
        rt.run_until_idle()
        assert handle.result() == "done"
        [ctx_op] = [op for op in rt.history("f1").operations if op.kind == "context"]
    assert ctx_op.state.value == "failed"
    assert len(SEEN) == 2 and SEEN[0] == SEEN[1]
    assert "'ctx'" in SEEN[0] and "serdes 'Broken' could not serialize" in SEEN[0]


class Lower(Serdes[str]):
    def serialize(self, value: str) -> str:
        return value.lower()

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


CODE: dict[str, Any] = {}


@workflow
async def changing(ctx: WorkflowContext[str]) -> str:
    fn = step(name="word", serdes=CODE["serdes"])(lambda: ctx.request) if CODE["serdes"] \
        else step(name="word")(lambda: ctx.request)
    word: str = await ctx.step(fn)
    await ctx.sleep(10)
    return word


def test_a_serdes_changed_with_instances_in_flight_is_a_non_determinism_error() -> None:
    """The record names the serdes that wrote it; a replay with a serdes of another name
    fails the instance naming both, rather than reading the bytes wrongly."""
    CODE["serdes"] = Upper()
    with _runtime(changing) as rt:
        handle = rt.start(changing, "Word", workflow_id="n1")
        rt.run_until_idle(skip_time=False)
        CODE["serdes"] = Lower()
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
    assert failed.value.error_type == NonDeterminismError.__name__
    assert ("recorded by serdes 'Upper', which is not this operation's serdes 'Lower'"
            in failed.value.message)
    assert "step 'word'" in failed.value.message


def test_a_serdes_added_with_instances_in_flight_reads_values_recorded_before_as_json() -> None:
    """A value recorded without a serdes (before the option was added) is read through the
    type, as it was written; new values are written by the serdes."""
    CODE["serdes"] = None
    with _runtime(changing) as rt:
        handle = rt.start(changing, "Word", workflow_id="n2")
        rt.run_until_idle(skip_time=False)
        CODE["serdes"] = Upper()
        rt.run_until_idle()
        assert handle.result() == "Word"
        fresh = rt.start(changing, "Word", workflow_id="n3")
        rt.run_until_idle()
        assert fresh.result() == "WORD"


def test_a_serdes_must_be_a_serdes_with_a_printable_name() -> None:
    with pytest.raises(TypeError, match=r"serdes must be a lambda_workflow\.Serdes"):
        step(serdes=object())  # type: ignore[call-overload]

    class Nameless(Upper):
        @property
        def name(self) -> str:
            return ""

    with pytest.raises(ValueError, match="serdes's name must be a non-empty printable"):
        Service("s", str, str, request_serdes=Nameless())


# -- the recipe in docs/primitives.md ----------------------------------------------------------

class FullCard(pydantic.BaseModel):
    holder: str
    number: str


class MaskedCard(Serdes[FullCard]):
    def serialize(self, value: FullCard) -> str:
        return f"{value.holder}|{value.number[-4:]}"

    def deserialize(self, data: str | bytes) -> FullCard:
        holder, last4 = str(data).split("|")
        return FullCard(holder=holder, number=f"****{last4}")


VAULT = {"ana": FullCard(holder="Ana", number="4111111111111111")}


@step(serdes=MaskedCard())
def look_up_card(customer: str) -> FullCard:
    return VAULT[customer]


@workflow
async def charge(ctx: WorkflowContext[str]) -> str:
    card = await ctx.step(look_up_card, ctx.request)
    SEEN.append(card.number)
    await ctx.sleep(10)
    return f"charged {card.holder} on {card.number}"


def test_recipe_a_serdes_keeps_the_card_number_out_of_the_history() -> None:
    with _runtime(charge) as rt:
        handle = rt.start(charge, "ana", workflow_id="card")
        rt.run_until_idle()
        assert handle.result() == "charged Ana on ****1111"
        assert SEEN == ["****1111", "****1111"]
        ops = rt.history("card").operations
    assert all(b"4111111111111111" not in (op.result or b"") + op.request for op in ops)


# -- values pydantic cannot handle ----------------------------------------------------------------

class Session:
    """A plain class: pydantic has no schema for it, JSON no encoding."""

    def __init__(self, polls: int, secret: str) -> None:
        self.polls, self.secret = polls, secret


class SessionSerdes(Serdes[Session]):
    """Records the poll count only: the secret never reaches the history."""

    def serialize(self, value: Session) -> str:
        return str(value.polls)

    def deserialize(self, data: str | bytes) -> Session:
        return Session(int(data), secret="")


@step(serdes=SessionSerdes())
def open_session() -> Session:
    return Session(0, "hunter2")


def poll_session(session: Session) -> Session:
    SEEN.append((session.polls, session.secret))
    return Session(session.polls + 1, "hunter2")


@workflow
async def sessions(ctx: WorkflowContext[None]) -> int:
    opened = await ctx.step(open_session)
    SEEN.append(("opened", opened.polls, opened.secret))
    final = await ctx.wait_for_condition(
        poll_session, Session(0, "hunter2"),
        lambda session, attempt: None if session.polls >= 2 else 1, serdes=SessionSerdes())
    return final.polls


def test_a_serdes_records_values_pydantic_cannot_and_keeps_what_it_drops_out() -> None:
    """A step result and a condition state of a plain class: the serdes alone records them.
    The condition's state, the initial one included, reaches each check (and the history)
    only through the serdes: no check sees, and no record holds, the secret it drops."""
    with _runtime(sessions) as rt:
        handle = rt.start(sessions, None, workflow_id="sess")
        rt.run_until_idle()
        assert handle.result() == 2
        ops = rt.history("sess").operations
    assert ("opened", 0, "") in SEEN
    assert [seen for seen in SEEN if len(seen) == 2] == [(0, ""), (1, "")]
    assert all(b"hunter2" not in (op.result or b"") + op.request for op in ops)


@workflow
async def changing_context(ctx: WorkflowContext[str]) -> str:
    serdes: Serdes[str] = CODE["serdes"]
    word = await ctx.run_in_child_context(echo, ctx.request, name="ctx", serdes=serdes)
    await ctx.sleep(10)
    return word


def test_a_child_context_whose_serdes_changed_in_flight_fails_naming_both() -> None:
    CODE["serdes"] = Upper()
    with _runtime(changing_context) as rt:
        handle = rt.start(changing_context, "Word", workflow_id="n4")
        rt.run_until_idle(skip_time=False)
        CODE["serdes"] = Lower()
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
    assert failed.value.error_type == NonDeterminismError.__name__
    assert "child context 'ctx'" in failed.value.message
    assert "recorded by serdes 'Upper', which is not this operation's serdes 'Lower'" in (
        failed.value.message)
