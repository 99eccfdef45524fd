"""The web console's app: the instance list (filters, pages through the status index), an
instance page (timeline, input, result, errors with their source lines, what each pending
operation waits on, the history as JSON), and, with ``allow_actions``, the actions of the
command line (cancel, complete or fail a callback, resume, reset), each behind a confirmation
page whose form is POSTed with the server's CSRF token.

Reads go through the same sources as the command line (``_operate``); actions run the command
line's own commands, so they behave exactly as ``lambda-workflow cancel``/``callback``/
``resume``/``reset`` with the same flags would. Templates escape every value (Jinja2's
autoescape); the timeline SVG escapes its texts itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import io
import json
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import _operate, _timeline
from .._opnames import display
from .._runtime.history import history_to_json
from ..backends.protocols import InvalidPageTokenError
from ..models import History, InstanceStatus, OperationState

__all__ = ["ACTIONS", "Console", "bound_port", "create_app", "make_server", "serve"]

HERE = Path(__file__).parent
ACTIONS = ("cancel", "complete", "fail", "resume", "reset")
PAGE_SIZE = 20
# The Host headers the console answers (it listens on 127.0.0.1 only).
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class Console:
    """What the console serves: a state file (``db``) or a table, and whether actions are
    allowed. ``run`` (with ``db``): the workflow module an action's activation runs (as
    ``--run`` of the commands; a callback completion on a state file needs it)."""

    db: str | None = None
    table: str | None = None
    run: str | None = None
    queue_url: str | None = None
    allow_actions: bool = False
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    table_client: Callable[..., Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _table_source: Any = None

    def __post_init__(self) -> None:
        if (self.db is None) == (self.table is None):
            raise ValueError("the console serves a state file (db) or a table, one of them")
        if self.run is not None and self.db is None:
            raise ValueError("run works with db only: on AWS the deployment's functions run "
                             "the instances")

    @property
    def label(self) -> str:
        return f"state file {self.db}" if self.db else f"table {self.table}"

    def source(self) -> Any:
        """A reader (``_operate._Source``): a fresh connection to the state file per request
        (taking no lock), one client of the table for the server's life."""
        if self.db is not None:
            return _operate._reader(argparse.Namespace(db=self.db, table=None), _no_table)
        if self._table_source is None:
            assert self.table_client is not None
            self._table_source = _operate._Source(f"table {self.table!r}",
                                                  client=self.table_client(self.table))
        return self._table_source

    def close(self, source: Any) -> None:
        if self.db is not None:
            source.close()

    def history(self, workflow_id: str) -> History | None:
        source = self.source()
        try:
            history: History | None = source.history(workflow_id)
            return history
        finally:
            self.close(source)


