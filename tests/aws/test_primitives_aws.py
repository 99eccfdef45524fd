"""The durable operations beyond calls, on AWS (moto): a workflow with a step, a child
workflow, a map over a service, a callback and a sleep runs through the workflow and timer
functions and the client, and replays from DynamoDB between activations."""

from __future__ import annotations

from dataclasses import replace

from lambda_workflow import Completion, Service, WorkflowContext, workflow
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

TOKENS: dict[str, str] = {}
STEP_RUNS: list[int] = []
triple = Service("triple", int, int)


def plan(n: int) -> list[int]:
    STEP_RUNS.append(n)
    return list(range(1, n + 1))


async def _triple(n: int) -> int:
    return 3 * n


@workflow
async def tripled(ctx: WorkflowContext[int]) -> int:
    return await ctx.call(triple, ctx.request)


@workflow
async def everything(ctx: WorkflowContext[int]) -> dict[str, object]:
    items = await ctx.step(plan, ctx.request)
    batch = await ctx.map(items, lambda n: ctx.call(triple, n), max_concurrency=2,
                          completion=Completion(all_completed=True))
    child = await ctx.child(tripled, 100)
    cb = ctx.create_callback("sign-off", str, timeout=3600)
    TOKENS[ctx.workflow_id] = cb.token
    signed = await cb
    await ctx.sleep(1800)
    return {"values": batch.values(), "child": child, "signed": signed}


def test_every_primitive_on_aws(aws: Aws, clock: ShiftedClock) -> None:  # noqa: F811
    """The workflow runs across many activations on DynamoDB and SQS: the step body ran
    once, the map and the child returned through the FIFO queue, the callback was completed
    by the client, and the 30-minute sleep hopped through the timer queue."""
    config = replace(aws.config(services={"triple": f"sqs:{aws.create_queue(aws.name('t'))}"}),
                     timer_queue_url=aws.create_queue(aws.name("timers")),
                     callback_key="sixteen+ bytes of secret")
    deployment = AwsDeployment(config, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url,
                           workflow_handler(everything, tripled, deployment=deployment)),
        EventSourceMapping(sqs, config.services["triple"].address,
                           service_handler(triple, _triple, deployment=deployment)),
        EventSourceMapping(sqs, config.timer_queue_url or "",
                           timer_handler(deployment=deployment)),
    ]
    client = WorkflowClient(config, session=aws.session, clock=clock)
    STEP_RUNS.clear()
    handle = client.start(everything, 4, workflow_id="all-aws")
    drain(pollers)
    client.complete_callback(TOKENS["all-aws"], "ok by ana")
    drain(pollers)
    for _ in range(4):
        if handle.status().value != "running":
            break
        clock.offset += 900
        drain(pollers)
    assert handle.result() == {"values": [3, 6, 9, 12], "child": 300, "signed": "ok by ana"}
    assert STEP_RUNS == [4]
    assert client.result("all-aws~6", tripled) == 300
    kinds = [op.kind for op in handle.history().operations]
    # each map item is a child context (docs/primitives.md): its call is stored after the
    # root's operations, with an id within it
    assert kinds == ["step", "context", "context", "context", "context", "child", "callback",
                     "timer", "timer", "call", "call", "call", "call"]
