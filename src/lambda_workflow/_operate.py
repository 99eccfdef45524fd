"""The operator commands of ``lambda-workflow``: ``status`` (filtered, paginated, through an
index), ``describe``, ``history``, ``start``, ``cancel`` and ``callback``, each on a SQLite
state file (``--db``) or a deployment's DynamoDB table (``--table``). ``cli.py`` parses the
arguments and calls :func:`run_command`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import pydantic

from . import _core
from ._opnames import display, label_of, service_of
from ._runtime.engine import CANCEL_OP_ID, child_workflow_id, timer_fire_at
from ._runtime.heartbeats import callback_timed_out
from .backends.protocols import InstanceLister, InstancePage, InvalidPageTokenError
from .backends.sqlite import SQLiteStateStore, StateFileLock
from .errors import InvalidRequestError, WorkflowNotFoundError
from .models import (
    History,
    InstanceRecord,
    InstanceStatus,
    OperationRecord,
    OperationState,
    describe_validation_error,
)
from .workflow import Workflow

if TYPE_CHECKING:
    from .aws import WorkflowClient
    from .local import LocalRuntime

__all__ = ["add_parsers", "format_time", "parse_time", "run_command"]

COMMANDS = ("status", "describe", "history", "start", "cancel", "callback")
# What a short value shows of a payload (``--full`` shows it all).
SHORT = 60


class UsageError(Exception):
    """Bad input on the command line: exit code 2, the message on stderr."""


# -- times -------------------------------------------------------------------------------------
def format_time(at: float | None) -> str:
    """A time as ISO 8601 UTC with milliseconds (``2026-12-05T16:01:01.253Z``)."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str, flag: str) -> float:
    """``--since``/``--until``: an ISO 8601 time (UTC when it names no offset) or seconds
    since the epoch."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a time: give ISO 8601 (2026-12-05 or "
                         "2026-12-05T16:00:00Z) or seconds since the epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _short(payload: bytes | None, full: bool, width: int = SHORT) -> str:
    """A payload as recorded (its bytes, decoded), cut at ``width`` characters unless
    ``full``."""
    if payload is None:
        return "null"
    text = payload.decode(errors="replace")
    return text if full or len(text) <= width else text[: width - 3] + "..."


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


# -- sources -----------------------------------------------------------------------------------
@dataclass
class _Source:
    """Where a command reads and writes: a SQLite file or a deployment's table."""

    label: str
    db: SQLiteStateStore | None = None
    client: WorkflowClient | None = None

    def lister(self) -> InstanceLister:
        if self.db is not None:
            return self.db
        assert self.client is not None
        return self.client.deployment.store

    def get(self, workflow_id: str) -> InstanceRecord | None:
        if self.db is not None:
            return self.db.get_instance(workflow_id)
        assert self.client is not None
        return self.client.deployment.store.get_instance(workflow_id)

    def history(self, workflow_id: str) -> History | None:
        if self.db is not None:
            return self.db.load_history(workflow_id)
        assert self.client is not None
        return self.client.deployment.store.load_history(workflow_id)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


TableClient = Callable[..., "WorkflowClient"]


def _reader(args: argparse.Namespace, table_client: TableClient) -> _Source:
    if getattr(args, "table", None):
        return _Source(f"table {args.table!r}", client=table_client(args.table))
    # A reader takes no lock: a runtime may hold the file meanwhile.
    return _Source(repr(args.db), db=SQLiteStateStore(args.db))


# -- status ------------------------------------------------------------------------------------
def _print_instances(instances: Sequence[Any], out: TextIO) -> None:
    for inst in instances:
        print(f"{inst.workflow_id:<24} {inst.workflow_name:<20} {inst.status.value:<10} "
              f"activations={inst.activations}", file=out)


