"""Lambda handlers: the workflow function (SQS FIFO event source) and service functions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .. import _core, _observe, logs, tracing
from .._runtime.engine import ActivationReport, Engine, call_result_body
from .._runtime.services import run_service
from ..errors import InvalidMessageError, PayloadTooLargeError, WorkflowError
from ..models import (
    MESSAGE_KINDS,
    CallRequestMessage,
    CallResultMessage,
    InstanceStatus,
    WorkflowMessage,
    parse_call_request,
    parse_workflow_message,
)
from ..service import Service
from ..workflow import Workflow
from .config import (
    AwsConfig,
    ConfigurationError,
    missing_target,
    raise_problems,
    workflow_queues_of,
)
from .metrics import InvocationMetrics, metrics_enabled
from .payloads import (
    NO_BUCKET_HINT,
    POINTER_CLASS,
    SIZE_ATTRIBUTE,
    PayloadMissingError,
    describe_payload,
    message_pointer,
    reply_owner,
)
from .runtime import AwsDeployment
from .sqs import dead_letter_attributes, decode_body, resolve_body, send_message
from .timers import parse_timer

if TYPE_CHECKING:
    import boto3

__all__ = ["CallInProgressError", "HandlerRole", "LambdaHandler", "handler_role",
           "service_handler", "timer_handler", "workflow_handler"]

log = logging.getLogger("lambda_workflow.aws")

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
LambdaHandler = Callable[[Any, Any], Any]
# Stop starting activations when less than this is left of the invocation (milliseconds):
# the rest of the batch is returned to the queue instead of being cut off mid-write.
_TIME_RESERVE_MS = 5_000
# A service's claim on a call outlives the invocation that made it by this margin (seconds);
# without a Lambda context it lasts Lambda's longest timeout plus the margin.
_LEASE_MARGIN = 30.0
_DEFAULT_LEASE = 900.0 + _LEASE_MARGIN


_ROLE_ATTRIBUTE = "__lambda_workflow__"


@dataclass(frozen=True, slots=True)
class HandlerRole:
    """What a handler made by this module serves, kept on the handler as
    ``__lambda_workflow__`` so that tools (``lambda-workflow template``) can find the handlers
    in a module: ``kind`` is ``"workflow"`` (with its ``workflows``), ``"service"`` (with its
    ``service``) or ``"timer"``."""

    kind: str
    workflows: tuple[Workflow[Any, Any], ...] = ()
    service: Service[Any, Any] | None = None


def handler_role(obj: object) -> HandlerRole | None:
    """The role of a handler made by :func:`workflow_handler`, :func:`service_handler` or
    :func:`timer_handler`; None for anything else."""
    role = getattr(obj, _ROLE_ATTRIBUTE, None)
    return role if isinstance(role, HandlerRole) else None


class CallInProgressError(WorkflowError):
    """Another delivery of the same request holds the claim on its call: this delivery does
    not run the service function (its message is retried later)."""


def _log(event: str, **fields: Any) -> None:
    log.info(json.dumps({"event": event, **fields}, default=str))


# Reasons and log lines name ids and describe payloads; they never repeat a payload's content
# (a message may carry secrets, and the DLQ and the logs are read by others).
_MAX_REASON = 2000
_MIN_REDACTED = 6
_ENVELOPE_FIELDS = frozenset({"v", "kind", "workflow_id", "call_id", "timer_id", "service",
                              "workflow", "reply_to", "ok"})


def _strings(value: Any, out: set[str]) -> None:
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            out.add(str(k))
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)


def _redact(text: str, *bodies: str | bytes) -> str:
    """``text`` without any content of ``bodies``: the start of a body (what a parser's
    preview shows) and every string in a JSON body other than the envelope's ids, wherever
    they appear, plain or escaped, are replaced by their length; bounded in size."""
    secrets: set[str] = set()
    for body in bodies:
        raw = body.encode() if isinstance(body, str) else body
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            secrets.add(raw[:80].decode("utf-8", "replace"))  # what a parser's error shows
            continue
        if isinstance(data, list) and data[:1] == [POINTER_CLASS]:
            continue  # an S3 pointer names a location, which reasons do name
        if isinstance(data, Mapping):
            for key, value in data.items():
                envelope = key in _ENVELOPE_FIELDS and (
                    key != "kind" or value in MESSAGE_KINDS) and isinstance(value, str)
                if not envelope:
                    _strings({key: value}, secrets)
        else:
            _strings(data, secrets)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) < _MIN_REDACTED:
            continue
        for form in {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}:
            if form in text:
                text = text.replace(form, f"<{len(secret)} characters withheld>")
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + " [truncated]"


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
        self.metrics: InvocationMetrics | None = None  # this invocation's (EMF, metrics.py)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self.deployment.engine(self.workflows)
        return self._engine

    def __call__(self, event: Any, context: Any = None) -> dict[str, Any]:
        records = _records(event, "workflow handler")
        self.metrics = InvocationMetrics.start()
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
        if self.metrics is not None:
            self.metrics.flush()
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}

    def _parse(self, group: str, record: Mapping[str, Any], body: bytes) -> WorkflowMessage:
        """The message in ``body`` (already read from S3 if the record was a pointer).

        Raises:
            InvalidMessageError: it can never be applied; the reason names what is wrong
                without repeating the body's content.
        """
        try:
            msg = parse_workflow_message(body)
        except InvalidMessageError as exc:
            where = "" if body == record["body"].encode() else " (read from S3)"
            raise InvalidMessageError(
                f"{_redact(str(exc), body, record['body'])}{where}; the message: "
                f"{describe_payload(body)}") from None
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

    def _fetch(self, record: Mapping[str, Any]) -> bytes:
        """The record's body, read from the payload bucket when it is an S3 pointer.

        Raises:
            InvalidMessageError: a malformed pointer, or one outside the bucket and prefix
                (never readable: dead-lettered at once).
            Exception: the object is missing (:class:`PayloadMissingError`) or S3 failed;
                the message may be readable on a later delivery.
        """
        return resolve_body(record["body"], record.get("messageAttributes"),
                            self.deployment.payloads, self.deployment.codec)

    def _activate(self, group: str, batch: list[Mapping[str, Any]]) -> list[str]:
        parsed: list[WorkflowMessage] = []
        kept: list[Mapping[str, Any]] = []
        failures: list[str] = []
        unreadable: list[tuple[Mapping[str, Any], str]] = []
        for n, record in enumerate(batch):
            try:
                body = self._fetch(record)
                parsed.append(self._parse(group, record, body))
                kept.append(record)
            except InvalidMessageError as exc:
                failures += self._dead_letter(record, _redact(str(exc), record["body"]))
            except Exception as exc:
                # Its payload could not be read (a missing object, an S3 error): this message
                # alone is retried. By the FIFO rule it goes back with the later messages of
                # its group; the earlier ones are applied now, other groups go on.
                reason = _redact(f"{type(exc).__name__}: {exc}", record["body"])
                receives = _receives(record)
                _log("payload_unreadable", workflow_id=group, message_id=record["messageId"],
                     receives=receives, error=reason)
                if receives < self.deployment.config.max_receives:
                    failures += [r["messageId"] for r in batch[n:]]
                    break
                # Its last delivery: it goes to the DLQ with the reason, the instance is
                # failed (it may be waiting for this message), the others are applied.
                unreadable.append((record, f"payload unreadable after {receives} deliveries: "
                                           f"{reason}"))
        if parsed:
            failures += self._apply(group, parsed, kept)
        for record, reason in unreadable:
            failures += self._poison(group, [record], reason, _receives(record))
        return failures

    def _apply(self, group: str, parsed: list[WorkflowMessage],
               kept: list[Mapping[str, Any]]) -> list[str]:
        failures: list[str] = []
        try:
            report = self.engine.activate(group, parsed)
        except Exception as exc:
            return self._failed(group, kept, exc)
        if self.metrics is not None:
            self.metrics.activation(report, len(parsed))
        for i, record in enumerate(kept):
            if i in report.rejected:
                failures += self._dead_letter(record, _redact(report.rejected[i],
                                                              record["body"]))
        self._log_report(report, kept)
        return failures

    def _failed(self, group: str, kept: list[Mapping[str, Any]], exc: Exception) -> list[str]:
        """The activation failed: return the group's messages to the queue, or, on their last
        allowed delivery, fail the instance and dead-letter them with the reason."""
        reason = _redact(f"{type(exc).__name__}: {exc}", *(r["body"] for r in kept))
        receives = max(_receives(r) for r in kept)
        _log("activation_failed", workflow_id=group, receives=receives, error=reason)
        if self.metrics is not None:
            self.metrics.activation_errors += 1
        # A payload of the recorded history that is gone from S3 (deleted, expired) never
        # comes back: no delivery can replay the instance, so it fails now.
        final = isinstance(exc, PayloadMissingError)
        if receives < self.deployment.config.max_receives and not final:
            return [r["messageId"] for r in kept]
        return self._poison(group, kept, reason, receives)

    def _poison(self, group: str, records: list[Mapping[str, Any]], reason: str,
                receives: int) -> list[str]:
        """Mark the instance failed (``PoisonMessage``, with ``reason``) if it is still
        running, then dead-letter ``records``; if the instance cannot be marked, they go
        back to the queue (SQS's redrive policy moves them to the DLQ)."""
        try:
            store = self.deployment.store
            store.forget(group)  # a failed activation may have left a stale counter
            inst = store.get_instance(group)
            if inst is not None and inst.status is InstanceStatus.RUNNING:
                kinds = sorted({_kind(r["body"]) for r in records})
                error = orjson.dumps({"type": "PoisonMessage", "details": None, "message": (
                    f"{'/'.join(kinds)} message(s) failed {receives} times and were moved to "
                    f"the dead-letter queue; last error: {reason}")})
                store.finish(group, InstanceStatus.FAILED, None, error, inst.activations,
                             self.deployment.clock.now())
        except Exception as mark_exc:
            _log("poison_mark_failed", workflow_id=group,
                 error=_redact(repr(mark_exc), *(r["body"] for r in records)))
            return [r["messageId"] for r in records]
        out: list[str] = []
        for record in records:
            out += self._dead_letter(record, f"poison: {reason}")
        return out

    def _dead_letter(self, record: Mapping[str, Any], reason: str) -> list[str]:
        """Move one message to the DLQ with its reason; returns it as a failure when that is
        impossible (no DLQ configured, or the send failed), so nothing is lost."""
        config = self.deployment.config
        _log("dead_letter", message_id=record["messageId"], reason=reason)
        if self.metrics is not None:
            self.metrics.dead_letters += 1
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
    def _log_report(report: ActivationReport, kept: list[Mapping[str, Any]]) -> None:
        rejected = {i: _redact(why, kept[i]["body"]) for i, why in report.rejected.items()}
        _log("activation", workflow_id=report.workflow_id, workflow=report.workflow_name,
             activation=report.activation, status=report.status, applied=report.applied,
             duplicates=report.duplicates, sent=[op.op_id for op in report.sent],
             pending=report.pending, rejected=rejected, cache=report.cache)


def _receives(record: Mapping[str, Any]) -> int:
    return int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))


