"""``lambda-workflow bench HISTORY... --workflow APP.py[:NAME]``: the replay overhead of a user's
own workflow on its own recorded histories (exports of ``lambda-workflow history --json``, from
SQLite or DynamoDB).

The parent process checks its input (each file is a history, the module has the workflow, the
history replays against it) and then drives two worker processes, one per replay core: the
compiled core (``LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1``) and the pure twin
(``LAMBDA_WORKFLOW_NO_EXTENSIONS=1``); the core is chosen at import, so each needs its own
interpreter. Each worker loads the module and the histories once, then measures one round per
request; the parent asks them in turn (c, py, c, py, ...), so both see the same machine load.

What a worker measures per history and round (docs/testing.md, "Benchmark your workflow's
replay"):

- replay: one full replay of the history with no new message (what ``replay`` checks and what
  every activation does before it continues), with the median of repeats;
- per kind: the same replay instrumented to note the time each operation is created; the time
  from an operation's creation to the next one's goes to the first's kind (the time before the
  first operation is the workflow's start). Each kind's median share of the instrumented
  replays is applied to the uninstrumented replay's time and divided by the number of
  operations of that kind;
- floor: for the operations of each kind, awaiting an already completed asyncio future holding
  the recorded result and validating it with the type the workflow gives that operation
  (``TypeAdapter.validate_json``; errors and results of operations without a type, ``orjson``);
- checked floor: the floor plus encoding each request the code built (the cheapest encoding
  that gives the recorded bytes) and comparing it with the recorded bytes;
- activation: ``Engine.activate`` on a SQLite store holding the history as it was before its
  last activation that delivered outcomes (replies, timers, callback completions) and ran no
  step, with the messages of those outcomes; it loads, replays, records, sends (to nowhere)
  and finishes or suspends. Cold with the warm instance cache off; warm right after the engine
  ran the activation before it itself, with the cache on (a cache hit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TextIO

import orjson

SCHEMA = "lambda-workflow-bench/1"
# Workers: which core each runs, and the environment variable that forces it.
CORES = (("c", "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS"), ("py", "LAMBDA_WORKFLOW_NO_EXTENSIONS"))
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 3
# Seconds of repeats a measurement aims for in one round (the repeats' median is the round's).
TARGET = 0.2
QUICK_TARGET = 0.03
MAX_REPEATS = 2_000
ACTIVATIONS = 5  # whole activations per round (each on its own copy of the store)
QUICK_ACTIVATIONS = 2
# Kinds whose outcome an activation can be given as a message.
_DELIVERABLE = frozenset({"call", "child", "timer", "callback"})
START = "(start)"


class BenchError(Exception):
    """Bad input: the message says what was wrong; the command exits 2."""


# -- input checks, in the parent ----------------------------------------------------------------
@dataclass(slots=True)
class _Input:
    path: str
    workflow: str  # the workflow to replay it with (its registered name)
    history: Any  # models.History


def _load_inputs(paths: Sequence[str], target: str) -> tuple[str, str | None, list[_Input]]:
    """Each history read with the one loader, the module loaded and each history checked to
    replay against its workflow, as ``lambda-workflow replay`` does (its helpers)."""
    from . import cli
    from ._runtime.history import history_from_json
    from ._runtime.replay_check import check_replay

    file, name = cli._split_target(target)
    histories = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BenchError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            histories.append((path, history_from_json(data)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BenchError(f"{path} is not a workflow history as `lambda-workflow history "
                             f"--json` exports it ({cli._why_not_a_history(data, exc)})"
                             ) from None
    if not Path(file).is_file():
        raise BenchError(f"no such file: {file}")
    try:
        tokens = cli._callback_tokens()
    except ValueError as exc:
        raise BenchError(f"LAMBDA_WORKFLOW_CALLBACK_KEY: {exc}") from None
    workflows = cli._workflows_in(cli._load_module(file))
    inputs = []
    for path, history in histories:
        wanted = name or history.instance.workflow_name
        wf = workflows.get(wanted)
        if wf is None:
            known = sorted({w.name for w in workflows.values()})
            raise BenchError(
                f"{path} records workflow {history.instance.workflow_name!r}, but {file} has "
                f"no workflow {wanted!r} (found: {', '.join(known) or 'none'}); name the one "
                f"to replay with --workflow {file}:NAME")
        check = check_replay(wf, history, tokens=tokens)
        if not check.ok:
            raise BenchError(f"{path} does not replay against {file}, so its replay cannot be "
                             f"measured: {check.message}")
        if check.outcome == "not-run":
            raise BenchError(f"{path}: {check.message}")
        inputs.append(_Input(path, wf.name, history))
    return file, name, inputs


# -- the worker: one replay core ----------------------------------------------------------------
def _stats(values: Sequence[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med > 0 else 0.0}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _NullTransport:
    """Where a benchmarked activation sends its messages: nowhere (a transport and a timer
    service)."""

    reply_address = "bench"

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        pass

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        pass

    # ...and the timers it starts never fire.
    def schedule(self, workflow_id: str, timer_id: str, fire_at: float) -> None:
        pass

    def withdraw(self, workflow_id: str, timer_id: str) -> None:
        pass


class _Subject:
    """One history in a worker: how to replay it, its floor and its activation."""

    def __init__(self, wf: Any, history: Any, tokens: Any, quick: bool) -> None:
        from ._runtime.engine import replay_inputs
        from ._runtime.repair import repair_view
        from ._runtime.replay import Replayer

        self.wf = wf
        self.history = history
        self.tokens = tokens
        inst = history.instance
        repairs = repair_view(history.operations)
        self.ops, cancel = replay_inputs(sorted(
            (op for op in history.operations if op.op_id not in repairs.fenced),
            key=lambda op: op.seq))
        self.kinds: dict[str, int] = {}
        for op in self.ops:
            self.kinds[op.kind] = self.kinds.get(op.kind, 0) + 1

        def replayer(cls: type[Replayer]) -> Replayer:
            # As replay_check.check_replay replays: the next activation, no new message.
            return cls(wf, inst.workflow_id, inst.input, self.ops, {},
                       activation=inst.activations + 1, now=inst.updated_at or inst.created_at,
                       tokens=tokens, cancel=cancel, scope=repairs.scope,
                       relaxed=repairs.relaxed_at == len(self.ops))

        self._replayer = replayer
        self._marking = _marking_class()
        self.replay()  # warm-up, and the types the floor needs
        marks = self.marked()[1]
        # How many operations of each kind the code creates on replay (those inside a child
        # context that finished are not: its recorded result is returned).
        self.replayed = {kind: sum(m[1] == kind for m in marks) for kind in self.kinds}
        self.floor_work = self._floor_work(marks)
        self.repeats = self._calibrate(quick)
        self.activation = _Activation(self, quick)

    def replay(self) -> object:
        from ._runtime.replay import Replayer

        return self._replayer(Replayer).run()

    def marked(self) -> tuple[float, list[_Mark], float]:
        replayer = self._replayer(self._marking)
        start = time.perf_counter()
        replayer.run()
        end = time.perf_counter()
        return start, replayer.marks, end  # type: ignore[attr-defined]

    def _calibrate(self, quick: bool) -> int:
        start = time.perf_counter()
        self.replay()
        once = max(time.perf_counter() - start, 1e-7)
        return max(3, min(MAX_REPEATS, int((QUICK_TARGET if quick else TARGET) / once)))

    def _floor_work(self, marks: list[_Mark]) -> dict[str, list[_Work]]:
        """Per kind and operation: how to validate its recorded outcome (the type the workflow
        gave the operation of that kind and name, else orjson; none while it is pending), and
        how to check the request the code built for it (the n-th operation of that kind and
        name the replay created) against the recorded bytes (none for patches, contexts and
        operations the replay did not create)."""
        from .models import OperationState

        adapters: dict[tuple[str, str], Any] = {}
        encoders: dict[tuple[str, str], list[Any]] = {}
        for _, kind, name, adapter, source in marks:
            if adapter is not None:
                adapters.setdefault((kind, name), adapter)
            encoders.setdefault((kind, name), []).append(source)
        for created in encoders.values():
            created.reverse()  # popped in creation order below
        work: dict[str, list[_Work]] = {kind: [] for kind in self.kinds}
        for op in self.ops:
            found = encoders.get((op.kind, op.name))
            check = _checker(found.pop() if found else None, op.request)
            if op.state is OperationState.PENDING or op.result is None:
                work[op.kind].append((None, None, check))
                continue
            validate: Callable[[bytes], object] = orjson.loads
            adapter = adapters.get((op.kind, op.name))
            if adapter is not None and op.state is OperationState.COMPLETED:
                try:
                    adapter.validate_json(op.result)
                    validate = adapter.validate_json
                except Exception:  # recorded in another shape (a wrapped value): untyped
                    pass
            work[op.kind].append((validate, op.result, check))
        return work

    def floor(self, kind: str, *, checked: bool) -> float:
        """The floor of the operations of ``kind``; ``checked``: with each request encoded
        and compared with the recorded bytes."""
        work = self.floor_work[kind]

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for validate, payload, check in work:
                if checked and check is not None:
                    check()
                if validate is not None:
                    future: asyncio.Future[bytes | None] = loop.create_future()
                    future.set_result(payload)
                    validate(await future)  # type: ignore[arg-type]

        async def empty() -> None:
            pass

        # The loop's own cost of running a coroutine is not the operations': an empty one's
        # time is taken off.
        loop = asyncio.new_event_loop()
        try:
            with_work = _median_time(lambda: loop.run_until_complete(main()), self.repeats)
            without = _median_time(lambda: loop.run_until_complete(empty()), self.repeats)
        finally:
            loop.close()
        return max(with_work - without, 0.0)

    def measure(self) -> dict[str, Any]:
        total = _median_time(self.replay, self.repeats)
        # Each instrumented replay's shares per kind; the median share of each kind (scaled
        # so they add up to 1) is robust to a pause landing in one replay.
        runs: dict[str, list[float]] = {}
        count = max(3, self.repeats // 2)
        for _ in range(count):
            start, marks, end = self.marked()
            spans = {START: (marks[0][0] if marks else end) - start}
            points = [m[0] for m in marks] + [end]
            for (at, kind, *_), following in zip(marks, points[1:], strict=True):
                spans[kind] = spans.get(kind, 0.0) + following - at
            for kind, span in spans.items():
                runs.setdefault(kind, []).append(span / (end - start))
        medians = {kind: statistics.median(v + [0.0] * (count - len(v)))
                   for kind, v in runs.items()}
        whole = sum(medians.values()) or 1.0
        shares = {kind: share / whole for kind, share in medians.items()}
        return {"replay": total, "shares": shares,
                "floor": {kind: self.floor(kind, checked=False) for kind in self.kinds},
                "checked_floor": {kind: self.floor(kind, checked=True) for kind in self.kinds},
                "activation": self.activation.measure()}


# (time, kind, name, result type, the request the code built: (its type, the request), or a
# step attempt's encoder, or None)
_Mark = tuple[float, str, str, Any, Any]
# (validate the outcome, the recorded outcome, check the request against the recorded one)
_Work = tuple["Callable[[bytes], object] | None", "bytes | None", "Callable[[], bool] | None"]


def _checker(source: Any, recorded: bytes) -> Callable[[], bool] | None:
    """How the checked floor checks a request the code built against the recorded bytes: the
    cheapest encoding that gives the recorded bytes, its type's ``dump_json`` if it does,
    else the canonical encoding (``dump_python`` in JSON mode, orjson with sorted keys). The
    request is validated once, here; ``None`` when there is nothing to check."""
    if source is None:
        return None
    if callable(source):  # a step attempt's encoder
        return lambda: bool(source() == recorded)
    adapter, request = source
    if adapter is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = adapter.validate_python(request)
            fast = adapter.dump_json(value)
        except Exception:
            return None
    if fast == recorded:
        dump_json = adapter.dump_json
        return lambda: bool(dump_json(value) == recorded)
    dump_python = adapter.dump_python
    return lambda: orjson.dumps(dump_python(value, mode="json"),
                                option=orjson.OPT_SORT_KEYS) == recorded


def _step_encoder(args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int
                  ) -> Callable[[], bytes]:
    """A step attempt's request as the replay builds it (``run_step``, ``_attempt``)."""
    import pydantic_core

    def encode() -> bytes:
        arguments = orjson.dumps({"args": args, "kwargs": kwargs}, option=orjson.OPT_SORT_KEYS,
                                 default=pydantic_core.to_jsonable_python)
        return arguments[:-1] + b',"attempt":' + str(attempt).encode() + b"}"
    return encode


