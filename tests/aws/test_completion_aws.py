"""Completion rules, condition checks and named operations on AWS (moto's server over
HTTP): batches over a service on SQS report AWS's completion reason and counts (parallel
8.10, 8.17), a named call is routed to its service's queue, the names come back from
DynamoDB's history, and a failing condition check is not retried (wait_for_condition 6.8)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lambda_workflow import (
    Completion,
    Service,
    ServiceError,
    StepError,
    WorkflowContext,
    workflow,
)
from lambda_workflow._opnames import display
from lambda_workflow.aws import (
    AwsDeployment,
    WorkflowClient,
    service_handler,
    timer_handler,
    workflow_handler,
)

from .conftest import Aws
from .harness import EventSourceMapping, drain
from .test_timers import ShiftedClock, clock  # noqa: F401  (the fixture)

CALLED: list[int] = []
check = Service("check", int, int)


async def _check(n: int) -> int:
    CALLED.append(n)
    if n < 0:
        raise ServiceError("Negative", f"{n} is negative")
    return n


def _summary(result: Any) -> dict[str, Any]:
    return {"reason": result.completion_reason.name, "status": result.status.name,
            "successes": result.success_count, "failures": result.failure_count,
            "total": result.total_count}


@workflow
async def batches(ctx: WorkflowContext[None]) -> dict[str, Any]:
    exceeded = await ctx.map([-1, -2, 3], lambda n: ctx.call(check, n), max_concurrency=1,
                             completion=Completion(tolerated_failure_count=1))
    never_reached = await ctx.map([10, -20, 30], lambda n: ctx.call(check, n),
                                  max_concurrency=1, completion=Completion(min_successful=3))
    await ctx.sleep(600, name="cool-off")
    named = await ctx.call(check, 7, name="final-check")
    return {"exceeded": _summary(exceeded), "never_reached": _summary(never_reached),
            "named": named}


def test_completion_and_names_on_aws(aws: Aws, clock: ShiftedClock) -> None:  # noqa: F811
    """parallel 8.10: the second failure exceeds a tolerance of one and the third item never
    starts; parallel 8.17: a minimum never reached runs every item and reports all
    completed. The named timer and call keep their names in DynamoDB, and the named call's
    request reached the service through its queue."""
    config = replace(aws.config(services={"check": f"sqs:{aws.create_queue(aws.name('c'))}"}),
                     timer_queue_url=aws.create_queue(aws.name("timers")))
    deployment = AwsDeployment(config, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url,
                           workflow_handler(batches, deployment=deployment)),
        EventSourceMapping(sqs, config.services["check"].address,
                           service_handler(check, _check, deployment=deployment)),
        EventSourceMapping(sqs, config.timer_queue_url or "",
                           timer_handler(deployment=deployment)),
    ]
    client = WorkflowClient(config, session=aws.session, clock=clock)
    CALLED.clear()
    handle = client.start(batches, None, workflow_id="completion-aws")
    drain(pollers)
    for _ in range(4):
        if handle.status().value != "running":
            break
        clock.offset += 300
        drain(pollers)
    assert handle.result() == {
        "exceeded": {"reason": "FAILURE_TOLERANCE_EXCEEDED", "status": "FAILED",
                     "successes": 0, "failures": 2, "total": 2},
        "never_reached": {"reason": "ALL_COMPLETED", "status": "FAILED", "successes": 2,
                          "failures": 1, "total": 3},
        "named": 7}
    assert CALLED == [-1, -2, 10, -20, 30, 7]  # item 3 of the first batch never started
    shown = [(op.kind, display(op.kind, op.name)) for op in handle.history().operations]
    assert ("timer", "cool-off") in shown
    assert ("call", "final-check (service check)") in shown


CHECKS: list[int] = []


def _failing_check(state: int) -> int:
    CHECKS.append(state)
    raise ConnectionError("status service down")


@workflow
async def condition(ctx: WorkflowContext[None]) -> str:
    try:
        await ctx.wait_for_condition(_failing_check, 0, lambda s, a: None, name="status")
    except StepError as exc:
        await ctx.sleep(60, name="after")  # the replay after it must not check again
        return f"recovered from {exc.error_type}"
    return "no error"


def test_a_failing_condition_check_is_not_retried_on_aws(aws: Aws,
                                                         clock: ShiftedClock) -> None:  # noqa: F811
    """wait_for_condition 6.8 on DynamoDB: the check raised once, was not retried, and the
    replay after the sleep returned the recorded failure without checking again."""
    config = replace(aws.config(), timer_queue_url=aws.create_queue(aws.name("timers")))
    deployment = AwsDeployment(config, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url,
                           workflow_handler(condition, deployment=deployment)),
        EventSourceMapping(sqs, config.timer_queue_url or "",
                           timer_handler(deployment=deployment)),
    ]
    client = WorkflowClient(config, session=aws.session, clock=clock)
    CHECKS.clear()
    handle = client.start(condition, None, workflow_id="condition-aws")
    drain(pollers)
    for _ in range(4):
        if handle.status().value != "running":
            break
        clock.offset += 60
        drain(pollers)
    assert handle.result() == "recovered from ConnectionError"
    assert CHECKS == [0]
    assert [(op.kind, op.name) for op in handle.history().operations] == [
        ("step", "status"), ("timer", "after")]
