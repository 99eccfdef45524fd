"""Callback heartbeats on the embedded runtime: a heartbeat is a conditional write of the
callback's last heartbeat time (no message, no activation); the heartbeat timer reads it when
it fires and re-arms for the remainder, or times the callback out (AWS callback 4.4, 4.5 and
wait_for_callback 7.12, 7.13: a heartbeat produces no history event)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import (
    CallbackHeartbeatTimeoutError,
    InvalidCallbackTokenError,
    Service,
    WorkflowContext,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow._runtime.heartbeats import record_callback_heartbeat
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.callbacks import CallbackTokens
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import (
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    Outcome,
)

T0 = 1_700_000_000.0
KEY = b"the first callback key, 32 bytes"
TOKENS: dict[str, str] = {}
LEGACY = Path(__file__).parent / "data" / "legacy_heartbeat_history.json"


@workflow
async def export(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("export", int, heartbeat_timeout=60)
    TOKENS[ctx.workflow_id] = cb.token
    try:
        return f"rows {await cb}"
    except CallbackHeartbeatTimeoutError as exc:
        return f"stalled: {exc.message}"


@workflow
async def export_then_wait(ctx: WorkflowContext[str]) -> str:
    """Catches the heartbeat timeout and goes on running (so a late heartbeat meets a
    running instance whose callback timed out)."""
    cb = ctx.create_callback("export", int, heartbeat_timeout=60)
    TOKENS[ctx.workflow_id] = cb.token
    try:
        return f"rows {await cb}"
    except CallbackHeartbeatTimeoutError:
        await ctx.sleep(3600)
        return "gave up"


@workflow
async def plain(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("plain", int, timeout=600)
    TOKENS[ctx.workflow_id] = cb.token
    return f"rows {await cb}"


def _runtime(store: Any = None, database: str | Path = ":memory:") -> LocalRuntime:
    rt = LocalRuntime(database, store=store, clock=VirtualClock(T0), callback_key=KEY)
    rt.register(export, export_then_wait, plain)
    return rt


def _beat_timers(rt: LocalRuntime, workflow_id: str) -> list[tuple[float, Any]]:
    """(seconds, recorded result) of each heartbeat timer, in order."""
    return [(float(orjson.loads(op.request)["seconds"]),
             None if op.result is None else orjson.loads(op.result))
            for op in rt.history(workflow_id).operations
            if op.kind == "timer" and op.name == "heartbeat:export"]


def test_a_heartbeat_sends_no_message_and_starts_no_activation() -> None:
    """The heartbeat is one write of the callback's record: nothing queued, the activation
    counter unchanged, no operation added to the history (AWS 7.13: no history event)."""
    with _runtime() as rt:
        rt.start(export, "x", workflow_id="h1")
        rt.run_until_idle(skip_time=False)
        before = rt.history("h1")
        rt.advance_time(20)
        rt.heartbeat_callback(TOKENS["h1"])
        assert len(rt.queue) == 0
        after = rt.history("h1")
        assert after.instance.activations == before.instance.activations
        assert [op.op_id for op in after.operations] == [op.op_id for op in before.operations]
        assert {op.kind for op in after.operations} == {"callback", "timer"}
        assert rt.store.last_heartbeat("h1", "1") == T0 + 20  # type: ignore[attr-defined]


def test_the_timer_rearms_for_the_remainder_then_times_out_when_heartbeats_stop() -> None:
    """Heartbeat at +50: the timer fires at +60 with 50 s left after it, recorded as its
    result, and a timer for those 50 s is armed; with no further heartbeat, that one fires at
    +110 with nothing left: CallbackHeartbeatTimeoutError."""
    with _runtime() as rt:
        handle = rt.start(export, "x", workflow_id="h2")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(50)
        rt.heartbeat_callback(TOKENS["h2"])
        rt.advance_time(10)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        assert _beat_timers(rt, "h2") == [(60.0, {"remaining": 50.0}), (50.0, None)]
        rt.advance_time(49)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        rt.advance_time(1)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "stalled: no heartbeat within 60 s"
        assert _beat_timers(rt, "h2") == [(60.0, {"remaining": 50.0}),
                                         (50.0, {"remaining": 0.0})]


def test_ten_heartbeats_then_completion_cost_no_activation_each() -> None:
    """An approval with 10 heartbeats 30 s apart and a 60 s heartbeat timeout: the
    heartbeats start no activation; the timers that fire in between re-arm (one activation
    per fire, not per heartbeat); the completion delivers the value."""
    with _runtime() as rt:
        handle = rt.start(export, "x", workflow_id="h3")
        rt.run_until_idle(skip_time=False)
        for _ in range(10):
            rt.advance_time(30)
            rt.run_until_idle(skip_time=False)
            rt.heartbeat_callback(TOKENS["h3"])
        rt.complete_callback(TOKENS["h3"], 7)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "rows 7"
        fired = [r for _, r in _beat_timers(rt, "h3") if r is not None]
        assert all(r["remaining"] > 0 for r in fired)
        # 1 start + 5 timer fires (at +60, +90+..., each 30 s after the last heartbeat's
        # timer) + 1 completion, never one per heartbeat
        assert handle.history().instance.activations == 2 + len(fired)
        assert len(fired) < 10


def test_a_heartbeat_after_completion_or_after_the_end_is_refused() -> None:
    """A heartbeat to a completed callback, or to an instance that ended, raises
    InvalidCallbackTokenError and records nothing."""
    with _runtime() as rt:
        handle = rt.start(plain, "x", workflow_id="h4")
        ended = rt.start(export, "x", workflow_id="h4b")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["h4"], 1)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "rows 1"
        with pytest.raises(InvalidCallbackTokenError, match="already completed"):
            rt.heartbeat_callback(TOKENS["h4"])
        assert rt.store.last_heartbeat("h4", "1") is None  # type: ignore[attr-defined]
        rt.advance_time(60)  # h4b times out and ends; its callback stays pending
        rt.run_until_idle(skip_time=False)
        assert ended.result() == "stalled: no heartbeat within 60 s"
        with pytest.raises(InvalidCallbackTokenError, match="has ended"):
            rt.heartbeat_callback(TOKENS["h4b"])


def test_a_heartbeat_after_the_heartbeat_timeout_is_refused() -> None:
    """The callback timed out (its workflow caught the error and runs on): a heartbeat is
    refused as timed out, as AWS refuses a heartbeat to a callback that timed out."""
    with _runtime() as rt:
        handle = rt.start(export_then_wait, "x", workflow_id="h5")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(61)
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        with pytest.raises(InvalidCallbackTokenError, match="timed out"):
            rt.heartbeat_callback(TOKENS["h5"])
        assert rt.store.last_heartbeat("h5", "1") is None  # type: ignore[attr-defined]
        assert len(rt.queue) == 0


def test_a_heartbeat_for_an_unknown_callback_is_refused() -> None:
    """A validly signed token naming a callback the instance never created."""
    with _runtime() as rt:
        rt.start(export, "x", workflow_id="h6")
        rt.run_until_idle(skip_time=False)
        stray = CallbackTokens(KEY).issue("h6", "99")
        with pytest.raises(InvalidCallbackTokenError, match="has no callback '99'"):
            rt.heartbeat_callback(stray)


def test_a_heartbeat_without_a_heartbeat_timeout_is_accepted_and_records_nothing() -> None:
    with _runtime() as rt:
        rt.start(plain, "x", workflow_id="h7")
        rt.run_until_idle(skip_time=False)
        rt.heartbeat_callback(TOKENS["h7"])
        assert len(rt.queue) == 0
        assert rt.store.last_heartbeat("h7", "1") is None  # type: ignore[attr-defined]


class _RacingStore(MemoryStateStore):
    """Runs ``during_read`` before (``first``) or after the engine's read of the last
    heartbeat, once: a heartbeat that lands just before or just after the timer reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.during_read: Any = None
        self.first = True

    def last_heartbeat(self, workflow_id: str, callback_id: str) -> float | None:
        hook, self.during_read = self.during_read, None
        if hook is not None and self.first:
            hook()
        seen = super().last_heartbeat(workflow_id, callback_id)
        if hook is not None and not self.first:
            hook()
        return seen


