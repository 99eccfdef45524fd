"""The bank example deployed on moto: the table, the queues, the four functions, pollers.

Mirrors deploy/template.yaml: the workflow function on the workflow FIFO queue; the balance
service on a standard SQS queue; the fraud service invoked asynchronously; the transaction
service (plain boto3, examples/plain_transaction_service.py) on a standard SQS queue. Each
function gets its own boto3 clients, as separate Lambda functions would. Service functions
are wrapped to count how many times each request's work ran.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bank_transaction as bank
import plain_transaction_service as plain
import pytest

from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler
from lambda_workflow.aws.config import AwsConfig
from lambda_workflow.workflow import Workflow

from .conftest import Aws
from .harness import AsyncInvoker, EventSourceMapping


def expected_result(account_id: str, amount: int) -> tuple[str, str]:
    """``(status, result or error type)`` the bank workflow must end with for an input (an
    unknown account: the balance service's error, uncaught, fails the workflow)."""
    if account_id not in bank.BALANCES:
        return "failed", "ServiceError"
    if account_id == "mallory" or bank.BALANCES[account_id] < amount:
        return "completed", "failure"
    return "completed", "success"


@dataclass
class BankOnAws:
    """A deployed bank example, with its pollers and counters."""

    aws: Aws
    config: AwsConfig
    client: WorkflowClient
    workflow_deployment: AwsDeployment
    workflow_esm: EventSourceMapping
    balance_esm: EventSourceMapping
    transaction_esm: EventSourceMapping
    invoker: AsyncInvoker
    fraud_function: str
    runs: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    @property
    def pollers(self) -> list[EventSourceMapping | AsyncInvoker]:
        return [self.workflow_esm, self.balance_esm, self.transaction_esm, self.invoker]


def deploy_bank(aws: Aws, monkeypatch: pytest.MonkeyPatch, *, bucket: str | None = None,
                max_receives: int = 5, payload_threshold: int | None = None,
                workflows: tuple[Workflow[Any, Any], ...] = (),
                wrap_workflow_deployment: Callable[[AwsDeployment], None] | None = None,
                ) -> BankOnAws:
    """Create the resources and wire the handlers."""
    balance_queue = aws.create_queue(aws.name("balance"))
    transaction_queue = aws.create_queue(aws.name("transaction"))
    fraud_function = aws.create_function(aws.name("fraud"))
    extra: dict[str, Any] = {}
    if payload_threshold is not None:
        extra["payload_threshold"] = payload_threshold
    config = aws.config(services={"balance": f"sqs:{balance_queue}",
                                  "fraud": f"lambda:{fraud_function}",
                                  "transaction": f"sqs:{transaction_queue}"},
                        bucket=bucket, max_receives=max_receives, **extra)
    runs: Counter[tuple[str, str, int]] = Counter()
    lock = threading.Lock()

    def count(name: str, account_id: str, amount: int) -> None:
        with lock:
            runs[(name, account_id, amount)] += 1

    def counted(name: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def run(tx: bank.BankTransaction) -> Any:
            count(name, tx.account_id, tx.amount)
            return await fn(tx)
        return run

    wf_deployment = AwsDeployment(config, session=aws.session)
    if wrap_workflow_deployment is not None:
        wrap_workflow_deployment(wf_deployment)
    handle_workflow = workflow_handler(bank.make_transaction, *workflows,
                                       deployment=wf_deployment)
    handle_balance = service_handler(bank.balance_service, counted("balance", bank.get_balance),
                                     deployment=AwsDeployment(config, session=aws.session))
    handle_fraud = service_handler(bank.fraud_service, counted("fraud", bank.check_fraud),
                                   deployment=AwsDeployment(config, session=aws.session))

    # The plain-boto3 service reads the environment like a Lambda function would.
    monkeypatch.setenv("LAMBDA_WORKFLOW_TABLE", config.table)
    monkeypatch.setenv("LAMBDA_WORKFLOW_QUEUE_URL", config.queue_url)
    monkeypatch.setattr(plain, "_sqs", aws.client("sqs"))
    monkeypatch.setattr(plain, "_ddb", aws.client("dynamodb"))
    real_apply = plain.apply_transaction

    def counted_apply(request: Any) -> tuple[bool, Any]:
        ok, value = real_apply(request)
        if ok:
            count("transaction", request["account_id"], request["amount"])
        return ok, value

    monkeypatch.setattr(plain, "apply_transaction", counted_apply)

    sqs = aws.client("sqs")
    return BankOnAws(
        aws, config, WorkflowClient(config, session=aws.session), wf_deployment,
        EventSourceMapping(sqs, config.queue_url, handle_workflow),
        EventSourceMapping(sqs, balance_queue, handle_balance),
        EventSourceMapping(sqs, transaction_queue, plain.handler),
        AsyncInvoker(aws.invocations, {fraud_function: handle_fraud}),
        fraud_function, runs)
