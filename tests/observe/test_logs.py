"""ctx.logger's structured lines: the workflow id and name, run, activation and operation on
every record, as JSON (lambda_workflow.logs.JsonFormatter) and through AWS Lambda
Powertools' Logger; nothing during replay."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from aws_lambda_powertools import Logger
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, logs, workflow
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.local import LocalRuntime


class Item(BaseModel):
    sku: str


price = Service("price", Item, int)


@workflow
async def priced(ctx: WorkflowContext[Item]) -> int:
    ctx.logger.info("pricing %s", ctx.request.sku)
    first = await ctx.call(price, ctx.request)
    ctx.logger.info("first price %d", first)
    second = await ctx.call(price, Item(sku=ctx.request.sku + "-2"))
    ctx.logger.warning("total %d", first + second, extra={"currency": "EUR"})
    return first + second


@pytest.fixture
def workflow_logger() -> Iterator[logging.Logger]:
    """The workflow logger, put back as it was after the test."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


def _run(instance_cache: int = 0) -> None:
    with LocalRuntime(clock=VirtualClock(1_700_000_000.0), instance_cache=instance_cache) as rt:
        rt.register(priced)
        rt.implement(price, lambda item: len(item.sku))
        rt.start(priced, Item(sku="lamp"), workflow_id="p-1")
        reports = rt.run_until_idle()
        assert rt.result("p-1") == 4 + 6
    # With the warm instance cache, activations 2 and 3 continue the live instance.
    assert [r.cache for r in reports] == (["off"] * 3 if not instance_cache
                                          else ["miss", "hit", "hit"])


@pytest.mark.parametrize("instance_cache", [0, 16])
def test_json_lines_carry_the_workflow_fields_once_each(
        workflow_logger: logging.Logger, instance_cache: int) -> None:
    """The same fields whether each activation replays or continues a warm instance (the
    operation was None in warm activations: the id was looked up in the history the
    instance was first replayed from)."""
    stream = io.StringIO()
    logs.use_json(stream)
    _run(instance_cache)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(d["message"], d["activation"], d["operation"], d["level"]) for d in lines] == [
        ("pricing lamp", 1, None, "INFO"),
        ("first price 4", 2, "1", "INFO"),
        ("total 10", 3, "2", "WARNING")]
    assert {(d["workflow_id"], d["workflow"], d["run"], d["logger"]) for d in lines} == {
        ("p-1", "priced", 0, "lambda_workflow.workflow")}


def test_the_records_carry_the_fields_for_any_handler(
        workflow_logger: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.LOGGER_NAME)
    _run()
    records = [r for r in caplog.records if r.name == logs.LOGGER_NAME]
    assert [(r.getMessage(), r.__dict__["activation"], r.__dict__["operation"])
            for r in records] == [("pricing lamp", 1, None), ("first price 4", 2, "1"),
                                  ("total 10", 3, "2")]
    assert records[-1].__dict__["currency"] == "EUR"  # the caller's extra is kept


def test_lines_go_through_a_powertools_logger(workflow_logger: logging.Logger) -> None:
    stream = io.StringIO()
    pt = Logger(service="shop", stream=stream)
    logs.use_powertools(pt)
    _run()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [d["message"] for d in lines] == ["pricing lamp", "first price 4", "total 10"]
    last = lines[-1]
    assert last["service"] == "shop" and last["level"] == "WARNING"
    assert {k: last[k] for k in logs.FIELDS} == {
        "workflow_id": "p-1", "workflow": "priced", "run": 0, "activation": 3,
        "operation": "2"}
    assert last["currency"] == "EUR"


def test_use_powertools_refuses_another_logger() -> None:
    with pytest.raises(TypeError, match=r"aws_lambda_powertools\.Logger, got Logger"):
        logs.use_powertools(logging.getLogger("x"))


def test_the_log_format_variable_is_checked(monkeypatch: pytest.MonkeyPatch,
                                            workflow_logger: logging.Logger) -> None:
    monkeypatch.setenv("LAMBDA_WORKFLOW_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="must be json or text, got 'xml'"):
        logs.configure_from_environment()
    workflow_logger.handlers.clear()
    monkeypatch.setenv("LAMBDA_WORKFLOW_LOG_FORMAT", "json")
    logs.configure_from_environment()
    assert isinstance(workflow_logger.handlers[0].formatter, logs.JsonFormatter)