@pytest.mark.parametrize("first", [True, False])
def test_a_heartbeat_racing_the_timer(first: bool) -> None:
    """A heartbeat written just before the firing timer reads the callback re-arms it; one
    written just after (it came after the timer fired) is accepted but too late: the
    callback times out, and the recorded decision stands on every replay."""
    store = _RacingStore()
    with _runtime(store) as rt:
        handle = rt.start(export, "x", workflow_id="h8")
        rt.run_until_idle(skip_time=False)
        store.first = first
        store.during_read = lambda: rt.heartbeat_callback(TOKENS["h8"])
        rt.advance_time(60)
        rt.run_until_idle(skip_time=False)
        if first:
            assert handle.status() is InstanceStatus.RUNNING
            assert _beat_timers(rt, "h8") == [(60.0, {"remaining": 60.0}), (60.0, None)]
        else:
            assert handle.result() == "stalled: no heartbeat within 60 s"
            assert _beat_timers(rt, "h8") == [(60.0, {"remaining": 0.0})]
            with pytest.raises(InvalidCallbackTokenError, match="has ended"):
                rt.heartbeat_callback(TOKENS["h8"])


class _CrashOnce(MemoryStateStore):
    """The activation of the timer's firing fails at its commit once (a crash after it
    read the last heartbeat); a heartbeat lands before the redelivery."""

    def __init__(self) -> None:
        super().__init__()
        self.crash: Any = None

    def commit_activation(self, workflow_id: str, outcomes: Any, operations: Any,
                          activation: int, at: float) -> list[str]:
        hook, self.crash = self.crash, None
        if hook is not None:
            hook()
            raise ConnectionError("lost the connection before the commit")
        return super().commit_activation(workflow_id, outcomes, operations, activation, at)