def cmd_status(args: argparse.Namespace, out: TextIO, table_client: TableClient) -> int:
    filtered = (args.status or args.workflow or args.since or args.until or args.next_token)
    if args.workflow_id and filtered:
        raise UsageError("give workflow ids, or filters (--status, --workflow, --since, "
                         "--until, --next-token), not both")
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit} must be at least 1")
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    if since is not None and until is not None and since > until:
        raise UsageError(f"--since {args.since} is after --until {args.until}")
    source = _reader(args, table_client)
    try:
        if args.workflow_id:
            found = []
            for wid in args.workflow_id:
                inst = source.get(wid)
                if inst is None:
                    print(f"lambda-workflow: no workflow instance {wid!r} in {source.label}",
                          file=sys.stderr)
                else:
                    found.append(inst)
            _print_instances(found, out)
            return 0 if len(found) == len(args.workflow_id) else 1
        try:
            page: InstancePage = source.lister().list_page(
                status=InstanceStatus(args.status) if args.status else None,
                workflow_name=args.workflow, since=since, until=until, limit=args.limit,
                next_token=args.next_token)
        except InvalidPageTokenError as exc:
            raise UsageError(f"--next-token: {exc}") from None
        _print_instances(page.instances, out)
        if page.next_token is not None:
            print(f"more: --next-token {page.next_token}", file=out)
        return 0
    finally:
        source.close()


# -- history -----------------------------------------------------------------------------------
def _request(op: OperationRecord) -> dict[str, Any]:
    try:
        value = orjson.loads(op.request)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _what(op: OperationRecord, full: bool) -> str:
    """What an operation is, beyond its kind and name: a timer's due time, a callback's
    timeouts, a child's id."""
    request = _request(op)
    if op.kind == "timer":
        try:
            return f"due {format_time(timer_fire_at(op))}"
        except (KeyError, TypeError, ValueError):
            return ""
    if op.kind == "callback":
        parts = []
        if request.get("timeout"):
            parts.append(f"timeout {_duration(float(request['timeout']))}")
        if request.get("heartbeat_timeout"):
            parts.append(f"heartbeat every {_duration(float(request['heartbeat_timeout']))}")
        return ", ".join(parts) or "no timeout"
    if op.kind == "child":
        given = request.get("workflow_id")
        return "child " + child_workflow_id(op.workflow_id, op.op_id,
                                            given if isinstance(given, str) else None)
    if op.kind == "cancel":
        return f"reason {request.get('reason', '')!r}"
    return ""


def print_history(history: History, out: TextIO, *, full: bool) -> None:
    inst = history.instance
    print(f"{inst.workflow_id} ({inst.workflow_name}) {inst.status.value}, "
          f"{inst.activations} activations; created {format_time(inst.created_at)}, "
          f"updated {format_time(inst.updated_at)}", file=out)
    print(f"  input: {_short(inst.input, full)}", file=out)
    for op in history.operations:
        if op.kind == "trace":  # the trace context tracing recorded (docs/observability.md)
            ctx = orjson.loads(op.request)
            print(f"  trace: {ctx.get('trace_id')}"
                  f"{' (parent span ' + ctx['parent'] + ')' if ctx.get('parent') else ''}",
                  file=out)
            continue
        resolved = (f"resolved {format_time(op.resolved_at)} (activation {op.resolved_in})"
                    if op.resolved_in else "")
        what = _what(op, full)
        shown_name = display(op.kind, op.name)
        print(f"  #{op.op_id:<4} {op.kind} {shown_name:<14} {op.state.value:<9} "
              f"created {format_time(op.created_at)} (activation {op.created_in})"
              f"{'; ' + what if what else ''}{'; ' + resolved if resolved else ''}", file=out)
        if op.kind in ("call", "step", "child") or full:
            print(f"         request: {_short(op.request, full)}", file=out)
        if op.state is not OperationState.PENDING and op.kind not in ("timer", "cancel"):
            print(f"         {'result' if op.state is OperationState.COMPLETED else 'error'}: "
                  f"{_short(op.result, full)}", file=out)
        print(f"         at {op.site}", file=out)
    if inst.result is not None:
        print(f"  result: {_short(inst.result, full)}", file=out)
    if inst.error is not None:
        print(f"  error: {_short(inst.error, full, 300)}", file=out)


def cmd_history(args: argparse.Namespace, out: TextIO, table_client: TableClient,
                to_json: Callable[[History], bytes]) -> int:
    source = _reader(args, table_client)
    try:
        history = source.history(args.workflow_id)
    finally:
        source.close()
    if history is None:
        print(f"lambda-workflow: no workflow instance {args.workflow_id!r} in {source.label}",
              file=sys.stderr)
        return 1
    if args.json:
        print(to_json(history).decode(), file=out)
        return 0
    if getattr(args, "timeline", False) or getattr(args, "html", None):
        return _timeline_out(args, history, out)
    print_history(history, out, full=args.full)
    return 0


