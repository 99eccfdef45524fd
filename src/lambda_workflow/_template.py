"""``lambda-workflow template``: the SAM template of a deployment, generated from its modules.

Two halves. :func:`discover` imports the given modules and finds the handlers made by
``workflow_handler``, ``service_handler`` and ``timer_handler`` in their globals (each handler
carries its :class:`~lambda_workflow.aws.handlers.HandlerRole`), and the services the
registered workflows can call (:attr:`Workflow.services`); the result is an :class:`App`, plain
data. :func:`render` turns an :class:`App` into the template's YAML text: the same App gives the
same bytes, logical ids are derived from service names, and resources are sorted.

Each module with a workflow handler is one workflow function with its own FIFO queue; the
functions send to each other's queues by workflow name (``LAMBDA_WORKFLOW_WORKFLOW_QUEUES``:
a parent's child in another module, the child's reply to its parent). With one such module
the stack's ids are those of a single workflow function (``WorkflowQueue``,
``WorkflowFunction``, ...).

Each service a workflow can call is either a function of the stack (a module implements it
with ``service_handler``, or ``--service NAME=module.attribute`` names a handler written
without the SDK), fed by its own SQS queue or invoked asynchronously, or an external target:
a template parameter holding the ARN of another team's SQS queue or Lambda function, and one
holding the role that service replies with.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ._package import DEFAULT_PYTHON

__all__ = ["BUILTIN_TIMER_HANDLER", "App", "ExternalService", "ServiceFunction",
           "TemplateError", "WorkflowModule", "add_parser", "build", "discover", "from_args",
           "logical_id", "render", "run_command", "workflow_stems"]

#: The timer function's handler when no module has one: ``handler = timer_handler()`` in the
#: SDK itself (it is in every zip ``package`` builds).
BUILTIN_TIMER_HANDLER = "lambda_workflow.aws.timer_function.handler"
_LOGS_DAYS = 30
_TIMEOUT = 60
#: AWS advises a visibility timeout of at least 6 times the consuming function's timeout.
_VISIBILITY = 6 * _TIMEOUT
_RETENTION = 1209600  # 14 days, SQS's longest
_ASYNC_RETRIES = 2
#: Logical id stems the stack's own resources use; a service may not take one.
_RESERVED = frozenset({"Workflow", "Timer", "Client", "Scheduler", "Payload", "CallbackKey",
                       "ServiceReply", "Alarm"})
_SETTINGS = "LAMBDA_WORKFLOW_"


class TemplateError(ValueError):
    """The modules (or the options) do not describe a deployment; the message says why and
    what to change."""


@dataclass(frozen=True, slots=True)
class ServiceFunction:
    """A service this stack runs: its handler (``module.attribute``), whether it is the SDK's
    ``service_handler`` (which claims calls and reads payloads; a plain handler only keeps
    its call records and replies), and how the workflow function reaches it: ``"sqs"``
    (its own queue) or ``"lambda"`` (asynchronous invocation)."""

    service: str
    handler: str
    sdk: bool = True
    invoke: str = "sqs"


@dataclass(frozen=True, slots=True)
class ExternalService:
    """A service another stack runs: template parameters give its queue or function ARN and
    the role its replies come from."""

    service: str


@dataclass(frozen=True, slots=True)
class WorkflowModule:
    """A module with a workflow handler: one workflow function of the stack, with its own
    FIFO queue. ``services`` are those its workflows call, ``children`` the child workflows
    they start (in this module or another)."""

    module: str
    handler: str
    workflows: tuple[str, ...]
    services: tuple[str, ...] = ()
    children: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class App:
    """What the template describes. Build it with :func:`discover`, or directly."""

    workflow_modules: tuple[WorkflowModule, ...]
    services: tuple[ServiceFunction, ...] = ()
    external: tuple[ExternalService, ...] = ()
    timer_handler: str = BUILTIN_TIMER_HANDLER
    code_uri: str = "build/lambda.zip"
    python: str = DEFAULT_PYTHON
    architecture: str = "arm64"
    description: str = ""
    #: The command that regenerates the template, written in its header comment.
    command: str = ""


# ---------------------------------------------------------------- discovery


def _load(path: Path) -> ModuleType:
    if not path.is_file():
        raise TemplateError(f"no such file: {path}")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # sibling imports work, as inside the zip
    loaded = sys.modules.get(path.stem)
    if loaded is not None and getattr(loaded, "__file__", None) and \
            Path(str(loaded.__file__)).resolve() == path.resolve():
        return loaded  # imported already (by a module given before it): the same objects
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise TemplateError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _import(name: str, file: Path) -> ModuleType:
    import importlib

    cached = sys.modules.get(name)
    if cached is not None and (not getattr(cached, "__file__", None)
                               or Path(str(cached.__file__)).resolve() != file.resolve()):
        del sys.modules[name]  # another file imported under this name earlier in the process
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # a script that exits on import, too
        raise TemplateError(f"importing {name} ({file}) failed: {type(exc).__name__}: {exc} "
                            "(leave it out with --exclude if it is not part of the "
                            "deployment)") from exc


def _modules(paths: Sequence[str | Path], exclude: Sequence[str]) -> dict[str, ModuleType]:
    """The modules the paths put in a ``package`` zip, by the name Lambda imports them under,
    sorted."""
    from ._package import PackageError, _root_entries

    try:
        entries = _root_entries([Path(p) for p in paths], exclude)
    except PackageError as exc:
        raise TemplateError(str(exc)) from None
    modules: dict[str, ModuleType] = {}
    for entry in entries:
        if entry.path.is_file():
            modules[entry.path.stem] = _load(entry.path)
            continue
        root = str(entry.path.resolve() if entry.project else entry.path.resolve().parent)
        if root not in sys.path:
            sys.path.insert(0, root)
        for name, file in entry.files:
            parts = name.removesuffix(".py").split("/")
            if not name.endswith(".py") or not all(p.isidentifier() for p in parts):
                continue  # not importable by that name, so no handler of Lambda's
            if parts[-1] == "__init__":
                parts.pop()
            dotted = ".".join(parts)
            if dotted:
                modules[dotted] = _import(dotted, file)
    return {name: modules[name] for name in sorted(modules)}


def discover(paths: Sequence[str | Path], *, plain_services: Mapping[str, str] | None = None,
             invoke_async: Iterable[str] = (), code_uri: str = "build/lambda.zip",
             python: str = DEFAULT_PYTHON, architecture: str = "arm64", description: str = "",
             command: str = "", exclude: Sequence[str] = ()) -> App:
    """Import the modules at ``paths`` and describe their deployment.

    Args:
        paths: What ``lambda-workflow package`` takes: ``.py`` files (at the zip's root under
            their name), package folders (under theirs) and project folders (their contents
            at the root), each module named as Lambda imports it from the zip.
        exclude: Globs of files in folders to leave out, as ``package --exclude``.
        plain_services: Service name to ``module.attribute`` of a handler written without
            the SDK (it keeps its own call records and replies, docs/protocol.md).
        invoke_async: Services the workflow function invokes asynchronously (Lambda
            ``Event`` invocations) instead of through a queue of their own.

    Raises:
        TemplateError: no workflow handler, workflows without one, two workflow handlers in
            a module, a workflow registered twice, a child workflow no handler registers,
            several timer handlers, a service implemented twice, an option naming something
            that is not there.
    """
    from .aws.handlers import handler_role
    from .workflow import Workflow

    modules = _modules(paths, exclude)
    seen: dict[int, str] = {}
    workflow_handlers: list[tuple[str, Any]] = []
    service_handlers: dict[str, list[str]] = {}
    timers: list[str] = []
    defined: dict[str, list[Any]] = {}
    for stem, module in modules.items():
        for attribute in sorted(vars(module)):
            value = vars(module)[attribute]
            if isinstance(value, Workflow) and getattr(value.fn, "__module__", None) == stem:
                defined.setdefault(stem, []).append(value)
            role = handler_role(value)
            if role is None or id(value) in seen:
                continue
            seen[id(value)] = f"{stem}.{attribute}"
            if role.kind == "workflow":
                workflow_handlers.append((f"{stem}.{attribute}", role))
            elif role.kind == "service" and role.service is not None:
                service_handlers.setdefault(role.service.name, []).append(f"{stem}.{attribute}")
            elif role.kind == "timer":
                timers.append(f"{stem}.{attribute}")
    registered = {id(wf): wf for _, role in workflow_handlers for wf in role.workflows}
    _check_workflow_handlers(workflow_handlers)
    orphans = {stem: [wf.name for wf in wfs if id(wf) not in registered]
               for stem, wfs in defined.items()}
    orphans = {stem: names for stem, names in orphans.items() if names}
    if not workflow_handlers or orphans:
        where = orphans or {"(the given modules)": []}
        detail = "; ".join(f"{stem} defines {', '.join(names) or 'no workflow'}"
                           for stem, names in sorted(where.items()))
        raise TemplateError(
            f"no workflow handler registers every workflow ({detail}): add "
            "`handler = workflow_handler(<workflow>, ...)` (from lambda_workflow.aws) to a "
            "module and pass that module too")
    workflows = [wf for _, role in workflow_handlers for wf in role.workflows]
    if len(timers) > 1:
        raise TemplateError(f"several timer handlers: {', '.join(timers)}; keep one")
    plain = dict(plain_services or {})
    for name, handler in sorted(plain.items()):
        if name in service_handlers:
            raise TemplateError(
                f"service {name!r} is implemented twice: by {service_handlers[name][0]} "
                f"(service_handler) and by --service {name}={handler}")
        stem, dot, attribute = handler.rpartition(".")
        if not dot or stem not in modules or not hasattr(modules[stem], attribute):
            raise TemplateError(
                f"--service {name}={handler}: expected MODULE.ATTRIBUTE of a given module "
                f"(one of {', '.join(sorted(modules))})")
    for name, handlers in sorted(service_handlers.items()):
        if len(handlers) > 1:
            raise TemplateError(f"service {name!r} is implemented twice: by "
                                f"{' and '.join(handlers)}")
    called = {svc.name for wf in workflows for svc in wf.services}
    implemented = {**{n: (h[0], True) for n, h in service_handlers.items()},
                   **{n: (h, False) for n, h in plain.items()}}
    asynchronous = set(invoke_async)
    unknown = sorted(asynchronous - set(implemented))
    if unknown:
        raise TemplateError(f"--invoke-async names services no module implements: "
                            f"{', '.join(unknown)}")
    return App(
        workflow_modules=tuple(
            WorkflowModule(
                handler.rpartition(".")[0], handler,
                tuple(sorted(wf.name for wf in role.workflows)),
                tuple(sorted({svc.name for wf in role.workflows for svc in wf.services})),
                tuple(sorted({c.name for wf in role.workflows for c in wf.children})))
            for handler, role in sorted(workflow_handlers, key=lambda h: h[0])),
        services=tuple(ServiceFunction(n, h, sdk, "lambda" if n in asynchronous else "sqs")
                       for n, (h, sdk) in sorted(implemented.items())),
        external=tuple(ExternalService(n) for n in sorted(called - set(implemented))),
        timer_handler=timers[0] if timers else BUILTIN_TIMER_HANDLER,
        code_uri=code_uri, python=python, architecture=architecture,
        description=description, command=command)


def _check_workflow_handlers(handlers: Sequence[tuple[str, Any]]) -> None:
    """One workflow function per module: a module has one workflow handler, a workflow is
    registered by one handler, and every child workflow by some handler (its parent's or
    another module's, whose queue its start message is routed to).

    Raises:
        TemplateError: the first rule broken, naming the handlers and workflows.
    """
    by_module: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for handler, role in handlers:
        by_module.setdefault(handler.rpartition(".")[0], []).append(handler)
        for wf in role.workflows:
            other = owner.setdefault(wf.name, handler)
            if other != handler:
                raise TemplateError(
                    f"workflow {wf.name!r} is registered by two workflow handlers ({other} "
                    f"and {handler}); each workflow runs in one workflow function, fed by "
                    "its own queue: register it in one")
    for module, names in sorted(by_module.items()):
        if len(names) > 1:
            raise TemplateError(
                f"module {module} has {len(names)} workflow handlers ({', '.join(names)}); "
                "the template makes one workflow function per module: register its workflows "
                "in one `workflow_handler(a, b, ...)`, or move one to a module of its own")
    for handler, role in handlers:
        for wf in role.workflows:
            for child in wf.children:
                if child.name not in owner:
                    raise TemplateError(
                        f"workflow {wf.name!r} starts child workflow {child.name!r}, which "
                        f"no workflow handler registers ({handler} registers "
                        f"{', '.join(sorted(w.name for w in role.workflows))}): add it to "
                        "that workflow_handler(...), or to the handler of another module "
                        "given to the template")


# ---------------------------------------------------------------- intrinsics


def _ref(name: str) -> dict[str, Any]:
    return {"Ref": name}


def _arn(name: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [name, "Arn"]}


def _sub(text: str) -> dict[str, Any]:
    return {"Fn::Sub": text}


def logical_id(service: str) -> str:
    """The stem of a service's logical ids: its name in CamelCase (``order-payment`` gives
    ``OrderPayment``)."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", service) if p]
    stem = "".join(p[0].upper() + p[1:] for p in parts)
    if not stem or not stem[0].isalpha():
        raise TemplateError(f"service {service!r} gives no logical id (its name must start "
                            "with a letter)")
    return stem


