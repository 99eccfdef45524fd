"""`lambda-workflow bench` on a DynamoDB export (moto's server over HTTP): the bank example run
with DynamoDB as the state store, exported with ``lambda-workflow history --table T ID --json``
and benched against the example. tests/test_bench_cli.py does the same on SQLite exports."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

from lambda_workflow.aws import DynamoDBStateStore
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime

from .conftest import EXAMPLES, Aws

EXAMPLE = EXAMPLES / "bank_transaction.py"


# The CLI loads modules by path: tests/conftest.py puts back what it replaced.
pytestmark = pytest.mark.usefixtures("cli_modules_restored")


def run_cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def test_bench_of_a_dynamodb_export(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    """The bank example's t1 recorded in a DynamoDB table, exported from it and benched: the
    same shape as a SQLite export's (both cores, 3 calls, the last reply delivered in a whole
    activation that completes)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    table = aws.create_table()
    spec = importlib.util.spec_from_file_location("bank_transaction_bench", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    store = DynamoDBStateStore(aws.client("dynamodb"), table)
    with LocalRuntime(store=store) as runtime:
        module.setup(runtime)
        (wf,) = runtime.engine.workflows.values()
        runtime.start(wf, wf.request_adapter.validate_json(
            '{"account_id": "alice", "amount": 30}'), workflow_id="t1")
        runtime.run_until_idle()
    code, out = run_cli("history", "--table", table, "t1", "--json")
    assert code == 0, out
    exported = tmp_path / "t1.json"
    exported.write_text(out)
    code, out = run_cli("bench", exported, "--workflow", EXAMPLE, "--quick", "--rounds", "1",
                        "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["schema"] == "lambda-workflow-bench/1"
    assert {core: v["implementation"] for core, v in doc["cores"].items()} == {
        "c": "c", "py": "py"}
    (h,) = doc["histories"]
    assert (h["workflow"], h["workflow_id"], h["status"], h["operations"]) == (
        "make_transaction", "t1", "completed", 3)
    assert {k: (v["operations"], v["replayed"]) for k, v in h["kinds"].items()} == {
        "call": (3, 3)}
    for core in ("c", "py"):
        assert isinstance(h["kinds"]["call"][core]["per_op_us"]["median"], float)
        assert h["replay"][core]["activation_ms"] is not None
        assert h["replay"][core]["activation_warm_ms"] is not None
    assert (h["activation"]["delivered"], h["activation"]["ends"]) == (
        [{"id": "3", "kind": "call"}], "completed")
