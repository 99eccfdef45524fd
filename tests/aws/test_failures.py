"""Failure paths of the AWS deployment, on moto: crashes, duplicates, late replies, poison
and malformed messages, and payloads too large for SQS or DynamoDB."""

from __future__ import annotations

from typing import Any

import bank_transaction as bank
import orjson
import pytest

from lambda_workflow import ServiceError, WorkflowContext, workflow
from lambda_workflow._core import dedup_id
from lambda_workflow.aws import AwsDeployment
from lambda_workflow.aws.sqs import SqsFifoQueue
from lambda_workflow.errors import PayloadTooLargeError, WorkflowFailedError
from lambda_workflow.models import InstanceStatus

from .bank import deploy_bank
from .conftest import Aws
from .harness import drain


class Crash(Exception):
    """An injected crash."""


def _dead_letters(aws: Aws, deployed: Any) -> list[Any]:
    queue = SqsFifoQueue(aws.client("sqs"), deployed.config.queue_url,
                         dead_letter_queue_url=deployed.config.dead_letter_queue_url)
    return queue.dead_letters()


def _send_raw(aws: Aws, deployed: Any, workflow_id: str, body: dict[str, Any],
              dedup: str) -> None:
    aws.client("sqs").send_message(QueueUrl=deployed.config.queue_url,
                                   MessageBody=orjson.dumps(body).decode(),
                                   MessageGroupId=workflow_id, MessageDeduplicationId=dedup)


def test_a_crash_between_recording_and_sending_resends_with_the_same_call_ids(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """The activation records both calls, sends the first, then crashes: the start message
    comes back, the outbox sends both requests again with the same call ids, the balance
    service gets its request twice but runs once (its recorded reply is re-sent), and the
    workflow completes."""
    sends: list[str] = []

    def crash_on_second_send(deployment: AwsDeployment) -> None:
        real = deployment.transport.send_to_service

        def send(service: str, dedup: str, body: bytes) -> None:
            sends.append(service)
            if len(sends) == 2:
                raise Crash("the process died after the first request left")
            real(service, dedup, body)

        monkeypatch.setattr(deployment.transport, "send_to_service", send)

    deployed = deploy_bank(aws, monkeypatch, wrap_workflow_deployment=crash_on_second_send)
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=10),
                                   workflow_id="tx-crash")
    deployed.workflow_esm.poll_once()  # records both calls, sends one, crashes
    deployed.workflow_esm.poll_once()  # the start again: the outbox sends both
    drain(deployed.pollers)
    assert handle.result() == "success"
    assert sends == ["balance", "fraud", "balance", "fraud", "transaction"]
    assert deployed.workflow_esm.failures_reported == 1
    assert deployed.balance_esm.received == 2  # delivered twice ...
    assert deployed.runs[("balance", "alice", 10)] == 1  # ... but run once
    assert deployed.runs[("fraud", "alice", 10)] == 1
    assert [op.op_id for op in handle.history().operations] == ["1", "2", "3"]


def test_a_duplicate_reply_changes_nothing(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second reply to a call (different content, past the queue's deduplication) is a
    no-op: the first reply stays recorded and the workflow completes on it."""
    deployed = deploy_bank(aws, monkeypatch)
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=10),
                                   workflow_id="tx-dup")
    deployed.workflow_esm.poll_once()
    deployed.balance_esm.poll_once()  # the real reply: balance 100
    _send_raw(aws, deployed, "tx-dup", {"v": 1, "kind": "call_result", "workflow_id": "tx-dup",
                                        "call_id": "1", "ok": True, "value": {"balance": 0}},
              "second-reply")
    drain(deployed.pollers)
    assert handle.result() == "success"
    first = handle.history().operations[0]
    assert orjson.loads(first.result or b"") == {"balance": 100}
    assert _dead_letters(aws, deployed) == []


def test_a_reply_for_a_finished_workflow_is_kept_out_of_its_result(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the workflow completed, a late reply to a recorded call changes neither its
    status, its result nor its history; a reply naming a call it never made is
    dead-lettered with the reason."""
    deployed = deploy_bank(aws, monkeypatch)
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=10),
                                   workflow_id="tx-late")
    drain(deployed.pollers)
    before = handle.history()
    _send_raw(aws, deployed, "tx-late", {"v": 1, "kind": "call_result", "workflow_id": "tx-late",
                                         "call_id": "2", "ok": True,
                                         "value": {"is_likely_fraud": True}}, "late")
    _send_raw(aws, deployed, "tx-late", {"v": 1, "kind": "call_result", "workflow_id": "tx-late",
                                         "call_id": "99", "ok": True, "value": None}, "unknown")
    drain(deployed.pollers)
    assert handle.status() is InstanceStatus.COMPLETED
    assert handle.result() == "success"
    assert handle.history().operations == before.operations
    (letter,) = _dead_letters(aws, deployed)
    assert orjson.loads(letter.body)["call_id"] == "99"
    assert "unknown call id '99'" in letter.reason


