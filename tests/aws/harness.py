"""Playing Lambda's part against moto: event source mappings and asynchronous invocations.

:class:`EventSourceMapping` does what Lambda's SQS poller does for a function with
``ReportBatchItemFailures``: receive up to ``batch_size`` messages, build the SQS event Lambda
would pass (the documented record shape, with system attributes and message attributes),
call the handler, then delete every message that is not in ``batchItemFailures`` and make
the failed ones visible again (for a FIFO queue SQS then redelivers them, in order, before the
rest of their group). A handler that raises fails the whole batch, as on Lambda.
:class:`AsyncInvoker` hands the events of asynchronous ``Invoke`` requests (recorded by the
moto server) to the function's handler, retrying twice on an exception, as Lambda does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .conftest import REGION, LambdaInvocations

Handler = Callable[[Any, Any], Any]


def _record(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    attrs = dict(message.get("Attributes", {}))
    user_attrs = {
        name: {"stringValue": a.get("StringValue"), "binaryValue": a.get("BinaryValue"),
               "stringListValues": [], "binaryListValues": [], "dataType": a["DataType"]}
        for name, a in message.get("MessageAttributes", {}).items()}
    return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"], "attributes": attrs, "messageAttributes": user_attrs,
            "md5OfBody": message.get("MD5OfBody", ""), "eventSource": "aws:sqs",
            "eventSourceARN": queue_arn, "awsRegion": REGION}


class FakeContext:
    """The parts of Lambda's context object the handlers use."""

    def __init__(self, remaining_ms: int = 60_000) -> None:
        self.remaining_ms = remaining_ms
        self.aws_request_id = "test"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class EventSourceMapping:
    """One SQS queue feeding one handler."""

    sqs: Any
    queue_url: str
    handler: Handler
    batch_size: int = 10
    invocations: int = 0
    received: int = 0
    failures_reported: int = 0
    context: FakeContext = field(default_factory=FakeContext)

    def __post_init__(self) -> None:
        self.queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def poll_once(self) -> int:
        """One receive and invocation. Returns the number of messages received."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size,
            MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
            WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return 0
        event = {"Records": [_record(m, self.queue_arn) for m in messages]}
        self.invocations += 1
        self.received += len(messages)
        try:
            response = self.handler(event, self.context)
            failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
        except Exception:
            failed = {m["MessageId"] for m in messages}
        self.failures_reported += len(failed)
        # Lambda deletes and releases in batches, one request per batch.
        done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages) if m["MessageId"] not in failed]
        back = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages) if m["MessageId"] in failed]
        if done:
            self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
        if back:
            self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=back)
        return len(messages)


@dataclass
class AsyncInvoker:
    """Delivers recorded asynchronous invocations to handlers by function name."""

    recorded: LambdaInvocations
    functions: dict[str, Handler]
    retries: int = 2
    delivered: int = 0
    _pending: list[tuple[str, bytes, int]] = field(default_factory=list)

    def poll_once(self) -> int:
        self._pending += [(name, payload, 0) for name, payload in self.recorded.take()]
        batch, self._pending = self._pending, []
        for name, payload, attempt in batch:
            handler = self.functions.get(name)
            if handler is None:
                continue
            try:
                handler(orjson.loads(payload), FakeContext())
                self.delivered += 1
            except Exception:
                if attempt < self.retries:
                    self._pending.append((name, payload, attempt + 1))
        return len(batch)


def drain(pollers: Iterable[EventSourceMapping | AsyncInvoker], *, timeout: float = 120.0,
          idle_rounds: int = 2, threads: int = 1) -> None:
    """Poll until every poller finds nothing ``idle_rounds`` times in a row.

    With ``threads`` > 1 each poller runs on that many threads at once (Lambda scales its
    pollers and function instances the same way).
    """
    pollers = list(pollers)
    deadline = time.monotonic() + timeout
    if threads == 1:
        idle = 0
        while idle < idle_rounds:
            if time.monotonic() > deadline:
                raise TimeoutError("the queues did not drain in time")
            got = sum(p.poll_once() for p in pollers)
            idle = idle + 1 if got == 0 else 0
        return
    lock = threading.Lock()
    busy = [0]
    idle_seen = [0]
    errors: list[BaseException] = []

    def work(poller: EventSourceMapping | AsyncInvoker) -> None:
        try:
            while time.monotonic() < deadline and idle_seen[0] < idle_rounds * 4:
                got = poller.poll_once()
                with lock:
                    if got:
                        busy[0] += 1
                        idle_seen[0] = 0
                    else:
                        idle_seen[0] += 1
                if not got:
                    time.sleep(0.01)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(p,)) for p in pollers
               for _ in range(threads if isinstance(p, EventSourceMapping) else 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    drain(pollers, timeout=max(1.0, deadline - time.monotonic()), idle_rounds=idle_rounds)
