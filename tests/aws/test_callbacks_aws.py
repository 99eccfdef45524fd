"""Callbacks on AWS (moto): the workflow hands out a signed token; WorkflowClient completes,
fails or heartbeats it through the workflow FIFO queue; bad tokens change nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lambda_workflow import (
    CallbackFailedError,
    InvalidCallbackTokenError,
    WorkflowContext,
    WorkflowError,
    workflow,
)
from lambda_workflow.aws import AwsDeployment, WorkflowClient, workflow_handler

from .conftest import Aws
from .harness import EventSourceMapping, drain

KEY = "a test key of thirty-two bytes!!"
TOKENS: dict[str, str] = {}


@workflow
async def approval(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("manager", bool, timeout=86_400)
    TOKENS[ctx.workflow_id] = cb.token
    try:
        return "approved" if await cb else "rejected"
    except CallbackFailedError as exc:
        return f"failed: {exc.error_type}"


def _deploy(aws: Aws) -> tuple[WorkflowClient, EventSourceMapping]:
    config = replace(aws.config(), callback_key=KEY,
                     timer_queue_url=aws.create_queue(aws.name("timers")))
    deployment = AwsDeployment(config, session=aws.session)
    esm = EventSourceMapping(aws.client("sqs"), config.queue_url,
                             workflow_handler(approval, deployment=deployment))
    return WorkflowClient(config, session=aws.session), esm


def test_a_callback_completed_through_the_client(aws: Aws) -> None:
    """The token the workflow handed out completes its callback from a client (another
    process with the same key); the workflow resumes with the value."""
    client, esm = _deploy(aws)
    handle = client.start(approval, "expense 42", workflow_id="ap-1")
    drain([esm])
    client.complete_callback(TOKENS["ap-1"], True)
    drain([esm])
    assert handle.result() == "approved"


def test_a_callback_failed_through_the_client(aws: Aws) -> None:
    """fail_callback reaches the workflow as CallbackFailedError with the given type."""
    client, esm = _deploy(aws)
    handle = client.start(approval, "expense 43", workflow_id="ap-2")
    drain([esm])
    client.fail_callback(TOKENS["ap-2"], "PolicyViolation", "over the limit")
    drain([esm])
    assert handle.result() == "failed: PolicyViolation"


def test_forged_spent_and_keyless_tokens_are_refused(aws: Aws) -> None:
    """An altered token, a token used after its callback completed, and a client without the
    key are refused with a clear error; nothing is sent."""
    client, esm = _deploy(aws)
    handle = client.start(approval, "expense 44", workflow_id="ap-3")
    drain([esm])
    token = TOKENS["ap-3"]
    with pytest.raises(InvalidCallbackTokenError, match="signature"):
        client.complete_callback(token[:-3] + "xyz", True)
    keyless = WorkflowClient(replace(client.deployment.config, callback_key=None),
                             session=aws.session)
    with pytest.raises(WorkflowError, match="callback key"):
        keyless.complete_callback(token, True)
    client.complete_callback(token, False)
    drain([esm])
    assert handle.result() == "rejected"
    with pytest.raises(InvalidCallbackTokenError, match="already completed"):
        client.complete_callback(token, True)
    assert esm.failures_reported == 0
