"""`lambda-workflow bench`: the replay overhead of a workflow on its own exported histories.

Every test benches real histories (an example or tests/replay/every_kind.py run on a SQLite
file, exported with `history --json`), with one quick round so the suite stays fast. Nothing
here asserts a time: the figures are checked for their shape (both cores measured, as each
worker reports its core; one entry per kind with the history's operation counts), and bad
input for its message and exit code 2. tests/aws/test_bench_cli_aws.py benches a DynamoDB
export.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lambda_workflow import _bench
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import History

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bank_transaction.py"
ALICE = '{"account_id": "alice", "amount": 30}'
REPLAY = ROOT / "tests" / "replay"
KINDS = REPLAY / "every_kind.py"
if str(REPLAY) not in sys.path:
    sys.path.insert(0, str(REPLAY))

import every_kind  # noqa: E402

# The swapped gather of the bank example: operation #1 is then a call of `fraud`.
SWAPPED = """    balance, fraud = await asyncio.gather(  # both requests leave in one activation
        ctx.call(balance_service, tx),
        ctx.call(fraud_service, tx),
    )
"""
SWAPPED_TO = """    fraud, balance = await asyncio.gather(  # both requests leave in one activation
        ctx.call(fraud_service, tx),
        ctx.call(balance_service, tx),
    )
"""
STAT_KEYS = {"median", "min", "max", "spread"}
# Kinds recorded outside the workflow's own order: not replayed, not benched.
OUTSIDE = {"cancel", "parent", "repair", "trace"}


# The CLI loads modules by path: tests/conftest.py puts back what it replaced.
pytestmark = pytest.mark.usefixtures("cli_modules_restored")


def run_cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def bench_json(*argv: str | Path) -> dict[str, Any]:
    code, out = run_cli("bench", *argv, "--quick", "--rounds", "1", "--json")
    assert code == 0, out
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    """Instance t1 of the bank example (completed: 3 calls, two of them in one gather), run
    with `run --db` and exported with `history --json`."""
    db = tmp_path / "state.sqlite3"
    code, _ = run_cli("run", EXAMPLE, "--db", db, "--id", "t1", "--quiet", "--input", ALICE)
    assert code == 0
    code, out = run_cli("history", "--db", db, "t1", "--json")
    assert code == 0
    path = tmp_path / "t1.json"
    path.write_text(out)
    return path


def kinds_of(path: Path) -> dict[str, int]:
    """The replayed operations of an exported history, counted by kind, from the file."""
    ops = json.loads(path.read_text())["operations"]
    return dict(Counter(op["kind"] for op in ops if op["kind"] not in OUTSIDE))


def assert_stats(value: Any) -> None:
    assert set(value) == STAT_KEYS
    assert all(isinstance(v, float) for v in value.values())
    assert value["min"] <= value["median"] <= value["max"]


def assert_measured(core: dict[str, Any], kinds: dict[str, int], activation: bool) -> None:
    """One core's figures for one history: every statistic present and well formed."""
    for key in ("replay_ms", "replay_per_op_us", "floor_per_op_us", "checked_floor_per_op_us",
                "start_us"):
        assert_stats(core[key])
    assert set(core) == {"replay_ms", "replay_per_op_us", "floor_per_op_us",
                         "checked_floor_per_op_us", "start_us", "activation_ms",
                         "activation_warm_ms", "kinds"}
    if activation:
        assert_stats(core["activation_ms"])
    else:
        assert core["activation_ms"] is None
    assert set(core["kinds"]) == set(kinds)
    for figures in core["kinds"].values():
        assert set(figures) == {"per_op_us", "floor_per_op_us", "checked_floor_per_op_us"}
        for stats in figures.values():
            assert_stats(stats)


