"""`lambda-workflow replay`: exported histories replayed against the current code, and the
`history`/`status` source options around it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambda_workflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bank_transaction.py"
ALICE = '{"account_id": "alice", "amount": 30}'

# The changed workflow: the two parallel calls swapped, so operation #1 is now `fraud`.
SWAPPED = """    balance, fraud = await asyncio.gather(  # both requests leave in one activation
        ctx.call(balance_service, tx),
        ctx.call(fraud_service, tx),
    )
"""
SWAPPED_TO = """    fraud, balance = await asyncio.gather(  # both requests leave in one activation
        ctx.call(fraud_service, tx),
        ctx.call(balance_service, tx),
    )
"""


@pytest.fixture(autouse=True)
def _restore_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI loads modules by path (adding their folder to sys.path and registering them
    under their file's stem): undo that after each test, for the modules it loaded."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = dict(sys.modules)
    yield
    for name, module in list(sys.modules.items()):
        if before.get(name) is not module and name in CLI_LOADED:
            if name in before:
                sys.modules[name] = before[name]
            else:
                del sys.modules[name]


CLI_LOADED = {"bank_transaction", "bank_transaction_v2", "waiting", "other", "renamed"}


def run_cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """The history of instance t1 of the bank example (completed, 3 calls), exported with
    `run --db` and `history --json` into a file."""
    db = tmp_path / "state.sqlite3"
    code, _ = run_cli("run", EXAMPLE, "--db", db, "--id", "t1", "--quiet", "--input", ALICE)
    assert code == 0
    code, out = run_cli("history", "--db", db, "t1", "--json")
    assert code == 0
    path = tmp_path / "t1.json"
    path.write_text(out)
    return path


def test_replay_against_the_same_code_prints_ok_and_exits_0(exported: Path) -> None:
    """An exported history replayed against the module that recorded it: exit 0 and OK."""
    code, out = run_cli("replay", exported, "--workflow", EXAMPLE)
    assert code == 0
    assert out.startswith(f"{exported}: OK: workflow 'make_transaction' (t1) replays its 3 "
                          "operations and ends completed as recorded")


def test_replay_against_a_changed_module_names_the_new_file_and_line(
        exported: Path, tmp_path: Path) -> None:
    """A copy of the module with the parallel calls swapped: exit 1, and the output carries
    the NonDeterminismError with the changed file's name and line and what was recorded."""
    source = EXAMPLE.read_text()
    assert SWAPPED in source
    changed = tmp_path / "bank_transaction_v2.py"
    changed.write_text(source.replace(SWAPPED, SWAPPED_TO))
    line = changed.read_text().splitlines().index("        ctx.call(fraud_service, tx),") + 1
    code, out = run_cli("replay", exported, "--workflow", changed)
    assert code == 1
    assert f"{exported}: FAILED: NonDeterminismError:" in out
    assert f"the code at bank_transaction_v2.py:{line} in make_transaction created call " \
           "'fraud', but the history recorded call 'balance'" in out


def test_replay_of_a_running_instance_is_checked_up_to_where_it_waits(tmp_path: Path) -> None:
    """A history exported while the instance waits (its service has no implementation)
    replays OK against the same code, and fails against code that calls another service
    there."""
    module = tmp_path / "waiting.py"
    module.write_text(
        "from lambda_workflow import Service, WorkflowContext, workflow\n"
        "ask = Service('ask', str, str)\n"
        "other = Service('other', str, str)\n"
        "@workflow\n"
        "async def waiter(ctx: WorkflowContext[str]) -> str:\n"
        "    return await ctx.call(ask, ctx.request)\n")
    db = tmp_path / "w.sqlite3"
    code, out = run_cli("run", module, "--db", db, "--id", "w1", "--quiet", "--input", '"hi"')
    assert code == 1 and "running" in out
    code, out = run_cli("history", "--db", db, "w1", "--json")
    history = tmp_path / "w1.json"
    history.write_text(out)
    code, out = run_cli("replay", history, "--workflow", module)
    assert (code, "ends suspended as recorded" in out) == (0, True)
    module.write_text(module.read_text().replace("ctx.call(ask,", "ctx.call(other,"))
    code, out = run_cli("replay", history, "--workflow", module)
    assert code == 1
    assert "waiting.py:6 in waiter created call 'other', but the history recorded call 'ask'" \
        in out


