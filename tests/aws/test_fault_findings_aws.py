"""Issue 10's findings 1, 3 and 12 on AWS (moto's server): a crash right after a child's
instance is written, ids SQS FIFO refuses, and a child id a user took."""

from __future__ import annotations

from typing import Any

import pytest

from lambda_workflow import (
    ChildWorkflowError,
    InvalidWorkflowIdError,
    Service,
    WorkflowContext,
    workflow,
)
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler

from .conftest import Aws
from .harness import EventSourceMapping, drain

square = Service("square_aws", int, int)


async def _square(n: int) -> int:
    return n * n


@workflow
async def squared(ctx: WorkflowContext[int]) -> int:
    return await ctx.call(square, ctx.request)


@workflow
async def parent(ctx: WorkflowContext[str]) -> str:
    try:
        value = await ctx.child(squared, 9, workflow_id=ctx.request or None)
    except ChildWorkflowError as exc:
        return f"refused: {exc.error_type}"
    return f"child said {value}"


class Crash(Exception):
    """An injected crash."""


def _deploy(aws: Aws) -> tuple[AwsDeployment, WorkflowClient, list[EventSourceMapping]]:
    config = aws.config(services={"square_aws": f"sqs:{aws.create_queue(aws.name('sq'))}"})
    deployment = AwsDeployment(config, session=aws.session)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url,
                           workflow_handler(parent, squared, deployment=deployment)),
        EventSourceMapping(sqs, config.services["square_aws"].address,
                           service_handler(square, _square, deployment=deployment)),
    ]
    return deployment, WorkflowClient(config, session=aws.session), pollers


def test_a_crash_right_after_a_child_is_written_loses_nothing(aws: Aws) -> None:
    """The child's instance is written and the Lambda dies before it learns so: its link to
    the parent was in the same write, so when the child finishes the parent gets its result
    (before the fix the parent waited forever on a completed child)."""
    deployment, client, pollers = _deploy(aws)
    store: Any = deployment.store
    real = store.create_instance
    crashed: list[str] = []

    def crash_after_child(instance: Any, operations: Any = ()) -> Any:
        out = real(instance, operations)
        if "~" in instance.workflow_id and not crashed:
            crashed.append(instance.workflow_id)
            raise Crash("the Lambda died right after writing the child")
        return out

    store.create_instance = crash_after_child
    handle = client.start(parent, "", workflow_id="p-crash")
    drain(pollers)
    assert crashed == ["p-crash~1"]
    assert handle.result() == "child said 81"
    assert client.result("p-crash~1", squared) == 81


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "tab\there", "naïve", "a~b"])
def test_an_id_sqs_fifo_refuses_is_refused_before_anything_is_written(aws: Aws,
                                                                     bad: str) -> None:
    """Before: an orphaned running instance and a raw botocore ClientError. Now: the id rule
    is checked first, the error names it, the table stays empty."""
    _, client, _ = _deploy(aws)
    with pytest.raises(InvalidWorkflowIdError):
        client.start(squared, 2, workflow_id=bad)
    assert client.list_instances() == []


def test_a_child_whose_id_a_user_took_fails_the_parents_call_on_aws(aws: Aws) -> None:
    _, client, pollers = _deploy(aws)
    client.start(squared, 3, workflow_id="taken")
    drain(pollers)
    handle = client.start(parent, "taken", workflow_id="p-taken")
    drain(pollers)
    assert handle.result() == "refused: WorkflowAlreadyStartedError"
    assert client.result("taken", squared) == 9
