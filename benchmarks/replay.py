"""Replay benchmark: compiled core, pure twin, floor and checked floor, side by side.

Run:  python benchmarks/replay.py [--quick] [--rounds R] [--json benchmarks/results/replay.json]

The workflow every row replays is N sequential calls, each building a NEW request model
(``await ctx.call(balance, Transaction(account_id="alice", amount=i))``), as the peers'
workflows do; a gather shape (gathers of 10 calls, new requests too) is measured for the core.
All N calls are recorded, each with its own request bytes and the reply ``{"balance":100}``.

Rows (per replayed call unless said otherwise; all measured in the same run; CPU time of the
child process by default, `--clock wall` for elapsed time):
- floor: a bare coroutine that awaits N already-completed futures and decodes each recorded
  reply with the response type's ``TypeAdapter.validate_json``.
- checked floor: the floor, plus, per call, building the request model, the request adapter's
  ``dump_json`` and comparing those bytes with the recorded request bytes (the least a replay
  that checks every request must do).
- core: ``Replayer(...).run()`` replaying the N recorded calls, history already in memory, no
  store (sequential; and gather10).
- activation: ``Engine.activate`` on SQLite with N recorded calls, the last one's reply arriving:
  load the history in one read, replay, record the reply, finish (per whole activation).

The core is chosen at import, so every measurement runs in child interpreters: one with
LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 (compiled), one with LAMBDA_WORKFLOW_NO_EXTENSIONS=1 (pure).
Rounds are interleaved: each round runs one compiled child and one pure child (alternating which
goes first); in a child every row and N is measured once (the median of a few inner repetitions
after a warm-up). Reported: the median over rounds and the spread (min-max over rounds). The
floors do not depend on the core: their samples from both children are pooled. Ratios use
medians of the same run. ``--build NAME=PYTHON`` adds another interpreter's compiled core (a
wheel installed in its own venv) to the same rounds.

Other scripts may run one child directly: ``PYTHON benchmarks/replay.py --inside 10,100``
(``--quick`` for 3 inner repetitions) prints one JSON document: ``implementation`` ("c" or
"py"), ``python``, ``core_file`` (the compiled core's file, or null), and for each row
``floor``, ``checked_floor``, ``core``, ``core_gather10`` (seconds per replayed call) and
``activation`` (seconds per whole activation) a mapping from N (a string) to that child's
median.
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
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 100, 1_000, 10_000)
QUICK_SIZES = (10, 100)
GATHER = 10
ROWS = ("floor", "checked_floor", "core", "core_gather10", "activation")
PER_CALL = ("floor", "checked_floor", "core", "core_gather10")
# Targets of issue 13 at N = 1,000 (see docs/core.md, "Targets").
TARGET_N = "1000"


def inner_repeats(n: int, quick: bool) -> int:
    """Timed repetitions inside one child per row and N (the child reports their median)."""
    if quick:
        return 3
    return 60 if n <= 10 else 15 if n <= 100 else 5 if n <= 1_000 else 2


CLOCKS: dict[str, Callable[[], float]] = {
    # CPU time of this (single-threaded) process: time spent waiting for a CPU on a busy
    # machine is not counted, nor is I/O wait.
    "cpu": time.process_time,
    "wall": time.perf_counter,
}


def median_runs(fns: dict[str, Callable[[], object]], repeats: int,
                clock: Callable[[], float] = time.process_time) -> dict[str, float]:
    """Median time of each of ``fns`` over ``repeats`` runs, after one warm-up run each.

    The functions take turns (one run of each, then again), so a change in the machine's load
    during the measurement reaches every one of them alike.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# -- one child interpreter: one core implementation, one sample per row and N ----------------
