"""`lambda-workflow history --table` and `status --table`: export a history from a
deployment's DynamoDB table (moto) and replay it against the code before deploying."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import bank_transaction as bank
import pytest

from lambda_workflow.aws import DynamoDBStateStore
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime

from .conftest import EXAMPLES, Aws

EXAMPLE = EXAMPLES / "bank_transaction.py"


def run_cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


@pytest.fixture
def table(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> str:
    """A table holding instance tx-1 of the bank workflow, completed (its activations ran on
    the embedded runtime with DynamoDB as the state store), and the environment the CLI reads
    the table with: only the endpoint (moto's) besides the fixture's credentials and region."""
    name = aws.create_table()
    # The example's transaction service debits its module-level balances: give this run its
    # own copy, so the other tests of the session find alice's 100 (they did not, run after
    # this one).
    monkeypatch.setattr(bank, "BALANCES", dict(bank.BALANCES))
    store = DynamoDBStateStore(aws.client("dynamodb"), name)
    with LocalRuntime(store=store) as runtime:
        bank.setup(runtime)
        runtime.start(bank.make_transaction, bank.BankTransaction(account_id="alice",
                                                                  amount=10),
                      workflow_id="tx-1")
        runtime.run_until_idle()
        assert runtime.result("tx-1") == "success"
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    # The CLI loads examples/bank_transaction.py as a module of that name: keep the one the
    # other AWS tests imported.
    monkeypatch.setitem(sys.modules, "bank_transaction", bank)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


def test_a_history_exported_from_dynamodb_replays_ok(table: str, tmp_path: Path) -> None:
    """`history --table T tx-1 --json` writes the history read from DynamoDB, and `replay`
    of that file against the example module exits 0 with OK."""
    code, out = run_cli("history", "--table", table, "tx-1", "--json")
    assert code == 0
    exported = tmp_path / "tx-1.json"
    exported.write_text(out)
    code, out = run_cli("replay", exported, "--workflow", EXAMPLE)
    assert code == 0
    assert "OK: workflow 'make_transaction' (tx-1) replays its 3 operations and ends " \
           "completed as recorded" in out


def test_history_and_status_read_the_table(table: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`history --table` prints the operations, `status --table` lists the instance (all of
    them, or the ids given), and an unknown id exits 1 naming the table."""
    code, out = run_cli("history", "--table", table, "tx-1")
    assert code == 0
    assert "tx-1 (make_transaction) completed, 3 activations" in out
    code, out = run_cli("status", "--table", table)
    assert (code, out.split()) == (0, ["tx-1", "make_transaction", "completed",
                                       "activations=3"])
    code, out = run_cli("status", "--table", table, "tx-1", "tx-404")
    assert code == 1 and out.startswith("tx-1 ")
    assert f"no workflow instance 'tx-404' in table {table!r}" in capsys.readouterr().err
    code, _ = run_cli("history", "--table", table, "tx-404")
    assert code == 1
    assert f"no workflow instance 'tx-404' in table {table!r}" in capsys.readouterr().err


def test_a_missing_table_is_a_clear_error(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A table that does not exist: exit 1 with the AWS error, no traceback."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    code, _ = run_cli("history", "--table", "no-such-table", "tx-1", "--json")
    assert code == 1
    err = capsys.readouterr().err
    assert "reading table 'no-such-table' failed" in err and "ResourceNotFound" in err
