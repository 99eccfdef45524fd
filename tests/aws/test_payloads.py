"""Byte sizes as SQS and DynamoDB count them, and S3 pointer messages."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from lambda_workflow import ServiceError
from lambda_workflow.aws.payloads import (
    POINTER_CLASS,
    S3PayloadStore,
    dynamodb_item_size,
    message_pointer,
    require_room,
    sqs_message_size,
)
from lambda_workflow.errors import InvalidMessageError, PayloadTooLargeError

from .conftest import Aws


def test_sqs_size_counts_utf8_bytes_and_attributes() -> None:
    """A message's size is its UTF-8 body plus each attribute's name, type and value."""
    assert sqs_message_size("é" * 10) == 20
    attrs = {"ExtendedPayloadSize": {"DataType": "Number", "StringValue": "123456"}}
    assert sqs_message_size("ab", attrs) == 2 + len("ExtendedPayloadSize") + 6 + 6
    assert sqs_message_size(b"\xf0\x9f\x9a\x80", {"b": {"DataType": "Binary",
                                                       "BinaryValue": b"xyz"}}) == 4 + 1 + 6 + 3


def test_dynamodb_item_size_follows_the_documented_rules() -> None:
    """Names and string values count in UTF-8, binary raw, numbers by digits, maps and
    lists with their overhead."""
    item: dict[str, dict[str, Any]] = {
        "pk": {"S": "wf#ü"}, "blob": {"B": b"1234"}, "n": {"N": "12345"},
        "ok": {"BOOL": True}, "m": {"M": {"a": {"S": "x"}}}, "l": {"L": [{"N": "1"}]}}
    expected = ((2 + 5) + (4 + 4) + (1 + 4) + (2 + 1) + (1 + 3 + 1 + 1 + 1)
                + (1 + 3 + 1 + 2))
    assert dynamodb_item_size(item) == expected


def test_require_room_without_a_bucket_raises_naming_what() -> None:
    """Over the limit without a payload store: PayloadTooLargeError with the sizes and a
    hint; under it, nothing to offload."""
    assert require_room(10, 10, "x", None) is False
    with pytest.raises(PayloadTooLargeError) as exc:
        require_room(11, 10, "the request of call 3 of workflow 'tx-1'", None)
    assert (exc.value.size, exc.value.limit) == (11, 10)
    assert "the request of call 3 of workflow 'tx-1' is 11 bytes" in str(exc.value)
    assert "LAMBDA_WORKFLOW_BUCKET" in str(exc.value)


def test_a_malformed_pointer_is_an_invalid_message() -> None:
    """A body that names the pointer class but is not a valid pointer is refused clearly;
    an ordinary body is not a pointer."""
    assert message_pointer('{"kind": "start"}', None) is None
    with pytest.raises(InvalidMessageError, match="not a valid S3 pointer"):
        message_pointer(f'["{POINTER_CLASS}", {{"s3Key": "k"}}]', None)


def test_offloaded_messages_round_trip_through_s3(aws: Aws) -> None:
    """offload_message stores the body in the bucket and returns an Extended-Client pointer
    whose object holds the same bytes."""
    bucket = aws.create_bucket()
    store = S3PayloadStore(aws.client("s3"), bucket)
    body = orjson.dumps({"kind": "call", "pad": "x" * 100_000})
    pointer, attrs = store.offload_message("tx-1/messages", body)
    assert attrs == {"ExtendedPayloadSize": {"DataType": "Number",
                                             "StringValue": str(len(body))}}
    found = message_pointer(pointer, attrs)
    assert found is not None and found[0] == bucket
    assert store.get(found[1], bucket=found[0]) == body


def test_services_write_and_read_only_under_their_own_prefixes(aws: Aws) -> None:
    """A large request to a service is stored under requests/<service>/ and the service's
    large reply under replies/<service>/<workflow id>/, the prefixes the template's service
    roles are limited to; the reply comes back through them."""
    import bank_transaction as bank

    from lambda_workflow.aws import AwsDeployment, service_handler
    from lambda_workflow.aws.config import ServiceTarget
    from lambda_workflow.aws.sqs import SqsFifoTransport

    bucket = aws.create_bucket()
    queue = aws.create_queue(aws.name("balance"))
    config = aws.config(bucket=bucket, services={"balance": f"sqs:{queue}"},
                        payload_threshold=1024)
    deployment = AwsDeployment(config, session=aws.session)
    request = {"v": 1, "kind": "call", "workflow_id": "wf-p", "call_id": "1",
               "service": "balance", "reply_to": config.queue_url,
               "request": {"account_id": "a" * 3000, "amount": 1}}
    SqsFifoTransport(config, deployment.clients, deployment.payloads).send_request(
        ServiceTarget.parse("balance", f"sqs:{queue}"), "balance", "d-1", orjson.dumps(request))

    def balance(tx: bank.BankTransaction) -> bank.Balance:
        raise ServiceError("Big", "x" * 3000)

    handler = service_handler(bank.balance_service, balance, config=config, session=aws.session)
    sqs = aws.client("sqs")
    got = sqs.receive_message(QueueUrl=queue, MessageAttributeNames=["All"])["Messages"]
    event = {"Records": [{"messageId": m["MessageId"], "body": m["Body"],
                          "attributes": {"ApproximateReceiveCount": "1"},
                          "messageAttributes": {k: {"stringValue": v["StringValue"],
                                                    "dataType": v["DataType"]}
                                                for k, v in m["MessageAttributes"].items()},
                          "eventSource": "aws:sqs"} for m in got]}
    assert handler(event, None) == {"batchItemFailures": []}
    keys = sorted(o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"])
    assert [k.rsplit("/", 1)[0] for k in keys] == [
        "lambda-workflow/replies/balance/wf-p", "lambda-workflow/requests/balance"]
    (reply,) = sqs.receive_message(QueueUrl=config.queue_url,
                                   MessageAttributeNames=["All"])["Messages"]
    found = message_pointer(reply["Body"], reply.get("MessageAttributes"))
    assert found is not None and found[1].startswith("lambda-workflow/replies/balance/wf-p/")
