"""The replay check on exported histories, end to end on SQLite files: every example in
examples/ and every kind of durable operation is run on a state file, exported with
``lambda-workflow history --db FILE ID --json`` and replayed with ``lambda-workflow replay
FILE --workflow MODULE``; every history must replay OK, and the loader must give back exactly
the bytes the runtime recorded. (tests/aws/test_replay_round_trip_aws.py does the same on
DynamoDB exports.)"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import orjson
import pytest

from lambda_workflow import _core
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXAMPLES = ROOT / "examples"
KINDS = HERE / "every_kind.py"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import every_kind  # noqa: E402

# Every example module that defines a workflow is run by its EXAMPLES (the `run` command's
# default) and its histories replayed against it.
RUNS = ["approval.py", "bank_transaction.py", "fan_out.py", "monthly_report.py",
        "order_saga.py"]
# The other example modules, and why they are not run here: CI also runs tests/replay on
# Python versions installed without boto3.
ELSEWHERE = {
    "plain_transaction_service.py": "a service written with boto3, no workflow",
    "bank_lambda.py": "the bank workflow's Lambda handlers (imports lambda_workflow.aws): "
                      "tests/aws/test_replay_round_trip_aws.py replays the bank histories "
                      "against it",
}
# Every kind the histories of every_kind.py must hold, and the timers by name. ("heartbeat"
# operations are in histories recorded before heartbeats were recorded on the callback only.)
OPERATION_KINDS = {"call", "step", "timer", "callback", "child", "parent", "patch", "cancel",
                   "context"}
TIMER_NAMES = {"sleep", "retry:weigh", "timeout:slow", "poll:stock", "timeout:approve",
               "heartbeat:approve", "timeout:late"}


# The CLI loads modules by path: tests/conftest.py puts back what it replaced.
pytestmark = pytest.mark.usefixtures("cli_modules_restored")


def run_cli(*argv: str | Path) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def export_all(db: Path, ids: list[str], folder: Path) -> list[Path]:
    """`history --db DB ID --json` for each id, written to folder/ID.json; checks the loader
    against the store on the way."""
    store = SQLiteStateStore(db)
    paths = []
    try:
        for wid in ids:
            code, out = run_cli("history", "--db", db, wid, "--json")
            assert code == 0, out
            recorded = store.load_history(wid)
            assert recorded is not None
            every_kind.assert_loader_gives_back(recorded, out)
            path = folder / f"{wid.replace('/', '_')}.json"
            path.write_text(out)
            paths.append(path)
    finally:
        store.close()
    return paths


def replay_all(paths: list[Path], module: Path) -> str:
    """`replay H1 H2 ... --workflow MODULE`: exit 0, each history OK."""
    code, out = run_cli("replay", *paths, "--workflow", module)
    assert code == 0, out
    assert out.count(": OK: ") == len(paths), out
    if len(paths) > 1:
        assert out.rstrip().endswith(f"{len(paths)} of {len(paths)} histories replay OK")
    return out


def test_the_examples_cover_every_example_module() -> None:
    """A new example is added to RUNS (or ELSEWHERE, saying why) so that its histories are
    checked."""
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(RUNS) | set(ELSEWHERE)


@pytest.mark.parametrize("example", RUNS)
def test_every_example_replays_from_its_sqlite_export(example: str, tmp_path: Path) -> None:
    """`run EXAMPLE --db S`, `history --db S ID --json` for every instance it made, `replay
    --workflow EXAMPLE`: every history replays OK against the code that recorded it."""
    db = tmp_path / "state.sqlite3"
    code, out = run_cli("run", EXAMPLES / example, "--db", db, "--quiet")
    assert code == 0, out
    store = SQLiteStateStore(db)
    ids = [inst.workflow_id for inst in store.list_instances()]
    store.close()
    assert ids
    out = replay_all(export_all(db, ids, tmp_path), EXAMPLES / example)
    assert out.count("ends completed as recorded") == len(ids)


def test_every_operation_kind_replays_from_its_sqlite_export(tmp_path: Path) -> None:
    """Every kind of durable operation (call, step and its retry timer, sleep, callback with
    heartbeat and timeouts, child, parallel and map, wait_for_condition, patch, call timeout,
    cancellation), in completed, failed, cancelled and still-running instances, recorded on
    a SQLite file by LocalRuntime, exported and replayed against the same module."""
    db = tmp_path / "kinds.sqlite3"
    with LocalRuntime(db) as runtime:
        expected = every_kind.record(runtime)
        statuses = {inst.workflow_id: inst.status.value
                    for inst in runtime.store.list_instances()}
        histories = [runtime.history(wid) for wid in expected]
    assert statuses == expected
    kinds = {op.kind for h in histories for op in h.operations}
    timers = {op.name for h in histories for op in h.operations if op.kind == "timer"}
    assert (kinds, timers) == (OPERATION_KINDS, TIMER_NAMES)
    out = replay_all(export_all(db, list(expected), tmp_path), KINDS)
    for status in ("completed", "failed", "cancelled", "suspended"):
        assert f"ends {status} as recorded" in out


OLD_VERSIONS = '''    if ctx.patched("ship-first"):
        await ctx.call(ship_service, ctx.request)
'''


def test_a_history_recorded_before_a_patch_replays_against_the_patched_code(
        tmp_path: Path) -> None:
    """Versioning across the export: an instance recorded by the code before
    ``ctx.patched("ship-first")`` was added replays OK against the patched module (patched
    is False there), and the patched code's own history replays OK too."""
    old = tmp_path / "every_kind_v1.py"
    source = KINDS.read_text()
    assert OLD_VERSIONS in source
    old.write_text(source.replace(OLD_VERSIONS, ""))
    db = tmp_path / "v.sqlite3"
    code, out = run_cli("run", old, "--db", db, "--workflow", "versions", "--quiet",
                        "--input", '{"sku": "lamp", "qty": 1}', "--id", "versions-old")
    assert code == 0, out
    code, out = run_cli("run", KINDS, "--db", db, "--workflow", "versions", "--quiet",
                        "--input", '{"sku": "lamp", "qty": 1}', "--id", "versions-new")
    assert code == 0, out
    paths = export_all(db, ["versions-old", "versions-new"], tmp_path)
    assert "patch" not in paths[0].read_text() and '"patch"' in paths[1].read_text()
    replay_all(paths, KINDS)


