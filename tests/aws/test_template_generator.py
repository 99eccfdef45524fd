"""``lambda-workflow template``: the generator (src/lambda_workflow/_template.py).

The bank example's template (deploy/template.yaml) is the generator's output, checked here
byte for byte; test_template.py checks its properties one by one. This file checks the
generator on a six-service app of its own (tests/aws/apps/shop.py: four services in the
stack, one of them invoked asynchronously, two run by other teams), its errors, and the
generated template deployed to moto's CloudFormation with a workflow run against what the
stack created.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from cfnlint.api import lint  # type: ignore[import-untyped]
from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

from lambda_workflow import _template
from lambda_workflow.aws import WorkflowClient
from lambda_workflow.aws.config import AwsConfig
from lambda_workflow.cli import _parser, main
from lambda_workflow.models import InstanceStatus

from .conftest import REGION, Aws
from .harness import AsyncInvoker, EventSourceMapping, drain

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "tests" / "aws" / "apps" / "shop.py"
ORDERS = ROOT / "tests" / "aws" / "apps" / "routing_orders.py"
BILLING = ROOT / "tests" / "aws" / "apps" / "routing_billing.py"
BANK_TEMPLATE = ROOT / "deploy" / "template.yaml"
ACCOUNT = "123456789012"
EXTERNAL = {"loyalty", "notify"}

Template = dict[str, Any]


def _shop_args(output: Path, *extra: str) -> list[str]:
    return ["template", str(SHOP), "--invoke-async", "payment", "-o", str(output), *extra]


@pytest.fixture(scope="module")
def shop() -> Template:
    app = _template.discover([SHOP], invoke_async=["payment"])
    sam: Template = yaml_parse(_template.render(app))
    return sam


def translate(sam: Template, code: str = "s3://artifacts/shop.zip",
              parameters: Mapping[str, str] | None = None) -> Template:
    """What `sam deploy` submits: the code's S3 location in place of the local zip, then the
    SAM transform, offline."""
    sam = copy.deepcopy(sam)
    sam["Globals"]["Function"]["CodeUri"] = code
    translator = Translator(None, Parser(), boto_session=SimpleNamespace(region_name=REGION))
    cfn: Template = translator.translate(sam, parameter_values=dict(parameters or {}),
                                         get_managed_policy_map=lambda: {})
    return cfn


def lint_errors(cfn: Template) -> list[str]:
    return [f"{m.rule.id} line {m.linenumber}: {m.message}"
            for m in lint(json.dumps(cfn, indent=1), regions=[REGION])]


# ---------------------------------------------------------------- determinism and the bank


def test_the_output_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same modules and options give the same bytes: twice in this process, and in a
    fresh process with another hash seed (set and dict order of names cannot leak into the
    file)."""
    texts = []
    for attempt in ("one", "two"):
        (tmp_path / attempt).mkdir()
        monkeypatch.chdir(tmp_path / attempt)
        assert main(_shop_args(Path("template.yaml")), out=io.StringIO()) == 0
        texts.append(Path("template.yaml").read_text(encoding="utf-8"))
    (tmp_path / "three").mkdir()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "lambda_workflow", *_shop_args(Path("template.yaml"))],
                   check=True, env=env, capture_output=True, cwd=tmp_path / "three")
    texts.append((tmp_path / "three" / "template.yaml").read_text(encoding="utf-8"))
    assert texts[0] == texts[1] == texts[2]
    assert "CodeUri: build/lambda.zip" in texts[0]


def test_the_yaml_reads_back_as_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """The YAML the generator writes (short intrinsic tags, flow and folded styles, quoting)
    parses back to exactly the template it built, for the shop and for the bank example."""
    shop_app = _template.discover([SHOP], invoke_async=["payment"])
    assert yaml_parse(_template.render(shop_app)) == _template.build(shop_app)
    monkeypatch.chdir(ROOT)
    bank_app, _ = _template.from_args(_parser().parse_args(
        _header_command(BANK_TEMPLATE.read_text(encoding="utf-8"))[1:]))
    assert yaml_parse(_template.render(bank_app)) == _template.build(bank_app)


def _header_command(text: str) -> list[str]:
    lines = text.splitlines()
    assert lines[0].startswith("# Generated by `lambda-workflow template`"), lines[0]
    return shlex.split(lines[1].lstrip("# "))


