"""Several workflow functions in one deployment, each with its own FIFO queue, on moto's server:
messages reach the queue of the function that runs their instance's workflow
(LAMBDA_WORKFLOW_WORKFLOW_QUEUES), a child in the other function replies to its parent's
queue, timers fire into the queue of the function that scheduled them, the client routes
cancels and callbacks by the instance, and the timer function refuses a forged destination."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import InstanceStatus, Service, WorkflowContext, workflow
from lambda_workflow.aws import (
    AwsConfig,
    AwsDeployment,
    WorkflowClient,
    service_handler,
    timer_handler,
    workflow_handler,
)
from lambda_workflow.aws.config import ServiceTarget
from lambda_workflow.errors import InvalidMessageError

from .conftest import Aws
from .harness import EventSourceMapping, drain
from .test_timers import ShiftedClock
from .test_timers import clock as clock  # the fixture: moto's SQS clock moved with ours

KEY = "a test key of thirty-two bytes!!"
TOKENS: dict[str, str] = {}


class Num(BaseModel):
    n: int


doubler = Service("doubler", Num, Num)


async def double(req: Num) -> Num:
    return Num(n=req.n * 2)


@workflow(services=[doubler])
async def child_wf(ctx: WorkflowContext[int]) -> int:
    """Runs in function B: sleeps (a timer), then calls a service (whose reply comes back to
    B's queue)."""
    await ctx.sleep(120)
    return (await ctx.call(doubler, Num(n=ctx.request))).n


@workflow
async def parent_wf(ctx: WorkflowContext[int]) -> int:
    """Runs in function A: its child runs in function B."""
    return await ctx.child(child_wf, ctx.request) + 1


@workflow
async def waiting_child(ctx: WorkflowContext[str]) -> str:
    """Runs in function B: waits for a callback."""
    cb = ctx.create_callback("approver", bool, timeout=86_400)
    TOKENS[ctx.workflow_id] = cb.token
    return "approved" if await cb else "rejected"


@workflow
async def quick_child(ctx: WorkflowContext[int]) -> int:
    """Runs in function B and ends at once."""
    return ctx.request + 1


@workflow
async def waiting_parent(ctx: WorkflowContext[str]) -> str:
    """Runs in function A."""
    return "parent saw: " + await ctx.child(waiting_child, ctx.request)


@dataclass
class TwoFunctions:
    """Function A (parents) and function B (children), each on its own queue; one table,
    timer queue and service queue."""

    a: AwsConfig
    b: AwsConfig
    client: WorkflowClient
    queue_a: EventSourceMapping
    queue_b: EventSourceMapping
    timers: EventSourceMapping
    service: EventSourceMapping
    sqs: Any

    @property
    def pollers(self) -> list[EventSourceMapping]:
        return [self.queue_a, self.queue_b, self.timers, self.service]

    def messages(self, queue_url: str) -> list[dict[str, Any]]:
        """What is waiting on a queue (made visible again at once)."""
        got = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=0).get("Messages", [])
        return [orjson.loads(m["Body"]) for m in got]


