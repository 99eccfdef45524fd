"""Holes found by fault testing (issue 10), each reproduced: two runtimes on one SQLite file,
workflow ids a queue refuses, workflow code raising SystemExit, a child id already taken,
integers beyond 64 bits, a store failure while workflow code runs."""

from __future__ import annotations

import multiprocessing
import sqlite3
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from lambda_workflow import (
    ChildWorkflowError,
    InstanceStatus,
    InvalidRequestError,
    InvalidWorkflowIdError,
    RetryPolicy,
    Service,
    StateFileInUseError,
    WorkflowAlreadyStartedError,
    WorkflowContext,
    step,
    workflow,
)
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import check_workflow_id, parse_workflow_message

double = Service("double", int, int)
RUNS: Counter[int] = Counter()


def _double(n: int) -> int:
    RUNS[n] += 1
    return 2 * n


@workflow
async def twice(ctx: WorkflowContext[int]) -> int:
    return await ctx.call(double, ctx.request)


@pytest.fixture(autouse=True)
def _clear() -> None:
    RUNS.clear()


# -- finding 2: two runtimes on one SQLite file ------------------------------------------------

def test_a_second_runtime_on_the_same_file_is_refused_with_the_holder(tmp_path: Path) -> None:
    """While one runtime has the file, a second one (same process) is refused with a clear
    error naming the file and the holder's pid; nothing ran twice. Once the first closes, the
    file opens again."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as first:
        first.register(twice)
        first.start(twice, 4, workflow_id="t-1")
        with pytest.raises(StateFileInUseError) as caught:
            LocalRuntime(db)
        assert str(db) in str(caught.value) and "pid" in str(caught.value)
        first.implement(double, _double)
        first.run_until_idle()
        assert first.result("t-1") == 8
    with LocalRuntime(db) as again:
        assert again.status("t-1") is InstanceStatus.COMPLETED
    assert Counter({4: 1}) == RUNS


def _hold(db: str, ready: Any, stop: Any) -> None:
    rt = LocalRuntime(db)
    ready.set()
    stop.wait(30)
    rt.close()


def test_a_runtime_in_another_process_is_refused_and_its_death_frees_the_file(
        tmp_path: Path) -> None:
    """Another process holds the file: this one is refused. When that process dies by
    SIGKILL (no cleanup), the kernel drops the lock and the file opens here."""
    db = str(tmp_path / "state.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(db, ready, stop))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StateFileInUseError, match=f"pid {proc.pid}"):
            LocalRuntime(db)
    finally:
        proc.kill()
        proc.join(30)
    with LocalRuntime(db) as rt:
        assert rt.store.list_instances() == []


def test_readers_do_not_need_the_lock(tmp_path: Path) -> None:
    """A store opened to read (the CLI's status and history) works while a runtime runs."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as rt:
        rt.register(twice)
        rt.start(twice, 1, workflow_id="t-1")
        reader = SQLiteStateStore(db)
        assert [i.workflow_id for i in reader.list_instances()] == ["t-1"]
        reader.close()


# -- finding 3: one id rule, checked before anything is written -------------------------------

BAD_IDS = ["x" * 129, "", "has space", "tab\there", "naïve", "emoji-\U0001f600", "new\nline",
           "user~child", "requests/x", "replies/svc/x"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_id_a_queue_would_refuse_is_refused_before_anything_is_written(bad: str) -> None:
    """Ids SQS FIFO refuses as a message group id (and ids with the child mark ``~``) raise
    InvalidWorkflowIdError naming the problem; no instance row is written."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(twice)
        with pytest.raises(InvalidWorkflowIdError):
            rt.start(twice, 1, workflow_id=bad)
        assert rt.store.list_instances() == []
        assert len(rt.queue) == 0


@pytest.mark.parametrize("good", ["a", "x" * 128, "orders/2024-12-05#1",
                                  "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"])
def test_every_id_sqs_accepts_is_accepted(good: str) -> None:
    """The rule is SQS FIFO's: ASCII letters, digits and punctuation, 1 to 128."""
    assert check_workflow_id(good) == good
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(twice)
        rt.implement(double, _double)
        handle = rt.start(twice, 3, workflow_id=good)
        rt.run_until_idle()
        assert handle.result() == 6


def test_one_bad_row_does_not_keep_a_file_from_opening(tmp_path: Path) -> None:
    """A file holding a running instance whose id no queue takes (written by an older
    version) still opens: the bad instance is reported in ``unrecovered``, the others
    recover and finish."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as rt:
        rt.register(twice)
        rt.start(twice, 5, workflow_id="good-1")
    with closing(sqlite3.connect(db)) as raw, raw:  # a row as the unchecked start wrote it
        raw.execute("INSERT INTO instances SELECT ?, workflow_name, input, input_digest, status,"
                    " result, error, created_at, updated_at, activations FROM instances "
                    "WHERE workflow_id='good-1'", ("b" * 129,))
    with LocalRuntime(db) as rt:
        assert set(rt.unrecovered) == {"b" * 129}
        assert "128" in rt.unrecovered["b" * 129]
        rt.register(twice)
        rt.implement(double, _double)
        rt.run_until_idle()
        assert rt.result("good-1") == 10


def test_a_message_with_a_bad_id_is_invalid() -> None:
    """Messages follow the same rule: a queue message naming such an id is refused."""
    body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": "a b"})
    with pytest.raises(ValueError, match="ASCII letters"):
        parse_workflow_message(body)


# -- finding 11: SystemExit / KeyboardInterrupt in workflow code ------------------------------

@workflow
async def exits(ctx: WorkflowContext[str]) -> int:
    await ctx.call(double, 1)
    if ctx.request == "exit":
        sys.exit(3)
    raise KeyboardInterrupt


@pytest.mark.parametrize(("how", "error"), [("exit", "SystemExit"),
                                            ("interrupt", "KeyboardInterrupt")])
def test_workflow_code_raising_systemexit_fails_its_own_instance_only(how: str,
                                                                      error: str) -> None:
    """The exception fails the instance that raised it; the other instances of the same
    batch run on and complete."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(exits, twice)
        rt.implement(double, _double)
        rt.start(exits, how, workflow_id="bad")
        for i in range(3):
            rt.start(twice, 10 + i, workflow_id=f"ok-{i}")
        rt.run_until_idle()
        assert rt.status("bad") is InstanceStatus.FAILED
        assert orjson.loads(rt.history("bad").instance.error or b"{}")["type"] == error
        assert [rt.result(f"ok-{i}") for i in range(3)] == [20, 22, 24]


# -- finding 12: a child id already taken ------------------------------------------------------

@workflow
async def named_child(ctx: WorkflowContext[str]) -> str:
    try:
        value = await ctx.child(twice, 7, workflow_id=ctx.request)
    except ChildWorkflowError as exc:
        return f"refused: {exc.error_type}"
    return f"child said {value}"


@workflow
async def generated_child(ctx: WorkflowContext[int]) -> int:
    return await ctx.child(twice, ctx.request)


def test_a_child_whose_id_a_user_took_fails_the_parents_call() -> None:
    """A user started ``taken`` first; a parent's child with that id is refused, and the
    parent's ``ctx.child`` raises ChildWorkflowError instead of waiting forever."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(named_child, twice)
        rt.implement(double, _double)
        rt.start(twice, 100, workflow_id="taken")
        rt.run_until_idle()
        rt.start(named_child, "taken", workflow_id="parent")
        rt.run_until_idle()
        assert rt.result("parent") == "refused: WorkflowAlreadyStartedError"
        assert rt.result("taken") == 200  # the user's instance is untouched
        assert any("already used" in d.reason for d in rt.dead_letters())


def test_generated_child_ids_cannot_be_started_by_users() -> None:
    """Generated child ids carry ``~``, which user ids may not: a user cannot take one."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(generated_child, twice)
        rt.implement(double, _double)
        with pytest.raises(InvalidWorkflowIdError, match="~"):
            rt.start(twice, 1, workflow_id="p~1")
        rt.start(generated_child, 5, workflow_id="p")
        rt.run_until_idle()
        assert rt.result("p") == 10
        assert rt.result("p~1") == 10


def test_a_child_of_another_workflow_with_the_same_id_is_refused() -> None:
    """A parent whose child id is held by another parent's child gets the refusal too."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(named_child, twice)
        rt.implement(double, _double)
        rt.start(named_child, "shared", workflow_id="first")
        rt.run_until_idle()
        assert rt.result("first") == "child said 14"
        rt.start(named_child, "shared", workflow_id="second")
        rt.run_until_idle()
        assert rt.result("second") == "refused: WorkflowAlreadyStartedError"


def test_a_child_of_an_unregistered_workflow_fails_the_parents_call() -> None:
    """The child's workflow is not deployed: the parent's call fails with the reason."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(named_child)  # ``twice`` is not registered here
        rt.start(named_child, "c", workflow_id="parent")
        rt.run_until_idle()
        assert rt.result("parent") == "refused: UnknownWorkflowError"


# -- finding 13: integers beyond 64 bits -------------------------------------------------------

def test_a_start_with_an_integer_beyond_64_bits_names_the_limit() -> None:
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(twice)
        with pytest.raises(InvalidRequestError, match=r"-2\*\*63 and 2\*\*64-1"):
            rt.start(twice, 2**70, workflow_id="big")
        assert rt.store.list_instances() == []


def test_a_reply_with_an_integer_beyond_64_bits_is_refused_not_rounded() -> None:
    """orjson would read 2**64+1 as a float (rounded): the message is refused with the
    limit in its reason; the call stays pending for a correct reply."""
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(twice)
        rt.start(twice, 1, workflow_id="w")
        rt.run_until_idle()
        for value in (2**64 + 1, -(2**63) - 1):
            rt.queue.send(orjson.dumps({"v": 1, "kind": "call_result", "workflow_id": "w",
                                        "call_id": "1", "ok": True}).replace(
                b"}", f',"value":{value}}}'.encode()), group_id="w", dedup_id=f"r{value}")
        rt.run_until_idle()
        reasons = [d.reason for d in rt.dead_letters()]
        assert len(reasons) == 2 and all("2**64-1" in r for r in reasons)
        assert rt.status("w") is InstanceStatus.RUNNING
        # The largest integers the limit allows pass exactly.
        rt.queue.send(orjson.dumps({"v": 1, "kind": "call_result", "workflow_id": "w",
                                    "call_id": "1", "ok": True, "value": 2**64 - 1}),
                      group_id="w", dedup_id="max")
        rt.run_until_idle()
        assert rt.result("w") == 2**64 - 1


def test_digits_inside_strings_are_not_mistaken_for_integers() -> None:
    body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": "w",
                         "reason": "card 12345678901234567890123"})
    assert parse_workflow_message(body).workflow_id == "w"