def test_bench_of_an_exported_sqlite_history_measures_both_cores_per_kind(
        exported: Path) -> None:
    """The bank example's export benched with --json: the versioned schema, both cores
    measured (each worker reports the core it loaded), the operation counts per kind those
    of the history file, every figure a statistic of the rounds, and a whole activation that
    delivers the last reply (call 3) and completes."""
    doc = bench_json(exported, "--workflow", EXAMPLE)
    assert doc["schema"] == "lambda-workflow-bench/1"
    assert (doc["rounds"], doc["quick"]) == (1, True)
    assert doc["cores"] == {"c": {"implementation": "c", "measured": True, "error": None},
                            "py": {"implementation": "py", "measured": True, "error": None}}
    (h,) = doc["histories"]
    assert (h["path"], h["workflow"], h["workflow_id"], h["status"]) == (
        str(exported), "make_transaction", "t1", "completed")
    assert kinds_of(exported) == {"call": 3}
    assert h["operations"] == 3
    assert set(h["kinds"]) == {"call"}
    assert (h["kinds"]["call"]["operations"], h["kinds"]["call"]["replayed"]) == (3, 3)
    for core in ("c", "py"):
        assert_measured({**h["replay"][core], "kinds": {
            k: v[core] for k, v in h["kinds"].items()}}, {"call": 3}, activation=True)
    assert set(h["ratios"]) == {"c_over_floor", "py_over_floor", "c_over_checked_floor",
                                "py_over_checked_floor", "py_over_c", "activation_py_over_c",
                                "activation_cold_over_warm_c"}
    assert all(isinstance(v, float) for v in h["ratios"].values())
    act = h["activation"]
    assert act["activation"] == 3
    assert act["delivered"] == [{"id": "3", "kind": "call"}]
    assert (act["ends"], act["skipped"]) == ("completed", None)
    # Warm: the engine ran activation 2 itself, and activation 3 continued it from the cache.
    assert act["warm_skipped"] is None
    for core in ("c", "py"):
        assert_stats(h["replay"][core]["activation_warm_ms"])


def test_bench_prints_a_table_per_history(exported: Path) -> None:
    """Without --json: a table per history with a row per kind and the whole replay and
    activation lines, naming both cores."""
    code, out = run_cli("bench", exported, "--workflow", EXAMPLE, "--quick", "--rounds", "1")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"lambda-workflow bench: 1 history against {EXAMPLE}; ")
    assert "1 rounds interleaved (c, py)" in lines[0]
    assert f"{exported}: workflow make_transaction (t1), completed, 3 operations" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["kind", "ops",
                                                                           "replayed"])
    assert lines[header + 1].split()[:3] == ["call", "3", "3"]
    assert lines[header + 2].split()[:2] == ["all", "3"]
    assert any(line.startswith("  whole replay: c ") for line in lines)
    assert any(line.startswith("  activation 3 on SQLite (load, deliver call 3, completed), "
                               "replaying: c ") for line in lines)
    assert any(line.startswith("  the same with the warm instance cache (continued from "
                               "activation 2): c ") for line in lines)


def every_kind_exports(tmp_path: Path) -> tuple[list[Path], dict[str, History]]:
    db = tmp_path / "kinds.sqlite3"
    with LocalRuntime(db) as runtime:
        ids = list(every_kind.record(runtime))
        histories = {wid: runtime.history(wid) for wid in ids}
    paths = []
    for wid in ids:
        code, out = run_cli("history", "--db", db, wid, "--json")
        assert code == 0, out
        path = tmp_path / f"{wid}.json"
        path.write_text(out)
        paths.append(path)
    return paths, histories


