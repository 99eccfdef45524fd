"""Callback heartbeats on AWS (moto's server): WorkflowClient.heartbeat_callback is one
TransactWriteItems (the instance running, the callback item pending with its request), no SQS
message and no workflow invocation; the heartbeat timer reads ``heartbeat_at`` when it fires
and re-arms for the remainder or times out (AWS callback 4.4, 4.5; wait_for_callback 7.12,
7.13). The generated ClientRole allows the write."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from lambda_workflow import (
    CallbackHeartbeatTimeoutError,
    InvalidCallbackTokenError,
    WorkflowContext,
    workflow,
)
from lambda_workflow.aws import AwsDeployment, WorkflowClient, timer_handler, workflow_handler
from lambda_workflow.aws.dynamodb import DynamoDBStateStore
from lambda_workflow.models import InstanceStatus

from .conftest import Aws
from .harness import EventSourceMapping, drain
from .test_template import _role_permissions, load_sam, translate
from .test_timers import ShiftedClock

KEY = "a test key of thirty-two bytes!!"
TOKENS: dict[str, str] = {}


@workflow
async def export(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("export", int, heartbeat_timeout=60)
    TOKENS[ctx.workflow_id] = cb.token
    try:
        return f"rows {await cb}"
    except CallbackHeartbeatTimeoutError as exc:
        return f"stalled: {exc.message}"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[ShiftedClock]:
    """The clock of the deployment and of moto's SQS (delays), moved by the test."""
    import moto.sqs.models as sqs_models

    shifted = ShiftedClock()
    real = sqs_models.unix_time_millis  # type: ignore[attr-defined]

    def millis(*args: object) -> float:
        return float(real(*args)) + shifted.offset * 1000  # type: ignore[arg-type]

    monkeypatch.setattr(sqs_models, "unix_time_millis", millis)
    yield shifted


class _Stack:
    def __init__(self, aws: Aws, clock: ShiftedClock) -> None:
        config = replace(aws.config(), callback_key=KEY,
                         timer_queue_url=aws.create_queue(aws.name("timers")))
        self.deployment = AwsDeployment(config, session=aws.session, clock=clock)
        sqs = aws.client("sqs")
        self.mappings = [
            EventSourceMapping(sqs, config.queue_url,
                               workflow_handler(export, deployment=self.deployment)),
            EventSourceMapping(sqs, config.timer_queue_url or "",
                               timer_handler(deployment=self.deployment))]
        self.client = WorkflowClient(config, session=aws.session, clock=clock)
        self.store = self.deployment.store
        self.config = config

    def drain(self) -> None:
        drain(self.mappings)

    def beat_timers(self, workflow_id: str) -> list[tuple[float, Any]]:
        history = self.client.history(workflow_id)
        return [(float(orjson.loads(op.request)["seconds"]),
                 None if op.result is None else orjson.loads(op.result))
                for op in history.operations
                if op.kind == "timer" and op.name == "heartbeat:export"]


def test_a_heartbeat_is_one_conditional_write_and_no_message(
        aws: Aws, clock: ShiftedClock) -> None:
    """The client's heartbeat: its reads, one TransactWriteItems, no SendMessage; the
    instance's activation counter does not move; heartbeat_at is on the callback's item."""
    stack = _Stack(aws, clock)
    stack.client.start(export, "x", workflow_id="hb-1")
    stack.drain()
    before = stack.client.describe("hb-1").activations
    aws.requests.clear()
    clock.offset += 20
    stack.client.heartbeat_callback(TOKENS["hb-1"])
    assert aws.requests["dynamodb.TransactWriteItems"] == 1
    assert aws.requests["sqs.SendMessage"] == 0
    assert stack.client.describe("hb-1").activations == before
    at = stack.store.last_heartbeat("hb-1", "1")
    assert at is not None and abs(at - clock.now()) < 5