@pytest.fixture
def two(aws: Aws, clock: ShiftedClock) -> Iterator[TwoFunctions]:
    base = aws.config(callback_key=KEY, timer_queue_url=aws.create_queue(aws.name("timers")),
                      services={"doubler": "sqs:" + aws.create_queue(aws.name("doubler"))})
    queue_b, dlq_b = aws.create_fifo_queue(max_receives=5)
    routes = {"parent_wf": base.queue_url, "waiting_parent": base.queue_url,
              "child_wf": queue_b, "waiting_child": queue_b}
    a = replace(base, workflow_queues=routes)
    b = replace(base, queue_url=queue_b, dead_letter_queue_url=dlq_b, workflow_queues=routes)
    # The client's own queue is A's (as the generated stack's outputs give it).
    client = WorkflowClient(a, session=aws.session, clock=clock)
    dep_a = AwsDeployment(a, session=aws.session, clock=clock)
    dep_b = AwsDeployment(b, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    target = b.services["doubler"]
    assert isinstance(target, ServiceTarget)
    yield TwoFunctions(
        a, b, client,
        EventSourceMapping(sqs, a.queue_url, workflow_handler(
            parent_wf, waiting_parent, deployment=dep_a)),
        EventSourceMapping(sqs, b.queue_url, workflow_handler(
            child_wf, waiting_child, quick_child, deployment=dep_b)),
        # the timer function knows every workflow queue (its own is A's)
        EventSourceMapping(sqs, base.timer_queue_url or "", timer_handler(deployment=dep_a)),
        EventSourceMapping(sqs, target.address, service_handler(
            doubler, double, deployment=AwsDeployment(base, session=aws.session))),
        sqs)


def test_a_child_in_the_other_function_runs_there_and_replies_to_its_parent(
        two: TwoFunctions, clock: ShiftedClock) -> None:
    """The parent (A) starts its child on B's queue; the child's timer fires into B's queue,
    the service replies to B's queue, and the child's result reaches the parent on A's queue.
    A message on the wrong queue would reach a function that does not register its
    workflow and fail there: nothing is dead-lettered and each function ran."""
    handle = two.client.start(parent_wf, 21, workflow_id="p-1")
    drain(two.pollers)
    child_id = "p-1~1"
    assert two.client.status(child_id) is InstanceStatus.RUNNING
    # the child's recorded link names its parent's workflow, which routes the reply
    link = next(op for op in two.client.history(child_id).operations if op.kind == "parent")
    assert orjson.loads(link.request) == {"workflow_id": "p-1", "call_id": "1",
                                          "workflow": "parent_wf"}
    clock.offset += 130
    # the timer message names the queue of the function that scheduled it: B's
    (timer,) = two.messages(two.a.timer_queue_url or "")
    assert (timer["workflow_id"], timer["queue"]) == (child_id, two.b.queue_url)
    drain(two.pollers)
    assert handle.result() == 43
    assert two.client.describe(child_id).status is InstanceStatus.COMPLETED
    assert two.queue_a.invocations >= 2 and two.queue_b.invocations >= 3
    assert two.queue_a.failures_reported == two.queue_b.failures_reported == 0
    for dlq in (two.a.dead_letter_queue_url, two.b.dead_letter_queue_url):
        assert two.messages(dlq or "") == []


def test_client_cancel_and_callbacks_go_to_the_instance_s_queue(two: TwoFunctions) -> None:
    """The client's own queue is A's; a cancel of an instance of B's workflow and the
    completion of its callback go to B's queue (routed by the instance's workflow name),
    and the parent hears the child's result on A's queue."""
    first = two.client.start(waiting_parent, "expense 1", workflow_id="wp-1")
    second = two.client.start(waiting_parent, "expense 2", workflow_id="wp-2")
    drain(two.pollers)
    assert set(TOKENS) >= {"wp-1~1", "wp-2~1"}
    two.client.complete_callback(TOKENS["wp-1~1"], True)
    assert [m["kind"] for m in two.messages(two.b.queue_url)] == ["callback_completed"]
    assert two.messages(two.a.queue_url) == []
    drain(two.pollers)
    assert first.result() == "parent saw: approved"
    assert two.client.cancel("wp-2~1", "no longer needed")
    assert [m["kind"] for m in two.messages(two.b.queue_url)] == ["cancel"]
    assert two.messages(two.a.queue_url) == []
    drain(two.pollers)
    assert two.client.status("wp-2~1") is InstanceStatus.CANCELLED
    assert second.status() is InstanceStatus.FAILED  # the parent's await raised
    assert two.queue_a.failures_reported == two.queue_b.failures_reported == 0


def test_a_resume_routes_by_the_instance(two: TwoFunctions) -> None:
    """A repair's message (here a cancel of the child by a reset of the parent) also goes to
    the child's function, found from the child instance's workflow name."""
    handle = two.client.start(waiting_parent, "expense 3", workflow_id="wp-3")
    drain(two.pollers)
    two.client.reset("wp-3", "0")
    kinds_b = [m["kind"] for m in two.messages(two.b.queue_url)]
    assert "cancel" in kinds_b
    assert all(m["workflow_id"] == "wp-3" for m in two.messages(two.a.queue_url))
    drain(two.pollers)
    assert two.client.status("wp-3~1") is InstanceStatus.CANCELLED
    assert handle.status() is InstanceStatus.RUNNING  # ran again from the start


def test_a_child_whose_parent_link_has_no_workflow_replies_on_its_own_queue(
        two: TwoFunctions) -> None:
    """A child started by an earlier version (its start message's parent has no workflow
    name) records the link as it came, and its result goes to its own function's queue:
    the only queue such a deployment had."""
    start = {"v": 1, "kind": "start", "workflow_id": "old-p~1", "workflow": "quick_child",
             "input": 1, "parent": {"workflow_id": "old-p", "call_id": "1"}}
    two.sqs.send_message(QueueUrl=two.b.queue_url, MessageBody=orjson.dumps(start).decode(),
                         MessageGroupId="old-p~1", MessageDeduplicationId="old-start")
    two.queue_b.poll_once()
    link = next(op for op in two.client.history("old-p~1").operations if op.kind == "parent")
    assert orjson.loads(link.request) == {"workflow_id": "old-p", "call_id": "1"}
    assert two.messages(two.b.queue_url) == [{"v": 1, "kind": "call_result",
                                               "workflow_id": "old-p", "call_id": "1",
                                               "ok": True, "value": 2}]
    assert two.messages(two.a.queue_url) == []


def test_a_forged_timer_destination_is_refused(two: TwoFunctions, aws: Aws) -> None:
    """A timer message naming a queue outside the deployment is neither fired nor sent on:
    the handler reports it as a failure (the timer queue's redrive policy dead-letters it)
    and the named queue receives nothing; one without a destination (sent before timers
    named it) fires into LAMBDA_WORKFLOW_QUEUE_URL."""
    outsider, _ = aws.create_fifo_queue()
    timer_url = two.a.timer_queue_url or ""
    forged = {"v": 1, "kind": "timer", "workflow_id": "p-9", "timer_id": "1",
              "fire_at": 0, "queue": outsider}
    two.sqs.send_message(QueueUrl=timer_url, MessageBody=orjson.dumps(forged).decode())
    two.timers.poll_once()
    assert two.timers.failures_reported == 1
    assert two.messages(outsider) == []
    assert two.messages(two.a.queue_url) == two.messages(two.b.queue_url) == []
    deployment = AwsDeployment(two.a, session=aws.session)
    with pytest.raises(InvalidMessageError, match="not a workflow queue of this deployment"):
        deployment.timers.handle(forged)
    old = {k: v for k, v in forged.items() if k != "queue"}
    assert deployment.timers.handle(old) is True
    assert two.messages(two.a.queue_url) == [
        {"v": 1, "kind": "timer_fired", "workflow_id": "p-9", "timer_id": "1"}]
    to_b = {**forged, "queue": two.b.queue_url, "workflow_id": "p-8"}
    assert deployment.timers.handle(to_b) is True
    assert [m["workflow_id"] for m in two.messages(two.b.queue_url)] == ["p-8"]


def test_the_transport_routes_by_name_by_start_message_and_else_to_its_own_queue(
        two: TwoFunctions, aws: Aws) -> None:
    """SqsFifoTransport: a start message by the workflow it names; another message by the
    name given; without one (or for a name not in the table), the function's own queue."""
    transport = AwsDeployment(two.a, session=aws.session).transport
    start = orjson.dumps({"v": 1, "kind": "start", "workflow_id": "s-1",
                          "workflow": "child_wf", "input": 1})
    assert transport.workflow_queue("s-1", start, None) == two.b.queue_url
    cancel = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": "s-1", "reason": ""})
    assert transport.workflow_queue("s-1", cancel, "child_wf") == two.b.queue_url
    assert transport.workflow_queue("s-1", cancel, None) == two.a.queue_url
    assert transport.workflow_queue("s-1", cancel, "unknown_wf") == two.a.queue_url


def test_the_workflow_queues_setting_is_checked_with_the_others() -> None:
    """LAMBDA_WORKFLOW_WORKFLOW_QUEUES must be a JSON object of workflow name to FIFO queue
    URL; each problem is named in the one ConfigurationError with the other settings'."""
    from lambda_workflow.aws import ConfigurationError

    base = {"LAMBDA_WORKFLOW_TABLE": "t",
            "LAMBDA_WORKFLOW_QUEUE_URL": "https://sqs.example/1/own.fifo",
            "LAMBDA_WORKFLOW_RETENTION_DAYS": "soon"}
    for raw, problem in (
            ('["bill"]', "LAMBDA_WORKFLOW_WORKFLOW_QUEUES must be a JSON object of workflow "
                         "name to FIFO queue URL"),
            ('{"bill": 3}', "LAMBDA_WORKFLOW_WORKFLOW_QUEUES must be a JSON object"),
            ("{bill", "LAMBDA_WORKFLOW_WORKFLOW_QUEUES is not valid JSON"),
            ('{"bill": "https://sqs.example/1/billing"}',
             "the queue of workflow 'bill' must be an SQS FIFO queue (a URL ending in .fifo), "
             "got 'https://sqs.example/1/billing' (LAMBDA_WORKFLOW_WORKFLOW_QUEUES)")):
        with pytest.raises(ConfigurationError) as raised:
            AwsConfig.from_env({**base, "LAMBDA_WORKFLOW_WORKFLOW_QUEUES": raw})
        problems = raised.value.problems
        assert len(problems) == 2, problems
        assert problems[0] == "LAMBDA_WORKFLOW_RETENTION_DAYS='soon' is not an integer"
        assert problems[1].startswith(problem), problems[1]
    config = AwsConfig.from_env({**base, "LAMBDA_WORKFLOW_RETENTION_DAYS": "3",
                                 "LAMBDA_WORKFLOW_WORKFLOW_QUEUES":
                                     '{"bill": "https://sqs.example/1/billing.fifo"}'})
    assert config.workflow_queue("bill") == "https://sqs.example/1/billing.fifo"
    assert config.workflow_queue("order") == config.workflow_queue(None) == config.queue_url
    assert config.deployment_queues == {config.queue_url, "https://sqs.example/1/billing.fifo"}


def test_a_timer_message_with_a_malformed_destination_is_refused() -> None:
    """A timer message whose queue is not a string is malformed (a forged or corrupted
    message), refused before anything is sent."""
    from lambda_workflow.aws.timers import parse_timer

    with pytest.raises(InvalidMessageError, match="malformed timer message"):
        parse_timer('{"v": 1, "kind": "timer", "workflow_id": "w", "timer_id": "1", '
                    '"fire_at": 0, "queue": ["https://sqs.example/1/own.fifo"]}')


def test_without_routing_a_child_start_keeps_the_parent_link_earlier_versions_read(
        aws: Aws, clock: ShiftedClock) -> None:
    """One workflow function (no LAMBDA_WORKFLOW_WORKFLOW_QUEUES): a child's start message
    and recorded link have no parent workflow name, exactly as before routing existed, so a
    deploy that replaces earlier code cannot lose a child start to a container still running
    it (its parent link model has no such field and would dead-letter the message)."""
    config = aws.config(timer_queue_url=aws.create_queue(aws.name("timers")),
                        services={"doubler": "sqs:" + aws.create_queue(aws.name("doubler"))})
    deployment = AwsDeployment(config, session=aws.session, clock=clock)
    assert deployment.transport.routes_workflows is False
    client = WorkflowClient(config, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    function = EventSourceMapping(sqs, config.queue_url, workflow_handler(
        parent_wf, child_wf, deployment=deployment))
    client.start(parent_wf, 21, workflow_id="solo")
    function.poll_once()  # the parent's first activation sends the child's start
    got = sqs.receive_message(QueueUrl=config.queue_url, MaxNumberOfMessages=10,
                              VisibilityTimeout=0).get("Messages", [])
    starts = [orjson.loads(m["Body"]) for m in got if '"kind":"start"' in m["Body"]]
    assert [s["parent"] for s in starts] == [{"workflow_id": "solo", "call_id": "1"}]
