"""Lambda handlers: the workflow function (SQS FIFO event source) and service functions."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .. import _core
from .._runtime.engine import ActivationReport, Engine, call_result_body
from .._runtime.services import run_service
from ..errors import InvalidMessageError, PayloadTooLargeError
from ..models import (
    CallRequestMessage,
    CallResultMessage,
    InstanceStatus,
    WorkflowMessage,
    parse_call_request,
    parse_workflow_message,
)
from ..service import Service
from ..workflow import Workflow
from .config import AwsConfig
from .payloads import NO_BUCKET_HINT, SIZE_ATTRIBUTE, message_pointer
from .runtime import AwsDeployment
from .sqs import dead_letter_attributes, resolve_body, send_message
from .timers import parse_timer

if TYPE_CHECKING:
    import boto3

__all__ = ["LambdaHandler", "service_handler", "timer_handler", "workflow_handler"]

log = logging.getLogger("lambda_workflow.aws")

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
LambdaHandler = Callable[[Any, Any], Any]
# Stop starting activations when less than this is left of the invocation (milliseconds):
# the rest of the batch is returned to the queue instead of being cut off mid-write.
_TIME_RESERVE_MS = 5_000


def _log(event: str, **fields: Any) -> None:
    log.info(json.dumps({"event": event, **fields}, default=str))


def _records(event: Any, what: str) -> list[Mapping[str, Any]]:
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list) or not all(
            isinstance(r, Mapping) and r.get("eventSource") == "aws:sqs" for r in records):
        raise InvalidMessageError(
            f"the {what} expects an SQS event ({{'Records': [...]}} with eventSource "
            f"'aws:sqs'), got {str(event)[:200]!r}")
    return records


class _WorkflowFunction:
    """The workflow Lambda: applies a batch of the workflow FIFO queue's messages."""

    def __init__(self, workflows: Mapping[str, Workflow[Any, Any]], deployment: AwsDeployment
                 ) -> None:
        self.workflows = workflows
        self.deployment = deployment
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.deployment.engine(self.workflows)
        return self._engine

    def __call__(self, event: Any, context: Any = None) -> dict[str, Any]:
        records = _records(event, "workflow handler")
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            group = record.get("attributes", {}).get("MessageGroupId", "")
            groups.setdefault(group, []).append(record)
        failures: list[str] = []
        for group, batch in groups.items():
            remaining = getattr(context, "get_remaining_time_in_millis", None)
            if remaining is not None and remaining() < _TIME_RESERVE_MS:
                _log("out_of_time", workflow_id=group, returned=len(batch))
                failures += [r["messageId"] for r in batch]
                continue
            failures += self._activate(group, batch)
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}

    def _parse(self, group: str, record: Mapping[str, Any]) -> WorkflowMessage:
        body = resolve_body(record["body"], record.get("messageAttributes"),
                            self.deployment.payloads)
        msg = parse_workflow_message(body)
        if msg.workflow_id != group:
            raise InvalidMessageError(
                f"message for workflow {msg.workflow_id!r} arrived in group {group!r}; the "
                "group id must be the workflow id")
        limit = self.deployment.payload_limit
        if isinstance(msg, CallResultMessage) and limit is not None:
            # A reply the store could not hold becomes an error the workflow can handle,
            # instead of a write that fails on every delivery.
            size = len(orjson.dumps(msg.value if msg.ok else msg.error.model_dump()
                                    if msg.error else None))
            if size > limit:
                err = PayloadTooLargeError(
                    f"the reply to call {msg.call_id} of workflow {group!r}", size, limit,
                    NO_BUCKET_HINT)
                msg = CallResultMessage(workflow_id=group, call_id=msg.call_id, ok=False,
                                        error={"type": "PayloadTooLargeError",
                                               "message": str(err), "details": None})
        return msg

    def _activate(self, group: str, batch: list[Mapping[str, Any]]) -> list[str]:
        parsed: list[WorkflowMessage] = []
        kept: list[Mapping[str, Any]] = []
        failures: list[str] = []
        for record in batch:
            try:
                parsed.append(self._parse(group, record))
                kept.append(record)
            except InvalidMessageError as exc:
                failures += self._dead_letter(record, str(exc))
        if not parsed:
            return failures
        try:
            report = self.engine.activate(group, parsed)
        except Exception as exc:
            return failures + self._failed(group, kept, exc)
        for i, record in enumerate(kept):
            if i in report.rejected:
                failures += self._dead_letter(record, report.rejected[i])
        self._log_report(report)
        return failures

    def _failed(self, group: str, kept: list[Mapping[str, Any]], exc: Exception) -> list[str]:
        """The activation failed: return the group's messages to the queue, or, on their last
        allowed delivery, fail the instance and dead-letter them with the reason."""
        reason = f"{type(exc).__name__}: {exc}"
        receives = max(int(r.get("attributes", {}).get("ApproximateReceiveCount", "1"))
                       for r in kept)
        _log("activation_failed", workflow_id=group, receives=receives, error=reason)
        ids = [r["messageId"] for r in kept]
        if receives < self.deployment.config.max_receives:
            return ids
        try:
            store = self.deployment.store
            store.forget(group)  # a failed activation may have left a stale counter
            inst = store.get_instance(group)
            if inst is not None and inst.status is InstanceStatus.RUNNING:
                kinds = sorted({_kind(r["body"]) for r in kept})
                error = orjson.dumps({"type": "PoisonMessage", "details": None, "message": (
                    f"{'/'.join(kinds)} message(s) failed {receives} times and were moved to "
                    f"the dead-letter queue; last error: {reason}")})
                store.finish(group, InstanceStatus.FAILED, None, error, inst.activations,
                             self.deployment.clock.now())
        except Exception as mark_exc:
            _log("poison_mark_failed", workflow_id=group, error=repr(mark_exc))
            return ids  # SQS's redrive policy moves them to the DLQ on the next receive
        out: list[str] = []
        for record in kept:
            out += self._dead_letter(record, f"poison: {reason}")
        return out

    def _dead_letter(self, record: Mapping[str, Any], reason: str) -> list[str]:
        """Move one message to the DLQ with its reason; returns it as a failure when that is
        impossible (no DLQ configured, or the send failed), so nothing is lost."""
        config = self.deployment.config
        _log("dead_letter", message_id=record["messageId"], reason=reason)
        if config.dead_letter_queue_url is None:
            return [record["messageId"]]
        attrs = record.get("attributes", {})
        extra = dead_letter_attributes(reason, source_message_id=record["messageId"])
        size_attr = record.get("messageAttributes", {}).get(SIZE_ATTRIBUTE)
        if size_attr is not None:
            extra[SIZE_ATTRIBUTE] = {"DataType": "Number",
                                     "StringValue": size_attr.get("stringValue", "0")}
        try:
            self.deployment.clients.sqs.send_message(
                QueueUrl=config.dead_letter_queue_url, MessageBody=record["body"],
                MessageGroupId=attrs.get("MessageGroupId") or "invalid",
                MessageDeduplicationId=record["messageId"], MessageAttributes=extra)
        except Exception as exc:
            _log("dead_letter_failed", message_id=record["messageId"], error=repr(exc))
            return [record["messageId"]]
        return []

    @staticmethod
    def _log_report(report: ActivationReport) -> None:
        _log("activation", workflow_id=report.workflow_id, workflow=report.workflow_name,
             activation=report.activation, status=report.status, applied=report.applied,
             duplicates=report.duplicates, sent=[op.op_id for op in report.sent],
             pending=report.pending, rejected=report.rejected)


