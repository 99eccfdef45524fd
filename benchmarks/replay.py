"""Replay-overhead benchmark: the compiled core, the pure twin and the floor, side by side.

Run:  python benchmarks/replay.py [--quick] [--json benchmarks/results/replay.json]

Every number is a median over repeated runs in this process (or in fresh interpreters, for
import times); ratios compare numbers measured in the same run. The compiled core and the pure
twin run in separate interpreters (LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 and
LAMBDA_WORKFLOW_NO_EXTENSIONS=1), each measuring the floor again so each ratio has its own
baseline. Peer numbers come from benchmarks/peers/results.json when it exists (see
benchmarks/peers/README.md; the peers run in their own virtual environments).

What is measured:
- replay: one activation that replays a workflow whose N calls are all recorded (sequential
  calls, or gathers of 10), per recorded call. The floor is a bare coroutine that awaits N
  already-completed futures looked up in a dict and decodes each result with the same
  pydantic type.
- record: one activation of a fresh workflow that makes N new calls, per new call.
- activation: Engine.activate on SQLite with N recorded calls and one new reply (load the
  history in one read, replay, record the reply, send the next request, finish).
- import: `import lambda_workflow` and `import lambda_workflow.local` in a fresh interpreter,
  against `import pydantic, orjson` alone.
"""

# No `from __future__ import annotations`: the workflows below are defined inside a function
# and @workflow resolves their annotations, which must then be real objects, not strings.
import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 100, 1_000, 10_000)
QUICK_SIZES = (10, 100, 1_000)
GATHER = 10


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def repeats_for(n: int) -> int:
    return 15 if n <= 100 else 9 if n <= 1_000 else 5


