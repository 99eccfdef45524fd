"""Child contexts: a group of operations inside the same instance, recorded as one result.

Design:

* A child context is a ``context`` operation of the scope that creates it. Its body runs
  with the context as the current scope (a ``ContextVar``, so the tasks a body starts
  inherit it and concurrent branches each keep their own). Operations made in a scope get
  ids within it: ``<context id>.<n>`` (``3.1``, ``3.2``; nested ``3.2.1``), numbered in the
  scope's own creation order. A scope's later ids therefore do not depend on whether the body
  of a context before them ran, or on how concurrent contexts interleaved.
* Root operations keep ``seq`` = their position (0, 1, ...), so histories without child
  contexts are unchanged and the replay core's fast path for ``ctx.call`` is untouched.
  Operations of child contexts are recorded with ``seq`` from :data:`SCOPED_SEQ_BASE` on, in
  creation order: a history lists every root operation, then every scoped one. The replay
  core holds all of them in that order; its ``bound`` is the number of root operations, and
  scoped operations are matched by the position :class:`Scope` gives them.
* When the body returns, the context operation is completed with ``{"v": <value>}`` (the
  value through the body's return annotation); when it raises, it is failed with the error's
  type and message and :class:`~lambda_workflow.ChildContextError` is raised (on the first
  execution and every replay alike). A result over the payload limit is recorded as
  ``{"replay_children": true}``: the body runs again on replay, matching its recorded
  operations (AWS's ReplayChildren).
* On replay, a finished context is delivered at its recorded stage, after the other outcomes
  of that stage (the replay core orders it so: it finished after its body's last outcome), and
  its body does not run. An unfinished one runs its body again over its recorded operations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import pydantic
import pydantic_core

from .. import _core
from ..errors import ChildContextError, NonDeterminismError, ServiceError
from ..models import OperationRecord, OperationState, Outcome, describe_validation_error

if TYPE_CHECKING:
    from types import FrameType

    from .replay import Replayer

__all__ = ["CURRENT", "SCOPED_SEQ_BASE", "Scope", "run_context", "scoped_layout"]

# ``seq`` of the first operation recorded inside a child context (root operations stay below).
SCOPED_SEQ_BASE = 1 << 40
# The recorded result of a context whose value was too large to record: replay runs the body.
REPLAY_CHILDREN = b'{"replay_children":true}'

_REQUEST: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(dict[str, int])
_RAW: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)
_ADAPTERS: dict[Any, pydantic.TypeAdapter[Any]] = {}


@dataclass(slots=True)
class Scope:
    """A running child context: the prefix of its operations' ids, how many it created so
    far, and the positions (in the replay core) of its recorded operations, in order."""

    owner: Replayer
    prefix: str
    recorded: Sequence[int] = field(default_factory=list)
    count: int = 0


CURRENT: ContextVar[Scope | None] = ContextVar("lambda_workflow_scope", default=None)


def scoped_layout(history: Sequence[OperationRecord]) -> tuple[int, dict[str, list[int]]]:
    """``(number of root operations, {context id: positions of its operations})``."""
    if not history or history[-1].seq < SCOPED_SEQ_BASE:
        return len(history), {}
    n_root = 0
    while history[n_root].seq < SCOPED_SEQ_BASE:
        n_root += 1
    groups: dict[str, list[int]] = {}
    for pos in range(n_root, len(history)):
        parent = history[pos].op_id.rpartition(".")[0]
        groups.setdefault(parent, []).append(pos)
    return n_root, groups


def adapter_for(result_type: Any) -> pydantic.TypeAdapter[Any]:
    """The adapter of a context's result type (made once per type)."""
    try:
        cached = _ADAPTERS.get(result_type)
    except TypeError:  # unhashable annotation
        return pydantic.TypeAdapter(result_type)
    if cached is None:
        cached = _ADAPTERS[result_type] = pydantic.TypeAdapter(result_type)
    return cached


