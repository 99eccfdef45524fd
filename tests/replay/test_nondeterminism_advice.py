"""A NonDeterminismError for a changed request, duration, service or step says what to do:
keep the old code for instances started before the change with ctx.patched, and read
docs/versioning.md. Checked on the replay check and on a running instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from lambda_workflow import NonDeterminismError, Service, WorkflowContext, workflow
from lambda_workflow._core import mismatch_advice
from lambda_workflow.errors import WorkflowFailedError
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import History
from lambda_workflow.testing import WorkflowTestRuntime, check_replay


class Tx(BaseModel):
    account: str
    amount: int


debit_service = Service("debit", Tx, None)
credit_service = Service("credit", Tx, None)
PATCH = 'if ctx.patched("<patch-id>"): <new code> else: <old code> (see docs/versioning.md)'


@workflow(name="transfer")
async def transfer_v1(ctx: WorkflowContext[Tx]) -> str:
    await ctx.sleep(10)
    await ctx.call(debit_service, ctx.request)
    return "done"


@workflow(name="transfer")
async def transfer_fee(ctx: WorkflowContext[Tx]) -> str:
    await ctx.sleep(10)
    await ctx.call(debit_service, Tx(account=ctx.request.account,
                                     amount=ctx.request.amount + 1))  # the new fee
    return "done"


@workflow(name="transfer")
async def transfer_longer_wait(ctx: WorkflowContext[Tx]) -> str:
    await ctx.sleep(20)  # waits longer now
    await ctx.call(debit_service, ctx.request)
    return "done"


@workflow(name="transfer")
async def transfer_credit(ctx: WorkflowContext[Tx]) -> str:
    await ctx.sleep(10)
    await ctx.call(credit_service, ctx.request)  # another service now
    return "done"


def _recorded() -> History:
    with WorkflowTestRuntime(transfer_v1, services={debit_service: lambda tx: None}) as rt:
        assert rt.run(transfer_v1, Tx(account="a", amount=5), workflow_id="t-1") == "done"
        return rt.history("t-1")


def _line(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, start=1) if text.endswith(marker))


def test_a_changed_request_points_to_ctx_patched() -> None:
    check = check_replay(transfer_fee, _recorded())
    assert not check.ok
    assert check.message.endswith(
        "the request differs from the recorded one: amount: recorded 5, now 6. If the code "
        "that builds this request changed on purpose, instances started before the change "
        f"must replay the recorded request: keep both with {PATCH}. Otherwise build requests "
        "only from the workflow's input and recorded results (not the clock or random "
        "numbers)")
    assert f"(call 'debit' at test_nondeterminism_advice.py:{_line('# the new fee') - 1} " \
           "in transfer_fee)" in check.message


def test_a_changed_duration_says_duration_and_points_to_ctx_patched() -> None:
    check = check_replay(transfer_longer_wait, _recorded())
    assert not check.ok
    line = _line("# waits longer now")
    assert (f"at operation #1 (timer 'sleep' at test_nondeterminism_advice.py:{line} in "
            "transfer_longer_wait): the timer's duration differs from the recorded one: "
            "seconds: recorded 10.0, now 20.0. A changed duration is a change of the "
            "workflow's code: instances started before it must replay the recorded one. Keep "
            f"both with {PATCH}") in check.message


def test_another_service_points_to_ctx_patched() -> None:
    check = check_replay(transfer_credit, _recorded())
    assert not check.ok
    assert "created call 'credit', but the history recorded call 'debit'" in check.message
    assert check.message.endswith(mismatch_advice("name", "call"))


def test_a_running_instance_fails_with_the_advice(tmp_path: Path) -> None:
    """Not only the replay check: an instance recorded by the old code and woken under the
    new one fails with the same NonDeterminismError message."""
    db = tmp_path / "state.sqlite3"
    with LocalRuntime(db) as old:
        old.register(transfer_v1)
        old.start(transfer_v1, Tx(account="a", amount=5), workflow_id="t-2")
        old.run_until_idle(skip_time=False)  # asleep on its 10 s timer
    with LocalRuntime(db) as new:
        new.register(transfer_longer_wait)
        new.implement(debit_service, lambda tx: None)
        new.run_until_idle()
        with pytest.raises(WorkflowFailedError) as failed:
            new.result("t-2")
    assert failed.value.error_type == NonDeterminismError.__name__
    assert "the timer's duration differs from the recorded one: seconds: recorded 10.0, now " \
           "20.0. A changed duration is a change of the workflow's code" in failed.value.message
    assert failed.value.message.endswith(PATCH)
