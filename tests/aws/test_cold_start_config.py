"""The workflow function checks its configuration at cold start: every setting parses, every
service a registered workflow can call has a target, every child workflow is registered.
Otherwise one ConfigurationError names all that is wrong, and no message is consumed."""

from __future__ import annotations

import json
from typing import Any

import bank_transaction as bank
import pytest
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.aws import ConfigurationError, WorkflowClient, workflow_handler

from .conftest import REGION, Aws
from .harness import FakeContext


class Req(BaseModel):
    n: int


ledger = Service("ledger", Req, Req)
mailer = Service("mail-out", Req, Req)


@workflow(services=[mailer])
async def declares_mail(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.call(ledger, ctx.request)


@workflow
async def with_child(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.child(declares_mail, ctx.request)


def _env(aws: Aws, **extra: str) -> dict[str, str]:
    queue_url, dlq_url = aws.create_fifo_queue(max_receives=5)
    return {"LAMBDA_WORKFLOW_TABLE": aws.create_table(), "LAMBDA_WORKFLOW_QUEUE_URL": queue_url,
            "LAMBDA_WORKFLOW_DLQ_URL": dlq_url or "", "AWS_ENDPOINT_URL": aws.endpoint,
            "AWS_REGION": REGION, **extra}


def _use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_every_missing_target_and_bad_setting_is_named_in_one_error_and_no_message_is_taken(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bank workflow function with only the fraud target and a bad retention: the first
    invocation raises one ConfigurationError naming the two missing services (with the
    variable to set) and the bad setting; the started workflow's message is still on the
    queue, unconsumed, and nothing was recorded."""
    env = _env(aws, LAMBDA_WORKFLOW_SERVICE_FRAUD="lambda:fraud-fn",
               LAMBDA_WORKFLOW_RETENTION_DAYS="a month")
    _use(monkeypatch, env)
    client = WorkflowClient(_client_config(env), session=aws.session)
    client.start(bank.make_transaction, bank.BankTransaction(account_id="a", amount=5),
                 workflow_id="tx-1")
    handler = workflow_handler(bank.make_transaction)
    sqs = aws.client("sqs")
    with pytest.raises(ConfigurationError) as raised:
        handler({"Records": []}, FakeContext())
    message = str(raised.value)
    assert raised.value.problems == [
        "LAMBDA_WORKFLOW_RETENTION_DAYS='a month' is not an integer",
        raised.value.problems[1], raised.value.problems[2]]
    assert "3 problems" in message
    assert "service 'balance'" in message and "LAMBDA_WORKFLOW_SERVICE_BALANCE=" in message
    assert "service 'transaction'" in message and "LAMBDA_WORKFLOW_SERVICE_TRANSACTION=" in message
    assert "'fraud'" not in message.replace("configured: fraud", "")
    got = sqs.receive_message(QueueUrl=env["LAMBDA_WORKFLOW_QUEUE_URL"], MaxNumberOfMessages=10)
    assert len(got.get("Messages", [])) == 1  # still there for the fixed function
    assert client.describe("tx-1").activations == 0


def _client_config(env: dict[str, str]) -> Any:
    from lambda_workflow.aws import AwsConfig

    return AwsConfig(table=env["LAMBDA_WORKFLOW_TABLE"],
                     queue_url=env["LAMBDA_WORKFLOW_QUEUE_URL"],
                     endpoint_url=env["AWS_ENDPOINT_URL"], region=REGION)


def test_in_lambda_the_check_fails_the_import_itself(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside Lambda (AWS_LAMBDA_FUNCTION_NAME set) the check runs when the handler is made,
    which is the module's import: the function's init fails and says why."""
    _use(monkeypatch, _env(aws, AWS_LAMBDA_FUNCTION_NAME="orders-workflow"))
    with pytest.raises(ConfigurationError, match=r"service 'ledger'.*\n.*service 'mail-out'"):
        workflow_handler(declares_mail)


def test_a_child_workflow_must_be_registered_or_routed(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child workflow runs in its parent's function unless LAMBDA_WORKFLOW_WORKFLOW_QUEUES
    routes it to another function's queue; neither: the error says both ways out (its
    services are required once it is registered)."""
    _use(monkeypatch, _env(aws))
    handler = workflow_handler(with_child)
    with pytest.raises(ConfigurationError) as raised:
        handler({"Records": []}, FakeContext())
    assert raised.value.problems == [
        "workflow 'with_child' starts the child workflow 'declares_mail', which this function "
        "does not register and LAMBDA_WORKFLOW_WORKFLOW_QUEUES does not route (add it to "
        "workflow_handler(), or name the queue of the function that runs it)"]


def test_a_child_workflow_routed_to_another_function_passes(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the child's queue in LAMBDA_WORKFLOW_WORKFLOW_QUEUES, the parent's function need
    not register it, nor have targets for the child's services (the child's function
    needs them)."""
    other, _ = aws.create_fifo_queue()
    _use(monkeypatch, _env(aws, AWS_LAMBDA_FUNCTION_NAME="orders-workflow",
                           LAMBDA_WORKFLOW_WORKFLOW_QUEUES=json.dumps(
                               {"declares_mail": other})))
    handler = workflow_handler(with_child)
    assert handler({"Records": []}, FakeContext()) == {"batchItemFailures": []}


def test_a_bad_workflow_queues_table_is_named_with_the_unrouted_child(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LAMBDA_WORKFLOW_WORKFLOW_QUEUES that does not parse, or names a standard queue, is a
    problem of its own, listed with the rest at the cold start."""
    _use(monkeypatch, _env(aws, LAMBDA_WORKFLOW_WORKFLOW_QUEUES="{not json"))
    with pytest.raises(ConfigurationError) as raised:
        workflow_handler(with_child)({"Records": []}, FakeContext())
    assert raised.value.problems[0].startswith(
        "LAMBDA_WORKFLOW_WORKFLOW_QUEUES is not valid JSON")
    assert "starts the child workflow 'declares_mail'" in raised.value.problems[1]
    _use(monkeypatch, _env(aws, LAMBDA_WORKFLOW_WORKFLOW_QUEUES=json.dumps(
        {"declares_mail": "https://sqs.example/1/children"})))
    with pytest.raises(ConfigurationError, match=(
            r"the queue of workflow 'declares_mail' must be an SQS FIFO queue .*"
            r"LAMBDA_WORKFLOW_WORKFLOW_QUEUES")):
        workflow_handler(with_child)({"Records": []}, FakeContext())


def test_a_per_service_variable_names_a_service_with_a_dash(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """LAMBDA_WORKFLOW_SERVICE_MAIL_OUT is the target of the required service 'mail-out'
    (before, it configured a service 'mail_out' that no workflow calls, and 'mail-out' had no
    target unless LAMBDA_WORKFLOW_SERVICES also named it)."""
    _use(monkeypatch, _env(aws, LAMBDA_WORKFLOW_SERVICE_LEDGER="lambda:ledger-fn",
                           LAMBDA_WORKFLOW_SERVICE_MAIL_OUT="lambda:mail-fn"))
    handler = workflow_handler(declares_mail)
    assert handler({"Records": []}, FakeContext()) == {"batchItemFailures": []}


def test_a_complete_configuration_passes_and_the_function_runs(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every target set (JSON and per-service variables) and the child registered, the
    check passes in Lambda's init and the handler takes its events."""
    _use(monkeypatch, _env(aws, AWS_LAMBDA_FUNCTION_NAME="orders-workflow",
                           LAMBDA_WORKFLOW_SERVICES='{"ledger": "lambda:ledger-fn"}',
                           LAMBDA_WORKFLOW_SERVICE_MAIL_OUT="lambda:mail-fn"))
    handler = workflow_handler(with_child, declares_mail)
    assert handler({"Records": []}, FakeContext()) == {"batchItemFailures": []}
