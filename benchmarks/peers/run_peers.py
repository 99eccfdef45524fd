"""Run the peer replay benchmarks and ours in the same run, and tabulate them side by side.

    python3 benchmarks/peers/run_peers.py            # AWS's SDK and ours, N = 10 ... 10000
    python3 benchmarks/peers/run_peers.py --quick    # N = 10 100, 3 repetitions (smoke test)
    python3 benchmarks/peers/run_peers.py --peers temporal --output results-temporal.json

Creates ``.venvs/<peer>`` beside this file when missing (``python -m venv`` + ``pip install -r
requirements-<peer>.txt``; reinstalls when the requirements file changes), runs
``bench_<peer>.py`` inside it as a subprocess, prints a table and writes ``results.json``.
Ours (``bench_lambda_workflow.py``) runs with the project's interpreter (``--ours-python``,
default ``.venv/bin/python`` of the repository), both cores.  N = 0 (an empty workflow) is
always measured too: it is the fixed cost of one replay, which the "marginal" column
subtracts.  The like-for-like comparison is the CPU slope: (CPU(N) - CPU(previous N)) /
(N - previous N), the CPU one more replayed step costs.  Uses the standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import venv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OURS = "lambda_workflow"  # not a peer installed from PyPI: the project itself
PEERS = {
    # name: (bench script, extra arguments)
    "aws_durable": ("bench_aws_durable.py", []),
    OURS: ("bench_lambda_workflow.py", []),
    # The unsandboxed runner (not temporalio's default) only up to N = 1000: at N = 10000 each
    # replay takes ~45 s, which would double the length of the whole run.
    "temporal": ("bench_temporal.py", ["--unsandboxed-max-n", "1000"]),
}


def venv_python(name: str) -> Path:
    return HERE / ".venvs" / name / "bin" / "python"


def ensure_venv(name: str) -> Path:
    """Create or update the peer's venv so that it holds exactly its pinned requirements."""
    requirements = HERE / f"requirements-{name}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    env_dir = HERE / ".venvs" / name
    stamp = env_dir / ".requirements.sha256"
    python = venv_python(name)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    if not python.exists():
        print(f"[{name}] creating {env_dir.relative_to(HERE)}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    print(f"[{name}] installing {requirements.name}", file=sys.stderr)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
         str(requirements)],
        check=True,
    )  # fmt: skip
    stamp.write_text(digest + "\n")
    return python


def run_peer(
    name: str, ns: list[int], reps: int, budget: float, skip_above: float, ours_python: Path
) -> dict[str, Any]:
    python = ours_python if name == OURS else ensure_venv(name)
    script, extra = PEERS[name]
    command = [str(python), str(HERE / script), *map(str, ns), "--reps", str(reps)]
    command += ["--budget", str(budget), "--skip-above", str(skip_above), *extra]
    print(f"[{name}] {' '.join(command[1:])}", file=sys.stderr)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"[{name}] bench failed with exit code {proc.returncode}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(proc.stdout[:2000] + proc.stderr[-2000:])
        raise SystemExit(f"[{name}] bench did not print one JSON document") from None
    result["elapsed_s"] = elapsed
    print(f"[{name}] done in {elapsed:.1f} s", file=sys.stderr)
    return result


