"""Payloads over the threshold live in S3; sizes are counted in bytes as AWS counts them.

Two places hold payloads: DynamoDB items (a workflow's input and result, each operation's
request and result) and SQS messages. Either one that would exceed the configured threshold
is written to S3 and replaced by a pointer, and read back transparently.

An SQS message is offloaded whole, in the format of the Amazon SQS Extended Client Library
(Java and Python), so services using that library read it as they would any large message:
the body becomes ``["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName":
..., "s3Key": ...}]`` and the message carries the attribute ``ExtendedPayloadSize`` (Number,
the original size in bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from botocore.exceptions import ClientError

from ..errors import InvalidMessageError, PayloadTooLargeError, WorkflowError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "DEFAULT_PREFIX",
    "EXPIRY_MARGIN_DAYS",
    "POINTER_CLASS",
    "SIZE_ATTRIBUTE",
    "PayloadMissingError",
    "S3PayloadStore",
    "describe_payload",
    "dynamodb_item_size",
    "message_pointer",
    "minimum_expiry_days",
    "reply_owner",
    "request_owner",
    "sqs_message_size",
]

POINTER_CLASS = "software.amazon.payloadoffloading.PayloadS3Pointer"
SIZE_ATTRIBUTE = "ExtendedPayloadSize"
NO_BUCKET_HINT = ("configure an S3 bucket for large payloads (LAMBDA_WORKFLOW_BUCKET) or "
                  "raise LAMBDA_WORKFLOW_PAYLOAD_THRESHOLD")
#: The key prefix of every object the runtime writes and the only one it reads.
DEFAULT_PREFIX = "lambda-workflow/"
# Below the prefix, a service's objects are under these owners, so that a service's role can
# be limited to its own (deploy/template.yaml): requests/<service>/ and replies/<service>/.
_REQUESTS = "requests"
_REPLIES = "replies"
#: How long S3 must keep payloads beyond the longest sleep and the retention (days): an
#: instance's activity outside its longest sleep, and DynamoDB TTL's deletion lag.
EXPIRY_MARGIN_DAYS = 90


def request_owner(service: str) -> str:
    """The owner (key path below the prefix) of offloaded requests to ``service``."""
    return f"{_REQUESTS}/{service}"


def reply_owner(service: str, workflow_id: str) -> str:
    """The owner of ``service``'s offloaded replies to ``workflow_id``."""
    return f"{_REPLIES}/{service}/{workflow_id}"


def minimum_expiry_days(retention_days: int) -> int:
    """The fewest days a lifecycle rule may keep payloads: the longest sleep (or callback
    timeout) the SDK allows, plus the retention of a finished instance, plus
    :data:`EXPIRY_MARGIN_DAYS`. An instance that writes a payload and then sleeps as long as
    it may still finds it, and so does anyone reading its history until its items expire."""
    from ..context import MAX_SLEEP

    return MAX_SLEEP.days + retention_days + EXPIRY_MARGIN_DAYS


# S3's error codes for an object that is not there (GetObject answers NoSuchKey; a HEAD or a
# caller without s3:ListBucket gets 404 or AccessDenied, which are not taken for "missing").
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class PayloadMissingError(WorkflowError, LookupError):
    """An offloaded payload's object is not in the bucket: deleted, or expired by the
    bucket's lifecycle rule. The message names the bucket and the key."""

    def __init__(self, bucket: str, key: str, what: str | None = None) -> None:
        self.bucket = bucket
        self.key = key
        self.what = what
        subject = f"{what} (s3://{bucket}/{key})" if what else f"the payload s3://{bucket}/{key}"
        super().__init__(f"{subject} is missing from S3: deleted, or expired by the bucket's "
                         "lifecycle rule")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.bucket, self.key, self.what))


def describe_payload(data: bytes | str) -> str:
    """A payload described without its content: its size and the start of its SHA-256 (what
    reasons and logs say instead of echoing a payload, which may hold secrets)."""
    raw = data.encode() if isinstance(data, str) else data
    return f"{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:12]}"