def test_a_service_returning_an_integer_beyond_64_bits_fails_the_call_clearly() -> None:
    big = Service("big", int, int)

    @workflow(name="asks_big")
    async def asks_big(ctx: WorkflowContext[None]) -> str:
        try:
            await ctx.call(big, 1)
        except Exception as exc:
            return str(exc)
        return "no error"

    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(asks_big)
        rt.implement(big, lambda _: 2**64 + 1)
        rt.start(asks_big, None, workflow_id="a")
        rt.run_until_idle()
        assert "2**64-1" in str(rt.result("a"))


# -- a store failure while workflow code runs (found by the extended crash test) ---------------

class FlakyStore(MemoryStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_next_checkpoint = True

    def add_operations(self, workflow_id: str, operations: Any, activation: int) -> None:
        if self.fail_next_checkpoint:
            self.fail_next_checkpoint = False
            raise ConnectionError("throttled")
        super().add_operations(workflow_id, operations, activation)


once_double = step(name="once_double", semantics="at_most_once",
                   retry=RetryPolicy(max_attempts=1))(_double)


@workflow
async def at_most_once(ctx: WorkflowContext[int]) -> int:
    try:
        return await ctx.step(once_double, ctx.request)
    except Exception as exc:  # workflow code must never see the store's failure
        return -len(str(exc))


def test_a_store_failure_at_a_checkpoint_is_not_the_workflows_failure() -> None:
    """The at-most-once step records its attempt first; that write fails (throttled). The
    failure must not reach workflow code (which would catch it or fail with it): the
    activation is retried and the step runs once."""
    store = FlakyStore()
    with LocalRuntime(store=store) as rt:
        rt.register(at_most_once)
        rt.start(at_most_once, 21, workflow_id="s")
        rt.run_until_idle()
        assert rt.result("s") == 42
    assert Counter({21: 1}) == RUNS


def test_the_same_id_for_a_different_input_is_still_refused() -> None:
    with LocalRuntime(store=MemoryStateStore()) as rt:
        rt.register(twice)
        rt.start(twice, 1, workflow_id="x")
        with pytest.raises(WorkflowAlreadyStartedError):
            rt.start(twice, 2, workflow_id="x")


# -- a crash after a mid-activation save (found by the callback-token work) ---------------------

def _prepare(x: int) -> int:
    return x + 1


def _submit(token: str) -> None:
    del token


@workflow
async def prepare_then_wait(ctx: WorkflowContext[int]) -> bool:
    await ctx.step(_prepare, ctx.request)
    return await ctx.wait_for_callback("ok", _submit, bool)


def test_a_crash_after_a_mid_activation_save_does_not_fail_the_instance() -> None:
    """The activation saves its step and callback before the submitter runs, then dies
    before its commit. The saved step (resolved where it was made) is not a stage of
    replies: the next activation makes the submitter again instead of failing with
    NonDeterminismError ("created before the recorded replies were replayed")."""
    store = MemoryStateStore()
    real = store.commit_activation
    crashes = [1]

    def crash_once(*args: Any, **kwargs: Any) -> list[str]:
        if crashes:
            crashes.pop()
            raise ConnectionError("the Lambda died before its commit")
        return real(*args, **kwargs)

    store.commit_activation = crash_once  # type: ignore[method-assign]
    with LocalRuntime(store=store) as rt:
        rt.register(prepare_then_wait)
        handle = rt.start(prepare_then_wait, 1, workflow_id="pw")
        rt.run_until_idle()
        assert not crashes and handle.status() is InstanceStatus.RUNNING
        (callback,) = [op for op in handle.history().operations if op.kind == "callback"]
        token = orjson.loads(callback.request)["token"]
        rt.complete_callback(token, True)
        rt.run_until_idle()
        assert handle.result() is True


# -- a mid-activation save after a reply (found by the fault simulator) -------------------------

@workflow
async def reply_then_once(ctx: WorkflowContext[int]) -> int:
    a = await ctx.call(double, ctx.request)
    return await ctx.step(once_double, a)


def test_a_mid_activation_save_records_the_replies_it_depends_on() -> None:
    """The reply arrives, the at-most-once attempt made from it is saved, and the process
    dies before the commit, taking the in-memory queue with it. The recovering process wakes
    the instance before the service answers again: the saved attempt must not stand in a
    history without the reply it came from (NonDeterminismError before the fix)."""
    store = MemoryStateStore()
    real = store.commit_activation
    crash = [False]

    def commit(workflow_id: str, outcomes: Any, operations: Any, activation: int,
               at: float) -> list[str]:
        if crash[0]:
            crash[0] = False
            raise ConnectionError("the Lambda died before its commit")
        return real(workflow_id, outcomes, operations, activation, at)

    store.commit_activation = commit  # type: ignore[method-assign]
    with LocalRuntime(store=store) as rt:
        rt.register(reply_then_once)
        rt.start(reply_then_once, 5, workflow_id="ro")
        rt.run_until_idle()  # the call is sent; its request waits on the service queue
        rt.implement(double, _double)
        crash[0] = True
        rt.step_services()  # the reply reaches the workflow queue
        # Activation with the reply: the attempt is saved, then the commit dies; the reply
        # goes back to the queue. Drop it, as if it were lost, and wake the instance.
        rt.step_workflows()
        assert not crash[0]
        # The process dies here: the in-memory queue and the reply on it are gone. The next
        # process recovers: a wake-up first, then the pending call's request again.
        (message,) = rt.queue.receive(10)
        rt.queue.delete(message)
        rt.advance_time(600)  # a new process's queues remember no deduplication ids
        rt.recover()
        rt.run_until_idle()
        assert rt.status("ro") is InstanceStatus.COMPLETED, rt.history("ro").instance.error
        assert rt.result("ro") == 20
    # The service ran twice for its call (at least once, after a crash); the at-most-once
    # step once.
    assert Counter({5: 2, 10: 1}) == RUNS


@workflow
async def thrice(ctx: WorkflowContext[int]) -> int:
    return 3 * await ctx.call(double, ctx.request) // 2


def test_a_runtime_leaves_the_instances_of_workflows_it_does_not_register(
        tmp_path: Path) -> None:
    """One state file, two programs: a runtime that registers only `thrice` runs its own
    instance and leaves the `twice` instance running and untouched (before, it woke it,
    found no such workflow and, after the retries, failed it with PoisonMessage). The
    next runtime that registers `twice` finishes it."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as rt:
        rt.register(twice, thrice)
        rt.start(twice, 5, workflow_id="theirs")
        rt.start(thrice, 4, workflow_id="mine")
    with LocalRuntime(db) as rt:
        rt.register(thrice)
        rt.implement(double, _double)
        rt.run_until_idle()
        assert rt.result("mine") == 12
        assert rt.status("theirs") is InstanceStatus.RUNNING
        assert rt.history("theirs").instance.activations == 0
        assert rt.held == {"twice": ["theirs"]}
        assert rt.unrecovered == {}
    with LocalRuntime(db) as rt:
        rt.register(twice)
        rt.implement(double, _double)
        assert rt.held == {}
        rt.run_until_idle()
        assert rt.result("theirs") == 10