def _timeline_out(args: argparse.Namespace, history: History, out: TextIO) -> int:
    """``history --timeline`` (drawn on ``out``) and ``--html FILE`` (a page written)."""
    from . import _timeline

    timeline = _timeline.build(history)
    if args.timeline:
        out.write(_timeline.render_text(timeline))
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as page:
                page.write(_timeline.render_html(timeline))
        except OSError as exc:
            print(f"lambda-workflow history: cannot write {args.html}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"timeline of {history.instance.workflow_id} written to {args.html}", file=out)
    return 0


# -- describe ----------------------------------------------------------------------------------
def waiting_on(op: OperationRecord, history: History,
               implemented: Callable[[str], bool | None], *, full: bool = False) -> str:
    """What a pending operation waits on. ``implemented(service)``: ``True``/``False`` when
    it is known whether something implements the service, ``None`` when it is not."""
    if op.kind == "call":
        service = service_of(op.name)
        label = "" if service == op.name else f" {label_of(op.name)!r}"
        known = implemented(service)
        if known is False:
            return (f"call {op.op_id}{label}: service {service!r}, and no service implements "
                    f"{service}")
        sent = "request sent" if op.sent else "request not sent yet"
        return f"call {op.op_id}{label}: service {service!r} ({sent})"
    if op.kind == "timer":
        return f"timer {op.op_id} {op.name!r}: {_what(op, False)}"
    if op.kind == "callback":
        token = _request(op).get("token")
        shown = f"; token {token}" if full and isinstance(token, str) else ""
        return (f"callback {op.op_id} {op.name!r}: a completion of its token "
                f"({_what(op, False)}{shown})")
    if op.kind == "child":
        return f"child {op.op_id} {op.name!r}: workflow {_what(op, False)[len('child '):]}"
    if op.kind == "heartbeat":
        return f"heartbeat {op.op_id} of callback {op.name!r}"
    return f"{op.kind} {op.op_id} {op.name!r}"


def _timed_out(op: OperationRecord, history: History) -> bool:
    """A callback whose timeout or heartbeat timer fired: its record stays pending, but the
    workflow no longer waits on it (its ``await`` raised)."""
    return callback_timed_out(op, history.operations)


def describe(history: History, out: TextIO, implemented: Callable[[str], bool | None],
             *, full: bool = False) -> None:
    inst = history.instance
    print(f"workflow id:  {inst.workflow_id}", file=out)
    print(f"workflow:     {inst.workflow_name}", file=out)
    print(f"status:       {inst.status.value}", file=out)
    print(f"created:      {format_time(inst.created_at)}", file=out)
    print(f"updated:      {format_time(inst.updated_at)}", file=out)
    print(f"activations:  {inst.activations}", file=out)
    print(f"input:        {_short(inst.input, full)}", file=out)
    if inst.result is not None:
        print(f"result:       {_short(inst.result, full)}", file=out)
    if inst.error is not None:
        print(f"error:        {_short(inst.error, full, 300)}", file=out)
    pending = [op for op in history.operations
               if op.state is OperationState.PENDING and not _timed_out(op, history)]
    if inst.status is InstanceStatus.RUNNING:
        if not pending:
            print("waiting on:   nothing recorded (its next activation runs it on)", file=out)
        for i, op in enumerate(pending):
            label = "waiting on:" if i == 0 else ""
            print(f"{label:<13} {waiting_on(op, history, implemented, full=full)}", file=out)
    cancel = next((op for op in history.operations if op.op_id == CANCEL_OP_ID), None)
    if cancel is not None:
        print(f"cancelled:    {format_time(cancel.created_at)} ({_what(cancel, False)})",
              file=out)


def _module_services(module: ModuleType, runtime_factory: Callable[[], LocalRuntime]
                     ) -> set[str]:
    """The services a module implements: those its ``setup(runtime)`` implements on a
    scratch runtime (none without a ``setup``)."""
    setup = getattr(module, "setup", None)
    if not callable(setup):
        return set()
    runtime = runtime_factory()
    try:
        setup(runtime)
        return set(runtime.implemented)
    finally:
        runtime.close()


def cmd_describe(args: argparse.Namespace, out: TextIO, table_client: TableClient,
                 load_module: Callable[[str], ModuleType]) -> int:
    from .local import LocalRuntime

    source = _reader(args, table_client)
    try:
        history = source.history(args.workflow_id)
    finally:
        source.close()
    if history is None:
        print(f"lambda-workflow: no workflow instance {args.workflow_id!r} in {source.label}",
              file=sys.stderr)
        return 1
    implemented: Callable[[str], bool | None]
    if args.run:
        services = _module_services(load_module(args.run), LocalRuntime)
        implemented = services.__contains__
    elif source.client is not None:
        targets = source.client.deployment.config.services
        implemented = lambda name: name in targets  # noqa: E731
    else:
        implemented = lambda name: None  # noqa: E731 - a state file does not say
    describe(history, out, implemented, full=args.full)
    return 0


# -- start, cancel, callback -------------------------------------------------------------------
def _split_target(target: str) -> tuple[str, str | None]:
    from pathlib import Path

    if not Path(target).is_file() and ":" in target:
        file, _, name = target.rpartition(":")
        if file and name:
            return file, name
    return target, None


def _setup_runtime(runtime: LocalRuntime, module: ModuleType) -> None:
    setup = getattr(module, "setup", None)
    if callable(setup):
        setup(runtime)
    else:
        runtime.register(*[v for v in vars(module).values() if isinstance(v, Workflow)])


def _choose(module: ModuleType, file: str, name: str | None) -> Workflow[Any, Any]:
    from .local import LocalRuntime

    runtime = LocalRuntime()
    try:
        _setup_runtime(runtime, module)
        registered = dict(runtime.engine.workflows)
    finally:
        runtime.close()
    for value in vars(module).values():
        if isinstance(value, Workflow):
            registered.setdefault(value.name, value)
    if name is not None:
        wf = registered.get(name) or next(
            (v for k, v in vars(module).items() if k == name and isinstance(v, Workflow)), None)
        if wf is None:
            raise UsageError(f"no workflow {name!r} in {file} (found: "
                             f"{', '.join(sorted(registered)) or 'none'})")
        return wf
    if len(registered) != 1:
        raise UsageError(f"{file} has {len(registered)} workflows "
                         f"({', '.join(sorted(registered)) or 'none'}); name one as "
                         f"{file}:NAME")
    (wf,) = registered.values()
    return wf


def _input(wf: Workflow[Any, Any], text: str) -> object:
    try:
        return wf.request_adapter.validate_json(text)
    except pydantic.ValidationError as exc:
        raise InvalidRequestError(
            f"--input {text!r} is not a valid input of workflow {wf.name!r}: "
            f"{describe_validation_error(exc)}") from None


def _json_arg(text: str | None, flag: str) -> object:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{flag} {text!r} is not JSON: {exc}") from None


def _local_runtime(args: argparse.Namespace, out: TextIO, printer: Callable[[TextIO], Any],
                   module: ModuleType | None = None, extra: str | None = None
                   ) -> tuple[LocalRuntime, ModuleType | None]:
    """A runtime on the state file (it takes the file's lock and re-sends what the queues
    held); with ``--run`` (or ``module``), the module's workflows and services set up on it.
    Running instances of workflows the module does not register wait untouched
    (``LocalRuntime.held``)."""
    from .local import LocalRuntime

    if module is None and getattr(args, "run", None):
        module = args.load_module(args.run)
    shown = printer(out) if module is not None and not args.quiet else None
    runtime = LocalRuntime(args.db, on_event=shown)
    if shown is not None:
        shown.store = runtime.store
    if module is not None:
        try:
            _setup_runtime(runtime, module)
        except BaseException:
            runtime.close()
            raise
    return runtime, module


def _run_and_report(runtime: LocalRuntime, workflow_id: str, out: TextIO) -> int:
    runtime.run_until_idle()
    inst = runtime.store.get_instance(workflow_id)
    assert inst is not None
    shown = (_short(inst.result, False) if inst.status is InstanceStatus.COMPLETED
             else _short(inst.error, False, 200) if inst.status is not InstanceStatus.RUNNING
             else "waiting")
    print(f"  {inst.workflow_id:<20} {inst.status.value:<10} {shown}", file=out)
    return 0 if inst.status in (InstanceStatus.COMPLETED, InstanceStatus.RUNNING,
                                InstanceStatus.CANCELLED) else 1


def cmd_start(args: argparse.Namespace, out: TextIO, table_client: TableClient,
              printer: Callable[[TextIO], Any]) -> int:
    file, name = _split_target(args.workflow)
    module = args.load_module(file)
    wf = _choose(module, file, name)
    request = _input(wf, args.input)
    if args.table:
        if args.run:
            raise UsageError("--run works with --db only; on AWS the deployment's workflow "
                             "function runs the instance")
        client = table_client(args.table, sends=True, queue_url=args.queue_url)
        handle = client.start(wf, request, workflow_id=args.id)
        print(f"started {handle.workflow_id} ({wf.name}) in table {args.table!r}; its start "
              f"message is on {client.deployment.config.queue_url}", file=out)
        return 0
    runtime, _ = _local_runtime(args, out, printer, module if args.run else None, wf.name)
    try:
        if wf.name not in runtime.engine.workflows:
            runtime.register(wf)
        local = runtime.start(wf, request, workflow_id=args.id)
        print(f"started {local.workflow_id} ({wf.name}) in {args.db}", file=out)
        if not args.run:
            print(f"  it runs when a runtime next opens {args.db} with its workflow registered "
                  "(give --run to run it now)", file=out)
            return 0
        return _run_and_report(runtime, local.workflow_id, out)
    finally:
        runtime.close()


def cancel_record(inst: InstanceRecord, reason: str, now: float) -> OperationRecord:
    """The record the engine writes when a cancel message reaches a running instance (op id
    ``cancel``, kept outside the workflow's own operations), for its next activation."""
    payload = orjson.dumps({"reason": reason or "cancelled by request"})
    activation = inst.activations + 1
    return OperationRecord(
        inst.workflow_id, CANCEL_OP_ID, -1, "cancel", "cancel", payload, _core.digest(payload),
        state=OperationState.COMPLETED, result=b"null", created_in=activation,
        resolved_in=activation, created_at=now, resolved_at=now)


def cmd_cancel(args: argparse.Namespace, out: TextIO, table_client: TableClient,
               printer: Callable[[TextIO], Any]) -> int:
    if args.table:
        if args.run:
            raise UsageError("--run works with --db only; on AWS the deployment's workflow "
                             "function runs the instance")
        client = table_client(args.table, sends=True, queue_url=args.queue_url)
        if client.cancel(args.workflow_id, args.reason):
            print(f"cancel of {args.workflow_id} sent to "
                  f"{client.deployment.config.queue_url}", file=out)
            return 0
        ended = client.describe(args.workflow_id)
        print(f"{args.workflow_id} has already ended ({ended.status.value}); nothing to "
              "cancel", file=out)
        return 1
    if args.run:
        return _cancel_and_run(args, out, printer)
    lock = StateFileLock(args.db)  # no runtime may run the instance meanwhile
    store = SQLiteStateStore(args.db)
    try:
        inst = store.get_instance(args.workflow_id)
        if inst is None:
            raise WorkflowNotFoundError(f"no workflow instance {args.workflow_id!r} in "
                                        f"{args.db}")
        if inst.status is not InstanceStatus.RUNNING:
            print(f"{args.workflow_id} has already ended ({inst.status.value}); nothing to "
                  "cancel", file=out)
            return 1
        history = store.load_history(args.workflow_id)
        if history is not None and any(op.op_id == CANCEL_OP_ID for op in history.operations):
            print(f"{args.workflow_id} is already cancelled; its next activation ends it",
                  file=out)
            return 0
        from ._runtime.clock import SystemClock

        store.add_operations(args.workflow_id, [cancel_record(inst, args.reason,
                                                              SystemClock().now())],
                             inst.activations)
    finally:
        store.close()
        lock.release()
    print(f"cancel of {args.workflow_id} recorded in {args.db}: it ends cancelled when a "
          "runtime next opens the file with its workflow registered (give --run to end it "
          "now)", file=out)
    return 0


def _cancel_and_run(args: argparse.Namespace, out: TextIO,
                    printer: Callable[[TextIO], Any]) -> int:
    runtime, _ = _local_runtime(args, out, printer)
    try:
        inst = runtime.store.get_instance(args.workflow_id)
        if inst is None:
            raise WorkflowNotFoundError(f"no workflow instance {args.workflow_id!r} in "
                                        f"{args.db}")
        if inst.status is not InstanceStatus.RUNNING:
            print(f"{args.workflow_id} has already ended ({inst.status.value}); nothing to "
                  "cancel", file=out)
            return 1
        body = orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": args.workflow_id,
                             "reason": args.reason})
        runtime.transport.send_to_workflow(
            args.workflow_id, _core.dedup_id(args.workflow_id, "cancel", ""), body)
        print(f"cancel of {args.workflow_id} sent", file=out)
        return _run_and_report(runtime, args.workflow_id, out)
    finally:
        runtime.close()


