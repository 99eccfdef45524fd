"""What tracing costs, and what a trace holds: the bank example and a 1,000-item map.

Run:  .venv/bin/python benchmarks/tracing.py [--calls 1000] [--repeats 21] [--items 1000]
                                              [--json PATH]

1. Overhead on a replayed call. An instance of a workflow that makes ``--calls`` calls in a
   row waits on a callback after them; each measured activation receives a duplicate reply, replays
   every recorded call and records nothing (the warm instance cache is off:
   ``LAMBDA_WORKFLOW_INSTANCE_CACHE=0``, so every activation replays). Tracing off and on
   alternate within the same run (an SDK ``TracerProvider`` with a ``SimpleSpanProcessor``
   into an ``InMemorySpanExporter``: the span is built and exported in the activation), so
   both see the same machine. Reported per replayed call (activation time / calls): the
   median of ``--repeats`` runs of 20 activations each, the spread (min-max), and the ratio
   on/off. Replayed operations emit no span: the difference is the activation's own span and
   reading the trace context.
2. Spans per activation, as the in-memory exporter saw them: the bank example's three
   instances (examples/bank_transaction.py) and a map over ``--items`` items (each item one
   service call, a child context). Per activation: its span, the operation spans it emitted
   (an operation's span comes from the activation that recorded its outcome), and the
   services' spans; with the checks that every span id is unique and that each instance has
   one trace id.

Written to benchmarks/results/tracing.json (``--json`` elsewhere); docs/observability.md cites a
run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

os.environ["LAMBDA_WORKFLOW_INSTANCE_CACHE"] = "0"  # every activation replays
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "examples")]

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from lambda_workflow import (  # noqa: E402
    Completion,
    Service,
    WorkflowContext,
    _core,
    tracing,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock  # noqa: E402
from lambda_workflow.local import LocalRuntime  # noqa: E402
from lambda_workflow.models import CallResultMessage  # noqa: E402

echo = Service("echo", int, int)
A = "lambda_workflow."


@workflow
async def chain(ctx: WorkflowContext[int]) -> int:
    total = 0
    for i in range(ctx.request):
        total += await ctx.call(echo, i)
    return total + await ctx.create_callback("done", int)  # waits here


@workflow
async def fan_out(ctx: WorkflowContext[int]) -> int:
    result = await ctx.map(list(range(ctx.request)), lambda n: ctx.call(echo, n),
                           completion=Completion(all_completed=True))
    return sum(result.values())


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def overhead(calls: int, repeats: int, batch: int = 20) -> dict[str, Any]:
    """Per replayed call, tracing off and on, alternating in one run."""
    provider, exporter = _provider()
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(chain)
    served = {"n": 0}

    def serve(n: int) -> int:
        served["n"] += 1
        return n

    rt.implement(echo, serve)
    tracing.enable(provider)  # the instance's trace context is recorded at its start
    rt.start(chain, calls, workflow_id="chain")
    rt.run_until_idle()
    tracing.disable()
    history = rt.history("chain")
    waiting = [op.kind for op in history.operations if op.state.value == "pending"]
    assert waiting == ["callback"] and served["n"] == calls, waiting
    # The reply to the last recorded call, again: a duplicate that changes nothing.
    last = [op for op in history.operations if op.kind == "call"][calls - 1]
    duplicate = CallResultMessage(workflow_id="chain", call_id=last.op_id, ok=True,
                                  value=calls - 1)
    rt.queue.receive(10)  # the engine is driven directly below; nothing else runs

    def run(traced: bool) -> float:
        if traced:
            tracing.enable(provider)
        start = time.perf_counter()
        for _ in range(batch):
            report = rt.engine.activate("chain", [duplicate])
            assert report.status == "suspended" and report.duplicates == [last.op_id]
        elapsed = time.perf_counter() - start
        tracing.disable()
        exporter.clear()
        return elapsed / batch / calls * 1e6  # microseconds per replayed call

    run(False)
    run(True)  # warm-up
    off: list[float] = []
    on: list[float] = []
    for _ in range(repeats):
        off.append(run(False))
        on.append(run(True))
    spans_per_activation = _spans_per_traced_activation(rt, provider, exporter, duplicate)
    rt.close()
    m_off, m_on = statistics.median(off), statistics.median(on)
    return {"calls": calls, "repeats": repeats, "activations_per_repeat": batch,
            "off_us_per_call": {"median": m_off, "min": min(off), "max": max(off)},
            "on_us_per_call": {"median": m_on, "min": min(on), "max": max(on)},
            "ratio_on_off": m_on / m_off,
            "added_ms_per_activation": (m_on - m_off) * calls / 1000,
            "spans_per_replaying_activation": spans_per_activation}


def _spans_per_traced_activation(rt: LocalRuntime, provider: TracerProvider,
                                 exporter: InMemorySpanExporter,
                                 duplicate: CallResultMessage) -> int:
    exporter.clear()
    tracing.enable(provider)
    rt.engine.activate("chain", [duplicate])
    tracing.disable()
    n = len(exporter.get_finished_spans())
    exporter.clear()
    return n


def _per_activation(found: list[ReadableSpan]) -> dict[str, Any]:
    """Spans of each instance by activation: its own span, operation spans, services."""
    ids = [s.context.span_id for s in found if s.context is not None]
    out: dict[str, Any] = {"spans": len(found), "unique_span_ids": len(set(ids)) == len(ids),
                           "instances": {}}
    by_instance: dict[str, list[ReadableSpan]] = defaultdict(list)
    for s in found:
        wid = (s.attributes or {}).get(A + "workflow_id")
        by_instance[str(wid)].append(s)
    for wid, spans in sorted(by_instance.items()):
        rows: dict[int, Counter[str]] = defaultdict(Counter)
        for s in spans:
            attrs = s.attributes or {}
            if s.name.startswith("service "):
                rows[0]["service"] += 1  # services run between activations
            elif s.name.startswith("activation "):
                rows[int(str(attrs[A + "activation"]))]["activation"] += 1
            elif s.name.startswith("workflow "):
                rows[int(str(attrs[A + "activations"]))]["workflow"] += 1
            else:
                rows[int(str(attrs[A + "activation.resolved"]))][
                    str(attrs[A + "operation.kind"])] += 1
        traces = {s.context.trace_id for s in spans if s.context is not None}
        out["instances"][wid] = {
            "trace_ids": len(traces),
            "by_activation": {str(k): dict(v) for k, v in sorted(rows.items()) if k},
            "service_spans": rows[0]["service"]}
    return out


def bank() -> dict[str, Any]:
    import bank_transaction

    provider, exporter = _provider()
    tracing.enable(provider)
    try:
        with LocalRuntime(clock=VirtualClock(1_700_000_000.0)) as rt:
            bank_transaction.setup(rt)
            for wid, tx in bank_transaction.EXAMPLES.items():
                rt.start(bank_transaction.make_transaction, tx, workflow_id=wid)
            rt.run_until_idle()
    finally:
        tracing.disable()
    return _per_activation(list(exporter.get_finished_spans()))


def big_map(items: int) -> dict[str, Any]:
    provider, exporter = _provider()
    tracing.enable(provider)
    try:
        with LocalRuntime(clock=VirtualClock(1_700_000_000.0)) as rt:
            rt.register(fan_out)
            rt.implement(echo, lambda n: n)
            rt.start(fan_out, items, workflow_id="map")
            rt.run_until_idle()
            assert rt.result("map") == items * (items - 1) // 2
    finally:
        tracing.disable()
    found = list(exporter.get_finished_spans())
    result = _per_activation(found)
    inst = result["instances"]["map"]
    per_kind = Counter[str]()
    for row in inst["by_activation"].values():
        per_kind.update(row)
    inst["totals"] = dict(per_kind)
    inst["activations"] = per_kind["activation"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/tracing.json")
    args = parser.parse_args(argv)

    cost = overhead(args.calls, args.repeats)
    print(f"Overhead on a replayed call ({args.calls} recorded calls, "
          f"{args.repeats} x {cost['activations_per_repeat']} activations each way, core: "
          f"{_core.IMPLEMENTATION})")
    print(f"{'tracing':<8} {'median us/call':>15} {'min':>8} {'max':>8}")
    for key, label in (("off_us_per_call", "off"), ("on_us_per_call", "on")):
        row = cost[key]
        print(f"{label:<8} {row['median']:>15.3f} {row['min']:>8.3f} {row['max']:>8.3f}")
    print(f"ratio on/off: {cost['ratio_on_off']:.3f}; added per activation: "
          f"{cost['added_ms_per_activation']:.3f} ms; spans per replaying activation: "
          f"{cost['spans_per_replaying_activation']}")

    traces = {"bank": bank(), "map": big_map(args.items)}
    for name, seen in traces.items():
        print(f"\n{name}: {seen['spans']} spans, every span id unique: "
              f"{seen['unique_span_ids']}")
        for wid, inst in seen["instances"].items():
            print(f"  {wid}: {inst['trace_ids']} trace id(s), {inst['service_spans']} "
                  "service spans")
            rows = inst["by_activation"]
            shown = list(rows.items())
            if len(shown) > 6:
                shown = [*shown[:3], ("...", {}), *shown[-2:]]
            for activation, row in shown:
                print(f"    activation {activation:>4}: "
                      + ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
    result = {"benchmark": "tracing", "python": platform.python_version(),
              "core": _core.IMPLEMENTATION, "machine": platform.machine(),
              "note": "timings from one run; others' work shared the machine unless "
                      "rerun on a quiet one",
              "overhead": cost, "traces": traces}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
