"""A replay leaves what was alive before it (the loaded history above all) out of the cyclic
collector's scans: gc.freeze while the workflow runs, gc.unfreeze after, so replaying N
calls does not scan the N records at every full collection (benchmarks/replay.py, "flat in
N"). A process that froze objects itself is left as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime

echo = Service("echo", int, int)
SEEN: list[tuple[str, int]] = []


async def _echo(n: int) -> int:
    return n


@workflow
async def counted(ctx: WorkflowContext[int]) -> int:
    total = 0
    for i in range(ctx.request):
        SEEN.append(("replaying" if ctx.is_replaying else "new", gc.get_freeze_count()))
        total += await ctx.call(echo, i)
    return total


@pytest.fixture(autouse=True)
def _no_frozen_objects() -> Iterator[None]:
    gc.unfreeze()  # CPython 3.12 starts with a few objects frozen: none here
    SEEN.clear()
    yield
    gc.unfreeze()


def _run(n: int) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0), instance_cache=0)
    rt.register(counted)
    rt.implement(echo, _echo)
    rt.start(counted, n, workflow_id="gc-1")
    rt.run_until_idle()
    return rt


def test_objects_alive_before_a_replay_are_frozen_while_it_runs_and_not_after() -> None:
    with _run(3) as rt:
        assert rt.result("gc-1") == 3
    assert gc.get_freeze_count() == 0
    assert SEEN and all(frozen > 0 for _, frozen in SEEN)
    assert any(kind == "replaying" for kind, _ in SEEN)


def test_a_process_that_froze_objects_itself_keeps_them_frozen() -> None:
    gc.freeze()
    assert gc.get_freeze_count() > 0
    with _run(2) as rt:
        assert rt.result("gc-1") == 1
    # still frozen (a frozen object freed by its reference count leaves the count, so the
    # count may be a little lower than before; unfrozen, it would be 0)
    assert gc.get_freeze_count() > 0
    assert all(frozen > 0 for _, frozen in SEEN)
