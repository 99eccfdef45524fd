"""Warm instances (docs/design.md, "Warm instances"): a suspended instance kept alive in the
process continues in its next activation without a replay and without reading its history;
anything it cannot follow exactly evicts it and the activation replays. Histories are the
same byte for byte with the cache on and off."""

from __future__ import annotations

import asyncio
import copy
import importlib
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import Service, ServiceError, WorkflowContext, step, workflow
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow._runtime.engine import ActivationReport, Engine
from lambda_workflow._runtime.warm import (
    CACHE_ENV,
    OPERATIONS_ENV,
    ConfigurationError,
    InstanceCache,
)
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import (
    CallResultMessage,
    History,
    InstanceStatus,
    OperationState,
    Outcome,
)
from lambda_workflow.testing import WorkflowTestRuntime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import approval  # noqa: E402
import bank_transaction  # noqa: E402
import fan_out  # noqa: E402
import monthly_report  # noqa: E402
import order_saga  # noqa: E402

T0 = 1_800_000_000.0


class Num(BaseModel):
    n: int


inc = Service("warm-inc", Num, Num)
flaky = Service("warm-flaky", Num, Num)


def _inc(request: Num) -> Num:
    return Num(n=request.n + 1)


def _flaky(request: Num) -> Num:
    if request.n % 3 == 0:
        raise ServiceError("Unlucky", f"{request.n} is a multiple of 3", {"n": request.n})
    return Num(n=request.n * 2)


@workflow
async def sequential(ctx: WorkflowContext[Num]) -> int:
    value = Num(n=0)
    for _ in range(ctx.request.n):
        value = await ctx.call(inc, value)
    return value.n


@step
def double(n: int) -> int:
    return 2 * n


@workflow
async def mixed(ctx: WorkflowContext[Num]) -> dict[str, Any]:
    """Calls, a gather with a caught error, steps, a timer, the clock, random numbers and a
    patch marker: everything a warm instance continues through."""
    seen: list[Any] = []
    first = await ctx.call(inc, Num(n=ctx.request.n))
    seen.append(first.n)
    results = await asyncio_gather(ctx, [ctx.call(flaky, Num(n=first.n + i)) for i in range(3)])
    seen.append(results)
    seen.append(await ctx.step(double, first.n))
    await ctx.sleep(60)
    seen.append(ctx.now().timestamp())
    seen.append(ctx.random())
    if ctx.patched("more"):
        seen.append((await ctx.call(inc, Num(n=100))).n)
    try:
        await ctx.call(flaky, Num(n=3))
    except ServiceError as exc:
        seen.append(exc.error_type)
    seen.append(str(ctx.uuid4()))
    return {"seen": seen}


async def asyncio_gather(ctx: WorkflowContext[Num], calls: list[Any]) -> list[Any]:
    out: list[Any] = []
    for result in await asyncio.gather(*calls, return_exceptions=True):
        out.append(result.error_type if isinstance(result, ServiceError)
                   else getattr(result, "n", None))
    return out


# A callback token carries a fresh random nonce on every run, cache or not.
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{43}")


def _dump(history: History) -> bytes:
    """Everything a history holds, as bytes: instance and every record field (callback
    tokens, random per run, and the digests of requests holding one, masked)."""
    inst = history.instance
    return _TOKEN.sub(b"<token>", orjson.dumps({
        "instance": [inst.workflow_id, inst.workflow_name, inst.status.value,
                     inst.result, inst.error, inst.activations, inst.created_at,
                     inst.updated_at],
        "operations": [[op.op_id, op.seq, op.kind, op.name, op.request,
                        "<digest>" if _TOKEN.search(op.request) else op.request_digest,
                        op.site, op.state.value, op.result, op.created_in, op.resolved_in,
                        op.created_at, op.resolved_at, op.sent]
                       for op in history.operations]},
        default=lambda b: b.decode() if isinstance(b, bytes) else repr(b)))


def _local(cache: int | None, store: Any = None) -> tuple[LocalRuntime, list[ActivationReport]]:
    reports: list[ActivationReport] = []

    def observe(event: object) -> None:
        if isinstance(event, ActivationReport):
            reports.append(event)

    rt = LocalRuntime(store=store if store is not None else MemoryStateStore(),
                      instance_cache=cache, on_event=observe, clock=VirtualClock(T0))
    rt.register(sequential, mixed)
    rt.implement(inc, _inc)
    rt.implement(flaky, _flaky)
    return rt, reports