def measure_inside(sizes: tuple[int, ...], quick: bool, clock: str = "cpu") -> dict[str, Any]:
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
    reply = b'{"balance":100}'

    @workflow
    async def sequential(ctx: lambda_workflow.WorkflowContext[int]) -> int:
        total = 0
        for i in range(ctx.request):
            total += (await ctx.call(balance, Transaction(account_id="alice", amount=i))).balance
        return total

    @workflow
    async def gathers(ctx: lambda_workflow.WorkflowContext[int]) -> int:
        total = 0
        for g in range(ctx.request // GATHER):
            for b in await asyncio.gather(*(
                    ctx.call(balance, Transaction(account_id="alice", amount=g * GATHER + j))
                    for j in range(GATHER))):
                total += b.balance
        return total

    def request_bytes(i: int) -> bytes:
        return _core.encode_value(balance.request_adapter,
                                  Transaction(account_id="alice", amount=i))

    def history(n: int, per_stage: int, *, pending_last: bool = False,
                wid: str = "w") -> list[OperationRecord]:
        ops = []
        for seq in range(n):
            last = pending_last and seq == n - 1
            payload = request_bytes(seq)
            ops.append(OperationRecord(
                wid, str(seq + 1), seq, "call", "balance", payload, _core.digest(payload),
                state=OperationState.PENDING if last else OperationState.COMPLETED,
                sent=True, result=None if last else reply, created_in=seq // per_stage + 1,
                resolved_in=None if last else seq // per_stage + 2))
        return ops

    def core(wf: Any, n: int, ops: list[OperationRecord]) -> Callable[[], object]:
        inp = str(n).encode()

        def run() -> object:
            result = Replayer(wf, "w", inp, ops, {}, activation=n + 2, now=0.0).run()
            assert result.outcome == "completed", result.error
            assert not result.new_operations
            return result
        return run

    def floor(n: int) -> Callable[[], object]:
        replies = [reply] * n
        adapter = balance.response_adapter

        async def main() -> int:
            loop = asyncio.get_running_loop()
            total = 0
            for i in range(n):
                future = loop.create_future()
                future.set_result(replies[i])
                total += adapter.validate_json(await future).balance
            return total

        loop = asyncio.new_event_loop()
        return lambda: loop.run_until_complete(main())

    def checked_floor(n: int) -> Callable[[], object]:
        replies = [reply] * n
        recorded = [request_bytes(i) for i in range(n)]
        request_adapter = balance.request_adapter
        adapter = balance.response_adapter
        # dump_json must produce the recorded (canonical) bytes, or the comparison means nothing.
        assert request_adapter.dump_json(Transaction(account_id="alice", amount=7)) == \
            request_bytes(7)

        async def main() -> int:
            loop = asyncio.get_running_loop()
            total = 0
            for i in range(n):
                request = Transaction(account_id="alice", amount=i)
                if request_adapter.dump_json(request) != recorded[i]:
                    raise AssertionError(f"request #{i} differs from the recorded one")
                future = loop.create_future()
                future.set_result(replies[i])
                total += adapter.validate_json(await future).balance
            return total

        loop = asyncio.new_event_loop()
        return lambda: loop.run_until_complete(main())

    class NullTransport:
        reply_address = "bench"

        def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes) -> None:
            pass

        def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
            pass

    def activation(n: int, tmp: Path, runs: int) -> Callable[[], object]:
        # N recorded calls; the reply of the last one arrives; the workflow completes.
        # Each run works on its own instance id, so every run records for real.
        store = SQLiteStateStore(tmp / f"bench-{n}.sqlite3")
        engine = Engine(store, NullTransport(), {"sequential": sequential}, VirtualClock(0.0))
        inp = str(n).encode()
        prepared = []
        for k in range(runs):
            wid = f"w{k}"
            store.create_instance(InstanceRecord(wid, "sequential", inp, _core.digest(inp)))
            store.add_operations(wid, history(n, 1, pending_last=True, wid=wid), n)
            prepared.append(wid)

        def run() -> object:
            wid = prepared.pop()
            msg = CallResultMessage(workflow_id=wid, call_id=str(n), ok=True,
                                    value={"balance": 100})
            report = engine.activate(wid, [msg])
            assert report.status == "completed", report
            return report
        return run

    compiled = sys.modules.get("lambda_workflow._core._c")
    out: dict[str, Any] = {"implementation": lambda_workflow.IMPLEMENTATION,
                           "python": sys.executable,
                           "core_file": getattr(compiled, "__file__", None)
                           if lambda_workflow.IMPLEMENTATION == "c" else None,
                           "core_built": datetime.fromtimestamp(
                               os.path.getmtime(compiled.__file__), UTC).isoformat(
                               timespec="seconds")
                           if lambda_workflow.IMPLEMENTATION == "c" and compiled else None,
                           **{row: {} for row in ROWS}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            reps = inner_repeats(n, quick)
            key = str(n)
            medians = median_runs({
                "floor": floor(n), "checked_floor": checked_floor(n),
                "core": core(sequential, n, history(n, 1)),
                "core_gather10": core(gathers, n, history(n, GATHER)),
                "activation": activation(n, Path(tmp), reps + 1)}, reps, CLOCKS[clock])
            for row, value in medians.items():
                out[row][key] = value if row == "activation" else value / n
    return out


# -- the parent: interleaved rounds of children, medians, spread, ratios ---------------------
def run_child(impl: str, sizes: tuple[int, ...], quick: bool,
              python: str = sys.executable, label: str = "", clock: str = "cpu"
              ) -> dict[str, Any]:
    """One child interpreter measuring every row once with the ``impl`` core ("c" or "py")."""
    label = label or impl
    env = dict(os.environ)
    env.pop("LAMBDA_WORKFLOW_NO_EXTENSIONS", None)
    env.pop("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS", None)
    env["LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS" if impl == "c" else
        "LAMBDA_WORKFLOW_NO_EXTENSIONS"] = "1"
    env["LAMBDA_WORKFLOW_INSTANCE_CACHE"] = "0"  # every activation replays from its history
    command = [python, __file__, "--inside", ",".join(map(str, sizes)), "--clock", clock]
    if quick:
        command.append("--quick")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {label} run ({python}) failed:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(proc.stdout)
    if data["implementation"] != impl:
        raise SystemExit(f"asked {python} for the {impl} core, got {data['implementation']}")
    return data


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def collect(sizes: tuple[int, ...], rounds: int, quick: bool,
            builds: dict[str, str] | None = None, clock: str = "cpu"
            ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Run the interleaved rounds.

    ``builds`` maps a label to another interpreter whose installed compiled core is measured
    in the same rounds (e.g. a venv holding the abi3 wheel). Returns the rows (median and
    spread over rounds), the raw samples (``samples[label][row][N]``: one value per round,
    floors included, as each child measured them) and, per label, the interpreter and the
    compiled core's file that were measured.
    """
    children = [("c", sys.executable, "c"), ("py", sys.executable, "py")]
    children += [(label, python, "c") for label, python in (builds or {}).items()]
    samples: dict[str, Any] = {
        label: {row: {str(n): [] for n in sizes} for row in ROWS} for label, _, _ in children}
    measured: dict[str, Any] = {}
    for r in range(rounds):
        for label, python, impl in (children if r % 2 == 0 else children[::-1]):
            data = run_child(impl, sizes, quick, python, label, clock)
            measured[label] = {key: data.get(key) for key in ("python", "core_file", "core_built")}
            for row in ROWS:
                for n, value in data[row].items():
                    samples[label][row][n].append(value)
            print(f"  round {r + 1}/{rounds}: {label} done", file=sys.stderr)
    rows: dict[str, Any] = {}
    for name in ("floor", "checked_floor"):  # independent of the core: pool c and py children
        rows[name] = {n: summary(samples["c"][name][n] + samples["py"][name][n])
                      for n in map(str, sizes)}
    for label, _, _ in children:
        for name in ("core", "core_gather10", "activation"):
            rows[f"{name}_{label}"] = {n: summary(samples[label][name][n])
                                       for n in map(str, sizes)}
    return rows, samples, measured


def ratio_defs(builds: tuple[str, ...]) -> dict[str, tuple[str, str, str, str]]:
    """Each ratio: (numerator label, row, denominator label, row), compared round by round.

    A ratio within one core (compiled / checked floor) divides values one child measured in
    turns; a ratio between cores divides the values of the two children of the same round.
    """
    defs = {
        "c_over_checked_floor": ("c", "core", "c", "checked_floor"),
        "c_over_floor": ("c", "core", "c", "floor"),
        "checked_floor_over_floor": ("c", "checked_floor", "c", "floor"),
        "py_over_c_core": ("py", "core", "c", "core"),
        "py_over_c_gather10": ("py", "core_gather10", "c", "core_gather10"),
        "py_over_c_activation": ("py", "activation", "c", "activation"),
    }
    for b in builds:
        defs[f"{b}_over_checked_floor"] = (b, "core", b, "checked_floor")
        defs[f"{b}_over_c_core"] = (b, "core", "c", "core")
        defs[f"py_over_{b}_core"] = ("py", "core", b, "core")
        defs[f"py_over_{b}_activation"] = ("py", "activation", b, "activation")
    return defs


def ratios(samples: dict[str, Any], sizes: tuple[int, ...], builds: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """Ratios of this run: the median (and min-max) over rounds of each round's ratio."""
    def per_round(a: list[float], b: list[float]) -> dict[str, Any]:
        return summary([x / y for x, y in zip(a, b, strict=True)])

    out: dict[str, Any] = {}
    for n in map(str, sizes):
        out[n] = {key: per_round(samples[la][ra][n], samples[lb][rb][n])
                  for key, (la, ra, lb, rb) in ratio_defs(builds).items()}
    low, high = str(sizes[1] if len(sizes) > 2 else sizes[0]), str(sizes[-1])
    flat: dict[str, Any] = {"from": int(low), "to": int(high)}
    for key, (label, row) in {"core_c": ("c", "core"), "core_py": ("py", "core"),
                              "floor": ("c", "floor"),
                              "checked_floor": ("c", "checked_floor")}.items():
        flat[key] = per_round(samples[label][row][high], samples[label][row][low])
    flat["activation_c_per_call"] = per_round(
        [v / int(high) for v in samples["c"]["activation"][high]],
        [v / int(low) for v in samples["c"]["activation"][low]])
    out["flat"] = flat
    return out


def targets(ratio: dict[str, Any], sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    if TARGET_N not in ratio:
        return []
    at = ratio[TARGET_N]
    flat = ratio["flat"]

    def goal(text: str, value: dict[str, Any], met: bool) -> dict[str, Any]:
        return {"target": text, "value": value["median"], "min": value["min"],
                "max": value["max"], "met": met}

    return [
        goal("compiled core <= 1.2x the checked floor (N=1,000)", at["c_over_checked_floor"],
             at["c_over_checked_floor"]["median"] <= 1.2),
        goal("pure/compiled >= 1.5 on the core (N=1,000)", at["py_over_c_core"],
             at["py_over_c_core"]["median"] >= 1.5),
        goal("pure/compiled >= 1.3 on a whole activation (N=1,000)", at["py_over_c_activation"],
             at["py_over_c_activation"]["median"] >= 1.3),
        goal(f"flat in N: compiled core N={flat['to']:,} / N={flat['from']:,} <= 1.2",
             flat["core_c"], flat["core_c"]["median"] <= 1.2),
    ]


def cell(summary_: dict[str, Any], scale: float, width: int = 21) -> str:
    text = (f"{summary_['median'] * scale:.2f} "
            f"[{summary_['min'] * scale:.2f}-{summary_['max'] * scale:.2f}]")
    return f"{text:>{width}}"


def build_labels(builds: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Row labels (per call, activation) and ratio labels, with the extra builds' rows."""
    per_call = {"floor": "floor", "checked_floor": "checked floor", "core_c": "compiled core",
                "core_py": "pure twin"}
    per_call.update({f"core_{b}": f"compiled ({b})" for b in builds})
    per_call.update({"core_gather10_c": "compiled, gather10", "core_gather10_py": "pure, gather10"})
    activation = {"activation_c": "compiled", "activation_py": "pure"}
    activation.update({f"activation_{b}": f"compiled ({b})" for b in builds})
    names = {"c_over_checked_floor": "compiled / checked floor", "c_over_floor":
             "compiled / floor", "checked_floor_over_floor": "checked floor / floor",
             "py_over_c_core": "pure / compiled, core", "py_over_c_gather10":
             "pure / compiled, gather10", "py_over_c_activation": "pure / compiled, activation"}
    for b in builds:
        names.update({f"{b}_over_checked_floor": f"{b} / checked floor",
                      f"{b}_over_c_core": f"{b} / compiled, core",
                      f"py_over_{b}_core": f"pure / {b}, core",
                      f"py_over_{b}_activation": f"pure / {b}, activation"})
    return per_call, activation, names


def print_report(rows: dict[str, Any], ratio: dict[str, Any], sizes: tuple[int, ...],
                 rounds: int, builds: tuple[str, ...] = (), clock: str = "cpu") -> None:
    print(f"Replay per recorded call, N sequential calls each building a new request "
          f"({platform.machine()}, Python {platform.python_version()}, {rounds} interleaved "
          f"rounds; {clock} time, median [min-max over rounds], microseconds)")
    labels, activation_labels, names = build_labels(builds)
    print(f"{'':<20}" + "".join(f"{'N=' + format(n, ','):>22}" for n in sizes))
    for row, label in labels.items():
        print(f"{label:<20}" + "".join(" " + cell(rows[row][str(n)], 1e6) for n in sizes))
    print("\nWhole activation on SQLite: load N recorded calls, replay, record 1 reply, finish "
          "(milliseconds per activation)")
    print(f"{'':<20}" + "".join(f"{'N=' + format(n, ','):>22}" for n in sizes))
    for row, label in activation_labels.items():
        print(f"{label:<20}" + "".join(" " + cell(rows[row][str(n)], 1e3) for n in sizes))
    print("\nRatios (median [min-max] over rounds of each round's ratio)")
    print(f"{'':<30}" + "".join(f"{'N=' + format(n, ','):>22}" for n in sizes))
    for key, label in names.items():
        print(f"{label:<30}" + "".join(" " + cell(ratio[str(n)][key], 1) for n in sizes))
    flat = ratio["flat"]
    print(f"\nFlat in N (per call at N={flat['to']:,} / at N={flat['from']:,}):")
    for key, label in (("core_c", "compiled core"), ("core_py", "pure twin"), ("floor", "floor"),
                       ("checked_floor", "checked floor"),
                       ("activation_c_per_call", "activation per call, compiled")):
        print(f"  {label:<30}" + cell(flat[key], 1))


def source_state() -> dict[str, Any]:
    """The commit measured, and the source files that differed from it (a run on a work tree)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=False)
        return proc.stdout.rstrip("\n") if proc.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "src", "ext").splitlines()
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted": [line[3:] for line in dirty if not line.startswith("??")]}


PEER = "aws-durable-execution-sdk-python"
PEER_SPAN = (1_000, 10_000)  # the like-for-like target compares the CPU slope between these N


def peer_targets(peers: dict[str, Any]) -> list[dict[str, Any]]:
    """The like-for-like target's rows, from a results file of benchmarks/peers/run_peers.py."""
    rows = []
    for pair in peers.get("like_for_like", []):
        if (pair["from_n"], pair["n"]) == PEER_SPAN and pair["ours"].endswith("(c)"):
            ratio = pair["aws_over_ours"]
            rows.append({"target": f"at least 10x less CPU per replayed step than {PEER} "
                                   f"(N = {PEER_SPAN[0]:,} to {PEER_SPAN[1]:,}), "
                                   f"ours: {pair['ours']}",
                         "value": ratio, "met": ratio is not None and ratio >= 10,
                         "detail": f"{pair['aws_cpu_slope_us_per_step']:.2f} µs against "
                                   f"{pair['ours_cpu_slope_us_per_step']:.2f} µs"})
    return rows


def load_text(result: dict[str, Any]) -> str:
    """", load average A to B on C CPUs" (the 1-minute load at the run's start and end)."""
    load = result.get("load_average")
    if not load:
        return ""
    return f"; load average {load[0]:.1f} to {load[1]:.1f} on {result.get('cpus', '?')} CPUs"


def markdown(result: dict[str, Any], peers: dict[str, Any] | None = None) -> str:
    """The tables docs/core.md quotes, as Markdown, from a results file this script wrote.

    With ``peers`` (a results file of benchmarks/peers/run_peers.py), the like-for-like table
    and its target follow.
    """
    sizes = result["sizes"]
    rows, ratio = result["rows"], result["ratios"]
    builds = tuple(result.get("builds", {}))

    def md_cell(s: dict[str, Any], scale: float) -> str:
        return f"{s['median'] * scale:.2f} ({s['min'] * scale:.2f}-{s['max'] * scale:.2f})"

    head = "| | " + " | ".join(f"N = {n:,}" for n in sizes) + " |\n"
    rule = "|---|" + "--:|" * len(sizes) + "\n"
    source = result.get("source") or {}
    at = (f", commit {source['commit'][:7]}" if source.get("commit") else "") + (
        f" with uncommitted changes to {', '.join(source['uncommitted'])}"
        if source.get("uncommitted") else "") + (
        f", compiled core built {result['measured']['c']['core_built']}"
        if (result.get("measured") or {}).get("c", {}).get("core_built") else "")
    out = [f"Run of {result['generated_at']} ({result['machine']}, Python {result['python']}, "
           f"{result['rounds']} interleaved rounds{at}; {result.get('clock', 'wall')} time"
           f"{load_text(result)}): "
           "median (min-max over rounds).\n\n"
           "µs per replayed call:\n\n", head, rule]
    labels, activation_labels, all_names = build_labels(builds)
    labels["core_gather10_c"] = "compiled core, gathers of 10"
    labels["core_gather10_py"] = "pure twin, gathers of 10"
    for row, label in labels.items():
        out.append(f"| {label} | " + " | ".join(md_cell(rows[row][str(n)], 1e6)
                                                for n in sizes) + " |\n")
    out += ["\nWhole activation on SQLite, ms per activation:\n\n", head, rule]
    for row, label in activation_labels.items():
        out.append(f"| {label} | " + " | ".join(md_cell(rows[row][str(n)], 1e3)
                                                for n in sizes) + " |\n")
    out += ["\nRatios: the median (min-max) over rounds of each round's ratio:\n\n", head, rule]
    names = {"c_over_checked_floor": "compiled / checked floor", "c_over_floor":
             "compiled / floor", "py_over_c_core": "pure / compiled, core",
             "py_over_c_activation": "pure / compiled, whole activation"}
    names.update({k: v for k, v in all_names.items() if any(k.count(b) for b in builds)})
    for key, label in names.items():
        out.append(f"| {label} | " + " | ".join(md_cell(ratio[str(n)][key], 1) for n in sizes)
                   + " |\n")
    flat = ratio["flat"]
    out.append(f"\nFlat in N (per call, N = {flat['to']:,} / N = {flat['from']:,}): compiled "
               f"{md_cell(flat['core_c'], 1)}, pure {md_cell(flat['core_py'], 1)}, checked "
               f"floor {md_cell(flat['checked_floor'], 1)}; a whole activation per call "
               f"{md_cell(flat['activation_c_per_call'], 1)}.\n")
    if peers is not None:
        source = peers.get("source") or {}
        at = (f", commit {source['commit'][:7]}" if source.get("commit") else "") + (
            f" with uncommitted changes to {', '.join(source['uncommitted'])}"
            if source.get("uncommitted") else "")
        machine = peers.get("machine") or {}
        at += load_text({"load_average": machine.get("load_average"),
                         "cpus": machine.get("cpus")})
        out.append(f"\nAgainst {PEER}, run of {peers['generated_at']}{at}: CPU µs per replayed "
                   "step, the slope of the median CPU time of one replay between two N:\n\n"
                   "| ours | N | AWS's SDK | ours | AWS / ours |\n|---|---|--:|--:|--:|\n")
        for pair in peers.get("like_for_like", []):
            ratio_ = pair["aws_over_ours"]
            out.append(f"| {pair['ours']} | {pair['from_n']:,} to {pair['n']:,} | "
                       f"{pair['aws_cpu_slope_us_per_step']:.2f} | "
                       f"{pair['ours_cpu_slope_us_per_step']:.2f} | "
                       f"{'-' if ratio_ is None else format(ratio_, '.1f')} |\n")
    if result.get("targets"):
        out.append("\nTargets:\n\n| target | this run | |\n|---|--:|---|\n")
        for goal in result["targets"]:
            out.append(f"| {goal['target']} | {goal['value']:.2f} ({goal['min']:.2f}-"
                       f"{goal['max']:.2f}) | {'met' if goal['met'] else '**not met**'} |\n")
        for goal in peer_targets(peers or {}):
            value = "-" if goal["value"] is None else f"{goal['value']:.1f}"
            out.append(f"| {goal['target']} | {value} ({goal['detail']}) | "
                       f"{'met' if goal['met'] else '**not met**'} |\n")
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N = 10 and 100, 2 rounds, 3 inner repetitions")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--sizes", help="comma-separated N (default 10,100,1000,10000)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "replay.json"))
    parser.add_argument("--markdown", metavar="RESULTS_JSON",
                        help="print the docs' Markdown tables from a results file; measure nothing")
    parser.add_argument("--build", action="append", default=[], metavar="NAME=PYTHON",
                        help="also measure the compiled core installed for another interpreter "
                             "(e.g. a venv holding the abi3 wheel), in the same rounds")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: the process's CPU time (default; robust on a busy machine, "
                             "excludes I/O wait); wall: elapsed time")
    parser.add_argument("--peers", metavar="PEERS_JSON",
                        help="with --markdown: add the like-for-like table and target from a "
                             "results file of benchmarks/peers/run_peers.py")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peers and not args.markdown:
        parser.error("--peers goes with --markdown")
    if args.markdown:
        try:
            result = json.loads(Path(args.markdown).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--markdown: cannot read {args.markdown} ({type(exc).__name__}: {exc})")
        try:
            peers = json.loads(Path(args.peers).read_text()) if args.peers else None
        except (OSError, ValueError) as exc:
            parser.error(f"--peers: cannot read {args.peers} ({type(exc).__name__}: {exc})")
        try:
            text = markdown(result, peers)
        except (KeyError, TypeError, AttributeError) as exc:
            parser.error(f"--markdown: {args.markdown}"
                         f"{' or ' + args.peers if args.peers else ''} is not a results file "
                         f"of its script ({type(exc).__name__}: {exc})")
        print(text, end="")
        return 0
    if args.inside:
        inside = tuple(int(x) for x in args.inside.split(","))
        print(json.dumps(measure_inside(inside, args.quick, args.clock)))
        return 0

    if args.sizes:
        sizes = tuple(sorted({int(x) for x in args.sizes.split(",")}))
        if any(n < GATHER or n % GATHER for n in sizes):
            parser.error(f"--sizes: every N must be a positive multiple of {GATHER}: {args.sizes}")
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
    builds: dict[str, str] = {}
    for spec in args.build:
        name, sep, python = spec.partition("=")
        if not sep or not name.isidentifier() or name in ("c", "py") or not python:
            parser.error(f"--build: expected NAME=PYTHON with NAME an identifier other than "
                         f"c and py, got {spec!r}")
        if not Path(python).is_file():
            parser.error(f"--build {spec}: {python} is not a file")
        builds[name] = python
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1:
        parser.error(f"--rounds must be at least 1, got {rounds}")
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows, samples, measured = collect(sizes, rounds, args.quick, builds, args.clock)
    ratio = ratios(samples, sizes, tuple(builds))
    goals = targets(ratio, sizes)
    print_report(rows, ratio, sizes, rounds, tuple(builds), args.clock)
    print("\nMeasured: " + "; ".join(f"{label}: {m['python']} ({m['core_file'] or 'pure'})"
                                     for label, m in measured.items()))
    if goals:
        print(f"\nTargets (issue 13; N={int(TARGET_N):,})")
        for goal in goals:
            print(f"  {goal['target']:<56} {goal['value']:6.2f} [{goal['min']:.2f}-"
                  f"{goal['max']:.2f}]  {'met' if goal['met'] else 'NOT MET'}")
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.0f} s")
    result = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["benchmarks/replay.py", *sys.argv[1:]],
        "machine": platform.machine(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "load_average": [load_before, os.getloadavg()[0]],
        "clock": args.clock, "rounds": rounds, "sizes": list(sizes),
        "quick": args.quick,
        "units": {"per_call_rows": "seconds per replayed call",
                  "activation rows": "seconds per whole activation"},
        "builds": builds, "measured": measured, "source": source_state(),
        "rows": rows, "ratios": ratio, "targets": goals, "samples": samples,
        "elapsed_s": elapsed,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
