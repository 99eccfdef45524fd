"""What recording map items as child contexts saves: user code run, activations and writes.

Run:  .venv/bin/python benchmarks/batch_items.py [--items 1000] [--json PATH]

A map over ``--items`` items (each item: one service call, the fan_out example's shape) runs
on the embedded runtime twice per concurrency setting: flat (``flat=True``: today's shape
before issue 12, where each item's operations are the parent's and every replay runs every
started item's function again) and nested (the default: each item a child context). Counted,
by instrumenting the item function and the state store (nothing is timed):

- item-function calls in all, and the most in one activation;
- activations of the workflow;
- operation records written (new operations) and outcomes recorded (replies, step and
  context results): on DynamoDB each is one item write (1 WRU for items under 1 KB);
- the CPU time of the whole run (``time.process_time``: workflow replays, the services'
  trivial bodies and the SQLite store together), one run each, for a rough scale only.

Item 3 beside it: one step of work (a call and its result) done by a child workflow
(``ctx.child``: an instance of its own) and by an inline child context
(``ctx.run_in_child_context``): activations of all instances, operation records and outcomes
written, instances created.

Written to benchmarks/results/batch_items.json; docs/primitives.md cites a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lambda_workflow import Completion, Service, WorkflowContext, workflow  # noqa: E402
from lambda_workflow._runtime.clock import VirtualClock  # noqa: E402
from lambda_workflow.local import LocalRuntime  # noqa: E402
from lambda_workflow.models import OperationRecord, Outcome  # noqa: E402

echo = Service("echo", int, int)
CALLS: Counter[int] = Counter()  # activation -> item-function calls
SETTINGS: dict[str, Any] = {"flat": False, "max_concurrency": None}
_ACTIVATION = {"n": 0}


@workflow
async def fan_out(ctx: WorkflowContext[int]) -> int:
    async def item(n: int) -> int:
        CALLS[_ACTIVATION["n"]] += 1
        return await ctx.call(echo, n)

    result = await ctx.map(list(range(ctx.request)), item, flat=SETTINGS["flat"],
                           max_concurrency=SETTINGS["max_concurrency"],
                           completion=Completion(all_completed=True))
    return sum(result.values())


def measure(items: int, flat: bool, max_concurrency: int | None) -> dict[str, Any]:
    CALLS.clear()
    SETTINGS.update(flat=flat, max_concurrency=max_concurrency)
    writes = Counter[str]()
    with LocalRuntime(clock=VirtualClock(1_700_000_000.0)) as rt:
        rt.register(fan_out)
        rt.implement(echo, lambda n: n)
        store = rt.store
        commit = store.commit_activation
        add = store.add_operations
        outcomes = store.record_outcomes

        def counted_commit(workflow_id: str, done: Sequence[Outcome],
                           ops: Sequence[OperationRecord], activation: int,
                           at: float) -> list[str]:
            _ACTIVATION["n"] = activation + 1
            writes["operations"] += len(ops)
            writes["outcomes"] += len(done)
            return commit(workflow_id, done, ops, activation, at)

        def counted_add(workflow_id: str, ops: Sequence[OperationRecord],
                        activation: int) -> None:
            writes["operations"] += len(ops)
            add(workflow_id, ops, activation)

        def counted_outcomes(workflow_id: str, done: Sequence[Outcome], activation: int,
                             at: float) -> list[str]:
            writes["outcomes"] += len(done)
            return outcomes(workflow_id, done, activation, at)

        store.commit_activation = counted_commit  # type: ignore[method-assign, assignment]
        store.add_operations = counted_add  # type: ignore[method-assign, assignment]
        store.record_outcomes = counted_outcomes  # type: ignore[method-assign, assignment]
        _ACTIVATION["n"] = 1
        began = time.process_time()
        handle = rt.start(fan_out, items)
        reports = [r for r in rt.run_until_idle() if r.workflow_name == "fan_out"]
        cpu = time.process_time() - began
        assert handle.result() == sum(range(items)), handle.result()
        records = len(handle.history().operations)
    return {"shape": "flat" if flat else "nested", "max_concurrency": max_concurrency,
            "items": items, "activations": len(reports),
            "item_function_calls": sum(CALLS.values()),
            "most_in_one_activation": max(CALLS.values()),
            "item_function_calls_in_last_activation": CALLS[max(CALLS)],
            "operation_records": records, "operations_written": writes["operations"],
            "outcomes_written": writes["outcomes"], "cpu_seconds": round(cpu, 2)}


@workflow
async def check_child(ctx: WorkflowContext[int]) -> int:
    return await ctx.call(echo, ctx.request)


async def _check_inline(ctx: WorkflowContext[Any], n: int) -> int:
    return await ctx.call(echo, n)


@workflow
async def parent(ctx: WorkflowContext[bool]) -> int:
    if ctx.request:
        return await ctx.run_in_child_context(_check_inline, 7, name="check")
    return await ctx.child(check_child, 7)


def child_versus_context() -> list[dict[str, Any]]:
    rows = []
    for inline in (False, True):
        writes = Counter[str]()
        with LocalRuntime(clock=VirtualClock(1_700_000_000.0)) as rt:
            rt.register(parent, check_child)
            rt.implement(echo, lambda n: n)
            commit = rt.store.commit_activation

            def counted(workflow_id: str, done: Sequence[Outcome],
                        ops: Sequence[OperationRecord], activation: int, at: float,
                        writes: Counter[str] = writes, commit: Any = commit) -> list[str]:
                writes["operations"] += len(ops)
                writes["outcomes"] += len(done) + sum(op.state.value != "pending"
                                                      for op in ops)
                return commit(workflow_id, done, ops, activation, at)

            rt.store.commit_activation = counted  # type: ignore[method-assign, assignment]
            handle = rt.start(parent, inline)
            reports = rt.run_until_idle()
            assert handle.result() == 7
            rows.append({"shape": "run_in_child_context" if inline else "ctx.child",
                         "activations": len(reports),
                         "instances": len(rt.store.list_instances()),
                         "operations_written": writes["operations"],
                         "outcomes_written": writes["outcomes"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "batch_items.json")
    args = parser.parse_args()
    rows = [measure(args.items, flat, limit)
            for limit in (None, 50) for flat in (True, False)]
    keys = ["shape", "max_concurrency", "activations", "item_function_calls",
            "most_in_one_activation", "item_function_calls_in_last_activation",
            "operation_records", "operations_written", "outcomes_written", "cpu_seconds"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    children = child_versus_context()
    print("shape | activations | instances | operations_written | outcomes_written")
    for row in children:
        print(" | ".join(str(row[k]) for k in ("shape", "activations", "instances",
                                               "operations_written", "outcomes_written")))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"items": args.items, "runs": rows,
                                     "child_versus_context": children}, indent=2) + "\n")


if __name__ == "__main__":
    main()