def _no_table(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a state file's console reads no table")


# -- helpers for the pages ---------------------------------------------------------------------
def _pretty(payload: bytes | None) -> str:
    if payload is None:
        return "null"
    try:
        return json.dumps(orjson.loads(payload), indent=2, ensure_ascii=False)
    except orjson.JSONDecodeError:
        return payload.decode(errors="replace")


def _error(payload: bytes | None) -> dict[str, Any] | None:
    if payload is None:
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {"type": "?", "message": payload.decode(errors="replace"), "details": None}
    if not isinstance(value, dict):
        return {"type": "?", "message": str(value), "details": None}
    details = value.get("details")
    return {"type": str(value.get("type", "?")), "message": str(value.get("message", "")),
            "details": None if details is None else json.dumps(details, indent=2),
            "call_id": details.get("call_id") if isinstance(details, dict) else None}


def source_line(site: str, folders: list[Path]) -> str | None:
    """The text of the line a site (``file.py:LINE in function``) names, found in
    ``folders`` (the workflow module's folder, the current one), else ``None``."""
    place = site.split(" in ", 1)[0]
    name, _, line = place.rpartition(":")
    if not name or not line.isdigit() or os.sep in name or "/" in name:
        return None
    for folder in folders:
        path = folder / name
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                return None
            number = int(line)
            if 1 <= number <= len(lines):
                return lines[number - 1].strip()
            return None
    return None


def _query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


# -- the app -----------------------------------------------------------------------------------
def create_app(console: Console) -> Starlette:
    """The console's Starlette app."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(console=console, query=_query,
                                 format_time=_operate.format_time)
    folders = [Path.cwd()]
    if console.run:
        folders.insert(0, Path(console.run).resolve().parent)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def problem(request: Request, message: str, status_code: int) -> Response:
        return page(request, "problem.html", status_code=status_code, message=message)

    def instances(request: Request) -> Response:
        q = request.query_params
        status = q.get("status") or None
        workflow = q.get("workflow") or None
        since_text, until_text = q.get("since") or None, q.get("until") or None
        token = q.get("next") or None
        filters = {"status": status or "", "workflow": workflow or "",
                   "since": since_text or "", "until": until_text or ""}
        try:
            limit = int(q.get("limit") or PAGE_SIZE)
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return problem(request, f"limit {q.get('limit')!r} must be a number from 1 to "
                                    "1000", 400)
        if status is not None and status not in {s.value for s in InstanceStatus}:
            return problem(request, f"status {status!r} is not one of "
                                    f"{', '.join(s.value for s in InstanceStatus)}", 400)
        try:
            since = _operate.parse_time(since_text, "since") if since_text else None
            until = _operate.parse_time(until_text, "until") if until_text else None
        except _operate.UsageError as exc:
            return problem(request, str(exc), 400)
        source = console.source()
        try:
            listed = source.lister().list_page(
                status=InstanceStatus(status) if status else None, workflow_name=workflow,
                since=since, until=until, limit=limit, next_token=token)
        except InvalidPageTokenError as exc:
            return problem(request, f"next: {exc}", 400)
        finally:
            console.close(source)
        next_url = (None if listed.next_token is None else
                    "/?" + _query(**filters, limit=q.get("limit"), next=listed.next_token))
        return page(request, "instances.html", instances=listed.instances, filters=filters,
                    statuses=[s.value for s in InstanceStatus], next_url=next_url,
                    first_url=("/?" + _query(**filters, limit=q.get("limit"))) if token
                    else None)

    def instance(request: Request) -> Response:
        workflow_id = request.query_params.get("id", "")
        history = console.history(workflow_id) if workflow_id else None
        if history is None:
            return problem(request, f"no workflow instance {workflow_id!r} in "
                                    f"{console.label}", 404)
        inst = history.instance
        timeline = _timeline.build(history)
        if console.table is not None:
            targets = console.source().client.deployment.config.services

            def implemented(name: str) -> bool | None:
                return name in targets
        else:
            def implemented(name: str) -> bool | None:
                return None
        pending = []
        for op in history.operations:
            if op.state is not OperationState.PENDING or _operate._timed_out(op, history):
                continue
            pending.append({"op": op, "waits": _operate.waiting_on(op, history, implemented),
                            "callback": op.kind == "callback"})
        ops: list[dict[str, Any]] = []
        for op in history.operations:
            error = _error(op.result) if op.state is OperationState.FAILED else None
            ops.append({"op": op, "name": display(op.kind, op.name),
                        "error": error, "line": source_line(op.site, folders),
                        "detail": _operate._what(op, False),
                        "request": _pretty(op.request) if op.kind in ("call", "step", "child")
                        else None,
                        "result": _pretty(op.result)
                        if op.state is OperationState.COMPLETED
                        and op.kind not in ("timer", "cancel") else None})
        inst_error = _error(inst.error)
        # The workflow's own error carries no site: the failed operation that raised it does
        # (a service error names its call; else the last failed operation with the same type
        # and message).
        raised = None
        if inst_error is not None:
            for entry in reversed(ops):
                e = entry["error"]
                if isinstance(e, dict) and (
                        entry["op"].op_id == inst_error["call_id"]
                        or (e["type"], e["message"]) == (inst_error["type"],
                                                         inst_error["message"])):
                    raised = entry
                    break
        return page(request, "instance.html", inst=inst, history=history,
                    svg=Markup(_timeline.render_svg(timeline)), pending=pending, ops=ops,
                    input=_pretty(inst.input),
                    result=None if inst.result is None else _pretty(inst.result),
                    error=inst_error, raised=raised,
                    running=inst.status is InstanceStatus.RUNNING,
                    failed=inst.status is InstanceStatus.FAILED)

    def history_json(request: Request) -> Response:
        workflow_id = request.query_params.get("id", "")
        history = console.history(workflow_id) if workflow_id else None
        if history is None:
            return problem(request, f"no workflow instance {workflow_id!r} in "
                                    f"{console.label}", 404)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in workflow_id)
        return Response(history_to_json(history) + b"\n", media_type="application/json",
                        headers={"Content-Disposition":
                                 f'attachment; filename="{safe}.history.json"'})

    def refused(request: Request) -> Response | None:
        if not console.allow_actions:
            return problem(request, "actions are off: the console was started without "
                                    "--allow-actions", 403)
        return None

    def action_of(values: Any) -> tuple[str, str, str] | str:
        what = values.get("do", "")
        if what not in ACTIONS:
            return f"unknown action {what!r}: one of {', '.join(ACTIONS)}"
        workflow_id = values.get("id", "")
        if not workflow_id:
            return "which instance? (id is missing)"
        op = values.get("op", "")
        if what in ("complete", "fail") and not op:
            return f"{what} needs the callback's operation id (op)"
        if what == "reset" and not values.get("to", ""):
            return "reset needs the operation to keep up to (to)"
        return what, workflow_id, op

    def confirm(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        parsed = action_of(request.query_params)
        if isinstance(parsed, str):
            return problem(request, parsed, 400)
        what, workflow_id, op = parsed
        history = console.history(workflow_id)
        if history is None:
            return problem(request, f"no workflow instance {workflow_id!r} in "
                                    f"{console.label}", 404)
        callback = None
        if op:
            callback = next((o for o in history.operations if o.op_id == op), None)
            if callback is None or callback.kind != "callback":
                return problem(request, f"{workflow_id!r} has no callback operation {op!r}",
                               404)
        return page(request, "confirm.html", what=what, inst=history.instance, op=op,
                    callback=callback, to=request.query_params.get("to", ""),
                    ops=history.operations, needs_run=(console.db is not None
                                                       and what in ("complete", "fail")
                                                       and not console.run))

    async def perform(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        form = await request.form()
        given = str(form.get("csrf", ""))
        if not hmac.compare_digest(given.encode(), console.csrf.encode()):
            return problem(request, "the form's CSRF token is missing or wrong: reload the "
                                    "confirmation page", 403)
        if form.get("confirm") != "yes":
            return problem(request, "the action was not confirmed", 400)
        parsed = action_of(form)
        if isinstance(parsed, str):
            return problem(request, parsed, 400)
        argv = _argv(console, form, *parsed)
        if isinstance(argv, str):
            return problem(request, argv, 400)
        code, output = _run_cli(console, argv)
        return page(request, "done.html", status_code=200 if code == 0 else 422,
                    what=parsed[0], workflow_id=parsed[1], code=code, output=output,
                    back="/instance?" + _query(id=parsed[1]))

    routes = [
        Route("/", instances),
        Route("/instance", instance),
        Route("/instance/history.json", history_json),
        Route("/action", confirm, methods=["GET"]),
        Route("/action", perform, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    # Only requests addressed to the loopback host: a page of another site whose name was made
    # to resolve to 127.0.0.1 (DNS rebinding) would otherwise read the pages and their token.
    return Starlette(routes=routes, middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=list(LOCAL_HOSTS))])


def _argv(console: Console, form: FormData, what: str, workflow_id: str,
          op: str) -> list[str] | str:
    """The command line an action runs."""
    if console.db is not None:
        where = ["--db", console.db]
        if console.run:
            where += ["--run", console.run]
    else:
        where = ["--table", str(console.table)]
        if console.queue_url:
            where += ["--queue-url", console.queue_url]
    if what == "cancel":
        return ["cancel", workflow_id, "--reason", str(form.get("reason", "")), *where]
    if what in ("resume", "reset"):
        extra = ["--to", str(form.get("to", ""))] if what == "reset" else []
        return [what, workflow_id, *extra, *where]
    history = console.history(workflow_id)
    callback = None if history is None else next(
        (o for o in history.operations if o.op_id == op and o.kind == "callback"), None)
    if callback is None:
        return f"{workflow_id!r} has no callback operation {op!r}"
    token = _operate._request(callback).get("token")
    if not isinstance(token, str):
        return f"callback {op!r} of {workflow_id!r} records no token"
    if what == "complete":
        return ["callback", "complete", token, "--result", str(form.get("result") or "null"),
                *where]
    args = ["callback", "fail", token, "--error", str(form.get("error") or "Rejected"),
            "--message", str(form.get("message", ""))]
    if form.get("details"):
        args += ["--details", str(form.get("details"))]
    return [*args, *where]


def _run_cli(console: Console, argv: list[str]) -> tuple[int, str]:
    """Run a command of the command line, its output and errors captured (one at a time:
    stderr is redirected for the whole process meanwhile)."""
    from ..cli import main

    out = io.StringIO()
    with console._lock, contextlib.redirect_stderr(out):
        try:
            code = main([*argv, "--quiet"], out=out)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=out)
        except Exception as exc:  # the page says what failed; the server stays up
            code = 1
            print(f"{type(exc).__name__}: {exc}", file=out)
    return code, out.getvalue()


def make_server(console: Console, port: int = 8765) -> Any:
    """A uvicorn server of the console on 127.0.0.1 (``port`` 0: a free one, read from
    ``server.servers[0].sockets[0]`` once ``server.started``)."""
    import uvicorn

    config = uvicorn.Config(create_app(console), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    return uvicorn.Server(config)


def bound_port(server: Any) -> int:
    """The port a started server listens on."""
    return int(server.servers[0].sockets[0].getsockname()[1])


def serve(console: Console, port: int = 8765, *, ready: Callable[[int], None] | None = None
          ) -> None:
    """Serve the console on 127.0.0.1 until interrupted. ``port`` 0 picks a free port;
    ``ready(port)`` is called once it listens."""
    server = make_server(console, port)
    if ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets)
            if server.started:
                ready(bound_port(server))

        server.startup = startup
    server.run()