def _kind(body: str) -> str:
    try:
        kind = orjson.loads(body).get("kind")
    except (orjson.JSONDecodeError, AttributeError):
        return "unparsable"
    return kind if isinstance(kind, str) else "unparsable"


def workflow_handler(*workflows: Workflow[Any, Any], config: AwsConfig | None = None,
                     session: boto3.Session | None = None,
                     deployment: AwsDeployment | None = None) -> LambdaHandler:
    """The handler of the workflow Lambda function (event source: the workflow FIFO queue,
    with ``ReportBatchItemFailures``).

    A batch is grouped by workflow; each instance's messages are applied together and the
    workflow replays once. The response lists ``batchItemFailures`` by the FIFO rule: when an
    instance's activation fails, its messages in the batch go back to the queue; other
    instances proceed. Malformed or rejected messages go to the DLQ with their reason. A
    message on its last allowed delivery (``LAMBDA_WORKFLOW_MAX_RECEIVES``) whose activation
    still fails marks its instance failed (``PoisonMessage``) and goes to the DLQ.

    Configuration comes from the environment (:meth:`AwsConfig.from_env`) on first use,
    unless ``config`` (with an optional boto3 ``session``) or a whole ``deployment`` is
    given.

    Example (``handler.py``)::

        from lambda_workflow.aws import workflow_handler
        from app.workflows import make_transaction

        handler = workflow_handler(make_transaction)
    """
    registry: dict[str, Workflow[Any, Any]] = {}
    for wf in workflows:
        if not isinstance(wf, Workflow):
            raise TypeError(f"workflow_handler() takes @workflow objects, got {wf!r}")
        if registry.setdefault(wf.name, wf) is not wf:
            raise ValueError(f"two different workflows are named {wf.name!r}")
    if not registry:
        raise ValueError("workflow_handler() needs at least one workflow")
    state: dict[str, _WorkflowFunction] = {}

    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        fn = state.get("fn")
        if fn is None:
            fn = state["fn"] = _WorkflowFunction(
                registry, deployment or AwsDeployment(config, session=session))
        return fn(event, context)

    handler.__doc__ = f"Workflow handler for: {', '.join(w.name for w in workflows)}"
    return handler