# A heartbeat is a write of the callback's record, not a message (no activation); to a
# callback without a heartbeat timeout it is accepted and records nothing.
_HEARTBEAT_NOTE = ("recorded on the callback if it has a heartbeat timeout (no message: the "
                   "workflow is not activated)")


def cmd_callback(args: argparse.Namespace, out: TextIO, table_client: TableClient,
                 printer: Callable[[TextIO], Any]) -> int:
    value = _json_arg(args.result, "--result")
    if args.action == "fail" and not args.error:
        raise UsageError("callback fail needs --error TYPE (and --message TEXT)")
    if args.action != "fail" and (args.error or args.message or args.details):
        raise UsageError(f"--error/--message/--details go with `callback fail`, not "
                         f"`callback {args.action}`")
    if args.action != "complete" and args.result is not None:
        raise UsageError(f"--result goes with `callback complete`, not `callback "
                         f"{args.action}`")
    details = _json_arg(args.details, "--details")

    def send(target: Any) -> None:
        if args.action == "complete":
            target.complete_callback(args.token, value)
        elif args.action == "fail":
            target.fail_callback(args.token, args.error, args.message or "", details)
        else:
            target.heartbeat_callback(args.token)

    if args.table:
        if args.run:
            raise UsageError("--run works with --db only; on AWS the deployment's workflow "
                             "function runs the instance")
        client = table_client(args.table, sends=True, queue_url=args.queue_url)
        send(client)
        tokens = client.deployment.tokens  # it verified the token: it is there
        workflow_id = tokens.verify(args.token)[0] if tokens is not None else "its instance"
        print(f"callback {args.action} of {workflow_id} accepted: "
              + (_HEARTBEAT_NOTE if args.action == "heartbeat"
                 else f"sent to {client.deployment.config.queue_url}"), file=out)
        return 0
    if not args.run and args.action != "heartbeat":
        raise UsageError("on --db, the callback's message is applied by an activation, which "
                         "needs the workflow's module: give it with --run FILE.py")
    runtime, _ = _local_runtime(args, out, printer)
    try:
        workflow_id, _ = runtime.tokens.verify(args.token)
        send(runtime)
        print(f"callback {args.action} of {workflow_id} accepted: "
              f"{_HEARTBEAT_NOTE if args.action == 'heartbeat' else 'sent'}", file=out)
        if not args.run:
            return 0  # a heartbeat needs no activation
        return _run_and_report(runtime, workflow_id, out)
    finally:
        runtime.close()