# --- hits, and what they skip ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_sequential_workflow_continues_warm(kind: str) -> None:
    """Every activation after the first continues the live instance (a hit), and the result
    and history are those of a run without the cache."""
    results = {}
    for cache in (0, 8):
        store = MemoryStateStore() if kind == "memory" else SQLiteStateStore(":memory:")
        rt, reports = _local(cache, store)
        handle = rt.start(sequential, Num(n=12), workflow_id="s-1")
        rt.run_until_idle()
        results[cache] = (handle.result(), _dump(rt.history("s-1")))
        if cache:
            assert [r.cache for r in reports] == ["miss"] + ["hit"] * 12
            assert rt.engine.instance_cache.hits == 12
            assert len(rt.engine.instance_cache) == 0  # completed: nothing kept
        else:
            assert {r.cache for r in reports} == {"off"}
        rt.close()
    assert results[0] == results[8]
    assert results[8][0] == 12


def test_a_cache_hit_reads_the_instance_record_and_never_the_history() -> None:
    """On SQLite a hit runs one SELECT of the instance row and no query of the operations
    table; with the cache off every activation reads the whole history."""
    statements: dict[int, list[str]] = {}
    for cache in (0, 8):
        store = SQLiteStateStore(":memory:")
        rt, _reports = _local(cache, store)
        rt.start(sequential, Num(n=5), workflow_id="q-1")
        traced: list[str] = []
        store._db.set_trace_callback(traced.append)
        rt.run_until_idle()
        store._db.set_trace_callback(None)
        statements[cache] = traced
        rt.close()

    def history_reads(traced: list[str]) -> int:
        return sum(1 for sql in traced
                   if sql.startswith("SELECT") and "FROM operations" in sql
                   and "ORDER BY seq" in sql)

    assert history_reads(statements[0]) == 6  # each of the 6 activations read its history
    assert history_reads(statements[8]) == 1  # only the first (the miss)
    instance_reads = sum(1 for sql in statements[8]
                         if sql.startswith("SELECT") and "FROM instances WHERE" in sql)
    assert instance_reads >= 5


# --- byte-identical histories ---------------------------------------------------------------------
def _examples() -> Iterator[tuple[Any, str, Any, Any]]:
    for module, wf in ((approval, approval.approve_expense),
                       (bank_transaction, bank_transaction.make_transaction),
                       (fan_out, fan_out.sync_catalog),
                       (monthly_report, monthly_report.monthly_reports),
                       (order_saga, order_saga.place_order)):
        for key, request in module.EXAMPLES.items():
            yield module, key, wf, request


@pytest.mark.parametrize(("module", "key", "wf", "request_"),
                         list(_examples()), ids=[f"{m.__name__}-{k}" for m, k, _, _ in
                                                 _examples()])
def test_the_examples_give_byte_identical_histories_with_the_cache_on_and_off(
        module: Any, key: str, wf: Any, request_: Any) -> None:
    """Each example input runs on the test runtime (time skipped, every activation checked by
    a replay from the top) with the cache off and on: same result, same history bytes."""
    dumps = {}
    # The examples' services keep state in module globals (balances, stock): each run starts
    # from the state the module had before the first, and the module is left in that state
    # (tests/aws deploy the bank example with its balances: a debited alice fails them).
    saved = {name: copy.deepcopy(value) for name, value in vars(module).items()
             if not name.startswith("__") and isinstance(value, dict | list | set)}

    def restore() -> None:
        for name, value in saved.items():
            held = getattr(module, name)
            held.clear()
            held.update(copy.deepcopy(value)) if not isinstance(held, list) else held.extend(
                copy.deepcopy(value))

    try:
        for cache in (0, 64):
            restore()
            with WorkflowTestRuntime(instance_cache=cache) as rt:
                module.setup(rt)
                handle = rt.start(wf, request_, workflow_id=f"ex-{key}")
                rt.run_until_idle()
                assert all(check.ok for check in rt.replay_checks)
                dumps[cache] = (handle.status(), _dump(rt.history(f"ex-{key}")))
    finally:
        restore()
    assert dumps[0] == dumps[64]


def test_the_examples_hit_the_cache() -> None:
    """The examples' later activations are hits (the differential test above is not
    comparing two replays)."""
    hits = 0
    for module, key, wf, request in _examples():
        with WorkflowTestRuntime(instance_cache=64) as rt:
            module.setup(rt)
            rt.start(wf, request, workflow_id=f"ex-{key}")
            rt.run_until_idle()
            hits += rt.engine.instance_cache.hits
    assert hits >= 10