# -- services --------------------------------------------------------------------------------
class _ServiceFunction:
    """A service Lambda: validates each request, runs the function, replies once per call."""

    def __init__(self, service: Service[Any, Any], fn: Callable[[Any], Any],
                 deployment: AwsDeployment, idempotent: bool) -> None:
        self.service = service
        self.fn = fn
        self.deployment = deployment
        self.idempotent = idempotent

    @staticmethod
    def _run_async(awaitable: Awaitable[Any]) -> Any:
        # One loop per request, closed after it: a Lambda runs one invocation at a time.
        async def wrap() -> Any:
            return await awaitable

        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(wrap())
        finally:
            loop.close()

    def __call__(self, event: Any, context: Any = None) -> Any:
        if isinstance(event, Mapping) and "Records" in event:
            failures: list[str] = []
            for record in _records(event, f"service handler of {self.service.name!r}"):
                try:
                    body = resolve_body(record["body"], record.get("messageAttributes"),
                                        self.deployment.payloads)
                    self.handle(parse_call_request(body))
                except Exception as exc:
                    # Nothing replied: the queue delivers the request again, and its redrive
                    # policy moves a request that keeps failing to the service's DLQ.
                    _log("request_failed", service=self.service.name,
                         message_id=record["messageId"], error=f"{type(exc).__name__}: {exc}")
                    failures.append(record["messageId"])
            return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}
        # An asynchronous invocation: the event is the request (or an S3 pointer to it).
        raw = orjson.dumps(event)
        body = resolve_body(raw.decode(), None, self.deployment.payloads) if (
            message_pointer(raw, None) is not None) else raw
        self.handle(parse_call_request(body))
        return None

    def _reply_key(self, request: CallRequestMessage) -> dict[str, Any]:
        return {"pk": {"S": f"svc#{self.service.name}#{request.workflow_id}"},
                "sk": {"S": f"call#{request.call_id}"}}

    def handle(self, request: CallRequestMessage) -> None:
        """Serve one request: run the function once per call id and send the reply."""
        if request.service != self.service.name:
            raise InvalidMessageError(
                f"request for service {request.service!r} reached the handler of "
                f"{self.service.name!r}")
        ddb = self.deployment.clients.dynamodb
        table = self.deployment.config.table
        body: bytes | None = None
        if self.idempotent:
            got = ddb.get_item(TableName=table, Key=self._reply_key(request),
                               ConsistentRead=True).get("Item")
            if got is not None:
                body = self._stored_reply(got)
                _log("reply_repeated", service=self.service.name,
                     workflow_id=request.workflow_id, call_id=request.call_id)
        if body is None:
            ok, payload = run_service(self.service, self.fn, request.request, self._run_async)
            body = self._bounded_reply(request, ok, payload)
            if self.idempotent:
                body = self._record_reply(request, body)
        send_message(
            self.deployment.clients.sqs, request.reply_to or self.deployment.config.queue_url,
            body, group_id=request.workflow_id,
            dedup_id=_core.dedup_id(request.workflow_id, "call_result", request.call_id),
            what=f"the reply to call {request.call_id} of workflow {request.workflow_id!r}",
            payloads=self.deployment.payloads,
            threshold=self.deployment.config.payload_threshold,
            owner=f"{request.workflow_id}/replies")

    def _bounded_reply(self, request: CallRequestMessage, ok: bool, payload: bytes) -> bytes:
        limit = self.deployment.payload_limit
        if limit is not None and len(payload) > limit:
            err = PayloadTooLargeError(
                f"the reply of service {self.service.name!r} to call {request.call_id} of "
                f"workflow {request.workflow_id!r}", len(payload), limit, NO_BUCKET_HINT)
            ok, payload = False, orjson.dumps({"type": "PayloadTooLargeError",
                                               "message": str(err), "details": None})
        return call_result_body(request.workflow_id, request.call_id, ok, payload)

    def _stored_reply(self, item: Mapping[str, Any]) -> bytes:
        if "reply_s3" in item:
            payloads = self.deployment.payloads
            if payloads is None:
                raise InvalidMessageError("a stored reply is in S3 but no bucket is configured")
            return payloads.get(item["reply_s3"]["S"])
        reply: bytes = item["reply"]["B"]
        return reply

    def _record_reply(self, request: CallRequestMessage, body: bytes) -> bytes:
        """Record the reply for the call id; if another run recorded one first, that one
        wins (and is the one sent)."""
        config = self.deployment.config
        item: dict[str, Any] = self._reply_key(request)
        payloads = self.deployment.payloads
        if len(body) > config.payload_threshold and payloads is not None:
            item["reply_s3"] = {"S": payloads.put(f"{request.workflow_id}/replies", body)}
        else:
            item["reply"] = {"B": body}
        now = self.deployment.clock.now()
        item["created_at"] = {"N": repr(now)}
        if config.retention_days:
            item["expires_at"] = {"N": str(int(now + config.retention_days * 86400))}
        ddb = self.deployment.clients.dynamodb
        try:
            ddb.put_item(TableName=config.table, Item=item,
                         ConditionExpression="attribute_not_exists(pk)")
        except ddb.exceptions.ConditionalCheckFailedException:
            got = ddb.get_item(TableName=config.table, Key=self._reply_key(request),
                               ConsistentRead=True)["Item"]
            return self._stored_reply(got)
        return body