def _kind(body: str) -> str:
    try:
        kind = orjson.loads(body).get("kind")
    except (orjson.JSONDecodeError, AttributeError):
        return "unparsable"
    return kind if isinstance(kind, str) else "unparsable"


def _checked_deployment(registry: Mapping[str, Workflow[Any, Any]], config: AwsConfig | None,
                        session: boto3.Session | None,
                        deployment: AwsDeployment | None) -> AwsDeployment:
    """The workflow function's deployment, once its configuration is known to serve every
    registered workflow: every setting parses, every service a workflow can call
    (:attr:`Workflow.services`) has a target, and every child workflow is registered here or
    routed to another workflow function's queue (``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``).
    Otherwise one :class:`ConfigurationError` names all that is wrong."""

    def unrouted(routed: Mapping[str, str]) -> list[str]:
        return [
            f"workflow {wf.name!r} starts the child workflow {child.name!r}, which this "
            "function does not register and LAMBDA_WORKFLOW_WORKFLOW_QUEUES does not route "
            "(add it to workflow_handler(), or name the queue of the function that runs it)"
            for wf in registry.values() for child in wf.children
            if child.name not in registry and child.name not in routed]

    required = {svc.name for wf in registry.values() for svc in wf.services}
    if deployment is None and config is None:
        try:
            config = AwsConfig.from_env(require_services=required)
        except ConfigurationError as exc:
            # The routing table may itself be what failed to parse: then none is routed.
            raise_problems(exc.problems + unrouted(workflow_queues_of(os.environ)))
            raise
    checked = deployment.config if deployment is not None else config
    assert checked is not None
    problems = [missing_target(name, checked.services)
                for name in checked.missing_services(required)]
    raise_problems(problems + unrouted(checked.workflow_queues))
    return deployment or AwsDeployment(checked, session=session)


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
    given. It is checked then, and in Lambda at import (the cold start), before any message
    is received: every setting must parse, every service the workflows can call
    (:attr:`Workflow.services`) must have a target and every child workflow must be
    registered here; otherwise one :class:`ConfigurationError` names all that is wrong.

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
    tracing.enable_from_environment()
    logs.configure_from_environment()
    metrics_enabled()  # a bad LAMBDA_WORKFLOW_METRICS fails here, not every invocation

    def start() -> _WorkflowFunction:
        fn = state.get("fn")
        if fn is None:
            fn = state["fn"] = _WorkflowFunction(
                registry, _checked_deployment(registry, config, session, deployment))
        return fn

    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        return start()(event, context)

    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        # In Lambda, the module's import is the cold start: a configuration problem fails
        # the function's init, before it receives (and consumes) any message.
        start()

    handler.__doc__ = f"Workflow handler for: {', '.join(w.name for w in workflows)}"
    setattr(handler, _ROLE_ATTRIBUTE, HandlerRole("workflow", tuple(registry.values())))
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
        lease = _lease_seconds(context)
        if isinstance(event, Mapping) and "Records" in event:
            failures: list[str] = []
            for record in _records(event, f"service handler of {self.service.name!r}"):
                body: bytes | None = None
                try:
                    body = resolve_body(record["body"], record.get("messageAttributes"),
                                        self.deployment.payloads, self.deployment.codec)
                    self.handle(parse_call_request(body), lease=lease)
                except CallInProgressError as exc:
                    # Another delivery of this request is running it: this one backs off and
                    # comes back after the visibility timeout (the reply is recorded by then,
                    # and re-sent; or the claim has expired, and the call runs).
                    _log("request_in_progress", service=self.service.name,
                         message_id=record["messageId"], error=str(exc))
                    failures.append(record["messageId"])
                except Exception as exc:
                    # Nothing replied: the queue delivers the request again, and its redrive
                    # policy moves a request that keeps failing to the service's DLQ.
                    bodies = [record["body"]] + ([body] if body is not None else [])
                    _log("request_failed", service=self.service.name,
                         message_id=record["messageId"],
                         error=_redact(f"{type(exc).__name__}: {exc}", *bodies))
                    failures.append(record["messageId"])
            return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}
        # An asynchronous invocation: the event is the request (or an S3 pointer to it). A
        # CallInProgressError raised here makes Lambda retry the invocation later.
        if isinstance(event, str):  # an encoded request (docs/codecs.md)
            body = decode_body(event.encode(), self.deployment.codec)
        else:
            raw = orjson.dumps(event)
            body = resolve_body(raw.decode(), None, self.deployment.payloads,
                                self.deployment.codec) if (
                message_pointer(raw, None) is not None) else raw
        self.handle(parse_call_request(body), lease=lease)
        return None

    def _reply_key(self, request: CallRequestMessage) -> dict[str, Any]:
        return {"pk": {"S": f"svc#{self.service.name}#{request.workflow_id}"},
                "sk": {"S": f"call#{request.call_id}"}}

    def handle(self, request: CallRequestMessage, *, lease: float = _DEFAULT_LEASE) -> None:
        """Serve one request: claim the call, run the function, record and send the reply.

        With ``idempotent``, the call's record in the table is claimed first, for ``lease``
        seconds (a conditional write): a delivery that finds the reply recorded re-sends it
        without running the function; one that finds an unexpired claim raises
        :class:`CallInProgressError` without running it.
        """
        if request.service != self.service.name:
            raise InvalidMessageError(
                f"request for service {request.service!r} reached the handler of "
                f"{self.service.name!r}")
        body: bytes | None = None
        if self.idempotent:
            body = self._claim(request, lease)
            if body is not None:
                _log("reply_repeated", service=self.service.name,
                     workflow_id=request.workflow_id, call_id=request.call_id)
        if body is None:
            ok, payload = _observe.serve_traced(self.service.name, request, lambda: run_service(
                self.service, self.fn, request.request, self._run_async))
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
            owner=reply_owner(self.service.name, request.workflow_id),
            codec=self.deployment.codec)

    def _claim(self, request: CallRequestMessage, lease: float) -> bytes | None:
        """Claim the call until ``now + lease``: ``None`` when this delivery may run it, the
        recorded reply when one exists.

        Raises:
            CallInProgressError: another delivery holds an unexpired claim.
        """
        config = self.deployment.config
        ddb = self.deployment.clients.dynamodb
        now = self.deployment.clock.now()
        values: dict[str, Any] = {":now": {"N": repr(now)}, ":until": {"N": repr(now + lease)}}
        update = "SET claimed_until = :until, created_at = if_not_exists(created_at, :now)"
        if config.retention_days:
            # An abandoned claim (its call never answered) is deleted like any other record.
            update += ", expires_at = if_not_exists(expires_at, :expires)"
            values[":expires"] = {"N": str(int(now + config.retention_days * 86400))}
        try:
            ddb.update_item(
                TableName=config.table, Key=self._reply_key(request),
                UpdateExpression=update, ExpressionAttributeValues=values,
                ConditionExpression=("attribute_not_exists(reply) AND "
                                     "attribute_not_exists(reply_s3) AND "
                                     "(attribute_not_exists(claimed_until) OR "
                                     "claimed_until < :now)"))
        except ddb.exceptions.ConditionalCheckFailedException:
            got = ddb.get_item(TableName=config.table, Key=self._reply_key(request),
                               ConsistentRead=True).get("Item")
            if got is not None and ("reply" in got or "reply_s3" in got):
                return self._stored_reply(got)
            until = float(got["claimed_until"]["N"]) if got and "claimed_until" in got else now
            raise CallInProgressError(
                f"call {request.call_id} of workflow {request.workflow_id!r} is being run by "
                f"another delivery of its request (claimed for {max(0.0, until - now):.0f} s "
                "more); this delivery backs off") from None
        return None

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
            return self.deployment.codec.decode(
                payloads.get(item["reply_s3"]["S"], what="a recorded reply"))
        reply: bytes = item["reply"]["B"]
        return self.deployment.codec.decode(reply)

    def _record_reply(self, request: CallRequestMessage, body: bytes) -> bytes:
        """Record the reply for the call id (replacing the claim); if another run recorded
        one first, that one wins (and is the one sent)."""
        config = self.deployment.config
        item: dict[str, Any] = self._reply_key(request)
        payloads = self.deployment.payloads
        stored = self.deployment.codec.encode(body)  # the codec's, as every stored payload
        if len(stored) > config.payload_threshold and payloads is not None:
            item["reply_s3"] = {"S": payloads.put(
                reply_owner(self.service.name, request.workflow_id), stored)}
        else:
            item["reply"] = {"B": stored}
        now = self.deployment.clock.now()
        item["created_at"] = {"N": repr(now)}
        if config.retention_days:
            item["expires_at"] = {"N": str(int(now + config.retention_days * 86400))}
        ddb = self.deployment.clients.dynamodb
        try:
            ddb.put_item(TableName=config.table, Item=item,
                         ConditionExpression=("attribute_not_exists(reply) AND "
                                              "attribute_not_exists(reply_s3)"))
        except ddb.exceptions.ConditionalCheckFailedException:
            got = ddb.get_item(TableName=config.table, Key=self._reply_key(request),
                               ConsistentRead=True)["Item"]
            return self._stored_reply(got)
        return body