@pytest.mark.parametrize("seed", range(8))
def test_a_mixed_workflow_gives_the_same_history_with_the_cache(seed: int) -> None:
    """Calls, gathers with errors, steps, timers, the clock, random numbers and patches:
    the same history bytes with and without the cache."""
    dumps = {}
    for cache in (0, 8):
        rt, reports = _local(cache, SQLiteStateStore(":memory:"))
        handle = rt.start(mixed, Num(n=seed), workflow_id=f"m-{seed}")
        rt.run_until_idle()
        assert handle.status() is InstanceStatus.COMPLETED
        dumps[cache] = _dump(rt.history(f"m-{seed}"))
        if cache:
            assert "hit" in [r.cache for r in reports]
        rt.close()
    assert dumps[0] == dumps[8]


def test_random_plans_of_the_property_tests_give_the_same_histories() -> None:
    """Random workflows of the property tests (calls, gathers, caught and uncaught errors,
    child contexts and maps), run with the cache off and on, in random interleavings:
    the same final states and histories."""
    from hypothesis import HealthCheck, given, settings

    tests_dir = str(Path(__file__).resolve().parents[1])
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    run_plans = importlib.import_module("property.harness").run_plans
    some_plans = importlib.import_module("property.test_workflows_property").some_plans

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow],
              database=None)
    @given(some_plans)
    def check(plans: Any) -> None:
        finals = {}
        for cache in ("0", "16"):
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(CACHE_ENV, cache)
                run = run_plans(plans, store_kind="sqlite", rng=random.Random(7))
            finals[cache] = {wid: (f, f.operations_with_stage)
                             for wid, f in run.finals.items()}
        assert finals["0"] == finals["16"]

    check()


# --- evictions --------------------------------------------------------------------------------
def _suspended(cache: int = 8, store: Any = None) -> tuple[LocalRuntime, list[ActivationReport]]:
    """A runtime with instance w-1 of ``sequential`` suspended on its first call (kept)."""
    rt, reports = _local(cache, store)
    rt.start(sequential, Num(n=3), workflow_id="w-1")
    rt.step_workflows()
    assert "w-1" in rt.engine.instance_cache
    return rt, reports


def test_another_writer_that_advanced_the_instance_evicts_it(tmp_path: Path) -> None:
    """A write by someone else (here, an activation recorded directly in the store) raises
    the instance's counter: the next activation evicts the live instance and replays from
    the history, which holds the other writer's record."""
    rt, _reports = _suspended(store=SQLiteStateStore(str(tmp_path / "s.sqlite3")))
    store = rt.store
    inst = store.get_instance("w-1")
    assert inst is not None
    # Another process applied the reply of call 1 (n=0 -> 1) as activation 2.
    store.commit_activation("w-1", [Outcome("1", OperationState.COMPLETED, b'{"n":1}')], [],
                            inst.activations + 1, rt.clock.now())
    rt.run_until_idle()
    assert rt.engine.instance_cache.evictions.get("advanced") == 1
    assert rt.result("w-1") == 3
    ops = rt.history("w-1").operations
    # the runtime's own reply to call 1 was a duplicate (activation 3); calls 2 and 3 were
    # made and answered by replays after it
    assert [(op.op_id, op.state.value, op.created_in, op.resolved_in) for op in ops] == [
        ("1", "completed", 1, 2), ("2", "completed", 3, 4), ("3", "completed", 4, 5)]
    rt.close()


class _Outbox:
    """A transport that keeps what it is given (another process's queues)."""

    reply_address = "elsewhere"

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        self.sent.append(body)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self.sent.append(body)


def test_a_second_engine_on_the_same_file_evicts_the_first_ones_instance(
        tmp_path: Path) -> None:
    """Two engines on one SQLite file (another process's, on its own connection): the
    second applies call 1's reply and makes call 2; the first, whose live instance still
    waits on call 1, gets the same reply late: it evicts the live instance (the counter
    moved) and its replay finds the reply recorded already (a duplicate)."""
    path = str(tmp_path / "two.sqlite3")
    first, reports = _local(8, SQLiteStateStore(path))
    first.start(sequential, Num(n=3), workflow_id="w-2")
    first.step_workflows()
    assert "w-2" in first.engine.instance_cache
    other_store = SQLiteStateStore(path)
    other = Engine(other_store, _Outbox(), {"sequential": sequential}, first.clock,
                   instance_cache=0)
    reply = CallResultMessage.model_validate(
        {"v": 1, "kind": "call_result", "workflow_id": "w-2", "call_id": "1", "ok": True,
         "value": {"n": 1}})
    assert other.activate("w-2", [reply]).status == "suspended"
    other_store.close()
    first.step_services()  # the first process's service answers call 1 too
    first.step_workflows()
    cache = first.engine.instance_cache
    assert cache.evictions.get("advanced") == 1
    assert reports[-1].cache == "miss" and reports[-1].duplicates == ["1"]
    ops = first.history("w-2").operations
    assert [(op.op_id, op.state.value, op.created_in) for op in ops] == [
        ("1", "completed", 1), ("2", "pending", 2)]
    first.close()


