"""Every built wheel's compiled core, each under its own interpreter, against the pure twin and
the floor measured in the same run.

Run:  python benchmarks/wheels.py [--rounds R] [--sizes 100,1000] [--no-aarch64] [--quick]
      (after ``bash scripts/build_wheels.sh``, which leaves the wheels in dist/ and the test
      interpreters in .wheel-build/; ``--json`` changes the output file)

x86_64, natively: for Python 3.11, 3.12 and 3.13, three configurations run in that version's
test venv (.wheel-build/venvs/x86_64-X.Y, the pinned test requirements): the per-version wheel
(cp3XY-cp3XY), the abi3 wheel (cp311-abi3), and the pure twin (the abi3 wheel's files with
LAMBDA_WORKFLOW_NO_EXTENSIONS=1). Each wheel is installed with ``pip install --target`` into its
own folder put first on PYTHONPATH, and before measuring, the script checks that the core that
loads is that wheel's extension (``_c.cpython-3XY-x86_64-linux-gnu.so`` or ``_c.abi3.so``).
Each configuration runs ``benchmarks/replay.py --inside SIZES`` (one child interpreter: floor,
checked floor, the replay core sequential and gather10, and a whole activation on SQLite, each
the median of a few inner repetitions). Rounds are interleaved (every configuration once per
round, the order rotating); reported: the median over rounds and the min-max spread.

aarch64, under qemu (Debian bookworm's Python 3.11 and trixie's 3.13): each arm64 wheel once,
with ``--quick`` sizes, only to check that the compiled core it ships is what runs
(implementation "c" from that wheel's extension). Emulated times say nothing about Graviton's
speed, so the table shows them apart and the JSON marks them ``emulated``.

Prints a table and writes benchmarks/results/wheels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ROOT / "benchmarks" / "replay.py"
PYTHONS = ("3.11", "3.12", "3.13")
ARM_PYTHONS = ("3.11", "3.13")  # the Debian arm64 interpreters build_wheels.sh tests with
PER_CALL = ("floor", "checked_floor", "core", "core_gather10")


@dataclass
class Config:
    """One wheel (or the pure twin) under one interpreter."""

    label: str  # "cp312-cp312", "cp311-abi3" or "py"
    arch: str
    python: str
    interpreter: Path
    wheel: Path
    site: Path
    suffix: str | None  # the extension's file name ending; None for the pure twin

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LAMBDA_WORKFLOW_", "PYTHONPATH"))}
        env["PYTHONPATH"] = str(self.site) + (f":{self.deps}" if self.arch == "aarch64" else "")
        env["LAMBDA_WORKFLOW_NO_EXTENSIONS" if self.suffix is None else
            "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS"] = "1"
        return env

    @property
    def deps(self) -> Path:
        return self.site.parent / f"aarch64-{self.python}-deps"

    @property
    def key(self) -> str:
        return f"{self.arch} {self.python} {self.label}"


def find_wheel(dist: Path, tag: str, arch: str) -> Path | None:
    found = sorted(dist.glob(f"lambda_workflow-*-{tag}-*_{arch}.whl"))
    return found[-1] if found else None


def install(config: Config, pip: list[str]) -> None:
    """The wheel's files alone in config.site (its dependencies come from the interpreter)."""
    shutil.rmtree(config.site, ignore_errors=True)
    extra = (["--platform", "manylinux2014_aarch64", "--python-version", config.python,
              "--only-binary=:all:"] if config.arch == "aarch64" else [])
    subprocess.run([*pip, "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(config.site), *extra, str(config.wheel)], check=True)


def check_core(config: Config) -> str:
    """Which core the configuration loads; raises unless it is the one asked for."""
    code = ("import lambda_workflow as l, sys\n"
            "mod = sys.modules.get('lambda_workflow._core._c')\n"
            "print(l.IMPLEMENTATION, l.__file__, mod.__file__ if mod else '-')\n")
    if config.suffix is not None:
        code = "import lambda_workflow._core._c\n" + code
    proc = subprocess.run([str(config.interpreter), "-c", code], env=config.env(), cwd="/tmp",
                          capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{config.key}: the core does not load:\n{proc.stderr}")
    impl, package, core = proc.stdout.split()
    if not package.startswith(str(config.site)):
        raise SystemExit(f"{config.key}: lambda_workflow came from {package}, not {config.site}")
    want = "py" if config.suffix is None else "c"
    if impl != want or (config.suffix is not None and not core.endswith(config.suffix)):
        raise SystemExit(f"{config.key}: got core {impl} ({core}), wanted {want} "
                         f"({config.suffix or 'pure'})")
    return core


def run_replay(config: Config, sizes: str, quick: bool) -> dict[str, Any]:
    command = [str(config.interpreter), str(REPLAY), "--inside", sizes]
    if quick:
        command.append("--quick")
    proc = subprocess.run(command, env=config.env(), cwd="/tmp", capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{config.key}: benchmarks/replay.py failed:\n{proc.stderr}")
    data: dict[str, Any] = json.loads(proc.stdout)
    want = "py" if config.suffix is None else "c"
    if data.get("implementation") != want:
        raise SystemExit(f"{config.key}: replay.py ran the {data.get('implementation')} core")
    return data


def rows_of(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{row: {N: seconds}} of one replay.py child (the rows it reports)."""
    return {k: v for k, v in data.items()
            if isinstance(v, dict) and v and all(isinstance(x, (int, float)) for x in v.values())}


def x86_configs(dist: Path, scratch: Path) -> list[Config]:
    configs = []
    abi3 = find_wheel(dist, "cp311-abi3", "x86_64")
    if abi3 is None:
        raise SystemExit("no cp311-abi3 x86_64 wheel in dist/: run scripts/build_wheels.sh")
    for v in PYTHONS:
        python = scratch / "venvs" / f"x86_64-{v}" / "bin" / "python"
        if not python.exists():
            raise SystemExit(f"{python} is missing: run scripts/build_wheels.sh")
        tag = f"cp3{v[2:]}-cp3{v[2:]}"
        own = find_wheel(dist, tag, "x86_64")
        if own is None:
            raise SystemExit(f"no {tag} x86_64 wheel in dist/: run scripts/build_wheels.sh")
        site = scratch / "bench-sites"
        configs += [
            Config(tag, "x86_64", v, python, own, site / f"x86_64-{v}-{tag}",
                   f".cpython-3{v[2:]}-x86_64-linux-gnu.so"),
            Config("cp311-abi3", "x86_64", v, python, abi3, site / f"x86_64-{v}-abi3",
                   ".abi3.so"),
            Config("py", "x86_64", v, python, abi3, site / f"x86_64-{v}-abi3", None)]
    return configs


def arm_configs(dist: Path, scratch: Path) -> list[Config]:
    configs = []
    for v in ARM_PYTHONS:
        python = scratch / "bin" / f"python{v}-aarch64"
        if not python.exists() or not (scratch / "sites" / f"aarch64-{v}-deps").is_dir():
            raise SystemExit(f"{python} or its test requirements are missing: run "
                             f"scripts/build_wheels.sh (or pass --no-aarch64)")
        for tag, suffix in ((f"cp3{v[2:]}-cp3{v[2:]}", f".cpython-3{v[2:]}-aarch64-linux-gnu.so"),
                            ("cp311-abi3", ".abi3.so")):
            wheel = find_wheel(dist, tag, "aarch64")
            if wheel is None:
                raise SystemExit(f"no {tag} aarch64 wheel in dist/: run scripts/build_wheels.sh")
            # beside sites/aarch64-X.Y-deps, which Config.deps names
            configs.append(Config(tag, "aarch64", v, python, wheel,
                                  scratch / "sites" / f"bench-aarch64-{v}-{tag}", suffix))
    return configs


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "samples": samples}


def fmt(value: float, row: str) -> str:
    return f"{value * 1e3:.2f} ms" if row == "activation" else f"{value * 1e6:.2f}"


def table(results: dict[str, Any], sizes: list[str]) -> list[str]:
    lines = ["x86_64, native; us per replayed call (activation: ms per activation); median of "
             f"{results['rounds']} interleaved rounds [min-max]", ""]
    for v in PYTHONS:
        own = f"cp3{v[2:]}-cp3{v[2:]}"
        cols = [own, "cp311-abi3", "py"]
        lines.append(f"Python {results['interpreters'][v]}")
        lines.append(f"| row | N | {' | '.join(cols)} | abi3 / {own} | py / {own} |")
        lines.append("|---|--:|" + "--:|" * (len(cols) + 2))
        data = results["x86_64"][v]
        for row in data[own]:
            for n in sizes:
                if n not in data[own][row]:
                    continue
                meds = [data[c][row][n]["median"] for c in cols]
                cells = [f"{fmt(data[c][row][n]['median'], row)} "
                         f"[{fmt(data[c][row][n]['min'], row)}-{fmt(data[c][row][n]['max'], row)}]"
                         for c in cols]
                lines.append(f"| {row} | {n} | {' | '.join(cells)} | {meds[1] / meds[0]:.2f} | "
                             f"{meds[2] / meds[0]:.2f} |")
        lines.append("")
    if results.get("aarch64"):
        lines.append("aarch64 under qemu (emulated: a check of which core runs, not a speed "
                     "figure); one --quick run per wheel")
        lines.append("| Python | wheel | core loaded | core us/call (N=100) | floor us/call |")
        lines.append("|---|---|---|--:|--:|")
        for key, entry in results["aarch64"].items():
            v, tag = key.split(" ")
            core = entry["rows"].get("core", {}).get("100")
            floor = entry["rows"].get("floor", {}).get("100")
            lines.append(f"| {v} | {tag} | {entry['core_file']} | "
                         f"{core * 1e6 if core else float('nan'):.1f} | "
                         f"{floor * 1e6 if floor else float('nan'):.1f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated N")
    parser.add_argument("--no-aarch64", action="store_true", help="skip the qemu check")
    parser.add_argument("--quick", action="store_true",
                        help="few inner repetitions (a check that the script runs, not figures)")
    parser.add_argument("--dist", default=str(ROOT / "dist"))
    parser.add_argument("--scratch", default=os.environ.get("LAMBDA_WORKFLOW_WHEEL_SCRATCH",
                                                            str(ROOT / ".wheel-build")))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "wheels.json"))
    args = parser.parse_args()
    dist, scratch = Path(args.dist), Path(args.scratch)
    sizes = [str(int(n)) for n in args.sizes.split(",")]

    load_start = os.getloadavg()
    configs = x86_configs(dist, scratch)
    installed: set[Path] = set()
    cores: dict[str, str] = {}
    for config in configs:
        if config.site not in installed:
            install(config, [str(config.interpreter), "-m", "pip"])
            installed.add(config.site)
        cores[config.key] = check_core(config)
        print(f"{config.key}: {cores[config.key]}", file=sys.stderr)

    samples: dict[str, dict[str, dict[str, list[float]]]] = {c.key: {} for c in configs}
    for r in range(args.rounds):
        shift = r % len(configs)
        for config in configs[shift:] + configs[:shift]:
            print(f"round {r + 1}/{args.rounds}: {config.key}", file=sys.stderr)
            for row, by_n in rows_of(run_replay(config, ",".join(sizes), args.quick)).items():
                for n, value in by_n.items():
                    samples[config.key].setdefault(row, {}).setdefault(n, []).append(value)

    interpreters = {}
    for v in PYTHONS:
        python = scratch / "venvs" / f"x86_64-{v}" / "bin" / "python"
        interpreters[v] = subprocess.run(
            [str(python), "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True, text=True, check=True).stdout.strip()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average_at_start_and_end": [load_start, os.getloadavg()],
        "rounds": args.rounds, "sizes": sizes, "quick": args.quick,
        "interpreters": interpreters, "x86_64": {}, "wheels": {}, "aarch64": {}}
    for config in configs:
        by_row = {row: {n: summary(vals) for n, vals in by_n.items()}
                  for row, by_n in samples[config.key].items()}
        results["x86_64"].setdefault(config.python, {})[config.label] = by_row
        results["wheels"][config.key] = {"wheel": config.wheel.name, "core": cores[config.key],
                                         "wheel_bytes": config.wheel.stat().st_size}

    if not args.no_aarch64:
        for config in arm_configs(dist, scratch):
            print(f"qemu: {config.key}", file=sys.stderr)
            install(config, [sys.executable, "-m", "pip"])
            core = check_core(config)
            data = run_replay(config, "10,100", True)
            results["aarch64"][f"{config.python} {config.label}"] = {
                "wheel": config.wheel.name, "core_file": Path(core).name, "emulated": True,
                "rows": rows_of(data)}

    lines = table(results, sizes)
    print("\n".join(lines))
    results["table"] = lines
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