def table_rows(peer_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for peer in peer_results:
        baseline: dict[str, float] = {}
        for r in peer["results"]:
            if r.get("n") == 0 and "median_s" in r:
                baseline[r.get("variant", "")] = r["median_s"]
        previous: dict[str, tuple[int, float]] = {}  # variant -> (N, median CPU s) measured last
        for r in peer["results"]:
            variant = r.get("variant", "handler")
            row: dict[str, Any] = {
                "peer": peer["peer"],
                "version": peer["version"],
                "variant": variant,
                "n": r["n"],
            }
            if "skipped" in r:
                row["skipped"] = r["skipped"]
                rows.append(row)
                continue
            base = baseline.get(r.get("variant", ""))
            row.update(
                repetitions=r["repetitions"],
                median_s=r["median_s"],
                us_per_step=r["us_per_step"],
                cpu_us_per_step=r["cpu_us_per_step"],
                marginal_us_per_step=(
                    (r["median_s"] - base) / r["n"] * 1e6 if base is not None and r["n"] else None
                ),
            )
            if "to_workflow_return_us_per_step" in r:
                row["to_workflow_return_us_per_step"] = r["to_workflow_return_us_per_step"]
            cpu = r.get("median_cpu_s")
            if cpu is not None:
                row["median_cpu_s"] = cpu
                last = previous.get(variant)
                if last is not None and r["n"] > last[0]:
                    row["cpu_slope_from_n"] = last[0]
                    row["cpu_slope_us_per_step"] = (cpu - last[1]) / (r["n"] - last[0]) * 1e6
                previous[variant] = (r["n"], cpu)
            rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'peer':<40} {'variant':<16} {'N':>6} {'reps':>4} {'median s':>9} "
        f"{'us/step':>9} {'cpu us/step':>11} {'marginal':>9} {'to return':>9} "
        f"{'cpu slope':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        name = f"{row['peer']} {row['version']}"
        if "skipped" in row:
            print(f"{name:<40} {row['variant']:<16} {row['n']:>6}  skipped: {row['skipped']}")
            continue
        print(
            f"{name:<40} {row['variant']:<16} {row['n']:>6} {row['repetitions']:>4} "
            f"{row['median_s']:>9.4f} {fmt(row['us_per_step'], '.1f'):>9} "
            f"{fmt(row['cpu_us_per_step'], '.1f'):>11} "
            f"{fmt(row['marginal_us_per_step'], '.1f'):>9} "
            f"{fmt(row.get('to_workflow_return_us_per_step'), '.1f'):>9} "
            f"{fmt(row.get('cpu_slope_us_per_step'), '.2f'):>9}"
        )
    print(
        "\nus/step = median wall time of one whole replay / N; cpu = process CPU time / N;\n"
        "marginal = (median(N) - median(N=0)) / N; to return (AWS only) = from the handler call\n"
        "until the workflow function returned, i.e. without the SDK's end-of-invocation idle;\n"
        "cpu slope = (median CPU(N) - median CPU(previous N)) / (N - previous N), microseconds."
    )


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AWS's handler against each of our variants: CPU slope per replayed step, same N."""
    slopes: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}
    for row in rows:
        if row.get("cpu_slope_us_per_step") is not None:
            slopes.setdefault((row["peer"], row["variant"]), {})[row["n"]] = (
                row["cpu_slope_from_n"], row["cpu_slope_us_per_step"])
    theirs = slopes.get(("aws-durable-execution-sdk-python", "handler"), {})
    out: list[dict[str, Any]] = []
    for (peer, variant), by_n in sorted(slopes.items()):
        if peer != "lambda-workflow":
            continue
        for n, (from_n, ours) in sorted(by_n.items()):
            if n in theirs and theirs[n][0] == from_n:
                out.append({"ours": variant, "from_n": from_n, "n": n,
                            "aws_cpu_slope_us_per_step": theirs[n][1],
                            "ours_cpu_slope_us_per_step": ours,
                            "aws_over_ours": theirs[n][1] / ours if ours > 0 else None})
    return out


def print_comparison(pairs: list[dict[str, Any]]) -> None:
    if not pairs:
        return
    print("\nLike for like: CPU per replayed step (slope between N values, microseconds),")
    print("aws-durable-execution-sdk-python's handler against ours, measured in this run")
    print(f"{'ours':<22} {'N from-to':>14} {'AWS':>9} {'ours':>9} {'AWS/ours':>9}")
    for p in pairs:
        span = f"{p['from_n']}-{p['n']}"
        print(f"{p['ours']:<22} {span:>14} {p['aws_cpu_slope_us_per_step']:>9.2f} "
              f"{p['ours_cpu_slope_us_per_step']:>9.2f} {fmt(p['aws_over_ours'], '.1f'):>9}")


