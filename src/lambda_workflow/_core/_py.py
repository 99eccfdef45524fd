"""The replay core, pure Python: the reference implementation and the single source of types.

Everything an activation does per operation lives here: request encoding and digests,
matching a new operation against the recorded history, the schedule that delivers recorded
outcomes in the order they arrived, and decoding outcomes into the futures the workflow
awaits. ``ext/_c.pyx`` is the compiled twin of this module (same names, same behaviour);
``lambda_workflow._core`` picks one.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Generator, Iterable, Mapping, Sequence
from types import FrameType
from typing import Any, Protocol, TypeVar

import orjson
import pydantic
from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError

from ..errors import INTEGER_LIMIT, ServiceError

__all__ = [
    "NEW",
    "PENDING",
    "READY",
    "WAIT",
    "CallFuture",
    "ReplayHooks",
    "ReplayIndex",
    "ReplayMismatch",
    "decode_operations",
    "decode_value",
    "dedup_id",
    "digest",
    "encode_value",
    "mismatch_advice",
    "operation_id",
]

T = TypeVar("T")
_SORT = orjson.OPT_SORT_KEYS
_PENDING_STATE = "pending"
_COMPLETED_STATE = "completed"

# What ReplayIndex.call decided for an operation the workflow just created.
NEW = 0  # not in the history: a new operation for the outbox
PENDING = 1  # recorded, and no reply yet: never resolves in this activation
READY = 2  # its outcome was delivered: the future is resolved already
WAIT = 3  # its outcome belongs to a later stage: the future resolves when it is delivered


# pydantic's TypeAdapter methods are Python wrappers that pass their keyword defaults on to
# pydantic-core's serializer and validator (pydantic 2.13: dump_json -> serializer.to_json,
# validate_json -> validator.validate_json, ...); with the defaults they do nothing else. The
# replay step calls the serializer and validator of a TypeAdapter directly (about 0.3-0.5 us a
# call less), and any other adapter (a Serdes' adapter, a test's) through its methods.
def _dump_json(adapter: Any, value: object) -> bytes:
    if type(adapter) is TypeAdapter:
        return adapter.serializer.to_json(value)
    out: bytes = adapter.dump_json(value)
    return out


def _dump_python_json(adapter: Any, value: object) -> Any:
    if type(adapter) is TypeAdapter:
        return adapter.serializer.to_python(value, mode="json")
    return adapter.dump_python(value, mode="json")


def _validate_json(adapter: Any, payload: bytes) -> Any:
    if type(adapter) is TypeAdapter:
        return adapter.validator.validate_json(payload)
    return adapter.validate_json(payload)


def _validate_python(adapter: Any, value: object) -> Any:
    if type(adapter) is TypeAdapter:
        return adapter.validator.validate_python(value)
    return adapter.validate_python(value)


def encode_value(adapter: TypeAdapter[Any], value: object) -> bytes:
    """Serialize ``value`` with its pydantic adapter to canonical JSON bytes (sorted keys).

    Canonical bytes make the digest independent of dict insertion order.
    """
    return _canonical(adapter.dump_python(value, mode="json"))


def _canonical(data: object) -> bytes:
    try:
        return orjson.dumps(data, option=_SORT)
    except orjson.JSONEncodeError as exc:
        # orjson refuses integers beyond 64 bits: say so with the protocol's limit.
        raise PydanticSerializationError(f"{exc}: {INTEGER_LIMIT}") from None


def decode_value(adapter: TypeAdapter[Any], payload: bytes) -> Any:
    """Validate recorded JSON bytes into the adapter's type."""
    return adapter.validate_json(payload)


def decode_operations(rows: Iterable[Sequence[Any]], codec: Any) -> list[Any]:
    """The operation records of a history read from a store, one per row.

    Each row holds, in this order: workflow_id, op_id, seq, kind, name, request,
    request_digest, site, state, sent, result, created_in, resolved_in, created_at,
    resolved_at (the SQLite store's columns). ``request`` and ``result`` pass through
    ``codec.decode`` (a :class:`~lambda_workflow.codecs.PayloadCodec`; ``result`` may be
    ``None``); ``state`` becomes an :class:`~lambda_workflow.models.OperationState`, ``sent`` a
    bool. The compiled twin builds the same records without a Python frame per row.

    Raises:
        ValueError: a row does not have 15 fields, or its state is not an OperationState.
        lambda_workflow.codecs.CodecError: a payload's codec envelope cannot be read.
    """
    from ..models import OperationRecord, OperationState

    out = []
    for row in rows:
        if len(row) != _OPERATION_FIELDS:
            raise ValueError(f"an operation row has {_OPERATION_FIELDS} fields, got {len(row)}")
        (wid, op_id, seq, kind, name, request, request_digest, site, state, sent, result,
         created_in, resolved_in, created_at, resolved_at) = row
        out.append(OperationRecord(
            wid, op_id, seq, kind, name, codec.decode(request), request_digest, site,
            OperationState(state), bool(sent),
            None if result is None else codec.decode(result), created_in, resolved_in,
            created_at, resolved_at))
    return out


