"""The ``lambda-workflow`` command: run workflows locally, show status and history (from a
SQLite file or a deployment's DynamoDB table), replay recorded histories against the current
code, and package a handler as a Lambda deployment zip."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import pydantic

from . import _bench, _operate, _package, _template
from ._opnames import display, service_of
from ._runtime.engine import ActivationReport
from ._runtime.history import history_from_json, history_to_json
from ._runtime.repair import RepairResult
from ._runtime.replay_check import check_replay
from .backends.memory import DeadLetter
from .backends.protocols import StateStore
from .callbacks import CallbackTokens
from .errors import InvalidRequestError, WorkflowError
from .local import LOCAL_CALLBACK_KEY, LocalRuntime, ServiceInvocation
from .models import History, InstanceStatus, describe_validation_error
from .workflow import Workflow

if TYPE_CHECKING:
    from .aws import WorkflowClient

__all__ = ["main"]


def _load_module(path: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"lambda-workflow: no such file: {path}")
    # The module's folder goes on sys.path so that its sibling imports work, as with `python x.py`.
    sys.path.insert(0, str(file.resolve().parent))
    spec = importlib.util.spec_from_file_location(file.stem, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    return module


def _short(payload: bytes | None, width: int = 70) -> str:
    text = (payload or b"null").decode()
    return text if len(text) <= width else text[: width - 3] + "..."


class _Printer:
    """Turns runtime events into one line each. With ``store`` (the runtime's), operations
    are labelled by kind (``callback 2, timer 3, call 4``); without it, by the kinds of the
    operations it saw sent, else ``operation``."""

    def __init__(self, out: TextIO, store: StateStore | None = None) -> None:
        self.out = out
        self.store = store
        self._kinds: dict[tuple[str, str], str] = {}

    def _labelled(self, workflow_id: str, op_ids: Sequence[str]) -> str:
        if self.store is not None and any((workflow_id, i) not in self._kinds for i in op_ids):
            history = self.store.load_history(workflow_id)
            for op in history.operations if history is not None else ():
                self._kinds[(workflow_id, op.op_id)] = op.kind
        parts: list[str] = []
        last = None
        for op_id in op_ids:
            kind = self._kinds.get((workflow_id, op_id), "operation")
            parts.append(op_id if kind == last else f"{kind} {op_id}")
            last = kind
        return ", ".join(parts)

    def __call__(self, event: ActivationReport | ServiceInvocation | DeadLetter) -> None:
        if isinstance(event, ActivationReport):
            for op in event.sent:
                self._kinds[(event.workflow_id, op.op_id)] = op.kind
            parts = [f"activation {event.activation} of {event.workflow_id}:"]
            if event.applied:
                parts.append("recorded replies to "
                             f"{self._labelled(event.workflow_id, event.applied)};")
            if event.duplicates:
                parts.append(f"dropped duplicate replies to {', '.join(event.duplicates)};")
            if event.sent:
                calls = ", ".join(f"{op.kind} {op.op_id} {display(op.kind, op.name)}"
                                  for op in event.sent)
                parts.append(f"sent {calls};")
            if event.status == "completed":
                parts.append(f"completed -> {_short(event.result)}")
            elif event.status == "failed" and event.error is not None:
                parts.append(f"FAILED -> {event.error.type}: {event.error.message}")
            elif event.status == "suspended":
                parts.append("suspended, waiting on "
                             f"{self._labelled(event.workflow_id, event.pending)}")
            else:
                parts.append(event.status)
            print("  " + " ".join(parts), file=self.out)
        elif isinstance(event, ServiceInvocation):
            outcome = "ok" if event.ok else "error"
            print(f"    service {event.service:<12} {event.workflow_id} call {event.call_id}: "
                  f"{_short(event.request, 40)} -> {outcome} {_short(event.reply, 50)}",
                  file=self.out)
        else:
            print(f"  dead-lettered message of {event.group_id}: {event.reason}", file=self.out)


def _workflows_of(module: ModuleType) -> list[Workflow[Any, Any]]:
    return [v for v in vars(module).values() if isinstance(v, Workflow)]


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    module = _load_module(args.file)
    printer = _Printer(out)
    runtime = LocalRuntime(args.db, on_event=None if args.quiet else printer)
    printer.store = runtime.store
    setup = getattr(module, "setup", None)
    if callable(setup):
        setup(runtime)
    else:
        runtime.register(*_workflows_of(module))
    registered = runtime.engine.workflows
    if args.workflow:
        wf = registered.get(args.workflow)
        if wf is None:
            raise SystemExit(f"lambda-workflow: no workflow {args.workflow!r} in {args.file} "
                             f"(found: {', '.join(sorted(registered)) or 'none'})")
    elif len(registered) == 1:
        (wf,) = registered.values()
    else:
        raise SystemExit(f"lambda-workflow: {args.file} has {len(registered)} workflows "
                         f"({', '.join(sorted(registered))}); choose one with --workflow")
    inputs: list[tuple[str | None, object]]
    if args.input:
        inputs = []
        for text in args.input:
            try:
                request = wf.request_adapter.validate_json(text)
            except pydantic.ValidationError as exc:
                raise InvalidRequestError(
                    f"--input {text!r} is not a valid input of workflow {wf.name!r}: "
                    f"{describe_validation_error(exc)}") from None
            inputs.append((args.id if len(args.input) == 1 else None, request))
    else:
        examples = getattr(module, "EXAMPLES", None)
        if not isinstance(examples, dict) or not examples:
            raise SystemExit("lambda-workflow: give the workflow's input with --input JSON (or "
                             "define EXAMPLES = {workflow_id: request} in the module)")
        inputs = list(examples.items())

    print(f"lambda-workflow: {wf.name} from {args.file} on the embedded runtime "
          f"(SQLite {args.db})", file=out)
    handles = []
    for workflow_id, request in inputs:
        handle = runtime.start(wf, request, workflow_id=workflow_id)
        handles.append(handle)
        inst = runtime.store.get_instance(handle.workflow_id)
        print(f"  start {handle.workflow_id}: {_short(inst.input if inst else None)}", file=out)
    runtime.run_until_idle()
    print("results:", file=out)
    code = 0
    for handle in handles:
        inst = runtime.store.get_instance(handle.workflow_id)
        assert inst is not None
        if inst.status is InstanceStatus.COMPLETED:
            shown = _short(inst.result)
        elif inst.status is InstanceStatus.RUNNING:
            code = 1
            pending = [op for op in handle.history().operations if op.state == "pending"]
            shown = "waiting on " + ", ".join(
                f"call {op.op_id} {display(op.kind, op.name)}" + (
                    f" (no service {service_of(op.name)!r} is implemented here)"
                    if op.kind == "call" and service_of(op.name) not in runtime.implemented
                    else "")
                for op in pending)
        else:
            code = 1
            shown = _short(inst.error, 200)
        print(f"  {handle.workflow_id:<20} {inst.status.value:<10} {shown}", file=out)
    runtime.close()
    return code


# Reading a deployment's table needs no queue; AwsConfig insists on one, so it gets a URL that
# is never used.
_UNUSED_QUEUE_URL = "https://sqs.invalid/000000000000/lambda-workflow-cli-unused.fifo"


def _table_client(table: str, *, sends: bool = False,
                  queue_url: str | None = None) -> WorkflowClient:
    """A client on a deployment's DynamoDB table, configured like the deployment's functions
    (``LAMBDA_WORKFLOW_*``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ...) but for ``table``. A
    client that only reads gets a queue URL it never uses; one that ``sends`` gets
    ``queue_url``, else ``LAMBDA_WORKFLOW_QUEUE_URL``."""
    try:
        from .aws import AwsConfig, WorkflowClient
    except ImportError as exc:
        raise SystemExit(f"lambda-workflow: --table needs boto3 (pip install "
                         f"'lambda-workflow[aws]'): {exc}") from None
    queue = queue_url or (None if sends else _UNUSED_QUEUE_URL)
    config = (AwsConfig.from_env(table=table, queue_url=queue) if queue
              else AwsConfig.from_env(table=table))
    return WorkflowClient(config)


def _aws_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _operate_command(args: argparse.Namespace, out: TextIO) -> int:
    """``status``, ``history``, ``describe``, ``start``, ``cancel`` and ``callback`` (in
    ``_operate``); a failed AWS request prints its reason and exits 1."""
    try:
        return _operate.run_command(args, out, table_client=_table_client,
                                    load_module=_load_module, printer=_Printer,
                                    to_json=history_to_json)
    except Exception as exc:
        if getattr(args, "table", None) and isinstance(exc, _aws_errors()):
            what = ("reading" if args.command in ("status", "history", "describe")
                    else f"{args.command} in")
            print(f"lambda-workflow: {what} table {args.table!r} failed: {exc}",
                  file=sys.stderr)
            return 1
        raise


def _split_target(target: str) -> tuple[str, str | None]:
    """``path/to/module.py[:name]`` as (file, name)."""
    if not Path(target).is_file() and ":" in target:
        file, _, name = target.rpartition(":")
        if file and name:
            return file, name
    return target, None


def _workflows_in(module: ModuleType) -> dict[str, Workflow[Any, Any]]:
    """The module's workflows by workflow name and by attribute name, with those its
    ``setup(runtime)`` registers."""
    found: dict[str, Workflow[Any, Any]] = {}
    for attr, value in vars(module).items():
        if isinstance(value, Workflow):
            found.setdefault(value.name, value)
            found.setdefault(attr, value)
    setup = getattr(module, "setup", None)
    if callable(setup):
        runtime = LocalRuntime()
        try:
            setup(runtime)
            for name, wf in runtime.engine.workflows.items():
                found.setdefault(name, wf)
        finally:
            runtime.close()
    return found


def _why_not_a_history(data: bytes, exc: Exception) -> str:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as bad:
        return f"it is not valid JSON: {bad}"
    if not isinstance(doc, dict):
        return f"expected a JSON object, found a JSON {type(doc).__name__}"
    if isinstance(exc, KeyError):
        return f"the field {exc} is missing"
    return str(exc)


def _callback_tokens() -> CallbackTokens:
    """The signer of callback tokens a replay hands out again: the deployment's key
    (``LAMBDA_WORKFLOW_CALLBACK_KEY``), else the embedded runtime's development key."""
    return CallbackTokens(os.environ.get("LAMBDA_WORKFLOW_CALLBACK_KEY")
                          or LOCAL_CALLBACK_KEY)


def _cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    file, name = _split_target(args.workflow)
    histories: list[tuple[str, History]] = []
    for path in args.history:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            print(f"lambda-workflow replay: cannot read {path}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
        try:
            histories.append((path, history_from_json(data)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = _why_not_a_history(data, exc)
            print(f"lambda-workflow replay: {path} is not a workflow history as "
                  f"`lambda-workflow history --json` exports it ({reason})", file=sys.stderr)
            return 2
    if not Path(file).is_file():
        print(f"lambda-workflow replay: no such file: {file}", file=sys.stderr)
        return 2
    try:
        tokens = _callback_tokens()
    except ValueError as exc:
        print(f"lambda-workflow replay: LAMBDA_WORKFLOW_CALLBACK_KEY: {exc}", file=sys.stderr)
        return 2
    workflows = _workflows_in(_load_module(file))
    failed = 0
    for path, history in histories:
        wanted = name or history.instance.workflow_name
        wf = workflows.get(wanted)
        if wf is None:
            known = sorted({w.name for w in workflows.values()})
            print(f"lambda-workflow replay: {path} records workflow "
                  f"{history.instance.workflow_name!r}, but {file} has no workflow {wanted!r} "
                  f"(found: {', '.join(known) or 'none'}); name the one to replay with "
                  f"--workflow {file}:NAME", file=sys.stderr)
            return 2
        check = check_replay(wf, history, tokens=tokens)
        if check.ok:
            print(f"{path}: {check.message}", file=out)
        else:
            failed += 1
            print(f"{path}: FAILED: NonDeterminismError: {check.message}", file=out)
    if len(histories) > 1:
        print(f"{len(histories) - failed} of {len(histories)} histories replay OK", file=out)
    return 1 if failed else 0


def _cmd_package(args: argparse.Namespace, out: TextIO) -> int:
    result = _package.build_zip(
        args.handler, arch=args.arch, python=args.python, wheels=args.wheel,
        requirements=args.requirements, with_boto3=args.with_boto3, output=args.output,
        exclude=args.exclude, index_url=args.index_url, find_links=args.find_links,
        bytecode=not args.no_bytecode, require_bytecode=args.require_bytecode,
        bytecode_python=args.bytecode_python,
        log=lambda line: print(f"lambda-workflow package: {line}", file=out))
    for line in _package.format_report(result):
        print(line, file=out)
    return 1 if result.unzipped_size > _package.UNZIPPED_LIMIT else 0


def _repair_summary(done: RepairResult) -> str:
    parts = [f"{done.command} {done.workflow_id}: repair {done.repair}, was "
             f"{done.status_before.value}"]
    if done.command == "reset":
        parts.append(f"reset to operation {done.to}, dropped "
                     f"{', '.join(done.dropped) or 'nothing'}")
    if done.resent:
        parts.append(f"re-sending {', '.join(done.resent)}")
    if done.cancelled_children:
        parts.append(f"cancelling children {', '.join(done.cancelled_children)}")
    return "; ".join(parts)


def _cmd_repair_table(args: argparse.Namespace, out: TextIO) -> int:
    """``resume`` / ``reset`` of an instance in a deployment's table: the repair is written
    there and its wake-up sent to the deployment's workflow queue, where the workflow function
    picks it up."""
    client = _table_client(args.table, sends=True, queue_url=args.queue_url)
    try:
        if args.command == "resume":
            done = client.resume(args.workflow_id, request_id=args.request_id)
        else:
            done = client.reset(args.workflow_id, args.to, request_id=args.request_id)
    except _aws_errors() as exc:
        print(f"lambda-workflow: {args.command} in table {args.table!r} failed: {exc}",
              file=sys.stderr)
        return 1
    print(_repair_summary(done), file=out)
    print(f"  it is running again: the deployment's workflow function continues it (its "
          f"wake-up is on {client.deployment.config.queue_url})", file=out)
    return 0


def _cmd_repair(args: argparse.Namespace, out: TextIO) -> int:
    """``resume`` / ``reset`` of an instance in a SQLite state file; with ``--run``, the
    workflow module's runtime then runs it until idle. With ``--table``, in a deployment's
    DynamoDB table."""
    if args.table:
        if args.run:
            print("lambda-workflow: --run works with --db only; on AWS the deployment's "
                  "workflow function runs the instance", file=sys.stderr)
            return 2
        return _cmd_repair_table(args, out)
    module = _load_module(args.run) if args.run else None
    printer = _Printer(out) if module and not args.quiet else None
    runtime = LocalRuntime(args.db, on_event=printer)
    if printer is not None:
        printer.store = runtime.store
    try:
        if module is not None:
            setup = getattr(module, "setup", None)
            if callable(setup):
                setup(runtime)
            else:
                runtime.register(*_workflows_of(module))
        if args.command == "resume":
            done = runtime.resume(args.workflow_id, request_id=args.request_id)
        else:
            done = runtime.reset(args.workflow_id, args.to, request_id=args.request_id)
        print(_repair_summary(done), file=out)
        if module is None:
            print(f"  it is running again: it continues when a runtime next opens {args.db} "
                  "with its workflow registered (give the module with --run to run it now)",
                  file=out)
            return 0
        runtime.run_until_idle()
        inst = runtime.store.get_instance(args.workflow_id)
        assert inst is not None
        shown = (_short(inst.result) if inst.status is InstanceStatus.COMPLETED
                 else _short(inst.error, 200) if inst.status is not InstanceStatus.RUNNING
                 else "waiting")
        print(f"  {inst.workflow_id:<20} {inst.status.value:<10} {shown}", file=out)
        return 0 if inst.status in (InstanceStatus.COMPLETED, InstanceStatus.RUNNING) else 1
    finally:
        runtime.close()


def _repair_parser(sub: Any, command: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(command, help=help_text)
    parser.add_argument("workflow_id")
    if command == "reset":
        parser.add_argument("--to", required=True, metavar="OP_ID",
                            help="the last operation to keep (its id as `history` shows it; "
                                 "0 for none: the workflow runs from the start)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the SQLite state file")
    source.add_argument("--table", help="a deployment's DynamoDB table (AWS credentials, "
                                        "region and endpoint from the usual AWS environment "
                                        "variables)")
    parser.add_argument("--queue-url", help="with --table: the deployment's workflow queue "
                                            "(default: LAMBDA_WORKFLOW_QUEUE_URL)")
    parser.add_argument("--run", metavar="FILE.py",
                        help="the module defining the workflow (and optionally setup(runtime)): "
                             "run the instance until idle after the repair")
    parser.add_argument("--request-id", help="an id that makes a retried command apply once")
    parser.add_argument("--quiet", action="store_true", help="print only the outcome")
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambda-workflow",
                                     description="Durable typed workflows for AWS Lambda.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow end to end on the embedded runtime")
    run.add_argument("file", help="a Python file defining @workflow functions (and optionally "
                                  "setup(runtime) and EXAMPLES)")
    run.add_argument("--workflow", help="the workflow's name, if the file has several")
    run.add_argument("--input", action="append", help="the workflow's input as JSON "
                                                      "(repeat to start several instances)")
    run.add_argument("--id", help="the workflow id (with a single --input)")
    run.add_argument("--db", default=":memory:", help="SQLite file for state (default: memory)")
    run.add_argument("--quiet", action="store_true", help="print only the results")
    status = sub.add_parser("status", help="list instances in a SQLite state file or a "
                                           "deployment's DynamoDB table")
    source = status.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the SQLite state file")
    source.add_argument("--table", help="the DynamoDB table (AWS credentials, region and "
                                        "endpoint from the usual AWS environment variables)")
    status.add_argument("workflow_id", nargs="*")
    _operate.add_status_flags(status)
    hist = sub.add_parser("history", help="show an instance's recorded history")
    source = hist.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the SQLite state file")
    source.add_argument("--table", help="the DynamoDB table (AWS credentials, region and "
                                        "endpoint from the usual AWS environment variables)")
    hist.add_argument("workflow_id")
    hist.add_argument("--json", action="store_true",
                      help="print the history as JSON (the input of `replay`)")
    _operate.add_history_flags(hist)
    _operate.add_parsers(sub)
    replay = sub.add_parser(
        "replay", help="replay recorded histories against the current code; exit 0 if they "
                       "all match, 1 if one does not (NonDeterminismError), 2 if one cannot "
                       "be checked")
    replay.add_argument("history", nargs="+",
                        help="a history exported with `lambda-workflow history --json`")
    replay.add_argument("--workflow", required=True, metavar="FILE.py[:NAME]",
                        help="the module defining the workflow; NAME picks a workflow other "
                             "than the one the history names")
    _bench.add_parser(sub)
    _repair_parser(sub, "resume", "re-activate an instance that failed by non-determinism or "
                                  "a poison message, its history kept (after a rollback)")
    _repair_parser(sub, "reset", "drop an instance's records after an operation and run it on "
                                 "from there")
    pack = sub.add_parser("package", help="build a Lambda deployment zip of handler modules, "
                                          "lambda-workflow and their dependencies")
    pack.add_argument("handler", nargs="+",
                      help="a handler module (app/handler.py, at the zip's root as handler.py), "
                           "a package folder (app/ with __init__.py, at the root as app/) or a "
                           "project folder (any other folder, such as .: its contents at the "
                           "root); several go to the zip's root side by side (for functions "
                           "sharing one zip)")
    pack.add_argument("--arch", required=True, help="Lambda architecture: arm64 or x86_64")
    pack.add_argument("--python", default=_package.DEFAULT_PYTHON,
                      help="Lambda Python runtime: 3.11, 3.12 or 3.13 (default "
                           f"{_package.DEFAULT_PYTHON}, the runtime of deploy/template.yaml)")
    pack.add_argument("--wheel", action="append", default=[],
                      help="a lambda-workflow wheel, or a folder of them (repeatable; "
                           "default: the wheel for the target in ./dist, else the installed "
                           "version's wheel downloaded from the package index)")
    pack.add_argument("--index-url", metavar="URL",
                      help="pip's --index-url for the wheel's download and the dependencies "
                           "(default: pip's configuration)")
    pack.add_argument("--find-links", action="append", default=[], metavar="URL_OR_PATH",
                      help="pip's --find-links, likewise (repeatable)")
    pack.add_argument("--requirements", help="a requirements file of the handler's own "
                                             "dependencies (binary wheels only)")
    pack.add_argument("--with-boto3", action="store_true",
                      help="keep boto3 and its dependencies (the Lambda runtime has them)")
    pack.add_argument("-o", "--output", default="build/lambda.zip",
                      help="the zip to write (default build/lambda.zip)")
    pack.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                      help="more to leave out of handler folders (repeatable): a glob without "
                           "/ matches a file or folder name at any depth, one with / the name "
                           "in the zip; build outputs, state files, tests, zips, virtual "
                           "environments and .git are always left out")
    pyc = pack.add_mutually_exclusive_group()
    pyc.add_argument("--no-bytecode", action="store_true",
                     help="ship sources only (by default every .py gets byte code compiled by "
                          "an interpreter of the --python version, found on PATH, pyenv or uv; "
                          "without one the zip has sources only and the report warns)")
    pyc.add_argument("--require-bytecode", action="store_true",
                     help="fail when no interpreter of the --python version is found")
    pack.add_argument("--bytecode-python", metavar="PATH",
                      help="the interpreter to compile the byte code with (CPython of the "
                           "--python version)")
    _template.add_parser(sub)
    from ._ui import command as ui_command

    ui_command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    stream = out or sys.stdout
    try:
        if args.command == "run":
            return _cmd_run(args, stream)
        if args.command in _operate.COMMANDS:
            return _operate_command(args, stream)
        if args.command == "package":
            return _cmd_package(args, stream)
        if args.command == "template":
            return _template.run_command(args, stream)
        if args.command == "replay":
            return _cmd_replay(args, stream)
        if args.command == "bench":
            return _bench.run_command(args, stream)
        if args.command in ("resume", "reset"):
            return _cmd_repair(args, stream)
        if args.command == "ui":
            from ._ui import command as ui_command

            return ui_command.run_command(args, stream, _table_client)
        return _operate_command(args, stream)
    except WorkflowError as exc:
        print(f"lambda-workflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except _package.PackageError as exc:
        print(f"lambda-workflow package: {exc}", file=sys.stderr)
        return 1
