"""`lambda-workflow bench` on recorded histories: the figures docs/testing.md quotes.

Run:  python benchmarks/bench_cli.py [--quick] [--rounds N] [--json FILE]  (default FILE:
      benchmarks/results/bench_cli.json)

Records two instances on a SQLite file with `lambda-workflow run --db` and exports them with
`lambda-workflow history --json`: the bank example's t1 (3 calls, two of them gathered), and
a workflow of N = 1,000 sequential calls, each building a new request model (the shape of
benchmarks/replay.py). Then runs `lambda-workflow bench` on both and prints its table; the
JSON it printed (schema lambda-workflow-bench/1, docs/testing.md) is written to --json and the
table printed from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lambda_workflow._bench import _print_table

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bank_transaction.py"
N = 1_000

SEQUENTIAL = f'''
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.local import LocalRuntime


class Lookup(BaseModel):
    account_id: str
    index: int


class Balance(BaseModel):
    balance: int


balance = Service("balance", Lookup, Balance)


@workflow
async def sequential(ctx: WorkflowContext[int]) -> int:
    total = 0
    for i in range(ctx.request):
        total += (await ctx.call(balance, Lookup(account_id="alice", index=i))).balance
    return total


def setup(runtime: LocalRuntime) -> None:
    runtime.register(sequential)
    runtime.implement(balance, lambda request: Balance(balance=100))


EXAMPLES = {{"seq-{N}": {N}}}
'''


def cli(*args: str | Path, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "lambda_workflow", *map(str, args)],
                          capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"lambda-workflow {' '.join(map(str, args))} failed:\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench --quick")
    parser.add_argument("--rounds", type=int, help="bench --rounds (default: bench's)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" /
                                              "bench_cli.json"))
    args = parser.parse_args()
    quick = (["--quick"] if args.quick else []) + (
        ["--rounds", str(args.rounds)] if args.rounds else [])
    with tempfile.TemporaryDirectory() as tmp:
        # Everything in one folder, named relative to it, as the tables then show it.
        folder = Path(tmp)
        (folder / "sequential.py").write_text(SEQUENTIAL)
        shutil.copyfile(EXAMPLE, folder / EXAMPLE.name)
        cli("run", EXAMPLE.name, "--db", "state.sqlite3", "--id", "t1", "--quiet", "--input",
            '{"account_id": "alice", "amount": 30}', cwd=folder)
        cli("run", "sequential.py", "--db", "state.sqlite3", "--quiet", cwd=folder)
        for wid in ("t1", f"seq-{N}"):
            (folder / f"{wid}.json").write_text(
                cli("history", "--db", "state.sqlite3", wid, "--json", cwd=folder))
        docs = {"bank_t1": json.loads(cli("bench", "t1.json", "--workflow", EXAMPLE.name,
                                          *quick, "--json", cwd=folder)),
                f"sequential_{N}": json.loads(cli("bench", f"seq-{N}.json", "--workflow",
                                                  "sequential.py", *quick, "--json",
                                                  cwd=folder))}
    for doc in docs.values():
        _print_table(doc, sys.stdout)
        print()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(docs, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
