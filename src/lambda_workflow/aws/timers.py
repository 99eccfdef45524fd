"""Durable timers on AWS: delayed messages hopping through a standard SQS queue, or one
EventBridge Scheduler schedule per long timer.

SQS delays a message by 15 minutes at most (``DelaySeconds`` up to 900, on standard queues
only). A timer is one message on the timer queue carrying its deadline; the timer function
receives it when its delay ends, and either forwards ``timer_fired`` to the workflow FIFO queue
(the deadline has come) or sends it on again with the next delay (up to 15 more minutes). A
sleep of a day is 96 hops; docs/aws.md prices it.

With ``LAMBDA_WORKFLOW_SCHEDULER_ROLE_ARN`` set, a timer longer than one delay is instead one
one-time EventBridge Scheduler schedule (``at(...)``, deleted after it runs) whose target is the
timer queue with the same timer message: one scheduler invocation however long the sleep.

The timer message also carries the workflow queue its ``timer_fired`` goes to (``queue``: the
queue of the workflow function that scheduled it, in a deployment with several). The timer
function forwards only to the deployment's workflow queues (its own
``LAMBDA_WORKFLOW_QUEUE_URL`` and those of ``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``): a message
naming any other queue is refused, and the timer queue's redrive policy moves it to its
dead-letter queue. A message without ``queue`` (sent before it existed) goes to
``LAMBDA_WORKFLOW_QUEUE_URL``.

The deadline is in the message, so a hop that arrives late or twice does no harm: the
``timer_fired`` message carries the timer's deduplication id, and the engine ignores a timer
that already fired. Before sending a hop on, the timer function reads its instance's status:
the chain stops once the instance has ended (a cancelled or finished instance's timers cost
nothing more).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson

from .. import _core
from .._runtime.engine import timer_fired_body
from ..backends.protocols import Clock
from ..errors import InvalidMessageError
from .config import AwsConfig, ConfigurationError

if TYPE_CHECKING:
    from ._clients import AwsClients

__all__ = ["MAX_DELAY_SECONDS", "SqsDelayTimers", "parse_timer"]

MAX_DELAY_SECONDS = 900
# The instance item's key in the table (docs/aws-dynamodb.md): pk = wf#<id>, sk = #instance.
_WORKFLOW_PK_PREFIX = "wf#"
_INSTANCE_SK = "#instance"
# A hop that arrives this early (clock skew, rounding) still fires: SQS delays are whole
# seconds and "at least" the delay.
_EARLY_TOLERANCE = 1.0


class SqsDelayTimers:
    """A :class:`~lambda_workflow.backends.TimerService` on a standard SQS queue."""

    def __init__(self, config: AwsConfig, clients: AwsClients, clock: Clock) -> None:
        self.config = config
        self.clients = clients
        self.clock = clock

    @property
    def queue_url(self) -> str:
        if self.config.timer_queue_url is None:
            raise ConfigurationError(
                "a workflow started a durable timer (ctx.sleep) but no timer queue is "
                "configured (LAMBDA_WORKFLOW_TIMER_QUEUE_URL, a standard SQS queue)")
        return self.config.timer_queue_url

    def schedule(self, workflow_id: str, timer_id: str, fire_at: float) -> None:
        timer = {"v": 1, "kind": "timer", "workflow_id": workflow_id, "timer_id": timer_id,
                 "fire_at": fire_at, "queue": self.config.queue_url}
        if (self.config.scheduler_role_arn is not None
                and fire_at - self.clock.now() > MAX_DELAY_SECONDS):
            self.schedule_once(timer)
        else:
            self.hop(timer)

    def withdraw(self, workflow_id: str, timer_id: str) -> None:
        """Delete a long timer's schedule (a delayed SQS message cannot be withdrawn; it
        fires and changes nothing)."""
        if self.config.scheduler_role_arn is None:
            return
        scheduler = self.clients.scheduler
        with contextlib.suppress(scheduler.exceptions.ResourceNotFoundException):
            scheduler.delete_schedule(
                Name=self.schedule_name({"workflow_id": workflow_id, "timer_id": timer_id}),
                GroupName=self.config.scheduler_group)

    @cached_property
    def queue_arn(self) -> str:
        """The timer queue's ARN (read once; a schedule's target needs it)."""
        return str(self.clients.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])

    @staticmethod
    def schedule_name(timer: Mapping[str, Any]) -> str:
        """One schedule per timer: a name derived from the instance and the timer id, so
        scheduling the same timer again finds the existing schedule."""
        digest = hashlib.sha256(f"{timer['workflow_id']}\0{timer['timer_id']}".encode())
        return f"lambda-workflow-{digest.hexdigest()[:40]}"

    def schedule_once(self, timer: Mapping[str, Any]) -> str:
        """Create the one-time schedule of a long timer; returns its name."""
        at = datetime.fromtimestamp(math.ceil(float(timer["fire_at"])), UTC)
        name = self.schedule_name(timer)
        scheduler = self.clients.scheduler
        # ConflictException: an earlier attempt of this activation made it (the same timer).
        with contextlib.suppress(scheduler.exceptions.ConflictException):
            scheduler.create_schedule(
                Name=name, GroupName=self.config.scheduler_group,
                ScheduleExpression=f"at({at:%Y-%m-%dT%H:%M:%S})",
                ScheduleExpressionTimezone="UTC", FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                Description=f"lambda-workflow timer {timer['timer_id']} of "
                            f"{timer['workflow_id']}"[:512],
                Target={"Arn": self.queue_arn, "RoleArn": self.config.scheduler_role_arn,
                        "Input": orjson.dumps(timer).decode()})
        return name

    def hop(self, timer: Mapping[str, Any]) -> int:
        """Send the timer message with the delay to its deadline, 900 s at most. Returns the
        delay used."""
        delay = max(0, min(MAX_DELAY_SECONDS,
                           math.ceil(float(timer["fire_at"]) - self.clock.now())))
        self.clients.sqs.send_message(QueueUrl=self.queue_url,
                                      MessageBody=orjson.dumps(timer).decode(),
                                      DelaySeconds=delay)
        return delay

    def running(self, workflow_id: str) -> bool:
        """Whether the instance exists and has not ended: one eventually consistent read of
        the instance item's ``status`` alone (an ended status never changes back)."""
        got = self.clients.dynamodb.get_item(
            TableName=self.config.table,
            Key={"pk": {"S": f"{_WORKFLOW_PK_PREFIX}{workflow_id}"},
                 "sk": {"S": _INSTANCE_SK}},
            ProjectionExpression="#status", ExpressionAttributeNames={"#status": "status"})
        item = got.get("Item")
        return item is not None and item.get("status", {}).get("S") == "running"

    def destination(self, timer: Mapping[str, Any]) -> str:
        """The workflow queue a timer message fires into: its ``queue``, which must be one
        of the deployment's workflow queues, or ``LAMBDA_WORKFLOW_QUEUE_URL`` for a message
        without one.

        Raises:
            InvalidMessageError: the message names a queue outside the deployment (a forged
                or misdirected timer).
        """
        queue = timer.get("queue")
        if queue is None:
            return self.config.queue_url
        if queue not in self.config.deployment_queues:
            raise InvalidMessageError(
                f"timer {timer['timer_id']!r} of workflow {timer['workflow_id']!r} names the "
                f"destination {str(queue)[:200]!r}, which is not a workflow queue of this "
                "deployment (LAMBDA_WORKFLOW_QUEUE_URL or LAMBDA_WORKFLOW_WORKFLOW_QUEUES); "
                "it is not forwarded")
        return str(queue)

    def handle(self, timer: Mapping[str, Any]) -> bool | None:
        """One received timer message: fire it if due (returns ``True``), else hop again
        (``False``), unless its instance has ended or does not exist: then the hop chain
        stops there (``None``).

        Raises:
            InvalidMessageError: its destination is not a workflow queue of the deployment
                (see :meth:`destination`); it is neither fired nor sent on.
        """
        workflow_id, timer_id = timer["workflow_id"], timer["timer_id"]
        queue = self.destination(timer)
        if float(timer["fire_at"]) - self.clock.now() > _EARLY_TOLERANCE:
            if not self.running(workflow_id):
                return None
            self.hop(timer)
            return False
        self.clients.sqs.send_message(
            QueueUrl=queue,
            MessageBody=timer_fired_body(workflow_id, timer_id).decode(),
            MessageGroupId=workflow_id,
            MessageDeduplicationId=_core.dedup_id(workflow_id, "timer_fired", timer_id))
        return True


def parse_timer(body: str) -> dict[str, Any]:
    try:
        timer = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"timer message is not valid JSON ({exc})") from None
    if (not isinstance(timer, dict) or timer.get("kind") != "timer"
            or not isinstance(timer.get("workflow_id"), str)
            or not isinstance(timer.get("timer_id"), str)
            or not isinstance(timer.get("fire_at"), int | float)
            or not isinstance(timer.get("queue", ""), str)):
        raise InvalidMessageError(f"malformed timer message: {body[:200]!r}")
    return timer
