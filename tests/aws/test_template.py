"""``deploy/template.yaml``, the bank example's template as ``lambda-workflow template``
generates it (test_template_generator.py checks that the file is the generation): translated
to plain CloudFormation by aws-sam-translator (offline), linted by cfn-lint, then the
properties the runtime relies on, one test each.

cfn-lint alone does not look inside a SAM function's ``Events``; on the translated template it
checks the ``AWS::Lambda::EventSourceMapping`` SAM generates (batch size limits, response types,
references), which the negative tests show.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import re
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cfnlint.api import lint  # type: ignore[import-untyped]
from samtranslator.model.exceptions import (  # type: ignore[import-untyped]
    InvalidDocumentException,
)
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

from lambda_workflow import Service
from lambda_workflow._package import DEFAULT_PYTHON
from lambda_workflow.aws.config import AwsConfig
from lambda_workflow.aws.dynamodb import table_definition
from lambda_workflow.aws.payloads import (
    DEFAULT_PREFIX,
    EXPIRY_MARGIN_DAYS,
    minimum_expiry_days,
    reply_owner,
    request_owner,
)
from lambda_workflow.context import MAX_SLEEP

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
README = ROOT / "deploy" / "README.md"
EXAMPLES = ROOT / "examples"
CONFIG_MODULE = ROOT / "src" / "lambda_workflow" / "aws" / "config.py"
REGION = "us-east-1"
ACCOUNT = "123456789012"
#: What `sam deploy` puts in place of the local CodeUri after uploading the zip.
UPLOADED_CODE = "s3://lambda-workflow-artifacts/bank.zip"
#: Values for the parameters without a default, as `sam deploy --parameter-overrides` gives
#: them (deploy/README.md): none (the callback keys are a secret the stack creates).
PARAMETER_VALUES: dict[str, str] = {}
#: The ARN pattern of the timer schedules in the template's schedule group, the only resource
#: on which the workflow function may create schedules.
TIMER_SCHEDULES = ("arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:"
                   "schedule/${TimerScheduleGroup}/*")
#: cfn-lint warnings accepted on the translated template, by rule id (none today). A new one
#: fails the lint test with its message, so that it is read before it is accepted here.
ACCEPTED_WARNINGS: frozenset[str] = frozenset()

Template = dict[str, Any]


# ---------------------------------------------------------------- translate and lint


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs offline: opening a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access during an offline template test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load_sam() -> Template:
    sam: Template = yaml_parse(TEMPLATE.read_text(encoding="utf-8"))
    return sam


def _no_managed_policies() -> dict[str, str]:
    """The managed-policy map SAM would otherwise list from IAM (``iam:ListPolicies``): empty,
    since the template names no AWS managed policy."""
    return {}


def translate(sam: Template) -> Template:
    """The CloudFormation `sam deploy` would submit: local code replaced by its S3 location
    (as `sam package` does), then the SAM transform, without any AWS call."""
    sam = copy.deepcopy(sam)
    sam["Globals"]["Function"]["CodeUri"] = UPLOADED_CODE
    # The translator only reads the session's region (for AWS::Region and the partition).
    session = SimpleNamespace(region_name=REGION)
    translator = Translator(None, Parser(), boto_session=session)
    cfn: Template = translator.translate(sam, parameter_values=dict(PARAMETER_VALUES),
                                         get_managed_policy_map=_no_managed_policies)
    return cfn


def check(sam: Template) -> tuple[list[str], list[str]]:
    """Translate and lint; returns (errors, warnings) as ``"<rule> line N: message"``. A
    template SAM cannot translate gives its translation errors."""
    try:
        cfn = translate(sam)
    except InvalidDocumentException as exc:
        return [f"SAM: {cause.message}" for cause in exc.causes], []
    matches = lint(json.dumps(cfn, indent=1), regions=[REGION])
    found = [(m.rule.id, f"{m.rule.id} line {m.linenumber}: {m.message}") for m in matches]
    return ([text for rule, text in found if rule.startswith("E")],
            [text for rule, text in found if rule.startswith("W")])


@pytest.fixture(scope="module")
def cfn() -> Template:
    return translate(load_sam())


def resources(cfn: Template, kind: str) -> dict[str, dict[str, Any]]:
    return {name: r.get("Properties", {}) for name, r in cfn["Resources"].items()
            if r["Type"] == kind}


def ref_target(value: Any) -> str:
    """The logical id a ``Ref`` or ``Fn::GetAtt [id, Arn]`` names."""
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return str(value["Fn::GetAtt"][0])
    raise AssertionError(f"expected a Ref or GetAtt, got {value!r}")


def function_by_handler(cfn: Template, handler: str) -> tuple[str, dict[str, Any]]:
    (found,) = [(name, props) for name, props in resources(cfn, "AWS::Lambda::Function").items()
                if props["Handler"] == handler]
    return found


def event_sources(cfn: Template, function: str) -> list[dict[str, Any]]:
    return [props for props in resources(cfn, "AWS::Lambda::EventSourceMapping").values()
            if ref_target(props["FunctionName"]) == function]


def test_translates_and_lints_without_errors() -> None:
    """SAM translates the template offline and cfn-lint finds no error in the result (and no
    warning beyond ACCEPTED_WARNINGS)."""
    errors, warnings = check(load_sam())
    assert errors == []
    assert [w for w in warnings if w.split()[0] not in ACCEPTED_WARNINGS] == []


def _workflow_event(sam: Template) -> dict[str, Any]:
    props: dict[str, Any] = sam["Resources"]["WorkflowFunction"]["Properties"]
    (event,) = props["Events"].values()
    source: dict[str, Any] = event["Properties"]
    return source


@pytest.mark.parametrize(("change", "expected"), [
    ("BatchSize 11", "11 is greater than the maximum of 10"),
    ("ReportBatchItemFailure",
     "'ReportBatchItemFailure' is not one of ['ReportBatchItemFailures']"),
    ("a misspelled queue", "'WorkflowQueu' is not one of"),
])
def test_the_check_catches_a_broken_fifo_event_source(change: str, expected: str) -> None:
    """A copy of the template with a FIFO batch over 10, a misspelled ReportBatchItemFailures or
    a queue that does not exist fails translate+lint, with a message naming the mistake."""
    sam = load_sam()
    source = _workflow_event(sam)
    if change == "BatchSize 11":
        source["BatchSize"] = 11
    elif change == "ReportBatchItemFailure":
        source["FunctionResponseTypes"] = ["ReportBatchItemFailure"]
    else:
        source["Queue"] = {"Fn::GetAtt": ["WorkflowQueu", "Arn"]}
    errors, _ = check(sam)
    assert errors, f"{change}: translate+lint found nothing"
    assert any(expected in e for e in errors), errors


# ---------------------------------------------------------------- the workflow queue


def test_workflow_function_reads_the_fifo_queue_in_batches_of_ten(cfn: Template) -> None:
    """The workflow function's only event source is the FIFO queue, in batches of 10 (the FIFO
    maximum), reporting failures per message (ReportBatchItemFailures)."""
    name, _ = function_by_handler(cfn, "bank_lambda.handle_workflow")
    (source,) = event_sources(cfn, name)
    assert source["BatchSize"] == 10
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert "MaximumBatchingWindowInSeconds" not in source
    queue = cfn["Resources"][ref_target(source["EventSourceArn"])]
    assert queue["Type"] == "AWS::SQS::Queue"
    assert queue["Properties"]["FifoQueue"] is True
    assert queue["Properties"]["ContentBasedDeduplication"] is False


def test_workflow_queue_dead_letters_into_a_fifo_queue(cfn: Template) -> None:
    """The workflow queue's redrive target is a FIFO queue, the one LAMBDA_WORKFLOW_DLQ_URL
    names."""
    queue = cfn["Resources"]["WorkflowQueue"]["Properties"]
    dlq = ref_target(queue["RedrivePolicy"]["deadLetterTargetArn"])
    assert cfn["Resources"][dlq]["Properties"]["FifoQueue"] is True
    _, function = function_by_handler(cfn, "bank_lambda.handle_workflow")
    assert ref_target(function["Environment"]["Variables"]["LAMBDA_WORKFLOW_DLQ_URL"]) == dlq
    assert ref_target(function["Environment"]["Variables"]["LAMBDA_WORKFLOW_QUEUE_URL"]) == \
        "WorkflowQueue"


def test_max_receives_is_the_queues_max_receive_count(cfn: Template) -> None:
    """One parameter sets the redrive maxReceiveCount of every queue a function reads and the
    LAMBDA_WORKFLOW_MAX_RECEIVES of every function, so the two cannot disagree."""
    counts = {name: props["RedrivePolicy"]["maxReceiveCount"]
              for name, props in resources(cfn, "AWS::SQS::Queue").items()
              if "RedrivePolicy" in props}
    consumed = {ref_target(s["EventSourceArn"])
                for s in resources(cfn, "AWS::Lambda::EventSourceMapping").values()}
    assert consumed <= set(counts)
    env = {name: props["Environment"]["Variables"]["LAMBDA_WORKFLOW_MAX_RECEIVES"]
           for name, props in resources(cfn, "AWS::Lambda::Function").items()}
    assert len(env) == 5
    assert set(map(json.dumps, [*counts.values(), *env.values()])) == {
        json.dumps({"Ref": "MaxReceives"})}
    assert cfn["Parameters"]["MaxReceives"]["Type"] == "Number"


def test_visibility_timeouts_are_six_times_the_function_timeouts(cfn: Template) -> None:
    """Every queue that feeds a function has a visibility timeout of at least 6 times that
    function's timeout, as AWS advises for Lambda event sources."""
    functions = resources(cfn, "AWS::Lambda::Function")
    pairs = [(ref_target(s["EventSourceArn"]), ref_target(s["FunctionName"]))
             for s in resources(cfn, "AWS::Lambda::EventSourceMapping").values()]
    assert len(pairs) == 4
    for queue, function in pairs:
        visibility = cfn["Resources"][queue]["Properties"]["VisibilityTimeout"]
        assert visibility >= 6 * functions[function]["Timeout"], (queue, function)


