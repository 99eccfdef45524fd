"""The operator commands on a SQLite state file (``--db``): start, cancel, callback, describe,
status with filters and pages through an index, and history with times and whole values."""

from __future__ import annotations

import io
import re
from pathlib import Path

import orjson
import pytest

from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.protocols import InvalidPageTokenError
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.cli import main
from lambda_workflow.models import InstanceRecord, InstanceStatus

MODULE = '''
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow


class Order(BaseModel):
    n: int


ledger = Service("ledger", Order, int)
audit = Service("audit", Order, int)
LONG = "z" * 80


@workflow
async def fulfil(ctx: WorkflowContext[Order]) -> dict[str, object]:
    await ctx.sleep(60)
    approval = ctx.create_callback("approval", int)
    got = await approval
    checked = await ctx.call(audit, ctx.request)
    if ctx.request.n > 1:
        await ctx.call(ledger, ctx.request)
    return {"zeta": LONG, "alpha": got + checked}


def setup(runtime):
    runtime.register(fulfil)
    runtime.implement(audit, lambda order: order.n * 10)
'''


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def module(tmp_path: Path) -> str:
    path = tmp_path / "ops_flow.py"
    path.write_text(MODULE)
    return str(path)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state.sqlite3")


def _token(db: str, workflow_id: str) -> str:
    code, out = run_cli("describe", "--db", db, workflow_id, "--full")
    assert code == 0, out
    found = re.search(r"token ([A-Za-z0-9_\-.]+)\)", out)
    assert found is not None, out
    return found.group(1)


def test_start_without_run_writes_the_instance_and_the_next_runtime_runs_it(
        module: str, db: str) -> None:
    """`start --db` without --run leaves a running instance that a later runtime opening the
    file starts (here the one `start --run` of a second instance opens)."""
    code, out = run_cli("start", module, "--db", db, "--id", "o-1", "--input", '{"n": 1}')
    assert code == 0
    assert "started o-1 (fulfil)" in out and "give --run to run it now" in out
    code, out = run_cli("describe", "--db", db, "o-1")
    assert "status:       running" in out and "activations:  0" in out
    code, out = run_cli("start", module, "--db", db, "--id", "o-2", "--input", '{"n": 1}',
                        "--run", "--quiet")
    assert code == 0
    code, out = run_cli("history", "--db", db, "o-1")
    assert re.search(r"#1\s+timer sleep\s+completed", out), out
    assert re.search(r"#2\s+callback approval\s+pending\s+created \S+Z \(activation 2\); "
                     r"no timeout", out), out


