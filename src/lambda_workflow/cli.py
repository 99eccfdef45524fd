"""The ``lambda-workflow`` command: run workflows locally, show status and history, and
package a handler as a Lambda deployment zip."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import pydantic

from . import _package
from ._runtime.engine import ActivationReport
from ._runtime.history import history_to_json
from .backends.memory import DeadLetter
from .errors import InvalidRequestError, WorkflowError
from .local import LocalRuntime, ServiceInvocation
from .models import InstanceStatus, describe_validation_error
from .workflow import Workflow

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
    """Turns runtime events into one line each."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, event: ActivationReport | ServiceInvocation | DeadLetter) -> None:
        if isinstance(event, ActivationReport):
            parts = [f"activation {event.activation} of {event.workflow_id}:"]
            if event.applied:
                parts.append(f"recorded replies to call {', '.join(event.applied)};")
            if event.duplicates:
                parts.append(f"dropped duplicate replies to {', '.join(event.duplicates)};")
            if event.sent:
                calls = ", ".join(f"call {op.op_id} {op.name}" for op in event.sent)
                parts.append(f"sent {calls};")
            if event.status == "completed":
                parts.append(f"completed -> {_short(event.result)}")
            elif event.status == "failed" and event.error is not None:
                parts.append(f"FAILED -> {event.error.type}: {event.error.message}")
            elif event.status == "suspended":
                parts.append(f"suspended, waiting on call {', '.join(event.pending)}")
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
            shown = "waiting on " + ", ".join(f"call {op.op_id} {op.name}" for op in pending)
        else:
            code = 1
            shown = _short(inst.error, 200)
        print(f"  {handle.workflow_id:<20} {inst.status.value:<10} {shown}", file=out)
    runtime.close()
    return code


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    runtime = LocalRuntime(args.db)
    instances = runtime.store.list_instances()
    if args.workflow_id:
        instances = [i for i in instances if i.workflow_id in args.workflow_id]
    for inst in instances:
        print(f"{inst.workflow_id:<24} {inst.workflow_name:<20} {inst.status.value:<10} "
              f"activations={inst.activations}", file=out)
    runtime.close()
    return 0


def _cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    runtime = LocalRuntime(args.db)
    history = runtime.store.load_history(args.workflow_id)
    runtime.close()
    if history is None:
        print(f"lambda-workflow: no workflow instance {args.workflow_id!r} in {args.db}",
              file=sys.stderr)
        return 1
    if args.json:
        print(history_to_json(history).decode(), file=out)
        return 0
    inst = history.instance
    print(f"{inst.workflow_id} ({inst.workflow_name}) {inst.status.value}, "
          f"{inst.activations} activations; input {_short(inst.input)}", file=out)
    for op in history.operations:
        resolved = f"in activation {op.resolved_in}" if op.resolved_in else ""
        print(f"  #{op.op_id:<4} {op.kind} {op.name:<14} {op.state.value:<9} {resolved:<15} "
              f"{_short(op.result, 40):<40} ({op.site}, activation {op.created_in})", file=out)
    if inst.result is not None:
        print(f"  result: {_short(inst.result)}", file=out)
    if inst.error is not None:
        print(f"  error: {_short(inst.error, 300)}", file=out)
    return 0


def _cmd_package(args: argparse.Namespace, out: TextIO) -> int:
    result = _package.build_zip(
        args.handler, arch=args.arch, python=args.python, wheels=args.wheel,
        requirements=args.requirements, with_boto3=args.with_boto3, output=args.output,
        log=lambda line: print(f"lambda-workflow package: {line}", file=out))
    for line in _package.format_report(result):
        print(line, file=out)
    return 1 if result.unzipped_size > _package.UNZIPPED_LIMIT else 0


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
    status = sub.add_parser("status", help="list instances in a SQLite state file")
    status.add_argument("--db", required=True)
    status.add_argument("workflow_id", nargs="*")
    hist = sub.add_parser("history", help="show an instance's recorded history")
    hist.add_argument("--db", required=True)
    hist.add_argument("workflow_id")
    hist.add_argument("--json", action="store_true", help="print the history as JSON")
    pack = sub.add_parser("package", help="build a Lambda deployment zip of handler modules, "
                                          "lambda-workflow and their dependencies")
    pack.add_argument("handler", nargs="+",
                      help="a handler module (app/handler.py, at the zip's root as handler.py) "
                           "or a package folder (app/); several go to the zip's root side by "
                           "side (for functions sharing one zip)")
    pack.add_argument("--arch", required=True, help="Lambda architecture: arm64 or x86_64")
    pack.add_argument("--python", default=_package.DEFAULT_PYTHON,
                      help="Lambda Python runtime: 3.11, 3.12 or 3.13 (default "
                           f"{_package.DEFAULT_PYTHON}, the runtime of deploy/template.yaml)")
    pack.add_argument("--wheel", action="append", default=[],
                      help="a lambda-workflow wheel, or a folder of them (repeatable; "
                           "default ./dist)")
    pack.add_argument("--requirements", help="a requirements file of the handler's own "
                                             "dependencies (binary wheels only)")
    pack.add_argument("--with-boto3", action="store_true",
                      help="keep boto3 and its dependencies (the Lambda runtime has them)")
    pack.add_argument("-o", "--output", default="build/lambda.zip",
                      help="the zip to write (default build/lambda.zip)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    stream = out or sys.stdout
    try:
        if args.command == "run":
            return _cmd_run(args, stream)
        if args.command == "status":
            return _cmd_status(args, stream)
        if args.command == "package":
            return _cmd_package(args, stream)
        return _cmd_history(args, stream)
    except WorkflowError as exc:
        print(f"lambda-workflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except _package.PackageError as exc:
        print(f"lambda-workflow package: {exc}", file=sys.stderr)
        return 1
