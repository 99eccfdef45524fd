"""Callbacks on AWS (moto): the workflow hands out a signed token; WorkflowClient completes,
fails or heartbeats it through the workflow FIFO queue; bad tokens change nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from typing import Any

import orjson
import pytest

from lambda_workflow import (
    CallbackFailedError,
    InvalidCallbackTokenError,
    WorkflowContext,
    WorkflowError,
    workflow,
)
from lambda_workflow.aws import AwsDeployment, WorkflowClient, workflow_handler
from lambda_workflow.aws.sqs import SqsFifoQueue

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


# -- hostile tokens: the client refuses them, the workflow function dead-letters them ----
def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(part: str) -> str:
    """A genuine signature under KEY over the payload part ``part``, whatever it holds."""
    kid = _b64u(hmac.new(KEY.encode(), b"lambda-workflow callback key id",
                         hashlib.sha256).digest()[:6])
    signature = hmac.new(KEY.encode(), f"{kid}.{part}".encode(), hashlib.sha256).digest()
    return f"{kid}.{part}.{_b64u(signature)}"


HOSTILE: dict[str, Any] = {
    "non-ascii": "ключ.подпись",
    "non-ascii-signature": _b64u(b'{"w":"h","c":"1"}') + "." + "é" * 43,
    "huge": "A" * 200_000,
    "empty": "",
    "bad-base64": "ab$c.d%f",
    "signed-bad-base64": _signed("A"),
    "signed-list": _signed(_b64u(b"[1,2]")),
    "signed-int-id": _signed(_b64u(b'{"w":1,"c":"1"}')),
    "int": 12345,
    "none": None,
}


def test_hostile_tokens_are_refused_by_the_client_and_change_nothing(aws: Aws) -> None:
    """WorkflowClient's complete, fail and heartbeat_callback refuse every hostile token
    with InvalidCallbackTokenError; nothing reaches the queue, the history is unchanged and
    the genuine token completes the callback afterwards."""
    client, esm = _deploy(aws)
    handle = client.start(approval, "expense 45", workflow_id="ap-h1")
    drain([esm])
    before = handle.history().operations
    for name, bad in HOSTILE.items():
        for act in (lambda t: client.complete_callback(t, True),
                    lambda t: client.fail_callback(t, "X", "y"),
                    client.heartbeat_callback):
            with pytest.raises(InvalidCallbackTokenError, match="callback token rejected"):
                act(bad)
            assert esm.poll_once() == 0, name
    assert handle.history().operations == before
    client.complete_callback(TOKENS["ap-h1"], True)
    drain([esm])
    assert handle.result() == "approved"


def test_hostile_tokens_on_the_queue_are_dead_lettered_and_the_rest_goes_on(aws: Aws) -> None:
    """Callback messages with hostile tokens sent straight to the workflow queue, ahead of
    the genuine completion in the same group, are dead-lettered with the reason; the
    instance completes with the genuine value."""
    client, esm = _deploy(aws)
    handle = client.start(approval, "expense 46", workflow_id="ap-h2")
    drain([esm])
    sqs = aws.client("sqs")
    config = client.deployment.config
    strings = {n: t for n, t in HOSTILE.items() if isinstance(t, str) and t}
    for name, bad in strings.items():
        sqs.send_message(QueueUrl=config.queue_url, MessageGroupId="ap-h2",
                         MessageDeduplicationId=f"bad-{name}", MessageBody=orjson.dumps(
                             {"v": 1, "kind": "callback_completed", "workflow_id": "ap-h2",
                              "token": bad, "ok": True, "value": True}).decode())
    client.fail_callback(TOKENS["ap-h2"], "Rejected", "no")
    drain([esm])
    assert handle.result() == "failed: Rejected"
    letters = SqsFifoQueue(sqs, config.queue_url,
                           dead_letter_queue_url=config.dead_letter_queue_url).dead_letters()
    assert len(letters) == len(strings)
    assert all("callback token rejected" in (letter.reason or "") for letter in letters)