def test_a_malformed_message_goes_to_the_dlq_with_its_reason_and_others_proceed(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body that is not JSON is dead-lettered at once with the parser's reason; the
    workflow in the same batch completes."""
    deployed = deploy_bank(aws, monkeypatch)
    aws.client("sqs").send_message(QueueUrl=deployed.config.queue_url, MessageBody="{oops",
                                   MessageGroupId="tx-bad", MessageDeduplicationId="bad")
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=10),
                                   workflow_id="tx-good")
    drain(deployed.pollers)
    assert handle.result() == "success"
    (letter,) = _dead_letters(aws, deployed)
    assert letter.body == b"{oops"
    assert "not valid JSON" in letter.reason
    assert deployed.workflow_esm.failures_reported == 0


def test_a_poison_message_fails_its_instance_and_reaches_the_dlq(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """An activation that fails on every delivery: its messages return to the queue (FIFO
    rule) until the last allowed delivery, then the instance is marked failed with a
    PoisonMessage error naming the last error, and the message is in the DLQ with the
    reason. Another instance in the same batches completes."""
    def break_one_instance(deployment: AwsDeployment) -> None:
        real = deployment.store.commit_activation

        def commit(workflow_id: str, *args: Any, **kwargs: Any) -> list[str]:
            if workflow_id == "tx-poison":
                raise Crash("the table rejected the write")
            return real(workflow_id, *args, **kwargs)

        monkeypatch.setattr(deployment.store, "commit_activation", commit)

    deployed = deploy_bank(aws, monkeypatch, max_receives=3,
                           wrap_workflow_deployment=break_one_instance)
    poison = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=10),
                                   workflow_id="tx-poison")
    healthy = deployed.client.start(bank.make_transaction,
                                    bank.BankTransaction(account_id="alice", amount=11),
                                    workflow_id="tx-healthy")
    drain(deployed.pollers)
    assert healthy.result() == "success"
    assert poison.status() is InstanceStatus.FAILED
    with pytest.raises(WorkflowFailedError) as failed:
        poison.result()
    assert failed.value.error_type == "PoisonMessage"
    assert "failed 3 times" in failed.value.message
    assert "Crash: the table rejected the write" in failed.value.message
    (letter,) = _dead_letters(aws, deployed)
    assert letter.group_id == "tx-poison"
    assert orjson.loads(letter.body)["kind"] == "start"
    assert "Crash: the table rejected the write" in letter.reason
    assert deployed.workflow_esm.failures_reported == 2


@workflow
async def big_request(ctx: WorkflowContext[int]) -> str:
    """Asks the balance service about an account whose id is ``ctx.request`` bytes long."""
    try:
        await ctx.call(bank.balance_service,
                       bank.BankTransaction(account_id="x" * ctx.request, amount=1))
    except ServiceError as exc:
        return exc.error_type
    return "found"


def test_an_oversized_request_goes_through_s3_when_a_bucket_is_configured(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 KB request (threshold 64 KB) is stored in S3 by the table and the queue, the
    service reads it transparently and the workflow completes."""
    bucket = aws.create_bucket()
    deployed = deploy_bank(aws, monkeypatch, bucket=bucket, workflows=(big_request,))
    handle = deployed.client.start(big_request, 200_000, workflow_id="big-1")
    drain(deployed.pollers)
    assert handle.result() == "UnknownAccount"
    (op,) = handle.history().operations
    assert len(op.request) > 200_000
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert any("big-1" in k for k in keys)
    assert deployed.workflow_esm.failures_reported == 0


def test_an_oversized_request_without_a_bucket_fails_the_workflow_once(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a bucket, a request over the threshold fails the workflow at once with
    PayloadTooLargeError naming the workflow and the call: recorded, not retried, nothing
    sent."""
    deployed = deploy_bank(aws, monkeypatch, workflows=(big_request,))
    handle = deployed.client.start(big_request, 100_000, workflow_id="big-2")
    drain(deployed.pollers)
    with pytest.raises(WorkflowFailedError) as failed:
        handle.result()
    assert failed.value.error_type == "PayloadTooLargeError"
    assert "call 1 (service 'balance'" in failed.value.message
    assert "'big-2'" in failed.value.message
    assert "LAMBDA_WORKFLOW_BUCKET" in failed.value.message
    assert handle.history().operations == []
    assert deployed.workflow_esm.invocations == 1
    assert deployed.balance_esm.invocations == 0


def test_an_oversized_input_without_a_bucket_is_refused_by_the_client(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client refuses to start an instance whose input is over the threshold, naming
    the workflow id, and creates nothing."""
    deployed = deploy_bank(aws, monkeypatch)
    with pytest.raises(PayloadTooLargeError, match="the input of workflow 'tx-huge'"):
        deployed.client.start(bank.make_transaction,
                              bank.BankTransaction(account_id="x" * 70_000, amount=1),
                              workflow_id="tx-huge")
    assert deployed.client.list_instances() == []


def test_an_oversized_reply_without_a_bucket_becomes_an_error_reply(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply over the threshold without a bucket reaches the workflow as a
    PayloadTooLargeError service error (it may handle it), never a retried write."""
    deployed = deploy_bank(aws, monkeypatch, workflows=(big_request,))
    wid = "big-3"
    handle = deployed.client.start(big_request, 10, workflow_id=wid)
    deployed.workflow_esm.poll_once()
    _send_raw(aws, deployed, wid, {"v": 1, "kind": "call_result", "workflow_id": wid,
                                   "call_id": "1", "ok": True,
                                   "value": {"balance": 1, "padding": "p" * 80_000}},
              dedup_id(wid, "call_result", "1"))
    drain([deployed.workflow_esm])
    assert handle.result() == "PayloadTooLargeError"
    assert deployed.workflow_esm.failures_reported == 0
