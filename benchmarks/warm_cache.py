"""Warm instances (docs/design.md, "Warm instances"): what an activation costs with the cache
on and off, and what a 1,000-call sequential workflow's whole life costs.

Run:  .venv/bin/python benchmarks/warm_cache.py [--rounds 3] [--life 1000] [--no-aws]

The workflow is N sequential calls, each building a new request model from the last reply.
An engine (lambda_workflow._runtime.engine.Engine) is driven in process: each activation takes
the reply of the one pending call and makes the next call. Everything is CPU time of this
thread (``time.thread_time``; moto's server runs on other threads).

1. Activation after a hit, by history size: the instance is brought to N recorded calls with
   the cache on, then the next activations are timed (cache on: every one a hit), then the
   cache is turned off and the next ones are timed (each replays N calls). SQLite ``:memory:``.
   Target: on, N = 10,000 within 1.5x of N = 10.
2. A whole life of ``--life`` calls (default 1,000), SQLite ``:memory:``: the CPU of all its
   activations with the cache off and on, ``--rounds`` interleaved rounds. Target: >= 20x.
3. The same life on DynamoDB (moto's server over HTTP on 127.0.0.1): read request units of
   every DynamoDB request, computed as benchmarks/aws_cost.py computes them (AWS's rules from
   the request, the response and the items' final sizes; moto reports no consumed capacity).
   Target: >= 10x fewer with the cache on.

Medians with the spread (min-max) over the rounds; ratios are between figures of the same run.
Prints the tables and writes benchmarks/results/warm_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests", ROOT / "benchmarks", ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import orjson  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from lambda_workflow import Service, WorkflowContext, _core, workflow  # noqa: E402
from lambda_workflow._runtime.clock import VirtualClock  # noqa: E402
from lambda_workflow._runtime.engine import Engine  # noqa: E402
from lambda_workflow._runtime.warm import InstanceCache  # noqa: E402
from lambda_workflow.backends.protocols import StateStore  # noqa: E402
from lambda_workflow.backends.sqlite import SQLiteStateStore  # noqa: E402
from lambda_workflow.models import parse_workflow_message  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "warm_cache.json"


class Count(BaseModel):
    n: int
    label: str = "step"


bump = Service("bump", Count, Count)


@workflow
async def chain(ctx: WorkflowContext[Count]) -> int:
    value = Count(n=0)
    for _ in range(ctx.request.n):
        value = await ctx.call(bump, Count(n=value.n, label=f"step-{value.n}"))
    return value.n


class Outbox:
    """An in-process transport: keeps the last call request sent."""

    reply_address = "bench"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        pass

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self.calls.append(orjson.loads(body))


class Driver:
    """One instance of ``chain`` on ``store``, one activation at a time."""

    def __init__(self, store: StateStore, cache: int, workflow_id: str, n: int) -> None:
        self.outbox = Outbox()
        self.engine = Engine(store, self.outbox, {"chain": chain}, VirtualClock(1.8e9),
                             instance_cache=cache)
        self.workflow_id = workflow_id
        self.n = n
        self.reports: list[str] = []

    def start(self) -> float:
        body = orjson.dumps({"v": 1, "kind": "start", "workflow_id": self.workflow_id,
                             "workflow": "chain", "input": {"n": self.n}})
        return self._activate(body)

    def step(self) -> float:
        """Answer the pending call and run the activation: its CPU seconds."""
        call = self.outbox.calls.pop()
        request = call["request"]
        body = orjson.dumps({"v": 1, "kind": "call_result", "workflow_id": self.workflow_id,
                             "call_id": call["call_id"], "ok": True,
                             "value": {"n": request["n"] + 1, "label": request["label"]}})
        return self._activate(body)

    def _activate(self, body: bytes) -> float:
        message = parse_workflow_message(body)
        began = time.thread_time()
        report = self.engine.activate(self.workflow_id, [message])
        spent = time.thread_time() - began
        self.reports.append(report.cache)
        return spent

    @property
    def done(self) -> bool:
        return not self.outbox.calls

    def set_cache(self, size: int) -> None:
        self.engine.instance_cache.clear()
        self.engine.instance_cache = InstanceCache(size)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


# -- 1. an activation by history size -------------------------------------------------------------
def activation_by_size(sizes: list[int], timed_on: int, timed_off: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for n in sizes:
        store = SQLiteStateStore(":memory:")
        driver = Driver(store, 64, f"size-{n}", n + timed_on + timed_off + 2)
        driver.start()
        for _ in range(n - 1):
            driver.step()
        on = [driver.step() for _ in range(timed_on)]
        assert set(driver.reports[-timed_on:]) == {"hit"}, driver.reports[-timed_on:]
        driver.set_cache(0)
        off = [driver.step() for _ in range(timed_off)]
        results[str(n)] = {"on_us": spread([t * 1e6 for t in on]),
                           "off_us": spread([t * 1e6 for t in off])}
        store.close()
    return results


# -- 2. a whole life on SQLite ---------------------------------------------------------------------
def life_sqlite(n: int, rounds: int) -> dict[str, Any]:
    per: dict[str, list[float]] = {"off": [], "on": []}
    hits: dict[str, int] = {}
    for r in range(rounds):
        for name, cache in (("off", 0), ("on", 64)) if r % 2 == 0 else (("on", 64), ("off", 0)):
            store = SQLiteStateStore(":memory:")
            driver = Driver(store, cache, f"life-{name}-{r}", n)
            total = driver.start()
            while not driver.done:
                total += driver.step()
            per[name].append(total)
            hits[name] = driver.reports.count("hit")
            store.close()
    return {"off_s": spread(per["off"]), "on_s": spread(per["on"]), "hits": hits,
            "ratio": statistics.median(per["off"]) / statistics.median(per["on"])}


# -- 3. a whole life on DynamoDB (moto) ----------------------------------------------------------
@contextmanager
def moto() -> Iterator[str]:
    import logging

    from aws.conftest import moto_server

    for name in ("werkzeug", "moto", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_server() as endpoint:
        yield endpoint


def life_dynamodb(n: int) -> dict[str, Any]:
    import boto3
    from aws_cost import Call, Recorder, _final_items, _key, dynamodb_units

    class ReadsCounted(Recorder):
        """aws_cost's recorder, but reads (GetItem, Query without a projection: their units
        come from the response alone) are costed as they happen and not kept: 1,000 history
        queries of up to 1,000 items each would hold gigabytes of responses."""

        def __init__(self) -> None:
            super().__init__()
            self.rru = 0.0
            self.reads: dict[str, int] = {}

        def _after(self, event_name: str, parsed: Any, context: dict[str, Any],
                   **kw: Any) -> None:
            op = "dynamodb." + event_name.split(".")[2]
            params = context.get("aws_cost.params", {})
            if self.active and (op == "dynamodb.GetItem" or (
                    op == "dynamodb.Query" and "ProjectionExpression" not in params)):
                self.rru += dynamodb_units(Call(op, params, parsed, ""), {}).rru
                self.reads[op] = self.reads.get(op, 0) + 1
                return
            super()._after(event_name, parsed, context, **kw)

    from lambda_workflow.aws.dynamodb import DynamoDBStateStore, table_definition
    from lambda_workflow.aws.payloads import dynamodb_item_size

    out: dict[str, Any] = {}
    with moto() as endpoint:
        for name, cache in (("off", 0), ("on", 64)):
            session = boto3.Session(region_name="us-east-1")
            recorder = ReadsCounted()
            recorder.install(session)
            client = session.client("dynamodb", endpoint_url=endpoint)
            table = f"warm-{name}"
            client.create_table(TableName=table, **table_definition())
            store = DynamoDBStateStore(client, table)
            driver = Driver(store, cache, f"ddb-{name}", n)
            recorder.active = True
            cpu = driver.start()
            while not driver.done:
                cpu += driver.step()
            recorder.active = False
            final = {_key(item): dynamodb_item_size(item)
                     for item in _final_items(endpoint, table)}
            rru, wru = recorder.rru, 0.0
            requests = dict(recorder.reads)
            for call in recorder.calls:
                if not call.op.startswith("dynamodb."):
                    continue
                units = dynamodb_units(call, final)
                rru += units.rru
                wru += units.wru
                requests[call.op] = requests.get(call.op, 0) + 1
            out[name] = {"rru": rru, "wru": wru, "requests": requests, "cpu_s": cpu,
                         "hits": driver.reports.count("hit")}
    out["rru_ratio"] = out["off"]["rru"] / out["on"]["rru"]
    out["cpu_ratio"] = out["off"]["cpu_s"] / out["on"]["cpu_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--life", type=int, default=1000)
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--no-aws", action="store_true",
                        help="skip the DynamoDB part (the results file keeps the last one's)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.time()
    report: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(),
        "core": _core.IMPLEMENTATION, "rounds": args.rounds, "life_calls": args.life,
        "note": "CPU time of this thread (time.thread_time); medians and min-max"}

    by_size = activation_by_size(sizes, timed_on=50, timed_off=5)
    report["activation_by_size"] = by_size
    small, large = by_size[str(sizes[0])], by_size[str(sizes[-1])]
    flat = large["on_us"]["median"] / small["on_us"]["median"]
    report["activation_flatness"] = flat
    rows = [[f"N = {n:,}", f"{v['on_us']['median']:.0f} ({v['on_us']['min']:.0f}-"
             f"{v['on_us']['max']:.0f})", f"{v['off_us']['median']:.0f} ({v['off_us']['min']:.0f}"
             f"-{v['off_us']['max']:.0f})",
             f"{v['off_us']['median'] / v['on_us']['median']:.1f}x"]
            for n, v in ((int(k), v) for k, v in by_size.items())]
    print("1. One activation after N recorded calls, SQLite :memory:, CPU us "
          "(median, min-max)")
    print(table(["history", "cache on (hit)", "cache off (replay)", "off/on"], rows))
    print(f"cache on: N = {sizes[-1]:,} costs {flat:.2f}x N = {sizes[0]} (target <= 1.5x)\n")

    life = life_sqlite(args.life, args.rounds)
    report["life_sqlite"] = life
    print(f"2. A {args.life:,}-call sequential workflow's whole life, SQLite :memory:, CPU s "
          f"of its activations ({args.rounds} interleaved rounds)")
    print(table(["cache", "median", "min", "max", "hits"], [
        [name, f"{life[f'{name}_s']['median']:.3f}", f"{life[f'{name}_s']['min']:.3f}",
         f"{life[f'{name}_s']['max']:.3f}", str(life["hits"][name])]
        for name in ("off", "on")]))
    print(f"off/on: {life['ratio']:.1f}x (target >= 20x)\n")

    if not args.no_aws:
        ddb = life_dynamodb(args.life)
        report["life_dynamodb"] = ddb
        print("3. The same life on DynamoDB (moto's server): request units and CPU s of the "
              "activations")
        print(table(["cache", "read units", "write units", "Query", "GetItem", "CPU s",
                     "hits"], [
            [name, f"{ddb[name]['rru']:,.0f}", f"{ddb[name]['wru']:,.0f}",
             str(ddb[name]["requests"].get("dynamodb.Query", 0)),
             str(ddb[name]["requests"].get("dynamodb.GetItem", 0)),
             f"{ddb[name]['cpu_s']:.2f}", str(ddb[name]["hits"])] for name in ("off", "on")]))
        print(f"read units off/on: {ddb['rru_ratio']:.1f}x (target >= 10x); CPU off/on: "
              f"{ddb['cpu_ratio']:.1f}x\n")
    elif OUT.exists():
        # Read and write units do not depend on the machine's load: keep the last DynamoDB
        # run's figures (it takes ~20 min), marked as such, beside this run's timings.
        earlier = json.loads(OUT.read_text()).get("life_dynamodb")
        if earlier is not None:
            earlier.setdefault("from_earlier_run", True)
            report["life_dynamodb"] = earlier
    report["seconds"] = time.time() - started
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
