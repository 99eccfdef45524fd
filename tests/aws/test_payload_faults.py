"""S3 payloads under faults, on moto: a pointer to a missing object or a failing S3 read is
retried alone (the rest of the batch goes on), pointers outside the payload bucket and prefix
are refused, and no reason or log line repeats a payload's content."""

from __future__ import annotations

import logging
from typing import Any

import bank_transaction as bank
import orjson
import pytest
from botocore.exceptions import ClientError

from lambda_workflow import WorkflowContext, workflow
from lambda_workflow.aws import AwsDeployment
from lambda_workflow.aws.payloads import POINTER_CLASS, SIZE_ATTRIBUTE, PayloadMissingError
from lambda_workflow.aws.sqs import SqsFifoQueue
from lambda_workflow.errors import WorkflowFailedError
from lambda_workflow.models import InstanceStatus

from .bank import BankOnAws, deploy_bank
from .conftest import Aws
from .harness import drain

SECRET = "AKIAEXAMPLESECRET-7f3c9d1e-do-not-log"


def _dead_letters(aws: Aws, deployed: BankOnAws) -> list[Any]:
    return SqsFifoQueue(aws.client("sqs"), deployed.config.queue_url,
                        dead_letter_queue_url=deployed.config.dead_letter_queue_url
                        ).dead_letters()


def _send_pointer(aws: Aws, deployed: BankOnAws, workflow_id: str, bucket: str, key: str,
                  dedup: str) -> None:
    aws.client("sqs").send_message(
        QueueUrl=deployed.config.queue_url,
        MessageBody=orjson.dumps([POINTER_CLASS, {"s3BucketName": bucket,
                                                  "s3Key": key}]).decode(),
        MessageAttributes={SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": "100"}},
        MessageGroupId=workflow_id, MessageDeduplicationId=dedup)


def _start(deployed: BankOnAws, workflow_id: str, amount: int = 10) -> Any:
    return deployed.client.start(bank.make_transaction,
                                 bank.BankTransaction(account_id="alice", amount=amount),
                                 workflow_id=workflow_id)


def test_a_pointer_to_a_missing_object_is_retried_alone_then_dead_lettered(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply whose S3 object is gone shares a batch with another workflow's start. The
    other workflow goes on; the unreadable message goes back alone (with the later messages
    of its group only) until its last delivery, then it is dead-lettered with a reason
    naming the key, and its instance is failed with that reason."""
    bucket = aws.create_bucket()
    deployed = deploy_bank(aws, monkeypatch, bucket=bucket, max_receives=3)
    missing = "lambda-workflow/tx-a/messages/0000gone"
    first = _start(deployed, "tx-a")
    _send_pointer(aws, deployed, "tx-a", bucket, missing, "gone-1")
    other = _start(deployed, "tx-b", amount=11)

    deployed.workflow_esm.poll_once()
    assert deployed.workflow_esm.received == 3
    assert deployed.workflow_esm.failures_reported == 1  # the unreadable message alone
    assert [op.op_id for op in other.history().operations] == ["1", "2"]  # tx-b went on
    assert [op.op_id for op in first.history().operations] == ["1", "2"]  # so did tx-a's start

    deployed.workflow_esm.poll_once()
    deployed.workflow_esm.poll_once()  # its third and last delivery
    (letter,) = _dead_letters(aws, deployed)
    assert letter.group_id == "tx-a"
    assert missing in letter.reason and "after 3 deliveries" in letter.reason
    assert first.status() is InstanceStatus.FAILED
    with pytest.raises(WorkflowFailedError) as failed:
        first.result()
    assert failed.value.error_type == "PoisonMessage"
    assert missing in failed.value.message

    drain(deployed.pollers)
    assert other.result() == "success"


def test_a_transient_s3_error_delays_one_message_and_nothing_else(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 fails once (SlowDown) on a reply's payload: that reply and the later messages of its
    group come back; the other workflow's messages and the earlier ones of its group are
    applied; the next delivery reads it and both workflows complete."""
    bucket = aws.create_bucket()
    failures = [1]

    def flaky_s3(deployment: AwsDeployment) -> None:
        payloads = deployment.payloads
        assert payloads is not None
        real = payloads.get

        def get(key: str, bucket: str | None = None, what: str | None = None) -> bytes:
            if failures[0] and "/messages/" in key:
                failures[0] -= 1
                raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}},
                                  "GetObject")
            return real(key, bucket, what)

        monkeypatch.setattr(payloads, "get", get)

    deployed = deploy_bank(aws, monkeypatch, bucket=bucket, payload_threshold=1024,
                           wrap_workflow_deployment=flaky_s3)
    a = _start(deployed, "tx-a")
    deployed.workflow_esm.poll_once()
    # A large reply to call 1 of tx-a (through S3), a cancel after it, and tx-b's start.
    value = {"balance": 100, "note": "n" * 2000}
    big = orjson.dumps({"v": 1, "kind": "call_result", "workflow_id": "tx-a", "call_id": "1",
                        "ok": True, "value": value})
    pointer, attrs = deployed.workflow_deployment.payloads.offload_message(  # type: ignore[union-attr]
        "tx-a/messages", big)
    sqs = aws.client("sqs")
    sqs.send_message(QueueUrl=deployed.config.queue_url, MessageBody=pointer,
                     MessageAttributes=attrs, MessageGroupId="tx-a",
                     MessageDeduplicationId="big-reply")
    b = _start(deployed, "tx-b", amount=11)
    deployed.workflow_esm.poll_once()
    assert deployed.workflow_esm.failures_reported == 1
    assert [op.op_id for op in b.history().operations] == ["1", "2"]
    assert a.history().operations[0].result is None
    deployed.workflow_esm.poll_once()
    assert orjson.loads(a.history().operations[0].result or b"") == value
    drain(deployed.pollers)
    assert a.result() == "success" and b.result() == "success"
    assert _dead_letters(aws, deployed) == []


