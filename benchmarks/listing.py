"""Listing benchmark: `status --status running --limit 50` on a SQLite state file through the
index, against reading every instance (what `status` did before the index).

Run:  python benchmarks/listing.py [--instances 100000] [--json benchmarks/results/listing.json]

The file holds N instances, 1 in 100 running, the others completed; every instance has an
input of 200 bytes and the completed ones a result of 200 bytes. Each number is the median of
repeated runs in this process, on a warm page cache:
- index: one page, `list_page(status=running, limit=50)` (instances_by_status).
- index, last page: the page after the first N/100 - 50 running instances (a --next-token).
- full read: `list_instances()` and a filter to running, first 50 (the old path).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lambda_workflow.backends.sqlite import SQLiteStateStore  # noqa: E402
from lambda_workflow.models import InstanceStatus  # noqa: E402


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--json")
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStateStore(Path(tmp) / "state.sqlite3")
        payload = b'{"x":"' + b"a" * 192 + b'"}'
        rows = [(f"wf-{i:07d}", "orders", payload, "d",
                 "running" if i % 100 == 0 else "completed",
                 None if i % 100 == 0 else payload, None, 1_800_000_000.0 + i,
                 1_800_000_000.0 + i, 3) for i in range(n)]
        store._db.execute("BEGIN")
        store._db.executemany("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        store._db.execute("COMMIT")
        running = InstanceStatus.RUNNING
        first = store.list_page(status=running, limit=50)
        token = None
        page = first
        while page.next_token is not None:  # the token of the last page
            token = page.next_token
            page = store.list_page(status=running, limit=50, next_token=token)
        results = {
            "instances": n,
            "running": n // 100,
            "index_first_page_ms": _median_ms(
                lambda: store.list_page(status=running, limit=50), args.repeat),
            "index_last_page_ms": _median_ms(
                lambda: store.list_page(status=running, limit=50, next_token=token),
                args.repeat),
            "full_read_ms": _median_ms(
                lambda: [i for i in store.list_instances() if i.status is running][:50],
                max(3, args.repeat // 3)),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
        store.close()
    for key, value in results.items():
        print(f"{key:<22} {value:.3f}" if isinstance(value, float) else f"{key:<22} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