def _lease_seconds(context: Any) -> float:
    """How long a claim on a call lasts: the time this invocation may still run, plus a
    margin; Lambda's longest timeout when there is no Lambda context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return _DEFAULT_LEASE
    return max(0.0, float(remaining()) / 1000) + _LEASE_MARGIN


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

    With ``idempotent`` (the default) each call has a record in the table
    (``pk = svc#<service>#<workflow id>``, ``sk = call#<call id>``). Before ``fn`` runs, the
    delivery claims the call with a conditional write that holds until the invocation's
    remaining time plus 30 s (``claimed_until``); the reply is recorded there before it is
    sent. A delivery that finds the reply re-sends it without running ``fn``; one that finds
    an unexpired claim (the same request delivered twice at once) does not run ``fn`` and is
    retried later (an SQS record is reported in ``batchItemFailures``; an asynchronous
    invocation raises :class:`CallInProgressError`, which Lambda retries). ``fn`` runs more
    than once for a call only if an invocation dies (or times out) after ``fn`` started and
    before the reply was recorded, and a later delivery comes after the claim expired.
    """
    state: dict[str, _ServiceFunction] = {}
    tracing.enable_from_environment()

    def handler(event: Any, context: Any = None) -> Any:
        sf = state.get("fn")
        if sf is None:
            sf = state["fn"] = _ServiceFunction(
                service, fn, deployment or AwsDeployment(config, session=session), idempotent)
        return sf(event, context)

    if not isinstance(service, Service):
        raise TypeError(f"service_handler() takes a Service, got {service!r}")
    handler.__doc__ = f"Service handler for {service.name!r}"
    setattr(handler, _ROLE_ATTRIBUTE, HandlerRole("service", service=service))
    return handler