def test_every_service_queue_reports_batch_item_failures(cfn: Template) -> None:
    """The balance and transaction functions read their own standard queues (each with a
    dead-letter queue) in batches of 10 with ReportBatchItemFailures."""
    for handler, queue in [("bank_lambda.handle_balance", "BalanceQueue"),
                           ("plain_transaction_service.handler", "TransactionQueue")]:
        name, _ = function_by_handler(cfn, handler)
        (source,) = event_sources(cfn, name)
        assert ref_target(source["EventSourceArn"]) == queue
        assert source["BatchSize"] == 10
        assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        props = cfn["Resources"][queue]["Properties"]
        assert "FifoQueue" not in props
        assert "RedrivePolicy" in props


def test_timer_function_reads_the_standard_timer_queue(cfn: Template) -> None:
    """Durable timers: the timer function's only event source is the timer queue, a standard
    queue (FIFO queues refuse per-message DelaySeconds) with its own standard dead-letter queue,
    in batches of 10 with ReportBatchItemFailures. Every function's LAMBDA_WORKFLOW_TIMER_QUEUE_URL
    names it, and the workflow function (which schedules timers) may send to it."""
    name, _ = function_by_handler(cfn, "bank_lambda.handle_timers")
    (source,) = event_sources(cfn, name)
    assert ref_target(source["EventSourceArn"]) == "TimerQueue"
    assert source["BatchSize"] == 10
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = cfn["Resources"]["TimerQueue"]
    assert queue["Type"] == "AWS::SQS::Queue"
    assert "FifoQueue" not in queue["Properties"]
    assert "DelaySeconds" not in queue["Properties"]  # each message carries its own delay
    dlq = ref_target(queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
    assert dlq == "TimerDeadLetterQueue"
    assert "FifoQueue" not in cfn["Resources"][dlq]["Properties"]
    for handler, variables in _environments(cfn).items():
        assert ref_target(variables["LAMBDA_WORKFLOW_TIMER_QUEUE_URL"]) == "TimerQueue", handler
    assert ("sqs:SendMessage", "TimerQueue") in _permissions(cfn, "bank_lambda.handle_workflow")


def test_fraud_function_is_invoked_only_asynchronously(cfn: Template) -> None:
    """The fraud function has no event source; its failed asynchronous invocations go to an
    SQS on-failure destination."""
    name, _ = function_by_handler(cfn, "bank_lambda.handle_fraud")
    assert event_sources(cfn, name) == []
    (config,) = [c for c in resources(cfn, "AWS::Lambda::EventInvokeConfig").values()
                 if ref_target(c["FunctionName"]) == name]
    destination = ref_target(config["DestinationConfig"]["OnFailure"]["Destination"])
    assert cfn["Resources"][destination]["Type"] == "AWS::SQS::Queue"


# ---------------------------------------------------------------- state and payloads


def test_table_keys_billing_ttl_and_recovery(cfn: Template) -> None:
    """The table is exactly the DynamoDB backend's table_definition (pk (S, HASH) and sk
    (S, RANGE), the by_status index that lists instances, on-demand billing), plus TTL on
    expires_at and point-in-time recovery."""
    (table,) = resources(cfn, "AWS::DynamoDB::Table").values()
    assert {k: table[k] for k in table_definition()} == table_definition()
    assert set(table) == {*table_definition(), "TimeToLiveSpecification",
                          "PointInTimeRecoverySpecification"}
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"},
                                  {"AttributeName": "sk", "KeyType": "RANGE"}]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by_status"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_bucket_is_private_encrypted_and_expires_after_retention(cfn: Template) -> None:
    """The bucket blocks public access and encrypts at rest; its lifecycle rule expires objects
    after the retention days plus a margin, for every allowed retention, and is off when
    retention is 0 (keep for ever)."""
    (bucket,) = resources(cfn, "AWS::S3::Bucket").values()
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    (sse,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["ExpirationInDays"] == {
        "Fn::FindInMap": ["PayloadExpiry", {"Ref": "RetentionDays"}, "Days"]}
    assert rule["Status"] == {"Fn::If": ["KeepForever", "Disabled", "Enabled"]}
    assert cfn["Conditions"]["KeepForever"] == {"Fn::Equals": [{"Ref": "RetentionDays"}, "0"]}
    retention = cfn["Parameters"]["RetentionDays"]
    assert retention["Default"] == "30"
    expiry = cfn["Mappings"]["PayloadExpiry"]
    assert set(retention["AllowedValues"]) == set(expiry)
    for days in map(int, retention["AllowedValues"]):
        if days:
            assert expiry[str(days)]["Days"] > days + 7, days


def test_payloads_outlive_the_longest_sleep(cfn: Template) -> None:
    """For every allowed retention, the lifecycle rule keeps payloads at least the longest
    sleep (or callback timeout) the SDK allows, plus the retention, plus the margin
    (minimum_expiry_days): an instance that writes a payload and then sleeps as long as it
    may still reads it when it wakes, and its history stays readable until its items
    expire. Raising MAX_SLEEP without the template fails here."""
    expiry = cfn["Mappings"]["PayloadExpiry"]
    for days in map(int, cfn["Parameters"]["RetentionDays"]["AllowedValues"]):
        if days:
            assert expiry[str(days)]["Days"] >= minimum_expiry_days(days), days
            assert expiry[str(days)]["Days"] >= MAX_SLEEP.days + days, days
    assert minimum_expiry_days(30) == MAX_SLEEP.days + 30 + EXPIRY_MARGIN_DAYS


# ---------------------------------------------------------------- configuration


def _documented_variables() -> tuple[set[str], list[str]]:
    """The variable names the docstring of lambda_workflow/aws/config.py lists, and the
    patterns (``LAMBDA_WORKFLOW_SERVICE_<NAME>``) as regular expressions."""
    doc = ast.get_docstring(ast.parse(CONFIG_MODULE.read_text(encoding="utf-8"))) or ""
    names = set(re.findall(r"``([A-Z][A-Z0-9_]*(?:<[A-Z]+>)?)``", doc))
    patterns = [re.escape(n.split("<")[0]) + r"[A-Z0-9_]+" for n in names if "<" in n]
    return {n for n in names if "<" not in n}, patterns


def _environments(cfn: Template) -> dict[str, dict[str, Any]]:
    return {props["Handler"]: props["Environment"]["Variables"]
            for props in resources(cfn, "AWS::Lambda::Function").values()}


def test_every_variable_set_is_documented_in_config(cfn: Template) -> None:
    """Every environment variable the template sets on a function is one that
    lambda_workflow/aws/config.py documents, and the required ones are set everywhere."""
    names, patterns = _documented_variables()
    assert "LAMBDA_WORKFLOW_TABLE" in names and patterns  # the docstring was read
    for handler, variables in _environments(cfn).items():
        unknown = [v for v in variables
                   if v not in names and not any(re.fullmatch(p, v) for p in patterns)]
        assert unknown == [], handler
        assert {"LAMBDA_WORKFLOW_TABLE", "LAMBDA_WORKFLOW_QUEUE_URL"} <= set(variables)


def _bank_services(monkeypatch: pytest.MonkeyPatch) -> list[Service[Any, Any]]:
    """The Service objects examples/bank_transaction.py declares (examples/ on sys.path for
    the import, as the Lambda has the zip's root)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("bank_transaction")
    return [v for v in vars(module).values() if isinstance(v, Service)]


def _services_map(cfn: Template) -> dict[str, str]:
    """LAMBDA_WORKFLOW_SERVICES of the workflow function, its ${...} placeholders unresolved."""
    _, function = function_by_handler(cfn, "bank_lambda.handle_workflow")
    raw = function["Environment"]["Variables"]["LAMBDA_WORKFLOW_SERVICES"]
    assert set(raw) == {"Fn::Sub"} and isinstance(raw["Fn::Sub"], str), raw
    services: dict[str, str] = json.loads(raw["Fn::Sub"])
    return services


def test_services_map_names_every_service_of_the_example(cfn: Template,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """LAMBDA_WORKFLOW_SERVICES (on the workflow function only) has exactly the services that
    examples/bank_transaction.py declares, each routed to the function implementing it:
    balance and transaction through their queues, fraud by asynchronous invocation."""
    declared = {s.name for s in _bank_services(monkeypatch)}
    assert declared == {"balance", "fraud", "transaction"}
    services = _services_map(cfn)
    assert set(services) == declared
    handlers = {"balance": "bank_lambda.handle_balance", "fraud": "bank_lambda.handle_fraud",
                "transaction": "plain_transaction_service.handler"}
    for service, spec in services.items():
        match = re.fullmatch(r"(sqs|lambda):\$\{(\w+)\}", spec)
        assert match, spec
        kind, target = match.groups()
        if kind == "lambda":
            function = target
        else:
            sources = [s for s in resources(cfn, "AWS::Lambda::EventSourceMapping").values()
                       if ref_target(s["EventSourceArn"]) == target]
            (source,) = sources
            function = ref_target(source["FunctionName"])
        resource = cfn["Resources"][function]
        assert resource["Type"] == "AWS::Lambda::Function"
        assert resource["Properties"]["Handler"] == handlers[service], service
    users = [h for h, v in _environments(cfn).items() if "LAMBDA_WORKFLOW_SERVICES" in v]
    assert users == ["bank_lambda.handle_workflow"]


def _fake_value(cfn: Template, value: Any) -> str:
    """A deployed-looking value for an intrinsic: a parameter's default (or the value
    PARAMETER_VALUES passes), a queue's URL (with .fifo for a FIFO queue), a role's ARN, a
    table's, bucket's, schedule group's or function's name."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        # The conditions on optional parameters (KmsKeyArn) are false with the defaults.
        return _fake_value(cfn, value["Fn::If"][2])
    if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
        return re.sub(r"\$\{(\w+)\}", lambda m: _fake_value(cfn, {"Ref": m.group(1)}),
                      value["Fn::Sub"])
    name = ref_target(value)
    if name in cfn["Parameters"]:
        return str(cfn["Parameters"][name].get("Default", PARAMETER_VALUES.get(name)))
    resource = cfn["Resources"][name]
    if resource["Type"] == "AWS::SQS::Queue":
        fifo = ".fifo" if resource["Properties"].get("FifoQueue") else ""
        return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/stack-{name}-X1{fifo}"
    if resource["Type"] == "AWS::IAM::Role":
        assert value == {"Fn::GetAtt": [name, "Arn"]}, value
        return f"arn:aws:iam::{ACCOUNT}:role/stack-{name}-X1"
    return f"stack-{name}-X1".lower()