def test_every_kind_of_operation_is_benched_with_the_counts_of_its_history(
        tmp_path: Path) -> None:
    """Every history of tests/replay/every_kind.py (calls, steps and retries, timers,
    callbacks, children, contexts, patches; completed, failed, cancelled, running) benched
    in one run: per history, one entry per kind with the count the store recorded; the
    calls inside finished child contexts are counted but not replayed; an activation is
    measured where one delivered outcomes without running a step, and says why not
    elsewhere."""
    paths, histories = every_kind_exports(tmp_path)
    doc = bench_json(*paths, "--workflow", KINDS)
    assert [h["path"] for h in doc["histories"]] == [str(p) for p in paths]
    seen: set[str] = set()
    for h in doc["histories"]:
        recorded = histories[h["workflow_id"]]
        counts = dict(Counter(op.kind for op in recorded.operations
                              if op.kind not in OUTSIDE))
        assert {k: v["operations"] for k, v in h["kinds"].items()} == counts, h["path"]
        if h["workflow_id"] != "batches-1":  # every operation is created again on replay
            assert {k: v["replayed"] for k, v in h["kinds"].items()} == counts, h["path"]
        assert h["operations"] == sum(counts.values())
        assert h["status"] == recorded.instance.status.value
        seen |= set(counts)
        act = h["activation"]
        for core in ("c", "py"):
            assert_measured({**h["replay"][core], "kinds": {
                k: v[core] for k, v in h["kinds"].items()}}, counts,
                activation=act["skipped"] is None)
        # Activations that cannot be measured say why; none of them fails (callbacks-1's
        # activation 2 starts timers: the engine needs a timer service).
        for reason in (act["skipped"], act["warm_skipped"]):
            assert reason is None or "raised" not in reason, (h["path"], reason)
        if act["skipped"] is None:
            assert act["delivered"] and act["ends"] in ("completed", "suspended", "failed",
                                                        "cancelled")
        else:
            assert "without running a step" in act["skipped"]
    assert seen == {"call", "step", "timer", "callback", "child", "patch", "context"}
    batches = next(h for h in doc["histories"] if h["workflow_id"] == "batches-1")
    assert (batches["kinds"]["context"]["replayed"], batches["kinds"]["call"]["replayed"]) \
        == (6, 0)
    steps = next(h for h in doc["histories"] if h["workflow_id"] == "steps-1")
    assert steps["activation"]["skipped"] is not None
    calls = next(h for h in doc["histories"] if h["workflow_id"] == "calls-1")
    assert (calls["activation"]["skipped"], calls["activation"]["warm_skipped"]) == (None, None)
    assert calls["activation"]["activation"] == 2  # warm: after the start, run by the engine


