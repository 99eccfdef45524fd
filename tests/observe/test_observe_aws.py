"""Traces and EMF metrics on the AWS runtime (DynamoDB, SQS, the workflow, service and timer
functions on moto's server): one trace across the instance's activations and its services,
no span twice, parent links and errors, and the metrics each invocation writes."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from aws.conftest import Aws
from aws.harness import EventSourceMapping, drain
from aws.test_timers import ShiftedClock
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from lambda_workflow.aws import (
    AwsDeployment,
    WorkflowClient,
    service_handler,
    timer_handler,
    workflow_handler,
)

from .otel_spans import Spans
from .traced_app import (
    ATTEMPTS,
    TOKENS,
    Parcel,
    doomed,
    pack,
    quote,
    quote_fn,
    refuse,
    refuse_fn,
    shipment,
)

A = "lambda_workflow."


def _attr(s: ReadableSpan, key: str) -> object:
    assert s.attributes is not None
    return s.attributes.get(A + key)


def _parent(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


def _sid(s: ReadableSpan) -> int:
    assert s.context is not None
    return int(s.context.span_id)


def _deploy(aws: Aws, clock: ShiftedClock) -> tuple[WorkflowClient, list[EventSourceMapping]]:
    config = replace(aws.config(services={"quote": f"sqs:{aws.create_queue()}",
                                          "refuse": f"sqs:{aws.create_queue()}"}),
                     timer_queue_url=aws.create_queue(aws.name("timers")),
                     callback_key="sixteen+ bytes of secret")
    deployment = AwsDeployment(config, session=aws.session, clock=clock)
    sqs = aws.client("sqs")
    pollers = [
        EventSourceMapping(sqs, config.queue_url, workflow_handler(
            shipment, pack, doomed, deployment=deployment)),
        EventSourceMapping(sqs, config.services["quote"].address,
                           service_handler(quote, quote_fn, deployment=deployment)),
        EventSourceMapping(sqs, config.services["refuse"].address,
                           service_handler(refuse, refuse_fn, deployment=deployment)),
        EventSourceMapping(sqs, config.timer_queue_url or "",
                           timer_handler(deployment=deployment)),
    ]
    return WorkflowClient(config, session=aws.session, clock=clock), pollers


def _ship(client: WorkflowClient, pollers: list[EventSourceMapping], clock: ShiftedClock,
          workflow_id: str) -> None:
    ATTEMPTS.pop("lamp", None)
    handle = client.start(shipment, Parcel(sku="lamp", qty=2), workflow_id=workflow_id)
    drain(pollers)
    for _ in range(6):  # the retry's 5 s, then the 60 s sleep, through the timer function
        if workflow_id in TOKENS:
            break
        clock.offset += 40
        drain(pollers)
    client.complete_callback(TOKENS.pop(workflow_id), "ana")
    drain(pollers)
    assert handle.result() == "LAMP 20 by ana: packed 2 lamp"


def test_one_trace_on_aws_across_activations_and_services(
        aws: Aws, clock: ShiftedClock, spans: Spans) -> None:
    client, pollers = _deploy(aws, clock)
    with spans.provider.get_tracer("test").start_as_current_span("api call") as starter:
        _ship(client, pollers, clock, "ship-aws")
    found = spans.finished()
    assert len({_sid(s) for s in found}) == len(found), "a span was emitted twice"
    assert {s.context.trace_id for s in found if s.context} == {
        starter.get_span_context().trace_id}

    parent = [s for s in found if _attr(s, "workflow_id") == "ship-aws"]
    activations = {int(str(_attr(s, "activation"))): s for s in parent
                   if s.name == "activation shipment"}
    n = len(activations)
    assert sorted(activations) == list(range(1, n + 1)) and n >= 5
    ops = [s for s in parent if _attr(s, "operation.kind") is not None]
    assert sorted(s.name for s in ops) == [
        "call quote", "call refuse", "callback approval", "child pack", "step label",
        "step label", "timer retry:label", "timer sleep"]
    for s in ops:
        created = int(str(_attr(s, "activation.created")))
        assert _parent(s) == _sid(activations[created]), s.name
        assert int(str(_attr(s, "activation.resolved"))) >= created
    (root,) = [s for s in parent if s.name == "workflow shipment"]
    assert _parent(root) == starter.get_span_context().span_id
    assert {_parent(s) for s in activations.values()} == {_sid(root)}

    calls = {s.name: s for s in ops if s.name.startswith("call ")}
    services = {s.name: s for s in found if s.name.startswith("service ")}
    assert set(services) == {"service quote", "service refuse"}
    for name in ("quote", "refuse"):
        assert _parent(services[f"service {name}"]) == _sid(calls[f"call {name}"])
    for s in (calls["call refuse"], services["service refuse"]):
        assert s.status.status_code is StatusCode.ERROR
        assert [e.name for e in s.events] == ["exception"]
    (child_root,) = [s for s in found if s.name == "workflow pack"]
    (child_op,) = [s for s in ops if s.name == "child pack"]
    assert _parent(child_root) == _sid(child_op)


def _validate_emf(doc: dict[str, object]) -> None:
    """The structure the EMF specification requires of a document."""
    meta = doc["_aws"]
    assert isinstance(meta, dict) and isinstance(meta["Timestamp"], int)
    directives = meta["CloudWatchMetrics"]
    assert isinstance(directives, list) and directives
    for directive in directives:
        assert isinstance(directive["Namespace"], str) and directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(doc[name], str)
        assert 1 <= len(directive["Metrics"]) <= 100
        for metric in directive["Metrics"]:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert metric["Unit"] in ("Count", "Milliseconds", "Seconds")
            value = doc[metric["Name"]]
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def test_the_workflow_function_writes_emf_metrics(
        aws: Aws, clock: ShiftedClock, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDA_WORKFLOW_METRICS", "on")
    monkeypatch.setenv("LAMBDA_WORKFLOW_METRICS_NAMESPACE", "Shop")
    client, pollers = _deploy(aws, clock)
    capsys.readouterr()
    _ship(client, pollers, clock, "ship-metrics")
    doomed_handle = client.start(doomed, Parcel(sku="desk", qty=1), workflow_id="doom-aws")
    drain(pollers)
    assert doomed_handle.status().value == "failed"
    # A message no workflow can take: dead-lettered (the queue's group is not its id).
    aws.client("sqs").send_message(
        QueueUrl=client.deployment.config.queue_url, MessageBody='{"v": 1, "kind": "nope"}',
        MessageGroupId="ship-metrics", MessageDeduplicationId="bad-1")
    drain(pollers)
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith('{"_aws"')]
    assert docs
    for doc in docs:
        _validate_emf(doc)
        assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Shop"
        assert doc["Function"] == "local"
    main = [d for d in docs if "Activations" in d]
    by_kind = Counter[str]()
    for d in docs:
        if "OperationKind" in d:
            assert d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
                ["Function", "OperationKind"]]
            by_kind[d["OperationKind"]] += d["Operations"]
    totals = Counter[str]()
    for d in main:
        for name in ("Activations", "WorkflowsCompleted", "WorkflowsFailed", "DeadLetters",
                     "ActivationErrors", "CacheHits", "CacheMisses"):
            totals[name] += d[name]
        assert len(d.get("ReplayTime", [])) == d["Activations"]
    # Operations by kind: what the three instances' histories hold (not the records kept
    # outside the workflow's order: the trace context, a child's link to its parent).
    history = client.history("ship-metrics").operations
    child = next(op.op_id for op in history if op.kind == "child")
    created = Counter[str]()
    for workflow_id in ("ship-metrics", f"ship-metrics~{child}", "doom-aws"):
        created.update(op.kind for op in client.history(workflow_id).operations
                       if op.kind not in ("trace", "parent"))
    assert by_kind == created
    assert totals["WorkflowsCompleted"] == 2  # the shipment and its child
    assert totals["WorkflowsFailed"] == 1
    assert totals["DeadLetters"] == 1
    assert totals["ActivationErrors"] == 0
    # Every activation is a hit or a miss with the warm instance cache on, neither with it
    # off; on, the shipment's later activations continue its warm instance.
    assert totals["CacheHits"] + totals["CacheMisses"] in (0, totals["Activations"])
    if totals["CacheMisses"]:
        assert totals["CacheHits"] >= 4, totals