class _FailingCommit:
    def __init__(self, store: Any) -> None:
        self._store = store
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit_activation(self, *args: Any, **kwargs: Any) -> list[str]:
        if self.fail:
            self.fail = False
            raise OSError("the store went away")
        result: list[str] = self._store.commit_activation(*args, **kwargs)
        return result


def test_a_store_write_that_fails_after_the_live_state_advanced_evicts() -> None:
    """The live instance took a reply and made its next call, then the commit failed: the
    live state is ahead of the store, so it is dropped; the redelivered reply replays from
    the history and the workflow completes with the same result."""
    rt, reports = _suspended()
    failing = _FailingCommit(rt.store)
    rt.engine.store = failing
    rt.step_services()
    failing.fail = True
    rt.step_workflows()  # the hit: reply applied live, commit raised
    assert "w-1" not in rt.engine.instance_cache
    rt.run_until_idle()
    assert rt.result("w-1") == 3
    assert reports[-1].status == "completed"
    rt.close()


def test_a_new_deploy_evicts() -> None:
    """A different Workflow object under the instance's name (new code) or another
    AWS_LAMBDA_FUNCTION_VERSION: the instance replays under the code now registered."""
    rt, reports = _suspended()
    again = workflow(name="sequential")(sequential.fn)
    rt._workflows["sequential"] = again
    rt.step_services()
    rt.step_workflows()
    assert rt.engine.instance_cache.evictions.get("deploy") == 1
    assert reports[-1].cache == "miss"
    rt.run_until_idle()
    assert rt.result("w-1") == 3
    rt.close()


def test_a_new_function_version_evicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "7")
    rt, _reports = _suspended()
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_VERSION", "8")
    rt.step_services()
    rt.step_workflows()
    assert rt.engine.instance_cache.evictions.get("deploy") == 1
    rt.run_until_idle()
    assert rt.result("w-1") == 3
    rt.close()


def test_a_cancellation_evicts_and_replays() -> None:
    rt, _reports = _suspended()
    rt.queue.send(orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": "w-1",
                                "reason": "no longer needed"}), group_id="w-1",
                  dedup_id="cancel-w-1")
    rt.run_until_idle()
    assert rt.engine.instance_cache.evictions.get("message") == 1
    assert rt.status("w-1") is InstanceStatus.CANCELLED
    rt.close()


def test_an_invalid_reply_is_rejected_by_a_replay() -> None:
    """A reply that does not validate cannot be delivered to the live future: the instance
    is evicted, the replay rejects the reply with its reason and a valid one completes it."""
    rt, reports = _suspended()
    rt.queue.send(orjson.dumps({"v": 1, "kind": "call_result", "workflow_id": "w-1",
                                "call_id": "1", "ok": True, "value": {"n": "many"}}),
                  group_id="w-1", dedup_id="bad")
    rt.step_workflows()
    assert rt.engine.instance_cache.evictions.get("outcomes") == 1
    assert reports[-1].rejected and "not a valid" in next(iter(reports[-1].rejected.values()))
    rt.run_until_idle()
    assert rt.result("w-1") == 3
    rt.close()


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    rt, _ = _local(2)
    for i in range(3):
        rt.start(sequential, Num(n=2), workflow_id=f"b-{i}")
        rt.step_workflows()
    cache = rt.engine.instance_cache
    assert list(cache) == ["b-1", "b-2"]
    assert cache.evictions == {"size": 1}
    rt.run_until_idle()
    assert [rt.result(f"b-{i}") for i in range(3)] == [2, 2, 2]
    rt.close()


