"""The bank's transaction service, written with plain boto3: no lambda-workflow import.

It is what a service in any language does to take part in workflows (docs/protocol.md):

1. receive a ``call`` message (here: an SQS event from the service's queue);
2. do the work once per ``(workflow_id, call_id)``: the request may be delivered more than
   once, so the reply is recorded with a conditional write before it is sent, and a repeated
   request re-sends the recorded reply;
3. send a ``call_result`` to the request's ``reply_to`` queue with ``MessageGroupId`` = the
   workflow id and ``MessageDeduplicationId`` = SHA-256 of ``call_result``, NUL, workflow id,
   NUL, call id.

A request that is not valid gets an error reply (``InvalidRequest``): an error reply is final,
so only a permanent problem is reported that way. A passing failure (a throttled table)
raises nothing to the workflow: the record is reported in ``batchItemFailures`` and SQS
delivers it again. Payloads here are small; a service that may receive requests over the
deployment's payload threshold must also read S3 pointer bodies (docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import boto3

SERVICE = "transaction"
_sqs: Any = None
_ddb: Any = None
LEDGER: list[dict[str, Any]] = []  # stands in for the bank's ledger


def _clients() -> tuple[Any, Any]:
    global _sqs, _ddb
    if _sqs is None:
        _sqs, _ddb = boto3.client("sqs"), boto3.client("dynamodb")
    return _sqs, _ddb


def dedup_id(kind: str, workflow_id: str, key: str) -> str:
    return hashlib.sha256(f"{kind}\0{workflow_id}\0{key}".encode()).hexdigest()


def apply_transaction(request: Any) -> tuple[bool, Any]:
    """The service's work: ``(True, value)`` or ``(False, error object)``."""
    if (not isinstance(request, dict) or not isinstance(request.get("account_id"), str)
            or not isinstance(request.get("amount"), int)):
        return False, {"type": "InvalidRequest", "details": None,
                       "message": "expected {'account_id': str, 'amount': int}"}
    LEDGER.append(request)
    return True, None


def handle(message: dict[str, Any]) -> None:
    sqs, ddb = _clients()
    workflow_id, call_id = message["workflow_id"], message["call_id"]
    table = os.environ["LAMBDA_WORKFLOW_TABLE"]
    key = {"pk": {"S": f"svc#{SERVICE}#{workflow_id}"}, "sk": {"S": f"call#{call_id}"}}
    stored = ddb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    if stored is not None:
        reply = stored["reply"]["B"]
    else:
        ok, payload = apply_transaction(message.get("request"))
        result: dict[str, Any] = {"v": 1, "kind": "call_result", "workflow_id": workflow_id,
                                  "call_id": call_id, "ok": ok}
        result["value" if ok else "error"] = payload
        reply = json.dumps(result).encode()
        item = {**key, "reply": {"B": reply},
                "expires_at": {"N": str(int(time.time()) + 30 * 86400)}}
        try:
            ddb.put_item(TableName=table, Item=item,
                         ConditionExpression="attribute_not_exists(pk)")
        except ddb.exceptions.ConditionalCheckFailedException:
            reply = ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"][
                "reply"]["B"]
    sqs.send_message(
        QueueUrl=message.get("reply_to") or os.environ["LAMBDA_WORKFLOW_QUEUE_URL"],
        MessageBody=reply.decode(), MessageGroupId=workflow_id,
        MessageDeduplicationId=dedup_id("call_result", workflow_id, call_id))


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    failures = []
    for record in event["Records"]:
        try:
            message = json.loads(record["body"])
            if message.get("kind") != "call" or message.get("service") != SERVICE:
                raise ValueError(f"not a {SERVICE!r} call: {record['body'][:200]}")
            handle(message)
        except Exception as exc:
            print(json.dumps({"event": "request_failed", "message_id": record["messageId"],
                              "error": f"{type(exc).__name__}: {exc}"}))
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
