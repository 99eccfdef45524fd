"""Callback keys on AWS (moto): read from Secrets Manager or an SSM SecureString, cached with a
TTL, rotated with instances in flight (tokens inside step arguments and call requests), and
tokens bound to one run of an instance (an instance whose items expired and was started
again refuses the old token)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import orjson
import pytest

from lambda_workflow import (
    CallbackTimeoutError,
    InvalidCallbackTokenError,
    Service,
    WorkflowContext,
    workflow,
)
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler
from lambda_workflow.aws.config import AwsConfig, ConfigurationError
from lambda_workflow.aws.sqs import SqsFifoQueue
from lambda_workflow.callbacks import key_id

from .conftest import Aws
from .harness import EventSourceMapping, drain

K1 = "the first callback key, 32 bytes"
K2 = "the second callback key (rotated)"
ISSUED: dict[str, str] = {}
notify = Service("notify", str, int)


def remember(token: str) -> int:
    return len(token)


def _notify(token: str) -> int:
    return len(token)


@workflow
async def expense(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("approve", bool, timeout=86_400)
    ISSUED[ctx.workflow_id] = cb.token
    await ctx.step(remember, cb.token)  # the token inside a step's arguments
    await ctx.call(notify, cb.token)  # and inside a call request
    try:
        return "approved" if await cb else "rejected"
    except CallbackTimeoutError:
        return "timed out"


class Clock:
    """Wall-clock time plus an offset the test moves (times the key cache)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


class Deployed:
    """The workflow and notify functions of one deployment, and a client process."""

    def __init__(self, aws: Aws, config: AwsConfig, clock: Clock) -> None:
        self.aws, self.config, self.clock = aws, config, clock
        self.function = AwsDeployment(config, session=aws.session, clock=clock)
        sqs = aws.client("sqs")
        self.pollers = [
            EventSourceMapping(sqs, config.queue_url,
                               workflow_handler(expense, deployment=self.function)),
            EventSourceMapping(sqs, config.services["notify"].address,
                               service_handler(notify, _notify, deployment=self.function))]
        self.client = WorkflowClient(config, session=aws.session, clock=clock)

    def drain(self) -> None:
        drain(self.pollers)

    def send_raw(self, workflow_id: str, token: str, dedup: str) -> None:
        self.aws.client("sqs").send_message(
            QueueUrl=self.config.queue_url, MessageGroupId=workflow_id,
            MessageDeduplicationId=dedup, MessageBody=orjson.dumps(
                {"v": 1, "kind": "callback_completed", "workflow_id": workflow_id,
                 "token": token, "ok": True, "value": True}).decode())

    def dead_letters(self) -> list[Any]:
        return SqsFifoQueue(self.aws.client("sqs"), self.config.queue_url,
                            dead_letter_queue_url=self.config.dead_letter_queue_url
                            ).dead_letters()


def _config(aws: Aws, **keys: Any) -> AwsConfig:
    return replace(aws.config(services={"notify": f"sqs:{aws.create_queue(aws.name('n'))}"}),
                   timer_queue_url=aws.create_queue(aws.name("timers")), **keys)


def _kid(token: str) -> str:
    return token.split(".")[0]


def test_rotation_through_secrets_manager_with_instances_in_flight(aws: Aws) -> None:
    """K1 in the secret; three instances hand out tokens (inside a step's arguments and a
    call request). The secret becomes the ring (K2 signs, K1 verifies): the functions pick
    it up once their cache's TTL has passed, without a redeploy; tokens of K1 complete
    their callbacks, through the client and as queue messages, and every instance replays.
    Then the secret is K2 alone: a K1 token is refused by the client and dead-lettered on
    the queue, changing nothing, and its instance still replays to its timeout."""
    secrets = aws.client("secretsmanager")
    arn = secrets.create_secret(Name=aws.name("callback-keys"), SecretString=K1)["ARN"]
    clock = Clock()
    app = Deployed(aws, _config(aws, callback_key_secret=arn, callback_key_ttl=300), clock)
    for i in (1, 2, 3):
        app.client.start(expense, "taxi", workflow_id=f"k-{i}")
    app.drain()
    t1, t2, t3 = (ISSUED[f"k-{i}"] for i in (1, 2, 3))
    assert {_kid(t) for t in (t1, t2, t3)} == {key_id(K1)}

    secrets.put_secret_value(SecretId=arn, SecretString=orjson.dumps(
        {"current": K2, "verify": [K1]}).decode())
    app.client.start(expense, "hotel", workflow_id="k-4")
    app.drain()
    assert _kid(ISSUED["k-4"]) == key_id(K1)  # cached: the ring is read again after the TTL
    clock.offset += 301
    app.client.start(expense, "train", workflow_id="k-5")
    app.client.complete_callback(t1, True)
    app.send_raw("k-2", t2, "raw-k-2")
    app.drain()
    assert _kid(ISSUED["k-5"]) == key_id(K2)
    assert [app.client.status(f"k-{i}").value for i in range(1, 6)] == [
        "completed", "completed", "running", "running", "running"]
    assert app.client.describe("k-1").result == b'"approved"'

    secrets.put_secret_value(SecretId=arn, SecretString=K2)
    clock.offset += 301
    before = app.client.history("k-3").operations
    with pytest.raises(InvalidCallbackTokenError, match="not in this deployment's key ring"):
        app.client.complete_callback(t3, True)
    app.send_raw("k-3", t3, "raw-k-3")
    app.client.complete_callback(ISSUED["k-5"], False)
    app.drain()
    (letter,) = app.dead_letters()
    assert "not in this deployment's key ring" in (letter.reason or "")
    assert app.client.history("k-3").operations == before
    assert app.client.describe("k-5").result == b'"rejected"'
    # k-3 still replays without K1: its timeout (delivered here by hand) ends it
    timeout = next(op for op in before if op.kind == "timer")
    app.aws.client("sqs").send_message(
        QueueUrl=app.config.queue_url, MessageGroupId="k-3", MessageDeduplicationId="fire",
        MessageBody=orjson.dumps({"v": 1, "kind": "timer_fired", "workflow_id": "k-3",
                                  "timer_id": timeout.op_id}).decode())
    app.drain()
    assert app.client.describe("k-3").result == b'"timed out"'


