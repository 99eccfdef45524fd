"""Warm instances on the AWS runtime (moto's server over HTTP): the workflow function keeps a
suspended instance alive between invocations of its container; an activation after a hit
reads the instance item (one consistent GetItem) and never queries the history, and the
history is the one a function without the cache records."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import bank_transaction as bank
import pytest

from lambda_workflow._runtime.engine import ActivationReport, Engine
from lambda_workflow.aws.config import AwsConfig, ConfigurationError
from lambda_workflow.aws.runtime import AwsDeployment
from lambda_workflow.models import History, InstanceStatus

from .bank import deploy_bank
from .conftest import Aws
from .harness import drain


def _shape(history: History) -> list[tuple[Any, ...]]:
    """A history without its wall-clock times (moto runs on the system clock)."""
    return [(op.op_id, op.seq, op.kind, op.name, op.request, op.request_digest, op.state,
             op.result, op.created_in, op.resolved_in, op.sent) for op in history.operations]


def _run(aws: Aws, monkeypatch: pytest.MonkeyPatch, cache: int
         ) -> tuple[History, list[ActivationReport], list[Engine], dict[str, int]]:
    engines: list[Engine] = []
    reports: list[ActivationReport] = []

    def wrap(deployment: AwsDeployment) -> None:
        deployment.config = dataclasses.replace(deployment.config, instance_cache=cache)
        make = deployment.engine

        def engine(workflows: Any) -> Engine:
            built = make(workflows)
            activate = built.activate

            def counted(workflow_id: str, messages: Any) -> ActivationReport:
                report = activate(workflow_id, messages)
                reports.append(report)
                return report

            built.activate = counted  # type: ignore[method-assign]
            engines.append(built)
            return built

        deployment.engine = engine  # type: ignore[method-assign]

    deployed = deploy_bank(aws, monkeypatch, wrap_workflow_deployment=wrap)
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=50),
                                   workflow_id="tx-warm")
    aws.requests.clear()
    # One poller at a time, one message per batch: each reply is its own activation.
    deployed.workflow_esm.batch_size = 1
    drain(deployed.pollers)
    assert handle.status() is InstanceStatus.COMPLETED and handle.result() == "success"
    return handle.history(), reports, engines, dict(aws.requests)


def test_the_bank_example_continues_warm_and_queries_its_history_once(
        aws: Aws, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """With the cache off each activation queries the instance's history; with it on only
    the first does (the miss), every later activation is a hit that reads the instance item
    with one consistent GetItem; the histories are the same. The function's activation log
    line says which."""
    off_history, off_reports, _, off_requests = _run(aws, monkeypatch, 0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lambda_workflow.aws"):
        on_history, on_reports, engines, on_requests = _run(aws, monkeypatch, 16)
    logged = [json.loads(r.getMessage()) for r in caplog.records
              if r.getMessage().startswith('{"event": "activation"')]
    assert [line["cache"] for line in logged] == [r.cache for r in on_reports]
    assert _shape(on_history) == _shape(off_history)
    assert {r.cache for r in off_reports} == {"off"}
    kinds = [r.cache for r in on_reports]
    assert kinds[0] == "miss" and set(kinds[1:]) == {"hit"} and len(kinds) >= 3
    (engine,) = engines
    assert engine.instance_cache.hits == len(kinds) - 1
    # The workflow function's history queries: one per activation without the cache, one
    # (the first activation's) with it.
    assert off_requests.get("dynamodb.Query", 0) >= len(off_reports)
    assert on_requests.get("dynamodb.Query", 0) == off_requests.get("dynamodb.Query", 0) - (
        len(off_reports) - 1)


def test_the_cache_size_comes_from_the_deployments_settings() -> None:
    base = {"LAMBDA_WORKFLOW_TABLE": "t", "LAMBDA_WORKFLOW_QUEUE_URL": "https://q/w.fifo"}
    assert AwsConfig.from_env(base).instance_cache == 128
    config = AwsConfig.from_env({**base, "LAMBDA_WORKFLOW_INSTANCE_CACHE": "0",
                                 "LAMBDA_WORKFLOW_INSTANCE_CACHE_OPERATIONS": "5000"})
    assert (config.instance_cache, config.instance_cache_operations) == (0, 5000)
    with pytest.raises(ConfigurationError, match="LAMBDA_WORKFLOW_INSTANCE_CACHE='many' is "
                                                 "not an integer"):
        AwsConfig.from_env({**base, "LAMBDA_WORKFLOW_INSTANCE_CACHE": "many"})
    with pytest.raises(ConfigurationError, match="LAMBDA_WORKFLOW_INSTANCE_CACHE=-2 must be "
                                                 "at least 0"):
        AwsConfig.from_env({**base, "LAMBDA_WORKFLOW_INSTANCE_CACHE": "-2"})