# -- the parsers -------------------------------------------------------------------------------
def _source(parser: argparse.ArgumentParser, *, sends: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--db", help="the SQLite state file")
    group.add_argument("--table", help="a deployment's DynamoDB table (AWS credentials, region "
                                       "and endpoint from the usual AWS environment variables)")
    if sends:
        parser.add_argument("--queue-url", help="with --table: the deployment's workflow queue "
                                                "(default: LAMBDA_WORKFLOW_QUEUE_URL)")


def add_parsers(sub: Any) -> None:
    """The subcommands ``describe``, ``start``, ``cancel`` and ``callback`` (``status`` and
    ``history`` are declared in ``cli.py`` and take :func:`add_status_flags` /
    :func:`add_history_flags`)."""
    desc = sub.add_parser("describe", help="an instance's status, input, result, times and "
                                           "what it is waiting on")
    _source(desc)
    desc.add_argument("workflow_id")
    desc.add_argument("--run", metavar="FILE.py",
                      help="the module that serves the instance: say which pending calls no "
                           "service of it implements")
    desc.add_argument("--full", action="store_true", help="print payloads whole")

    start = sub.add_parser("start", help="start an instance (--db: run it now with --run, or "
                                         "when a runtime next opens the file)")
    start.add_argument("workflow", metavar="FILE.py[:NAME]",
                       help="the module defining the workflow; NAME picks one of several")
    start.add_argument("--input", required=True, help="the workflow's input as JSON")
    start.add_argument("--id", help="the workflow id (default: generated)")
    _source(start, sends=True)
    start.add_argument("--run", action="store_true",
                       help="with --db: run the instance until idle now")
    start.add_argument("--quiet", action="store_true", help="print only the outcome")

    cancel = sub.add_parser("cancel", help="cancel a running instance")
    cancel.add_argument("workflow_id")
    cancel.add_argument("--reason", default="", help="why (recorded with the cancellation)")
    _source(cancel, sends=True)
    cancel.add_argument("--run", metavar="FILE.py",
                        help="with --db: the workflow's module; run the instance until idle")
    cancel.add_argument("--quiet", action="store_true", help="print only the outcome")

    callback = sub.add_parser("callback", help="complete, fail or heartbeat a callback by "
                                               "its token")
    callback.add_argument("action", choices=("complete", "fail", "heartbeat"))
    callback.add_argument("token")
    callback.add_argument("--result", metavar="JSON",
                          help="complete: the callback's value as JSON (default null)")
    callback.add_argument("--error", metavar="TYPE", help="fail: the error type")
    callback.add_argument("--message", help="fail: the error message")
    callback.add_argument("--details", metavar="JSON", help="fail: details as JSON")
    _source(callback, sends=True)
    callback.add_argument("--run", metavar="FILE.py",
                          help="with --db (required there): the workflow's module; run the "
                               "instance until idle")
    callback.add_argument("--quiet", action="store_true", help="print only the outcome")


def add_status_flags(status: argparse.ArgumentParser) -> None:
    status.add_argument("--status", choices=[s.value for s in InstanceStatus],
                        help="only instances with this status")
    status.add_argument("--workflow", metavar="NAME", help="only instances of this workflow")
    status.add_argument("--since", metavar="TIME",
                        help="only instances created at or after TIME (ISO 8601, UTC unless "
                             "it says otherwise, or seconds since the epoch)")
    status.add_argument("--until", metavar="TIME",
                        help="only instances created at or before TIME")
    status.add_argument("--limit", type=int, default=50,
                        help="instances per page (default 50)")
    status.add_argument("--next-token", metavar="TOKEN",
                        help="continue a listing where the page that printed TOKEN ended")


def add_history_flags(hist: argparse.ArgumentParser) -> None:
    hist.add_argument("--full", action="store_true",
                      help="print requests and results whole, as recorded")
    hist.add_argument("--timeline", action="store_true",
                      help="draw the instance: activations as ticks on a time axis, each "
                           "operation as a bar from creation to outcome")
    hist.add_argument("--html", metavar="FILE",
                      help="write the timeline as a self-contained HTML page (inline SVG)")


def run_command(args: argparse.Namespace, out: TextIO, *, table_client: TableClient,
                load_module: Callable[[str], ModuleType], printer: Callable[[TextIO], Any],
                to_json: Callable[[History], bytes]) -> int:
    """Run one of :data:`COMMANDS`; bad input prints its reason and returns 2."""
    args.load_module = load_module
    try:
        if args.command == "status":
            return cmd_status(args, out, table_client)
        if args.command == "history":
            return cmd_history(args, out, table_client, to_json)
        if args.command == "describe":
            return cmd_describe(args, out, table_client, load_module)
        if args.command == "start":
            return cmd_start(args, out, table_client, printer)
        if args.command == "cancel":
            return cmd_cancel(args, out, table_client, printer)
        return cmd_callback(args, out, table_client, printer)
    except UsageError as exc:
        print(f"lambda-workflow {args.command}: {exc}", file=sys.stderr)
        return 2