# -- measured inside one interpreter (one core implementation) -------------------------------
def measure_inside(sizes: tuple[int, ...]) -> dict[str, Any]:
    # Imported here: the parent process must not load the core (the children pick it).
    from pydantic import BaseModel

    import lambda_workflow
    from lambda_workflow import Service, _core, workflow
    from lambda_workflow._runtime.clock import VirtualClock
    from lambda_workflow._runtime.engine import Engine
    from lambda_workflow._runtime.replay import Replayer
    from lambda_workflow.backends.sqlite import SQLiteStateStore
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

    balance = Service("balance", Transaction, Balance)
    tx = Transaction(account_id="alice", amount=50)
    reply = b'{"balance":100}'

    @workflow
    async def sequential(ctx: lambda_workflow.WorkflowContext[int]) -> int:
        total = 0
        for _ in range(ctx.request):
            total += (await ctx.call(balance, tx)).balance
        return total

    @workflow
    async def gathers(ctx: lambda_workflow.WorkflowContext[int]) -> int:
        total = 0
        for _ in range(ctx.request // GATHER):
            for b in await asyncio.gather(*(ctx.call(balance, tx) for _ in range(GATHER))):
                total += b.balance
        return total

    payload = _core.encode_value(balance.request_adapter, tx)
    digest = _core.digest(payload)

    def history(n: int, per_stage: int, *, pending_last: bool = False) -> list[OperationRecord]:
        ops = []
        for seq in range(n):
            last = pending_last and seq == n - 1
            ops.append(OperationRecord(
                "w", str(seq + 1), seq, "call", "balance", payload, digest,
                state=OperationState.PENDING if last else OperationState.COMPLETED,
                sent=True, result=None if last else reply, created_in=seq // per_stage + 1,
                resolved_in=None if last else seq // per_stage + 2))
        return ops

    def replay(wf: Any, n: int, ops: list[OperationRecord]) -> Callable[[], object]:
        inp = str(n).encode()

        def run() -> object:
            result = Replayer(wf, "w", inp, ops, {}, activation=n + 2, now=0.0).run()
            assert result.outcome == "completed", result.error
            return result
        return run

    def floor(n: int) -> Callable[[], object]:
        results = {str(seq + 1): reply for seq in range(n)}
        adapter = balance.response_adapter

        async def main() -> int:
            loop = asyncio.get_running_loop()
            total = 0
            for seq in range(n):
                future = loop.create_future()
                future.set_result(results[str(seq + 1)])
                total += adapter.validate_json(await future).balance
            return total

        loop = asyncio.new_event_loop()
        return lambda: loop.run_until_complete(main())

    def fresh(n: int) -> Callable[[], object]:
        inp = str(n).encode()

        def run() -> object:
            result = Replayer(sequential, "w", inp, [], {}, activation=1, now=0.0).run()
            assert result.outcome == "suspended" and len(result.new_operations) == 1
            return result

        @workflow(name="fanout")
        async def fanout(ctx: lambda_workflow.WorkflowContext[int]) -> int:
            values = await asyncio.gather(*(ctx.call(balance, tx) for _ in range(ctx.request)))
            return len(values)

        def run_many() -> object:
            result = Replayer(fanout, "w", inp, [], {}, activation=1, now=0.0).run()
            assert result.outcome == "suspended" and len(result.new_operations) == n
            return result
        return run_many if n > 1 else run

    class NullTransport:
        reply_address = "bench"

        def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes) -> None:
            pass

        def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
            pass

    def activation(n: int, tmp: Path) -> Callable[[], object]:
        # N recorded calls; the reply of the last one arrives; the workflow completes.
        # Each run works on its own instance id, so every run records for real.
        store = SQLiteStateStore(tmp / f"bench-{n}.sqlite3")
        engine = Engine(store, NullTransport(), {"sequential": sequential}, VirtualClock(0.0))
        ops = history(n, 1, pending_last=True)
        counter = iter(range(10**9))
        inp = str(n).encode()

        def prepare() -> str:
            wid = f"w{next(counter)}"
            store.create_instance(InstanceRecord(wid, "sequential", inp, _core.digest(inp)))
            store.add_operations(wid, [OperationRecord(
                wid, o.op_id, o.seq, o.kind, o.name, o.request, o.request_digest, sent=True,
                state=o.state, result=o.result, created_in=o.created_in,
                resolved_in=o.resolved_in) for o in ops], n)
            return wid

        prepared = [prepare() for _ in range(repeats_for(n) + 1)]

        def run() -> object:
            wid = prepared.pop()
            msg = CallResultMessage(workflow_id=wid, call_id=str(n), ok=True,
                                    value={"balance": 100})
            report = engine.activate(wid, [msg])
            assert report.status == "completed", report
            return report
        return run

    out: dict[str, Any] = {"implementation": lambda_workflow.IMPLEMENTATION, "replay": {},
                           "record": {}, "activation": {}}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            reps = repeats_for(n)
            seq_ops = history(n, 1)
            gather_ops = history(n, GATHER)
            out["replay"][str(n)] = {
                "sequential": median_time(replay(sequential, n, seq_ops), reps) / n,
                "gather10": median_time(replay(gathers, n, gather_ops), reps) / n,
                "floor": median_time(floor(n), reps) / n,
            }
            out["record"][str(n)] = median_time(fresh(n), reps) / n
            if n <= 1_000:
                out["activation"][str(n)] = median_time(activation(n, Path(tmp)), reps)
    return out


def run_impl(impl: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("LAMBDA_WORKFLOW_NO_EXTENSIONS", None)
    env.pop("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS", None)
    env["LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS" if impl == "c" else
        "LAMBDA_WORKFLOW_NO_EXTENSIONS"] = "1"
    proc = subprocess.run(
        [sys.executable, __file__, "--inside", ",".join(map(str, sizes))],
        env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {impl} run failed:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(proc.stdout)
    if data["implementation"] != impl:
        raise SystemExit(f"asked for the {impl} core, got {data['implementation']}")
    return data


def import_times(runs: int) -> dict[str, float]:
    """Median wall time of a fresh interpreter importing each target, minus an empty one."""
    targets = {"empty": "pass", "pydantic+orjson": "import pydantic, orjson",
               "lambda_workflow": "import lambda_workflow",
               "lambda_workflow.local": "import lambda_workflow.local"}
    samples: dict[str, list[float]] = {k: [] for k in targets}
    for _ in range(runs):
        for name, code in targets.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["empty"])
    return {k: statistics.median(v) - base for k, v in samples.items() if k != "empty"}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N up to 1,000 only")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "replay.json"))
    parser.add_argument("--import-runs", type=int, default=15)
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        sizes = tuple(int(x) for x in args.inside.split(","))
        print(json.dumps(measure_inside(sizes)))
        return 0

    sizes = QUICK_SIZES if args.quick else SIZES
    c = run_impl("c", sizes)
    py = run_impl("py", sizes)
    imports = import_times(args.import_runs)
    peers_file = ROOT / "benchmarks" / "peers" / "results.json"
    peers = json.loads(peers_file.read_text()) if peers_file.exists() else None

    print(f"Replay overhead per recorded call (median, microseconds) - {platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"{'N':>6} {'shape':<10} {'c':>8} {'py':>8} {'floor':>8} {'c/floor':>8} {'py/c':>6}")
    for n in map(str, sizes):
        for shape in ("sequential", "gather10"):
            cv, pv = c["replay"][n][shape], py["replay"][n][shape]
            fl = c["replay"][n]["floor"]
            print(f"{n:>6} {shape:<10} {us(cv)} {us(pv)} {us(fl)} {cv / fl:8.2f} {pv / cv:6.2f}")
    print("\nRecording a new call (fresh execution), per call (microseconds)")
    print(f"{'N':>6} {'c':>8} {'py':>8} {'py/c':>6}")
    for n in map(str, sizes):
        cv, pv = c["record"][n], py["record"][n]
        print(f"{n:>6} {us(cv)} {us(pv)} {pv / cv:6.2f}")
    print("\nWhole activation on SQLite: load N recorded calls, replay, record 1 reply, finish "
          "(milliseconds)")
    print(f"{'N':>6} {'c':>8} {'py':>8} {'c per call (us)':>16}")
    for n in c["activation"]:
        cv, pv = c["activation"][n], py["activation"][n]
        print(f"{n:>6} {cv * 1e3:8.2f} {pv * 1e3:8.2f} {cv / int(n) * 1e6:16.2f}")
    print("\nCold import in a fresh interpreter (milliseconds over an empty interpreter)")
    for name, value in imports.items():
        print(f"  {name:<24} {value * 1e3:7.1f}")
    added = imports["lambda_workflow"] - imports["pydantic+orjson"]
    print(f"  lambda_workflow adds {added * 1e3:.1f} ms over pydantic+orjson")
    if peers:
        print("\nPeers replaying N recorded steps (benchmarks/peers/results.json, measured "
              f"{peers.get('generated_at', '?')}), per step in microseconds, against our "
              "compiled core (sequential, this run)")
        print(f"  {'peer':<44} {'N':>6} {'wall':>9} {'cpu':>9} {'ours':>7} {'cpu/ours':>9}")
        for row in peers.get("table", []):
            n = str(row["n"])
            if not row.get("us_per_step") or n not in c["replay"]:
                continue
            ours = c["replay"][n]["sequential"] * 1e6
            cpu = row.get("cpu_us_per_step") or row["us_per_step"]
            name = f"{row['peer']} {row['version']} ({row['variant']})"
            print(f"  {name:<44} {n:>6} {row['us_per_step']:9.1f} {cpu:9.1f} {ours:7.2f} "
                  f"{cpu / ours:8.1f}x")
    result = {"machine": platform.machine(), "python": platform.python_version(), "c": c,
              "py": py, "imports": imports, "peers": peers}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