def test_a_crash_before_the_timers_commit_decides_again_with_the_newer_heartbeat() -> None:
    """Nothing of the crashed activation was recorded: the redelivered timer_fired reads
    the heartbeat that landed meanwhile and re-arms instead of timing out."""
    store = _CrashOnce()
    with _runtime(store) as rt:
        handle = rt.start(export, "x", workflow_id="h9")
        rt.run_until_idle(skip_time=False)
        rt.advance_time(60)
        store.crash = lambda: rt.heartbeat_callback(TOKENS["h9"])
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        assert _beat_timers(rt, "h9") == [(60.0, {"remaining": 60.0}), (60.0, None)]


def _store_with_callback(store: Any) -> tuple[str, str]:
    store.create_instance(InstanceRecord("w", "export", b'"x"', "d", created_at=T0,
                                         updated_at=T0))
    request = b'{"heartbeat_timeout":60.0,"timeout":null,"token":"t"}'
    store.add_operations("w", [OperationRecord("w", "1", 0, "callback", "export", request,
                                               "digest-1", created_at=T0)], 1)
    return "w", "1"


def _stores(tmp_path: Path) -> list[Any]:
    return [MemoryStateStore(), SQLiteStateStore(tmp_path / "s.sqlite3")]


def test_stores_keep_the_latest_heartbeat_and_check_the_callback(tmp_path: Path) -> None:
    """Heartbeat times only move forward; another request digest (a callback a reset
    replaced) is unknown; a completed callback and an ended instance are refused."""
    for store in _stores(tmp_path):
        wid, cid = _store_with_callback(store)
        assert store.last_heartbeat(wid, cid) is None
        assert store.record_heartbeat(wid, cid, "digest-1", T0 + 20) is None
        assert store.record_heartbeat(wid, cid, "digest-1", T0 + 10) is None  # older: stands
        assert store.last_heartbeat(wid, cid) == T0 + 20
        assert store.record_heartbeat(wid, cid, "digest-2", T0 + 30) == "unknown"
        assert store.record_heartbeat(wid, "2", "digest-1", T0 + 30) == "unknown"
        assert store.record_heartbeat("nobody", cid, "digest-1", T0 + 30) == "unknown"
        store.finish(wid, InstanceStatus.CANCELLED, None, b"{}", 2, T0 + 40)
        assert store.record_heartbeat(wid, cid, "digest-1", T0 + 50) == "ended"
        store.record_outcomes(wid, [Outcome(cid, OperationState.COMPLETED, b"1")], 3, T0 + 60)
        assert store.record_heartbeat(wid, cid, "digest-1", T0 + 70) == "completed"
        assert store.last_heartbeat(wid, cid) == T0 + 20
        if isinstance(store, SQLiteStateStore):
            store.close()