def service_handler(service: Service[ReqT, RespT],
                    fn: Callable[[ReqT], Awaitable[RespT]] | Callable[[ReqT], RespT], *,
                    idempotent: bool = True, config: AwsConfig | None = None,
                    session: boto3.Session | None = None,
                    deployment: AwsDeployment | None = None) -> LambdaHandler:
    """The handler of a service Lambda function.

    It takes an SQS event (the service's request queue; returns ``batchItemFailures`` for
    requests that failed for a passing reason) or an asynchronous invocation whose event is
    one request. Each request is validated against ``service``'s request type, ``fn`` runs on
    it, and the reply (ok, or the error: an invalid request, a :class:`ServiceError`, any
    other exception) goes to the request's ``reply_to`` queue.

    With ``idempotent`` (the default) the reply is recorded in the table per call id
    (``pk = svc#<service>#<workflow id>``) before it is sent: a request delivered again
    re-sends the recorded reply and does not run ``fn`` a second time. ``fn`` runs more than
    once for a call only if a crash comes between its end and that record.
    """
    state: dict[str, _ServiceFunction] = {}

    def handler(event: Any, context: Any = None) -> Any:
        sf = state.get("fn")
        if sf is None:
            sf = state["fn"] = _ServiceFunction(
                service, fn, deployment or AwsDeployment(config, session=session), idempotent)
        return sf(event, context)

    if not isinstance(service, Service):
        raise TypeError(f"service_handler() takes a Service, got {service!r}")
    handler.__doc__ = f"Service handler for {service.name!r}"
    return handler


def timer_handler(*, config: AwsConfig | None = None, session: boto3.Session | None = None,
                  deployment: AwsDeployment | None = None
                  ) -> Callable[[Any, Any], dict[str, Any]]:
    """The handler of the timer function (event source: the timer queue, with
    ``ReportBatchItemFailures``): forwards due timers to the workflow queue as
    ``timer_fired`` and sends the others on for their next hop."""
    state: dict[str, AwsDeployment] = {}

    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        dep = state.get("d")
        if dep is None:
            dep = state["d"] = deployment or AwsDeployment(config, session=session)
        timers = dep.timers
        failures: list[dict[str, str]] = []
        for record in event.get("Records", []) if isinstance(event, Mapping) else []:
            try:
                fired = timers.handle(parse_timer(record["body"]))
                _log("timer_fired" if fired else "timer_hop", message_id=record["messageId"])
            except Exception as exc:
                # Returned to the queue; the timer queue's redrive policy moves a message
                # that keeps failing (a malformed one, say) to its DLQ.
                _log("timer_failed", message_id=record["messageId"],
                     error=f"{type(exc).__name__}: {exc}")
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    return handler