def test_each_functions_environment_is_a_valid_configuration(cfn: Template) -> None:
    """With deployed-looking values in place of the references, every function's environment
    is read by AwsConfig.from_env without error, with the parameters' defaults and a callback
    key. The workflow function's has the scheduler role, its schedule group and the callback
    key; the others have none of them (services and the timer function do not use them)."""
    for handler, variables in _environments(cfn).items():
        env = {name: _fake_value(cfn, value) for name, value in variables.items()}
        config = AwsConfig.from_env(env)
        assert config.queue_url.endswith(".fifo"), handler
        assert config.max_receives == 5 and config.retention_days == 30
        assert config.bucket and config.dead_letter_queue_url
        assert config.timer_queue_url and not config.timer_queue_url.endswith(".fifo")
        if handler == "bank_lambda.handle_workflow":
            assert {n: t.kind for n, t in config.services.items()} == {
                "balance": "sqs", "fraud": "lambda", "transaction": "sqs"}
            assert config.scheduler_role_arn == \
                f"arn:aws:iam::{ACCOUNT}:role/stack-SchedulerRole-X1"
            assert config.scheduler_group == "stack-timerschedulegroup-x1"
            assert config.callback_key_secret == "stack-callbackkeysecret-x1"
            assert config.callback_key is None
        else:
            assert config.scheduler_role_arn is None, handler
            assert config.callback_key is config.callback_key_secret is None, handler
            assert config.scheduler_group == "default", handler


