"""The operator commands on a deployment's DynamoDB table (``--table``), against moto's server
over HTTP: status through the ``by_status`` index (Query and BatchGetItem, never Scan), start,
callback, cancel, describe and history, with the workflow function draining the queue."""

from __future__ import annotations

import importlib.util
import io
import re
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lambda_workflow import InstanceStatus
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler
from lambda_workflow.aws.config import AwsConfig
from lambda_workflow.aws.dynamodb import DynamoDBStateStore, table_definition
from lambda_workflow.backends.protocols import InvalidPageTokenError
from lambda_workflow.cli import main
from lambda_workflow.models import InstanceRecord

from .conftest import Aws
from .harness import EventSourceMapping, drain

KEY = "operator-test-callback-key-0123456789"

MODULE = '''
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow


class Order(BaseModel):
    n: int


ledger = Service("ledger", Order, int)
audit = Service("audit", Order, int)


@workflow
async def fulfil_aws(ctx: WorkflowContext[Order]) -> int:
    approval = ctx.create_callback("approval", int)
    got = await approval
    checked = await ctx.call(audit, ctx.request)
    if ctx.request.n > 1:
        await ctx.call(ledger, ctx.request)
    return got + checked
'''


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ModuleType]:
    path = tmp_path / "ops_flow_aws.py"
    path.write_text(MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("ops_flow_aws", path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ops_flow_aws", loaded)  # removed after the test
    spec.loader.exec_module(loaded)
    return str(path), loaded


def _store(aws: Aws, table: str) -> DynamoDBStateStore:
    return DynamoDBStateStore(aws.client("dynamodb"), table)


def _fill(aws: Aws, table: str) -> DynamoDBStateStore:
    """Seven instances a minute apart: w-0, w-3, w-6 stay running, the others finish
    (completed or failed), alternately of workflows alpha and beta."""
    store = _store(aws, table)
    for i in range(7):
        at = 1_800_000_000.0 + 60 * i
        store.create_instance(InstanceRecord(f"w-{i}", "alpha" if i % 2 else "beta", b"{}",
                                             "d", created_at=at, updated_at=at))
        if i % 3:
            status = InstanceStatus.COMPLETED if i % 3 == 1 else InstanceStatus.FAILED
            assert store.finish(f"w-{i}", status, b"1" if i % 3 == 1 else None,
                                None if i % 3 == 1 else b'{"type":"E"}', 1, at + 1)
    return store


def _ids(out: str) -> list[str]:
    return re.findall(r"^(w-\d)\s", out, re.M)


def test_list_page_queries_the_index_and_never_scans(aws: Aws) -> None:
    """Every page is a Query of the by_status index plus one BatchGetItem; all pages
    together give every instance once, by status then creation time; no Scan."""
    table = aws.create_table()
    store = _fill(aws, table)
    aws.requests.clear()
    seen: list[tuple[str, str]] = []
    token = None
    pages = 0
    while True:
        page = store.list_page(limit=2, next_token=token)
        pages += 1
        seen += [(i.workflow_id, i.status.value) for i in page.instances]
        token = page.next_token
        if token is None:
            break
    assert seen == [("w-0", "running"), ("w-3", "running"), ("w-6", "running"),
                    ("w-1", "completed"), ("w-4", "completed"),
                    ("w-2", "failed"), ("w-5", "failed")]
    assert aws.requests["dynamodb.Scan"] == 0
    assert aws.requests["dynamodb.Query"] >= pages
    assert aws.requests["dynamodb.BatchGetItem"] <= pages
    assert set(aws.requests) <= {"dynamodb.Query", "dynamodb.BatchGetItem"}


def test_list_page_filters_by_status_workflow_and_time(aws: Aws) -> None:
    table = aws.create_table()
    store = _fill(aws, table)
    aws.requests.clear()

    def ids(**kw: Any) -> list[str]:
        return [i.workflow_id for i in store.list_page(**kw).instances]

    assert ids(status=InstanceStatus.RUNNING) == ["w-0", "w-3", "w-6"]
    assert ids(workflow_name="alpha") == ["w-3", "w-1", "w-5"]
    assert ids(since=1_800_000_120.0, until=1_800_000_240.0) == ["w-3", "w-4", "w-2"]
    assert ids(status=InstanceStatus.COMPLETED, since=1_800_000_100.0) == ["w-4"]
    assert aws.requests["dynamodb.Scan"] == 0
    with pytest.raises(InvalidPageTokenError, match="does not continue this listing"):
        store.list_page(status=InstanceStatus.FAILED, next_token=store.list_page(
            status=InstanceStatus.RUNNING, limit=1).next_token)


def test_the_index_attribute_follows_the_status(aws: Aws) -> None:
    """lw_status is written with the status (create, finish, repair) and lw_created once;
    an activation that only records outcomes leaves both alone."""
    table = aws.create_table()
    store = _store(aws, table)
    ddb = aws.client("dynamodb")
    store.create_instance(InstanceRecord("x-1", "alpha", b"{}", "d", created_at=1_800_000_000.0,
                                         updated_at=1_800_000_000.0))

    def item() -> dict[str, Any]:
        got: dict[str, Any] = ddb.get_item(TableName=table, Key={
            "pk": {"S": "wf#x-1"}, "sk": {"S": "#instance"}})["Item"]
        return got

    assert (item()["lw_status"], item()["lw_created"]) == (
        {"S": "running"}, {"S": "2027-01-15T08:00:00.000000Z#x-1"})
    store.load_history("x-1")
    store.commit_activation("x-1", [], [], 1, 1_800_000_001.0)
    assert item()["lw_status"] == {"S": "running"}
    assert store.finish("x-1", InstanceStatus.FAILED, None, b'{"type":"E"}', 1, 1_800_000_002.0)
    assert item()["lw_status"] == {"S": "failed"}
    assert store.repair("x-1", 1, [], [], 1_800_000_003.0)
    assert item()["lw_status"] == {"S": "running"}
    assert item()["lw_created"] == {"S": "2027-01-15T08:00:00.000000Z#x-1"}


def test_the_status_command_queries_and_never_scans(aws: Aws,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`status --table T` (every instance) reads through the index: its requests are
    Query and BatchGetItem, never a Scan of the whole table (it was a Scan)."""
    import botocore.client

    table = aws.create_table()
    _fill(aws, table)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    calls: list[str] = []
    real = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]

    def counting(self: Any, operation: str, params: Any) -> Any:
        calls.append(operation)
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counting)
    code, out = run_cli("status", "--table", table)
    assert code == 0 and sorted(_ids(out)) == [f"w-{i}" for i in range(7)]
    assert "Scan" not in calls and "Query" in calls, calls


def test_status_on_the_table_filters_and_pages(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    table = aws.create_table()
    _fill(aws, table)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    code, out = run_cli("status", "--table", table, "--status", "running", "--limit", "2")
    assert code == 0 and _ids(out) == ["w-0", "w-3"]
    token = re.search(r"^more: --next-token (\S+)$", out, re.M)
    assert token is not None
    code, out = run_cli("status", "--table", table, "--status", "running", "--limit", "2",
                        "--next-token", token.group(1))
    assert code == 0 and _ids(out) == ["w-6"] and "more:" not in out
    code, out = run_cli("status", "--table", table, "--workflow", "beta",
                        "--since", "2027-01-15T08:01:00Z")
    assert _ids(out) == ["w-6", "w-4", "w-2"]
    code, _ = run_cli("status", "--table", table, "--next-token", "garbage!")
    assert code == 2 and "--next-token" in capsys.readouterr().err


def test_a_table_without_the_index_is_a_clear_error(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A table created before the index existed: listing names the missing index and how to
    add it, instead of a Scan or a botocore traceback."""
    definition = table_definition()
    del definition["GlobalSecondaryIndexes"]
    definition["AttributeDefinitions"] = definition["AttributeDefinitions"][:2]
    name = aws.name("old-table")
    aws.client("dynamodb").create_table(TableName=name, **definition)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    code, _ = run_cli("status", "--table", name)
    err = capsys.readouterr().err
    assert code == 1
    assert f"table {name!r} has no global secondary index 'by_status'" in err
    assert f"aws dynamodb update-table --table-name {name}" in err
    assert "Traceback" not in err


def _deploy(aws: Aws, monkeypatch: pytest.MonkeyPatch, workflow: Any,
            audit: Any) -> tuple[AwsConfig, list[EventSourceMapping]]:
    """A deployment whose workflow function runs ``workflow`` and whose audit service
    answers n * 10; ledger has a queue nobody serves. The CLI's environment names the
    deployment's table, queue, key and only the audit target."""
    audit_queue = aws.create_queue(aws.name("audit"))
    ledger_queue = aws.create_queue(aws.name("ledger"))
    config = replace(aws.config(services={"audit": f"sqs:{audit_queue}",
                                          "ledger": f"sqs:{ledger_queue}"}),
                     callback_key=KEY)
    deployment = AwsDeployment(config, session=aws.session)
    pollers = [
        EventSourceMapping(aws.client("sqs"), config.queue_url,
                           workflow_handler(workflow, deployment=deployment)),
        EventSourceMapping(aws.client("sqs"), audit_queue, service_handler(
            audit, lambda order: order.n * 10, deployment=deployment))]
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    monkeypatch.setenv("LAMBDA_WORKFLOW_QUEUE_URL", config.queue_url)
    monkeypatch.setenv("LAMBDA_WORKFLOW_CALLBACK_KEY", KEY)
    monkeypatch.setenv("LAMBDA_WORKFLOW_SERVICE_AUDIT", f"sqs:{audit_queue}")
    return config, pollers


def test_start_callback_describe_history_on_the_table(
        aws: Aws, monkeypatch: pytest.MonkeyPatch,
        module: tuple[str, ModuleType]) -> None:
    path, loaded = module
    config, pollers = _deploy(aws, monkeypatch, loaded.fulfil_aws, loaded.audit)
    code, out = run_cli("start", path, "--table", config.table, "--id", "t-1",
                        "--input", '{"n": 2}')
    assert code == 0 and f"started t-1 (fulfil_aws) in table {config.table!r}" in out
    drain(pollers)
    code, out = run_cli("describe", "--table", config.table, "t-1", "--full")
    assert code == 0 and "status:       running" in out
    token = re.search(r"callback 1 'approval': a completion of its token \(no timeout; "
                      r"token (\S+)\)", out)
    assert token is not None, out
    code, out = run_cli("callback", "heartbeat", token.group(1), "--table", config.table)
    assert code == 0 and "callback heartbeat of t-1 accepted" in out
    code, out = run_cli("callback", "complete", token.group(1), "--result", "5",
                        "--table", config.table)
    assert code == 0 and f"callback complete of t-1 accepted: sent to {config.queue_url}" in out
    drain(pollers)
    code, out = run_cli("describe", "--table", config.table, "t-1")
    assert "waiting on:   call 3: service 'ledger', and no service implements ledger" in out
    code, out = run_cli("history", "--table", config.table, "t-1")
    assert re.search(r"#1\s+callback approval\s+completed\s+created \S+Z \(activation 1\); "
                     r"no timeout; resolved \S+Z \(activation 2\)", out), out
    assert re.search(r"#2\s+call audit\s+completed", out)
    code, out = run_cli("cancel", "t-1", "--table", config.table, "--reason", "stop")
    assert code == 0 and "cancel of t-1 sent" in out
    drain(pollers)
    client = WorkflowClient(config, session=aws.session)
    assert client.status("t-1") is InstanceStatus.CANCELLED
    assert [i.workflow_id for i in client.list_page(
        status=InstanceStatus.CANCELLED, workflow_name="fulfil_aws").instances] == ["t-1"]
    code, out = run_cli("status", "--table", config.table, "--status", "cancelled")
    assert re.search(r"^t-1\s+fulfil_aws\s+cancelled\s+activations=\d+$", out, re.M), out
    code, out = run_cli("cancel", "t-1", "--table", config.table)
    assert code == 1 and "already ended (cancelled)" in out


def test_callback_with_a_bad_token_is_refused(aws: Aws, monkeypatch: pytest.MonkeyPatch,
                                              module: tuple[str, ModuleType],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, loaded = module
    config, _ = _deploy(aws, monkeypatch, loaded.fulfil_aws, loaded.audit)
    code, _ = run_cli("callback", "complete", "not.a.token", "--table", config.table)
    assert code == 1
    assert "InvalidCallbackTokenError" in capsys.readouterr().err