def test_a_history_file_that_is_not_json_exits_2_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not JSON, and JSON that is not a history, exit 2 naming the file and
    what is wrong; nothing is replayed."""
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json")
    code, out = run_cli("replay", bad, "--workflow", EXAMPLE)
    assert (code, out) == (2, "")
    err = capsys.readouterr().err
    assert f"{bad} is not a workflow history" in err and "not valid JSON" in err
    bad.write_text(json.dumps({"format": 1, "workflow": "make_transaction"}))
    code, _ = run_cli("replay", bad, "--workflow", EXAMPLE)
    assert code == 2
    assert "the field 'workflow_id' is missing" in capsys.readouterr().err
    code, _ = run_cli("replay", tmp_path / "missing.json", "--workflow", EXAMPLE)
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_unknown_workflow_name_is_a_clear_error(
        exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--workflow FILE:NAME` naming no workflow of the file, or a file that lacks the
    history's workflow, exits 2 listing the workflows the file has."""
    code, out = run_cli("replay", exported, "--workflow", f"{EXAMPLE}:no_such_workflow")
    assert (code, out) == (2, "")
    err = capsys.readouterr().err
    assert "has no workflow 'no_such_workflow' (found: make_transaction)" in err
    other = tmp_path / "other.py"
    other.write_text(
        "from lambda_workflow import WorkflowContext, workflow\n"
        "@workflow\n"
        "async def unrelated(ctx: WorkflowContext[int]) -> int:\n"
        "    return ctx.request\n")
    code, _ = run_cli("replay", exported, "--workflow", other)
    assert code == 2
    err = capsys.readouterr().err
    assert "records workflow 'make_transaction'" in err and "(found: unrelated)" in err


def test_a_workflow_can_be_picked_by_name_for_a_renamed_workflow(
        exported: Path, tmp_path: Path) -> None:
    """After a rename the history's workflow name is not found (exit 2); `FILE:NAME` replays
    the history against the named workflow instead (exit 0)."""
    renamed = tmp_path / "renamed.py"
    renamed.write_text(EXAMPLE.read_text().replace("make_transaction", "make_transfer"))
    code, _ = run_cli("replay", exported, "--workflow", renamed)
    assert code == 2
    code, out = run_cli("replay", exported, "--workflow", f"{renamed}:make_transfer")
    assert code == 0 and ": OK: " in out


def test_several_histories_exit_1_when_one_does_not_match(exported: Path,
                                                         tmp_path: Path) -> None:
    """Replaying several histories reports each and a summary; one mismatch makes exit 1."""
    doc = json.loads(exported.read_text())
    doc["operations"][2]["name"] = "refund"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    code, out = run_cli("replay", exported, tampered, "--workflow", EXAMPLE)
    assert code == 1
    assert f"{exported}: OK" in out
    assert f"{tampered}: FAILED: NonDeterminismError:" in out and "'refund'" in out
    assert out.rstrip().endswith("1 of 2 histories replay OK")


def test_history_and_status_need_a_source() -> None:
    """`history` and `status` need exactly one of --db and --table (argparse exits 2)."""
    with pytest.raises(SystemExit) as caught:
        main(["history", "t1"], out=io.StringIO())
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["status", "--db", "x.sqlite3", "--table", "T"], out=io.StringIO())
    assert caught.value.code == 2


def test_the_installed_command_exits_with_the_replay_verdict(exported: Path,
                                                            tmp_path: Path) -> None:
    """`python -m lambda_workflow replay` as a process: exit 0 with OK, exit 1 with the
    error for a changed module."""
    ok = subprocess.run([sys.executable, "-m", "lambda_workflow", "replay", str(exported),
                         "--workflow", str(EXAMPLE)], capture_output=True, text=True)
    assert ok.returncode == 0 and ": OK: " in ok.stdout
    changed = tmp_path / "bank_transaction.py"
    changed.write_text(EXAMPLE.read_text().replace(SWAPPED, SWAPPED_TO))
    bad = subprocess.run([sys.executable, "-m", "lambda_workflow", "replay", str(exported),
                          "--workflow", str(changed)], capture_output=True, text=True)
    assert bad.returncode == 1 and "NonDeterminismError" in bad.stdout


STEPPED = '''
from lambda_workflow import WorkflowContext, workflow


def plan(n: int) -> list[int]:
    return list(range(n))


@workflow
async def stepped(ctx: WorkflowContext[int]) -> int:
    parts = await ctx.step(plan, ctx.request)
    return sum(parts)


EXAMPLES = {"stepped": [4]}
'''