def _woken(r: Replayer) -> set[str]:
    """The contexts with an operation (at any depth) whose outcome arrived in this
    activation, that was recorded by an earlier attempt of it (saved mid-activation, then
    crashed: the body may not have reached its waiting point), or that is a step attempt
    interrupted by a crash (only running the body records it as interrupted)."""
    woken = r._woken_contexts
    if woken is None:
        woken = r._woken_contexts = set()
        touched = [rec.op_id for rec in r._history if rec.created_in >= r._activation or (
            rec.kind == "step" and rec.state is OperationState.PENDING)]
        for op_id in [*r._staged, *touched]:
            parent = op_id.rpartition(".")[0]
            while parent and parent not in woken:
                woken.add(parent)
                parent = parent.rpartition(".")[0]
    return woken


def _error_payload(exc: BaseException) -> bytes:
    """The recorded failure of a context whose body raised ``exc``. A service's error keeps
    what :class:`ServiceError` carries, so it is raised again as one."""
    if type(exc) is ServiceError:
        return orjson.dumps({"type": exc.error_type, "message": exc.message, "details": {
            "service_error": {"details": exc.details, "service": exc.service,
                              "call_id": exc.call_id}}}, default=repr)
    if isinstance(exc, ChildContextError):
        return orjson.dumps({"type": exc.error_type, "message": exc.message, "details": None})
    return orjson.dumps({"type": type(exc).__name__, "message": str(exc), "details": None})


def _raised(name: str, error_type: str, message: str, details: Any) -> Exception:
    """What a failed context raises, from its recorded failure (first run and replay)."""
    if isinstance(details, dict) and isinstance(details.get("service_error"), dict):
        inner = details["service_error"]
        return ServiceError(error_type, message, inner.get("details"),
                            service=inner.get("service"), call_id=inner.get("call_id"))
    return ChildContextError(name, error_type, message)


async def run_context(r: Replayer, name: str, index: int | None,
                      body: Callable[[], Awaitable[Any]], adapter: pydantic.TypeAdapter[Any],
                      frame: FrameType | None) -> Any:
    """Run ``body`` as a child context named ``name`` of the current scope (``index``: its
    position in a batch), or return its recorded outcome."""
    idx = r._index
    if idx.sealed:
        raise asyncio.CancelledError
    r.call = r._scoped_call  # from now on ctx.call looks at the current scope
    request = {} if index is None else {"index": index}
    pos, op_id, rseq = r._next_operation()
    try:
        decision, future, rec, payload = idx.step(pos, "context", name, _REQUEST, None, _RAW,
                                                  request, None)
    except _core.ReplayMismatch as exc:
        raise r._nondeterminism(exc, "context", name, frame) from None
    replay_children = False
    if decision == _core.NEW:
        r.new_operation(pos, "context", name, payload, frame, op_id=op_id, record_seq=rseq)
    elif decision == _core.PENDING:
        idx.pending.remove(op_id)  # a context waits on its body, not on a reply
        if (op_id not in _woken(r) and rec.created_in < r._activation and not r._relaxed
                and r._cancel is None):
            # Nothing under it got an outcome in this activation: its body would replay to
            # the same point and wait again. It waits without running. (Not when a cancel is
            # delivered to the workflow: it must reach the body.)
            try:
                await r._loop.create_future()
            except asyncio.CancelledError as cancel:
                if idx.sealed:
                    # The activation is over (it suspended, failed or was abandoned): the
                    # cancel tears the coroutine down; the body has nothing to run. (Running
                    # it here ran the function of every waiting map item once more at each
                    # suspension.)
                    raise
                return await _cancel_inside(r, name, op_id, body, adapter, cancel)
    elif rec.state is OperationState.COMPLETED and rec.result == REPLAY_CHILDREN:
        idx.waiting.pop(pos, None)
        replay_children = True
    else:
        try:
            wrapped = await future
        except ServiceError as exc:
            raise _raised(name, exc.error_type, exc.message, exc.details) from None
        return _decode(r, adapter, wrapped, name, op_id)
    return await _run_body(r, name, op_id, body, adapter, replay_children)