def test_keys_from_an_ssm_securestring_and_a_token_of_an_earlier_run(aws: Aws) -> None:
    """The keys come from an SSM SecureString parameter. expense-42 completes; its items
    are deleted (as TTL expiry deletes them) and expense-42 starts again: it hands out
    another token, and the old one is refused by the client and dead-lettered on the
    queue, changing nothing; the new token completes it."""
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/app/callback-keys", Value=K1, Type="SecureString")
    config = _config(aws, callback_key_parameter="/app/callback-keys")
    app = Deployed(aws, config, Clock())
    app.client.start(expense, "dinner", workflow_id="expense-42")
    app.drain()
    old = ISSUED["expense-42"]
    app.client.complete_callback(old, True)
    app.drain()
    assert app.client.describe("expense-42").result == b'"approved"'

    table = aws.client("dynamodb")
    items = table.query(TableName=config.table, KeyConditionExpression="pk = :pk",
                        ExpressionAttributeValues={":pk": {"S": "wf#expense-42"}})["Items"]
    assert items
    for item in items:
        table.delete_item(TableName=config.table, Key={"pk": item["pk"], "sk": item["sk"]})
    # Records expire days later; a new queue stands for SQS's 5-minute deduplication
    # window having passed since the first start.
    queue_url, dlq_url = aws.create_fifo_queue(max_receives=5)
    app = Deployed(aws, replace(config, queue_url=queue_url, dead_letter_queue_url=dlq_url),
                   Clock())
    app.client.start(expense, "dinner", workflow_id="expense-42")
    app.drain()
    new = ISSUED["expense-42"]
    assert new != old
    before = app.client.history("expense-42").operations
    with pytest.raises(InvalidCallbackTokenError, match="another run"):
        app.client.complete_callback(old, True)
    app.send_raw("expense-42", old, "replayed")
    app.drain()
    (letter,) = app.dead_letters()
    assert "another run" in (letter.reason or "")
    assert app.client.history("expense-42").operations == before
    app.client.complete_callback(new, False)
    app.drain()
    assert app.client.describe("expense-42").result == b'"rejected"'


def test_callback_keys_must_be_a_securestring_and_readable(aws: Aws) -> None:
    """A plain String parameter, a missing secret and a secret that holds no valid key are
    refused with a ConfigurationError naming where the keys were looked for (never echoing
    a key); two sources at once are refused."""
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/app/plain", Value=K1, Type="String")
    secrets = aws.client("secretsmanager")
    short = secrets.create_secret(Name=aws.name("short"), SecretString="tiny")["ARN"]
    config = aws.config()
    for keys, error in (({"callback_key_parameter": "/app/plain"}, "SecureString"),
                        ({"callback_key_secret": "missing"}, "ResourceNotFoundException"),
                        ({"callback_key_secret": short}, "at least 16 bytes")):
        client = WorkflowClient(replace(config, **keys), session=aws.session)
        with pytest.raises(ConfigurationError, match=error) as info:
            client.complete_callback("a.b.c", True)
        assert K1 not in str(info.value) and "tiny" not in str(info.value)
    with pytest.raises(ConfigurationError, match="one place"):
        replace(config, callback_key=K1, callback_key_secret="s")