def source_state() -> dict[str, Any]:
    """The commit of ours that was measured, and the source files that differed from it."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return proc.stdout.rstrip("\n") if proc.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "src", "ext").splitlines()
    return {"commit": git("rev-parse", "HEAD") or None,
            "uncommitted": [line[3:] for line in dirty if not line.startswith("??")]}


def markdown(document: dict[str, Any]) -> str:
    """The like-for-like table docs/core.md quotes, as Markdown, from a results file."""
    machine = document["machine"]
    versions = {p["peer"]: p["version"] for p in document["peers"]}
    source = document.get("source") or {}
    at = (f", commit {source['commit'][:7]}" if source.get("commit") else "") + (
        f" with uncommitted changes to {', '.join(source['uncommitted'])}"
        if source.get("uncommitted") else "")
    out = [f"Run of {document['generated_at']}{at} (Python {machine['python']}, "
           f"{machine['cpus']} CPUs). CPU µs per replayed step: the slope of the median CPU "
           "time of one replay between two N (aws-durable-execution-sdk-python "
           f"{versions.get('aws-durable-execution-sdk-python', '?')}).\n\n",
           "| ours | N | AWS's SDK | ours | AWS / ours |\n|---|---|--:|--:|--:|\n"]
    for p in document.get("like_for_like", []):
        out.append(f"| {p['ours']} | {p['from_n']:,} to {p['n']:,} | "
                   f"{p['aws_cpu_slope_us_per_step']:.2f} | {p['ours_cpu_slope_us_per_step']:.2f}"
                   f" | {fmt(p['aws_over_ours'], '.1f')} |\n")
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--reps", type=int, default=7, help="repetitions per N (at least 3)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per N")
    parser.add_argument("--skip-above", type=float, default=60.0, help="skip N above s per run")
    parser.add_argument("--peers", default=f"aws_durable,{OURS}",
                        help=f"comma-separated, of {', '.join(PEERS)}")
    parser.add_argument("--ours-python", type=Path, default=ROOT / ".venv" / "bin" / "python",
                        help="the interpreter that runs bench_lambda_workflow.py")
    parser.add_argument("--quick", action="store_true", help="N = 10 100, 3 repetitions")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("--markdown", type=Path, metavar="RESULTS_JSON",
                        help="print the like-for-like table as Markdown from a results file")
    args = parser.parse_args()
    if args.markdown:
        try:
            print(markdown(json.loads(args.markdown.read_text())), end="")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--markdown: {args.markdown} is not a results file of this script "
                         f"({type(exc).__name__}: {exc})")
        return
    ns = [10, 100] if args.quick else args.ns
    reps = 3 if args.quick else args.reps
    ns = [0, *sorted(set(ns) - {0})]
    unknown = [name for name in args.peers.split(",") if name and name not in PEERS]
    if unknown:
        parser.error(f"--peers: unknown {', '.join(unknown)} (known: {', '.join(PEERS)})")
    if OURS in args.peers.split(",") and not args.ours_python.exists():
        parser.error(f"--ours-python: {args.ours_python} does not exist")
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    peer_results = [
        run_peer(name, ns, reps, args.budget, args.skip_above, args.ours_python)
        for name in args.peers.split(",")
        if name
    ]
    total = time.perf_counter() - started
    rows = table_rows(peer_results)
    print_table(rows)
    pairs = comparison(rows)
    print_comparison(pairs)
    print(f"\ntotal {total:.0f} s")
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": [load_before, os.getloadavg()[0]],
        },
        "command": sys.argv[1:],
        "source": source_state(),
        "total_s": total,
        "table": rows,
        "like_for_like": pairs,
        "peers": peer_results,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
