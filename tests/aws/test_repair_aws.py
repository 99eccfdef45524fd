"""Repairing instances on AWS (moto's server over HTTP): WorkflowClient.resume after a deploy
that broke determinism is rolled back, WorkflowClient.reset with a late reply of the dropped
call, and what the DynamoDB store does beyond the contract (TTL of a reopened instance, more
dropped operations than one transaction holds, a crash between its writes)."""

from __future__ import annotations

from typing import Any

import orjson

from lambda_workflow import InstanceStatus, Service, WorkflowContext, workflow
from lambda_workflow._runtime.engine import child_workflow_id
from lambda_workflow._runtime.repair import Repairs
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler
from lambda_workflow.aws.config import AwsConfig
from lambda_workflow.aws.dynamodb import DynamoDBStateStore

from .conftest import Aws
from .harness import EventSourceMapping, drain

reserve = Service("reserve", str, int)
ship = Service("ship", str, str)
quote = Service("quote", str, int)
book = Service("book", str, str)


def _reserve(item: str) -> int:
    return len(item)


def _ship(item: str) -> str:
    return f"shipped {item}"


def _quote(dest: str) -> int:
    return 80


def _book(request: str) -> str:
    return f"booked {request}"


@workflow(name="order")
async def order_v1(ctx: WorkflowContext[str]) -> str:
    units = await ctx.call(reserve, ctx.request)
    label = await ctx.call(ship, f"{ctx.request} x{units}")
    return f"{label} ({units} units)"


@workflow(name="order")
async def order_v2(ctx: WorkflowContext[str]) -> str:
    label = await ctx.call(ship, ctx.request)  # the bad deploy: calls reordered
    units = await ctx.call(reserve, ctx.request)
    return f"{label} ({units} units)"


CABIN_RUNS: list[int] = []


def pick_class(price: int) -> str:
    """Picks first class on its first run (the bug), then by price."""
    CABIN_RUNS.append(price)
    return "first" if len(CABIN_RUNS) == 1 else ("economy" if price > 100 else "business")


@workflow
async def trip(ctx: WorkflowContext[str]) -> str:
    price = await ctx.call(quote, ctx.request)
    cabin = await ctx.step(pick_class, price)
    return await ctx.call(book, f"{ctx.request}:{cabin}")


def _config(aws: Aws, *names: str) -> AwsConfig:
    return aws.config(services={n: f"sqs:{aws.create_queue(aws.name(n))}" for n in names})


def _workflows(aws: Aws, config: AwsConfig, *workflows: Any) -> EventSourceMapping:
    return EventSourceMapping(aws.client("sqs"), config.queue_url, workflow_handler(
        *workflows, deployment=AwsDeployment(config, session=aws.session)))


def _service(aws: Aws, config: AwsConfig, service: Service[Any, Any],
             fn: Any) -> EventSourceMapping:
    return EventSourceMapping(aws.client("sqs"), config.services[service.name].address,
                              service_handler(service, fn, deployment=AwsDeployment(
                                  config, session=aws.session)))


def _dead_letters(aws: Aws, config: AwsConfig) -> list[str]:
    got = aws.client("sqs").receive_message(QueueUrl=config.dead_letter_queue_url or "",
                                            MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [m["Body"] for m in got.get("Messages", [])]


def test_rollback_then_resume_completes_like_an_uninterrupted_run(aws: Aws) -> None:
    """v1 records call 1; v2 (reordered calls) fails the instance when the reply arrives;
    the rollback to v1 alone leaves it failed; WorkflowClient.resume re-activates it through
    a resume message on its FIFO group, and it completes with v1's result."""
    config = _config(aws, "reserve", "ship")
    client = WorkflowClient(config, session=aws.session)
    services = [_service(aws, config, reserve, _reserve), _service(aws, config, ship, _ship)]
    drain([_workflows(aws, config, order_v1)])
    client.start(order_v1, "lamp", workflow_id="order-1")
    drain([_workflows(aws, config, order_v1)])  # waits on reserve (services not running)
    assert client.status("order-1") is InstanceStatus.RUNNING
    drain([_workflows(aws, config, order_v2), *services])  # the bad deploy
    assert client.status("order-1") is InstanceStatus.FAILED
    assert b"NonDeterminismError" in (client.describe("order-1").error or b"")
    v1 = _workflows(aws, config, order_v1)  # the rollback
    drain([v1, *services])
    assert client.status("order-1") is InstanceStatus.FAILED
    result = client.resume("order-1")
    assert (result.command, result.repair) == ("resume", 1)
    drain([v1, *services])
    assert client.result("order-1", order_v1) == "shipped lamp x4 (4 units)"
    assert [op.op_id for op in client.history("order-1").operations] == [
        "repair:1", "1", "2"]
    assert _dead_letters(aws, config) == []


def test_reset_with_the_old_reply_arriving_after_it(aws: Aws) -> None:
    """The booking made from a bad step result (call 3) is still on the book queue when the
    instance is reset to call 1. The book service answers it after the reset: the reply is a
    duplicate (deleted, not dead-lettered) and the result is the new booking (call r1.3)."""
    CABIN_RUNS.clear()
    config = _config(aws, "quote", "book")
    client = WorkflowClient(config, session=aws.session)
    flows = _workflows(aws, config, trip)
    quotes = _service(aws, config, quote, _quote)
    client.start(trip, "porto", workflow_id="trip-1")
    drain([flows, quotes])
    assert [op.op_id for op in client.history("trip-1").operations] == ["1", "2", "3"]
    reset = client.reset("trip-1", to="1")
    assert reset.dropped == ["2", "3"]
    drain([flows, quotes])
    drain([flows, quotes, _service(aws, config, book, _book)])
    assert client.result("trip-1", trip) == "booked porto:business"
    assert [(op.op_id, op.state.value) for op in client.history("trip-1").operations] == [
        ("repair:1", "completed"), ("1", "completed"), ("r1.2", "completed"),
        ("r1.3", "completed")]
    assert _dead_letters(aws, config) == []


def test_a_reopened_instance_loses_its_expiry(aws: Aws) -> None:
    """A finished instance carries expires_at (retention) on every item; reset reopens it,
    so none of its remaining items may expire while it runs."""
    config = _config(aws, "quote", "book")
    client = WorkflowClient(config, session=aws.session)
    CABIN_RUNS.clear()
    client.start(trip, "rome", workflow_id="trip-2")
    drain([_workflows(aws, config, trip), _service(aws, config, quote, _quote),
           _service(aws, config, book, _book)])
    assert client.status("trip-2") is InstanceStatus.COMPLETED

    def expiring() -> list[str]:
        items = aws.client("dynamodb").query(
            TableName=config.table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "wf#trip-2"}})["Items"]
        return sorted(i["sk"]["S"] for i in items if "expires_at" in i)

    assert expiring() == ["#instance", "op#1", "op#2", "op#3"]
    client.reset("trip-2", to="2")
    assert client.status("trip-2") is InstanceStatus.RUNNING
    assert expiring() == []


