"""The Lambda handlers and the client, one behaviour at a time, on moto's server."""

from __future__ import annotations

from typing import Any

import bank_transaction as bank
import orjson
import pytest

from lambda_workflow import ServiceError
from lambda_workflow._core import dedup_id
from lambda_workflow.aws import (
    AwsDeployment,
    S3PayloadStore,
    WorkflowClient,
    service_handler,
    workflow_handler,
)
from lambda_workflow.aws.config import AwsConfig
from lambda_workflow.errors import (
    InvalidMessageError,
    WorkflowAlreadyStartedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from lambda_workflow.models import InstanceStatus

from .bank import deploy_bank
from .conftest import Aws
from .harness import EventSourceMapping, FakeContext, drain


def _receive_all(aws: Aws, url: str) -> list[dict[str, Any]]:
    got = aws.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                            MessageSystemAttributeNames=["All"])
    return list(got.get("Messages", []))


def _call(workflow_id: str, call_id: str, service: str, request: object,
          reply_to: str) -> dict[str, Any]:
    return {"v": 1, "kind": "call", "workflow_id": workflow_id, "call_id": call_id,
            "service": service, "request": request, "reply_to": reply_to}


def test_the_workflow_handler_refuses_an_event_that_is_not_from_sqs(aws: Aws) -> None:
    """An event without SQS records raises InvalidMessageError saying what was expected."""
    targets = {name: f"sqs:{aws.create_queue()}" for name in ("balance", "fraud", "transaction")}
    handler = workflow_handler(bank.make_transaction, config=aws.config(services=targets),
                               session=aws.session)
    with pytest.raises(InvalidMessageError, match="expects an SQS event"):
        handler({"detail-type": "Scheduled Event"}, FakeContext())


def test_workflow_handler_needs_workflows() -> None:
    """workflow_handler() refuses no workflows and things that are not @workflow objects."""
    with pytest.raises(ValueError, match="at least one workflow"):
        workflow_handler()
    with pytest.raises(TypeError, match="@workflow objects"):
        workflow_handler(bank.get_balance)  # type: ignore[arg-type]


