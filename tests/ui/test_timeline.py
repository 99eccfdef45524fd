"""The timeline of an instance (``history ID --timeline`` and ``--html FILE``), built from
the records of real runs: one bar per operation in the order the workflow created them,
activations as ticks in order, failures marked, pending operations open-ended."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from lambda_workflow import _timeline
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.cli import main
from lambda_workflow.models import History, OperationState

from .conftest import Run


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def history(db: str, workflow_id: str) -> History:
    store = SQLiteStateStore(db)
    try:
        found = store.load_history(workflow_id)
    finally:
        store.close()
    assert found is not None
    return found


def test_model_has_a_bar_per_operation_with_its_outcome_and_activations_in_order(
        run: Run) -> None:
    timeline = _timeline.build(history(run.db, "p-wait"))
    assert [(b.op_id, b.kind, b.name, b.outcome) for b in timeline.bars] == [
        ("1", "call", "carrier", "failed"), ("2", "timer", "sleep", "completed"),
        ("3", "callback", "signature", "pending")]
    assert [a.number for a in timeline.activations] == [1, 2, 3]
    assert [a.at for a in timeline.activations] == sorted(a.at for a in timeline.activations)
    failed, timer, waiting = timeline.bars
    assert "NoCarrier: no carrier takes parcel -3" in failed.error
    assert (failed.created_in, failed.resolved_in) == (1, 2)
    assert timer.end is not None and timer.end - timer.start == 3600
    assert waiting.end is None and waiting.resolved_in is None
    # the pending bar runs to the end of the axis, past the last activation
    assert timeline.end_of(waiting) > max((a.at, a.number) for a in timeline.activations)


def test_text_timeline_draws_ticks_bars_failures_and_open_ends(run: Run) -> None:
    code, out = cli("history", "--db", run.db, "p-wait", "--timeline")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("p-wait (ship) running, 3 activations")
    ticks = next(line for line in lines if line.startswith("activations"))
    assert ticks.count("^") == 3
    bars = [line for line in lines if line.startswith("#")]
    assert [b.split()[0] for b in bars] == ["#1", "#2", "#3"]
    failed, timer, waiting = bars
    assert re.search(r"=+X\s+failed: NoCarrier", failed)
    assert re.search(r"=+\|\s+completed; due ", timer)
    assert re.search(r"=+>\s+pending; no timeout", waiting)
    # each bar starts where the one before it ended (the next activation's tick)
    starts = [b.index("=") for b in bars]
    assert starts == sorted(starts) and len(set(starts)) == 3
    ends = [max(b.index(c) for c in "X|>" if c in b[20:]) for b in bars]
    assert ends[-1] == max(ends)  # the open end runs furthest


def test_failed_instance_names_its_error_and_marks_the_failed_call(run: Run) -> None:
    code, out = cli("history", "--db", run.db, "p-fail", "--timeline")
    assert code == 0, out
    bars = [line for line in out.splitlines() if line.startswith("#")]
    assert len(bars) == 4
    assert "X" in bars[3] and "failed: NoCarrier: no carrier takes parcel -1" in bars[3]
    assert all("X" not in b.split("  ")[0][20:] for b in bars[:3])
    assert out.splitlines()[-1].startswith("failed: ServiceError: NoCarrier")


def test_html_page_is_self_contained_svg_with_the_same_bars(run: Run, tmp_path: Path) -> None:
    page = tmp_path / "p-wait.html"
    code, out = cli("history", "--db", run.db, "p-wait", "--html", str(page))
    assert code == 0, out
    assert f"written to {page}" in out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<svg" in html
    # no external assets: nothing loaded from elsewhere
    assert not re.search(r"""(src|href)\s*=|url\(|@import""", html)
    bars = re.findall(r'<g class="bar" data-op="([^"]+)" data-kind="([^"]+)" '
                      r'data-outcome="([^"]+)"', html)
    assert bars == [("1", "call", "failed"), ("2", "timer", "completed"),
                    ("3", "callback", "pending")]
    assert re.findall(r'data-activation="(\d+)"', html) == ["1", "2", "3"]


def test_html_escapes_user_data(tmp_path: Path) -> None:
    """Ids, names and error messages are user data: none is written as markup."""
    from lambda_workflow.models import (
        InstanceRecord,
        InstanceStatus,
        OperationRecord,
        OperationState,
    )

    evil = "<script>alert(1)</script>"
    inst = InstanceRecord(f"x{evil}", f"wf{evil}", b"{}", "d", InstanceStatus.FAILED,
                          error=b'{"type":"E","message":"<img src=x onerror=alert(2)>"}',
                          created_at=10.0, updated_at=12.0, activations=2)
    op = OperationRecord(inst.workflow_id, "1", 1, "step", f"s{evil}", b"{}", "d",
                         site=f"m.py:1 in {evil}", state=OperationState.FAILED,
                         result=b'{"type":"E","message":"' + evil.encode() + b'"}',
                         created_in=1, resolved_in=2, created_at=10.0, resolved_at=11.0)
    html = _timeline.render_html(_timeline.build(History(inst, [op])))
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_history_of_an_unknown_instance_exits_1(run: Run, tmp_path: Path) -> None:
    code, _ = cli("history", "--db", run.db, "nope", "--timeline")
    assert code == 1


def test_html_to_an_unwritable_path_exits_1_naming_it(
        run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "no-such-dir" / "t.html"
    code, _ = cli("history", "--db", run.db, "p-wait", "--html", str(target))
    assert code == 1
    assert f"cannot write {target}: No such file or directory" in capsys.readouterr().err


def test_a_timed_out_callback_ends_where_its_timeout_fired(tmp_path: Path) -> None:
    """examples/approval.py's escalated expense: the manager's callback timed out after 3
    days (its record stays pending); its bar ends with the timeout timer, in activation 3,
    not open to the end of the axis."""
    db = str(tmp_path / "approval.sqlite3")
    root = Path(__file__).resolve().parents[2]
    code, out = cli("run", str(root / "examples" / "approval.py"), "--db", db, "--quiet")
    assert code == 0, out
    timeline = _timeline.build(history(db, "exp-escalated"))
    bars = {bar.name: bar for bar in timeline.bars}
    callback, timer = bars["approval:omar"], bars["timeout:approval:omar"]
    assert callback.outcome == "timed out"
    assert (callback.end, callback.resolved_in) == (timer.end, timer.resolved_in) != (None, None)
    assert timeline.end_of(callback) == timeline.end_of(timer) < (timeline.end, timeline.last)
    text = _timeline.render_text(timeline)
    line = next(x for x in text.splitlines() if x.startswith("#2 callback approval:omar"))
    timer_line = next(x for x in text.splitlines() if x.startswith("#3 timer"))
    assert line.index("T ") == timer_line.index("| ")


def test_dense_activation_numbers_stay_apart() -> None:
    """More activations than columns: the numbers shown under the ticks are whole activation
    numbers with a space between them (they ran together: '13579111520...')."""
    from lambda_workflow.models import InstanceRecord, InstanceStatus, OperationRecord

    inst = InstanceRecord("w", "wf", b"{}", "d", InstanceStatus.COMPLETED, result=b"1",
                          created_at=0.0, updated_at=0.0, activations=40)
    ops = [OperationRecord("w", str(i), i, "call", "svc", b"{}", "d", created_in=i,
                           resolved_in=i + 1, created_at=0.0, resolved_at=0.0,
                           state=OperationState.COMPLETED, result=b"1")
           for i in range(1, 40)]
    text = _timeline.render_text(_timeline.build(History(inst, ops)), width=30)
    numbers = text.splitlines()[3].split()
    assert numbers and all(1 <= int(n) <= 40 for n in numbers)
    assert [int(n) for n in numbers] == sorted(int(n) for n in numbers)
