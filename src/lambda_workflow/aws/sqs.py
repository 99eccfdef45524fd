"""SQS: the workflow FIFO queue, service requests (SQS queue or async Lambda invoke), and a
:class:`~lambda_workflow.backends.FifoQueue` over SQS FIFO for pollers and tools."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..backends.memory import DeadLetter
from ..backends.protocols import QueueMessage
from ..codecs import ENVELOPE_MAGIC, PayloadCodec
from ..errors import InvalidMessageError, PayloadTooLargeError
from .config import (
    LAMBDA_MAX_ASYNC_PAYLOAD_BYTES,
    SQS_MAX_MESSAGE_BYTES,
    AwsConfig,
    ServiceTarget,
)
from .payloads import (
    NO_BUCKET_HINT,
    S3PayloadStore,
    message_pointer,
    request_owner,
    sqs_message_size,
)

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_sqs import SQSClient

    from ._clients import AwsClients

__all__ = ["REASON_ATTRIBUTE", "SqsFifoQueue", "SqsFifoTransport", "send_message"]

log = logging.getLogger("lambda_workflow.aws")
REASON_ATTRIBUTE = "lambda_workflow.reason"
_MAX_REASON = 4096


def _check_id(what: str, value: str) -> None:
    if not 1 <= len(value) <= 128:
        raise ValueError(f"{what} must be 1 to 128 characters, got {len(value)}")


#: An encoded message body is the base64 of the codec's envelope, so it starts with these
#: characters (the base64 of ``ENVELOPE_MAGIC`` and the envelope's version); a JSON body
#: never does.
ENCODED_BODY_PREFIX = base64.b64encode(ENVELOPE_MAGIC + b"\x01")[:7]
_PLAIN = PayloadCodec()


def encode_body(body: bytes, codec: PayloadCodec | None) -> bytes:
    """A message body as sent under ``codec``: unchanged for identity (or no codec), else
    the base64 of the codec's envelope (SQS bodies are text; docs/codecs.md)."""
    if codec is None or codec.name == "identity":
        return body
    return base64.b64encode(codec.encode(body))


def decode_body(body: bytes, codec: PayloadCodec | None) -> bytes:
    """A received body as the JSON message it carries: an encoded body (any codec
    ``codec`` reads) is decoded, a JSON body is returned as it is (services not built with
    this SDK reply in plain JSON).

    Raises:
        InvalidMessageError: the body starts like an encoded one but is not base64.
        CodecError: the envelope does not decode (names the codec and why).
    """
    if not body.startswith(ENCODED_BODY_PREFIX):
        return body
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessageError("message body starts like an encoded body but is not "
                                  "base64") from None
    return (codec or _PLAIN).decode(raw)


def send_message(sqs: SQSClient, queue_url: str, body: bytes, *, group_id: str | None,
                 dedup_id: str | None, what: str, payloads: S3PayloadStore | None,
                 threshold: int, owner: str,
                 attributes: Mapping[str, Any] | None = None,
                 codec: PayloadCodec | None = None) -> str:
    """Send one message, offloading its body to S3 when it exceeds ``threshold`` bytes
    (counted as SQS counts them: UTF-8 body plus attributes).

    Without a bucket, a message up to SQS's own limit is still sent; over it,
    :class:`PayloadTooLargeError` names ``what``. ``group_id``/``dedup_id`` are given for a
    FIFO queue only. ``codec`` encodes the body first (:func:`encode_body`). Returns the
    message id.
    """
    body = encode_body(body, codec)
    text = body.decode()
    attrs = dict(attributes or {})
    size = sqs_message_size(text, attrs)
    if size > threshold and payloads is not None:
        text, extra = payloads.offload_message(owner, body)
        attrs.update(extra)
    elif size > SQS_MAX_MESSAGE_BYTES:
        raise PayloadTooLargeError(what, size, SQS_MAX_MESSAGE_BYTES, NO_BUCKET_HINT)
    kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": text}
    if attrs:
        kwargs["MessageAttributes"] = attrs
    if group_id is not None:
        kwargs["MessageGroupId"] = group_id
    if dedup_id is not None:
        kwargs["MessageDeduplicationId"] = dedup_id
    return str(sqs.send_message(**kwargs)["MessageId"])


