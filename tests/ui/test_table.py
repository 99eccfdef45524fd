"""The timeline and the console on a deployment's DynamoDB table (``--table``), against
moto's server over HTTP: the histories of a run, written to the table as the deployment's
store writes them, drawn and served as from a state file."""

from __future__ import annotations

import io
import re

import pytest
from aws.conftest import Aws
from starlette.testclient import TestClient

from lambda_workflow.aws.dynamodb import DynamoDBStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.cli import _table_client, main
from lambda_workflow.models import InstanceStatus

from .conftest import Run


def _copy_to_table(run: Run, aws: Aws) -> str:
    """The run's instances in a fresh table, with their operations and outcomes."""
    table = aws.create_table()
    target = DynamoDBStateStore(aws.client("dynamodb"), table)
    source = SQLiteStateStore(run.db)
    try:
        for wid in ("p-wait", "p-done", "p-fail"):
            history = source.load_history(wid)
            assert history is not None
            inst = history.instance
            running = type(inst)(inst.workflow_id, inst.workflow_name, inst.input,
                                 inst.input_digest, created_at=inst.created_at,
                                 updated_at=inst.created_at)
            target.create_instance(running)
            target.add_operations(wid, history.operations, inst.activations)
            if inst.status is not InstanceStatus.RUNNING:
                assert target.finish(wid, inst.status, inst.result, inst.error,
                                     inst.activations, inst.updated_at)
    finally:
        source.close()
    return table


def test_timeline_of_an_instance_in_a_table(run: Run, aws: Aws,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    table = _copy_to_table(run, aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    out = io.StringIO()
    assert main(["history", "--table", table, "p-wait", "--timeline"], out=out) == 0
    bars = [line for line in out.getvalue().splitlines() if line.startswith("#")]
    assert [b.split()[:3] for b in bars] == [["#1", "call", "carrier"],
                                             ["#2", "timer", "sleep"],
                                             ["#3", "callback", "signature"]]
    assert "X" in bars[0] and bars[2].rstrip().endswith("pending; no timeout")


def test_console_lists_and_shows_instances_of_a_table(run: Run, aws: Aws,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from lambda_workflow._ui.app import Console, create_app

    table = _copy_to_table(run, aws)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    console = Console(table=table, table_client=_table_client)
    with TestClient(create_app(console), base_url="http://127.0.0.1") as client:
        aws.requests.clear()
        listed = client.get("/", params={"status": "running"})
        assert listed.status_code == 200
        assert re.findall(r'data-id="([^"]+)"', listed.text) == ["p-wait"]
        assert aws.requests["dynamodb.Scan"] == 0  # the by_status index, never a scan
        page = client.get("/instance", params={"id": "p-fail"})
        assert page.status_code == 200
        assert re.findall(r'<g class="bar" data-op="(\d+)"', page.text) == ["1", "2", "3", "4"]
        assert "NoCarrier" in page.text