def _env_name(service: str) -> str:
    return _SETTINGS + "SERVICE_" + re.sub(r"[^A-Za-z0-9]", "_", service).upper()


def _statement(sid: str, actions: str | list[str], resource: Any,
               condition: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Sid": sid, "Effect": "Allow",
                           "Action": actions[0] if isinstance(actions, list)
                           and len(actions) == 1 else actions,
                           "Resource": resource}
    if condition:
        out["Condition"] = dict(condition)
    return out


def _document(statements: list[Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements}


def _lambda_role(name: str, statements: list[Any],
                 managed: list[Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"AssumeRolePolicyDocument": _document([{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}])}
    if managed:
        props["ManagedPolicyArns"] = managed
    props["Policies"] = [{"PolicyName": name, "PolicyDocument": _document(statements)}]
    return {"Type": "AWS::IAM::Role", "Properties": props}


def _queue(*, fifo: bool = False, consumed: bool = False, dlq: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if fifo:
        props |= {"FifoQueue": True, "ContentBasedDeduplication": False}
    if fifo and consumed:
        props |= {"DeduplicationScope": "messageGroup",
                  "FifoThroughputLimit": "perMessageGroupId"}
    if consumed:
        props["VisibilityTimeout"] = _VISIBILITY
    props |= {"MessageRetentionPeriod": _RETENTION, "SqsManagedSseEnabled": True}
    if dlq:
        props["RedrivePolicy"] = {"deadLetterTargetArn": _arn(dlq),
                                  "maxReceiveCount": _ref("MaxReceives")}
    return {"Type": "AWS::SQS::Queue", "Properties": props}


def _tls_only(resource: Any, service: str) -> dict[str, Any]:
    return {"Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": f"{service}:*",
            "Resource": resource, "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def _queue_policy(queue: str, senders: list[Any] | None = None, sid: str = "",
                  extra: list[Any] | None = None) -> dict[str, Any]:
    statements: list[Any] = [_tls_only(_arn(queue), "sqs")]
    if senders is not None:
        statements.append({"Sid": sid, "Effect": "Deny", "Principal": "*",
                           "Action": "sqs:SendMessage", "Resource": _arn(queue),
                           "Condition": {"ArnNotEquals": {"aws:PrincipalArn": senders}}})
    statements += extra or []
    return {"Type": "AWS::SQS::QueuePolicy",
            "Properties": {"Queues": [_ref(queue)], "PolicyDocument": _document(statements)}}


def _alarm(queue: str, what: str) -> dict[str, Any]:
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": {
        "AlarmDescription": f"Messages in {queue}: {what}",
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
        "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}],
        "Statistic": "Maximum", "Period": 300, "EvaluationPeriods": 1, "Threshold": 0,
        "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching",
        "AlarmActions": {"Fn::If": ["HasAlarmTopic", [_ref("AlarmTopicArn")],
                                    _ref("AWS::NoValue")]}}}


def _function(description: str, handler: str, role: str, log_group: str,
              events: Mapping[str, Any] | None = None,
              environment: Mapping[str, Any] | None = None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"Description": description, "Handler": handler,
                             "Role": _arn(role), "LoggingConfig": {"LogGroup": _ref(log_group)}}
    if environment:
        props["Environment"] = {"Variables": dict(environment)}
    props |= dict(extra or {})
    if events:
        props["Events"] = dict(events)
    return {"Type": "AWS::Serverless::Function", "Properties": props}


def _sqs_event(queue: str) -> dict[str, Any]:
    return {"Type": "SQS", "Properties": {"Queue": _arn(queue), "BatchSize": 10,
                                          "FunctionResponseTypes": ["ReportBatchItemFailures"]}}


LOGS = ["logs:CreateLogStream", "logs:PutLogEvents"]
CONSUME = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]