def resolve_body(body: str, attributes: Mapping[str, Any] | None,
                 payloads: S3PayloadStore | None, codec: PayloadCodec | None = None) -> bytes:
    """A received message's real body: loaded from S3 when the body is a pointer, and
    decoded (:func:`decode_body`) when it is encoded."""
    pointer = message_pointer(body, attributes)
    if pointer is None:
        return decode_body(body.encode(), codec)
    if payloads is None:
        raise InvalidMessageError(
            f"message body is an S3 pointer (s3://{pointer[0]}/{pointer[1]}) but no payload "
            "bucket is configured (LAMBDA_WORKFLOW_BUCKET)")
    return decode_body(payloads.get(pointer[1], bucket=pointer[0]), codec)


def _started_workflow(body: bytes) -> str | None:
    """The workflow a start message names (``None`` for any other message)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(message, dict) and message.get("kind") == "start":
        name = message.get("workflow")
        return name if isinstance(name, str) else None
    return None


class SqsFifoTransport:
    """A :class:`~lambda_workflow.backends.Transport` on SQS.

    Workflow messages go to the FIFO queue of the function that runs the instance's workflow
    (``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``, else this function's own queue) with
    ``MessageGroupId`` = workflow id and the protocol's deterministic deduplication id. A
    request goes to its service's target: an SQS queue (on a FIFO queue each request is its
    own message group, deduplicated by its id) or an asynchronous Lambda invocation
    (``InvocationType=Event``). Bodies over the payload threshold go to S3 when a bucket is
    configured.
    """

    def __init__(self, config: AwsConfig, clients: AwsClients,
                 payloads: S3PayloadStore | None = None,
                 codec: PayloadCodec | None = None) -> None:
        self.config = config
        self.clients = clients
        self.payloads = payloads
        self.codec = codec

    @property
    def reply_address(self) -> str:
        return self.config.queue_url

    @property
    def routes_workflows(self) -> bool:
        """Whether messages go to several workflow queues (``workflow_queues`` is set): then
        a child's start message names its parent's workflow, for the reply's route."""
        return bool(self.config.workflow_queues)

    def workflow_queue(self, workflow_id: str, body: bytes, workflow: str | None) -> str:
        """The queue of the function that runs the instance: by ``workflow``, else by the
        workflow a start message names, else this function's own queue (a deployment
        without ``workflow_queues`` has only that one)."""
        if workflow is None and self.config.workflow_queues:
            workflow = _started_workflow(body)
        return self.config.workflow_queue(workflow)

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        """Send to the instance's FIFO group on the queue of its workflow's function (see
        :meth:`workflow_queue`)."""
        send_message(self.clients.sqs, self.workflow_queue(workflow_id, body, workflow), body,
                     group_id=workflow_id, dedup_id=dedup_id,
                     what=f"a message to workflow {workflow_id!r}", payloads=self.payloads,
                     threshold=self.config.payload_threshold, owner=f"{workflow_id}/messages",
                     codec=self.codec)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        target = self.config.service_target(service)
        self.send_request(target, service, dedup_id, body)

    def send_request(self, target: ServiceTarget, service: str, dedup_id: str,
                     body: bytes) -> None:
        """Send one request body to ``target``."""
        owner = request_owner(service)
        what = f"a request to service {service!r}"
        # A service written without this SDK reads plain JSON (LAMBDA_WORKFLOW_PLAIN_SERVICES).
        codec = None if service in self.config.plain_services else self.codec
        if target.kind == "sqs":
            fifo = target.fifo
            send_message(self.clients.sqs, target.address, body,
                         group_id=dedup_id if fifo else None,
                         dedup_id=dedup_id if fifo else None, what=what,
                         payloads=self.payloads, threshold=self.config.payload_threshold,
                         owner=owner, codec=codec)
            return
        encoded = encode_body(body, codec)
        # An event is JSON: an encoded request travels as a JSON string.
        payload = encoded if encoded is body else orjson.dumps(encoded.decode())
        if len(payload) > self.config.payload_threshold and self.payloads is not None:
            pointer, _ = self.payloads.offload_message(owner, encoded)
            payload = pointer.encode()
        if len(payload) > LAMBDA_MAX_ASYNC_PAYLOAD_BYTES:
            raise PayloadTooLargeError(what, len(payload), LAMBDA_MAX_ASYNC_PAYLOAD_BYTES,
                                       NO_BUCKET_HINT)
        lam: LambdaClient = self.clients.lambda_
        lam.invoke(FunctionName=target.address, InvocationType="Event", Payload=payload)


