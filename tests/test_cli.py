"""The lambda-workflow command line, run in-process and as a subprocess."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_workflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "bank_transaction.py")


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_run_shows_parallel_calls_in_first_activation_and_the_transaction_later() -> None:
    """`run` shows balance and fraud sent by activation 1 and the transaction by activation 2."""
    code, out = run_cli("run", EXAMPLE)
    assert code == 0
    assert "activation 1 of tx-ok: sent call 1 balance, call 2 fraud; suspended" in out
    assert "activation 2 of tx-ok: recorded replies to call 1, 2; sent call 3 transaction" in out
    assert 'activation 3 of tx-ok: recorded replies to call 3; completed -> "success"' in out


def test_run_reports_each_example_outcome() -> None:
    """`run` without --input starts every EXAMPLES entry and prints each result."""
    code, out = run_cli("run", EXAMPLE, "--quiet")
    assert code == 0
    results = dict(re.findall(r"^  (tx-\S+)\s+completed\s+(\S+)$", out, re.M))
    assert results == {"tx-ok": '"success"', "tx-low-balance": '"failure"',
                       "tx-fraud": '"failure"'}


def test_run_with_input_and_db_then_history_and_status(tmp_path: Path) -> None:
    """A run into a SQLite file can be inspected later with `history` and `status`."""
    db = str(tmp_path / "state.sqlite3")
    code, _ = run_cli("run", EXAMPLE, "--db", db, "--id", "t1", "--quiet",
                      "--input", '{"account_id": "alice", "amount": 30}')
    assert code == 0
    code, out = run_cli("history", "--db", db, "t1")
    assert code == 0
    assert "t1 (make_transaction) completed, 3 activations" in out
    assert re.search(r"#1\s+call balance\s+completed", out)
    assert re.search(r"#3\s+call transaction\s+completed", out)
    code, out = run_cli("history", "--db", db, "t1", "--json")
    doc = json.loads(out)
    assert [op["name"] for op in doc["operations"]] == ["balance", "fraud", "transaction"]
    assert doc["result"] == "success"
    code, out = run_cli("status", "--db", db)
    assert re.search(r"^t1\s+make_transaction\s+completed\s+activations=3$", out, re.M)


def test_run_exits_nonzero_when_a_workflow_fails() -> None:
    """An unknown account makes the balance service fail, the workflow fail, and `run` exit 1."""
    code, out = run_cli("run", EXAMPLE, "--quiet", "--input",
                        '{"account_id": "nobody", "amount": 1}')
    assert code == 1
    assert "failed" in out and "UnknownAccount" in out


def test_run_rejects_invalid_input_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An --input that is not a valid BankTransaction exits 1 with an error naming the field."""
    code, out = run_cli("run", EXAMPLE, "--input", '{"account_id": "alice"}')
    assert code == 1
    err = capsys.readouterr().err
    assert "InvalidRequestError" in err and "make_transaction" in err and "amount" in err
    assert "start " not in out


def test_history_of_unknown_instance_fails(tmp_path: Path) -> None:
    """`history` of an id that does not exist exits 1."""
    code, _ = run_cli("history", "--db", str(tmp_path / "s.db"), "nope")
    assert code == 1


def test_readme_main_command_runs_the_workflow_end_to_end() -> None:
    """The README's first command, minus its install steps, completes all three examples."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None
    main_cmd = block.group(1).splitlines()[0]
    run_part = main_cmd.split("&&")[-1].strip()
    argv = shlex.split(run_part)
    assert argv[:3] == [".venv/bin/python", "-m", "lambda_workflow"]
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'tx-ok\s+completed\s+"success"', proc.stdout)
    assert re.search(r'tx-low-balance\s+completed\s+"failure"', proc.stdout)
    assert re.search(r'tx-fraud\s+completed\s+"failure"', proc.stdout)


ORDER = '''
from lambda_workflow import Service, WorkflowContext, workflow

reserve = Service("reserve", str, int)
ship = Service("ship", str, str)


@workflow(name="order")
async def order(ctx: WorkflowContext[str]) -> str:
{body}


def setup(runtime):
    runtime.register(order)
    if {services}:
        runtime.implement(reserve, len)
        runtime.implement(ship, lambda item: f"shipped {{item}}")
'''
V1 = """    units = await ctx.call(reserve, ctx.request)
    label = await ctx.call(ship, f"{ctx.request} x{units}")
    return f"{label} ({units} units)\""""
