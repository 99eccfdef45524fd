"""Durable timers on AWS: ctx.sleep hops through a standard SQS delay queue (15 minutes at
most per hop) and fires on the workflow FIFO queue, on moto's server with its clock moved."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from lambda_workflow import InstanceStatus, Workflow, WorkflowContext, workflow
from lambda_workflow.aws import AwsDeployment, WorkflowClient, timer_handler, workflow_handler
from lambda_workflow.aws.config import ConfigurationError

from .conftest import Aws
from .harness import EventSourceMapping, drain


class ShiftedClock:
    """Wall-clock time plus an offset that the test moves, shared with the moto server."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[ShiftedClock]:
    import moto.sqs.models as sqs_models

    shifted = ShiftedClock()
    real = sqs_models.unix_time_millis  # type: ignore[attr-defined]

    def millis(*args: object) -> float:
        return float(real(*args)) + shifted.offset * 1000  # type: ignore[arg-type]

    monkeypatch.setattr(sqs_models, "unix_time_millis", millis)
    yield shifted


@workflow
async def overnight(ctx: WorkflowContext[float]) -> str:
    """Sleeps ctx.request seconds and reports when it woke up."""
    start = ctx.now()
    await ctx.sleep(ctx.request)
    return f"{(ctx.now() - start).total_seconds():.0f}"


SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/scheduler"