# ---------------------------------------------------------------- the template


def _check_ids(app: App) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name in [s.service for s in app.services] + [e.service for e in app.external]:
        stem = logical_id(name)
        if stem in _RESERVED:
            raise TemplateError(f"service {name!r} would take the logical ids of the stack's "
                                f"own {stem}* resources; rename the service")
        if stem in ids.values():
            other = next(n for n, s in ids.items() if s == stem)
            raise TemplateError(f"services {other!r} and {name!r} give the same logical id "
                                f"{stem!r}")
        ids[name] = stem
    return ids


def workflow_stems(app: App) -> dict[str, str]:
    """The stem of each workflow module's logical ids: ``Workflow`` for the only one (the
    ids of a one-function stack: WorkflowQueue, WorkflowFunction, ...), else the module's
    name in CamelCase before it (``billing.flows`` gives ``BillingFlowsWorkflow``).

    Raises:
        TemplateError: no workflow module, or two stems (or a stem and a service's) alike.
    """
    if not app.workflow_modules:
        raise TemplateError("the app has no workflow module")
    if len(app.workflow_modules) == 1:
        return {app.workflow_modules[0].module: "Workflow"}
    services = {stem: name for name, stem in _check_ids(app).items()}
    stems: dict[str, str] = {}
    for wm in app.workflow_modules:
        stem = logical_id(wm.module.replace(".", "_")) + "Workflow"
        clash = next((m for m, st in stems.items() if st == stem), None)
        if clash is not None or stem in services:
            other = f"module {clash}" if clash else f"service {services[stem]!r}"
            raise TemplateError(f"module {wm.module} and {other} give the same logical id "
                                f"{stem!r}; rename one")
        stems[wm.module] = stem
    return stems


def _routes(app: App) -> dict[str, dict[str, str]]:
    """For each workflow module, the workflows of other modules its function sends to: the
    children its workflows start, and the workflows of the modules that start its workflows
    as children (a child's result goes to its parent's queue); each with the stem of the
    module that runs it. A module's children are known as a set, so every workflow of a
    parent's module is routed (all to that one queue)."""
    stems = workflow_stems(app)
    runs = {name: wm.module for wm in app.workflow_modules for name in wm.workflows}
    routes: dict[str, dict[str, str]] = {wm.module: {} for wm in app.workflow_modules}
    for wm in app.workflow_modules:
        for child in wm.children:
            other = runs.get(child, wm.module)
            if other != wm.module:
                routes[wm.module][child] = stems[other]
                routes[other] |= dict.fromkeys(wm.workflows, stems[wm.module])
    return routes


