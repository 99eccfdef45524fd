"""Durable timers (ctx.sleep), deterministic time and randomness (ctx.now, ctx.random,
ctx.uuid4) and versioning (ctx.patched, ctx.deprecate_patch), on the embedded runtime with
its virtual clock: fresh runs, replays after each suspension, a restart, and bad input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lambda_workflow import (
    InstanceStatus,
    NonDeterminismError,
    Service,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import OperationState

START = 1_700_000_000.0
echo = Service("echo", str, str)


async def _echo(text: str) -> str:
    return text


def _runtime(*workflows: object, database: str | Path = ":memory:") -> LocalRuntime:
    rt = LocalRuntime(database, clock=VirtualClock(START))
    rt.register(*workflows)  # type: ignore[arg-type]
    rt.implement(echo, _echo)
    return rt


@workflow
async def nap(ctx: WorkflowContext[float]) -> list[str]:
    """Sleeps ctx.request seconds between two calls, reporting the time around the sleep."""
    before = ctx.now()
    await ctx.call(echo, "before")
    await ctx.sleep(ctx.request)
    after = ctx.now()
    await ctx.call(echo, "after")
    return [before.isoformat(), after.isoformat()]


def test_a_sleep_suspends_until_its_timer_fires_on_the_virtual_clock() -> None:
    """Without time skipping the workflow waits at the sleep; advancing the clock to just
    before the deadline changes nothing, reaching it fires the timer and the workflow ends.
    ctx.now() after the sleep is the time the timer fired."""
    with _runtime(nap) as rt:
        handle = rt.start(nap, 3600.0, workflow_id="nap-1")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        timer = handle.history().operations[1]
        assert (timer.kind, timer.name, timer.state) == ("timer", "sleep", OperationState.PENDING)
        rt.advance_time(3599)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.advance_time(1)
        rt.run_until_idle(skip_time=False)
        before, after = handle.result()
        assert before == datetime.fromtimestamp(START, UTC).isoformat()
        assert after == datetime.fromtimestamp(START + 3600, UTC).isoformat()


def test_thirty_days_of_sleep_are_skipped_in_a_moment() -> None:
    """run_until_idle jumps the virtual clock to the next timer: a 30-day sleep completes
    at once, and the clock shows 30 days passed."""
    with _runtime(nap) as rt:
        handle = rt.start(nap, timedelta(days=30).total_seconds(), workflow_id="nap-30")
        rt.run_until_idle()
        assert handle.status() is InstanceStatus.COMPLETED
        assert rt.clock.now() == START + 30 * 86400


@workflow
async def two_timers(ctx: WorkflowContext[None]) -> list[str]:
    """Two timers raced: the shorter one wins, the other fires later and changes nothing."""
    import asyncio

    short = asyncio.ensure_future(ctx.sleep(10))
    long = asyncio.ensure_future(ctx.sleep(timedelta(minutes=5)))
    done, _ = await asyncio.wait({short, long}, return_when=asyncio.FIRST_COMPLETED)
    return ["short" if short in done else "long"]


def test_timers_fire_in_deadline_order_and_a_late_one_is_withdrawn() -> None:
    """Of two timers, the earlier deadline fires first; the later one, still pending when the
    workflow ends, is withdrawn (it never fires, and time does not skip to it)."""
    with _runtime(two_timers) as rt:
        handle = rt.start(two_timers, None, workflow_id="race")
        rt.run_until_idle()
        assert handle.result() == ["short"]
        assert [op.state for op in handle.history().operations] == [
            OperationState.COMPLETED, OperationState.PENDING]
        assert rt.dead_letters() == []
        assert len(rt.timers) == 0
        assert rt.clock.now() == START + 10


def test_a_pending_timer_survives_a_restart(tmp_path: Path) -> None:
    """A SQLite-backed runtime that reopens its file reschedules pending timers from the
    history, and they fire at their original deadline."""
    db = tmp_path / "state.sqlite3"
    with _runtime(nap, database=db) as rt:
        rt.start(nap, 600.0, workflow_id="nap-r")
        rt.run_until_idle(skip_time=False)
        assert rt.status("nap-r") is InstanceStatus.RUNNING
    with _runtime(nap, database=db) as again:
        again.run_until_idle(skip_time=False)
        assert again.status("nap-r") is InstanceStatus.RUNNING
        again.advance_time(600)
        again.run_until_idle(skip_time=False)
        assert again.status("nap-r") is InstanceStatus.COMPLETED


@pytest.mark.parametrize("bad", [0, 0.5, -1, timedelta(days=367), float("nan"), "10", True])
def test_sleep_refuses_durations_outside_one_second_to_a_year(bad: object) -> None:
    """ctx.sleep raises ValueError for a duration outside 1 s to 366 days (or not a number)
    before anything is recorded; the workflow fails with that error."""
    @workflow
    async def bad_nap(ctx: WorkflowContext[None]) -> None:
        await ctx.sleep(bad)  # type: ignore[arg-type]

    with _runtime(bad_nap) as rt:
        handle = rt.start(bad_nap, None)
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            handle.result()
        assert failed.value.error_type == "ValueError"
        assert "1 second to 366 days" in failed.value.message
        assert handle.history().operations == []


def test_a_changed_duration_is_nondeterminism() -> None:
    """A timer whose duration differs from the recorded one fails the replay with
    NonDeterminismError naming the field."""
    with _runtime(nap) as rt:
        rt.start(nap, 60.0, workflow_id="nap-c")
        rt.run_until_idle(skip_time=False)

        @workflow(name="nap")
        async def nap_changed(ctx: WorkflowContext[float]) -> list[str]:
            await ctx.call(echo, "before")
            await ctx.sleep(120)
            return []

        rt._workflows["nap"] = nap_changed
        rt.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            rt.result("nap-c")
        assert failed.value.error_type == NonDeterminismError.__name__
        assert "seconds" in failed.value.message


@workflow
async def dice(ctx: WorkflowContext[None]) -> list[str]:
    """Draws before and after a suspension."""
    first = [str(ctx.random()), str(ctx.uuid4())]
    await ctx.call(echo, "x")
    return [*first, str(ctx.random()), str(ctx.uuid4())]


def test_random_and_uuid4_are_the_same_on_every_replay() -> None:
    """Values drawn before a suspension are the same when the workflow replays; the UUIDs are
    version 4; two instances draw different values."""
    seen: list[list[object]] = []

    @workflow(name="dice")
    async def watched(ctx: WorkflowContext[None]) -> list[str]:
        first = [ctx.random(), ctx.uuid4()]
        seen.append(first)
        await ctx.call(echo, "x")
        return [str(v) for v in first]

    with _runtime(watched) as rt:
        a = rt.start(watched, None, workflow_id="a")
        b = rt.start(watched, None, workflow_id="b")
        rt.run_until_idle()
        result_a, result_b = a.result(), b.result()
    by_id: dict[str, list[list[object]]] = {}
    for values in seen:
        by_id.setdefault(str(values[1]), []).append(values)
    assert len(by_id) == 2  # two instances, each drew the same values on both activations
    assert all(len(v) == 2 and v[0] == v[1] for v in by_id.values())
    assert result_a != result_b
    assert uuid.UUID(result_a[1]).version == 4
    assert 0.0 <= float(result_a[0]) < 1.0


@workflow
async def versioned(ctx: WorkflowContext[None]) -> str:
    """The patched version of `original` below."""
    if ctx.patched("v2"):
        await ctx.call(echo, "new")
        return "new"
    await ctx.call(echo, "old")
    return "old"


def test_patched_runs_old_histories_the_old_way_and_new_ones_the_new_way() -> None:
    """An instance started by the old code keeps its path after the code gains a patch
    (patched() is False there); a new instance takes the new path and records a marker."""
    @workflow(name="versioned")
    async def original(ctx: WorkflowContext[None]) -> str:
        await ctx.call(echo, "old")
        return "old"

    with _runtime(original) as rt:
        rt.start(original, None, workflow_id="old-1")
        rt.step_workflows()  # recorded the old call; its reply not delivered yet
        rt._workflows["versioned"] = versioned
        rt.start(versioned, None, workflow_id="new-1")
        rt.run_until_idle()
        assert rt.result("old-1") == "old"
        assert rt.result("new-1") == "new"
        assert [(op.kind, op.name) for op in rt.history("new-1").operations] == [
            ("patch", "v2"), ("call", "echo")]


def test_deprecate_patch_keeps_marked_histories_replaying() -> None:
    """After the old branch is removed, deprecate_patch consumes the marker of instances
    that recorded it, so they replay without a NonDeterminismError."""
    @workflow(name="versioned")
    async def cleaned(ctx: WorkflowContext[None]) -> str:
        ctx.deprecate_patch("v2")
        await ctx.call(echo, "new")
        return "new"

    with _runtime(versioned) as rt:
        rt.start(versioned, None, workflow_id="marked")
        rt.step_workflows()
        rt._workflows["versioned"] = cleaned
        rt.start(cleaned, None, workflow_id="fresh")
        rt.run_until_idle()
        assert rt.result("marked") == "new"
        assert rt.result("fresh") == "new"
        assert [op.kind for op in rt.history("fresh").operations] == ["call"]
