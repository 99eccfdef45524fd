# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The replay core, compiled: the twin of ``lambda_workflow/_core/_py.py``.

Same names, same behaviour, same docstrings' contracts (the pure twin is the reference and the
source of types; see its docstrings). What changes is only how the per-operation work is
executed: ReplayIndex is an extension type with typed fields, and the replay step (validate,
encode, digest, match, schedule, decode, resolve) runs without Python frames in between.
"""

import asyncio
import hashlib

import orjson
import pydantic

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
    "decode_value",
    "dedup_id",
    "digest",
    "encode_value",
    "mismatch_advice",
    "operation_id",
]

cdef object _dumps = orjson.dumps
cdef object _JSONEncodeError = orjson.JSONEncodeError
cdef object _loads = orjson.loads
cdef object _blake2b = hashlib.blake2b
cdef object _sha256 = hashlib.sha256
cdef int _SORT = orjson.OPT_SORT_KEYS
cdef object _ValidationError = pydantic.ValidationError
cdef object _Future = asyncio.Future
cdef object _future_init = asyncio.Future.__init__
cdef object _future_await = asyncio.Future.__await__
cdef str _PENDING_STATE = "pending"
cdef frozenset _RESOLVED_AT_CREATION = frozenset({"step", "patch"})
cdef str _COMPLETED_STATE = "completed"

NEW = 0
PENDING = 1
READY = 2
WAIT = 3
cdef int C_NEW = 0, C_PENDING = 1, C_READY = 2, C_WAIT = 3


cdef bytes _canonical(object data):
    try:
        return _dumps(data, option=_SORT)
    except _JSONEncodeError as exc:
        raise PydanticSerializationError(f"{exc}: {INTEGER_LIMIT}") from None


def encode_value(adapter, value):
    return _canonical(adapter.dump_python(value, mode="json"))


def decode_value(adapter, payload):
    return adapter.validate_json(payload)


def digest(payload):
    return _blake2b(payload, digest_size=16).hexdigest()


def operation_id(str scope, Py_ssize_t seq):
    if scope:
        return f"{scope}.{seq + 1}"
    return str(seq + 1)


def dedup_id(str workflow_id, str kind, str key):
    return _sha256(f"{kind}\x00{workflow_id}\x00{key}".encode()).hexdigest()


_PATCH = ('if ctx.patched("<patch-id>"): <new code> else: <old code> (see docs/versioning.md)')


def mismatch_advice(str field, str recorded_kind):
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
    def __init__(self, seq, field, recorded, payload=b""):
        self.seq = seq
        self.field = field
        self.recorded = recorded
        self.payload = payload
        self.advice = mismatch_advice(field, getattr(recorded, "kind", ""))
        super().__init__(f"operation #{seq + 1} differs from the history in its {field}")


class CallFuture(_Future):
    __slots__ = ("adapter", "index", "name", "owner", "seq")

    def __init__(self, index, loop):
        _future_init(self, loop=loop)
        self.index = index
        self.seq = -1
        self.adapter = None
        self.name = ""
        self.owner = None

    def __await__(self):
        if self.seq >= 0:
            (<ReplayIndex?>self.index).on_await(self)
        return _future_await(self)


class ReplayHooks:
    """Protocol only (see the pure twin); present so both twins export the same names."""


cdef object _bad_request_errors = (_ValidationError, PydanticSerializationError, TypeError,
                                   ValueError)


from cpython.pyport cimport PY_SSIZE_T_MAX


cdef class ReplayIndex:
    cdef list _ops
    cdef dict _staged
    cdef dict _by_stage
    cdef list _schedule
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _stage
    cdef public Py_ssize_t activation
    cdef public Py_ssize_t n_recorded_stages
    cdef public object loop
    cdef public object hooks
    cdef public Py_ssize_t seq
    cdef public Py_ssize_t bound
    cdef public bint sealed
    cdef public Py_ssize_t barrier
    cdef public dict waiting
    cdef public list pending
    cdef public list accepted
    cdef public set consumed

    def __init__(self, operations, staged, Py_ssize_t activation, loop, hooks):
        cdef Py_ssize_t seq
        cdef Py_ssize_t stage
        self._ops = list(operations)
        self._staged = dict(staged)
        self.barrier = PY_SSIZE_T_MAX
        self.activation = activation
        self.loop = loop
        self.hooks = hooks
        self.seq = 0
        # Root operations are at positions 0..bound-1 (see _py.py).
        self.bound = len(self._ops)
        self.sealed = False
        by_stage = {}
        contexts = {}
        for seq in range(len(self._ops)):
            stage = self._stage_of(self._ops[seq])
            # Steps and patch markers resolve where the code reaches them (see _py.py).
            if stage >= 0 and self._ops[seq].kind not in _RESOLVED_AT_CREATION:
                (contexts if self._ops[seq].kind == "context" else by_stage).setdefault(
                    stage, []).append(seq)
        # A finished child context is delivered after the other outcomes of its stage.
        for stage_key, seqs in contexts.items():
            by_stage.setdefault(stage_key, []).extend(seqs)
        self._by_stage = by_stage
        schedule = sorted([s for s in by_stage if s != activation or not self._staged])
        self.n_recorded_stages = len(schedule)
        if self._staged:
            schedule.append(activation)
        self._schedule = schedule
        self._pos = 0
        self._stage = -1
        self.waiting = {}
        self.pending = []
        self.accepted = []
        self.consumed = set()

    def __len__(self):
        return len(self._ops)

    cdef Py_ssize_t _stage_of(self, rec) except? -2:
        if rec.state != _PENDING_STATE:
            return rec.resolved_in or 0
        return self.activation if rec.op_id in self._staged else -1

    @property
    def stage(self):
        return self._stage

    @property
    def next_stage(self):
        if self._pos < len(self._schedule):
            return self._schedule[self._pos]
        return -1

    @property
    def new_allowed(self):
        return self._pos >= self.n_recorded_stages

    @property
    def final_stage(self):
        return self._pos > self.n_recorded_stages

    def match(self, Py_ssize_t seq, kind, name, payload):
        return self._match(seq, kind, name, payload)

    cdef object _match(self, Py_ssize_t seq, kind, name, bytes payload):
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

    def step(self, Py_ssize_t seq, kind, name, request_adapter, request_model,
             response_adapter, request, owner=None):
        return self._step(seq, kind, name, request_adapter, request_model, response_adapter,
                          request, owner)

    cdef tuple _step(self, Py_ssize_t seq, kind, name, request_adapter, request_model,
                     response_adapter, request, owner):
        cdef Py_ssize_t stage
        if request_model is None or type(request) is not request_model:
            request = request_adapter.validate_python(request)
        cdef bytes payload = _canonical(request_adapter.dump_python(request, mode="json"))
        rec = self._match(seq, kind, name, payload)
        future = CallFuture(self, self.loop)
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
            self._settle(rec, future)
            return READY, future, rec, payload
        future.seq = seq
        self.waiting[seq] = future
        return WAIT, future, rec, payload

    def call_service(self, service, request, frame):
        if self.sealed:
            future = self.loop.create_future()
            future.cancel()
            return future
        try:
            name = service.name
            request_adapter = service.request_adapter
            request_model = service.request_model
            response_adapter = service.response_adapter
        except AttributeError:
            raise self.hooks.not_a_service(service, frame) from None
        cdef Py_ssize_t seq = self.seq
        self.seq = seq + 1
        # past the recorded root operations: a position no record has (a new operation)
        cdef Py_ssize_t pos = seq if seq < self.bound else seq + len(self._ops)
        try:
            result = self._step(pos, "call", name, request_adapter, request_model,
                                response_adapter, request, service)
        except ReplayMismatch as exc:
            raise self.hooks.mismatch(exc, "call", name, frame) from None
        except _bad_request_errors as exc:
            raise self.hooks.bad_request(exc, service, frame) from None
        if result[0] == C_NEW:
            self.hooks.new_operation(seq, "call", name, result[3], frame)
            self.pending.append(operation_id("", seq))
        return result[1]

    def settle(self, rec, future):
        self._settle(rec, future)

    cdef _settle(self, rec, future):
        op_id = rec.op_id
        staged = self._staged.get(op_id) if rec.state == _PENDING_STATE else None
        if staged is not None:
            ok, payload = staged
            self.consumed.add(op_id)
        else:
            ok = rec.state == _COMPLETED_STATE
            payload = rec.result or b"null"
        if future.done():
            # cancelled (the workflow was cancelled while awaiting it): recorded, ignored
            if staged is not None:
                self.accepted.append(op_id)
            return
        if ok:
            try:
                value = future.adapter.validate_json(payload)
            except _ValidationError as exc:
                self.hooks.invalid_reply(rec, future, payload if staged is not None else None, exc)
                return
            future.set_result(value)
        else:
            err = _loads(payload)
            future.set_exception(ServiceError(
                err.get("type", "Error"), err.get("message", ""), err.get("details"),
                service=future.name, call_id=op_id))
        if staged is not None:
            self.accepted.append(op_id)

    cpdef on_await(self, future):
        cdef Py_ssize_t seq = future.seq
        cdef Py_ssize_t pos = self._pos
        cdef Py_ssize_t stage
        waiting = self.waiting
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
        self._settle(rec, future)

    def advance(self):
        cdef Py_ssize_t pos = self._pos
        cdef Py_ssize_t stage
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
                self._settle(self._ops[seq], future)
        return True

    def settle_unreached(self):
        cdef Py_ssize_t pos
        for pos in range(len(self._ops)):
            rec = self._ops[pos]
            staged = self._staged.get(rec.op_id) if rec.state == _PENDING_STATE else None
            if staged is None or rec.op_id in self.consumed:
                continue
            self.consumed.add(rec.op_id)
            future = self.waiting.get(pos)
            if future is not None and staged[0]:
                try:
                    future.adapter.validate_json(staged[1])
                except _ValidationError as exc:
                    self.hooks.invalid_reply(rec, future, staged[1], exc)
                    continue
            self.accepted.append(rec.op_id)
