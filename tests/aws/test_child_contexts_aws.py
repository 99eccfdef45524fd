"""Child contexts and nested batches on AWS (moto's server over HTTP): the operations of a
child context and of map items are stored in DynamoDB with their ids within the context and
come back in the order the replay needs (root operations first); a finished context's body
and a finished item's function never run again."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow._runtime.contexts import SCOPED_SEQ_BASE
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler

from .conftest import Aws
from .harness import EventSourceMapping, drain

RUNS: Counter[str] = Counter()
triple = Service("triple", int, int)


async def _triple(n: int) -> int:
    return 3 * n


async def pair(ctx: WorkflowContext[Any], n: int) -> list[int]:
    RUNS["pair"] += 1
    a = await ctx.call(triple, n)
    b = await ctx.call(triple, a)
    return [a, b]


@workflow
async def contexts(ctx: WorkflowContext[list[int]]) -> dict[str, Any]:
    first = await ctx.run_in_child_context(pair, 1, name="pair")

    async def item(n: int) -> int:
        RUNS[f"item{n}"] += 1
        return await ctx.call(triple, n)

    mapped = await ctx.map(ctx.request, item, item_name=lambda n, i: f"n={n}")
    last = await ctx.call(triple, sum(mapped.values()))
    return {"first": first, "mapped": mapped.values(), "last": last}


def test_child_contexts_and_recorded_items_on_aws(aws: Aws) -> None:
    config = aws.config(services={"triple": f"sqs:{aws.create_queue(aws.name('t'))}"})
    deployment = AwsDeployment(config, session=aws.session)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url,
                           workflow_handler(contexts, deployment=deployment)),
        EventSourceMapping(sqs, config.services["triple"].address,
                           service_handler(triple, _triple, deployment=deployment)),
    ]
    client = WorkflowClient(config, session=aws.session)
    RUNS.clear()
    handle = client.start(contexts, [2, 4], workflow_id="contexts-aws")
    drain(pollers)
    assert handle.result() == {"first": [3, 9], "mapped": [6, 12], "last": 54}
    ops = handle.history().operations
    assert [(op.op_id, op.kind, op.name) for op in ops] == [
        ("1", "context", "pair"), ("2", "context", "n=2"), ("3", "context", "n=4"),
        ("4", "call", "triple"),
        ("1.1", "call", "triple"), ("1.2", "call", "triple"),
        ("2.1", "call", "triple"), ("3.1", "call", "triple")]
    assert [op.seq for op in ops] == [0, 1, 2, 3, *range(SCOPED_SEQ_BASE, SCOPED_SEQ_BASE + 4)]
    assert ops[0].result == b'{"v":[3,9]}'
    # the body ran in the activations of its two replies after the start, then never again;
    # each item ran when it started and when its reply came
    assert Counter({"pair": 3, "item2": 2, "item4": 2}) == RUNS
