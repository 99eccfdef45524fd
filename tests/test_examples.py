"""The runnable examples in examples/ (approval, order saga, fan-out, monthly report): their
business outcomes on the test runtime (always replaying, time skipped), and each one run end
to end with ``python -m lambda_workflow run``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from lambda_workflow import (
    InvalidCallbackTokenError,
    ServiceError,
    WorkflowContext,
    current_step,
    workflow,
)
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.models import History, InstanceStatus
from lambda_workflow.testing import DEFAULT_START_TIME, WorkflowTestRuntime

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "examples") not in sys.path:
    sys.path.insert(0, str(ROOT / "examples"))

import approval  # noqa: E402
import fan_out  # noqa: E402
import monthly_report  # noqa: E402
import order_saga  # noqa: E402

START = DEFAULT_START_TIME


@pytest.fixture
def rt() -> Iterator[WorkflowTestRuntime]:
    """A test runtime that replays every instance from the top after each activation."""
    with WorkflowTestRuntime(always_replay=True) as runtime:
        yield runtime
        assert runtime.replay_checks, "always_replay checked nothing"
        assert all(check.ok for check in runtime.replay_checks)


def _calls(history: History) -> list[str]:
    return [op.name for op in history.operations if op.kind == "call"]


# --- approval ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("example", "outcome", "decided_by", "asked", "waited"), [
    ("exp-approved", "approved", "maria", ["maria"], timedelta(0)),
    ("exp-rejected", "rejected", "maria", ["maria"], timedelta(0)),
    ("exp-escalated", "approved", "diane", ["omar", "diane"], timedelta(days=3)),
    ("exp-auto-rejected", "auto_rejected", None, ["omar", "victor"], timedelta(days=5)),
    ("exp-invalid", "invalid", None, [], timedelta(0)),
])
def test_approval_examples_end_as_their_approvers_decide(
        rt: WorkflowTestRuntime, example: str, outcome: str, decided_by: str | None,
        asked: list[str], waited: timedelta) -> None:
    """Each expense ends with the expected decision, decider and approvers asked, decided
    when ctx.now() says (at once, after the manager's 3 days, or after 3 + 2 days); each
    approver asked got exactly one mail (escalated only for the second), nobody else did."""
    office = approval.setup(rt)
    handle = rt.start(approval.approve_expense, approval.EXAMPLES[example], workflow_id=example)
    rt.run_until_idle()
    result = handle.result()
    assert isinstance(result, approval.ExpenseOutcome)
    assert (result.approval, result.decided_by, result.approvers_asked) == (
        outcome, decided_by, asked)
    assert result.decided_at == START + waited
    assert result.escalated is (len(asked) > 1)
    assert [(mail.to, mail.escalated) for mail in office.inbox] == [
        (name, level > 0) for level, name in enumerate(asked)]
    if outcome == "rejected":
        assert result.reason == "entertainment is not reimbursable"
    if outcome == "invalid":
        assert "receipt is required" in result.reason


def test_approval_completed_by_hand_a_day_later(rt: WorkflowTestRuntime) -> None:
    """With the manager away (nobody answers automatically), the workflow waits suspended;
    complete_callback with the mailed token a day later approves it, decided a day after the
    start and not escalated; the spent token is then refused."""
    office = approval.setup(rt)
    office.approvers["maria"].in_office = False
    handle = rt.start(approval.approve_expense, approval.EXAMPLES["exp-approved"])
    rt.run_until_idle(skip_time=False)
    assert handle.status() is InstanceStatus.RUNNING
    (mail,) = office.inbox
    assert mail.to == "maria" and mail.respond_within_hours == 72
    rt.advance_time(timedelta(days=1))
    rt.complete_callback(mail.token, approval.Decision(approver="maria", comment="fine"))
    rt.run_until_idle(skip_time=False)
    result = handle.result()
    assert (result.approval, result.decided_by, result.reason) == ("approved", "maria", "fine")
    assert result.decided_at == START + timedelta(days=1)
    assert not result.escalated
    with pytest.raises(InvalidCallbackTokenError):
        rt.fail_callback(mail.token, "Rejected", "changed my mind")


def test_approval_rejected_by_hand_after_escalation(rt: WorkflowTestRuntime) -> None:
    """The manager is away; after 3 days the second approver (also away here) is mailed and
    rejects by hand with fail_callback: the expense is rejected by them, escalated."""
    office = approval.setup(rt)
    office.approvers["diane"].in_office = False
    handle = rt.start(approval.approve_expense, approval.EXAMPLES["exp-escalated"])
    rt.run_until_idle(skip_time=False)
    rt.advance_time(approval.MANAGER_TIMEOUT)
    rt.run_until_idle(skip_time=False)
    assert [mail.to for mail in office.inbox] == ["omar", "diane"]
    rt.advance_time(timedelta(hours=5))
    rt.fail_callback(office.inbox[-1].token, "Rejected", "buy a cheaper one",
                     {"approver": "diane"})
    rt.run_until_idle(skip_time=False)
    result = handle.result()
    assert (result.approval, result.decided_by, result.escalated) == ("rejected", "diane", True)
    assert result.decided_at == START + timedelta(days=3, hours=5)


# --- order saga -------------------------------------------------------------------------------
RESERVE, RELEASE = "inventory-reserve", "inventory-release"
CHARGE, REFUND, SHIP = "payment-charge", "payment-refund", "shipping-book"


@pytest.mark.parametrize(("example", "failed_stage", "undone", "calls"), [
    ("order-ok", None, [], [RESERVE, CHARGE, SHIP]),
    ("order-out-of-stock", "inventory", [], [RESERVE]),
    ("order-card-declined", "payment", ["release-inventory"], [RESERVE, CHARGE, RELEASE]),
    ("order-undeliverable", "shipping", ["refund-payment", "release-inventory"],
     [RESERVE, CHARGE, SHIP, REFUND, RELEASE]),
])
def test_order_saga_compensates_completed_steps_in_reverse_once(
        rt: WorkflowTestRuntime, example: str, failed_stage: str | None, undone: list[str],
        calls: list[str]) -> None:
    """Success ships and charges; a failure at each stage compensates exactly the steps that
    completed, newest first, each once (one recorded call, one service run, one effect),
    leaving the stock as it was and the customer charged nothing."""
    shop = order_saga.setup(rt)
    stock_before = dict(shop.stock)
    order = order_saga.EXAMPLES[example]
    handle = rt.start(order_saga.place_order, order, workflow_id=example)
    rt.run_until_idle()
    result = handle.result()
    assert result.confirmed is (failed_stage is None)
    assert result.failed_stage == failed_stage
    assert result.undone == undone
    assert _calls(handle.history()) == calls
    assert [inv.service for inv in rt.invocations] == calls
    if failed_stage is None:
        assert result.tracking_number == "TRK-ORDER-OK"
        assert shop.net_charged_cents(example) == order.total_cents == 92_30
        assert shop.stock["book-ddia"] == stock_before["book-ddia"] - 2
    else:
        assert result.reason is not None and result.tracking_number is None
        assert shop.stock == stock_before
        assert shop.net_charged_cents(example) == 0
        effects = [entry.split()[0] for entry in shop.log]
        assert effects == {"inventory": [], "payment": ["reserved", "released"],
                           "shipping": ["reserved", "charged", "refunded", "released"],
                           }[failed_stage]


def test_order_saga_retries_a_failing_compensation_after_a_durable_sleep(
        rt: WorkflowTestRuntime) -> None:
    """The payment provider fails the refund twice: the saga sleeps a minute (a recorded
    timer) and tries again, refunds once, then releases the stock; the virtual clock moved
    two minutes."""
    shop = order_saga.setup(rt)
    refusals = Counter[str]()

    def flaky_refund(request: order_saga.RefundRequest) -> order_saga.Refund:
        if refusals[request.charge_id] < 2:
            refusals[request.charge_id] += 1
            raise ServiceError("GatewayTimeout", "the payment provider did not answer")
        return shop.refund(request)

    rt.implement(order_saga.refund_payment, flaky_refund)
    handle = rt.start(order_saga.place_order, order_saga.EXAMPLES["order-undeliverable"])
    rt.run_until_idle()
    result = handle.result()
    assert result.undone == ["refund-payment", "release-inventory"]
    ops = handle.history().operations
    assert [op.name for op in ops if op.kind in ("call", "timer")] == [
        RESERVE, CHARGE, SHIP, REFUND, "sleep", REFUND, "sleep", REFUND, RELEASE]
    assert [entry.split()[0] for entry in shop.log] == [
        "reserved", "charged", "refunded", "released"]
    assert rt.now - START == 2 * order_saga.COMPENSATION_RETRY_DELAY


# --- fan-out ----------------------------------------------------------------------------------
def _peak_outstanding(history: History) -> int:
    """The most calls outstanding at the end of any activation: created by then and not yet
    answered (replies recorded in an activation free their slot in it)."""
    calls = [op for op in history.operations if op.kind == "call"]
    last = max(op.resolved_in or op.created_in for op in calls)
    return max(sum(op.created_in <= a and (op.resolved_in is None or op.resolved_in > a)
                   for op in calls) for a in range(1, last + 1))


def test_fan_out_maps_1000_items_within_the_concurrency_limit(rt: WorkflowTestRuntime) -> None:
    """1,000 items: 990 succeed, the 10 multiples of 97 fail (1%, within the 5% tolerance),
    so the batch completes; each item is sent once, and the history never has more than
    max_concurrency (50) calls outstanding (and reaches it). Kept fast: a few seconds."""
    fan_out.setup(rt)
    sync = fan_out.EXAMPLES["catalog-sync-1000"]
    began = time.perf_counter()
    handle = rt.start(fan_out.sync_catalog, sync)
    rt.run_until_idle()
    elapsed = time.perf_counter() - began
    summary = handle.result()
    assert (summary.total, summary.succeeded, summary.failed, summary.not_started) == (
        1000, 990, 10, 0)
    assert summary.completion == "all_completed"
    assert summary.unlisted_skus == [f"SKU-{n:05d}" for n in range(97, 1001, 97)]
    history = handle.history()
    assert len(_calls(history)) == 1000
    sent = Counter(json.loads(inv.request)["item_number"] for inv in rt.invocations)
    assert sent == Counter(range(1, 1001))
    assert _peak_outstanding(history) == sync.max_concurrency == 50
    # each item is a child context named by its SKU, holding its call
    contexts = [op for op in history.operations if op.kind == "context"]
    assert [op.name for op in contexts] == [f"SKU-{n:05d}" for n in range(1, 1001)]
    assert {op.op_id.rpartition(".")[0] for op in history.operations
            if op.kind == "call"} == {op.op_id for op in contexts}
    assert elapsed < 30, f"the 1,000-item fan-out took {elapsed:.1f} s"


def test_fan_out_stops_once_failures_exceed_the_tolerance(rt: WorkflowTestRuntime) -> None:
    """With 0.5% tolerated, the 6th failure (item 582) ends the batch: the rest are never
    sent (not_started), only started items were called, and the concurrency limit held."""
    fan_out.setup(rt)
    sync = fan_out.CatalogSync(batch_id="strict", tolerated_failure_percentage=0.5)
    handle = rt.start(fan_out.sync_catalog, sync)
    rt.run_until_idle()
    summary = handle.result()
    assert summary.completion == "failure_tolerance_exceeded"
    assert summary.failed == 6
    assert summary.unlisted_skus == [f"SKU-{n:05d}" for n in range(97, 583, 97)]
    started = summary.total - summary.not_started
    assert 582 <= started < 582 + sync.max_concurrency
    assert len(_calls(handle.history())) == len(rt.invocations) == started
    assert _peak_outstanding(handle.history()) <= sync.max_concurrency


# --- monthly report ---------------------------------------------------------------------------
def test_monthly_report_runs_three_reports_thirty_days_apart(rt: WorkflowTestRuntime) -> None:
    """Three reports, each for the 30 days that just ended by ctx.now() (Jan 31, Mar 1,
    Mar 31 2024), each built once and published once; the virtual clock advanced 90 days."""
    publisher = monthly_report.setup(rt)
    subscription = monthly_report.EXAMPLES["reports-acme"]
    handle = rt.start(monthly_report.monthly_reports, subscription)
    rt.run_until_idle()
    series = handle.result()
    assert [run.month for run in series.runs] == [1, 2, 3]
    assert [run.generated_at for run in series.runs] == [
        START + timedelta(days=30 * n) for n in (1, 2, 3)]
    for n, run in enumerate(series.runs):
        assert run.report.period_start == START + timedelta(days=30 * n)
        assert run.report.period_end == run.generated_at
        assert run.report.orders > 0 and run.report.revenue_cents > 0
    assert sorted(publisher.published) == [
        "s3://reports/acme/2024-01-31.pdf", "s3://reports/acme/2024-03-01.pdf",
        "s3://reports/acme/2024-03-31.pdf"]
    ops = handle.history().operations
    assert [(op.kind, op.name) for op in ops] == [
        ("timer", "sleep"), ("step", "build-report"), ("call", "report-publisher")] * 3
    assert rt.now - START == timedelta(days=90)


def test_monthly_report_waits_for_its_timer(rt: WorkflowTestRuntime) -> None:
    """Without time skipping nothing is reported before the 30 days have passed; on day 30
    exactly the first report is published, and the workflow sleeps again."""
    publisher = monthly_report.setup(rt)
    handle = rt.start(monthly_report.monthly_reports, monthly_report.EXAMPLES["reports-acme"])
    rt.run_until_idle(skip_time=False)
    rt.advance_time(timedelta(days=29, hours=23))
    rt.run_until_idle(skip_time=False)
    assert publisher.published == {}
    rt.advance_time(timedelta(hours=1))
    rt.run_until_idle(skip_time=False)
    assert list(publisher.published) == ["s3://reports/acme/2024-01-31.pdf"]
    assert handle.status() is InstanceStatus.RUNNING


# --- each example through the CLI -------------------------------------------------------------
def _results(store: SQLiteStateStore, ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workflow_id in ids:
        inst = store.get_instance(workflow_id)
        assert inst is not None and inst.status is InstanceStatus.COMPLETED
        out[workflow_id] = json.loads(inst.result or b"null")
    return out


@pytest.mark.parametrize("module", [approval, order_saga, fan_out, monthly_report],
                         ids=lambda m: m.__name__)
def test_cli_runs_the_example_to_completion(module: Any, tmp_path: Path) -> None:
    """`python -m lambda_workflow run examples/<name>.py` exits 0 and lists every EXAMPLES
    instance as completed; the results it stored are the business outcomes expected."""
    db = tmp_path / "state.sqlite3"
    proc = subprocess.run(
        [sys.executable, "-m", "lambda_workflow", "run", f"examples/{module.__name__}.py",
         "--db", str(db)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    results_section = proc.stdout.split("\nresults:\n", 1)[1]
    ids = list(module.EXAMPLES)
    for workflow_id in ids:
        assert re.search(rf"^  {re.escape(workflow_id)}\s+completed\s", results_section,
                         re.M), proc.stdout[-2000:]
    store = SQLiteStateStore(db)
    try:
        results = _results(store, ids)
    finally:
        store.close()
    if module is approval:
        assert {k: (v["approval"], v["decided_by"]) for k, v in results.items()} == {
            "exp-approved": ("approved", "maria"), "exp-rejected": ("rejected", "maria"),
            "exp-escalated": ("approved", "diane"), "exp-auto-rejected": ("auto_rejected", None),
            "exp-invalid": ("invalid", None)}
    elif module is order_saga:
        assert {k: (v["confirmed"], v["failed_stage"], v["undone"])
                for k, v in results.items()} == {
            "order-ok": (True, None, []), "order-out-of-stock": (False, "inventory", []),
            "order-card-declined": (False, "payment", ["release-inventory"]),
            "order-undeliverable": (False, "shipping", ["refund-payment", "release-inventory"])}
    elif module is fan_out:
        summary = results["catalog-sync-1000"]
        assert (summary["total"], summary["succeeded"], summary["failed"]) == (1000, 990, 10)
    else:
        assert [run["month"] for run in results["reports-acme"]["runs"]] == [1, 2, 3]


# --- a library bug found while writing the approval example -----------------------------------
_RUNTIMES: list[WorkflowTestRuntime] = []
_SUBMITTER_ATTEMPTS: list[int] = []


def _answer_at_once(token: str) -> None:
    """A submitter whose external system answers before the submitter returns (a webhook, an
    automatic approver): it completes the callback with the token it was just given."""
    _SUBMITTER_ATTEMPTS.append(current_step().attempt)
    _RUNTIMES[-1].complete_callback(token, "approved")


@workflow
async def _instant_approval(ctx: WorkflowContext[None]) -> str:
    return await ctx.wait_for_callback("approval", _answer_at_once, str, timeout=3600)


def test_wait_for_callback_token_works_while_the_submitter_runs() -> None:
    """The token handed to the submitter is usable at once (the callback is recorded before
    the submitter runs): a submitter that completes the callback synchronously runs once and
    the workflow returns the value."""
    _SUBMITTER_ATTEMPTS.clear()
    with WorkflowTestRuntime(_instant_approval) as runtime:
        _RUNTIMES.append(runtime)
        assert runtime.run(_instant_approval, None) == "approved"
    assert _SUBMITTER_ATTEMPTS == [1]