def _deploy(aws: Aws, clock: ShiftedClock, wf: Workflow[Any, Any] = overnight, *,
            scheduler_role: str | None = None
            ) -> tuple[AwsDeployment, EventSourceMapping, EventSourceMapping]:
    config = replace(aws.config(), timer_queue_url=aws.create_queue(aws.name("timers")),
                     scheduler_role_arn=scheduler_role)
    deployment = AwsDeployment(config, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    workflows = EventSourceMapping(sqs, config.queue_url,
                                   workflow_handler(wf, deployment=deployment))
    timers = EventSourceMapping(sqs, config.timer_queue_url or "",
                                timer_handler(deployment=deployment))
    return deployment, workflows, timers


def test_a_two_hour_sleep_hops_eight_times_and_fires_once(aws: Aws, clock: ShiftedClock) -> None:
    """A 2-hour sleep: the timer message hops through the delay queue 15 minutes at a time
    (8 sends), is invisible until each delay ends, then fires timer_fired on the FIFO queue;
    the workflow wakes 7200 s (by its recorded clock) after it went to sleep."""
    deployment, workflows, timers = _deploy(aws, clock)
    client = WorkflowClient(deployment.config, session=aws.session, clock=clock)
    handle = client.start(overnight, 7200.0, workflow_id="night-1")
    drain([workflows, timers])
    assert handle.status() is InstanceStatus.RUNNING
    hops = 0
    for _ in range(20):
        clock.offset += 900
        before = aws.requests["sqs.SendMessage"]
        drain([workflows, timers])
        hops += aws.requests["sqs.SendMessage"] - before
        if handle.status() is not InstanceStatus.RUNNING:
            break
    # woke at the deadline by the workflow's clock (plus the test's own real seconds)
    assert 7200 <= int(handle.result()) < 7200 + 10
    assert clock.offset == 7200  # it fired when the deadline came, not a hop later
    # 7 more hops after the first send, then the timer_fired message itself
    assert hops == 8
    (timer,) = handle.history().operations
    assert (timer.kind, orjson.loads(timer.request)) == ("timer", {"seconds": 7200.0})


def test_a_redelivered_hop_fires_once(aws: Aws, clock: ShiftedClock) -> None:
    """The same due timer handled twice sends timer_fired twice with one deduplication id:
    the workflow wakes once and nothing is dead-lettered."""
    deployment, workflows, timers = _deploy(aws, clock)
    client = WorkflowClient(deployment.config, session=aws.session, clock=clock)
    handle = client.start(overnight, 60.0, workflow_id="night-2")
    drain([workflows])
    clock.offset += 61
    timer = {"v": 1, "kind": "timer", "workflow_id": "night-2", "timer_id": "1",
             "fire_at": clock.now() - 1}
    assert deployment.timers.handle(timer) is True
    assert deployment.timers.handle(timer) is True
    drain([workflows, timers])
    assert 61 <= int(handle.result()) < 61 + 10


def test_a_sleep_without_a_timer_queue_fails_clearly(aws: Aws, clock: ShiftedClock) -> None:
    """Without LAMBDA_WORKFLOW_TIMER_QUEUE_URL the activation that creates a timer fails with
    a ConfigurationError naming the variable (and the message goes back to the queue)."""
    deployment = AwsDeployment(aws.config(), session=aws.session, clock=clock)
    with pytest.raises(ConfigurationError, match="LAMBDA_WORKFLOW_TIMER_QUEUE_URL"):
        deployment.timers.schedule("wf", "1", clock.now() + 60)


def test_a_fifo_timer_queue_is_refused(aws: Aws) -> None:
    """A FIFO queue cannot delay single messages: configuring one as the timer queue is an
    error naming the variable."""
    with pytest.raises(ConfigurationError, match="standard SQS queue"):
        replace(aws.config(), timer_queue_url="https://sqs/x/timers.fifo")


def test_a_long_sleep_is_one_eventbridge_schedule(aws: Aws, clock: ShiftedClock) -> None:
    """With a scheduler role configured, a 2-day sleep is one one-time EventBridge Scheduler
    schedule (at the deadline, deleted after it runs) targeting the timer queue with the
    timer message, and no SQS hop. When the schedule delivers that message (the test plays
    EventBridge), the timer fires and the workflow wakes; scheduling again is harmless."""
    deployment, workflows, timers = _deploy(aws, clock, scheduler_role=SCHEDULER_ROLE)
    config = deployment.config
    client = WorkflowClient(config, session=aws.session, clock=clock)
    handle = client.start(overnight, 2 * 86_400.0, workflow_id="night-3")
    drain([workflows, timers])
    assert aws.client("sqs").get_queue_attributes(
        QueueUrl=config.timer_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "0"
    scheduler = aws.client("scheduler")
    (summary,) = scheduler.list_schedules()["Schedules"]
    schedule = scheduler.get_schedule(Name=summary["Name"])
    (timer,) = handle.history().operations
    fire_at = timer.created_at + 2 * 86_400
    assert schedule["ScheduleExpression"] == (
        f"at({datetime.fromtimestamp(math.ceil(fire_at), UTC):%Y-%m-%dT%H:%M:%S})")
    assert schedule["ActionAfterCompletion"] == "DELETE"
    target = schedule["Target"]
    assert target["RoleArn"] == config.scheduler_role_arn
    assert target["Arn"].endswith(":" + (config.timer_queue_url or "").rsplit("/", 1)[1])
    message = orjson.loads(target["Input"])
    assert (message["workflow_id"], message["timer_id"]) == ("night-3", "1")
    deployment.timers.schedule("night-3", "1", fire_at)  # a repeated schedule: no error
    assert len(scheduler.list_schedules()["Schedules"]) == 1
    clock.offset += 2 * 86_400
    aws.client("sqs").send_message(QueueUrl=config.timer_queue_url,
                                   MessageBody=target["Input"])  # EventBridge delivers
    drain([workflows, timers])
    assert 2 * 86_400 <= int(handle.result()) < 2 * 86_400 + 10


def test_a_short_sleep_still_hops_with_a_scheduler_configured(aws: Aws,
                                                              clock: ShiftedClock) -> None:
    """A timer within one SQS delay (15 minutes) stays a delayed message: no schedule."""
    deployment, workflows, _ = _deploy(aws, clock, scheduler_role=SCHEDULER_ROLE)
    client = WorkflowClient(deployment.config, session=aws.session, clock=clock)
    client.start(overnight, 600.0, workflow_id="nap")
    drain([workflows])
    assert aws.client("scheduler").list_schedules()["Schedules"] == []
    assert aws.requests["sqs.SendMessage"] >= 2  # the start and the delayed timer message


@workflow
async def race(ctx: WorkflowContext[None]) -> str:
    """A one-minute timer races a two-day one; the short one wins."""
    import asyncio

    short = asyncio.ensure_future(ctx.sleep(60))
    long = asyncio.ensure_future(ctx.sleep(2 * 86_400))
    done, _ = await asyncio.wait({short, long}, return_when=asyncio.FIRST_COMPLETED)
    return "short" if short in done else "long"


def test_a_schedule_left_pending_is_deleted_when_the_workflow_ends(
        aws: Aws, clock: ShiftedClock) -> None:
    """The two-day timer became a schedule; when the workflow ends on the one-minute timer,
    the schedule is deleted (no invocation is left to pay for)."""
    deployment, workflows, timers = _deploy(aws, clock, race, scheduler_role=SCHEDULER_ROLE)
    handle = WorkflowClient(deployment.config, session=aws.session, clock=clock).start(
        race, None, workflow_id="race-1")
    drain([workflows, timers])
    scheduler = aws.client("scheduler")
    assert len(scheduler.list_schedules()["Schedules"]) == 1
    clock.offset += 61
    drain([workflows, timers])
    assert handle.result() == "short"
    assert scheduler.list_schedules()["Schedules"] == []


def test_hops_stop_when_the_instance_has_ended(aws: Aws, clock: ShiftedClock) -> None:
    """A two-hour sleep's instance is cancelled after its first hop left: when that hop
    arrives, the timer function reads the instance's status and sends nothing more (no next
    hop, no timer_fired); a hop for an instance that does not exist stops the same way."""
    deployment, workflows, timers = _deploy(aws, clock)
    client = WorkflowClient(deployment.config, session=aws.session, clock=clock)
    handle = client.start(overnight, 7200.0, workflow_id="night-3")
    drain([workflows, timers])
    assert handle.cancel("no longer needed") is True
    drain([workflows])
    assert handle.status() is InstanceStatus.CANCELLED
    clock.offset += 900
    before = aws.requests["sqs.SendMessage"]
    assert timers.poll_once() == 1  # the hop arrives ...
    assert aws.requests["sqs.SendMessage"] == before  # ... and goes no further
    drain([workflows, timers])
    assert aws.requests["sqs.SendMessage"] == before
    orphan = {"v": 1, "kind": "timer", "workflow_id": "never-started", "timer_id": "1",
              "fire_at": clock.now() + 3600}
    assert deployment.timers.handle(orphan) is None
    assert aws.requests["sqs.SendMessage"] == before
