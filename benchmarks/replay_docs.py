"""Put the last replay and peer runs' figures into the docs, or check that the docs quote them.

    .venv/bin/python benchmarks/replay_docs.py           # rewrite the generated regions
    .venv/bin/python benchmarks/replay_docs.py --check   # exit 1 if a region differs

Reads benchmarks/results/replay.json (benchmarks/replay.py) and benchmarks/peers/results.json
(benchmarks/peers/run_peers.py). Each generated region sits between two HTML comments,
``<!-- replay_docs:NAME -->`` and ``<!-- /replay_docs:NAME -->``, in docs/core.md (the
Measured tables and the Targets table), README.md (the replay paragraph's figures) and
benchmarks/peers/README.md (the like-for-like table); the text around the regions is written
by hand and holds no figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLAY_JSON = ROOT / "benchmarks" / "results" / "replay.json"
PEERS_JSON = ROOT / "benchmarks" / "peers" / "results.json"
SPAN = (1_000, 10_000)


def replay_script() -> Any:
    spec = importlib.util.spec_from_file_location("replay_benchmark",
                                                  ROOT / "benchmarks" / "replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pair(peers: dict[str, Any], ours: str) -> dict[str, Any]:
    for p in peers.get("like_for_like", []):
        if p["ours"] == ours and (p["from_n"], p["n"]) == SPAN:
            found: dict[str, Any] = p
            return found
    raise KeyError(f"no like-for-like row for {ours} over N = {SPAN[0]} to {SPAN[1]} in the "
                   "peers' results (run benchmarks/peers/run_peers.py with its default N)")


def regions(replay: dict[str, Any], peers: dict[str, Any]) -> dict[str, str]:
    """Each generated region's text, by name."""
    md = replay_script().markdown(replay, peers)
    measured, sep, targets = md.partition("\nTargets:\n\n")
    if not sep:
        raise KeyError("the replay results have no targets (a run without N = 1,000?)")
    rows = replay["rows"]

    def us(row: str, n: str) -> str:
        return f"{rows[row][n]['median'] * 1e6:.2f}"

    rc, ac = pair(peers, "replayer (c)"), pair(peers, "activation (c)")
    load = replay.get("load_average")
    busy = (f", load average {max(load):.1f} on {replay.get('cpus', '?')} CPUs" if load else "")
    readme = (
        f"Last run ({replay['machine']}, Python {replay['python']}, {replay.get('clock', 'wall')} "
        f"time{busy}; N = 1,000 sequential calls, each building a new request): replaying a "
        f"recorded call costs {us('core_c', '1000')} µs with the compiled core and "
        f"{us('core_py', '1000')} µs with the pure twin, against {us('floor', '1000')} µs for "
        f"the floor (await a completed future, decode the reply) and "
        f"{us('checked_floor', '1000')} µs for the checked floor (the floor plus building the "
        f"request, `dump_json` and comparing it with the recorded bytes); "
        f"{us('core_c', '10000')} µs at N = 10,000. Per replayed step, "
        f"aws-durable-execution-sdk-python's handler takes "
        f"{rc['aws_cpu_slope_us_per_step']:.1f} µs of CPU against our "
        f"{rc['ours_cpu_slope_us_per_step']:.1f} µs ({rc['aws_over_ours']:.1f}x; "
        f"{ac['aws_over_ours']:.1f}x for a whole activation on a memory store).")
    peer_rows = [pair(peers, ours) for ours in
                 ("replayer (c)", "replayer (py)", "activation (c)", "activation (py)")]
    peer_load = peers.get("machine", {}).get("load_average")
    peer_busy = (f", load average {max(peer_load):.1f} on {peers['machine'].get('cpus', '?')} "
                 "CPUs" if peer_load else "")
    peers_table = (
        f"Run of {peers['generated_at']}{peer_busy}; CPU µs per replayed step, N = {SPAN[0]:,} to "
        f"{SPAN[1]:,}:\n\n| ours | AWS's SDK | ours | AWS / ours |\n|---|--:|--:|--:|\n"
        + "".join(f"| {p['ours']} | {p['aws_cpu_slope_us_per_step']:.2f} | "
                  f"{p['ours_cpu_slope_us_per_step']:.2f} | {p['aws_over_ours']:.1f} |\n"
                  for p in peer_rows))
    return {"core-measured": measured.strip("\n"), "core-targets": targets.strip("\n"),
            "readme": wrap(readme), "peers": peers_table.strip("\n")}


def wrap(text: str, width: int = 96) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


FILES = {"core-measured": "docs/core.md", "core-targets": "docs/core.md",
         "readme": "README.md", "peers": "benchmarks/peers/README.md"}


def splice(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- replay_docs:{name} -->", f"<!-- /replay_docs:{name} -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"expected one {begin} ... {end} region")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each region that differs")
    parser.add_argument("--replay", type=Path, default=REPLAY_JSON)
    parser.add_argument("--peers", type=Path, default=PEERS_JSON)
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        replay = json.loads(args.replay.read_text())
        peers = json.loads(args.peers.read_text())
        bodies = regions(replay, peers)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"cannot make the docs' figures from {args.replay} and {args.peers}: "
                     f"{type(exc).__name__}: {exc}")
    stale = []
    for path in sorted(set(FILES.values())):
        file = args.root / path
        text = file.read_text()
        new = text
        for name in (n for n, p in FILES.items() if p == path):
            try:
                new = splice(new, name, bodies[name])
            except ValueError as exc:
                parser.error(f"{path}: {exc}")
        if new != text:
            stale.append(path)
            if not args.check:
                file.write_text(new)
    if args.check and stale:
        print(f"not the figures of the last run: {', '.join(stale)} "
              "(run benchmarks/replay_docs.py)", file=sys.stderr)
        return 1
    print(("up to date: " if args.check or not stale else "rewrote: ")
          + ", ".join(stale or sorted(set(FILES.values()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
