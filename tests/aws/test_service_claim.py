"""A service function claims a call before running it, on moto: the same request delivered
twice at once runs once; a claim left by a delivery that died expires and the call runs."""

from __future__ import annotations

import threading
import time
from typing import Any

import bank_transaction as bank
import orjson
import pytest

from lambda_workflow.aws import AwsDeployment, service_handler

from .conftest import REGION, Aws
from .harness import FakeContext


class Clock:
    """Wall-clock time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


def _request(workflow_id: str, call_id: str, reply_to: str) -> dict[str, Any]:
    return {"v": 1, "kind": "call", "workflow_id": workflow_id, "call_id": call_id,
            "service": "balance", "request": {"account_id": "alice", "amount": 1},
            "reply_to": reply_to}


def _event(request: dict[str, Any], message_id: str) -> dict[str, Any]:
    """The SQS event Lambda passes for one delivery of a request."""
    return {"Records": [{"messageId": message_id, "receiptHandle": message_id,
                         "body": orjson.dumps(request).decode(),
                         "attributes": {"ApproximateReceiveCount": "1"},
                         "messageAttributes": {}, "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:balance",
                         "awsRegion": REGION}]}


def _replies(aws: Aws, queue_url: str) -> list[dict[str, Any]]:
    got = aws.client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
    return [orjson.loads(m["Body"]) for m in got.get("Messages", [])]


def test_a_request_delivered_twice_at_once_runs_once(aws: Aws) -> None:
    """Two deliveries of one request on two threads, the second arriving while the first
    is inside the function: the function runs once, the second delivery backs off (its
    record is a batch item failure, so SQS delivers it again later) and sends nothing; the
    first replies. The second delivery's retry then re-sends the recorded reply."""
    config = aws.config()
    inside, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def balance(tx: bank.BankTransaction) -> bank.Balance:
        runs.append(tx.account_id)
        inside.set()
        assert release.wait(30)
        return bank.Balance(balance=42)

    # Two function instances: each its own handler, deployment and clients.
    first = service_handler(bank.balance_service, balance,
                            deployment=AwsDeployment(config, session=aws.session))
    second = service_handler(bank.balance_service, balance,
                             deployment=AwsDeployment(config, session=aws.session))
    request = _request("wf-1", "3", config.queue_url)
    results: dict[str, Any] = {}

    def deliver(name: str, handler: Any) -> None:
        results[name] = handler(_event(request, f"m-{name}"), FakeContext())

    t1 = threading.Thread(target=deliver, args=("one", first), daemon=True)
    t1.start()
    assert inside.wait(30)
    t2 = threading.Thread(target=deliver, args=("two", second), daemon=True)
    t2.start()
    t2.join(10)
    assert results.get("two") == {"batchItemFailures": [{"itemIdentifier": "m-two"}]}
    assert _replies(aws, config.queue_url) == []
    release.set()
    t1.join(30)
    assert results["one"] == {"batchItemFailures": []}
    assert runs == ["alice"]
    (reply,) = _replies(aws, config.queue_url)
    assert reply["value"] == {"balance": 42}
    aws.client("sqs").purge_queue(QueueUrl=config.queue_url)
    assert second(_event(request, "m-two"), FakeContext()) == {"batchItemFailures": []}
    assert runs == ["alice"]
    (again,) = _replies(aws, config.queue_url)
    assert again == reply


class Died(BaseException):
    """The invocation is killed (timeout, out of memory) while the function runs."""


def test_a_claim_left_by_a_dead_invocation_expires_and_the_call_runs(aws: Aws) -> None:
    """The first delivery dies inside the function: its claim holds for the invocation's
    remaining time plus 30 s, so an asynchronous delivery within it raises
    CallInProgressError (Lambda retries it) without running the function; once the claim
    has expired, a delivery runs the call and replies."""
    from lambda_workflow.aws.handlers import CallInProgressError

    config = aws.config()
    clock = Clock()
    runs: list[int] = []

    def balance(tx: bank.BankTransaction) -> bank.Balance:
        runs.append(len(runs))
        if len(runs) == 1:
            raise Died
        return bank.Balance(balance=7)

    handler = service_handler(bank.balance_service, balance,
                              deployment=AwsDeployment(config, session=aws.session,
                                                       clock=clock))
    request = _request("wf-2", "1", config.queue_url)
    with pytest.raises(Died):
        handler(request, FakeContext(remaining_ms=60_000))
    clock.offset = 60.0  # within the claim (60 s + 30 s)
    with pytest.raises(CallInProgressError, match="call 1 of workflow 'wf-2'"):
        handler(request, FakeContext())
    assert runs == [0]
    assert _replies(aws, config.queue_url) == []
    clock.offset = 91.0  # the claim has expired
    handler(request, FakeContext())
    assert runs == [0, 1]
    (reply,) = _replies(aws, config.queue_url)
    assert reply["value"] == {"balance": 7}