def timer_handler(*, config: AwsConfig | None = None, session: boto3.Session | None = None,
                  deployment: AwsDeployment | None = None
                  ) -> Callable[[Any, Any], dict[str, Any]]:
    """The handler of the timer function (event source: the timer queue, with
    ``ReportBatchItemFailures``): forwards due timers as ``timer_fired`` to the workflow queue
    each names (one of the deployment's: ``LAMBDA_WORKFLOW_QUEUE_URL`` or a queue of
    ``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``) and sends the others on for their next hop, unless
    their instance has ended (then the timer is dropped). A timer naming another queue is
    refused: it fails on every delivery and the timer queue's redrive policy moves it to the
    timer dead-letter queue."""
    state: dict[str, AwsDeployment] = {}

    def handler(event: Any, context: Any = None) -> dict[str, Any]:
        dep = state.get("d")
        if dep is None:
            dep = state["d"] = deployment or AwsDeployment(config, session=session)
        timers = dep.timers
        failures: list[dict[str, str]] = []
        for record in event.get("Records", []) if isinstance(event, Mapping) else []:
            try:
                timer = parse_timer(record["body"])
                fired = timers.handle(timer)
                _log("timer_fired" if fired else "timer_hop" if fired is False
                     else "timer_stopped", message_id=record["messageId"],
                     workflow_id=timer["workflow_id"], timer_id=timer["timer_id"])
            except Exception as exc:
                # Returned to the queue; the timer queue's redrive policy moves a message
                # that keeps failing (a malformed one, say) to its DLQ.
                _log("timer_failed", message_id=record["messageId"],
                     error=f"{type(exc).__name__}: {exc}")
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    setattr(handler, _ROLE_ATTRIBUTE, HandlerRole("timer"))
    return handler