def test_a_core_that_cannot_be_loaded_is_reported_and_the_other_measured(
        exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a platform without the compiled core: the c worker loads the pure twin (here
    LAMBDA_WORKFLOW_NO_EXTENSIONS is what it is given), so the compiled core is reported as
    not measured, with why, and the pure twin is measured; the ratios that need both are
    null."""
    monkeypatch.setattr(_bench, "CORES", (("c", "LAMBDA_WORKFLOW_NO_EXTENSIONS"),
                                          ("py", "LAMBDA_WORKFLOW_NO_EXTENSIONS")))
    doc = bench_json(exported, "--workflow", EXAMPLE)
    assert doc["cores"] == {
        "c": {"implementation": "py", "measured": False,
              "error": "asked for the c core, the worker loaded the py core"},
        "py": {"implementation": "py", "measured": True, "error": None}}
    (h,) = doc["histories"]
    assert h["replay"]["c"] is None and h["kinds"]["call"]["c"] is None
    assert_stats(h["replay"]["py"]["replay_per_op_us"])
    assert (h["ratios"]["py_over_c"], h["ratios"]["c_over_floor"]) == (None, None)
    assert isinstance(h["ratios"]["py_over_floor"], float)
    code, out = run_cli("bench", exported, "--workflow", EXAMPLE, "--quick", "--rounds", "1")
    assert code == 0
    assert "  the compiled core was not measured: asked for the c core, the worker loaded " \
           "the py core" in out.splitlines()


def test_a_history_without_operations_has_no_per_operation_figures(tmp_path: Path) -> None:
    """A workflow that returns its input records no operation: the whole replay is measured
    (all of it the workflow's start), the per-operation figures are null (they were the
    replay's time over 1 operation), and no activation delivered anything to measure."""
    module = tmp_path / "echo.py"
    module.write_text("from lambda_workflow import WorkflowContext, workflow\n"
                      "@workflow\n"
                      "async def echo(ctx: WorkflowContext[str]) -> str:\n"
                      "    return ctx.request\n")
    db = tmp_path / "echo.sqlite3"
    code, _ = run_cli("run", module, "--db", db, "--id", "e1", "--quiet", "--input", '"hi"')
    assert code == 0
    code, out = run_cli("history", "--db", db, "e1", "--json")
    history = tmp_path / "e1.json"
    history.write_text(out)
    doc = bench_json(history, "--workflow", module)
    (h,) = doc["histories"]
    assert (h["operations"], h["kinds"]) == (0, {})
    for core in ("c", "py"):
        figures = h["replay"][core]
        assert_stats(figures["replay_ms"])
        assert_stats(figures["start_us"])
        assert (figures["replay_per_op_us"], figures["floor_per_op_us"],
                figures["checked_floor_per_op_us"]) == (None, None, None)
    assert h["ratios"]["c_over_floor"] is None
    assert "no activation that delivered" in h["activation"]["skipped"]


def test_the_checked_floor_checks_each_request_against_its_own_record(
        tmp_path: Path, exported: Path) -> None:
    """The checked floor encodes, for each recorded operation, the request the replay's code
    built for it: every one of those encodings is the recorded request's bytes (the n-th
    operation of a kind and name the code created goes with the n-th record of them); the
    operations without one are exactly the patches, the contexts and the operations inside
    finished contexts (not created on replay)."""
    from lambda_workflow.cli import _callback_tokens, _load_module, _workflows_in
    from lambda_workflow.testing import history_from_json

    paths, _ = every_kind_exports(tmp_path)
    kinds = _workflows_in(_load_module(str(KINDS)))
    bank = _workflows_in(_load_module(str(EXAMPLE)))
    checked = created = 0
    for path in [*paths, exported]:
        history = history_from_json(path.read_bytes())
        workflows = bank if path == exported else kinds
        subject = _bench._Subject(workflows[history.instance.workflow_name], history,
                                  _callback_tokens(), True)
        created += sum(n for kind, n in subject.replayed.items()
                       if kind not in ("patch", "context"))
        try:
            for kind, work in subject.floor_work.items():
                for _, _, check in work:
                    if check is None:
                        assert kind in ("patch", "context") or subject.replayed[kind] == 0, \
                            (path, kind)
                    else:
                        assert check() is True, (path, kind)
                        checked += 1
        finally:
            subject.activation.close()
    # One check per operation the code created (the bank's 3 calls, every_kind's 40).
    assert checked == created == 43


NOISY = """import sys
from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.local import LocalRuntime
print("noisy module imported")
ask = Service("ask", str, str)
@workflow
async def noisy(ctx: WorkflowContext[str]) -> str:
    print("x" * 2000)
    print("y" * 2000, file=sys.stderr)
    return await ctx.call(ask, ctx.request)
def setup(runtime: LocalRuntime) -> None:
    runtime.register(noisy)
    runtime.implement(ask, lambda r: r + "!")
"""


def test_a_module_that_prints_does_not_disturb_the_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A module that prints when imported and on every run of its workflow (to stdout and
    stderr, 2 KB each): the workers keep their protocol on stdout and their stderr in a file
    (4 KB per replay, hundreds of replays a round: a pipe would fill and block the worker),
    and the command's own stdout is only its JSON (the module's prints go to stderr)."""
    module = tmp_path / "noisy.py"
    module.write_text(NOISY)
    db = tmp_path / "noisy.sqlite3"
    code, _ = run_cli("run", module, "--db", db, "--id", "n1", "--quiet", "--input", '"hi"')
    assert code == 0
    code, out = run_cli("history", "--db", db, "n1", "--json")
    history = tmp_path / "n1.json"
    history.write_text(out)
    capsys.readouterr()
    doc = bench_json(history, "--workflow", module)
    assert {core: v["measured"] for core, v in doc["cores"].items()} == {"c": True, "py": True}
    assert doc["histories"][0]["kinds"]["call"]["replayed"] == 1
    printed = capsys.readouterr()
    assert "noisy module imported" not in printed.out and "x" * 2000 not in printed.out
    assert "noisy module imported" in printed.err


def test_the_benchmark_script_runs(tmp_path: Path) -> None:
    """benchmarks/bench_cli.py (the source of docs/testing.md's tables), one quick round: it
    records both workflows, benches them and writes both documents, so it cannot rot."""
    out = tmp_path / "bench_cli.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cli.py"),
                           "--quick", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(out.read_text())
    assert set(docs) == {"bank_t1", "sequential_1000"}
    assert {d["schema"] for d in docs.values()} == {"lambda-workflow-bench/1"}
    seq = docs["sequential_1000"]["histories"][0]
    assert (seq["operations"], seq["kinds"]["call"]["replayed"]) == (1000, 1000)
    assert "seq-1000.json: workflow sequential (seq-1000), completed, 1000 operations" \
        in proc.stdout


# -- bad input: exit 2, a message naming what is wrong, nothing measured ------------------------
def bench_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    capsys.readouterr()
    code, out = run_cli("bench", *argv)
    assert (code, out) == (2, "")
    err = capsys.readouterr().err
    assert err.startswith("lambda-workflow bench: ")
    return err


def test_a_missing_history_file_exits_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = bench_error(capsys, tmp_path / "nope.json", "--workflow", EXAMPLE)
    assert f"cannot read {tmp_path / 'nope.json'}: No such file or directory" in err


def test_a_file_that_is_not_a_history_exits_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json")
    err = bench_error(capsys, bad, "--workflow", EXAMPLE)
    assert f"{bad} is not a workflow history as `lambda-workflow history --json` exports " \
           "it (it is not valid JSON:" in err
    bad.write_text('{"format": 1, "workflow_id": "x"}')
    err = bench_error(capsys, bad, "--workflow", EXAMPLE)
    assert "(the field 'status' is missing)" in err


def test_a_missing_module_exits_2(exported: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    err = bench_error(capsys, exported, "--workflow", tmp_path / "app.py")
    assert f"no such file: {tmp_path / 'app.py'}" in err


def test_a_workflow_the_module_does_not_have_exits_2(
        exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The history's workflow is not in the module (another module's history), and a NAME
    the module does not have."""
    err = bench_error(capsys, exported, "--workflow", KINDS)
    assert f"{exported} records workflow 'make_transaction', but {KINDS} has no workflow " \
           "'make_transaction' (found: batches, callbacks, calls," in err
    err = bench_error(capsys, exported, "--workflow", f"{EXAMPLE}:nope")
    assert "has no workflow 'nope' (found: make_transaction)" in err


def test_a_history_of_another_workflow_exits_2_saying_where_it_differs(
        exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bank history benched as another workflow (NAME picks it): one with the same input
    type that calls another service first does not replay, and the message says which
    operation differs; one with another input type says the input is not valid for it."""
    other = tmp_path / "other.py"
    other.write_text(
        "from pydantic import BaseModel\n"
        "from lambda_workflow import Service, WorkflowContext, workflow\n"
        "class Transaction(BaseModel):\n"
        "    account_id: str\n"
        "    amount: int\n"
        "audit = Service('audit', Transaction, bool)\n"
        "@workflow\n"
        "async def audit_only(ctx: WorkflowContext[Transaction]) -> bool:\n"
        "    return await ctx.call(audit, ctx.request)\n")
    err = bench_error(capsys, exported, "--workflow", f"{other}:audit_only")
    assert f"{exported} does not replay against {other}, so its replay cannot be " \
           "measured: " in err
    assert "other.py:9 in audit_only created call 'audit', but the history recorded call " \
           "'balance'" in err
    err = bench_error(capsys, exported, "--workflow", f"{KINDS}:calls")
    assert "its recorded input is no longer a valid Item: sku: Field required" in err


def test_a_history_the_changed_code_no_longer_replays_exits_2(
        exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example with its gathered calls swapped: the NonDeterminismError's message, with
    the changed file's line and both operations."""
    source = EXAMPLE.read_text()
    assert SWAPPED in source
    changed = tmp_path / "bank_transaction_v2.py"
    changed.write_text(source.replace(SWAPPED, SWAPPED_TO))
    line = changed.read_text().splitlines().index("        ctx.call(fraud_service, tx),") + 1
    err = bench_error(capsys, exported, "--workflow", changed)
    assert f"the code at bank_transaction_v2.py:{line} in make_transaction created call " \
           "'fraud', but the history recorded call 'balance'" in err


def test_rounds_below_one_exit_2(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = bench_error(capsys, exported, "--workflow", EXAMPLE, "--rounds", "0")
    assert "--rounds must be at least 1" in err