class S3PayloadStore:
    """Large payloads in one S3 bucket, under ``prefix``. Keys are content-addressed per
    owner (a repeated write after a crash writes the same object).

    Reads are confined to that bucket and prefix: a pointer naming another bucket, or a key
    outside the prefix, is refused (:class:`InvalidMessageError`) before any request, so a
    message cannot make a function read an object it was not meant to.
    """

    def __init__(self, s3: S3Client, bucket: str, prefix: str = DEFAULT_PREFIX) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix

    def key_for(self, owner: str, data: bytes) -> str:
        """The key ``data`` is stored under: the owner's path and the content's SHA-256."""
        return f"{self.prefix}{owner}/{hashlib.sha256(data).hexdigest()}"

    def put(self, owner: str, data: bytes) -> str:
        """Store ``data``; returns its key."""
        key = self.key_for(owner, data)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def check(self, key: str, bucket: str | None = None) -> None:
        """Refuse a location outside this store's bucket and prefix.

        Raises:
            InvalidMessageError: names the location asked for and the one allowed.
        """
        if (bucket is not None and bucket != self.bucket) or not key.startswith(self.prefix):
            where = f"s3://{bucket or self.bucket}/{key}"
            raise InvalidMessageError(
                f"refused to read {where[:300]}: payloads are read only from "
                f"s3://{self.bucket}/{self.prefix} (the configured LAMBDA_WORKFLOW_BUCKET and "
                "its key prefix)")

    def get(self, key: str, bucket: str | None = None, what: str | None = None) -> bytes:
        """The bytes stored under ``key`` (in this store's bucket; ``bucket``, when given,
        must be that bucket).

        Raises:
            InvalidMessageError: the location is outside the bucket and prefix.
            PayloadMissingError: the object does not exist (``what`` names the payload).
        """
        self.check(key, bucket)
        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES:
                raise PayloadMissingError(self.bucket, key, what) from None
            raise
        return body

    # -- SQS messages ------------------------------------------------------------------------
    def offload_message(self, owner: str, body: bytes) -> tuple[str, dict[str, Any]]:
        """Store a message body; returns the pointer body and the message attributes to send
        instead."""
        key = self.put(owner, body)
        pointer = orjson.dumps([POINTER_CLASS, {"s3BucketName": self.bucket, "s3Key": key}])
        return pointer.decode(), {SIZE_ATTRIBUTE: {"DataType": "Number",
                                                   "StringValue": str(len(body))}}


def message_pointer(body: str | bytes,
                    attributes: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(bucket, key)`` if this message body is an S3 pointer, else ``None``.

    A body that starts like a pointer but is malformed raises :class:`InvalidMessageError`.
    """
    head = body[:64] if isinstance(body, str) else body[:64].decode("utf-8", "replace")
    if POINTER_CLASS not in head and not (attributes and SIZE_ATTRIBUTE in attributes):
        return None
    try:
        kind, ref = orjson.loads(body)
        bucket, key = ref["s3BucketName"], ref["s3Key"]
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError):
        raise InvalidMessageError(
            f"message carries {SIZE_ATTRIBUTE} or names {POINTER_CLASS} but its body is not a "
            f"valid S3 pointer ({describe_payload(body)})") from None
    if kind != POINTER_CLASS or not isinstance(bucket, str) or not isinstance(key, str):
        raise InvalidMessageError(f"malformed S3 pointer message ({describe_payload(body)})")
    return bucket, key


def require_room(size: int, limit: int, what: str, store: S3PayloadStore | None) -> bool:
    """Whether a payload of ``size`` bytes must be offloaded: ``False`` when it fits,
    ``True`` when it does not and a bucket is configured.

    Raises:
        PayloadTooLargeError: it does not fit and no bucket is configured.
    """
    if size <= limit:
        return False
    if store is None:
        raise PayloadTooLargeError(what, size, limit, NO_BUCKET_HINT)
    return True


def sqs_message_size(body: str | bytes, attributes: Mapping[str, Any] | None = None) -> int:
    """A message's size as SQS limits it: the body's UTF-8 bytes plus, for each message
    attribute, its name, its data type and its value."""
    size = len(body.encode() if isinstance(body, str) else body)
    for name, attr in (attributes or {}).items():
        size += len(name.encode()) + len(str(attr.get("DataType", "")).encode())
        if "StringValue" in attr:
            size += len(str(attr["StringValue"]).encode())
        if "BinaryValue" in attr:
            size += len(attr["BinaryValue"])
    return size


def _value_size(value: Mapping[str, Any]) -> int:
    ((tag, v),) = value.items()
    if tag == "S":
        return len(v.encode())
    if tag == "B":
        return len(v)
    if tag == "N":
        digits = len(v.lstrip("-").replace(".", "").strip("0")) or 1
        return (digits + 1) // 2 + 1
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "SS":
        return sum(len(s.encode()) for s in v)
    if tag == "BS":
        return sum(len(b) for b in v)
    if tag == "NS":
        return sum(_value_size({"N": n}) for n in v)
    if tag == "L":
        return 3 + sum(1 + _value_size(x) for x in v)
    if tag == "M":
        return 3 + sum(len(k.encode()) + 1 + _value_size(x) for k, x in v.items())
    raise ValueError(f"unknown DynamoDB attribute type {tag!r}")


def dynamodb_item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """An item's size as DynamoDB limits it (400 KB): attribute names in UTF-8 plus their
    values (strings in UTF-8, binary raw, numbers about one byte per two digits)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())