async def _cancel_inside(r: Replayer, name: str, op_id: str,
                         body: Callable[[], Awaitable[Any]], adapter: pydantic.TypeAdapter[Any],
                         cancel: asyncio.CancelledError) -> Any:
    """A context waiting without running its body was cancelled (a batch that completed, a
    timeout): run the body to where it waits, replaying its operations, and cancel it there,
    so its handlers run as they would have had it been running."""
    inner = asyncio.ensure_future(_run_body(r, name, op_id, body, adapter, False))
    r._spinning += 1
    try:
        while not inner.done():
            await asyncio.sleep(0)
            # Every task waits but the other contexts doing this (each has one wake-up
            # queued): the body is where it waited.
            if len(r._loop._ready) < r._spinning:
                break
    finally:
        r._spinning -= 1
    if inner.done():
        inner.result()
        raise cancel
    inner.cancel(*cancel.args)
    return await inner


async def _run_body(r: Replayer, name: str, op_id: str, body: Callable[[], Awaitable[Any]],
                    adapter: pydantic.TypeAdapter[Any], replay_children: bool) -> Any:
    """Run a context's body in its scope and record its outcome."""
    idx = r._index
    scope = Scope(r, op_id, r._scoped.get(op_id, ()))
    token = CURRENT.set(scope)
    try:
        value = await body()
        if scope.count < len(scope.recorded) and not idx.sealed:
            missing = r._history[scope.recorded[scope.count]]
            r._mismatch = NonDeterminismError(
                f"workflow {r.workflow.name!r} ({r.workflow_id}): child context {name!r} "
                f"({op_id}) finished after creating {scope.count} operation(s), but its "
                f"history recorded {len(scope.recorded)}; the first missing one is "
                f"{missing.op_id}, {missing.kind} {missing.name!r}")
            raise r._mismatch
        try:
            encoded = _core.encode_value(adapter, value)
            value = adapter.validate_json(encoded)
        except (pydantic.ValidationError, pydantic_core.PydanticSerializationError) as bad:
            raise ChildContextError(name, "ContextResultError",
                                    f"the body returned a value that is not valid: "
                                    f"{describe_validation_error(bad)}") from None
    except (asyncio.CancelledError, NonDeterminismError):
        raise
    except Exception as exc:
        if replay_children or idx.sealed or r._mismatch is not None or r._fatal is not None:
            raise
        payload = _error_payload(exc)
        _record(r, op_id, OperationState.FAILED, payload)
        error = orjson.loads(payload)
        raise _raised(name, error["type"], error["message"], error["details"]) from None
    finally:
        CURRENT.reset(token)
    if not replay_children and not idx.sealed:
        result = b'{"v":' + encoded + b"}"
        if r._payload_limit is not None and len(result) > r._payload_limit:
            result = REPLAY_CHILDREN
        _record(r, op_id, OperationState.COMPLETED, result)
    return value


def _decode(r: Replayer, adapter: pydantic.TypeAdapter[Any], wrapped: Any, name: str,
            op_id: str) -> Any:
    try:
        return adapter.validate_json(orjson.dumps(wrapped["v"]))
    except (pydantic.ValidationError, KeyError, TypeError) as exc:
        detail = (describe_validation_error(exc) if isinstance(exc, pydantic.ValidationError)
                  else "not a recorded context result")
        r._mismatch = NonDeterminismError(
            f"workflow {r.workflow.name!r} ({r.workflow_id}): the recorded result of child "
            f"context {name!r} ({op_id}) is not valid: {detail}; did its return type change "
            "while the workflow ran?")
        raise r._mismatch from None


def _record(r: Replayer, op_id: str, state: OperationState, result: bytes) -> None:
    """Record a context's outcome: on its record if it was created in this activation and not
    saved yet, else as an outcome of this activation."""
    for i in range(len(r.new_operations) - 1, r._persisted - 1, -1):
        op = r.new_operations[i]
        if op.op_id == op_id:
            op.state, op.result = state, result
            op.resolved_in = max(r._index.stage, 0)
            op.resolved_at = r.now()
            return
    r.step_outcomes.append(Outcome(op_id, state, result))