def test_the_bank_template_is_the_generated_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/template.yaml is exactly what the command in its header generates (run from the
    repository's root): edit the modules or the generator and regenerate, not the file."""
    text = BANK_TEMPLATE.read_text(encoding="utf-8")
    argv = _header_command(text)
    assert argv[:2] == ["lambda-workflow", "template"]
    monkeypatch.chdir(ROOT)
    args = _parser().parse_args(argv[1:])
    assert args.output == "deploy/template.yaml"
    _, generated = _template.from_args(args)
    assert generated == text


def test_the_bank_readme_says_the_template_is_generated() -> None:
    """deploy/README.md gives the same regeneration command as the template's header."""
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    command = re.search(r"lambda-workflow template ([^`]*?)\n```", readme)
    assert command, "deploy/README.md has no `lambda-workflow template` command"
    header = _header_command(BANK_TEMPLATE.read_text(encoding="utf-8"))
    assert shlex.split(command.group(1)) == header[2:]


# ---------------------------------------------------------------- the six-service app


def test_the_shop_translates_and_lints_clean(shop: Template) -> None:
    """SAM translates the six-service app's template offline and cfn-lint finds nothing (no
    error, no warning) in the result."""
    assert lint_errors(translate(shop)) == []


def test_the_shop_has_a_function_per_implemented_service(shop: Template) -> None:
    """Four service functions (audit-log, inventory and shipping on their own queues with a
    dead-letter queue each, payment invoked asynchronously with an on-failure queue), the
    workflow function and the SDK's built-in timer function (the module has no timer
    handler); logical ids come from the service names (audit-log: AuditLog)."""
    functions = {name: r["Properties"]["Handler"] for name, r in shop["Resources"].items()
                 if r["Type"] == "AWS::Serverless::Function"}
    assert functions == {
        "AuditLogFunction": "shop.handle_audit", "InventoryFunction": "shop.handle_inventory",
        "PaymentFunction": "shop.handle_payment", "ShippingFunction": "shop.handle_shipping",
        "WorkflowFunction": "shop.handler", "TimerFunction": _template.BUILTIN_TIMER_HANDLER}
    payment = shop["Resources"]["PaymentFunction"]["Properties"]
    assert "Events" not in payment
    assert payment["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["PaymentFailureQueue", "Arn"]}
    for stem in ("AuditLog", "Inventory", "Shipping"):
        (event,) = shop["Resources"][f"{stem}Function"]["Properties"]["Events"].values()
        assert event["Properties"]["Queue"] == {"Fn::GetAtt": [f"{stem}Queue", "Arn"]}
    assert "PaymentQueue" not in shop["Resources"]


def _fake(value: Any, params: Mapping[str, str], conditions: Mapping[str, bool]) -> Any:
    """Evaluate the intrinsics the workflow function's environment uses, as CloudFormation
    would, with deployed-looking names for resources."""
    if isinstance(value, str | int):
        return str(value)
    (key, arg), = value.items()
    if key == "Ref":
        if arg in params:
            return params[arg]
        fifo = ".fifo" if arg.endswith("WorkflowQueue") else ""
        return (f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/stack-{arg}{fifo}"
                if arg.endswith("Queue") else f"stack-{arg}".lower())
    if key == "Fn::GetAtt":
        return f"arn:aws:iam::{ACCOUNT}:role/stack-{arg[0]}"
    if key == "Fn::If":
        # HasKmsKey holds when the KmsKeyArn parameter is set (docs/codecs.md)
        holds = bool(params.get("KmsKeyArn")) if arg[0] == "HasKmsKey" else conditions[arg[0]]
        return _fake(arg[1] if holds else arg[2], params, conditions)
    if key == "Fn::Select":
        return _fake(arg[1], params, conditions)[int(arg[0])]
    if key == "Fn::Split":
        return _fake(arg[1], params, conditions).split(arg[0])
    if key == "Fn::Sub":
        text, names = (arg, {}) if isinstance(arg, str) else arg
        values = {n: _fake(v, params, conditions) for n, v in names.items()}
        values["AWS::URLSuffix"] = "amazonaws.com"
        return re.sub(r"\$\{([\w:]+)\}", lambda m: values.get(m.group(1)) or _fake(
            {"Ref": m.group(1)}, params, conditions), text)
    raise AssertionError(f"unexpected intrinsic {key}")


@pytest.mark.parametrize("kinds", [("sqs", "lambda"), ("lambda", "sqs")])
def test_every_service_the_workflow_calls_has_a_target(shop: Template,
                                                       kinds: tuple[str, str]) -> None:
    """The workflow function's environment, evaluated as CloudFormation would, is a valid
    configuration in which every service place_order can call has a target: the stack's
    functions through LAMBDA_WORKFLOW_SERVICES, the other teams' services through
    LAMBDA_WORKFLOW_SERVICE_<NAME>, a queue URL or a function ARN as their parameter's ARN
    says (both ways round)."""
    arns = {"sqs": f"arn:aws:sqs:eu-west-1:{ACCOUNT}:their-queue",
            "lambda": f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:their-fn"}
    params = {"LoyaltyServiceTarget": arns[kinds[0]], "NotifyServiceTarget": arns[kinds[1]]}
    params |= {name: str(p["Default"]) for name, p in shop["Parameters"].items()
               if "Default" in p}
    conditions = {"LoyaltyIsQueue": kinds[0] == "sqs", "NotifyIsQueue": kinds[1] == "sqs"}
    variables = {**shop["Globals"]["Function"]["Environment"]["Variables"],
                 **shop["Resources"]["WorkflowFunction"]["Properties"]["Environment"][
                     "Variables"]}
    env = {name: _fake(value, params, conditions) for name, value in variables.items()}
    config = AwsConfig.from_env(env)
    shop_module = sys.modules["shop"]
    called = {svc.name for svc in shop_module.place_order.services}
    assert called == {"inventory", "payment", "shipping", "audit-log", "notify", "loyalty"}
    assert set(config.services) == called
    expected = {"sqs": f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/their-queue",
                "lambda": arns["lambda"]}
    for service, kind in zip(("loyalty", "notify"), kinds, strict=True):
        target = config.service_target(service)
        assert (target.kind, target.address) == (kind, expected[kind])
    assert config.service_target("payment").kind == "lambda"
    assert config.service_target("audit-log").kind == "sqs"


def test_external_services_are_parameters_without_defaults(shop: Template) -> None:
    """Each other team's service is two required parameters (its queue or function ARN, and
    the role it replies with), each checked by a pattern; the stack has no other required
    parameter."""
    required = {n for n, p in shop["Parameters"].items() if "Default" not in p}
    assert required == {"LoyaltyServiceTarget", "LoyaltyServiceReplyRole",
                        "NotifyServiceTarget", "NotifyServiceReplyRole"}
    target = shop["Parameters"]["NotifyServiceTarget"]["AllowedPattern"]
    assert re.fullmatch(target, f"arn:aws:sqs:us-east-1:{ACCOUNT}:q")
    assert re.fullmatch(target, f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f")
    assert not re.fullmatch(target, "https://sqs.us-east-1.amazonaws.com/1/q")


def _statements(role: Template) -> list[Any]:
    return [s for p in role["Properties"]["Policies"]
            for s in p["PolicyDocument"]["Statement"]]


def test_external_services_get_only_what_their_target_needs(shop: Template) -> None:
    """The workflow function may send to an external service's queue or invoke its function,
    on that ARN only, as the parameter's ARN says (a condition); the service's reply role may
    send to the workflow queue (the queue policy lets it through and allows it across
    accounts) and read and write its own payloads, nothing else."""
    statements = _statements(shop["Resources"]["WorkflowRole"])
    for stem in ("Loyalty", "Notify"):
        (choice,) = [s["Fn::If"] for s in statements if "Fn::If" in s
                     and s["Fn::If"][0] == f"{stem}IsQueue"]
        target = {"Ref": f"{stem}ServiceTarget"}
        assert (choice[1]["Action"], choice[1]["Resource"]) == ("sqs:SendMessage", target)
        assert (choice[2]["Action"], choice[2]["Resource"]) == ("lambda:InvokeFunction", target)
    policy = shop["Resources"]["WorkflowQueuePolicy"]["Properties"]["PolicyDocument"]
    (deny,) = [s for s in policy["Statement"] if s.get("Sid") == "OnlyThisStacksSenders"]
    senders = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    replies = [{"Ref": "LoyaltyServiceReplyRole"}, {"Ref": "NotifyServiceReplyRole"}]
    assert all(r in senders for r in replies)
    (allow,) = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"AWS": replies}
    assert allow["Action"] == "sqs:SendMessage"
    bucket = shop["Resources"]["PayloadBucketPolicy"]["Properties"]["PolicyDocument"]
    grants = {(s["Principal"]["AWS"]["Ref"], json.dumps(s["Action"]), s["Resource"]["Fn::Sub"])
              for s in bucket["Statement"] if s["Effect"] == "Allow"}
    assert grants == {
        ("LoyaltyServiceReplyRole", '"s3:GetObject"',
         "${PayloadBucket.Arn}/lambda-workflow/requests/loyalty/*"),
        ("LoyaltyServiceReplyRole", '["s3:GetObject", "s3:PutObject"]',
         "${PayloadBucket.Arn}/lambda-workflow/replies/loyalty/*"),
        ("NotifyServiceReplyRole", '"s3:GetObject"',
         "${PayloadBucket.Arn}/lambda-workflow/requests/notify/*"),
        ("NotifyServiceReplyRole", '["s3:GetObject", "s3:PutObject"]',
         "${PayloadBucket.Arn}/lambda-workflow/replies/notify/*")}


def test_every_dead_letter_queue_has_an_alarm(shop: Template) -> None:
    """Every queue a message lands in when it failed (each redrive target and each
    asynchronous on-failure destination) has a CloudWatch alarm on its visible messages,
    notifying the AlarmTopicArn parameter's topic when one is given."""
    resources = shop["Resources"]
    dead = {r["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
            for r in resources.values()
            if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in r["Properties"]}
    dead |= {r["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"][
        "Destination"]["Fn::GetAtt"][0] for r in resources.values()
        if "EventInvokeConfig" in r.get("Properties", {})}
    assert len(dead) == 6
    alarmed = {r["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]: r["Properties"]
               for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert set(alarmed) == dead
    for props in alarmed.values():
        assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert (props["Threshold"], props["ComparisonOperator"]) == (0, "GreaterThanThreshold")
        assert props["AlarmActions"] == {"Fn::If": ["HasAlarmTopic", [
            {"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}


def test_outputs_give_a_client_what_it_needs(shop: Template) -> None:
    """The outputs name the workflow queue, the table, the bucket, the callback secret, the
    client role and every function."""
    outputs = {name: o["Value"] for name, o in shop["Outputs"].items()}
    for name in ("WorkflowQueueUrl", "TableName", "PayloadBucketName", "CallbackKeySecretArn",
                 "ClientRoleArn"):
        assert name in outputs
    functions = {n for n, r in shop["Resources"].items()
                 if r["Type"] == "AWS::Serverless::Function"}
    assert {v["Ref"] for v in outputs.values() if "Ref" in v} >= functions


# ---------------------------------------------------------------- a workflow function per module


@pytest.fixture(scope="module")
def two_modules() -> Template:
    app = _template.discover([ORDERS, BILLING])
    sam: Template = yaml_parse(_template.render(app))
    return sam


def _arns(value: Any) -> list[str]:
    """The logical ids of a statement's resources (one or a list of GetAtt ... Arn)."""
    items = value if isinstance(value, list) else [value]
    return sorted(item["Fn::GetAtt"][0] for item in items)


def _sends(role: Template) -> list[str]:
    return sorted(name for st in _statements(role) if st.get("Action") == "sqs:SendMessage"
                  for name in _arns(st["Resource"]))


def test_a_two_module_app_gets_a_workflow_function_per_module(two_modules: Template) -> None:
    """Two modules with a workflow handler each (routing_orders' order starts routing_billing's
    bill as a child): two workflow functions, each fed by its own FIFO queue with a FIFO DLQ,
    an alarm, a log group and a role, with logical ids from the module name. SAM translates
    the template and cfn-lint finds nothing."""
    resources = two_modules["Resources"]
    functions = {name: r["Properties"]["Handler"] for name, r in resources.items()
                 if r["Type"] == "AWS::Serverless::Function"}
    assert functions == {
        "RoutingOrdersWorkflowFunction": "routing_orders.handler",
        "RoutingBillingWorkflowFunction": "routing_billing.handler",
        "ReserveFunction": "routing_orders.handle_reserve",
        "ChargeFunction": "routing_billing.handle_charge",
        "TimerFunction": _template.BUILTIN_TIMER_HANDLER}
    for stem in ("RoutingOrdersWorkflow", "RoutingBillingWorkflow"):
        props = resources[f"{stem}Function"]["Properties"]
        (event,) = props["Events"].values()
        assert event["Properties"]["Queue"] == {"Fn::GetAtt": [f"{stem}Queue", "Arn"]}
        queue = resources[f"{stem}Queue"]["Properties"]
        assert queue["FifoQueue"] is True
        assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
            "Fn::GetAtt": [f"{stem}DeadLetterQueue", "Arn"]}
        assert resources[f"{stem}DeadLetterQueue"]["Properties"]["FifoQueue"] is True
        assert resources[f"{stem}DeadLetterQueueAlarm"]["Type"] == "AWS::CloudWatch::Alarm"
        assert props["LoggingConfig"] == {"LogGroup": {"Ref": f"{stem}LogGroup"}}
        assert props["Role"] == {"Fn::GetAtt": [f"{stem}Role", "Arn"]}
        variables = props["Environment"]["Variables"]
        assert variables["LAMBDA_WORKFLOW_QUEUE_URL"] == {"Ref": f"{stem}Queue"}
        assert variables["LAMBDA_WORKFLOW_DLQ_URL"] == {"Ref": f"{stem}DeadLetterQueue"}
    assert "WorkflowFunction" not in resources and "WorkflowQueue" not in resources
    assert lint_errors(translate(two_modules)) == []


def _evaluated_env(sam: Template, function: str) -> dict[str, str]:
    variables = {**sam["Globals"]["Function"]["Environment"]["Variables"],
                 **sam["Resources"][function]["Properties"].get("Environment", {}).get(
                     "Variables", {})}
    params = {name: str(p["Default"]) for name, p in sam["Parameters"].items()
              if "Default" in p}
    return {name: _fake(value, params, {}) for name, value in variables.items()}


def test_each_function_routes_and_may_send_to_exactly_the_queues_it_needs(
        two_modules: Template) -> None:
    """Orders' function routes bill (its child) to billing's queue; billing's routes order
    (the parent its children reply to) to orders' queue; each may send to its own queue and
    DLQ, the queues of the services its workflows call, the timer queue and the other
    module's queue, nothing more, and each configuration parses (the cold-start check
    passes: the child is routed). The timer function and ClientRole reach both workflow
    queues, the timer function knowing both as the deployment's; services reply to both."""
    resources = two_modules["Resources"]
    url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/stack-"
    orders = AwsConfig.from_env(_evaluated_env(two_modules, "RoutingOrdersWorkflowFunction"),
                                require_services=["reserve"])
    billing = AwsConfig.from_env(_evaluated_env(two_modules, "RoutingBillingWorkflowFunction"),
                                 require_services=["charge"])
    assert orders.queue_url == url + "RoutingOrdersWorkflowQueue.fifo"
    assert dict(orders.workflow_queues) == {"bill": url + "RoutingBillingWorkflowQueue.fifo"}
    assert set(orders.services) == {"reserve"}
    assert dict(billing.workflow_queues) == {"order": url + "RoutingOrdersWorkflowQueue.fifo"}
    assert set(billing.services) == {"charge"}
    assert _sends(resources["RoutingOrdersWorkflowRole"]) == sorted([
        "RoutingOrdersWorkflowQueue", "RoutingOrdersWorkflowDeadLetterQueue", "ReserveQueue",
        "TimerQueue", "RoutingBillingWorkflowQueue"])
    assert _sends(resources["RoutingBillingWorkflowRole"]) == sorted([
        "RoutingBillingWorkflowQueue", "RoutingBillingWorkflowDeadLetterQueue", "ChargeQueue",
        "TimerQueue", "RoutingOrdersWorkflowQueue"])
    timer = AwsConfig.from_env(_evaluated_env(two_modules, "TimerFunction"))
    assert timer.deployment_queues == {orders.queue_url, billing.queue_url}
    both = ["RoutingBillingWorkflowQueue", "RoutingOrdersWorkflowQueue"]
    assert _sends(resources["TimerRole"]) == sorted([*both, "TimerQueue"])
    assert _sends(resources["ClientRole"]) == both
    (reply,) = resources["ServiceReplyPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert _arns(reply["Resource"]) == both
    for stem, senders in (("RoutingOrdersWorkflow", "RoutingBillingWorkflowRole"),
                          ("RoutingBillingWorkflow", "RoutingOrdersWorkflowRole")):
        policy = resources[f"{stem}QueuePolicy"]["Properties"]["PolicyDocument"]
        (deny,) = [st for st in policy["Statement"] if st["Sid"] == "OnlyThisStacksSenders"]
        allowed = {a["Fn::GetAtt"][0] for a in deny["Condition"]["ArnNotEquals"][
            "aws:PrincipalArn"]}
        assert allowed == {f"{stem}Role", senders, "ReserveRole", "ChargeRole", "TimerRole",
                           "ClientRole"}
    for service, role in (("Reserve", "RoutingOrdersWorkflowRole"),
                          ("Charge", "RoutingBillingWorkflowRole")):
        policy = resources[f"{service}QueuePolicy"]["Properties"]["PolicyDocument"]
        (deny,) = [st for st in policy["Statement"] if st["Effect"] == "Deny"
                   and st["Sid"] != "TlsOnly"]
        assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
            {"Fn::GetAtt": [role, "Arn"]}]
    outputs = two_modules["Outputs"]
    assert {"RoutingOrdersWorkflowQueueUrl", "RoutingBillingWorkflowQueueUrl",
            "RoutingOrdersWorkflowFunctionName", "RoutingBillingWorkflowFunctionName",
            "RoutingOrdersWorkflowDeadLetterQueueUrl", "RoutingBillingWorkflowDeadLetterQueueUrl",
            "WorkflowQueueUrl", "WorkflowQueues"} <= set(outputs)
    client = AwsConfig.from_env({
        "LAMBDA_WORKFLOW_TABLE": "t",
        "LAMBDA_WORKFLOW_QUEUE_URL": _fake(outputs["WorkflowQueueUrl"]["Value"], {}, {}),
        "LAMBDA_WORKFLOW_WORKFLOW_QUEUES": _fake(outputs["WorkflowQueues"]["Value"], {}, {})})
    assert dict(client.workflow_queues) == {"bill": billing.queue_url,
                                            "order": orders.queue_url}


# ---------------------------------------------------------------- errors


def _module(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


WORKFLOW = """
    from lambda_workflow import Service, WorkflowContext, workflow

    greet = Service("greet", str, str)

    @workflow
    async def hello(ctx: WorkflowContext[str]) -> str:
        return await ctx.call(greet, ctx.request)
"""


def _error(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["template", *argv, "-o", str(tmp_path / "t.yaml")], out=io.StringIO())
    assert code == 1
    assert not (tmp_path / "t.yaml").exists()
    return capsys.readouterr().err


def test_workflows_without_a_handler_are_an_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A module whose workflows no workflow_handler registers: the error names the module and
    its workflows and says what to add."""
    path = _module(tmp_path, "lonely_wf", WORKFLOW)
    err = _error(tmp_path, [str(path)], capsys)
    assert "lonely_wf defines hello" in err
    assert "handler = workflow_handler(" in err


def test_a_service_implemented_twice_is_an_error(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Two modules implementing one service, or --service for a service a module implements:
    the error names both handlers."""
    app = _module(tmp_path, "twice_app", WORKFLOW + """
    from lambda_workflow.aws import service_handler, workflow_handler

    async def answer(name: str) -> str:
        return name

    handler = workflow_handler(hello)
    handle_greet = service_handler(greet, answer)
""")
    other = _module(tmp_path, "twice_other", """
    from lambda_workflow.aws import service_handler
    from twice_app import answer, greet

    also = service_handler(greet, answer)
""")
    err = _error(tmp_path, [str(app), str(other)], capsys)
    assert "service 'greet' is implemented twice" in err
    assert "twice_app.handle_greet" in err and "twice_other.also" in err
    err = _error(tmp_path, [str(app), "--service", "greet=twice_app.answer"], capsys)
    assert "implemented twice" in err and "--service greet=twice_app.answer" in err


def test_two_workflow_handlers_in_one_module_are_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The template makes one workflow function per module: a module with two workflow
    handlers is refused with the ways out (one handler, or a module each)."""
    one = _module(tmp_path, "first_wf", WORKFLOW + """
    from lambda_workflow.aws import workflow_handler

    @workflow
    async def bye(ctx: WorkflowContext[str]) -> str:
        return ctx.request

    handler = workflow_handler(hello)
    other_handler = workflow_handler(bye)
""")
    err = _error(tmp_path, [str(one)], capsys)
    assert "module first_wf has 2 workflow handlers" in err
    assert "first_wf.handler, first_wf.other_handler" in err
    assert "workflow_handler(a, b, ...)" in err and "a module of its own" in err


def test_a_workflow_registered_by_two_handlers_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A workflow runs in one workflow function (its queue is where clients and parents send
    its messages): registering it in two modules' handlers is refused, naming both."""
    one = _module(tmp_path, "first_wf", WORKFLOW + """
    from lambda_workflow.aws import workflow_handler
    handler = workflow_handler(hello)
""")
    two = _module(tmp_path, "second_wf", """
    from first_wf import hello
    from lambda_workflow.aws import workflow_handler
    handler = workflow_handler(hello)
""")
    err = _error(tmp_path, [str(one), str(two)], capsys)
    assert ("workflow 'hello' is registered by two workflow handlers (first_wf.handler and "
            "second_wf.handler)") in err


def test_a_child_no_handler_registers_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A child workflow runs in the function of the handler that registers it (its
    parent's, or another module's): a child no handler registers is refused, naming both
    workflows and both ways to register it."""
    app = _module(tmp_path, "parent_wf", """
    from lambda_workflow import WorkflowContext, workflow
    from lambda_workflow.aws import workflow_handler

    @workflow
    async def child(ctx: WorkflowContext[str]) -> str:
        return ctx.request

    @workflow
    async def parent(ctx: WorkflowContext[str]) -> str:
        return await ctx.child(child, ctx.request)

    handler = workflow_handler(parent)
""")
    err = _error(tmp_path, [str(app)], capsys)
    assert "'parent' starts child workflow 'child'" in err
    assert "no workflow handler registers (parent_wf.handler registers parent)" in err
    assert "or to the handler of another module" in err


def test_a_service_named_like_the_stacks_own_resources_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A service called "timer" would take TimerQueue, TimerRole...: refused, saying why."""
    app = _module(tmp_path, "timer_named", """
    from lambda_workflow import Service, WorkflowContext, workflow
    from lambda_workflow.aws import workflow_handler

    timer = Service("timer", str, str)

    @workflow
    async def tick(ctx: WorkflowContext[str]) -> str:
        return await ctx.call(timer, ctx.request)

    handler = workflow_handler(tick)
""")
    err = _error(tmp_path, [str(app)], capsys)
    assert "service 'timer' would take the logical ids of the stack's own Timer*" in err


def test_a_project_folder_names_handlers_as_its_zip_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`template .` takes a project folder as `package .` does: its modules under their
    relative names (a handler in orders/services.py is orders.services.<name>), without
    tests/ and what --exclude leaves out; a module that fails on import (here a script)
    is an error naming it and --exclude."""
    project = tmp_path / "project"
    (project / "orders").mkdir(parents=True)
    (project / "tests").mkdir()
    _module(project, "app", WORKFLOW + """
    from lambda_workflow.aws import workflow_handler
    handler = workflow_handler(hello)
""")
    (project / "orders" / "__init__.py").write_text("", encoding="utf-8")
    _module(project / "orders", "services", """
    from app import greet
    from lambda_workflow.aws import service_handler

    async def answer(name: str) -> str:
        return name

    handle_greet = service_handler(greet, answer)
""")
    _module(project / "tests", "test_app", "raise RuntimeError('not imported')\n")
    _module(project, "release", "raise SystemExit('a script, not part of the deployment')\n")
    monkeypatch.chdir(project)
    assert main(["template", ".", "-o", "template.yaml"], out=io.StringIO()) == 1
    assert "importing release (release.py) failed: SystemExit: a script" in \
        capsys.readouterr().err
    out = io.StringIO()
    assert main(["template", ".", "--exclude", "release.py", "-o", "template.yaml"],
                out=out) == 0, out.getvalue()
    sam = yaml_parse(Path("template.yaml").read_text(encoding="utf-8"))
    handlers = {name: r["Properties"]["Handler"] for name, r in sam["Resources"].items()
                if r["Type"] == "AWS::Serverless::Function"}
    assert handlers == {"WorkflowFunction": "app.handler",
                        "GreetFunction": "orders.services.handle_greet",
                        "TimerFunction": _template.BUILTIN_TIMER_HANDLER}


@pytest.mark.parametrize(("option", "expected"), [
    (["--service", "greet"], "expected NAME=MODULE.ATTRIBUTE"),
    (["--service", "greet=nowhere.handler"], "expected MODULE.ATTRIBUTE of a given module"),
    (["--invoke-async", "nothing"], "--invoke-async names services no module implements"),
])
def test_bad_options_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                option: list[str], expected: str) -> None:
    app = _module(tmp_path, f"opts_{abs(hash(tuple(option)))}", WORKFLOW + """
    from lambda_workflow.aws import workflow_handler
    handler = workflow_handler(hello)
""")
    assert expected in _error(tmp_path, [str(app), *option], capsys)


def test_an_unimplemented_service_becomes_a_parameter(tmp_path: Path) -> None:
    """A service nothing implements is an external target: the template asks for it."""
    app = _module(tmp_path, "ext_only", WORKFLOW + """
    from lambda_workflow.aws import workflow_handler
    handler = workflow_handler(hello)
""")
    out = io.StringIO()
    assert main(["template", str(app), "-o", str(tmp_path / "t.yaml")], out=out) == 0
    assert "parameters GreetServiceTarget, GreetServiceReplyRole" in out.getvalue()
    sam = yaml_parse((tmp_path / "t.yaml").read_text(encoding="utf-8"))
    assert "Default" not in sam["Parameters"]["GreetServiceTarget"]
    assert sam["Globals"]["Function"]["CodeUri"] == os.path.relpath(
        Path("build/lambda.zip").resolve(), tmp_path)


# ---------------------------------------------------------------- deployed on moto


@contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as a Lambda function with this configuration sees it."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _as_function(handler: Any, env: Mapping[str, str]) -> Any:
    def run(event: Any, context: Any) -> Any:
        with _environment(env):
            return handler(event, context)
    return run


#: Resource types of the translated templates that moto's CloudFormation does not implement:
#: it skips them (with a warning), leaves out an environment variable or output that refers to
#: one, and a test checks that these, and only these, were skipped. None is on the path of the
#: workflows run here (no callback, no sleep over 15 minutes; queue and bucket policies, alarms
#: and the on-failure destination are not enforced or used by moto).
MOTO_UNSUPPORTED = {"AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy",
                    "AWS::SecretsManager::Secret", "AWS::Scheduler::ScheduleGroup",
                    "AWS::CloudWatch::Alarm", "AWS::Lambda::EventInvokeConfig"}


@dataclass
class Deployed:
    """A stack created by moto's CloudFormation, with its functions played in-process."""

    outputs: dict[str, str]
    environments: dict[str, dict[str, str]]  # by function output (WorkflowFunctionName...)
    pollers: list[EventSourceMapping | AsyncInvoker]
    async_functions: dict[str, Any]  # by function name and ARN
    modules: dict[str, ModuleType]  # each function's own copy of its handler's module


def _fresh_module(name: str) -> ModuleType:
    """A new copy of the module ``name`` (not registered in sys.modules), as each Lambda
    function imports its handler's module in its own process: its handlers start
    unconfigured, and nothing they cache outlives the test."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _deploy(aws: Aws, sam: Template, stack: str, code: Mapping[str, Path],
            parameters: Mapping[str, str] | None = None) -> Deployed:
    """Upload the code zip to S3 (as `sam deploy` does), translate the template, create the
    stack on moto's CloudFormation, and wire each created function: its handler (the name
    its configuration gives, imported here) runs with the environment its configuration
    gives, fed by the queue its event source mapping names (moto's own mapping, which would
    hand messages to a stub, is checked then disabled). Functions without a mapping are
    invoked asynchronously; they are returned by name and ARN."""
    s3, sqs, lam, cfn = (aws.client(n) for n in ("s3", "sqs", "lambda", "cloudformation"))
    s3.create_bucket(Bucket="artifacts")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, path in sorted(code.items()):
            zf.write(path, name)
    s3.put_object(Bucket="artifacts", Key=f"{stack}.zip", Body=archive.getvalue())
    parameters = dict(parameters or {})
    template = translate(sam, f"s3://artifacts/{stack}.zip", parameters)
    for name, resource in template["Resources"].items():
        # CloudFormation names a FIFO queue <stack>-<logical id>-<suffix>.fifo; moto leaves
        # the .fifo out (and then refuses the name), so the test names the two as AWS would.
        if resource["Type"] == "AWS::SQS::Queue" and resource["Properties"].get("FifoQueue"):
            resource["Properties"]["QueueName"] = f"{stack}-{name}-T1.fifo"
    cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template),
                     Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                 for k, v in sorted(parameters.items())],
                     Capabilities=["CAPABILITY_IAM"])
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
    created = {r["LogicalResourceId"]
               for r in cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]}
    # A resource on HasKmsKey is not created without a KmsKeyArn (CloudFormation's rule).
    skipped = {name for name in template["Resources"] if name not in created
               and not (template["Resources"][name].get("Condition") == "HasKmsKey"
                        and not parameters.get("KmsKeyArn"))}
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert {template["Resources"][n]["Type"] for n in skipped} == MOTO_UNSUPPORTED & kinds
    assert not {"CallbackKeySecretArn", "TimerScheduleGroupName"} & set(outputs)

    runtime = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
               "AWS_ENDPOINT_URL": aws.endpoint}
    deployed = Deployed(outputs, {}, [], {}, {})
    for output, name in sorted(outputs.items()):
        if not output.endswith("FunctionName"):
            continue
        config = lam.get_function_configuration(FunctionName=name)
        owner, attribute = config["Handler"].rsplit(".", 1)
        # (moto returns a Number parameter's value as a number; Lambda gives strings)
        env = {k: str(v) for k, v in config["Environment"]["Variables"].items()}
        deployed.environments[output] = env
        module = deployed.modules[output] = _fresh_module(owner)
        function = _as_function(getattr(module, attribute), {**env, **runtime})
        mappings = lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]
        for mapping in mappings:
            assert mapping["BatchSize"] == 10
            assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
            lam.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
            assert lam.get_event_source_mapping(UUID=mapping["UUID"])["State"] == "Disabled"
            queue = sqs.get_queue_url(QueueName=mapping["EventSourceArn"].split(":")[-1])[
                "QueueUrl"]
            deployed.pollers.append(EventSourceMapping(sqs, queue, function))
        if not mappings:
            deployed.async_functions[name] = function
            deployed.async_functions[config["FunctionArn"]] = function
    for output, workflow in deployed.environments.items():
        if output.endswith("WorkflowFunctionName"):  # refer to what moto skipped
            assert "LAMBDA_WORKFLOW_SCHEDULER_GROUP" not in workflow
            assert "LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET" not in workflow
    return deployed


def _client(aws: Aws, outputs: Mapping[str, str]) -> WorkflowClient:
    """A client configured from the stack's outputs, as docs/aws.md says."""
    return WorkflowClient(AwsConfig(
        table=outputs["TableName"], queue_url=outputs["WorkflowQueueUrl"],
        bucket=outputs["PayloadBucketName"], endpoint_url=aws.endpoint, region=REGION),
        session=aws.session)


def _run_until_done(pollers: list[EventSourceMapping | AsyncInvoker], handle: Any) -> None:
    import time

    # A sleep's message is delayed (a second, in real time on moto): poll until the instance
    # ends. A number of rounds was not enough when the rounds were fast (few queues).
    deadline = time.monotonic() + 45.0
    drain(pollers, timeout=45.0, idle_rounds=3)
    while handle.status() is InstanceStatus.RUNNING and time.monotonic() < deadline:
        drain(pollers, timeout=45.0, idle_rounds=3)


@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
def test_the_shop_deploys_to_cloudformation_and_runs_a_workflow(
        aws: Aws, shop: Template) -> None:
    """The six-service app's generated template, translated by SAM, is created by moto's
    CloudFormation (the other teams' queue and function created first, their ARNs passed as
    parameters); see _deploy for what the test plays and MOTO_UNSUPPORTED for what moto
    skips. The workflow function's environment routes notify to the queue's URL derived
    from its ARN and loyalty to the function's ARN. A client configured from the stack's
    outputs starts place_order; it completes with the result the services give, through
    the built-in timer function (a durable sleep), the asynchronously invoked payment
    function and both external services."""
    sqs, lam = aws.client("sqs"), aws.client("lambda")
    notify_queue = sqs.create_queue(QueueName="other-team-notify")["QueueUrl"]
    notify_arn = sqs.get_queue_attributes(QueueUrl=notify_queue, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    loyalty_fn = aws.create_function("other-team-loyalty")
    loyalty_arn = lam.get_function(FunctionName=loyalty_fn)["Configuration"]["FunctionArn"]
    reply_role = aws.client("iam").create_role(RoleName="other-team-replies",
                                               AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    deployed = _deploy(aws, shop, "shop", {"shop.py": SHOP}, {
        "NotifyServiceTarget": notify_arn, "LoyaltyServiceTarget": loyalty_arn,
        "NotifyServiceReplyRole": reply_role, "LoyaltyServiceReplyRole": reply_role})
    assert set(deployed.environments) == {f"{stem}FunctionName" for stem in (
        "AuditLog", "Inventory", "Payment", "Shipping", "Workflow", "Timer")}
    assert len(deployed.pollers) == 5
    assert set(deployed.async_functions) >= {deployed.outputs["PaymentFunctionName"]}
    env = deployed.environments["WorkflowFunctionName"]
    assert env["LAMBDA_WORKFLOW_SERVICE_NOTIFY"] == (  # the queue's URL on AWS
        f"sqs:https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/other-team-notify")
    assert env["LAMBDA_WORKFLOW_SERVICE_LOYALTY"] == f"lambda:{loyalty_arn}"

    # The other teams' services: a consumer of their queue and their function, both replying
    # on the workflow queue with the service SDK (no call records of their own).
    from lambda_workflow.aws import AwsDeployment, service_handler

    module = sys.modules["shop"]
    outputs = deployed.outputs
    team = AwsConfig(table=outputs["TableName"], queue_url=outputs["WorkflowQueueUrl"],
                     endpoint_url=aws.endpoint, region=REGION)

    async def points(order: Any) -> Any:
        return module.Points(points=order.quantity * 10)

    async def sent(line: str) -> None:
        return None

    pollers = [*deployed.pollers, EventSourceMapping(sqs, notify_queue, service_handler(
        module.notify, sent, idempotent=False,
        deployment=AwsDeployment(team, session=aws.session)))]
    async_functions = dict(deployed.async_functions)
    async_functions[loyalty_fn] = async_functions[loyalty_arn] = service_handler(
        module.loyalty, points, idempotent=False,
        deployment=AwsDeployment(team, session=aws.session))
    pollers.append(AsyncInvoker(aws.invocations, async_functions))

    handle = _client(aws, outputs).start(module.place_order, module.Order(
        order_id="o-1", sku="book", quantity=2, amount_cents=3000), workflow_id="o-1")
    _run_until_done(pollers, handle)
    assert handle.status() is InstanceStatus.COMPLETED
    assert handle.result() == "o-1: r-book-2 c-3000 t-o-1 +20"


@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
def test_a_two_module_app_deploys_and_its_child_runs_in_the_other_function(
        aws: Aws, two_modules: Template) -> None:
    """The two-module app's template, created by moto's CloudFormation: a client configured
    from the outputs (WorkflowQueueUrl and WorkflowQueues) starts order, which runs in the
    orders function; its child bill runs in the billing function (fed by billing's own
    queue), sleeps through the timer function and calls charge, whose reply comes back to
    billing's queue; bill's result reaches order on the orders queue. Nothing is
    dead-lettered."""
    deployed = _deploy(aws, two_modules, "routing", {"routing_orders.py": ORDERS,
                                                     "routing_billing.py": BILLING})
    assert set(deployed.environments) == {f"{stem}FunctionName" for stem in (
        "RoutingOrdersWorkflow", "RoutingBillingWorkflow", "Reserve", "Charge", "Timer")}
    outputs = deployed.outputs
    client = WorkflowClient(AwsConfig.from_env({
        "LAMBDA_WORKFLOW_TABLE": outputs["TableName"],
        "LAMBDA_WORKFLOW_QUEUE_URL": outputs["WorkflowQueueUrl"],
        "LAMBDA_WORKFLOW_WORKFLOW_QUEUES": outputs["WorkflowQueues"],
        "LAMBDA_WORKFLOW_BUCKET": outputs["PayloadBucketName"],
        "AWS_ENDPOINT_URL": aws.endpoint, "AWS_REGION": REGION}), session=aws.session)
    orders = sys.modules["routing_orders"]
    handle = client.start(orders.order, orders.Order(order_id="o-1", cents=3000),
                          workflow_id="o-1")
    _run_until_done(deployed.pollers, handle)
    assert handle.result() == "reserved o-1; charged 3000 for o-1"
    (child_id,) = [f"o-1~{op.op_id}" for op in handle.history().operations
                   if op.kind == "child"]
    child = client.describe(child_id)
    assert (child.workflow_name, child.status) == ("bill", InstanceStatus.COMPLETED)
    received = {p.queue_url.rsplit("/", 1)[1]: p.received for p in deployed.pollers
                if isinstance(p, EventSourceMapping)}
    # billing's queue: the child's start, its timer_fired and charge's reply
    assert received[outputs["RoutingBillingWorkflowQueueUrl"].rsplit("/", 1)[1]] >= 3
    # orders' queue: the start, reserve's reply and the child's result
    assert received[outputs["RoutingOrdersWorkflowQueueUrl"].rsplit("/", 1)[1]] >= 3
    sqs = aws.client("sqs")
    for dlq in ("RoutingOrdersWorkflowDeadLetterQueueUrl",
                "RoutingBillingWorkflowDeadLetterQueueUrl", "TimerDeadLetterQueueUrl"):
        assert sqs.receive_message(QueueUrl=outputs[dlq]).get("Messages", []) == [], dlq


@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
def test_the_bank_template_deploys_to_cloudformation_and_runs_a_transaction(
        aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/template.yaml, as committed, created by moto's CloudFormation with the three
    example modules in the zip (as deploy/README.md packages them); one transaction started
    with `lambda-workflow start --table` configured from the stack's outputs (as docs/aws.md
    says) completes with "success", through the balance function, the fraud function
    (invoked asynchronously) and the plain-boto3 transaction function (which makes its own
    boto3 clients from the environment it is given); `status` and `history` show it."""
    import bank_transaction as bank

    monkeypatch.setattr(bank, "BALANCES", dict(bank.BALANCES))
    examples = ROOT / "examples"
    sam: Template = yaml_parse(BANK_TEMPLATE.read_text(encoding="utf-8"))
    deployed = _deploy(aws, sam, "bank", {f"{m}.py": examples / f"{m}.py" for m in (
        "bank_lambda", "bank_transaction", "plain_transaction_service")})
    assert len(deployed.environments) == 5 and len(deployed.pollers) == 4
    # The operator's path (docs/aws.md): the CLI, configured from the stack's outputs.
    outputs = deployed.outputs
    monkeypatch.setenv("LAMBDA_WORKFLOW_QUEUE_URL", outputs["WorkflowQueueUrl"])
    monkeypatch.setenv("LAMBDA_WORKFLOW_BUCKET", outputs["PayloadBucketName"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    table = outputs["TableName"]
    started = io.StringIO()
    assert main(["start", str(examples / "bank_transaction.py"), "--table", table, "--id",
                 "tx-1", "--input", '{"account_id": "alice", "amount": 30}'],
                out=started) == 0, started.getvalue()
    handle = _client(aws, outputs).handle(bank.make_transaction, "tx-1")
    _run_until_done([*deployed.pollers, AsyncInvoker(aws.invocations,
                                                     deployed.async_functions)], handle)
    assert handle.status() is InstanceStatus.COMPLETED
    assert handle.result() == "success"
    status, history = io.StringIO(), io.StringIO()
    assert main(["status", "--table", table, "tx-1"], out=status) == 0
    assert "completed" in status.getvalue(), status.getvalue()
    assert main(["history", "--table", table, "tx-1"], out=history) == 0
    assert all(s in history.getvalue() for s in ("balance", "fraud", "transaction"))
    plain = deployed.modules["TransactionFunctionName"]
    assert plain.LEDGER == [{"account_id": "alice", "amount": 30}]
    assert bank.BALANCES["alice"] == 100  # the plain service keeps its own ledger
