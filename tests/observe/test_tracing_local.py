"""Traces on the embedded runtime (LocalRuntime, SQLite): one trace per instance across its
activations, a span per activation and per operation emitted once, services joined through
the request's traceparent, errors on their spans."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import StatusCode

from lambda_workflow import _observe, tracing
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow._runtime.engine import ActivationReport
from lambda_workflow.errors import InvalidMessageError
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import parse_call_request, parse_workflow_message

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


def _runtime(path: Path, instance_cache: int = 0) -> LocalRuntime:
    rt = LocalRuntime(path / "state.db", clock=VirtualClock(1_700_000_000.0),
                      instance_cache=instance_cache)
    rt.register(shipment, pack, doomed)
    rt.implement(quote, quote_fn)
    rt.implement(refuse, refuse_fn)
    return rt


def _to_callback(rt: LocalRuntime, workflow_id: str) -> list[ActivationReport]:
    """Start a shipment and run it to its callback: the step's retry waits 5 s, the sleep
    60 s (the callback's timeout, an hour, does not fire)."""
    ATTEMPTS.pop("lamp", None)
    rt.start(shipment, Parcel(sku="lamp", qty=2), workflow_id=workflow_id)
    reports: list[ActivationReport] = []
    for wait in (5, 60, 0):
        reports += rt.run_until_idle(skip_time=False)
        rt.advance_time(wait)
    return reports + rt.run_until_idle(skip_time=False)


def _run_shipment(rt: LocalRuntime, workflow_id: str) -> list[ActivationReport]:
    reports = _to_callback(rt, workflow_id)
    rt.complete_callback(TOKENS[workflow_id], "ana")
    return reports + rt.run_until_idle(skip_time=False)
    assert rt.result(workflow_id) == "LAMP 20 by ana: packed 2 lamp"


def _by_id(found: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    out: dict[int, ReadableSpan] = {}
    for s in found:
        assert s.context is not None
        assert s.context.span_id not in out, f"duplicate span {s.name}"
        out[s.context.span_id] = s
    return out


def _parent(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


def _attr(s: ReadableSpan, key: str) -> object:
    assert s.attributes is not None
    return s.attributes.get(A + key)


@pytest.mark.parametrize("instance_cache", [0, 64])
def test_one_trace_across_activations_with_a_span_per_activation_and_operation(
        tmp_path: Path, spans: Spans, instance_cache: int) -> None:
    """The same spans whether each activation replays or continues its warm instance."""
    tracer = spans.provider.get_tracer("test")
    with (_runtime(tmp_path, instance_cache) as rt,
          tracer.start_as_current_span("http request") as starter):
        reports = _run_shipment(rt, "ship-1")
    caches = Counter(r.cache for r in reports if r.workflow_id == "ship-1")
    assert caches == ({"off": 7} if not instance_cache else {"miss": 1, "hit": 6})
    found = spans.finished()
    by_id = _by_id(found)
    starter_ctx = starter.get_span_context()
    # One trace: the starter's, through the parent, the child workflow and both services.
    assert {s.context.trace_id for s in found if s.context} == {starter_ctx.trace_id}

    parent = [s for s in found if _attr(s, "workflow_id") == "ship-1"]
    activations = sorted((s for s in parent if s.name == "activation shipment"),
                         key=lambda s: int(str(_attr(s, "activation"))))
    assert [_attr(s, "activation") for s in activations] == [1, 2, 3, 4, 5, 6, 7]
    # Operation spans by the activation that recorded their outcome: none twice.
    ops = [s for s in parent if _attr(s, "operation.kind") is not None]
    per_activation = Counter(int(str(_attr(s, "activation.resolved"))) for s in ops)
    assert per_activation == {2: 1, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1}
    assert sorted(s.name for s in ops) == [
        "call quote", "call refuse", "callback approval", "child pack", "step label",
        "step label", "timer retry:label", "timer sleep"]
    (root,) = [s for s in parent if s.name == "workflow shipment"]
    assert _parent(root) == starter_ctx.span_id
    assert all(_parent(s) == root.context.span_id for s in activations if root.context)
    activation_ids = {int(str(_attr(s, "activation"))): s.context.span_id
                      for s in activations if s.context}
    for s in ops:  # under the activation that created the operation
        assert _parent(s) == activation_ids[int(str(_attr(s, "activation.created")))], s.name
    # Start and end from the records: the sleep lasted its 60 virtual seconds.
    (sleep,) = [s for s in ops if s.name == "timer sleep"]
    assert sleep.end_time is not None and sleep.start_time is not None
    assert sleep.end_time - sleep.start_time == 60 * 10**9

    # The services' spans join under their call's span.
    services = {s.name: s for s in found if s.name.startswith("service ")}
    calls = {s.name: s for s in ops if s.name.startswith("call ")}
    assert set(services) == {"service quote", "service refuse"}
    for name in ("quote", "refuse"):
        assert _parent(services[f"service {name}"]) == calls[f"call {name}"].context.span_id

    # The child workflow's trace continues under the parent's child operation.
    child = [s for s in found if s.name in ("workflow pack", "activation pack")]
    (child_root,) = [s for s in child if s.name == "workflow pack"]
    (child_op,) = [s for s in ops if s.name == "child pack"]
    assert child_op.context is not None
    assert _parent(child_root) == child_op.context.span_id
    assert len(found) == 1 + 7 + 8 + 1 + 2 + 2  # starter, activations, ops, root, services,
    assert len(by_id) == len(found)             # child's activation and root


def test_errors_are_recorded_on_their_spans(tmp_path: Path, spans: Spans) -> None:
    with _runtime(tmp_path) as rt:
        _run_shipment(rt, "ship-2")
        rt.start(doomed, Parcel(sku="desk", qty=1), workflow_id="doom-1")
        rt.run_until_idle()
    found = spans.finished()
    refused = [s for s in found if s.name in ("call refuse", "service refuse")]
    assert len(refused) == 2
    for s in refused:
        assert s.status.status_code is StatusCode.ERROR
        (event,) = [e for e in s.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.message"] == "no stock of lamp"
    steps = sorted((s for s in found if s.name == "step label"),
                   key=lambda s: int(str(_attr(s, "step.attempt"))))
    assert [s.status.status_code for s in steps] == [StatusCode.ERROR, StatusCode.UNSET]
    assert steps[0].events[0].attributes == {"exception.type": "RuntimeError",
                                             "exception.message": "printer jammed"}
    failed = [s for s in found if _attr(s, "workflow_id") == "doom-1"
              and s.status.status_code is StatusCode.ERROR]
    assert sorted(s.name for s in failed) == ["activation doomed", "workflow doomed"]
    assert "over budget: 10" in (failed[0].status.description or "")


def test_replays_emit_no_span_again(tmp_path: Path, spans: Spans) -> None:
    """A runtime reopened on the same file replays the waiting instance from its history:
    the spans of its earlier operations are not emitted again."""
    with _runtime(tmp_path) as rt:
        _to_callback(rt, "ship-3")
    before = Counter(s.name for s in spans.finished())
    assert before["activation shipment"] == 5
    with _runtime(tmp_path) as rt:
        rt.complete_callback(TOKENS["ship-3"], "bo")
        rt.run_until_idle(skip_time=False)
    found = spans.finished()
    _by_id(found)
    new = Counter(s.name for s in found) - before
    assert new == {"activation shipment": 2, "callback approval": 1, "child pack": 1,
                   "workflow shipment": 1, "activation pack": 1, "workflow pack": 1}
    assert len({s.context.trace_id for s in found if s.context}) == 1


def test_the_trace_context_is_recorded_once_outside_the_workflow_order(
        tmp_path: Path, spans: Spans) -> None:
    with _runtime(tmp_path) as rt:
        _run_shipment(rt, "ship-4")
        ops = rt.history("ship-4").operations
    traces = [op for op in ops if op.kind == "trace"]
    assert len(traces) == 1 and traces[0].op_id == "trace"
    recorded = json.loads(traces[0].request)
    assert {s.context.trace_id for s in spans.finished() if s.context} == {
        int(recorded["trace_id"], 16)}


def test_an_instance_started_before_tracing_gets_one_trace_from_then_on(
        tmp_path: Path) -> None:
    """A history without a trace record (tracing was off at its start, or recorded by an
    earlier version) still replays; its later activations share one trace."""
    spans = Spans()
    with _runtime(tmp_path) as rt:
        _to_callback(rt, "ship-5")
        assert not [op for op in rt.history("ship-5").operations if op.kind == "trace"]
        tracing.enable(spans.provider)
        try:
            rt.complete_callback(TOKENS["ship-5"], "cy")
            rt.run_until_idle(skip_time=False)
        finally:
            tracing.disable()
        assert rt.result("ship-5") == "LAMP 20 by cy: packed 2 lamp"
    found = spans.finished()
    assert len({s.context.trace_id for s in found if s.context}) == 1
    assert Counter(s.name for s in found)["activation shipment"] == 2


def test_messages_carry_the_traceparent_and_a_malformed_one_is_refused() -> None:
    body = (b'{"v": 1, "kind": "call", "workflow_id": "w", "call_id": "1", "service": "s", '
            b'"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}')
    assert parse_call_request(body).traceparent == (
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    old = b'{"v": 1, "kind": "call", "workflow_id": "w", "call_id": "1", "service": "s"}'
    assert parse_call_request(old).traceparent is None
    with pytest.raises(InvalidMessageError, match="traceparent"):
        parse_workflow_message(b'{"v": 1, "kind": "start", "workflow_id": "w", '
                               b'"workflow": "x", "traceparent": "00-abc-01"}')


def test_tracing_off_imports_no_opentelemetry_and_records_nothing(tmp_path: Path) -> None:
    code = f"""
import json, sys
sys.path[:0] = {[str(Path(__file__).parent)]!r}
from traced_app import *
from lambda_workflow.local import LocalRuntime
rt = LocalRuntime()
rt.register(shipment, pack)
rt.implement(quote, quote_fn)
rt.implement(refuse, refuse_fn)
rt.start(shipment, Parcel(sku="x", qty=1), workflow_id="w")
rt.run_until_idle()
kinds = [op.kind for op in rt.history("w").operations]
print(json.dumps([sorted(m for m in sys.modules if m.startswith("opentelemetry")), kinds]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    modules, kinds = json.loads(run.stdout)
    assert modules == []
    assert "trace" not in kinds and "callback" in kinds


def test_a_start_with_zero_trace_ids_starts_a_trace_of_its_own(
        tmp_path: Path, spans: Spans) -> None:
    """W3C calls all-zero ids invalid; the message's shape is fine, so the instance runs and
    gets a new trace (it failed its activation with ValueError on every delivery)."""
    zero = "00-00000000000000000000000000000000-0000000000000000-01"
    with _runtime(tmp_path) as rt:
        rt.queue.send(orjson.dumps({"v": 1, "kind": "start", "workflow_id": "p-0",
                                    "workflow": "pack", "input": {"sku": "cup", "qty": 3},
                                    "traceparent": zero}),
                      group_id="p-0", dedup_id="p-0")
        rt.run_until_idle()
        assert rt.result("p-0") == "packed 3 cup"
    (root,) = spans.named("workflow pack")
    assert root.parent is None and root.context is not None and root.context.trace_id != 0


def test_a_span_started_in_another_thread_draws_its_own_id(spans: Spans) -> None:
    """An activation chooses its spans' ids; a service's span started meanwhile in another
    thread (the AWS harness runs functions in threads) must not take the chosen id."""
    assert _observe.TRACING is not None
    assert _observe.TRACING.tracer is not None  # resolved at the first span
    ids = _observe.TRACING._ids
    assert ids is not None
    ids.span_id = 0xABC
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(ids.generate_span_id()))
    thread.start()
    thread.join()
    assert seen[0] != 0xABC
    assert ids.generate_span_id() == 0xABC


class _Broken(SpanProcessor):
    """A span processor whose export fails."""

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("collector unreachable")


def test_a_failing_span_processor_never_fails_the_workflow(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The spans are lost with a warning; the workflow and its services run as untraced
    (before, the activation raised after recording, and its messages were retried until
    the instance was failed as poison)."""
    provider = TracerProvider()
    provider.add_span_processor(_Broken())
    tracing.enable(provider)
    try:
        with _runtime(tmp_path) as rt:
            _run_shipment(rt, "ship-6")
    finally:
        tracing.disable()
    warnings = [r.getMessage() for r in caplog.records if r.name == "lambda_workflow.tracing"]
    assert warnings and all("failed; its spans are lost" in w for w in warnings)


def test_each_run_after_a_reset_has_its_own_instance_span(
        tmp_path: Path, spans: Spans) -> None:
    """An instance that ends, is reset and ends again emits its instance span once per run
    (before, all three runs emitted one span id: two duplicates), under the starter's span,
    in the one trace; the activations of a run are under that run's span."""
    with _runtime(tmp_path) as rt:
        with spans.provider.get_tracer("test").start_as_current_span("starter") as starter:
            rt.start(doomed, Parcel(sku="desk", qty=1), workflow_id="doom-2")
        rt.run_until_idle()
        for to in ("1", "0"):
            rt.reset("doom-2", to)
            rt.run_until_idle()
        assert rt.status("doom-2").value == "failed"
    found = spans.finished()
    by_id = _by_id(found)
    assert len({s.context.trace_id for s in found if s.context}) == 1
    roots = sorted((s for s in found if s.name == "workflow doomed"),
                   key=lambda s: int(str(_attr(s, "repairs"))))
    assert [_attr(s, "repairs") for s in roots] == [0, 1, 2]
    assert {_parent(s) for s in roots} == {starter.get_span_context().span_id}
    for s in found:
        if s.name == "activation doomed":
            root = by_id[_parent(s) or 0]
            assert _attr(root, "repairs") == _attr(s, "repairs")


def test_the_global_provider_set_after_enable_gets_the_chosen_ids() -> None:
    """enable() before the application sets the global provider (a handler module created
    first): the tracer is looked up at the first span, so the spans have the derived ids and
    the activations' parent is the instance's span (before, a proxy tracer drew random ids
    and the parent links named spans that never existed)."""
    code = f"""
import json, sys
sys.path[:0] = {[str(Path(__file__).parent)]!r}
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from otel_spans import Spans
from traced_app import Parcel, pack
from lambda_workflow import tracing
from lambda_workflow.local import LocalRuntime
tracing.enable()
with LocalRuntime() as rt:  # traced into the void: no provider yet
    rt.register(pack)
    rt.start(pack, Parcel(sku="cup", qty=1), workflow_id="before")
    rt.run_until_idle()
recorder = Spans()
trace.set_tracer_provider(recorder.provider)
with LocalRuntime() as rt:
    rt.register(pack)
    rt.start(pack, Parcel(sku="cup", qty=1), workflow_id="p")
    rt.run_until_idle()
spans = {{s.name: s for s in recorder.finished()}}
print(json.dumps([spans["activation pack"].parent.span_id,
                  spans["workflow pack"].context.span_id]))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    parent, instance = json.loads(run.stdout)
    assert parent == instance


def test_a_request_re_sent_by_recovery_carries_its_call_span(
        tmp_path: Path, spans: Spans) -> None:
    """A runtime reopened on the state file sends the pending requests again; the service's
    span still joins under the call's span (before, the re-sent request had no traceparent
    and the service's span started a trace of its own)."""
    first = LocalRuntime(tmp_path / "state.db", clock=VirtualClock(1_700_000_000.0))
    first.register(shipment, pack, doomed)  # no service: the quote request waits
    first.start(shipment, Parcel(sku="lamp", qty=2), workflow_id="ship-7")
    first.run_until_idle()
    first.close()
    with _runtime(tmp_path) as rt:  # recovers: re-sends the quote request
        rt.run_until_idle(skip_time=False)
    (call,) = spans.named("call quote")
    (service,) = [s for s in spans.named("service quote")
                  if _attr(s, "workflow_id") == "ship-7"]
    assert call.context is not None and service.parent is not None
    assert service.parent.span_id == call.context.span_id
    assert service.context is not None and service.context.trace_id == call.context.trace_id


def test_history_and_timeline_show_the_trace_record_as_the_trace_not_an_operation(
        tmp_path: Path, spans: Spans) -> None:
    with _runtime(tmp_path) as rt:
        _run_shipment(rt, "ship-9")
        recorded = json.loads(next(op for op in rt.history("ship-9").operations
                                   if op.kind == "trace").request)
    db = str(tmp_path / "state.db")
    for extra, check_trace_line in (([], True), (["--timeline"], False)):
        out = subprocess.run([sys.executable, "-m", "lambda_workflow", "history", "--db", db,
                              "ship-9", *extra], capture_output=True, text=True, check=True)
        assert "#trace" not in out.stdout and " trace " not in out.stdout, out.stdout
        if check_trace_line:
            assert f"  trace: {recorded['trace_id']}" in out.stdout.splitlines()