def _store(aws: Aws, config: AwsConfig) -> DynamoDBStateStore:
    store = AwsDeployment(config, session=aws.session).store
    assert isinstance(store, DynamoDBStateStore)
    return store


N_STEPS = 120


def count(i: int) -> int:
    return i


@workflow
async def long_count(ctx: WorkflowContext[int]) -> int:
    total = 0
    for i in range(N_STEPS):
        total += await ctx.step(count, i + ctx.request)
    return total


class _FailingBatches:
    """The DynamoDB client, but its first batch_write_item raises (a crash between the
    reset's transaction and its later deletes)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.failed = 0

    def batch_write_item(self, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed += 1
            raise ConnectionError("crash between the transaction and the deletes")
        return self._inner.batch_write_item(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_reset_dropping_more_than_a_transaction_holds(aws: Aws) -> None:
    """Resetting 120 steps to the first drops 119 items: 98 go with the transaction that
    reopens the instance, the rest after it. A crash in between leaves dropped items in the
    table; the repeated command sends the wake-up, the engine ignores the leftovers (their
    ids are fenced) and the instance completes."""
    config = _config(aws)
    client = WorkflowClient(config, session=aws.session)
    flows = _workflows(aws, config, long_count)
    client.start(long_count, 1, workflow_id="count-1")
    drain([flows])
    expected = sum(range(1, N_STEPS + 1))
    assert client.result("count-1", long_count) == expected
    store = _store(aws, config)
    failing = _FailingBatches(store.client)
    store.client = failing  # type: ignore[assignment]
    deployment = client.deployment
    repairs = Repairs(store, deployment.transport.send_to_workflow, deployment.clock.now,
                      child_workflow_id)
    try:
        repairs.reset("count-1", "1")
    except ConnectionError:
        pass
    else:  # pragma: no cover - the fake must have crashed the reset
        raise AssertionError("the reset did not crash")
    ids = [op.op_id for op in client.history("count-1").operations]
    assert ids[0] == "repair:1" and len(ids) == 1 + 1 + (N_STEPS - 1 - 98)
    assert client.status("count-1") is InstanceStatus.RUNNING
    drain([flows])  # nothing woke it
    assert client.status("count-1") is InstanceStatus.RUNNING
    again = client.reset("count-1", to="1")
    assert again.repair == 1 and len(again.dropped) == N_STEPS - 1
    drain([flows])
    assert client.result("count-1", long_count) == expected
    history = client.history("count-1").operations
    record = orjson.loads(history[0].request)
    assert record["kept"] == 1
    new = [op.op_id for op in history if op.op_id.startswith("r1.")]
    assert len(new) == N_STEPS - 1


def test_resume_from_the_command_line_on_a_deployments_table(
        aws: Aws, monkeypatch: Any) -> None:
    """`lambda-workflow resume ID --table T --queue-url Q` writes the repair in the table and
    puts its wake-up on the workflow queue; the deployment's workflow function completes it."""
    import io

    from lambda_workflow.cli import main

    config = _config(aws, "reserve", "ship")
    client = WorkflowClient(config, session=aws.session)
    services = [_service(aws, config, reserve, _reserve), _service(aws, config, ship, _ship)]
    client.start(order_v1, "desk", workflow_id="order-cli")
    drain([_workflows(aws, config, order_v1)])
    drain([_workflows(aws, config, order_v2), *services])  # the bad deploy fails it
    assert client.status("order-cli") is InstanceStatus.FAILED
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    out = io.StringIO()
    code = main(["resume", "order-cli", "--table", config.table, "--queue-url",
                 config.queue_url], out=out)
    assert code == 0, out.getvalue()
    assert out.getvalue().startswith("resume order-cli: repair 1, was failed")
    drain([_workflows(aws, config, order_v1), *services])  # the rollback runs it
    assert client.result("order-cli", order_v1) == "shipped desk x4 (4 units)"
    # A completed instance is not resumable: the command says why and exits 1.
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert main(["resume", "order-cli", "--table", config.table, "--queue-url",
                 config.queue_url], out=io.StringIO()) == 1
    assert "completed" in err.getvalue()
