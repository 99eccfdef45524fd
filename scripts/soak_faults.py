"""Soak the runtime in the seeded fault simulator (tests/sim): many more seeds than CI runs.

    .venv/bin/python scripts/soak_faults.py --seeds 500 --workflows 10 --store sqlite
    .venv/bin/python scripts/soak_faults.py --seeds 40 --workflows 4 --store dynamodb

Each seed starts ``--workflows`` instances (every durable operation kind), drives them through
the engine with faults drawn from ``random.Random(seed)`` at every boundary, and checks the
invariants against an uninterrupted run. The DynamoDB store runs on moto's server over HTTP on
127.0.0.1 (started here), with payloads in S3. Prints each failing seed with the command that
replays it, then one line: seeds x workflows x faults injected, violations. Exits 1 if any
invariant was violated.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT / "src"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from sim.faults import FaultPlan  # noqa: E402
from sim.simulator import Backend, simulate, sqlite_backend  # noqa: E402


@contextmanager
def _backends(store: str) -> Iterator[Callable[[Path], Backend]]:
    if store == "sqlite":
        yield lambda tmp: sqlite_backend(str(tmp / "state.sqlite3"))
        return
    from aws.conftest import moto_server
    from sim.aws_backend import dynamodb_backend

    for name in ("werkzeug", "moto", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(var, "testing")
    with moto_server() as endpoint:
        yield lambda tmp: dynamodb_backend(endpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--workflows", type=int, default=8,
                        help="instances started per seed (default 8)")
    parser.add_argument("--store", choices=("sqlite", "dynamodb"), default="sqlite")
    parser.add_argument("--s3-missing", action="store_true",
                        help="(dynamodb) also remove offloaded payloads of running instances")
    args = parser.parse_args(argv)
    dynamodb = args.store == "dynamodb"
    plan = FaultPlan.hostile(concurrent=dynamodb, dynamodb=dynamodb, s3_missing=args.s3_missing)
    faults: Counter[str] = Counter()
    violations = failing = instances = 0
    started = time.monotonic()
    with _backends(args.store) as make, tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            seed_dir = Path(tmp) / str(seed)
            seed_dir.mkdir()
            backend = make(seed_dir)
            try:
                report = simulate(backend, seed, args.workflows, plan, replay=(
                    f".venv/bin/python scripts/soak_faults.py --first-seed {seed} --seeds 1 "
                    f"--workflows {args.workflows} --store {args.store}"
                    + (" --s3-missing" if args.s3_missing else "")))
            finally:
                backend.close()
            faults.update(report.faults)
            instances += len(report.instances)
            if report.violations:
                failing += 1
                violations += len(report.violations)
                print(report.describe(), flush=True)
    elapsed = time.monotonic() - started
    print(f"{args.store}: {args.seeds} seeds x {args.workflows} workflows "
          f"({instances} instances with children) x {sum(faults.values())} faults injected "
          f"({', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}); "
          f"{violations} violations in {failing} seeds; {elapsed:.0f} s")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
