"""AwsConfig from environment variables: defaults, service targets, and clear errors."""

from __future__ import annotations

import pytest

from lambda_workflow.aws.config import AwsConfig, ConfigurationError, ServiceTarget

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/workflows.fifo"
BASE = {"LAMBDA_WORKFLOW_TABLE": "wf", "LAMBDA_WORKFLOW_QUEUE_URL": QUEUE}


def test_defaults_from_the_two_required_variables() -> None:
    """Table and queue are enough; the rest takes its documented default."""
    config = AwsConfig.from_env(BASE)
    assert (config.table, config.queue_url, config.bucket, config.dead_letter_queue_url) == (
        "wf", QUEUE, None, None)
    assert (config.payload_threshold, config.retention_days, config.max_receives) == (
        65536, 30, 5)
    assert config.services == {}


def test_services_from_json_and_per_service_variables() -> None:
    """LAMBDA_WORKFLOW_SERVICES gives targets; LAMBDA_WORKFLOW_SERVICE_<NAME> adds or
    overrides one (matched to the JSON's names case-insensitively, '-' as '_')."""
    env = {**BASE,
           "LAMBDA_WORKFLOW_SERVICES": '{"fraud-check": "lambda:fraud", "balance": "sqs:q1"}',
           "LAMBDA_WORKFLOW_SERVICE_FRAUD_CHECK": "sqs:https://q/fraud.fifo",
           "LAMBDA_WORKFLOW_SERVICE_LEDGER": "lambda:ledger-fn"}
    config = AwsConfig.from_env(env)
    assert config.service_target("balance") == ServiceTarget("sqs", "q1")
    assert config.service_target("fraud-check") == ServiceTarget("sqs", "https://q/fraud.fifo")
    assert config.service_target("fraud-check").fifo
    assert config.service_target("ledger") == ServiceTarget("lambda", "ledger-fn")


@pytest.mark.parametrize(("env", "message"), [
    ({"LAMBDA_WORKFLOW_QUEUE_URL": QUEUE}, "LAMBDA_WORKFLOW_TABLE"),
    ({"LAMBDA_WORKFLOW_TABLE": "wf"}, "LAMBDA_WORKFLOW_QUEUE_URL"),
    ({**BASE, "LAMBDA_WORKFLOW_QUEUE_URL": "https://q/standard"}, "FIFO"),
    ({**BASE, "LAMBDA_WORKFLOW_PAYLOAD_THRESHOLD": "lots"}, "PAYLOAD_THRESHOLD='lots'"),
    ({**BASE, "LAMBDA_WORKFLOW_PAYLOAD_THRESHOLD": "900000"}, "payload_threshold=900000"),
    ({**BASE, "LAMBDA_WORKFLOW_MAX_RECEIVES": "0"}, "MAX_RECEIVES=0"),
    ({**BASE, "LAMBDA_WORKFLOW_SERVICES": "{not json"}, "not valid JSON"),
    ({**BASE, "LAMBDA_WORKFLOW_SERVICES": '["balance"]'}, "JSON object"),
    ({**BASE, "LAMBDA_WORKFLOW_SERVICES": '{"balance": "http://x"}'}, "'balance'"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    """Each missing or invalid setting raises ConfigurationError naming what is wrong."""
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        AwsConfig.from_env(env)


def test_an_unconfigured_service_names_the_variable_to_set() -> None:
    """Asking for a service without a target says which variable to set."""
    config = AwsConfig.from_env({**BASE, "LAMBDA_WORKFLOW_SERVICES": '{"a": "sqs:q"}'})
    with pytest.raises(ConfigurationError, match="LAMBDA_WORKFLOW_SERVICE_FRAUD_CHECK") as exc:
        config.service_target("fraud-check")
    assert "configured: a" in str(exc.value)