def test_workflow_function_schedules_long_timers_in_the_stacks_group(cfn: Template) -> None:
    """Long timers: the workflow function's LAMBDA_WORKFLOW_SCHEDULER_ROLE_ARN is the
    SchedulerRole's ARN and LAMBDA_WORKFLOW_SCHEDULER_GROUP the stack's schedule group, the
    group whose schedules (and only those) its role may create."""
    _, function = function_by_handler(cfn, "bank_lambda.handle_workflow")
    variables = function["Environment"]["Variables"]
    assert variables["LAMBDA_WORKFLOW_SCHEDULER_ROLE_ARN"] == {
        "Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert variables["LAMBDA_WORKFLOW_SCHEDULER_GROUP"] == {"Ref": "TimerScheduleGroup"}
    assert cfn["Resources"]["TimerScheduleGroup"]["Type"] == "AWS::Scheduler::ScheduleGroup"
    assert ("scheduler:CreateSchedule", TIMER_SCHEDULES) in _permissions(
        cfn, "bank_lambda.handle_workflow")


def test_callback_keys_are_a_secret_only_the_workflow_function_and_clients_read(
        cfn: Template) -> None:
    """The callback keys live in a Secrets Manager secret the stack creates with a random
    64-character key (no parameter to pass, nothing in plain environment variables): the
    workflow function reads it through LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET, and only its role
    and ClientRole may GetSecretValue, on that secret alone. The stack has no required
    parameter, so the README's `sam deploy` command passes none."""
    secret = cfn["Resources"]["CallbackKeySecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generate = secret["Properties"]["GenerateSecretString"]
    assert generate["PasswordLength"] >= 32 and generate["ExcludePunctuation"] is True
    assert "SecretString" not in secret["Properties"]
    users = {h: v["LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET"] for h, v in _environments(cfn).items()
             if "LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET" in v}
    assert users == {"bank_lambda.handle_workflow": {"Ref": "CallbackKeySecret"}}
    assert not any("LAMBDA_WORKFLOW_CALLBACK_KEY" in v for v in _environments(cfn).values())
    readers = {name for name in resources(cfn, "AWS::IAM::Role")
               if any(a.startswith("secretsmanager:")
                      for a, _ in _role_permissions(cfn, name))}
    assert readers == {ref_target(function_by_handler(cfn, "bank_lambda.handle_workflow")[1][
        "Role"]), "ClientRole"}
    for name in readers:
        assert {(a, r) for a, r in _role_permissions(cfn, name)
                if a.startswith("secretsmanager:")} == {
            ("secretsmanager:GetSecretValue", "CallbackKeySecret")}
    required = {n for n, p in cfn["Parameters"].items() if "Default" not in p
                and not n.startswith("AWS::")}
    assert required == set()
    command = re.search(r"sam deploy ([^`]*?)\n```",
                        README.read_text(encoding="utf-8").replace("\\\n", " "))
    assert command, "deploy/README.md has no `sam deploy` command"
    assert "CallbackKey" not in command.group(1)


# ---------------------------------------------------------------- permissions


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statement = document["Statement"]
    return list(statement) if isinstance(statement, list) else [statement]


def _policy_documents(cfn: Template) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, props in resources(cfn, "AWS::IAM::Role").items():
        for policy in props.get("Policies", []):
            yield f"{name}/{policy['PolicyName']}", policy["PolicyDocument"]
    for kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for name, props in resources(cfn, kind).items():
            yield name, props["PolicyDocument"]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def test_iam_statements_have_no_wildcard_action_or_resource(cfn: Template) -> None:
    """No IAM statement allows a `*` action (nor `service:*`, nor NotAction) or a bare `*`
    resource (nor NotResource); a `*` appears only inside an ARN pattern (bucket ARN/*, the
    schedules of the stack's schedule group)."""
    documents = list(_policy_documents(cfn))
    assert len(documents) == 9  # the roles', ServiceReplyPolicy and PayloadKeyPolicy
    for where, document in documents:
        for statement in _statements(document):
            assert statement["Effect"] == "Allow", where
            assert "NotAction" not in statement and "NotResource" not in statement, where
            for action in _as_list(statement["Action"]):
                assert isinstance(action, str) and "*" not in action, (where, action)
            for resource in _as_list(statement["Resource"]):
                text = json.dumps(resource)
                assert text != '"*"', where
                if "*" in text and text != json.dumps({"Fn::Sub": TIMER_SCHEDULES}):
                    assert re.fullmatch(r'\{"Fn::Sub": "\$\{\w+\.Arn\}/([\w-]+/)*\*"\}',
                                        text), (where, text)


def test_roles_use_no_aws_managed_policy(cfn: Template) -> None:
    """Each function has its own role, which only Lambda may assume, and the scheduler has
    one; no role attaches an AWS managed policy (those SAM would add grant logs and SQS on
    every resource): only policies defined in this template."""
    roles = resources(cfn, "AWS::IAM::Role")
    functions = resources(cfn, "AWS::Lambda::Function")
    function_roles = sorted(ref_target(f["Role"]) for f in functions.values())
    assert sorted([*function_roles, "SchedulerRole", "ClientRole"]) == sorted(roles)
    (client_trust,) = _statements(roles["ClientRole"]["AssumeRolePolicyDocument"])
    assert client_trust["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    own = set(resources(cfn, "AWS::IAM::ManagedPolicy"))
    for name, role in roles.items():
        for arn in role.get("ManagedPolicyArns", []):
            assert ref_target(arn) in own, (name, arn)
        if name in function_roles:
            (principal,) = [s["Principal"]
                            for s in _statements(role["AssumeRolePolicyDocument"])]
            assert principal == {"Service": "lambda.amazonaws.com"}


def test_scheduler_role_only_delivers_timers(cfn: Template) -> None:
    """The role EventBridge Scheduler assumes for a timer's schedule: only
    scheduler.amazonaws.com may assume it, for schedules of this account (aws:SourceAccount,
    against the confused deputy), and it may only send to the timer queue."""
    role = cfn["Resources"]["SchedulerRole"]["Properties"]
    (trust,) = _statements(role["AssumeRolePolicyDocument"])
    assert trust == {"Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"},
                     "Action": "sts:AssumeRole",
                     "Condition": {"StringEquals": {
                         "aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}
    assert "ManagedPolicyArns" not in role
    assert _role_permissions(cfn, "SchedulerRole") == {("sqs:SendMessage", "TimerQueue")}


def _permissions(cfn: Template, handler: str) -> set[tuple[str, str]]:
    """(action, resource) pairs a function's role allows; a resource as ``Name`` for its ARN,
    ``Name/*`` for the objects of a bucket, any other ``Fn::Sub`` as its text."""
    _, function = function_by_handler(cfn, handler)
    return _role_permissions(cfn, ref_target(function["Role"]))


def _role_permissions(cfn: Template, name: str) -> set[tuple[str, str]]:
    """(action, resource) pairs the role ``name`` allows, shown as :func:`_permissions` says."""
    role = cfn["Resources"][name]["Properties"]
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    documents += [cfn["Resources"][ref_target(a)]["Properties"]["PolicyDocument"]
                  for a in role.get("ManagedPolicyArns", [])]
    pairs = set()
    for document in documents:
        for statement in _statements(document):
            for resource in _as_list(statement["Resource"]):
                if isinstance(resource, dict) and "Fn::Sub" in resource:
                    shown = re.sub(r"\$\{(\w+)\.Arn\}", r"\1", resource["Fn::Sub"])
                else:
                    shown = ref_target(resource)
                pairs |= {(action, shown) for action in _as_list(statement["Action"])}
    return pairs


LOGS = ("logs:CreateLogStream", "logs:PutLogEvents")
CONSUME = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
OWN = f"PayloadBucket/{DEFAULT_PREFIX}"


def _reply(service: str, *, claims: bool = True) -> set[tuple[str, str]]:
    """What a service replying to workflows needs: send on the workflow queue, its own call
    records (GetItem, PutItem, and UpdateItem for the claim), its own payloads (none for the
    plain-boto3 service, which reads no S3 pointer)."""
    pairs = {("sqs:SendMessage", "WorkflowQueue"), ("dynamodb:GetItem", "WorkflowTable"),
             ("dynamodb:PutItem", "WorkflowTable")}
    if claims:
        pairs |= {("dynamodb:UpdateItem", "WorkflowTable"),
                  ("s3:GetObject", f"{OWN}{request_owner(service)}/*"),
                  ("s3:GetObject", f"{OWN}{reply_owner(service, '')}*"),
                  ("s3:PutObject", f"{OWN}{reply_owner(service, '')}*")}
    return pairs


def test_each_function_has_exactly_the_permissions_its_code_needs(cfn: Template) -> None:
    """Least privilege, spelled out: the workflow function consumes its queue, sends to the
    service queues, its own queue and the DLQ, invokes the fraud function, reads and writes
    the table (TransactWriteItems is authorised by PutItem/UpdateItem/ConditionCheckItem) and
    the payload objects, and schedules timers on the timer queue, a long one as a schedule in
    the stack's group (CreateSchedule on its schedules, PassRole on the scheduler's role only
    to the scheduler, and the timer queue's attributes for its ARN, the schedule's target),
    and reads the callback keys' secret; each service consumes its source (if any) and
    replies; the timer function consumes the timer queue and sends to the workflow queue
    (timer_fired) and to the timer queue (the next hop), nothing else."""
    workflow = {(a, "WorkflowLogGroup") for a in LOGS} | {(a, "WorkflowQueue") for a in CONSUME}
    workflow |= {("sqs:SendMessage", q) for q in ("WorkflowQueue", "WorkflowDeadLetterQueue",
                                                  "BalanceQueue", "TransactionQueue",
                                                  "TimerQueue")}
    workflow |= {("lambda:InvokeFunction", "FraudFunction")}
    workflow |= {(f"dynamodb:{a}", "WorkflowTable")
                 for a in ("GetItem", "PutItem", "UpdateItem", "ConditionCheckItem", "Query")}
    workflow |= {("s3:GetObject", f"{OWN}*"), ("s3:PutObject", f"{OWN}*")}
    workflow |= {("sqs:GetQueueAttributes", "TimerQueue"),
                 ("scheduler:CreateSchedule", TIMER_SCHEDULES),
                 ("scheduler:DeleteSchedule", TIMER_SCHEDULES),
                 ("iam:PassRole", "SchedulerRole"),
                 ("secretsmanager:GetSecretValue", "CallbackKeySecret")}
    assert _permissions(cfn, "bank_lambda.handle_workflow") == workflow
    (pass_role,) = [s for _, d in _policy_documents(cfn) for s in _statements(d)
                    if "iam:PassRole" in _as_list(s["Action"])]
    assert pass_role["Resource"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert pass_role["Condition"] == {
        "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}
    conditional = [s for _, d in _policy_documents(cfn) for s in _statements(d)
                   if "Condition" in s and s is not pass_role]
    # every other condition narrows table access to leading keys (and attributes)
    assert all("dynamodb:LeadingKeys" in s["Condition"]["ForAllValues:StringLike"]
               for s in conditional)
    assert _permissions(cfn, "bank_lambda.handle_balance") == _reply("balance") | {
        (a, "BalanceLogGroup") for a in LOGS} | {(a, "BalanceQueue") for a in CONSUME}
    assert _permissions(cfn, "plain_transaction_service.handler") == _reply(
        "transaction", claims=False) | {(a, "TransactionLogGroup") for a in LOGS} | {
        (a, "TransactionQueue") for a in CONSUME}
    assert _permissions(cfn, "bank_lambda.handle_fraud") == _reply("fraud") | {
        (a, "FraudLogGroup") for a in LOGS} | {("sqs:SendMessage", "FraudFailureQueue")}
    assert _permissions(cfn, "bank_lambda.handle_timers") == {
        (a, "TimerLogGroup") for a in LOGS} | {(a, "TimerQueue") for a in CONSUME} | {
        ("sqs:SendMessage", "WorkflowQueue"), ("sqs:SendMessage", "TimerQueue"),
        ("dynamodb:GetItem", "WorkflowTable")}


def _table_conditions(cfn: Template, role: str) -> list[dict[str, Any]]:
    """The conditions of the role's statements on the table, one per statement."""
    props = cfn["Resources"][role]["Properties"]
    documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
    documents += [cfn["Resources"][ref_target(a)]["Properties"]["PolicyDocument"]
                  for a in props.get("ManagedPolicyArns", [])]
    return [s.get("Condition", {}) for d in documents for s in _statements(d)
            if _as_list(s["Resource"]) == [{"Fn::GetAtt": ["WorkflowTable", "Arn"]}]]


def test_services_touch_only_their_own_records_and_payloads(cfn: Template) -> None:
    """Each service's role reaches the table only for items whose key starts with
    svc#<service># (dynamodb:LeadingKeys; service_handler keys its call records so), and the
    bucket only under its own request and reply prefixes (the owners the runtime writes
    them under): one service cannot read or forge another's records or a workflow's."""
    for role, service in [("BalanceRole", "balance"), ("FraudRole", "fraud"),
                          ("TransactionRole", "transaction")]:
        conditions = _table_conditions(cfn, role)
        assert conditions == [{"ForAllValues:StringLike": {
            "dynamodb:LeadingKeys": [f"svc#{service}#*"]}}], role
        buckets = {r for a, r in _role_permissions(cfn, role) if a.startswith("s3:")}
        assert all(r.startswith((f"{OWN}{request_owner(service)}/",
                                 f"{OWN}{reply_owner(service, '')}")) for r in buckets), role


def test_the_timer_function_reads_only_instance_status(cfn: Template) -> None:
    """The timer function may read the status attribute of workflow items (pk = wf#...) to
    stop the hops of an ended instance, nothing else of the table."""
    (condition,) = _table_conditions(cfn, "TimerRole")
    assert condition == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["wf#*"]},
        "ForAllValues:StringEquals": {"dynamodb:Attributes": ["pk", "sk", "status"]},
        "StringEqualsIfExists": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES"}}
    assert ("dynamodb:GetItem", "WorkflowTable") in _role_permissions(cfn, "TimerRole")


def _queue_policies(cfn: Template) -> dict[str, list[dict[str, Any]]]:
    """Each queue's policy statements, by queue logical id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for props in resources(cfn, "AWS::SQS::QueuePolicy").values():
        for queue in props["Queues"]:
            out.setdefault(ref_target(queue), []).extend(_statements(props["PolicyDocument"]))
    return out


def test_queues_and_the_bucket_refuse_requests_without_tls(cfn: Template) -> None:
    """Every queue's policy and the bucket's policy deny every action to every principal
    when the request does not use TLS (aws:SecureTransport false)."""
    deny_plain = {"Bool": {"aws:SecureTransport": "false"}}
    policies = _queue_policies(cfn)
    assert set(policies) == set(resources(cfn, "AWS::SQS::Queue"))
    for queue, statements in policies.items():
        assert {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "sqs:*",
                "Resource": {"Fn::GetAtt": [queue, "Arn"]},
                "Condition": deny_plain} in statements, queue
    (bucket_policy,) = resources(cfn, "AWS::S3::BucketPolicy").values()
    assert ref_target(bucket_policy["Bucket"]) == "PayloadBucket"
    (statement,) = _statements(bucket_policy["PolicyDocument"])
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == (
        "Deny", "*", "s3:*")
    assert statement["Resource"] == [{"Fn::GetAtt": ["PayloadBucket", "Arn"]},
                                     {"Fn::Sub": "${PayloadBucket.Arn}/*"}]
    assert statement["Condition"] == deny_plain


def test_only_the_stacks_roles_may_send_to_the_queues_that_act(cfn: Template) -> None:
    """A message on the workflow queue starts, cancels or answers instances, one on a
    service queue runs a service, one on the timer queue fires a timer: each queue's policy
    denies SendMessage to every principal but the roles this stack gives that permission
    (the workflow queue: the functions and ClientRole), so anyone else in the account who
    can send to SQS cannot forge a reply or a cancel."""
    policies = _queue_policies(cfn)
    roles = list(resources(cfn, "AWS::IAM::Role"))
    for queue in ("WorkflowQueue", "BalanceQueue", "TransactionQueue", "TimerQueue"):
        (deny,) = [s for s in policies[queue] if s["Action"] == "sqs:SendMessage"]
        assert (deny["Effect"], deny["Principal"]) == ("Deny", "*")
        assert deny["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
        allowed = {ref_target(a) for a in deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]}
        senders = {r for r in roles if ("sqs:SendMessage", queue) in _role_permissions(cfn, r)}
        assert allowed == senders, queue
    (deny,) = [s for s in policies["WorkflowQueue"] if s["Action"] == "sqs:SendMessage"]
    assert {ref_target(a) for a in deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]} == {
        "WorkflowRole", "BalanceRole", "FraudRole", "TransactionRole", "TimerRole",
        "ClientRole"}


def test_functions_log_to_the_group_their_role_may_write(cfn: Template) -> None:
    """Each function logs to its own log group (with a retention), the one its role's logs
    statement names, since the role has no logs permission on any other group."""
    for name, props in resources(cfn, "AWS::Lambda::Function").items():
        group = ref_target(props["LoggingConfig"]["LogGroup"])
        assert cfn["Resources"][group]["Properties"]["RetentionInDays"] > 0
        assert ("logs:PutLogEvents", group) in _permissions(cfn, props["Handler"]), name


# ---------------------------------------------------------------- code and runtime


def test_code_is_the_zip_the_readme_builds(cfn: Template) -> None:
    """All functions run python{DEFAULT_PYTHON} (what `lambda-workflow package` builds for by
    default) on the Architecture parameter (arm64 by default), from ../build/bank.zip, which
    the README's `lambda-workflow package` command writes with every handler module; each
    handler is a name its module defines."""
    sam = load_sam()
    code_uri = (TEMPLATE.parent / sam["Globals"]["Function"]["CodeUri"]).resolve()
    assert code_uri == ROOT / "build" / "bank.zip"
    command = re.search(r"lambda-workflow package ([^`]*?)\n```",
                        README.read_text(encoding="utf-8").replace("\\\n", " "))
    assert command, "deploy/README.md has no `lambda-workflow package` command"
    argv = shlex.split(command.group(1))
    assert argv[argv.index("-o") + 1] == "build/bank.zip"
    modules = {Path(a).stem for a in argv if a.endswith(".py")}
    functions = resources(cfn, "AWS::Lambda::Function").values()
    assert {f["Handler"].split(".")[0] for f in functions} <= modules
    for function in functions:  # each handler is a name its module assigns at top level
        module, attribute = function["Handler"].split(".")
        tree = ast.parse((EXAMPLES / f"{module}.py").read_text(encoding="utf-8"))
        assigned = {target.id for node in tree.body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
        assigned |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert attribute in assigned, function["Handler"]
    assert "bank_transaction" in modules  # imported by bank_lambda
    assert {f["Runtime"] for f in functions} == {f"python{DEFAULT_PYTHON}"}
    assert all(f["Architectures"] == [{"Ref": "Architecture"}] for f in functions)
    assert cfn["Parameters"]["Architecture"]["Default"] == "arm64"
    assert argv[argv.index("--arch") + 1] == "arm64"


def test_outputs_name_the_queues_table_bucket_and_functions(cfn: Template) -> None:
    """The stack's outputs give the workflow and timer queues' URLs, the table, the bucket and
    every function's name."""
    outputs = {ref_target(o["Value"]) for o in cfn["Outputs"].values()}
    assert {"WorkflowQueue", "TimerQueue", "WorkflowTable", "PayloadBucket"} <= outputs
    assert set(resources(cfn, "AWS::Lambda::Function")) <= outputs