_OPERATION_FIELDS = 15


def digest(payload: bytes) -> str:
    """A short, stable digest of an encoded request (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def operation_id(scope: str, seq: int) -> str:
    """The id of the ``seq``-th (from 0) operation created in ``scope``.

    Ids follow creation order, which the workflow's code fixes; they depend on nothing about
    the machine, the install path or the Python version, and not on comments, blank lines or
    code outside the workflow. The root scope is ``""``, giving ids ``"1"``, ``"2"``, ...
    """
    return f"{scope}.{seq + 1}" if scope else str(seq + 1)


def dedup_id(workflow_id: str, kind: str, key: str) -> str:
    """A deterministic FIFO deduplication id (64 hex chars, within SQS's 128-char limit)."""
    return hashlib.sha256(f"{kind}\x00{workflow_id}\x00{key}".encode()).hexdigest()


_PATCH = ('if ctx.patched("<patch-id>"): <new code> else: <old code> (see docs/versioning.md)')


def mismatch_advice(field: str, recorded_kind: str) -> str:
    """What to do about an operation that differs from the recorded one in ``field``, for
    the ``NonDeterminismError`` the runtime raises (both cores give the same text)."""
    if field == "request" and recorded_kind == "timer":
        return ("A changed duration is a change of the workflow's code: instances started "
                "before it must replay the recorded one. Keep both with " + _PATCH)
    if field == "request":
        return ("If the code that builds this request changed on purpose, instances started "
                "before the change must replay the recorded request: keep both with "
                + _PATCH + ". Otherwise build requests only from the workflow's input and "
                "recorded results (not the clock or random numbers)")
    return ("If the workflow's code changed on purpose, instances started before the change "
            "must replay the recorded operations: run the new code only in new instances "
            "with " + _PATCH)


class ReplayMismatch(Exception):
    """The operation created at ``seq`` differs from the recorded one in ``field``.

    ``payload`` is the new request's encoding, for a field-by-field report; ``advice`` says
    what to do about it (:func:`mismatch_advice`).
    """

    def __init__(self, seq: int, field: str, recorded: Any, payload: bytes = b"") -> None:
        self.seq = seq
        self.field = field
        self.recorded = recorded
        self.payload = payload
        self.advice = mismatch_advice(field, getattr(recorded, "kind", ""))
        super().__init__(f"operation #{seq + 1} differs from the history in its {field}")


class CallFuture(asyncio.Future[T]):
    """The awaitable a durable operation returns: a future that tells its index when the
    workflow blocks on it, so an outcome nothing else competes with is delivered at once."""

    __slots__ = ("adapter", "index", "name", "owner", "seq")

    def __init__(self, index: ReplayIndex, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.index = index
        self.seq = -1
        self.adapter: TypeAdapter[Any] | None = None
        self.name = ""
        self.owner: object = None

    def __await__(self) -> Generator[Any, None, T]:
        if self.seq >= 0:
            self.index.on_await(self)
        return super().__await__()


class ReplayHooks(Protocol):
    """What the runtime does where the core needs a decision or an error message."""

    def invalid_reply(self, record: Any, future: CallFuture[Any], staged_payload: bytes | None,
                      exc: pydantic.ValidationError) -> None:
        """A reply does not validate against its response type."""

    def mismatch(self, exc: ReplayMismatch, kind: str, name: str,
                 frame: FrameType | None) -> BaseException:
        """The error for an operation that differs from the recorded one."""
        ...

    def bad_request(self, exc: Exception, service: Any, frame: FrameType | None) -> BaseException:
        """The error for a request that does not validate."""
        ...

    def not_a_service(self, obj: object, frame: FrameType | None) -> BaseException:
        """The error for ``ctx.call`` given something that is not a Service."""
        ...

    def new_operation(self, seq: int, kind: str, name: str, payload: bytes,
                      frame: FrameType | None) -> None:
        """Record a new operation (it may raise, e.g. a non-determinism error)."""


# Operation kinds recorded already resolved, in the activation that made them.
RESOLVED_AT_CREATION = frozenset({"step", "patch"})


class ReplayIndex:
    """The recorded operations of one instance, and the schedule that delivers their outcomes.

    Operations are matched in creation order (:meth:`call`). Outcomes are delivered in
    *stages*: one per activation that recorded them, oldest first, then this activation's new
    replies (``staged``), so every replay follows the order in which replies arrived.

    Args:
        operations: The recorded operations, in ``seq`` order.
        staged: ``op_id -> (ok, payload)`` for pending operations whose reply arrived in this
            activation (payload: the value's JSON if ok, else the error's JSON).
        activation: This activation's number (the stage of the staged replies).
        loop: The workflow's event loop (for futures, and to see whether a task is runnable).
        hooks: The runtime's answers where the core needs a decision or an error message.
    """

    __slots__ = (
        "_by_stage",
        "_ops",
        "_pos",
        "_schedule",
        "_stage",
        "_staged",
        "_unsorted",
        "accepted",
        "activation",
        "barrier",
        "bound",
        "consumed",
        "hooks",
        "loop",
        "n_recorded_stages",
        "pending",
        "sealed",
        "seq",
        "waiting",
    )

    def __init__(self, operations: Sequence[Any], staged: Mapping[str, tuple[bool, bytes]],
                 activation: int, loop: Any, hooks: ReplayHooks) -> None:
        self._ops = list(operations)
        self._staged = dict(staged)
        # on_await never delivers a stage past this one early (the runtime delivers a
        # cancellation after it first)
        self.barrier = sys.maxsize
        self.activation = activation
        self.loop = loop
        self.hooks = hooks
        self.seq = 0
        # Root operations are at positions 0..bound-1 (position = their seq); operations of
        # child contexts follow them (the runtime matches those by position itself).
        self.bound = len(self._ops)
        self.sealed = False
        by_stage: dict[int, list[int]] = {}
        contexts: dict[int, list[int]] = {}
        for seq, rec in enumerate(self._ops):
            stage = self._stage_of(rec)
            # Steps and patch markers resolve where the code reaches them, not at a stage:
            # an activation that recorded only those (saved mid-activation, then crashed)
            # delivered nothing, and must not hold back the operations made after them.
            if stage >= 0 and rec.kind not in RESOLVED_AT_CREATION:
                (contexts if rec.kind == "context" else by_stage).setdefault(
                    stage, []).append(seq)
        # A child context finished after the outcome its body waited on last: its result is
        # delivered after the other outcomes of its stage.
        for stage, seqs in contexts.items():
            by_stage.setdefault(stage, []).extend(seqs)
        self._by_stage = by_stage
        schedule = sorted(s for s in by_stage if s != activation or not self._staged)
        self.n_recorded_stages = len(schedule)
        if self._staged:
            schedule.append(activation)
        self._schedule = schedule
        self._pos = 0
        self._stage = -1
        self.waiting: dict[int, CallFuture[Any]] = {}
        self.pending: list[str] = []
        self.accepted: list[str] = []
        self.consumed: set[str] = set()
        # request adapters whose dump_json is not canonical (see _fast_match)
        self._unsorted: set[TypeAdapter[Any]] = set()

    def __len__(self) -> int:
        return len(self._ops)

    def _stage_of(self, rec: Any) -> int:
        if rec.state != _PENDING_STATE:
            return rec.resolved_in or 0
        return self.activation if rec.op_id in self._staged else -1

    @property
    def stage(self) -> int:
        """The activation whose outcomes were delivered last (-1 before the first stage):
        the code running now first ran in that activation."""
        return self._stage

    @property
    def next_stage(self) -> int:
        """The stage :meth:`advance` delivers next, or -1 when none is left."""
        return self._schedule[self._pos] if self._pos < len(self._schedule) else -1

    @property
    def new_allowed(self) -> bool:
        """Whether a new operation may appear now: from the last recorded stage on (an
        activation that crashed after recording replies left its new calls to be made
        again there); earlier, a call the history lacks means the code changed."""
        return self._pos >= self.n_recorded_stages

    @property
    def final_stage(self) -> bool:
        """Whether this activation's own replies are being delivered."""
        return self._pos > self.n_recorded_stages

    def match(self, seq: int, kind: str, name: str, payload: bytes) -> Any:
        """Return the record of operation ``seq`` if it was recorded, else ``None`` (a new one).

        Raises:
            ReplayMismatch: the record's kind, name or request differs. Requests are compared
                as their canonical bytes (the recorded digest is a function of them).
            ValueError: ``seq`` is negative.
        """
        if seq < 0:
            raise ValueError(f"operation seq must be >= 0, got {seq}")
        if seq >= len(self._ops):
            return None
        rec = self._ops[seq]
        if rec.kind != kind:
            raise ReplayMismatch(seq, "kind", rec, payload)
        if rec.name != name:
            raise ReplayMismatch(seq, "name", rec, payload)
        if rec.request != payload:
            raise ReplayMismatch(seq, "request", rec, payload)
        return rec

    def _fast_match(self, seq: int, kind: str, name: str, request_adapter: TypeAdapter[Any],
                    request: object) -> Any:
        """The record of operation ``seq`` if its request's ``dump_json`` bytes equal the
        recorded ones (and its kind and name match), else ``None`` (then :meth:`match` decides,
        on the canonical encoding).

        Why equal bytes suffice: the recorded request ``R`` is canonical, ``R ==
        orjson.dumps(orjson.loads(R), OPT_SORT_KEYS)`` (orjson writes floats in their shortest
        round-trip form, refuses integers beyond 64 bits and writes each key once, so parsing
        and re-encoding its own output gives the same bytes). ``dump_json(x)`` and
        ``dump_python(x, mode="json")`` are pydantic's two renderings of the same JSON value
        of ``x`` (the same serializers; floats in shortest round-trip form too). If
        ``dump_json(x) == R``, the JSON value of ``x`` is ``orjson.loads(R)``, so its canonical
        encoding is ``orjson.dumps(orjson.loads(R), OPT_SORT_KEYS) == R``: the fast check
        accepts only what the canonical check accepts. When the bytes differ (a new
        operation, a changed request, or a model whose fields are not in sorted order) the
        canonical check runs as before; tests/core checks the argument's premise (a
        ``dump_json`` output that is canonical equals the canonical encoding) on random
        models.
        """
        if seq >= len(self._ops) or seq < 0 or request_adapter in self._unsorted:
            return None
        rec = self._ops[seq]
        if rec.kind != kind or rec.name != name:
            return None
        try:
            fast = _dump_json(request_adapter, request)
        except AttributeError:  # not a TypeAdapter (a Serdes' adapter has no dump_json)
            self._unsorted.add(request_adapter)
            return None
        except (PydanticSerializationError, TypeError, ValueError):
            return None  # the canonical encoding reports it
        return rec if fast == rec.request else None

    def step(self, seq: int, kind: str, name: str, request_adapter: TypeAdapter[Any],
             request_model: type | None, response_adapter: TypeAdapter[Any],
             request: object, owner: object = None) -> tuple[int, CallFuture[Any], Any, bytes]:
        """One replay step: validate and encode the request of the ``seq``-th operation, match
        it against the history, and return ``(decision, future, record, payload)``.

        A recorded outcome that was already delivered resolves the future now (``READY``);
        one of a later stage resolves it when delivered (``WAIT``); a call without a reply
        never resolves in this activation (``PENDING``); a new operation is ``NEW``. An
        instance of exactly ``request_model`` is not validated again (pydantic would return
        it unchanged). ``owner`` (the Service) rides on the future for error messages.

        Raises:
            ReplayMismatch: the operation differs from the recorded one.
            pydantic.ValidationError: the request is not valid for ``request_adapter``.
        """
        if request_model is None or type(request) is not request_model:
            request = _validate_python(request_adapter, request)
        rec = self._fast_match(seq, kind, name, request_adapter, request)
        if rec is not None:
            payload = rec.request
        else:
            payload = _canonical(_dump_python_json(request_adapter, request))
            rec = self.match(seq, kind, name, payload)
            if rec is not None and request_adapter not in self._unsorted:
                # the canonical bytes matched where dump_json's did not: this adapter's JSON
                # is not canonical (fields or dict keys out of order); stop trying it
                self._unsorted.add(request_adapter)
        future: CallFuture[Any] = CallFuture(self, self.loop)
        if rec is None:
            return NEW, future, None, payload
        stage = self._stage_of(rec)
        if stage < 0:
            self.pending.append(rec.op_id)
            return PENDING, future, rec, payload
        future.adapter = response_adapter
        future.name = name
        future.owner = owner
        if stage <= self._stage:
            self.settle(rec, future)
            return READY, future, rec, payload
        future.seq = seq
        self.waiting[seq] = future
        return WAIT, future, rec, payload

    def call_service(self, service: Any, request: object,
                     frame: FrameType | None) -> asyncio.Future[Any]:
        """``ctx.call``: the next operation is a call of ``service`` with ``request``.

        Returns the future the workflow awaits. After suspension (``sealed``) nothing is
        recorded: the future is cancelled.
        """
        if self.sealed:
            future: asyncio.Future[Any] = self.loop.create_future()
            future.cancel()
            return future
        try:
            name = service.name
            request_adapter = service.request_adapter
            request_model = service.request_model
            response_adapter = service.response_adapter
        except AttributeError:
            raise self.hooks.not_a_service(service, frame) from None
        seq = self.seq
        self.seq = seq + 1
        # past the recorded root operations: a position no record has (a new operation)
        pos = seq if seq < self.bound else seq + len(self._ops)
        try:
            decision, future, _, payload = self.step(pos, "call", name, request_adapter,
                                                     request_model, response_adapter, request,
                                                     service)
        except ReplayMismatch as exc:
            raise self.hooks.mismatch(exc, "call", name, frame) from None
        except (pydantic.ValidationError, PydanticSerializationError, TypeError,
                ValueError) as exc:
            raise self.hooks.bad_request(exc, service, frame) from None
        if decision == NEW:
            self.hooks.new_operation(seq, "call", name, payload, frame)
            self.pending.append(operation_id("", seq))
        return future

    def settle(self, rec: Any, future: CallFuture[Any]) -> None:
        """Resolve ``future`` with the decoded outcome of ``rec`` (recorded, or staged in this
        activation): the validated value, or the :class:`ServiceError` the service replied."""
        staged = self._staged.get(rec.op_id) if rec.state == _PENDING_STATE else None
        if staged is not None:
            ok, payload = staged
            self.consumed.add(rec.op_id)
        else:
            ok, payload = rec.state == _COMPLETED_STATE, rec.result or b"null"
        if future.done():
            # cancelled (the workflow was cancelled while awaiting it): recorded, ignored
            if staged is not None:
                self.accepted.append(rec.op_id)
            return
        if ok:
            try:
                value = _validate_json(future.adapter, payload)
            except pydantic.ValidationError as exc:
                self.hooks.invalid_reply(rec, future, payload if staged is not None else None, exc)
                return
            future.set_result(value)
        else:
            err = orjson.loads(payload)
            future.set_exception(ServiceError(
                err.get("type", "Error"), err.get("message", ""), err.get("details"),
                service=future.name, call_id=rec.op_id))
        if staged is not None:
            self.accepted.append(rec.op_id)

    def on_await(self, future: CallFuture[Any]) -> None:
        """The workflow blocks on ``future``. If it is the only operation waiting, its outcome
        is the next stage and no task is runnable, nothing could happen before that stage is
        delivered: deliver it now. A workflow that awaits its calls one at a time then replays
        without an event-loop round per call; the order of delivery is unchanged."""
        seq = future.seq
        waiting = self.waiting
        pos = self._pos
        if (len(waiting) != 1 or pos >= len(self._schedule) or seq not in waiting
                or self.loop.has_ready()):
            return
        rec = self._ops[seq]
        stage = self._stage_of(rec)
        if self._schedule[pos] != stage or stage > self.barrier:
            return
        self._pos = pos + 1
        self._stage = stage
        del waiting[seq]
        future.seq = -1
        self.settle(rec, future)

    def advance(self) -> bool:
        """Deliver the next stage: settle, in operation order, the waiting operations whose
        outcomes it holds. Returns ``False`` when every stage was delivered."""
        pos = self._pos
        if pos >= len(self._schedule):
            return False
        stage = self._schedule[pos]
        self._pos = pos + 1
        self._stage = stage
        waiting = self.waiting
        for seq in self._by_stage.get(stage, ()):
            future = waiting.pop(seq, None)
            if future is not None:
                future.seq = -1
                self.settle(self._ops[seq], future)
        return True

    def settle_unreached(self) -> None:
        """Accept this activation's replies that the replay never delivered (the workflow
        ended at an earlier stage, or never made the call again): valid replies to pending
        calls are recorded, so nothing that arrived is lost. Invalid ones are reported."""
        for pos, rec in enumerate(self._ops):
            staged = self._staged.get(rec.op_id) if rec.state == _PENDING_STATE else None
            if staged is None or rec.op_id in self.consumed:
                continue
            self.consumed.add(rec.op_id)
            future = self.waiting.get(pos)
            if future is not None and staged[0]:
                try:
                    _validate_json(future.adapter, staged[1])
                except pydantic.ValidationError as exc:
                    self.hooks.invalid_reply(rec, future, staged[1], exc)
                    continue
            self.accepted.append(rec.op_id)
