"""Our replay, measured the way bench_aws_durable.py measures AWS's SDK (same driver output).

Run with the project's interpreter (run_peers.py uses /work/main/.venv/bin/python, or
``--ours-python``); prints one JSON document shaped like the peers' (``results`` with one entry
per variant and N).  The parent process starts one child per core (the core is chosen at
import: LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 for the compiled one, LAMBDA_WORKFLOW_NO_EXTENSIONS=1
for the pure twin) and merges their results.

The workflow is the peer's shape: N sequential calls, each building a new request model
(``Transaction(account_id="acct-1", amount=i)``); every call's reply ``{"balance": 1}`` is
recorded; the workflow adds up ``.balance`` and returns N.

Variants (what one timed run is):
- ``replayer``: ``Replayer(...).run()`` over the N recorded operations already in memory
  (``OperationRecord`` objects), no store: the replay of one activation, from building the
  context to the workflow's result.
- ``activation``: ``Engine.activate`` on a ``MemoryStateStore`` holding the instance and its N
  operations, the N-th call's reply arriving: load (copies of the records out of the store),
  replay, record the reply and the result, finish.  No I/O.

Timed: the process's CPU time (``time.process_time``, all threads) and wall time around that one
call; one warm-up run, then ``--reps`` runs (fewer when they do not fit ``--budget`` seconds, at
least 3), medians reported.  Not timed: building the records and the store.
"""

# No `from __future__ import annotations`: @workflow resolves the workflow's annotations.
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

PEER = "lambda-workflow"


def measure(ns: list[int], reps: int, budget: float) -> list[dict[str, Any]]:
    from pydantic import BaseModel

    import lambda_workflow
    from lambda_workflow import Service, _core, workflow
    from lambda_workflow._runtime.clock import VirtualClock
    from lambda_workflow._runtime.engine import Engine
    from lambda_workflow._runtime.replay import Replayer
    from lambda_workflow.backends.memory import MemoryStateStore
    from lambda_workflow.models import (
        CallResultMessage,
        InstanceRecord,
        OperationRecord,
        OperationState,
    )

    class Transaction(BaseModel):
        account_id: str
        amount: int

    class Balance(BaseModel):
        balance: int

    balance = Service("get_balance", Transaction, Balance)

    @workflow
    async def balance_loop(ctx: lambda_workflow.WorkflowContext[int]) -> int:
        total = 0
        for i in range(ctx.request):
            total += (await ctx.call(balance, Transaction(account_id="acct-1", amount=i))).balance
        return total

    def operations(wid: str, n: int, *, pending_last: bool) -> list[OperationRecord]:
        ops = []
        for seq in range(n):
            last = pending_last and seq == n - 1
            payload = _core.encode_value(balance.request_adapter,
                                         Transaction(account_id="acct-1", amount=seq))
            ops.append(OperationRecord(
                wid, str(seq + 1), seq, "call", "get_balance", payload, _core.digest(payload),
                state=OperationState.PENDING if last else OperationState.COMPLETED, sent=True,
                result=None if last else b'{"balance":1}', created_in=seq + 1,
                resolved_in=None if last else seq + 2))
        return ops

    class NullTransport:
        reply_address = "bench"

        def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes) -> None:
            pass

        def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
            pass

    def replayer_run(n: int) -> Callable[[], None]:
        ops = operations("w", n, pending_last=False)
        inp = str(n).encode()

        def run() -> None:
            result = Replayer(balance_loop, "w", inp, ops, {}, activation=n + 2, now=0.0).run()
            if result.outcome != "completed" or result.result != inp or result.new_operations:
                raise RuntimeError(f"replay of {n} calls did not complete with {n}: {result}")
        return run

    def activation_run(n: int, runs: int) -> Callable[[], None]:
        store = MemoryStateStore()
        engine = Engine(store, NullTransport(), {"balance_loop": balance_loop}, VirtualClock(0.0))
        inp = str(n).encode()
        prepared = []
        for k in range(runs):
            wid = f"w{k}"
            store.create_instance(InstanceRecord(wid, "balance_loop", inp, _core.digest(inp)),
                                  operations(wid, n, pending_last=True))
            prepared.append(wid)

        def run() -> None:
            wid = prepared.pop()
            report = engine.activate(wid, [CallResultMessage(
                workflow_id=wid, call_id=str(n), ok=True, value={"balance": 1})])
            inst = store.get_instance(wid)
            if report.status != "completed" or inst is None or inst.result != inp:
                raise RuntimeError(f"activation of {n} calls did not complete with {n}: {report}")
        return run

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        gc.collect()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, time.process_time() - cpu0

    impl = lambda_workflow.IMPLEMENTATION
    results: list[dict[str, Any]] = []
    for variant in ("replayer", "activation"):
        for n in ns:
            if variant == "activation" and n == 0:
                continue  # an activation needs a reply to deliver: N >= 1
            # One instance per activation run: the warm-up and at most max(reps, 3) timed runs.
            fn = (replayer_run(n) if variant == "replayer"
                  else activation_run(n, max(reps, 3) + 1))
            fn()  # warm-up, not counted
            runs = [timed(fn)]
            count = reps if runs[0][0] * reps <= budget else max(3, int(budget / runs[0][0]))
            runs += [timed(fn) for _ in range(count - 1)]
            walls = [w for w, _ in runs]
            cpu = statistics.median(c for _, c in runs)
            wall = statistics.median(walls)
            results.append({
                "variant": f"{variant} ({impl})", "n": n, "repetitions": len(runs),
                "median_s": wall, "min_s": min(walls), "median_cpu_s": cpu,
                "cpu_s": [c for _, c in runs], "walls_s": walls,
                "us_per_step": wall / n * 1e6 if n else None,
                "cpu_us_per_step": cpu / n * 1e6 if n else None,
            })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("ns", nargs="+", type=int, help="call counts (0 = empty workflow)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per N")
    parser.add_argument("--skip-above", type=float, default=60.0, help="accepted, unused")
    parser.add_argument("--impl", choices=("c", "py"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        json.dump(measure(args.ns, args.reps, args.budget), sys.stdout)
        return
    results: list[dict[str, Any]] = []
    for impl in ("c", "py"):
        env = dict(os.environ)
        for name in ("LAMBDA_WORKFLOW_NO_EXTENSIONS", "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS"):
            env.pop(name, None)
        env["LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS" if impl == "c" else
            "LAMBDA_WORKFLOW_NO_EXTENSIONS"] = "1"
        env["LAMBDA_WORKFLOW_INSTANCE_CACHE"] = "0"  # every activation replays
        proc = subprocess.run(
            [sys.executable, __file__, *map(str, args.ns), "--reps", str(args.reps),
             "--budget", str(args.budget), "--impl", impl],
            env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"the {impl} run failed with exit code {proc.returncode}")
        results += json.loads(proc.stdout)
    from importlib.metadata import version
    json.dump({"peer": PEER, "version": version("lambda-workflow"),
               "python": platform.python_version(), "results": results}, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