V2 = """    label = await ctx.call(ship, ctx.request)
    units = await ctx.call(reserve, ctx.request)
    return f"{label} ({units} units)\""""


def test_resume_after_a_rollback_and_reset_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The user story through the CLI: v1 records a call (no services yet), the bad deploy v2
    fails the instance, `resume --run v1` revives it to v1's result; `reset --to 1` re-runs
    it from the first call; commands that do not apply exit 1 with the reason."""
    db = str(tmp_path / "state.sqlite3")
    for name, body, services in (("first", V1, False), ("v1", V1, True), ("v2", V2, True)):
        (tmp_path / f"{name}.py").write_text(ORDER.format(body=body, services=services))
    start = ("--db", db, "--id", "o1", "--quiet", "--input", '"lamp"')
    code, out = run_cli("run", str(tmp_path / "first.py"), *start)
    assert code == 1 and re.search(r"o1\s+running\s+waiting on call 1 reserve", out)
    code, out = run_cli("run", str(tmp_path / "v2.py"), *start)
    assert code == 1 and "NonDeterminismError" in out
    code, out = run_cli("resume", "o1", "--db", db)  # recorded; runs when a runtime opens it
    assert code == 0
    assert "resume o1: repair 1, was failed" in out and "it is running again" in out
    code, out = run_cli("status", "--db", db, "o1")
    assert re.search(r"^o1\s+order\s+running", out, re.M)
    code, out = run_cli("run", str(tmp_path / "v1.py"), *start)  # the rolled-back code
    assert code == 0 and re.search(r'o1\s+completed\s+"shipped lamp x4 \(4 units\)"', out)
    # reset re-runs the second call; under v2 again it fails, and resume --run v1 revives it
    code, out = run_cli("reset", "o1", "--to", "1", "--db", db, "--quiet",
                        "--run", str(tmp_path / "v2.py"))
    assert code == 1
    assert "reset o1: repair 2, was completed; reset to operation 1, dropped 2" in out
    assert re.search(r"o1\s+failed\s+.*NonDeterminismError", out)
    code, out = run_cli("resume", "o1", "--db", db, "--run", str(tmp_path / "v1.py"))
    assert code == 0
    assert "activation" in out  # the activations are printed without --quiet
    assert re.search(r'o1\s+completed\s+"shipped lamp x4 \(4 units\)"', out)
    code, out = run_cli("history", "--db", db, "o1")
    assert re.search(r"#r1\.2\s+call ship\s+completed", out)
    capsys.readouterr()
    code, _ = run_cli("resume", "o1", "--db", db)
    assert code == 1
    assert "RepairError: instance 'o1' is completed" in capsys.readouterr().err
    code, _ = run_cli("reset", "o1", "--to", "7", "--db", db)
    assert code == 1
    assert "has no operation '7'" in capsys.readouterr().err


def test_repair_arguments_that_do_not_go_together_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--run` runs the instance here, which a deployment's table cannot: refused with the
    reason, exit 2, nothing read or written; `--db` and `--table` together are refused by
    the parser."""
    assert main(["resume", "x-1", "--table", "t", "--run", "app.py"], out=io.StringIO()) == 2
    assert "--run works with --db only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["reset", "x-1", "--to", "1", "--db", "s.sqlite3", "--table", "t"],
             out=io.StringIO())
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_run_says_which_waited_on_services_nothing_implements() -> None:
    """`run` of a module that implements no local services (the bank's Lambda handlers)
    ends with the instance waiting, and says that nothing implements the services it waits
    on, instead of leaving the user to guess why it never finished."""
    code, out = run_cli("run", str(ROOT / "examples" / "bank_lambda.py"), "--quiet",
                        "--id", "tx-1", "--input", '{"account_id": "a", "amount": 5}')
    assert code == 1
    assert ("tx-1                 running    waiting on call 1 balance (no service 'balance' "
            "is implemented here), call 2 fraud (no service 'fraud' is implemented here)") in out