def build(app: App) -> dict[str, Any]:
    """The template as data (what :func:`render` writes)."""
    from .aws.dynamodb import table_definition
    from .aws.payloads import DEFAULT_PREFIX, minimum_expiry_days, reply_owner, request_owner

    ids = _check_ids(app)
    queued = [s for s in app.services if s.invoke == "sqs"]
    invoked = [s for s in app.services if s.invoke == "lambda"]
    retentions = [0, 7, 14, 30, 90, 180, 365]
    params: dict[str, Any] = {
        "Architecture": {
            "Type": "String", "Default": app.architecture, "AllowedValues": ["arm64", "x86_64"],
            "Description": "Lambda architecture of every function. The zip must be built for "
                           "the same one (`lambda-workflow package ... --arch <this>`): "
                           "pydantic-core and orjson are binary."},
        # A String (one of the mapping's keys), not a Number: it is only ever a key of the
        # PayloadExpiry mapping and an environment value, both strings on AWS (and moto's
        # CloudFormation, which turns a Number into an int, then finds no such key).
        "RetentionDays": {
            "Type": "String", "Default": "30", "AllowedValues": [str(d) for d in retentions],
            "Description": "Days a finished workflow's items live before DynamoDB's TTL "
                           "deletes them (0 keeps them for ever). Also sets the payload "
                           "bucket's expiry (the PayloadExpiry mapping)."},
        "MaxReceives": {
            "Type": "Number", "Default": 5, "MinValue": 1, "MaxValue": 1000,
            "Description": "Deliveries of a message before SQS moves it to a dead-letter "
                           "queue: every queue's maxReceiveCount and "
                           "LAMBDA_WORKFLOW_MAX_RECEIVES, which must be equal."},
        "PayloadThreshold": {
            "Type": "Number", "Default": 65536, "MinValue": 1024, "MaxValue": 245760,
            "Description": "Bytes above which a payload goes to the bucket "
                           "(LAMBDA_WORKFLOW_PAYLOAD_THRESHOLD)."},
        "CallbackKeyTtl": {
            "Type": "Number", "Default": 300, "MinValue": 0,
            "Description": "Seconds the workflow function caches the callback keys: a "
                           "rotation reaches it within this (LAMBDA_WORKFLOW_CALLBACK_KEY_TTL)."},
        "AlarmTopicArn": {
            "Type": "String", "Default": "",
            "Description": "An SNS topic the dead-letter queues' alarms notify (empty: the "
                           "alarms notify no one)."},
        "KmsKeyArn": {
            "Type": "String", "Default": "",
            "AllowedPattern": r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/\S+)?$",
            "ConstraintDescription": "empty, or the ARN of a KMS key",
            "Description": "A symmetric KMS key that encrypts every stored and sent payload "
                           "(LAMBDA_WORKFLOW_CODEC zlib+kms:<this>, docs/codecs.md); the "
                           "functions and ClientRole get kms:GenerateDataKey and kms:Decrypt "
                           "on it (empty: payloads are stored as they are)."},
    }
    conditions: dict[str, Any] = {
        "KeepForever": {"Fn::Equals": [_ref("RetentionDays"), "0"]},
        "HasAlarmTopic": {"Fn::Not": [{"Fn::Equals": [_ref("AlarmTopicArn"), ""]}]},
        "HasKmsKey": {"Fn::Not": [{"Fn::Equals": [_ref("KmsKeyArn"), ""]}]},
    }
    for ext in app.external:
        stem = ids[ext.service]
        params[f"{stem}ServiceTarget"] = {
            "Type": "String",
            "AllowedPattern": r"^arn:aws[a-z-]*:(sqs|lambda):[a-z0-9-]+:[0-9]{12}:\S+$",
            "ConstraintDescription": "the ARN of an SQS queue or of a Lambda function",
            "Description": f"Where requests to the {ext.service!r} service go, which another "
                           "stack runs: the ARN of its SQS queue or of its Lambda function "
                           "(invoked asynchronously)."}
        params[f"{stem}ServiceReplyRole"] = {
            "Type": "String",
            "AllowedPattern": r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/\S+$",
            "ConstraintDescription": "the ARN of an IAM role",
            "Description": f"The IAM role the {ext.service!r} service replies with: the "
                           "only one besides this stack's roles that may send to the "
                           "workflow queue (and read its own request payloads)."}
        conditions[f"{stem}IsQueue"] = {"Fn::Equals": [
            {"Fn::Select": [2, {"Fn::Split": [":", _ref(f"{stem}ServiceTarget")]}]}, "sqs"]}
    expiry = {str(days): {"Days": (minimum_expiry_days(days) if days else 1)}
              for days in retentions}
    resources: dict[str, dict[str, Any]] = {}
    table = dict(table_definition())
    table |= {"TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
              "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True}}
    resources["WorkflowTable"] = {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain",
                                  "UpdateReplacePolicy": "Retain", "Properties": table}
    resources["PayloadBucket"] = {
        "Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
        "Properties": {
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True},
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
            "LifecycleConfiguration": {"Rules": [{
                "Id": "expire-payloads",
                "Status": {"Fn::If": ["KeepForever", "Disabled", "Enabled"]},
                "ExpirationInDays": {"Fn::FindInMap": ["PayloadExpiry", _ref("RetentionDays"),
                                                       "Days"]},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}}}
    bucket_statements: list[Any] = [{
        "Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [_arn("PayloadBucket"), _sub("${PayloadBucket.Arn}/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]
    for ext in app.external:
        stem = ids[ext.service]
        role = _ref(f"{stem}ServiceReplyRole")
        bucket_statements += [
            {"Sid": f"{stem}RequestPayloads", "Effect": "Allow", "Principal": {"AWS": role},
             "Action": "s3:GetObject",
             "Resource": _sub(f"${{PayloadBucket.Arn}}/{DEFAULT_PREFIX}"
                              f"{request_owner(ext.service)}/*")},
            {"Sid": f"{stem}ReplyPayloads", "Effect": "Allow", "Principal": {"AWS": role},
             "Action": ["s3:GetObject", "s3:PutObject"],
             "Resource": _sub(f"${{PayloadBucket.Arn}}/{DEFAULT_PREFIX}"
                              f"{reply_owner(ext.service, '')}*")}]
    resources["PayloadBucketPolicy"] = {"Type": "AWS::S3::BucketPolicy", "Properties": {
        "Bucket": _ref("PayloadBucket"), "PolicyDocument": _document(bucket_statements)}}
    resources["CallbackKeySecret"] = {"Type": "AWS::SecretsManager::Secret", "Properties": {
        "Description": 'lambda-workflow callback token keys (one key, or {"current", "verify"})',
        "GenerateSecretString": {"PasswordLength": 64, "ExcludePunctuation": True}}}
    resources["TimerScheduleGroup"] = {"Type": "AWS::Scheduler::ScheduleGroup"}

    # queues, their policies and alarms
    stems = workflow_stems(app)
    routes = _routes(app)
    multi = len(app.workflow_modules) > 1
    modules = {stems[wm.module]: wm for wm in app.workflow_modules}
    first = stems[app.workflow_modules[0].module]
    dead_letters: dict[str, str] = {}
    for stem in modules:
        resources[f"{stem}Queue"] = _queue(fifo=True, consumed=True,
                                           dlq=f"{stem}DeadLetterQueue")
        resources[f"{stem}DeadLetterQueue"] = _queue(fifo=True)
        dead_letters[f"{stem}DeadLetterQueue"] = (
            "workflow messages that failed MaxReceives times or that the workflow function "
            "rejected" if not multi else
            f"workflow messages of {modules[stem].module} that failed MaxReceives times or "
            "that its workflow function rejected")
    resources["TimerQueue"] = _queue(consumed=True, dlq="TimerDeadLetterQueue")
    resources["TimerDeadLetterQueue"] = _queue()
    dead_letters["TimerDeadLetterQueue"] = "timer messages that failed MaxReceives times"
    for svc in queued:
        stem = ids[svc.service]
        resources[f"{stem}Queue"] = _queue(consumed=True, dlq=f"{stem}DeadLetterQueue")
        resources[f"{stem}DeadLetterQueue"] = _queue()
        dead_letters[f"{stem}DeadLetterQueue"] = (
            f"requests to the {svc.service} service that failed MaxReceives times")
    for svc in invoked:
        stem = ids[svc.service]
        resources[f"{stem}FailureQueue"] = _queue()
        dead_letters[f"{stem}FailureQueue"] = (
            f"asynchronous invocations of the {svc.service} service that failed every attempt")

    def one_or_list(items: list[Any]) -> Any:
        return items[0] if len(items) == 1 else items

    # the services each workflow function reaches: every one of the stack when it is the
    # only workflow function; else those its workflows call
    def reaches(stem: str) -> list[ServiceFunction]:
        return [s for s in app.services
                if not multi or s.service in modules[stem].services]

    def reaches_external(stem: str) -> list[ExternalService]:
        return [e for e in app.external
                if not multi or e.service in modules[stem].services]

    workflow_queues = [_arn(f"{stem}Queue") for stem in modules]
    for stem in modules:
        senders = [_arn(f"{stem}Role"),
                   *(_arn(f"{other}Role") for other in modules
                     if other != stem and stem in routes[modules[other].module].values()),
                   *(_arn(f"{ids[s.service]}Role") for s in app.services),
                   _arn("TimerRole"), _arn("ClientRole"),
                   *(_ref(f"{ids[e.service]}ServiceReplyRole") for e in app.external)]
        external_replies = [{"Sid": "ExternalServiceReplies", "Effect": "Allow",
                             "Principal": {"AWS": [_ref(f"{ids[e.service]}ServiceReplyRole")
                                                   for e in app.external]},
                             "Action": "sqs:SendMessage", "Resource": _arn(f"{stem}Queue")}
                            ] if app.external else []
        resources[f"{stem}QueuePolicy"] = _queue_policy(
            f"{stem}Queue", senders, "OnlyThisStacksSenders", external_replies)
    resources["TimerQueuePolicy"] = _queue_policy(
        "TimerQueue", [*(_arn(f"{stem}Role") for stem in modules), _arn("TimerRole"),
                       _arn("SchedulerRole")],
        "OnlyTimerSenders")
    for svc in queued:
        stem = ids[svc.service]
        callers = [_arn(f"{w}Role") for w in modules if svc in reaches(w)]
        resources[f"{stem}QueuePolicy"] = _queue_policy(
            f"{stem}Queue", callers or [_arn(f"{w}Role") for w in modules],
            "OnlyTheWorkflowFunction" if len(callers) <= 1 else "OnlyWorkflowFunctions")
    for queue, what in dead_letters.items():
        resources[f"{queue}Policy"] = _queue_policy(queue)
        resources[f"{queue}Alarm"] = _alarm(queue, what)

    # logs
    for stem in [*modules, "Timer", *(ids[s.service] for s in app.services)]:
        resources[f"{stem}LogGroup"] = {"Type": "AWS::Logs::LogGroup",
                                        "Properties": {"RetentionInDays": _LOGS_DAYS}}

    # roles
    schedules = _sub("arn:${AWS::Partition}:scheduler:${AWS::Region}:${AWS::AccountId}:"
                     "schedule/${TimerScheduleGroup}/*")
    for stem in modules:
        routed = sorted(set(routes[modules[stem].module].values()))
        workflow: list[Any] = [
            _statement("Logs", LOGS, _arn(f"{stem}LogGroup")),
            _statement("ConsumeWorkflowQueue", CONSUME, _arn(f"{stem}Queue")),
            _statement("SendRequestsOwnMessagesRejectsAndTimers", ["sqs:SendMessage"], [
                _arn(f"{stem}Queue"), _arn(f"{stem}DeadLetterQueue"),
                *(_arn(f"{ids[s.service]}Queue") for s in queued if s in reaches(stem)),
                _arn("TimerQueue")])]
        if routed:
            workflow.append(_statement("OtherWorkflowFunctionsChildrenAndParents",
                                       ["sqs:SendMessage"],
                                       one_or_list([_arn(f"{r}Queue") for r in routed])))
        for svc in invoked:
            if svc not in reaches(stem):
                continue
            sstem = ids[svc.service]
            workflow.append(_statement(f"Invoke{sstem}Asynchronously",
                                       ["lambda:InvokeFunction"], _arn(f"{sstem}Function")))
        for ext in reaches_external(stem):
            estem = ids[ext.service]
            target = _ref(f"{estem}ServiceTarget")
            workflow.append({"Fn::If": [
                f"{estem}IsQueue",
                _statement(f"{estem}ServiceRequests", ["sqs:SendMessage"], target),
                _statement(f"{estem}ServiceRequests", ["lambda:InvokeFunction"], target)]})
        workflow += [
            _statement("WorkflowState", ["dynamodb:GetItem", "dynamodb:PutItem",
                                         "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem",
                                         "dynamodb:Query"], _arn("WorkflowTable")),
            _statement("LargePayloads", ["s3:GetObject", "s3:PutObject"],
                       _sub(f"${{PayloadBucket.Arn}}/{DEFAULT_PREFIX}*")),
            _statement("TimerQueueArnForSchedules", ["sqs:GetQueueAttributes"],
                       _arn("TimerQueue")),
            _statement("LongTimersAsSchedules", ["scheduler:CreateSchedule",
                                                 "scheduler:DeleteSchedule"], schedules),
            _statement("PassSchedulerRole", ["iam:PassRole"], _arn("SchedulerRole"),
                       {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}),
            _statement("CallbackKeys", ["secretsmanager:GetSecretValue"],
                       _ref("CallbackKeySecret")),
        ]
        resources[f"{stem}Role"] = _lambda_role("workflow", workflow)
    resources["SchedulerRole"] = {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": _document([{
            "Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": _ref("AWS::AccountId")}}}]),
        "Policies": [{"PolicyName": "scheduler", "PolicyDocument": _document([
            _statement("DeliverTimers", ["sqs:SendMessage"], _arn("TimerQueue"))])}]}}
    if app.services:
        resources["ServiceReplyPolicy"] = {"Type": "AWS::IAM::ManagedPolicy", "Properties": {
            "Description": "lambda-workflow services replying to workflows",
            "PolicyDocument": _document([
                _statement("Reply", ["sqs:SendMessage"], one_or_list(workflow_queues))])}}
    for svc in app.services:
        stem = ids[svc.service]
        statements: list[Any] = [_statement("Logs", LOGS, _arn(f"{stem}LogGroup"))]
        if svc.invoke == "sqs":
            statements.append(_statement("ConsumeRequests", CONSUME, _arn(f"{stem}Queue")))
        else:
            statements.append(_statement("OnFailureDestination", ["sqs:SendMessage"],
                                         _arn(f"{stem}FailureQueue")))
        table_actions = ["dynamodb:GetItem", "dynamodb:PutItem"]
        if svc.sdk:
            table_actions.append("dynamodb:UpdateItem")
        statements.append(_statement(
            "OwnCallRecords", table_actions, _arn("WorkflowTable"),
            {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"svc#{svc.service}#*"]}}))
        if svc.sdk:
            statements += [
                _statement("OwnRequestPayloads", ["s3:GetObject"], _sub(
                    f"${{PayloadBucket.Arn}}/{DEFAULT_PREFIX}{request_owner(svc.service)}/*")),
                _statement("OwnReplyPayloads", ["s3:GetObject", "s3:PutObject"], _sub(
                    f"${{PayloadBucket.Arn}}/{DEFAULT_PREFIX}"
                    f"{reply_owner(svc.service, '')}*"))]
        resources[f"{stem}Role"] = _lambda_role(svc.service, statements,
                                                [_ref("ServiceReplyPolicy")])
    resources["TimerRole"] = _lambda_role("timer", [
        _statement("Logs", LOGS, _arn("TimerLogGroup")),
        _statement("ConsumeTimers", CONSUME, _arn("TimerQueue")),
        _statement("FireOrHopAgain", ["sqs:SendMessage"], [*workflow_queues,
                                                           _arn("TimerQueue")]),
        _statement("StopHopsOfEndedInstances", ["dynamodb:GetItem"], _arn("WorkflowTable"), {
            "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["wf#*"]},
            "ForAllValues:StringEquals": {"dynamodb:Attributes": ["pk", "sk", "status"]},
            "StringEqualsIfExists": {"dynamodb:Select": "SPECIFIC_ATTRIBUTES"}})])
    index = table["GlobalSecondaryIndexes"][0]["IndexName"]
    resources["ClientRole"] = {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": _document([{
            "Effect": "Allow",
            "Principal": {"AWS": _sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
            "Action": "sts:AssumeRole"}]),
        "Policies": [{"PolicyName": "client", "PolicyDocument": _document([
            _statement("StartCancelAndCallbacks", ["sqs:SendMessage"],
                       one_or_list(workflow_queues)),
            _statement("Instances", ["dynamodb:BatchGetItem", "dynamodb:GetItem",
                                     "dynamodb:PutItem", "dynamodb:Query"],
                       _arn("WorkflowTable"),
                       {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["wf#*"]}}),
            _statement("ListInstances", ["dynamodb:Query"],
                       _sub(f"${{WorkflowTable.Arn}}/index/{index}")),
            # heartbeat_callback: one TransactWriteItems, a ConditionCheck of the instance and
            # an Update of the callback's heartbeat_at (docs/primitives.md, callbacks)
            _statement("CallbackHeartbeats", ["dynamodb:ConditionCheckItem",
                                              "dynamodb:UpdateItem"],
                       _arn("WorkflowTable"), {
                           "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["wf#*"]},
                           "ForAllValues:StringEquals": {"dynamodb:Attributes": [
                               "pk", "sk", "heartbeat_at", "kind", "state", "request_digest",
                               "status"]}}),
            _statement("LargeInputsAndResults", ["s3:GetObject", "s3:PutObject"],
                       _sub(f"${{PayloadBucket.Arn}}/{DEFAULT_PREFIX}*")),
            _statement("CallbackKeys", ["secretsmanager:GetSecretValue"],
                       _ref("CallbackKeySecret"))])}]}}
    # The payload key (KmsKeyArn): every role that reads or writes payloads, i.e. the
    # workflow functions, the services built with the SDK and clients; not the timer
    # function (it reads instance status only) nor plain services (they send plain JSON).
    resources["PayloadKeyPolicy"] = {"Type": "AWS::IAM::Policy", "Condition": "HasKmsKey",
                                     "Properties": {
        "PolicyName": "payload-key",
        "Roles": [_ref(f"{stem}Role") for stem in modules]
                 + [_ref(f"{ids[s.service]}Role") for s in app.services if s.sdk]
                 + [_ref("ClientRole")],
        "PolicyDocument": _document([_statement(
            "PayloadKey", ["kms:GenerateDataKey", "kms:Decrypt"], _ref("KmsKeyArn"))])}}

    # functions
    def queues_json(route: Mapping[str, str]) -> dict[str, Any]:
        return _sub(json.dumps({name: f"${{{stem}Queue}}" for name, stem in route.items()},
                               sort_keys=True))

    for stem, wm in modules.items():
        targets = {s.service: (f"sqs:${{{ids[s.service]}Queue}}" if s.invoke == "sqs"
                               else f"lambda:${{{ids[s.service]}Function}}")
                   for s in reaches(stem)}
        environment: dict[str, Any] = {}
        if multi:
            environment |= {_SETTINGS + "QUEUE_URL": _ref(f"{stem}Queue"),
                            _SETTINGS + "DLQ_URL": _ref(f"{stem}DeadLetterQueue")}
            if routes[wm.module]:
                environment[_SETTINGS + "WORKFLOW_QUEUES"] = queues_json(routes[wm.module])
        if targets:
            environment[_SETTINGS + "SERVICES"] = _sub(json.dumps(targets, sort_keys=True))
        plain = sorted([s.service for s in reaches(stem) if not s.sdk]
                       + [e.service for e in reaches_external(stem)])
        if plain:  # requests they read as plain JSON under any codec (docs/codecs.md)
            environment[_SETTINGS + "PLAIN_SERVICES"] = ",".join(plain)
        environment |= {
            _SETTINGS + "SCHEDULER_ROLE_ARN": _arn("SchedulerRole"),
            _SETTINGS + "SCHEDULER_GROUP": _ref("TimerScheduleGroup"),
            _SETTINGS + "CALLBACK_KEY_SECRET": _ref("CallbackKeySecret"),
            _SETTINGS + "CALLBACK_KEY_TTL": _ref("CallbackKeyTtl")}
        for ext in reaches_external(stem):
            estem = ids[ext.service]
            target_arn = _ref(f"{estem}ServiceTarget")
            environment[_env_name(ext.service)] = {"Fn::If": [
                f"{estem}IsQueue",
                {"Fn::Sub": ["sqs:https://sqs.${Region}.${AWS::URLSuffix}/${Account}/${Name}", {
                    "Region": {"Fn::Select": [3, {"Fn::Split": [":", target_arn]}]},
                    "Account": {"Fn::Select": [4, {"Fn::Split": [":", target_arn]}]},
                    "Name": {"Fn::Select": [5, {"Fn::Split": [":", target_arn]}]}}]},
                _sub(f"lambda:${{{estem}ServiceTarget}}")]}
        resources[f"{stem}Function"] = _function(
            f"Runs the workflows {', '.join(wm.workflows)}, one activation per workflow and "
            "batch", wm.handler, f"{stem}Role", f"{stem}LogGroup",
            {"WorkflowMessages": _sqs_event(f"{stem}Queue")}, environment)
    every_queue = {name: stem for stem, wm in modules.items() for name in wm.workflows}
    resources["TimerFunction"] = _function(
        "Durable timers, firing due ones on the workflow queue and re-delaying the rest"
        if not multi else "Durable timers, firing due ones on the workflow queue each names "
                          "and re-delaying the rest",
        app.timer_handler, "TimerRole", "TimerLogGroup",
        {"TimerMessages": _sqs_event("TimerQueue")},
        {_SETTINGS + "WORKFLOW_QUEUES": queues_json(every_queue)} if multi else None)
    for svc in app.services:
        stem = ids[svc.service]
        how = "" if svc.sdk else ", a handler written without the SDK"
        if svc.invoke == "sqs":
            resources[f"{stem}Function"] = _function(
                f"The {svc.service} service{how}", svc.handler, f"{stem}Role",
                f"{stem}LogGroup", {f"{stem}Requests": _sqs_event(f"{stem}Queue")})
        else:
            resources[f"{stem}Function"] = _function(
                f"The {svc.service} service{how}, invoked asynchronously by the workflow "
                "function", svc.handler, f"{stem}Role", f"{stem}LogGroup",
                extra={"EventInvokeConfig": {
                    "MaximumRetryAttempts": _ASYNC_RETRIES,
                    "DestinationConfig": {"OnFailure": {
                        "Type": "SQS", "Destination": _arn(f"{stem}FailureQueue")}}}})

    outputs: dict[str, Any] = {
        "WorkflowQueueUrl": {"Description": "LAMBDA_WORKFLOW_QUEUE_URL of clients: start "
                                            "workflows by sending to this queue (WorkflowClient)",
                             "Value": _ref(f"{first}Queue")},
        "TimerQueueUrl": {"Value": _ref("TimerQueue")},
        "TimerDeadLetterQueueUrl": {"Value": _ref("TimerDeadLetterQueue")},
        "TimerScheduleGroupName": {"Value": _ref("TimerScheduleGroup")},
        "TableName": {"Description": "LAMBDA_WORKFLOW_TABLE of clients (and --table of the "
                                     "CLI)", "Value": _ref("WorkflowTable")},
        "PayloadBucketName": {"Description": "LAMBDA_WORKFLOW_BUCKET of clients",
                              "Value": _ref("PayloadBucket")},
        "CallbackKeySecretArn": {
            "Description": "Clients that complete callbacks set "
                           "LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET to this",
            "Value": _ref("CallbackKeySecret")},
        "ClientRoleArn": {"Description": "Assume this role to start, cancel and inspect "
                                         "workflows (WorkflowClient)",
                          "Value": _arn("ClientRole")},
        "TimerFunctionName": {"Value": _ref("TimerFunction")},
    }
    for stem in modules:
        outputs[f"{stem}DeadLetterQueueUrl"] = {"Value": _ref(f"{stem}DeadLetterQueue")}
        outputs[f"{stem}FunctionName"] = {"Value": _ref(f"{stem}Function")}
        if multi:
            outputs[f"{stem}QueueUrl"] = {"Value": _ref(f"{stem}Queue")}
    if multi:
        outputs["WorkflowQueueUrl"]["Description"] = (
            f"LAMBDA_WORKFLOW_QUEUE_URL of clients (the queue of {app.workflow_modules[0].module}"
            "; WorkflowQueues routes every workflow to its function's queue)")
        outputs["WorkflowQueues"] = {
            "Description": "LAMBDA_WORKFLOW_WORKFLOW_QUEUES of clients: each workflow's queue",
            "Value": queues_json(every_queue)}
    for svc in app.services:
        stem = ids[svc.service]
        outputs[f"{stem}FunctionName"] = {"Value": _ref(f"{stem}Function")}
        if svc.invoke == "sqs":
            outputs[f"{stem}QueueUrl"] = {"Value": _ref(f"{stem}Queue")}
            outputs[f"{stem}DeadLetterQueueUrl"] = {"Value": _ref(f"{stem}DeadLetterQueue")}
        else:
            outputs[f"{stem}FailureQueueUrl"] = {"Value": _ref(f"{stem}FailureQueue")}

    names = ", ".join(sorted(every_queue))
    description = app.description or (
        f"lambda-workflow: the workflows {names} on AWS, generated by `lambda-workflow "
        "template` from their modules. Code: one zip built by `lambda-workflow package`.")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": description,
        "Parameters": params,
        "Mappings": {"PayloadExpiry": expiry},
        "Conditions": conditions,
        "Globals": {"Function": {
            "CodeUri": app.code_uri, "Runtime": f"python{app.python}",
            "Architectures": [_ref("Architecture")], "MemorySize": 512, "Timeout": _TIMEOUT,
            "Environment": {"Variables": {
                _SETTINGS + "TABLE": _ref("WorkflowTable"),
                _SETTINGS + "QUEUE_URL": _ref(f"{first}Queue"),
                _SETTINGS + "DLQ_URL": _ref(f"{first}DeadLetterQueue"),
                _SETTINGS + "BUCKET": _ref("PayloadBucket"),
                _SETTINGS + "TIMER_QUEUE_URL": _ref("TimerQueue"),
                _SETTINGS + "PAYLOAD_THRESHOLD": _ref("PayloadThreshold"),
                _SETTINGS + "RETENTION_DAYS": _ref("RetentionDays"),
                _SETTINGS + "MAX_RECEIVES": _ref("MaxReceives"),
                _SETTINGS + "CODEC": {"Fn::If": [
                    "HasKmsKey", _sub("zlib+kms:${KmsKeyArn}"), "identity"]}}}}},
        "Resources": {name: resources[name] for name in _ordered(resources)},
        "Outputs": {name: outputs[name] for name in sorted(outputs)},
    }