@pytest.mark.parametrize("where", ["another bucket", "outside the prefix"])
def test_a_pointer_outside_the_payload_bucket_and_prefix_is_refused(
        aws: Aws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        where: str) -> None:
    """A pointer naming another bucket, or a key of the payload bucket outside its prefix,
    is dead-lettered at once with a reason naming the location; the object is never read,
    so its content is neither in the reason nor in the logs. The other workflow of the
    batch completes."""
    bucket = aws.create_bucket()
    deployed = deploy_bank(aws, monkeypatch, bucket=bucket)
    target = aws.create_bucket(aws.name("secrets")) if where == "another bucket" else bucket
    key = "config/credentials.txt"
    aws.client("s3").put_object(Bucket=target, Key=key, Body=f"api_key={SECRET}".encode())
    _send_pointer(aws, deployed, "tx-x", target, key, "steal")
    ok = _start(deployed, "tx-ok")
    gets = aws.requests["s3.GetObject"]
    with caplog.at_level(logging.INFO, logger="lambda_workflow.aws"):
        drain(deployed.pollers)
    assert ok.result() == "success"
    (letter,) = _dead_letters(aws, deployed)
    assert f"s3://{target}/{key}" in letter.reason and "refused" in letter.reason
    assert SECRET not in letter.reason and SECRET not in caplog.text
    assert aws.requests["s3.GetObject"] == gets  # nothing was read


def test_reasons_and_logs_never_repeat_a_payloads_content(
        aws: Aws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Objects in the payload bucket that are not valid messages (not JSON; JSON whose kind
    is a secret; a malformed field holding one): each is dead-lettered with a reason that
    says what is wrong and describes the payload by size and digest, and neither the
    reasons nor the log lines contain the secret. An inline message likewise."""
    bucket = aws.create_bucket()
    deployed = deploy_bank(aws, monkeypatch, bucket=bucket)
    s3 = aws.client("s3")
    bodies = {
        "lambda-workflow/tx-s/messages/1": f"password={SECRET}".encode(),
        "lambda-workflow/tx-s/messages/2": orjson.dumps({"v": 1, "kind": SECRET,
                                                         "workflow_id": "tx-s"}),
        "lambda-workflow/tx-s/messages/3": orjson.dumps(
            {"v": 1, "kind": "call_result", "workflow_id": "tx-s", "call_id": "1",
             "ok": [SECRET], "value": {"token": SECRET}}),
    }
    for n, (key, body) in enumerate(bodies.items()):
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        _send_pointer(aws, deployed, "tx-s", bucket, key, f"s-{n}")
    aws.client("sqs").send_message(QueueUrl=deployed.config.queue_url,
                                   MessageBody=f"{SECRET} not json", MessageGroupId="tx-s",
                                   MessageDeduplicationId="inline")
    with caplog.at_level(logging.INFO, logger="lambda_workflow.aws"):
        drain(deployed.pollers)
    letters = _dead_letters(aws, deployed)
    assert len(letters) == 4
    reasons = [letter.reason for letter in letters]
    assert all(SECRET not in r for r in reasons), reasons
    assert SECRET not in caplog.text
    first_size = len(bodies["lambda-workflow/tx-s/messages/1"])
    assert any("not valid JSON" in r and "(read from S3)" in r and "sha256" in r
               and f"{first_size} bytes" in r for r in reasons), reasons
    assert any("unknown message kind" in r for r in reasons), reasons
    assert any("ok: Input should be a valid boolean" in r for r in reasons), reasons
    assert any("not valid JSON" in r and "(read from S3)" not in r for r in reasons), reasons


@workflow
async def long_input(ctx: WorkflowContext[str]) -> int:
    """Asks for alice's balance, then returns the length of its (large) input."""
    await ctx.call(bank.balance_service, bank.BankTransaction(account_id="alice", amount=1))
    return len(ctx.request)


def test_an_expired_input_payload_is_a_clear_failed_state(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 object of a running instance's input is removed (as the bucket's lifecycle
    rule would) while it waits for a reply. describe and status still work; the reply's
    activation cannot replay, and since a missing object never comes back the instance is
    failed at once with a reason naming the key; the reply goes to the DLQ with it."""
    bucket = aws.create_bucket()
    deployed = deploy_bank(aws, monkeypatch, bucket=bucket, payload_threshold=1024,
                           workflows=(long_input,))
    handle = deployed.client.start(long_input, "x" * 5000, workflow_id="lost-1")
    deployed.workflow_esm.poll_once()
    s3 = aws.client("s3")
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]
              if "/input/" in o["Key"]]
    s3.delete_object(Bucket=bucket, Key=key)
    assert handle.status() is InstanceStatus.RUNNING
    assert deployed.client.describe("lost-1").input == b""
    drain(deployed.pollers)
    assert handle.status() is InstanceStatus.FAILED
    with pytest.raises(WorkflowFailedError) as failed:
        handle.result()
    assert failed.value.error_type == "PoisonMessage"
    assert f"the input of workflow 'lost-1' (s3://{bucket}/{key}) is missing" in \
        failed.value.message
    assert deployed.workflow_esm.failures_reported == 0  # failed at once, not retried
    (letter,) = _dead_letters(aws, deployed)
    assert orjson.loads(letter.body)["kind"] == "call_result" and key in letter.reason
    with pytest.raises(PayloadMissingError, match=key):
        deployed.client.history("lost-1")