def test_the_timer_rearms_after_a_heartbeat_then_times_out(
        aws: Aws, clock: ShiftedClock) -> None:
    """Heartbeat at +50: the timer fires at +60 and records the time left after it; a timer
    for the remainder is armed; without another heartbeat it times the callback out."""
    stack = _Stack(aws, clock)
    handle = stack.client.start(export, "x", workflow_id="hb-2")
    stack.drain()
    clock.offset += 50
    stack.client.heartbeat_callback(TOKENS["hb-2"])
    clock.offset += 11
    stack.drain()
    assert handle.status() is InstanceStatus.RUNNING
    (first, first_left), (second, second_left) = stack.beat_timers("hb-2")
    assert (first, second_left) == (60.0, None)
    assert 45 < first_left["remaining"] == second < 50
    clock.offset += 50
    stack.drain()
    assert handle.result() == "stalled: no heartbeat within 60 s"


def test_heartbeats_to_a_completed_callback_or_an_ended_instance_are_refused(
        aws: Aws, clock: ShiftedClock) -> None:
    """After the completion the client refuses the heartbeat; the store's conditional write
    refuses it too when the callback completed after the client read it (a race), and when
    the instance ended."""
    stack = _Stack(aws, clock)
    handle = stack.client.start(export, "x", workflow_id="hb-3")
    stack.drain()
    callback = stack.client.history("hb-3").operations[0]
    stack.client.complete_callback(TOKENS["hb-3"], 5)
    stack.drain()
    assert handle.result() == "rows 5"
    with pytest.raises(InvalidCallbackTokenError, match="already completed"):
        stack.client.heartbeat_callback(TOKENS["hb-3"])
    store = stack.store
    assert store.record_heartbeat("hb-3", "1", callback.request_digest, clock.now()) == (
        "completed")
    assert store.record_heartbeat("hb-3", "1", "another digest", clock.now()) == "unknown"
    assert store.record_heartbeat("hb-3", "9", callback.request_digest, clock.now()) == (
        "unknown")
    assert store.last_heartbeat("hb-3", "1") is None

    stack.client.start(export, "y", workflow_id="hb-4")
    stack.drain()
    pending = stack.client.history("hb-4").operations[0]
    clock.offset += 61
    stack.drain()  # times out; the instance ends with its callback still pending
    assert stack.client.describe("hb-4").status is InstanceStatus.COMPLETED
    assert store.record_heartbeat("hb-4", "1", pending.request_digest, clock.now()) == "ended"
    with pytest.raises(InvalidCallbackTokenError, match="has ended"):
        stack.client.heartbeat_callback(TOKENS["hb-4"])


def test_two_heartbeats_at_once_both_land_and_the_later_stands(
        aws: Aws, clock: ShiftedClock) -> None:
    """Two clients (each its own store and connection) write heartbeats to one callback at
    the same moment: none is refused, and heartbeat_at ends at the later time."""
    stack = _Stack(aws, clock)
    stack.client.start(export, "x", workflow_id="hb-5")
    stack.drain()
    digest = stack.client.history("hb-5").operations[0].request_digest
    barrier = threading.Barrier(2)
    results: list[str | None] = []
    base = clock.now()

    def beat(offset: float) -> None:
        store = DynamoDBStateStore(aws.client("dynamodb"), stack.config.table)
        barrier.wait()
        for i in range(5):
            results.append(store.record_heartbeat("hb-5", "1", digest, base + offset + i))

    threads = [threading.Thread(target=beat, args=(o,)) for o in (1.0, 1.5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [None] * 10
    assert stack.store.last_heartbeat("hb-5", "1") == base + 1.5 + 4


def test_client_role_allows_the_heartbeat(aws: Aws, clock: ShiftedClock) -> None:
    """Every request the client sends for a heartbeat is allowed to the generated template's
    ClientRole (TransactWriteItems is authorised per item: UpdateItem, ConditionCheckItem)."""
    allowed = {action for action, _ in _role_permissions(translate(load_sam()), "ClientRole")}
    stack = _Stack(aws, clock)
    stack.client.start(export, "x", workflow_id="hb-6")
    stack.drain()
    aws.requests.clear()
    stack.client.heartbeat_callback(TOKENS["hb-6"])
    used = {request.replace(".", ":", 1) for request in aws.requests}
    assert "dynamodb:TransactWriteItems" in used
    actions = (used - {"dynamodb:TransactWriteItems"}) | {
        "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"}
    assert actions - allowed == set()