def _step_layout(request: bytes) -> bytes:
    """A step attempt's request as the runtime encodes it: the canonical arguments object,
    with ``"attempt"`` appended as its last key."""
    doc = orjson.loads(request)
    arguments = orjson.dumps({"args": doc["args"], "kwargs": doc["kwargs"]},
                             option=orjson.OPT_SORT_KEYS)
    return arguments[:-1] + b',"attempt":' + str(doc["attempt"]).encode() + b"}"


def test_every_recorded_request_has_the_one_documented_encoding(tmp_path: Path) -> None:
    """docs/replay.md: a recorded request is canonical JSON (orjson, sorted keys, compact,
    UTF-8), except a step attempt's, whose ``attempt`` comes last; its digest is BLAKE2b-128
    of those bytes. Checked on every request the every-kind histories hold."""
    with LocalRuntime(tmp_path / "kinds.sqlite3") as runtime:
        expected = every_kind.record(runtime)
        ops = [op for wid in expected for op in runtime.history(wid).operations]
    assert {op.kind for op in ops} == OPERATION_KINDS
    for op in ops:
        canonical = orjson.dumps(orjson.loads(op.request), option=orjson.OPT_SORT_KEYS)
        want = _step_layout(op.request) if op.kind == "step" else canonical
        assert op.request == want, (op.kind, op.name, op.request)
        assert op.request_digest == _core.digest(op.request)
        assert op.request_digest == hashlib.blake2b(op.request, digest_size=16).hexdigest()
