"""Durable timers on AWS: delayed messages hopping through a standard SQS queue.

SQS delays a message by 15 minutes at most (``DelaySeconds`` up to 900, on standard queues
only). A timer is one message on the timer queue carrying its deadline; the timer function
receives it when its delay ends, and either forwards ``timer_fired`` to the workflow FIFO queue
(the deadline has come) or sends it on again with the next delay (up to 15 more minutes). A
sleep of a day is 96 hops; docs/aws.md prices it.

The deadline is in the message, so a hop that arrives late or twice does no harm: the
``timer_fired`` message carries the timer's deduplication id, and the engine ignores a timer
that already fired.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
        self.hop({"v": 1, "kind": "timer", "workflow_id": workflow_id, "timer_id": timer_id,
                  "fire_at": fire_at})

    def hop(self, timer: Mapping[str, Any]) -> int:
        """Send the timer message with the delay to its deadline, 900 s at most. Returns the
        delay used."""
        delay = max(0, min(MAX_DELAY_SECONDS,
                           math.ceil(float(timer["fire_at"]) - self.clock.now())))
        self.clients.sqs.send_message(QueueUrl=self.queue_url,
                                      MessageBody=orjson.dumps(timer).decode(),
                                      DelaySeconds=delay)
        return delay

    def handle(self, timer: Mapping[str, Any]) -> bool:
        """One received timer message: fire it if due (returns ``True``), else hop again."""
        workflow_id, timer_id = timer["workflow_id"], timer["timer_id"]
        if float(timer["fire_at"]) - self.clock.now() > _EARLY_TOLERANCE:
            self.hop(timer)
            return False
        self.clients.sqs.send_message(
            QueueUrl=self.config.queue_url,
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
            or not isinstance(timer.get("fire_at"), int | float)):
        raise InvalidMessageError(f"malformed timer message: {body[:200]!r}")
    return timer