class SqsFifoQueue:
    """A :class:`~lambda_workflow.backends.FifoQueue` on an SQS FIFO queue.

    What SQS decides is SQS's: deduplication, group ordering, visibility, and the move to the
    dead-letter queue after the redrive policy's ``maxReceiveCount``. Two differences from
    the in-memory queue: :meth:`send` cannot tell a dropped duplicate (SQS answers with a
    message id either way), and SQS accepts a stale or reused receipt handle.
    """

    def __init__(self, sqs: SQSClient, queue_url: str, *,
                 dead_letter_queue_url: str | None = None, wait_seconds: int = 0,
                 visibility_timeout: int | None = None) -> None:
        if not queue_url.endswith(".fifo"):
            raise ValueError(f"not a FIFO queue URL: {queue_url!r}")
        self.sqs = sqs
        self.queue_url = queue_url
        self.dead_letter_queue_url = dead_letter_queue_url
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout

    def send(self, body: bytes, *, group_id: str, dedup_id: str) -> str | None:
        _check_id("group_id", group_id)
        _check_id("dedup_id", dedup_id)
        return str(self.sqs.send_message(
            QueueUrl=self.queue_url, MessageBody=body.decode(), MessageGroupId=group_id,
            MessageDeduplicationId=dedup_id)["MessageId"])

    def receive_raw(self, max_messages: int = 10) -> list[dict[str, Any]]:
        """Messages as ``ReceiveMessage`` returns them (with all system and message
        attributes)."""
        if not 1 <= max_messages <= 10:
            raise ValueError(f"max_messages must be 1 to 10, got {max_messages}")
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url, "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": self.wait_seconds, "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"]}
        if self.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout
        messages: list[dict[str, Any]] = self.sqs.receive_message(**kwargs).get(
            "Messages", [])  # type: ignore[assignment]
        return messages

    def receive(self, max_messages: int = 10) -> list[QueueMessage]:
        return [_queue_message(m) for m in self.receive_raw(max_messages)]

    def delete(self, message: QueueMessage) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt)

    def release(self, message: QueueMessage) -> None:
        self.sqs.change_message_visibility(QueueUrl=self.queue_url,
                                           ReceiptHandle=message.receipt, VisibilityTimeout=0)

    def dead_letters(self) -> list[DeadLetter]:
        """Read (without consuming for long) what the dead-letter queue holds. Each is made
        visible again at once."""
        if self.dead_letter_queue_url is None:
            return []
        out: list[DeadLetter] = []
        seen: set[str] = set()
        handles: list[str] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=self.dead_letter_queue_url, MaxNumberOfMessages=10,
                MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
                VisibilityTimeout=30).get("Messages", [])
            fresh = [m for m in got if m["MessageId"] not in seen]
            if not fresh:
                break
            for m in fresh:
                m_attrs: dict[str, Any] = dict(m.get("MessageAttributes", {}))
                seen.add(m["MessageId"])
                handles.append(m["ReceiptHandle"])
                reason = (m_attrs.get(REASON_ATTRIBUTE, {}).get("StringValue")
                          or "moved by the queue's redrive policy after "
                          f"{m['Attributes'].get('ApproximateReceiveCount', '?')} "
                          "receives")
                attrs = m.get("Attributes", {})
                out.append(DeadLetter(m["Body"].encode(), attrs.get("MessageGroupId", ""),
                                      attrs.get("MessageDeduplicationId", ""),
                                      m["MessageId"], reason))
        for handle in handles:
            self.sqs.change_message_visibility(QueueUrl=self.dead_letter_queue_url,
                                               ReceiptHandle=handle, VisibilityTimeout=0)
        return out


def _queue_message(m: Mapping[str, Any]) -> QueueMessage:
    attrs = m.get("Attributes", {})
    return QueueMessage(m["Body"].encode(), attrs.get("MessageGroupId", ""),
                        attrs.get("MessageDeduplicationId", ""), m["MessageId"],
                        m["ReceiptHandle"], int(attrs.get("ApproximateReceiveCount", "1")))


def dead_letter_attributes(reason: str, **extra: str) -> dict[str, Any]:
    """Message attributes carrying why a message was dead-lettered."""
    attrs = {REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:_MAX_REASON]}}
    for key, value in extra.items():
        attrs[f"lambda_workflow.{key}"] = {"DataType": "String", "StringValue": value}
    return attrs
