"""The bank example end to end on a real AWS API (moto's server over HTTP): WorkflowClient
starts instances, the workflow function runs from the FIFO queue, three service functions
(one of them plain boto3, one invoked asynchronously) reply, and every instance ends with the
result the rules give."""

from __future__ import annotations

import time

import bank_transaction as bank
import pytest

from lambda_workflow.errors import WorkflowFailedError
from lambda_workflow.models import InstanceStatus

from .bank import deploy_bank, expected_result
from .conftest import Aws
from .harness import drain

ACCOUNTS = ("alice", "bob", "mallory", "carol")


def _check(deployed_runs: dict[tuple[str, str, int], int],
           inputs: list[tuple[str, str, int]]) -> None:
    """Each service ran exactly once for each call it received."""
    for _, account, amount in inputs:
        assert deployed_runs[("balance", account, amount)] == 1
        assert deployed_runs[("fraud", account, amount)] == 1
        status, result = expected_result(account, amount)
        wanted = 1 if (status, result) == ("completed", "success") else 0
        assert deployed_runs[("transaction", account, amount)] == wanted


def test_one_workflow_runs_end_to_end(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """One transaction: start, two calls in the first activation, the transaction call in the
    second, completed with "success"; each service ran once and the history shows it."""
    deployed = deploy_bank(aws, monkeypatch)
    handle = deployed.client.start(bank.make_transaction,
                                   bank.BankTransaction(account_id="alice", amount=50),
                                   workflow_id="tx-ok")
    assert handle.status() is InstanceStatus.RUNNING
    drain(deployed.pollers)
    assert handle.status() is InstanceStatus.COMPLETED
    assert handle.result() == "success"
    history = handle.history()
    assert [(op.op_id, op.name, op.state.value, op.created_in, op.resolved_in)
            for op in history.operations] == [
        ("1", "balance", "completed", 1, 2), ("2", "fraud", "completed", 1, 2),
        ("3", "transaction", "completed", 2, 3)]
    _check(deployed.runs, [("tx-ok", "alice", 50)])
    assert deployed.invoker.delivered == 1  # fraud went by asynchronous invoke
    assert deployed.workflow_esm.failures_reported == 0


def test_a_hundred_concurrent_workflows_all_complete_correctly(
        aws: Aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """100 instances started at once and run by two pollers per queue: every one ends with
    the right status and result, and no service sees a call id twice."""
    deployed = deploy_bank(aws, monkeypatch)
    inputs = [(f"tx-{i:03d}", ACCOUNTS[i % 4], i + 1) for i in range(100)]
    started = time.perf_counter()
    for workflow_id, account, amount in inputs:
        deployed.client.start(bank.make_transaction,
                              bank.BankTransaction(account_id=account, amount=amount),
                              workflow_id=workflow_id)
    drain(deployed.pollers, threads=2, timeout=600)
    elapsed = time.perf_counter() - started
    for workflow_id, account, amount in inputs:
        status, result = expected_result(account, amount)
        inst = deployed.client.describe(workflow_id)
        assert inst.status.value == status, workflow_id
        if status == "completed":
            assert deployed.client.result(workflow_id, bank.make_transaction) == result
        else:
            with pytest.raises(WorkflowFailedError) as failed:
                deployed.client.result(workflow_id, bank.make_transaction)
            assert failed.value.error_type == result
            assert f"no account {account!r}" in failed.value.message
    _check(deployed.runs, inputs)
    with capsys.disabled():
        print(f"\n100 bank workflows on moto: {elapsed:.1f} s wall, "
              f"{sum(aws.requests.values())} API requests")
