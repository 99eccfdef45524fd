"""The replay check on DynamoDB exports (moto's server over HTTP): every example and every kind
of durable operation run with DynamoDB as the state store, exported with ``lambda-workflow
history --table T ID --json`` and replayed with ``lambda-workflow replay --workflow MODULE``.
tests/replay/test_export_round_trip.py does the same on SQLite files."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lambda_workflow.aws import DynamoDBStateStore, S3PayloadStore
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime

from .conftest import EXAMPLES, Aws

REPLAY = Path(__file__).resolve().parents[1] / "replay"
KINDS = REPLAY / "every_kind.py"
if str(REPLAY) not in sys.path:
    sys.path.insert(0, str(REPLAY))

import every_kind  # noqa: E402

# The examples with workflows, and the module each one's histories are also replayed against
# (the bank workflow's Lambda handler module deploys the same workflow).
ALSO_AGAINST = {"bank_transaction.py": ["bank_lambda.py"]}
RECORDED = ["approval.py", "bank_transaction.py", "fan_out.py", "monthly_report.py",
            "order_saga.py"]
# The fan-out example's 1,000 calls take minutes of moto's time; 120 items (within the
# marketplace's rejections, in batches of 25) record the same kinds of operations.
SMALLER = {"fan_out.py": {"catalog-sync-120": {"batch_id": "nightly-1", "item_count": 120,
                                               "max_concurrency": 25}}}


# The CLI loads modules by path: tests/conftest.py puts back what it replaced.
pytestmark = pytest.mark.usefixtures("cli_modules_restored")


def run_cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def fresh(path: Path) -> ModuleType:
    """A copy of the example module of its own (the examples' services keep state in module
    globals, such as the bank's balances, which other tests count on)."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_round_trip", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def export_and_replay(aws: Aws, table: str, store: DynamoDBStateStore, ids: list[str],
                      folder: Path, *modules: Path) -> str:
    """`history --table` of each id (the loader checked against what the store reads), then
    one `replay` of them all against each module: exit 0, every history OK."""
    paths = []
    for wid in ids:
        code, out = run_cli("history", "--table", table, wid, "--json")
        assert code == 0, out
        recorded = store.load_history(wid)
        assert recorded is not None
        every_kind.assert_loader_gives_back(recorded, out)
        path = folder / f"{wid}.json"
        path.write_text(out)
        paths.append(path)
    outputs = []
    for module in modules:
        code, out = run_cli("replay", *paths, "--workflow", module)
        assert code == 0, out
        assert out.count(": OK: ") == len(paths), out
        outputs.append(out)
    return "".join(outputs)


@pytest.fixture
def table(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty deployment table, and the CLI pointed at moto's endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    return aws.create_table()


@pytest.mark.parametrize("example", RECORDED)
def test_every_example_replays_from_its_dynamodb_export(example: str, aws: Aws, table: str,
                                                        tmp_path: Path) -> None:
    """The example's EXAMPLES run on the embedded runtime with DynamoDB as the store (its
    setup implementing the services), each instance exported from the table and replayed
    against the example (and the bank workflow's also against its Lambda module)."""
    module = fresh(EXAMPLES / example)
    store = DynamoDBStateStore(aws.client("dynamodb"), table)
    with LocalRuntime(store=store) as runtime:
        module.setup(runtime)
        (wf,) = runtime.engine.workflows.values()
        inputs = {wid: wf.request_adapter.validate_python(request)
                  for wid, request in SMALLER.get(example, module.EXAMPLES).items()}
        for wid, request in inputs.items():
            runtime.start(wf, request, workflow_id=wid)
        runtime.run_until_idle()
        ids = [inst.workflow_id for inst in store.list_instances()]
    assert sorted(ids) == sorted(inputs)
    against = [EXAMPLES / example] + [EXAMPLES / m for m in ALSO_AGAINST.get(example, [])]
    out = export_and_replay(aws, table, store, ids, tmp_path, *against)
    assert out.count("ends completed as recorded") == len(ids) * len(against)


@pytest.mark.parametrize("payloads", ["in the table", "in S3"])
def test_every_operation_kind_replays_from_its_dynamodb_export(
        aws: Aws, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        payloads: str) -> None:
    """Every kind of durable operation, recorded in DynamoDB (completed, failed, cancelled
    and still-running instances, children included), exported from the table and replayed
    against tests/replay/every_kind.py; once with every payload in the table, once with
    every payload over the threshold (1 byte), so the export reads each one from S3
    (``LAMBDA_WORKFLOW_BUCKET``)."""
    if payloads == "in S3":
        bucket = aws.create_bucket()
        monkeypatch.setenv("LAMBDA_WORKFLOW_BUCKET", bucket)
        store = DynamoDBStateStore(aws.client("dynamodb"), table, payload_threshold=1,
                                   payloads=S3PayloadStore(aws.client("s3"), bucket))
    else:
        store = DynamoDBStateStore(aws.client("dynamodb"), table)
    with LocalRuntime(store=store) as runtime:
        expected = every_kind.record(runtime)
        statuses = {inst.workflow_id: inst.status.value for inst in store.list_instances()}
    assert statuses == expected
    out = export_and_replay(aws, table, store, list(expected), tmp_path, KINDS)
    if payloads == "in S3":
        # Every request went to S3 (the threshold is 1 byte); the export read them back.
        assert aws.requests["s3.PutObject"] >= len(expected)
    for status in ("completed", "failed", "cancelled", "suspended"):
        assert f"ends {status} as recorded" in out