def test_an_exported_history_with_a_step_replays_ok(tmp_path: Path) -> None:
    """run --db, history --json, replay: a step's request is recorded with ``attempt`` last,
    not in sorted order; the import keeps the recorded bytes (checked against the recorded
    digest), so the exported history replays OK instead of "request differs"."""
    app = tmp_path / "stepped.py"
    app.write_text(STEPPED)
    CLI_LOADED.add("stepped")
    db = tmp_path / "s.sqlite3"
    code, out = run_cli("run", app, "--db", db, "--input", "4", "--id", "st-1", "--quiet")
    assert code == 0, out
    code, exported = run_cli("history", "--db", db, "st-1", "--json")
    assert code == 0
    path = tmp_path / "h.json"
    path.write_text(exported)
    code, out = run_cli("replay", path, "--workflow", app)
    assert code == 0, out
    assert "OK" in out


def _export_stepped(tmp_path: Path) -> tuple[Path, Path]:
    """The stepped module and the exported history of its instance st-1."""
    app = tmp_path / "stepped.py"
    app.write_text(STEPPED)
    CLI_LOADED.add("stepped")
    db = tmp_path / "s.sqlite3"
    code, out = run_cli("run", app, "--db", db, "--input", "4", "--id", "st-1", "--quiet")
    assert code == 0, out
    code, exported = run_cli("history", "--db", db, "st-1", "--json")
    assert code == 0
    path = tmp_path / "h.json"
    path.write_text(exported)
    return app, path


def test_a_request_whose_keys_were_reordered_says_so_instead_of_an_empty_diff(
        tmp_path: Path) -> None:
    """A history whose step request had its keys reordered by some tool (same fields, other
    bytes, the recorded digest lost): the replay fails, and the message says the key order
    differs and where, instead of ending in an empty diff ("...recorded one: .")."""
    app, path = _export_stepped(tmp_path)
    doc = json.loads(path.read_text())
    (step,) = [op for op in doc["operations"] if op["kind"] == "step"]
    step["request"] = {"attempt": step["request"]["attempt"], "args": step["request"]["args"],
                       "kwargs": step["request"]["kwargs"]}
    path.write_text(json.dumps(doc))
    code, out = run_cli("replay", path, "--workflow", app)
    assert code == 1
    assert "the request differs from the recorded one: ." not in out
    assert "the request differs from the recorded one: the same fields" in out
    assert "in another order" in out and "args, attempt, kwargs" in out
    assert "args, kwargs, attempt" in out


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("operations.0.seq", "one",
     "operations[0].seq: expected an integer, found a string (\"one\")"),
    ("activations", "3", "activations: expected an integer, found a string (\"3\")"),
    ("operations.1.request_digest", 5,
     "operations[1].request_digest: expected a string, found a number (5)"),
    ("operations.2.state", "bogus",
     "operations[2].state: expected one of pending, completed, failed, found a string "
     "(\"bogus\")"),
    ("operations.0.sent", "yes", "operations[0].sent: expected true or false"),
    ("operations.0.resolved_at", "noon",
     "operations[0].resolved_at: expected a number (seconds) or null"),
    ("operations.1", 7, "operations[1]: expected a JSON object, found a number"),
    ("operations", "none", "operations: expected an array, found a string"),
    ("status", "weird", "status: expected one of running, completed, failed, cancelled"),
    ("operations.2.id", None, "operations[2]: the field 'id' is missing"),
])
def test_a_history_with_a_field_of_the_wrong_type_names_it_and_exits_2(
        exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str,
        value: object, reason: str) -> None:
    """A hand-edited or foreign history with a field missing or of the wrong type: exit 2,
    naming the field's path and what was expected, and nothing replayed (a string seq or
    activations count crashed the replay with a TypeError traceback; a numeric digest was
    taken as is)."""
    doc = json.loads(exported.read_text())
    *parents, last = field.split(".")
    holder = doc
    for key in parents:
        holder = holder[int(key)] if key.isdigit() else holder[key]
    if value is None:
        del holder[last]
    elif last.isdigit():
        holder[int(last)] = value
    else:
        holder[last] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, out = run_cli("replay", bad, "--workflow", EXAMPLE)
    assert (code, out) == (2, "")
    err = capsys.readouterr().err
    assert f"{bad} is not a workflow history" in err
    assert reason in err