_SECTIONS = [
    ("state and payloads", ("AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::S3::BucketPolicy",
                            "AWS::SecretsManager::Secret", "AWS::Scheduler::ScheduleGroup")),
    ("queues", ("AWS::SQS::Queue",)),
    ("who may send, over TLS only", ("AWS::SQS::QueuePolicy",)),
    ("alarms on the dead-letter queues", ("AWS::CloudWatch::Alarm",)),
    ("logs", ("AWS::Logs::LogGroup",)),
    ("permissions", ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy")),
    ("functions", ("AWS::Serverless::Function",)),
]


def _ordered(resources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Logical ids by section (the order of _SECTIONS), sorted within a section."""
    rank = {kind: i for i, (_, kinds) in enumerate(_SECTIONS) for kind in kinds}
    return sorted(resources, key=lambda n: (rank[resources[n]["Type"]], n))


# ---------------------------------------------------------------- YAML


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./:@*-]*")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null", "~"})
_WIDTH = 100


def _scalar(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"not a template value: {value!r}")
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS and not value.endswith(":"):
        return value
    return json.dumps(value)


def _tag(value: Any) -> tuple[str, Any] | None:
    """``(tag, argument)`` for an intrinsic function written as a YAML tag."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return "!Ref", arg
        if key.startswith("Fn::"):
            if key == "Fn::GetAtt" and all(isinstance(a, str) for a in arg):
                return "!GetAtt", ".".join(arg)
            return "!" + key[4:], arg
    return None


def _inline(value: Any) -> str | None:
    """The value on one line (flow style), or None if it takes a block."""
    tagged = _tag(value)
    if tagged is not None:
        tag, arg = tagged
        inner = _inline(arg)
        return None if inner is None else f"{tag} {inner}"
    if isinstance(value, dict):
        if not value:
            return "{}"
        if all(not isinstance(v, (dict, list)) for v in value.values()) and len(value) <= 3:
            return "{" + ", ".join(f"{_scalar(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
        return None
    if isinstance(value, list):
        parts = [_inline(v) for v in value]
        if any(p is None or p.startswith("{") for p in parts):
            return None
        return "[" + ", ".join(p for p in parts if p is not None) + "]"
    return _scalar(value)


def _block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{_scalar(key)}:"
            lines += _entry(head, item, indent)
    else:
        for item in value:
            lines += _entry(f"{pad}-", item, indent, item_of_list=True)
    return lines


def _entry(head: str, item: Any, indent: int, item_of_list: bool = False) -> list[str]:
    inline = _inline(item)
    if inline is not None and len(head) + 1 + len(inline) <= _WIDTH:
        return [f"{head} {inline}"]
    tagged = _tag(item)
    deeper = indent + 2 + (2 if item_of_list else 0)
    if tagged is not None:
        tag, arg = tagged
        if not isinstance(arg, (dict, list)):
            return [f"{head} {tag} {_scalar(arg)}"]
        return [f"{head} {tag}", *_block(arg, deeper)]
    if isinstance(item, str) and " " in item and "  " not in item and item == item.strip():
        # a long text: folded, one line per part of the width (YAML joins them with spaces)
        return [f"{head} >-", *_wrap(item, deeper)]
    if item_of_list and isinstance(item, dict) and item:
        inner = _block(item, indent + 2)
        return [f"{head} {inner[0].lstrip()}", *inner[1:]]
    if isinstance(item, (dict, list)):
        return [head, *_block(item, indent + 2)]
    return [f"{head} {_scalar(item)}"]


def _wrap(text: str, indent: int, width: int = _WIDTH) -> list[str]:
    """``text`` in lines of at most ``width`` characters (a longer word stands alone)."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and indent + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return [" " * indent + ln for ln in lines]


def _comment(text: str, indent: int = 0) -> list[str]:
    return [" " * indent + "# " + ln.lstrip() for ln in _wrap(text, indent + 2)]


def _notes(app: App) -> dict[str, str]:
    """The comment written above each resource (and section) of the template."""
    from .aws.payloads import EXPIRY_MARGIN_DAYS
    from .context import MAX_SLEEP

    ids = _check_ids(app)
    notes = {
        "Mappings": "CloudFormation has no arithmetic, so the bucket's expiry is looked up: the "
                    f"longest ctx.sleep or callback timeout ({MAX_SLEEP.days} days) + "
                    f"RetentionDays + {EXPIRY_MARGIN_DAYS} days "
                    "(lambda_workflow.aws.payloads.minimum_expiry_days). A payload written "
                    "just before the longest sleep is still there when its instance wakes.",
        "WorkflowQueue": "Every message of an instance (message group = workflow id), each with "
                         "its own deduplication id (docs/protocol.md). Visibility timeout: 6 "
                         "times the functions' timeout, as AWS advises for event sources.",
        "WorkflowDeadLetterQueue": "Messages SQS moved after MaxReceives deliveries, and those "
                                   "the workflow function rejects, with their reason.",
        "TimerQueue": "Durable timers (ctx.sleep): a message delayed by up to 900 s (a standard "
                      "queue: FIFO queues refuse per-message delays), which the timer function "
                      "fires on the workflow queue or sends on for its next hop.",
        "TimerScheduleGroup": "A timer longer than 15 minutes is one one-time EventBridge "
                              "Scheduler schedule in this group, whose target is the timer "
                              "queue. Deleting the stack deletes the schedules.",
        "CallbackKeySecret": "The keys that sign and verify callback tokens (docs/aws.md, "
                             "\"Callback keys and rotation\"): read by the workflow function "
                             "and ClientRole only.",
        "PayloadKeyPolicy": "With KmsKeyArn set: data keys of the payload codec (docs/codecs.md) "
                            "for the roles that read or write payloads.",
        "WorkflowTable": "Workflow state: the DynamoDB backend's table_definition() (the "
                         "by_status index lists instances) and TTL on expires_at. Kept when the "
                         "stack is deleted.",
        "PayloadBucket": "Payloads over PayloadThreshold, under lambda-workflow/. Kept when the "
                         "stack is deleted.",
        "WorkflowQueuePolicy": "A message on the workflow queue starts, cancels or answers "
                               "instances: only this stack's roles (and the reply roles of "
                               "external services) may send one. Every queue refuses requests "
                               "without TLS.",
        "TimerQueuePolicy": "A timer message fires a timer: only the workflow function, the "
                            "timer function and the scheduler may send one.",
        "WorkflowRole": "One role per function, with exactly what its code does on these "
                        "resources only; no AWS managed policy.",
        "TimerRole": "The timer function moves timer messages and reads the status of their "
                     "instances, nothing else.",
        "SchedulerRole": "What EventBridge Scheduler does when a timer's schedule runs: send "
                         "to the timer queue. Only schedules of this account may assume it.",
        "ServiceReplyPolicy": "Every service function replies on the workflow queue.",
        "ClientRole": "What WorkflowClient and the CLI do: start, cancel, describe, list, "
                      "history, callbacks. Principals of this account assume it when their "
                      "own policies allow sts:AssumeRole on it.",
    }
    stems = workflow_stems(app)
    if len(stems) > 1:
        for module, stem in stems.items():
            notes[f"{stem}Queue"] = (
                f"The workflow queue of {module}'s workflow function: every message of its "
                "instances (message group = workflow id), each with its own deduplication id "
                "(docs/protocol.md). The other workflow functions, the timer function and "
                "clients route to it by workflow name (LAMBDA_WORKFLOW_WORKFLOW_QUEUES). "
                "Visibility timeout: 6 times the functions' timeout.")
            notes[f"{stem}DeadLetterQueue"] = (
                f"Messages of {module}'s queue that SQS moved after MaxReceives deliveries, "
                "and those its workflow function rejects, with their reason.")
            notes[f"{stem}QueuePolicy"] = (
                f"Only the roles that may send to {module}'s workflows (its own function, "
                "workflow functions whose children or parents run there, services, the timer "
                "function, clients) may send here. Every queue refuses requests without TLS.")
        notes[f"{next(iter(stems.values()))}Role"] = notes["WorkflowRole"]
        for key in ("WorkflowQueue", "WorkflowDeadLetterQueue", "WorkflowQueuePolicy",
                    "WorkflowRole"):
            del notes[key]
        notes["TimerQueue"] = notes["TimerQueue"].replace(
            "fires on the workflow queue", "fires on the workflow queue the message names")
        notes["ServiceReplyPolicy"] = ("Every service function replies on the queue of the "
                                       "workflow function that called it (reply_to).")
    for svc in app.services:
        stem = ids[svc.service]
        if svc.invoke == "sqs":
            notes[f"{stem}QueuePolicy"] = (f"A request on this queue runs the {svc.service} "
                                           "service: only the workflow function may send one.")
        notes[f"{stem}Role"] = (f"The {svc.service} service reaches its own call records "
                                f"(svc#{svc.service}#...) and payloads only.")
    if app.external:
        notes["Parameters"] = (
            "Services another stack runs: " + ", ".join(e.service for e in app.external) +
            ". Each is the ARN of its SQS queue or Lambda function (<Name>ServiceTarget) and "
            "the role its replies come from (<Name>ServiceReplyRole).")
    return notes


def render(app: App) -> str:
    """The template's YAML text: deterministic (the same App gives the same bytes)."""
    data = build(app)
    out = ["# Generated by `lambda-workflow template`: do not edit it by hand. Regenerate it "
           "with:", f"#   {app.command or 'lambda-workflow template APP.py ...'}"]
    out.append("")
    notes = _notes(app)
    for key in ("AWSTemplateFormatVersion", "Transform", "Description", "Parameters",
                "Mappings", "Conditions", "Globals"):
        if key in notes:
            out += _comment(notes[key])
        out += _block({key: data[key]}, 0)
        out.append("")
    out.append("Resources:")
    rank = {kind: title for title, kinds in _SECTIONS for kind in kinds}
    section = None
    for name, resource in data["Resources"].items():
        title = rank[resource["Type"]]
        if title != section:
            out.append(f"  # {'-' * 60} {title}")
            section = title
        if name in notes:
            out += _comment(notes[name], 2)
        out += _block({name: resource}, 2)
        out.append("")
    out += _block({"Outputs": data["Outputs"]}, 0)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the command


def add_parser(sub: Any) -> None:
    """The ``template`` subcommand's arguments (``sub`` is the CLI's subparsers)."""
    parser = sub.add_parser(
        "template", help="generate the SAM template of a deployment from its handler modules")
    parser.add_argument("module", nargs="+", metavar="APP.py",
                        help="what `package` puts in the zip: the handler modules and those "
                             "defining their workflows, package folders or a project folder "
                             "(each module named as Lambda imports it from the zip)")
    parser.add_argument("-o", "--output", default="template.yaml",
                        help="the template to write (default template.yaml)")
    parser.add_argument("--code-uri", default="build/lambda.zip", metavar="ZIP",
                        help="the zip `package` writes, relative to the current folder "
                             "(default build/lambda.zip); the template names it relative to "
                             "its own folder")
    parser.add_argument("--arch", default="arm64", choices=["arm64", "x86_64"],
                        help="the Architecture parameter's default (default arm64)")
    parser.add_argument("--python", default=DEFAULT_PYTHON,
                        help=f"the functions' Python runtime (default {DEFAULT_PYTHON}, as "
                             "`package` builds for)")
    parser.add_argument("--service", action="append", default=[], metavar="NAME=MODULE.ATTR",
                        help="a service implemented by a handler written without the SDK "
                             "(repeatable)")
    parser.add_argument("--invoke-async", action="append", default=[], metavar="NAME",
                        help="a service the workflow function invokes asynchronously instead "
                             "of through a queue of its own (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="in a folder, files to leave out, as `package --exclude` "
                             "(repeatable)")
    parser.add_argument("--description", default="", help="the template's Description")


def _command_line(args: Any) -> str:
    import shlex

    argv = ["lambda-workflow", "template", *args.module]
    for spec in sorted(args.service):
        argv += ["--service", spec]
    for name in sorted(args.invoke_async):
        argv += ["--invoke-async", name]
    for glob in args.exclude:
        argv += ["--exclude", glob]
    if args.code_uri != "build/lambda.zip":
        argv += ["--code-uri", args.code_uri]
    if args.arch != "arm64":
        argv += ["--arch", args.arch]
    if args.python != DEFAULT_PYTHON:
        argv += ["--python", args.python]
    if args.description:
        argv += ["--description", args.description]
    return shlex.join([*argv, "-o", args.output])


def from_args(args: Any) -> tuple[App, str]:
    """The App and the template text that ``template``'s parsed arguments describe (nothing
    is written). The zip's path is made relative to the template's folder, as SAM reads it.

    Raises:
        TemplateError: as :func:`discover`, or a malformed ``--service``.
    """
    import os

    plain: dict[str, str] = {}
    for spec in args.service:
        name, eq, handler = spec.partition("=")
        if not eq or not name or not handler:
            raise TemplateError(f"--service {spec!r}: expected NAME=MODULE.ATTRIBUTE")
        if name in plain:
            raise TemplateError(f"--service names {name!r} twice")
        plain[name] = handler
    code = os.path.relpath(Path(args.code_uri).resolve(), Path(args.output).resolve().parent)
    app = discover(args.module, plain_services=plain, invoke_async=args.invoke_async,
                   code_uri=Path(code).as_posix(), python=args.python,
                   architecture=args.arch, description=args.description,
                   command=_command_line(args), exclude=args.exclude)
    return app, render(app)


def run_command(args: Any, out: Any) -> int:
    """``lambda-workflow template``: write the template; 0, or 1 with the reason on stderr."""
    try:
        app, text = from_args(args)
    except TemplateError as exc:
        print(f"lambda-workflow template: {exc}", file=sys.stderr)
        return 1
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    count = len(build(app)["Resources"])
    print(f"wrote {output}: {count} resources ({len(app.workflow_modules)} workflow "
          f"function{'s' if len(app.workflow_modules) > 1 else ''}, "
          f"{len(app.services)} service functions, "
          f"{len(app.external)} external services"
          + (f": parameters {', '.join(_external_parameters(app))}" if app.external else "")
          + ")", file=out)
    return 0


def _external_parameters(app: App) -> list[str]:
    return [f"{logical_id(e.service)}{kind}" for e in app.external
            for kind in ("ServiceTarget", "ServiceReplyRole")]