def test_near_the_time_limit_the_batch_goes_back_untouched(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """With less than 5 s left in the invocation, no activation starts: every record is a
    batch item failure and nothing is recorded; the next invocation applies them."""
    deployed = deploy_bank(aws, monkeypatch)
    deployed.client.start(bank.make_transaction,
                          bank.BankTransaction(account_id="alice", amount=5),
                          workflow_id="tx-late")
    deployed.workflow_esm.context = FakeContext(remaining_ms=1_000)
    deployed.workflow_esm.poll_once()
    assert deployed.workflow_esm.failures_reported == 1
    assert deployed.client.history("tx-late").operations == []
    deployed.workflow_esm.context = FakeContext()
    drain(deployed.pollers)
    assert deployed.client.result("tx-late", bank.make_transaction) == "success"


def test_without_a_dlq_a_rejected_message_stays_on_the_queue(aws: Aws) -> None:
    """With no DLQ configured, a message that cannot be applied is reported as a batch item
    failure (the queue's redrive policy will move it), never deleted."""
    config = aws.config()
    config = AwsConfig(**{**{f: getattr(config, f) for f in config.__slots__},
                          "dead_letter_queue_url": None})
    handler = workflow_handler(bank.make_transaction, config=config, session=aws.session)
    esm = EventSourceMapping(aws.client("sqs"), config.queue_url, handler)
    aws.client("sqs").send_message(QueueUrl=config.queue_url, MessageBody='{"kind": "nope"}',
                                   MessageGroupId="g", MessageDeduplicationId="d")
    esm.poll_once()
    assert esm.failures_reported == 1
    (again,) = _receive_all(aws, config.queue_url)
    assert again["Body"] == '{"kind": "nope"}'


def test_a_service_replies_an_invalid_request_as_an_error(aws: Aws) -> None:
    """A request that does not validate gets an InvalidRequest error reply, with the reply's
    deterministic deduplication id, and the function does not run."""
    config = aws.config()
    ran: list[object] = []

    def balance(tx: bank.BankTransaction) -> bank.Balance:
        ran.append(tx)
        return bank.Balance(balance=1)

    handler = service_handler(bank.balance_service, balance, config=config, session=aws.session)
    handler(_call("wf-1", "1", "balance", {"account_id": "a"}, config.queue_url), None)
    (reply,) = _receive_all(aws, config.queue_url)
    body = orjson.loads(reply["Body"])
    assert body["ok"] is False and body["error"]["type"] == "InvalidRequest"
    assert "amount" in body["error"]["message"]
    assert reply["Attributes"]["MessageDeduplicationId"] == dedup_id("wf-1", "call_result", "1")
    assert reply["Attributes"]["MessageGroupId"] == "wf-1"
    assert ran == []


def test_a_service_runs_once_per_call_id_and_repeats_its_reply(aws: Aws) -> None:
    """The same request twice: the function runs once; both deliveries send the recorded
    reply (so a reply lost in between is sent again). A ServiceError keeps its type,
    message and details."""
    config = aws.config()
    runs: list[str] = []

    async def balance(tx: bank.BankTransaction) -> bank.Balance:
        runs.append(tx.account_id)
        raise ServiceError("Frozen", f"account {tx.account_id} is frozen", {"until": 5})

    handler = service_handler(bank.balance_service, balance, config=config, session=aws.session)
    request = _call("wf-2", "4", "balance", {"account_id": "zed", "amount": 1},
                    config.queue_url)
    handler(request, None)
    first = _receive_all(aws, config.queue_url)
    aws.client("sqs").purge_queue(QueueUrl=config.queue_url)
    handler(request, None)
    second = _receive_all(aws, config.queue_url)
    assert runs == ["zed"]
    assert [m["Body"] for m in first] == [m["Body"] for m in second]
    assert orjson.loads(first[0]["Body"])["error"] == {
        "type": "Frozen", "message": "account zed is frozen", "details": {"until": 5}}


def test_a_request_for_another_service_is_refused(aws: Aws) -> None:
    """A request naming another service raises (an async invoke is then retried and ends in
    the function's failure destination) and sends nothing."""
    config = aws.config()
    handler = service_handler(bank.balance_service, bank.get_balance, config=config,
                              session=aws.session)
    with pytest.raises(InvalidMessageError, match="request for service 'fraud'"):
        handler(_call("wf-3", "1", "fraud", {"account_id": "a", "amount": 1},
                      config.queue_url), None)
    assert _receive_all(aws, config.queue_url) == []


def test_an_async_invocation_may_carry_an_s3_pointer(aws: Aws) -> None:
    """An asynchronous invocation whose event is an S3 pointer runs on the stored request."""
    bucket = aws.create_bucket()
    config = aws.config(bucket=bucket)
    store = S3PayloadStore(aws.client("s3"), bucket)
    big = _call("wf-4", "1", "balance", {"account_id": "y" * 100_000, "amount": 1},
                config.queue_url)
    pointer, _ = store.offload_message("requests/balance", orjson.dumps(big))
    seen: list[int] = []

    def balance(tx: bank.BankTransaction) -> bank.Balance:
        seen.append(len(tx.account_id))
        return bank.Balance(balance=7)

    handler = service_handler(bank.balance_service, balance, config=config, session=aws.session)
    handler(orjson.loads(pointer), None)
    assert seen == [100_000]
    (reply,) = _receive_all(aws, config.queue_url)
    assert orjson.loads(reply["Body"])["value"] == {"balance": 7}


def test_client_start_is_idempotent_and_refuses_another_input(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting the same id with the same input returns the same instance (one start message
    gets through deduplication); another input raises WorkflowAlreadyStartedError."""
    deployed = deploy_bank(aws, monkeypatch)
    tx = bank.BankTransaction(account_id="alice", amount=5)
    deployed.client.start(bank.make_transaction, tx, workflow_id="tx-1")
    deployed.client.start(bank.make_transaction, tx, workflow_id="tx-1")
    with pytest.raises(WorkflowAlreadyStartedError, match="different input"):
        deployed.client.start(bank.make_transaction,
                              bank.BankTransaction(account_id="alice", amount=6),
                              workflow_id="tx-1")
    assert [i.workflow_id for i in deployed.client.list_instances()] == ["tx-1"]
    drain(deployed.pollers)
    assert deployed.runs[("balance", "alice", 5)] == 1
    exported = orjson.loads(deployed.client.export_history("tx-1"))
    assert [op["name"] for op in exported["operations"]] == ["balance", "fraud", "transaction"]


def test_cancel_stops_a_running_workflow(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """cancel sends a cancel message: the instance ends cancelled with the reason, replies
    that arrive later change nothing; cancelling again returns False; an unknown id raises."""
    deployed = deploy_bank(aws, monkeypatch)
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=5),
                                   workflow_id="tx-c")
    deployed.workflow_esm.poll_once()
    assert handle.cancel("customer withdrew") is True
    drain(deployed.pollers)
    assert handle.status() is InstanceStatus.CANCELLED
    with pytest.raises(WorkflowFailedError, match="customer withdrew"):
        handle.result()
    assert deployed.runs[("transaction", "alice", 5)] == 0
    assert handle.cancel() is False
    with pytest.raises(WorkflowNotFoundError):
        deployed.client.cancel("nobody")


def test_a_client_from_the_environment(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """WorkflowClient() reads LAMBDA_WORKFLOW_* and AWS_ENDPOINT_URL like the functions."""
    config = aws.config()
    monkeypatch.setenv("LAMBDA_WORKFLOW_TABLE", config.table)
    monkeypatch.setenv("LAMBDA_WORKFLOW_QUEUE_URL", config.queue_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    client = WorkflowClient()
    handle = client.start(bank.make_transaction,
                          bank.BankTransaction(account_id="bob", amount=1), workflow_id="e-1")
    assert handle.status() is InstanceStatus.RUNNING
    assert isinstance(client.deployment, AwsDeployment)
    (start,) = _receive_all(aws, config.queue_url)
    assert orjson.loads(start["Body"])["kind"] == "start"