def test_held_operations_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory pressure: over LAMBDA_WORKFLOW_INSTANCE_CACHE_OPERATIONS recorded operations
    held, the least recently used instances go."""
    monkeypatch.setenv(OPERATIONS_ENV, "3")
    rt, _ = _local(8)
    rt.start(sequential, Num(n=5), workflow_id="o-1")
    for _ in range(5):
        rt.step_workflows()
        rt.step_services()
    cache = rt.engine.instance_cache
    assert cache.max_operations == 3
    assert cache.held_operations <= 3
    assert cache.evictions.get("operations", 0) >= 1
    rt.run_until_idle()
    assert rt.result("o-1") == 5
    rt.close()


# --- settings ---------------------------------------------------------------------------------
def test_the_environment_sets_the_size_and_zero_turns_it_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, "0")
    rt, _ = _local(None)
    assert not rt.engine.instance_cache.enabled
    rt.close()
    monkeypatch.setenv(CACHE_ENV, "5")
    rt, _ = _local(None)
    assert rt.engine.instance_cache.size == 5
    rt.close()
    monkeypatch.delenv(CACHE_ENV)
    assert InstanceCache.from_env().size == 1024


@pytest.mark.parametrize(("name", "value", "message"), [
    (CACHE_ENV, "lots", "LAMBDA_WORKFLOW_INSTANCE_CACHE='lots' is not a whole number"),
    (CACHE_ENV, "-1", "LAMBDA_WORKFLOW_INSTANCE_CACHE='-1' must be >= 0"),
    (OPERATIONS_ENV, "1e6", "LAMBDA_WORKFLOW_INSTANCE_CACHE_OPERATIONS='1e6' is not a whole"),
])
def test_a_bad_setting_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, name: str,
                                            value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        LocalRuntime(instance_cache=None)


def test_a_refused_setting_leaves_the_state_file_unlocked_and_closed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The settings are read before the state file is locked and opened: the runtime that
    refused one holds no lock (another opens the file) and no connection (Python 3.13 reports
    an unclosed one as a ResourceWarning)."""
    db = tmp_path / "state.sqlite3"
    monkeypatch.setenv(CACHE_ENV, "lots")
    with pytest.raises(ConfigurationError):
        LocalRuntime(db, instance_cache=None)
    monkeypatch.setenv(CACHE_ENV, "0")
    with LocalRuntime(db) as rt:
        assert rt.store_path == str(db)


def test_the_testing_runtime_replays_every_activation_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Users' tests exercise replay: the testing runtime's cache is off whatever the
    environment says, unless instance_cache= is given."""
    import lambda_workflow.testing as testing

    monkeypatch.setattr(testing, "DEFAULT_INSTANCE_CACHE", 0)
    monkeypatch.setenv(CACHE_ENV, "64")
    with WorkflowTestRuntime(sequential, services={inc: _inc}) as rt:
        assert not rt.engine.instance_cache.enabled
        assert rt.run(sequential, Num(n=3)) == 3
    with WorkflowTestRuntime(sequential, services={inc: _inc}, instance_cache=4) as rt:
        assert rt.engine.instance_cache.size == 4
        assert rt.run(sequential, Num(n=3)) == 3
        assert rt.engine.instance_cache.hits == 3



@workflow
async def fan(ctx: WorkflowContext[Num]) -> int:
    total = 0

    async def one(i: int) -> int:
        return (await ctx.call(inc, Num(n=i))).n

    for i in range(ctx.request.n):
        total += sum(await asyncio.gather(one(i), one(i + 1)))
    return total


def test_a_kept_loop_does_not_hold_its_finished_tasks() -> None:
    """A warm instance lives for many activations: the tasks its gathers made and finished
    are not held for its whole life."""
    rt, reports = _local(8)
    rt.register(fan)
    rt.start(fan, Num(n=30), workflow_id="f-1")
    for _ in range(12):
        rt.step_workflows()
        rt.step_services()
    entry = rt.engine.instance_cache.take("f-1")
    assert entry is not None and "hit" in [r.cache for r in reports]
    # the main task, the waiting gather's two, the last finished gather's two (dropped at
    # the next activation); 25 were held before finished tasks were dropped
    assert len(entry.replayer._loop._tasks) <= 5
    entry.discard()
    rt.close()


CLEANED: list[str] = []


@workflow
async def tidy(ctx: WorkflowContext[Num]) -> int:
    try:
        return (await ctx.call(inc, ctx.request)).n
    finally:
        CLEANED.append(ctx.workflow_id)


def test_closing_the_runtime_tears_down_its_warm_instances() -> None:
    """close() evicts every warm instance: its finally blocks run then, sealed (nothing is
    recorded), not whenever the garbage collector gets to the coroutine."""
    CLEANED.clear()
    rt, _ = _local(8)
    rt.register(tidy)
    rt.start(tidy, Num(n=1), workflow_id="t-1")
    rt.step_workflows()
    assert "t-1" in rt.engine.instance_cache and CLEANED == []
    history = rt.history("t-1")
    rt.close()
    assert CLEANED == ["t-1"]
    assert rt.engine.instance_cache.evictions == {"cleared": 1}
    assert [op.op_id for op in history.operations] == ["1"]