def test_start_rejects_bad_input_naming_the_workflow(module: str, db: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("start", module, "--db", db, "--input", '{"n": "many"}')
    assert code == 1
    assert "not a valid input of workflow 'fulfil'" in capsys.readouterr().err
    code, _ = run_cli("start", f"{module}:nope", "--db", db, "--input", '{"n": 1}')
    assert code == 2
    assert "no workflow 'nope'" in capsys.readouterr().err


def test_describe_callback_then_a_call_no_service_implements(module: str, db: str) -> None:
    """An instance waits on a callback; `callback complete --run` completes it; then it waits
    on a service the module does not implement, and `describe --run` says so (without
    --run, the state file cannot say, so it only names the service)."""
    code, out = run_cli("start", module, "--db", db, "--id", "o-3", "--input", '{"n": 2}',
                        "--run")
    assert code == 0
    assert "sent timer 1 sleep" in out  # a timer, not "call 1 sleep"
    # ... and what it waits on by kind (it said "recorded replies to call 1; suspended,
    # waiting on call 2").
    assert "recorded replies to timer 1; suspended, waiting on callback 2" in out
    code, out = run_cli("describe", "--db", db, "o-3")
    assert re.search(r"waiting on:\s+callback 2 'approval': a completion of its token "
                     r"\(no timeout\)", out), out
    token = _token(db, "o-3")
    code, out = run_cli("callback", "complete", token, "--result", "7", "--db", db, "--run",
                        module)
    assert code == 0, out
    code, out = run_cli("describe", "--db", db, "o-3", "--run", module)
    assert "call 4: service 'ledger', and no service implements ledger" in out
    code, out = run_cli("describe", "--db", db, "o-3")
    assert "call 4: service 'ledger' (request sent)" in out
    assert "no service implements" not in out


def test_callback_on_db_needs_the_module(module: str, db: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    run_cli("start", module, "--db", db, "--id", "o-4", "--input", '{"n": 1}', "--run")
    token = _token(db, "o-4")
    code, _ = run_cli("callback", "complete", token, "--db", db)
    assert code == 2
    assert "give it with --run FILE.py" in capsys.readouterr().err
    code, _ = run_cli("callback", "fail", token, "--db", db, "--run", module)
    assert code == 2
    assert "callback fail needs --error TYPE" in capsys.readouterr().err
    code, out = run_cli("callback", "fail", token, "--error", "Rejected", "--message", "no",
                        "--db", db, "--run", module)
    assert code == 1  # the workflow does not catch the failure: it fails
    code, out = run_cli("describe", "--db", db, "o-4")
    assert "status:       failed" in out and "Rejected" in out


def test_callback_complete_then_history_full_prints_the_recorded_bytes(module: str,
                                                                       db: str) -> None:
    """--full prints every value whole, as its recorded bytes (not cut at 60 characters)."""
    run_cli("start", module, "--db", db, "--id", "o-5", "--input", '{"n": 1}', "--run")
    code, _ = run_cli("callback", "complete", _token(db, "o-5"), "--result", "5", "--db", db,
                      "--run", module)
    assert code == 0
    store = SQLiteStateStore(db)
    inst = store.get_instance("o-5")
    store.close()
    assert inst is not None and inst.result is not None
    recorded = inst.result.decode()
    assert len(recorded) > 60
    code, out = run_cli("history", "--db", db, "o-5")
    assert f"result: {recorded}" not in out and "result: " + recorded[:57] + "..." in out
    code, out = run_cli("history", "--db", db, "o-5", "--full")
    assert f"  result: {recorded}\n" in out


def test_cancel_without_run_is_recorded_and_the_next_runtime_ends_it(module: str,
                                                                     db: str) -> None:
    run_cli("start", module, "--db", db, "--id", "o-6", "--input", '{"n": 1}', "--run")
    code, out = run_cli("cancel", "o-6", "--db", db, "--reason", "customer left")
    assert code == 0 and "recorded" in out
    code, out = run_cli("describe", "--db", db, "o-6")
    assert "status:       running" in out and "reason 'customer left'" in out
    run_cli("start", module, "--db", db, "--id", "o-7", "--input", '{"n": 1}', "--run")
    code, out = run_cli("describe", "--db", db, "o-6")
    assert "status:       cancelled" in out and "customer left" in out
    code, out = run_cli("cancel", "o-6", "--db", db)
    assert code == 1 and "already ended (cancelled)" in out


def test_cancel_with_run_ends_the_instance_now(module: str, db: str) -> None:
    run_cli("start", module, "--db", db, "--id", "o-8", "--input", '{"n": 1}', "--run")
    code, out = run_cli("cancel", "o-8", "--db", db, "--run", module, "--quiet")
    assert code == 0
    assert re.search(r"o-8\s+cancelled", out), out


def _fill(db: str) -> None:
    store = SQLiteStateStore(db)
    for i in range(7):
        status = [InstanceStatus.RUNNING, InstanceStatus.COMPLETED, InstanceStatus.FAILED][i % 3]
        store.create_instance(InstanceRecord(
            f"w-{i}", "alpha" if i % 2 else "beta", b"{}", "d", status=status,
            created_at=1_800_000_000.0 + 60 * i, updated_at=1_800_000_000.0 + 60 * i))
    store.close()


def _ids(out: str) -> list[str]:
    return re.findall(r"^(w-\d)\s", out, re.M)


def test_status_filters_by_status_workflow_and_time(db: str) -> None:
    _fill(db)
    assert _ids(run_cli("status", "--db", db)[1]) == [f"w-{i}" for i in range(7)]
    assert _ids(run_cli("status", "--db", db, "--status", "running")[1]) == [
        "w-0", "w-3", "w-6"]
    assert _ids(run_cli("status", "--db", db, "--workflow", "alpha")[1]) == [
        "w-1", "w-3", "w-5"]
    # 1_800_000_120 is 2027-01-15T08:02:00Z: w-2 is created then, w-4 at 08:04.
    assert _ids(run_cli("status", "--db", db, "--since", "2027-01-15T08:02:00Z",
                        "--until", "2027-01-15T08:04:00")[1]) == ["w-2", "w-3", "w-4"]
    assert _ids(run_cli("status", "--db", db, "--since", "1800000300")[1]) == ["w-5", "w-6"]


def test_status_pages_with_next_token(db: str) -> None:
    _fill(db)
    seen: list[str] = []
    argv = ["status", "--db", db, "--limit", "2"]
    pages = 0
    while True:
        code, out = run_cli(*argv)
        assert code == 0
        pages += 1
        seen += _ids(out)
        more = re.search(r"^more: --next-token (\S+)$", out, re.M)
        if more is None:
            break
        argv = ["status", "--db", db, "--limit", "2", "--next-token", more.group(1)]
    assert (seen, pages) == ([f"w-{i}" for i in range(7)], 4)


def test_status_refuses_bad_tokens_times_and_limits(db: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _fill(db)
    assert run_cli("status", "--db", db, "--next-token", "not-a-token")[0] == 2
    assert "--next-token: page token 'not-a-token' is not a token a listing printed" in \
        capsys.readouterr().err
    assert run_cli("status", "--db", db, "--since", "yesterday")[0] == 2
    assert "--since 'yesterday' is not a time" in capsys.readouterr().err
    assert run_cli("status", "--db", db, "--limit", "0")[0] == 2
    assert "--limit 0 must be at least 1" in capsys.readouterr().err
    assert run_cli("status", "--db", db, "w-1", "--status", "running")[0] == 2
    assert "not both" in capsys.readouterr().err


def test_listing_reads_through_the_status_index(db: str) -> None:
    """The listing query is served by instances_by_status (with a status) or
    instances_by_created (without), never a scan of the instances table."""
    _fill(db)
    traced: list[str] = []
    store = SQLiteStateStore(db)
    store._db.set_trace_callback(traced.append)
    page = store.list_page(status=InstanceStatus.RUNNING, limit=2)
    store.list_page(status=InstanceStatus.RUNNING, limit=2, next_token=page.next_token)
    store.list_page(limit=2, since=1_800_000_100.0)
    store._db.set_trace_callback(None)
    selects = [sql for sql in traced if sql.startswith("SELECT workflow_id, workflow_name")]
    plans = [" | ".join(str(row[-1]) for row in store._db.execute("EXPLAIN QUERY PLAN " + sql))
             for sql in selects]
    store.close()
    assert len(plans) == 3
    assert all("USING INDEX instances_by_status" in p for p in plans[:2]), plans
    assert "USING INDEX instances_by_created" in plans[2], plans
    assert not any(re.search(r"SCAN instances$|SCAN instances \|", p) for p in plans), plans


def test_history_json_is_unchanged_by_the_new_flags(module: str, db: str) -> None:
    run_cli("start", module, "--db", db, "--id", "o-9", "--input", '{"n": 1}', "--run")
    code, out = run_cli("history", "--db", db, "o-9", "--json")
    assert code == 0 and orjson.loads(out)["workflow_id"] == "o-9"


@pytest.mark.parametrize("make", [MemoryStateStore, SQLiteStateStore], ids=["memory", "sqlite"])
def test_list_page_is_the_same_on_memory_and_sqlite(make: type[MemoryStateStore]) -> None:
    """Both embedded stores page the same instances in the same order, and each refuses
    the other's tokens."""
    store = make()
    for i in range(5):
        at = 1_800_000_000.0 + (i // 2)  # two instances share each creation time
        store.create_instance(InstanceRecord(f"w-{i}", "alpha", b"{}", "d", created_at=at,
                                             updated_at=at))
    seen: list[str] = []
    token = None
    while True:
        page = store.list_page(limit=2, next_token=token, until=1_800_000_001.0)
        seen += [i.workflow_id for i in page.instances]
        token = page.next_token
        if token is None:
            break
    assert seen == ["w-0", "w-1", "w-2", "w-3"]
    foreign = ("eyJiIjoibWVtb3J5IiwicCI6WzEuMCwidyJdfQ"  # {"b":"memory","p":[1.0,"w"]}
               if not isinstance(store, MemoryStateStore)
               else "eyJiIjoic3FsaXRlIiwicCI6WzEuMCwidyJdfQ")
    with pytest.raises(InvalidPageTokenError, match="comes from a listing of a"):
        store.list_page(next_token=foreign)
    with pytest.raises(ValueError, match="limit=0 must be at least 1"):
        store.list_page(limit=0)


def test_run_leaves_the_instances_of_other_workflows_running(
        module: str, db: str) -> None:
    """`start --run` with a module that does not register every workflow the file holds runs
    its own instance and leaves the other workflow's instance running, untouched, for a
    runtime that registers it (LocalRuntime.held)."""
    bank = str(Path(__file__).resolve().parent.parent / "examples" / "bank_transaction.py")
    code, _ = run_cli("start", bank, "--db", db, "--id", "b-1",
                      "--input", '{"account_id": "alice", "amount": 5}')
    assert code == 0
    code, _ = run_cli("start", module, "--db", db, "--id", "o-10", "--input", '{"n": 1}',
                      "--run")
    assert code == 0
    code, out = run_cli("status", "--db", db)
    statuses = dict(re.findall(r"^(\S+)\s+\S+\s+(\S+)", out, re.M))
    assert statuses["b-1"] == "running"
    assert statuses["o-10"] != "failed"
    code, out = run_cli("describe", "b-1", "--db", db)
    assert re.search(r"^activations:\s+0$", out, re.M), out
