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