def test_two_heartbeats_at_once_from_two_processes_both_land(tmp_path: Path) -> None:
    """Two clients (each with its own connection to the state file, as the CLI and an
    application would be) heartbeat the same callback at the same moment: both are
    accepted, and the later time is the one recorded."""
    path = tmp_path / "state.sqlite3"
    with _runtime(database=path) as rt:
        rt.start(export, "x", workflow_id="h10")
        rt.run_until_idle(skip_time=False)
    token = TOKENS["h10"]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def beat(at: float) -> None:
        store = SQLiteStateStore(path)
        try:
            barrier.wait()
            for i in range(20):
                record_callback_heartbeat(store, CallbackTokens(KEY), token, at + i)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=beat, args=(T0 + 10,)),
               threading.Thread(target=beat, args=(T0 + 15,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = SQLiteStateStore(path)
    try:
        assert store.last_heartbeat("h10", "1") == T0 + 15 + 19
    finally:
        store.close()


def _import_legacy(store: MemoryStateStore) -> str:
    doc = orjson.loads(LEGACY.read_bytes())

    def record(cls: type[Any], fields: dict[str, Any]) -> Any:
        values = {k: v.encode() if k in ("input", "result", "error", "request")
                  and v is not None else v for k, v in fields.items()}
        if cls is OperationRecord:
            values["state"] = OperationState(values["state"])
        else:
            values["status"] = InstanceStatus(values["status"])
        return cls(**values)

    inst: InstanceRecord = record(InstanceRecord, doc["instance"])
    store.create_instance(inst)
    store.add_operations(inst.workflow_id, [record(OperationRecord, op)
                                            for op in doc["operations"]], inst.activations)
    return inst.workflow_id


def test_a_history_recorded_with_heartbeat_operations_goes_on() -> None:
    """tests/runtime/data/legacy_heartbeat_history.json: an instance of ``export`` recorded
    (at T0, one heartbeat at +30) by the code before heartbeats were recorded on the
    callback: a timer and a ``heartbeat`` operation per period. It replays; its next
    heartbeat is a message as then (the pending ``heartbeat`` operation), the period after
    that is a heartbeat timer, and its heartbeats are recorded on the callback."""
    store = MemoryStateStore()
    wid = _import_legacy(store)
    token = orjson.loads(store.load_history(wid).operations[0].request)["token"]  # type: ignore[union-attr]
    with LocalRuntime(store=store, clock=VirtualClock(T0 + 40), callback_key=KEY) as rt:
        rt.register(export)
        rt.run_until_idle(skip_time=False)
        rt.heartbeat_callback(token)  # the legacy way: a message
        assert len(rt.queue) == 1
        rt.run_until_idle(skip_time=False)
        kinds = [(op.kind, op.state) for op in rt.history(wid).operations]
        assert kinds[4] == ("heartbeat", OperationState.COMPLETED)
        assert _beat_timers(rt, wid)[-1] == (60.0, None)
        assert b"callback" in rt.history(wid).operations[-1].request
        rt.advance_time(30)
        rt.heartbeat_callback(token)  # now recorded on the callback
        assert len(rt.queue) == 0
        rt.advance_time(20)  # +90: the first legacy timer fired at +90 and changes nothing
        rt.run_until_idle(skip_time=False)
        rt.advance_time(10)  # +100: the new timer fires with 30 s left after the +70 beat
        rt.run_until_idle(skip_time=False)
        assert _beat_timers(rt, wid)[-2:] == [(60.0, {"remaining": 30.0}), (30.0, None)]
        rt.complete_callback(token, 3)
        rt.run_until_idle(skip_time=False)
        assert rt.result(wid) == "rows 3"


def test_the_cli_heartbeat_on_a_state_file_needs_no_module_and_no_activation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`callback heartbeat TOKEN --db FILE` records the heartbeat on the callback without
    --run (before, the CLI refused: the heartbeat was a message for an activation to apply);
    the instance's activation counter does not move."""
    from lambda_workflow.cli import main

    path = tmp_path / "state.sqlite3"
    with LocalRuntime(path, clock=VirtualClock(T0)) as rt:
        rt.register(export)
        rt.start(export, "x", workflow_id="h11")
        rt.run_until_idle(skip_time=False)
        activations = rt.history("h11").instance.activations
    assert main(["callback", "heartbeat", TOKENS["h11"], "--db", str(path)]) == 0
    assert "callback heartbeat of h11 accepted: recorded on the callback" in (
        capsys.readouterr().out)
    store = SQLiteStateStore(path)
    try:
        history = store.load_history("h11")
        assert history is not None and history.instance.activations == activations
        assert store.last_heartbeat("h11", "1") is not None
    finally:
        store.close()


# -- the recipe of docs/primitives.md (callbacks, heartbeats) -----------------------------
class ExportJob(BaseModel):
    token: str
    table: str


class Queued(BaseModel):
    job_id: str


class ExportDone(BaseModel):
    rows: int


export_service = Service("export-jobs", ExportJob, Queued)


@workflow
async def nightly_export(ctx: WorkflowContext[str]) -> str:
    job = ctx.create_callback("export", ExportDone, timeout=6 * 3600, heartbeat_timeout=300)
    await ctx.call(export_service, ExportJob(token=job.token, table=ctx.request))
    try:
        done = await job
    except CallbackHeartbeatTimeoutError:
        return "the export worker stopped reporting"
    return f"exported {done.rows} rows"


def test_recipe_a_worker_heartbeats_a_long_export() -> None:
    """The worker that took the job heartbeats after each chunk (every minute, under the
    5-minute heartbeat timeout) for half an hour, then completes the callback: the export is
    not timed out; the 30 heartbeats start no activation, and the heartbeat timer fires 7
    times (re-armed each time for the time left after the last heartbeat)."""
    jobs: list[ExportJob] = []
    with LocalRuntime(clock=VirtualClock(T0)) as rt:
        rt.register(nightly_export)

        def take(job: ExportJob) -> Queued:  # the job queue hands it to a worker
            jobs.append(job)
            return Queued(job_id=f"j-{len(jobs)}")

        rt.implement(export_service, take)
        handle = rt.start(nightly_export, "orders", workflow_id="export-1")
        rt.run_until_idle(skip_time=False)
        (job,) = jobs
        for _ in range(30):  # the worker: one chunk a minute
            rt.advance_time(60)
            rt.run_until_idle(skip_time=False)
            rt.heartbeat_callback(job.token)
        rt.complete_callback(job.token, ExportDone(rows=1_500_000))
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "exported 1500000 rows"
        fired = [op for op in handle.history().operations
                 if op.kind == "timer" and op.state is OperationState.COMPLETED]
        # at 300 s, then every 240 s: when it fires, the last heartbeat is 60 s old
        assert [op.resolved_at - T0 for op in fired if op.resolved_at] == [
            300, 540, 780, 1020, 1260, 1500, 1740]
        # start, the call's reply, the timer's firings, the completion
        assert handle.history().instance.activations == 3 + len(fired)


@workflow
async def busy_export(ctx: WorkflowContext[str]) -> str:
    """Waits on a heartbeated callback while its own timers keep activating it."""
    cb = ctx.create_callback("export", int, heartbeat_timeout=60)
    TOKENS[ctx.workflow_id] = cb.token
    for _ in range(100):
        await ctx.sleep(1)
    return f"rows {await cb}"


def test_a_worker_thread_heartbeats_while_the_runtime_runs(tmp_path: Path) -> None:
    """A heartbeat is a store write, so a worker thread heartbeating while the runtime runs
    activations shares the state file's connection with them. Before the store serialized
    its transactions, the runtime failed with "cannot start a transaction within a
    transaction"."""
    with LocalRuntime(tmp_path / "state.sqlite3", clock=VirtualClock(T0)) as rt:
        rt.register(busy_export)
        handle = rt.start(busy_export, "x", workflow_id="h12")
        rt.run_until_idle(skip_time=False)
        stop = threading.Event()
        errors: list[BaseException] = []

        def worker() -> None:
            while not stop.is_set():
                try:
                    rt.heartbeat_callback(TOKENS["h12"])
                except BaseException as exc:
                    errors.append(exc)
                    return

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            for _ in range(100):
                rt.advance_time(1)
                rt.run_until_idle(skip_time=False)
        finally:
            stop.set()
            thread.join()
        assert errors == []
        rt.complete_callback(TOKENS["h12"], 9)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "rows 9"