def _marking_class() -> type[Any]:
    """A :class:`Replayer` that notes (time, kind, name, result type) as each operation is
    created, at the driver's entry points: calls, durable operations (timers, callbacks,
    children, heartbeats), step attempts, patches and child contexts."""
    from ._runtime.replay import Replayer

    class Marking(Replayer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.marks: list[_Mark] = []
            marks = self.marks
            call = self.call
            clock = time.perf_counter

            def marked_call(service: Any, request: Any, frame: FrameType | None
                            ) -> Awaitable[Any]:
                marks.append((clock(), "call", getattr(service, "name", ""),
                               getattr(service, "response_adapter", None),
                               (getattr(service, "request_adapter", None), request)))
                return call(service, request, frame)

            self.call = marked_call

        def durable(self, kind: str, name: str, request_adapter: Any, response_adapter: Any,
                    request: object, frame: FrameType | None) -> asyncio.Future[Any]:
            self.marks.append((time.perf_counter(), kind, name, response_adapter,
                               (request_adapter, request)))
            return super().durable(kind, name, request_adapter, response_adapter, request,
                                   frame)

        def _attempt(self, st: Any, attempt: int, arguments: bytes, args: tuple[Any, ...],
                     kwargs: dict[str, Any], frame: FrameType | None) -> tuple[bool, bytes]:
            self.marks.append((time.perf_counter(), "step", st.name, st.result_adapter,
                               _step_encoder(args, kwargs, attempt)))
            return super()._attempt(st, attempt, arguments, args, kwargs, frame)

        def patched(self, patch_id: str, frame: FrameType | None) -> bool:
            self.marks.append((time.perf_counter(), "patch", patch_id, None, None))
            return super().patched(patch_id, frame)

        def run_context(self, name: str, index: int | None, body: Callable[[], Awaitable[Any]],
                        adapter: Any, frame: FrameType | None) -> Awaitable[Any]:
            self.marks.append((time.perf_counter(), "context", name, None, None))
            return super().run_context(name, index, body, adapter, frame)

    return Marking


class _Activation:
    """Whole activations of the history's instance on SQLite: activation ``A`` (the last one
    that delivered outcomes and ran no step) from a file holding the instance as it was
    before it, with the cache off; and, warm, the same activation right after the engine ran
    activation ``A - 1`` (or the start) itself with the warm instance cache on. Each run works
    on its own copy of a prepared file."""

    def __init__(self, subject: _Subject, quick: bool) -> None:
        self.subject = subject
        self.count = QUICK_ACTIVATIONS if quick else ACTIVATIONS
        self.skipped: str | None = None
        self.warm_skipped: str | None = None
        self.delivered: list[dict[str, str]] = []
        self.activation = 0
        self.ends = ""
        self._folder = Path(tempfile.mkdtemp(prefix="lambda-workflow-bench-"))
        self._made = 0
        self._cold: _Prepared | None = None
        self._warm: tuple[_Prepared, _Prepared] | None = None
        try:
            eligible = self._eligible()
            a = self.activation = eligible[0]
            self._cold = self._prepare(a, "cold")
            self.delivered = self._cold.delivered
            self.ends = self._run(self._cold, None)[0]  # warm-up; also what it ends with
        except _Skip as exc:
            self.skipped = self.warm_skipped = str(exc)
            return
        except Exception as exc:  # the activation itself failed: reported, not measured
            self.skipped = self.warm_skipped = _failure(exc)
            return
        try:
            self._plan_warm(a, eligible)
        except _Skip as exc:
            self.warm_skipped = str(exc)
        except Exception as exc:
            self.warm_skipped = _failure(exc)

    def _eligible(self) -> list[int]:
        """The activations that delivered replies, timers or callback completions and that
        a benchmark can run again: none of them ran a step (your code), recorded a heartbeat,
        a cancellation or a repair; latest first."""
        delivers: set[int] = set()
        refused: set[int] = set()
        for op in self.subject.history.operations:
            if op.kind in ("trace", "parent"):
                continue  # records kept outside the workflow's order
            if op.kind in ("step", "heartbeat", "cancel", "repair"):
                refused.add(op.created_in)
            if op.resolved_in is None:
                continue
            if op.kind == "timer" and op.name.startswith("heartbeat:"):
                refused.add(op.resolved_in)  # its result depends on heartbeats received
            elif op.kind in _DELIVERABLE:
                delivers.add(op.resolved_in)
            elif op.kind not in ("context", "patch"):
                refused.add(op.resolved_in)
        eligible = sorted(delivers - refused, reverse=True)
        if not eligible:
            raise _Skip("the history has no activation that delivered replies, timers or "
                        "callback completions without running a step (steps run your code, "
                        "which a benchmark must not run)")
        return eligible

    def _prepare(self, a: int, label: str) -> _Prepared:
        """A SQLite file holding the instance as it was before activation ``a`` (none for
        ``a = 1``), with the messages that deliver the outcomes ``a`` recorded (the start
        message for ``a = 1``)."""
        from .backends.sqlite import SQLiteStateStore
        from .models import (
            CallbackCompletedMessage,
            CallResultMessage,
            ErrorInfo,
            InstanceRecord,
            InstanceStatus,
            OperationRecord,
            OperationState,
            StartMessage,
        )
        from .models import TimerFiredMessage as Timer

        history = self.subject.history
        inst = history.instance
        ops = history.operations
        base = self._folder / f"{label}.sqlite3"
        SQLiteStateStore(base).close()
        if a == 1:
            start = StartMessage(workflow_id=inst.workflow_id, workflow=inst.workflow_name,
                                 input=orjson.loads(inst.input))
            return _Prepared(base, [start], inst.created_at, [])
        before = []
        for op in ops:
            if op.created_in >= a:
                continue
            if op.resolved_in is not None and op.resolved_in >= a:
                op = OperationRecord(
                    op.workflow_id, op.op_id, op.seq, op.kind, op.name, op.request,
                    op.request_digest, op.site, OperationState.PENDING, op.sent, None,
                    op.created_in, None, op.created_at, None)
            before.append(op)
        times = [t for op in before for t in (op.created_at, op.resolved_at) if t]
        previous = InstanceRecord(inst.workflow_id, inst.workflow_name, inst.input,
                                  inst.input_digest, InstanceStatus.RUNNING, None, None,
                                  inst.created_at, max([inst.created_at, *times]), a - 1)
        messages: list[Any] = []
        delivered = []
        now = previous.updated_at
        wid = inst.workflow_id
        for op in ops:
            if op.resolved_in != a or op.kind not in _DELIVERABLE:
                continue
            now = max(now, op.resolved_at or now)
            ok = op.state is OperationState.COMPLETED
            value = orjson.loads(op.result or b"null") if ok else None
            error = None if ok else ErrorInfo.model_validate_json(op.result or b"{}")
            if op.kind in ("call", "child"):
                messages.append(CallResultMessage(workflow_id=wid, call_id=op.op_id, ok=ok,
                                                  value=value, error=error))
            elif op.kind == "timer":
                messages.append(Timer(workflow_id=wid, timer_id=op.op_id))
            else:
                token = orjson.loads(op.request).get("token")
                if not isinstance(token, str):
                    raise _Skip(f"callback {op.op_id} has no token in its recorded request")
                messages.append(CallbackCompletedMessage(workflow_id=wid, token=token, ok=ok,
                                                         value=value, error=error))
            delivered.append({"id": op.op_id, "kind": op.kind})
        store = SQLiteStateStore(base)
        try:
            store.create_instance(previous, before)
        finally:
            store.close()
        return _Prepared(base, messages, now, delivered)

    def _plan_warm(self, a: int, eligible: list[int]) -> None:
        from ._runtime.engine import Engine

        if "instance_cache" not in inspect.signature(Engine).parameters:
            raise _Skip("this version of lambda-workflow has no warm instance cache")
        if a - 1 not in eligible and a - 1 != 1:
            raise _Skip(f"activation {a - 1}, which would leave the instance in the cache, "
                        "ran a step or delivered nothing a benchmark can deliver again")
        assert self._cold is not None
        warm = (self._prepare(a - 1, "warm"), self._cold)
        cache = self._run(*warm)[1]
        if cache == "hit":
            self._warm = warm
        else:
            raise _Skip(f"the cache did not continue the instance after activation {a - 1} "
                        f"(cache: {cache})")

    def _run(self, first: _Prepared, then: _Prepared | None) -> tuple[str, str]:
        """``first``'s activation on a copy of its file; with ``then``, that activation
        afterwards on the same engine (the timed one); the status and cache use of the
        last."""
        path = self._copy(first.base)
        try:
            engine, store, clock = self._engine(path, first.now, warm=then is not None)
            try:
                report = self._activate(engine, first)
                if then is not None:
                    clock.advance(max(then.now - first.now, 0.0))
                    report = self._activate(engine, then)
                return report.status, report.cache
            finally:
                store.close()
        finally:
            path.unlink(missing_ok=True)

    def _engine(self, path: Path, now: float, *, warm: bool) -> tuple[Any, Any, Any]:
        from ._runtime.clock import VirtualClock
        from ._runtime.engine import Engine
        from .backends.sqlite import SQLiteStateStore

        store = SQLiteStateStore(path)
        clock = VirtualClock(now)
        cache: dict[str, Any] = {}
        if "instance_cache" in inspect.signature(Engine).parameters:
            cache["instance_cache"] = 1 if warm else 0
        null = _NullTransport()
        engine = Engine(store, null,
                        {self.subject.history.instance.workflow_name: self.subject.wf},
                        clock, tokens=self.subject.tokens, timers=null, **cache)
        return engine, store, clock

    def _activate(self, engine: Any, prepared: _Prepared) -> Any:
        wid = self.subject.history.instance.workflow_id
        report = engine.activate(wid, prepared.messages)
        missing = [op["id"] for op in prepared.delivered if op["id"] not in report.applied]
        if missing or report.status in ("rejected", "finished-earlier"):
            raise _Skip(f"activation {report.activation} did not take the recorded outcomes "
                        f"({report.status}; not recorded: {', '.join(missing) or 'none'})")
        return report

    def _copy(self, base: Path) -> Path:
        self._made += 1
        path = self._folder / f"run{self._made}.sqlite3"
        shutil.copyfile(base, path)
        return path

    def measure(self) -> tuple[float | None, float | None]:
        """The median time of the cold activation and of the warm one (None: not
        measured)."""
        cold = warm = None
        if self._cold is not None and self.skipped is None:
            cold = self._timed(self._cold, None)
        if self._warm is not None:
            warm = self._timed(*self._warm)
        return cold, warm

    def _timed(self, first: _Prepared, then: _Prepared | None) -> float:
        # Files are copied and engines made before the timed part; each file is used once.
        times = []
        for _ in range(self.count):
            path = self._copy(first.base)
            engine, store, clock = self._engine(path, first.now, warm=then is not None)
            try:
                if then is not None:
                    self._activate(engine, first)
                    clock.advance(max(then.now - first.now, 0.0))
                timed = then or first
                start = time.perf_counter()
                self._activate(engine, timed)
                times.append(time.perf_counter() - start)
            finally:
                store.close()
                path.unlink(missing_ok=True)
        return statistics.median(times)

    def close(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


@dataclass(slots=True)
class _Prepared:
    base: Path  # the SQLite file before the activation
    messages: list[Any]
    now: float  # the time the activation ran at
    delivered: list[dict[str, str]]


def _failure(exc: Exception) -> str:
    return f"the activation raised {type(exc).__name__}: {exc}"


class _Skip(Exception):
    """The activation cannot be measured on this history (the reason is reported)."""


def _worker(stdin: TextIO, stdout: TextIO) -> int:
    """A worker's loop: a spec on the first line, then one JSON line per ``round`` line."""
    from . import _core, cli

    spec = json.loads(stdin.readline())
    # Only this loop writes to stdout, one JSON line at a time; what the workflow's module
    # and code print goes to stderr.
    sys.stdout = sys.stderr
    module: ModuleType = cli._load_module(spec["file"])
    workflows = cli._workflows_in(module)
    tokens = cli._callback_tokens()
    subjects = []
    from ._runtime.history import history_from_json

    for item in spec["histories"]:
        history = history_from_json(Path(item["path"]).read_bytes())
        subjects.append(_Subject(workflows[item["workflow"]], history, tokens, spec["quick"]))
    ready = {"implementation": _core.IMPLEMENTATION, "histories": [{
        "repeats": s.repeats, "replayed": s.replayed, "activation": {
            "number": s.activation.activation, "delivered": s.activation.delivered,
            "ends": s.activation.ends, "skipped": s.activation.skipped,
            "warm_skipped": s.activation.warm_skipped}}
        for s in subjects]}
    print(json.dumps(ready), file=stdout, flush=True)
    try:
        for line in stdin:
            if line.strip() != "round":
                break
            print(json.dumps([s.measure() for s in subjects]), file=stdout, flush=True)
    finally:
        for s in subjects:
            s.activation.close()
    return 0


# -- the parent: workers, rounds, report --------------------------------------------------------
class _Worker:
    def __init__(self, core: str, flag: str, spec: dict[str, Any]) -> None:
        env = dict(os.environ)
        # only the flag given: the two together are refused at import
        for other in ("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS", "LAMBDA_WORKFLOW_NO_EXTENSIONS"):
            env.pop(other, None)
        env[flag] = "1"
        self.core = core
        # The worker's stderr (what the workflow's code prints, warnings, a traceback) goes to
        # a file: a pipe nobody reads while the rounds run would fill and block it.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from lambda_workflow._bench import _worker; "
             "sys.exit(_worker(sys.stdin, sys.stdout))"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        self.ready: dict[str, Any] | None = None
        self.failure: str | None = None
        self.details = ""
        self.ready = self._read()
        loaded = self.ready and self.ready["implementation"]
        if loaded and loaded != core:
            # LAMBDA_WORKFLOW_NO_EXTENSIONS forces the pure twin, and the compiled core
            # refuses to be missing under LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS; a worker that
            # still loaded the other one measured nothing useful.
            self.failure = f"asked for the {core} core, the worker loaded the {loaded} core"

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().strip()
            self.failure = err.splitlines()[-1] if err else f"exit {self.proc.returncode}"
            self.details = err
            return None
        try:
            return json.loads(line)
        except ValueError:  # something in the worker wrote to its stdout file descriptor
            self.failure = self.details = f"the worker wrote {line.strip()[:200]!r}"
            return None

    def round(self) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ends the worker (its stdin closed: it leaves its loop) and closes the pipes."""
        for pipe in (self.proc.stdin, self.proc.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        self.proc.wait()


@dataclass(slots=True)
class _Samples:
    replay: list[float] = field(default_factory=list)
    activation: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    floor: dict[str, list[float]] = field(default_factory=dict)
    checked: dict[str, list[float]] = field(default_factory=dict)
    kind: dict[str, list[float]] = field(default_factory=dict)


def _scaled(stats: dict[str, float], factor: float) -> dict[str, float]:
    return {k: (v if k == "spread" else v * factor) for k, v in stats.items()}


def _report(inputs: list[_Input], workers: dict[str, _Worker],
            samples: dict[str, list[_Samples]], rounds: int, quick: bool,
            file: str) -> dict[str, Any]:
    from . import __version__

    cores = {}
    for core, _ in CORES:
        w = workers[core]
        cores[core] = {"implementation": w.ready["implementation"] if w.ready else None,
                       "measured": w.ready is not None and w.failure is None,
                       "error": w.failure}
    doc: dict[str, Any] = {
        "schema": SCHEMA, "lambda_workflow": __version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "rounds": rounds, "quick": quick, "module": file, "cores": cores, "histories": []}
    for i, item in enumerate(inputs):
        hist = item.history
        first = next((w.ready for w in workers.values() if w.ready), None)
        info = first["histories"][i] if first else {}
        entry: dict[str, Any] = {
            "path": item.path, "workflow": item.workflow, "workflow_id":
            hist.instance.workflow_id, "status": hist.instance.status.value}
        kinds: dict[str, int] = {}
        for op in _replayed(hist):
            kinds[op.kind] = kinds.get(op.kind, 0) + 1
        entry["operations"] = sum(kinds.values())
        per_core: dict[str, Any] = {}
        for core, _ in CORES:
            s = samples[core][i] if samples[core] else None
            if s is None or not s.replay:
                per_core[core] = None
                continue
            n = entry["operations"]  # per operation: null for a history without any
            per_core[core] = {
                "replay_ms": _scaled(_stats(s.replay), 1e3),
                "replay_per_op_us": _scaled(_stats(s.replay), 1e6 / n) if n else None,
                "floor_per_op_us": _scaled(_stats([sum(r) for r in zip(
                    *s.floor.values(), strict=True)]), 1e6 / n) if n else None,
                "checked_floor_per_op_us": _scaled(_stats([sum(r) for r in zip(
                    *s.checked.values(), strict=True)]), 1e6 / n) if n else None,
                "activation_ms": (_scaled(_stats(s.activation), 1e3) if s.activation
                                  else None),
                "activation_warm_ms": _scaled(_stats(s.warm), 1e3) if s.warm else None,
                "kinds": {kind: {
                    "per_op_us": _scaled(_stats(s.kind[kind]), 1e6 / count),
                    "floor_per_op_us": _scaled(_stats(s.floor[kind]), 1e6 / count),
                    "checked_floor_per_op_us": _scaled(_stats(s.checked[kind]), 1e6 / count)}
                    for kind, count in kinds.items()},
                "start_us": _scaled(_stats(s.kind.get(START) or [0.0]), 1e6),
            }
        replayed = info.get("replayed", {})
        entry["kinds"] = {kind: {"operations": count, "replayed": replayed.get(kind), **{
            core: per_core[core]["kinds"][kind] if per_core[core] else None
            for core, _ in CORES}} for kind, count in kinds.items()}
        entry["replay"] = {core: ({k: v for k, v in per_core[core].items() if k != "kinds"}
                                  if per_core[core] else None) for core, _ in CORES}
        c, py = per_core["c"], per_core["py"]
        entry["ratios"] = {
            "c_over_floor": _ratio(c, "replay_per_op_us", c, "floor_per_op_us"),
            "py_over_floor": _ratio(py, "replay_per_op_us", py, "floor_per_op_us"),
            "c_over_checked_floor": _ratio(c, "replay_per_op_us", c,
                                           "checked_floor_per_op_us"),
            "py_over_checked_floor": _ratio(py, "replay_per_op_us", py,
                                            "checked_floor_per_op_us"),
            "py_over_c": _ratio(py, "replay_per_op_us", c, "replay_per_op_us"),
            "activation_py_over_c": _ratio(py, "activation_ms", c, "activation_ms"),
            "activation_cold_over_warm_c": _ratio(c, "activation_ms", c,
                                                  "activation_warm_ms")}
        act = info.get("activation", {})
        entry["activation"] = {
            "activation": act.get("number") or None, "delivered": act.get("delivered", []),
            "ends": act.get("ends") or None, "skipped": act.get("skipped"),
            "warm_skipped": act.get("warm_skipped")}
        doc["histories"].append(entry)
    return doc


def _ratio(a: Any, ka: str, b: Any, kb: str) -> float | None:
    if not a or not b or not a.get(ka) or not b.get(kb) or not b[kb]["median"]:
        return None
    return float(a[ka]["median"] / b[kb]["median"])


def _replayed(history: Any) -> list[Any]:
    from ._runtime.engine import replay_inputs
    from ._runtime.repair import repair_view

    fenced = repair_view(history.operations).fenced
    return replay_inputs([op for op in history.operations if op.op_id not in fenced])[0]


def _fmt(stats: dict[str, float] | None, digits: int = 2) -> str:
    if stats is None:
        return "-"
    return f"{stats['median']:.{digits}f} ±{stats['spread'] * 50:.0f}%"


def _print_table(doc: dict[str, Any], out: TextIO) -> None:
    cores = doc["cores"]
    measured = [c for c in ("c", "py") if cores[c]["measured"]]
    print(f"lambda-workflow bench: {len(doc['histories'])} "
          f"histor{'y' if len(doc['histories']) == 1 else 'ies'} against {doc['module']}; "
          f"Python {doc['python']} {doc['machine']}; {doc['rounds']} rounds interleaved "
          f"({', '.join(measured)}); medians, ± half the spread between rounds", file=out)
    for core in ("c", "py"):
        if not cores[core]["measured"]:
            print(f"  the {'compiled core' if core == 'c' else 'pure twin'} was not measured: "
                  f"{cores[core]['error']}", file=out)
    for h in doc["histories"]:
        print(f"\n{h['path']}: workflow {h['workflow']} ({h['workflow_id']}), {h['status']}, "
              f"{h['operations']} operations", file=out)
        print(f"  {'kind':<10} {'ops':>6} {'replayed':>8} {'c us/op':>14} {'py us/op':>14} "
              f"{'floor us/op':>14} {'checked us/op':>14} {'c/floor':>8} {'c/checked':>9} "
              f"{'py/c':>6}", file=out)
        rows = [(k, v["operations"], v["replayed"], v.get("c"), v.get("py"))
                for k, v in h["kinds"].items()]
        for kind, count, replayed, c, py in rows:
            base = c or py or {}
            print(f"  {kind:<10} {count:>6} {replayed if replayed is not None else '-':>8} "
                  f"{_fmt(c and c['per_op_us']):>14} "
                  f"{_fmt(py and py['per_op_us']):>14} "
                  f"{_fmt(base.get('floor_per_op_us')):>14} "
                  f"{_fmt(base.get('checked_floor_per_op_us')):>14} "
                  f"{_ratio(c, 'per_op_us', c, 'floor_per_op_us') or 0:8.2f} "
                  f"{_ratio(c, 'per_op_us', c, 'checked_floor_per_op_us') or 0:9.2f} "
                  f"{_ratio(py, 'per_op_us', c, 'per_op_us') or 0:6.2f}", file=out)
        c, py = h["replay"]["c"], h["replay"]["py"]
        print(f"  {'all':<10} {h['operations']:>6} {'':>8} "
              f"{_fmt(c and c['replay_per_op_us']):>14} "
              f"{_fmt(py and py['replay_per_op_us']):>14} "
              f"{_fmt((c or py or {}).get('floor_per_op_us')):>14} "
              f"{_fmt((c or py or {}).get('checked_floor_per_op_us')):>14} "
              f"{h['ratios']['c_over_floor'] or 0:8.2f} "
              f"{h['ratios']['c_over_checked_floor'] or 0:9.2f} "
              f"{h['ratios']['py_over_c'] or 0:6.2f}", file=out)
        print(f"  whole replay: c {_fmt(c and c['replay_ms'], 3)} ms, py "
              f"{_fmt(py and py['replay_ms'], 3)} ms; workflow start before its first "
              f"operation: c {_fmt(c and c['start_us'])} us, py "
              f"{_fmt(py and py['start_us'])} us", file=out)
        act = h["activation"]
        if act["skipped"]:
            print(f"  activation: not measured: {act['skipped']}", file=out)
        else:
            print(f"  activation {act['activation']} on SQLite (load, deliver "
                  f"{', '.join(d['kind'] + ' ' + d['id'] for d in act['delivered'])}, "
                  f"{act['ends']}), replaying: c {_fmt(c and c['activation_ms'], 3)} ms, "
                  f"py {_fmt(py and py['activation_ms'], 3)} ms", file=out)
            if act["warm_skipped"]:
                print(f"  the same with the warm instance cache: not measured: "
                      f"{act['warm_skipped']}", file=out)
            else:
                print(f"  the same with the warm instance cache (continued from activation "
                      f"{act['activation'] - 1}): c {_fmt(c and c['activation_warm_ms'], 3)} "
                      f"ms, py {_fmt(py and py['activation_warm_ms'], 3)} ms; cold/warm c "
                      f"{h['ratios']['activation_cold_over_warm_c'] or 0:.2f}", file=out)


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """``lambda-workflow bench``: exit 0 when measured, 2 on bad input, 1 when a worker
    failed."""
    if args.rounds is not None and args.rounds < 1:
        print("lambda-workflow bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    try:
        # What the module prints as it loads and replays goes to stderr: stdout is the
        # table, or the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            file, _, inputs = _load_inputs(args.history, args.workflow)
    except BenchError as exc:
        print(f"lambda-workflow bench: {exc}", file=sys.stderr)
        return 2
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    spec = {"file": str(Path(file).resolve()), "quick": args.quick,
            "histories": [{"path": str(Path(i.path).resolve()), "workflow": i.workflow}
                          for i in inputs]}
    workers = {core: _Worker(core, flag, spec) for core, flag in CORES}
    samples: dict[str, list[_Samples]] = {core: [] for core, _ in CORES}
    try:
        if all(w.failure is not None for w in workers.values()):
            for w in workers.values():
                print(f"lambda-workflow bench: the {w.core} worker failed: "
                      f"{w.details or w.failure}", file=sys.stderr)
            return 1
        for core, w in workers.items():
            if w.failure is None:
                samples[core] = [_Samples() for _ in inputs]
        for _ in range(rounds):
            for core, w in workers.items():
                if w.failure is not None:
                    continue
                result = w.round()
                if result is None:
                    print(f"lambda-workflow bench: the {core} worker failed:\n{w.details}",
                          file=sys.stderr)
                    return 1
                for s, r in zip(samples[core], result, strict=True):
                    s.replay.append(r["replay"])
                    cold, warm = r["activation"]
                    if cold is not None:
                        s.activation.append(cold)
                    if warm is not None:
                        s.warm.append(warm)
                    for kind, t in r["floor"].items():
                        s.floor.setdefault(kind, []).append(t)
                    for kind, t in r["checked_floor"].items():
                        s.checked.setdefault(kind, []).append(t)
                    for kind, share in r["shares"].items():
                        s.kind.setdefault(kind, []).append(share * r["replay"])
                    for kind in r["floor"]:
                        s.kind.setdefault(kind, [])
    finally:
        for w in workers.values():
            w.close()
    for s in (x for v in samples.values() for x in v):
        for values in s.kind.values():
            if len(values) < len(s.replay):  # a kind with no time of its own in some round
                values.extend([0.0] * (len(s.replay) - len(values)))
    doc = _report(inputs, workers, samples, rounds, args.quick, file)
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print_table(doc, out)
    return 0


def add_parser(sub: Any) -> None:
    """The ``bench`` subcommand's arguments."""
    bench = sub.add_parser(
        "bench", help="measure the replay overhead of a workflow on its recorded histories: "
                      "per operation kind for the compiled core and the pure twin against "
                      "the floor, and a whole activation")
    bench.add_argument("history", nargs="+",
                       help="a history exported with `lambda-workflow history --json`")
    bench.add_argument("--workflow", required=True, metavar="FILE.py[:NAME]",
                       help="the module defining the workflow; NAME picks a workflow other "
                            "than the one the history names")
    bench.add_argument("--rounds", type=int, default=None,
                       help=f"rounds per core, interleaved (default {DEFAULT_ROUNDS}, "
                            f"{QUICK_ROUNDS} with --quick)")
    bench.add_argument("--quick", action="store_true",
                       help="fewer rounds and repeats: a rough figure in seconds")
    bench.add_argument("--json", action="store_true",
                       help=f"print the results as JSON (schema {SCHEMA!r})")
