# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The replay core, compiled: the twin of ``lambda_workflow/_core/_py.py``.

Same names, same behaviour, same docstrings' contracts (the pure twin is the reference and the
source of types; see its docstrings). What changes is only how the per-operation work is
executed: ReplayIndex is an extension type with typed fields, and the replay step (validate,
encode, digest, match, schedule, decode, resolve) runs without Python frames in between.
"""

cimport cython

import asyncio
import contextvars
import hashlib
import sys
from collections import deque

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
    "decode_operations",
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
cdef object _InvalidStateError = asyncio.InvalidStateError
cdef object _CancelledError = asyncio.CancelledError
cdef object _copy_context = contextvars.copy_context
cdef object _deque = deque
# Python 3.13's asyncio wraps a StopIteration given to set_exception in a RuntimeError
cdef bint _WRAP_STOP = sys.version_info >= (3, 13)
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


# TypeAdapter's methods are Python wrappers around pydantic-core's serializer and validator
# (see _py.py's _dump_json): a TypeAdapter's are called directly, any other adapter's methods
# as they are.
cdef object _TypeAdapter = pydantic.TypeAdapter


cdef inline object _dump_json(object adapter, object value):
    if type(adapter) is _TypeAdapter:
        return adapter.serializer.to_json(value)
    return adapter.dump_json(value)


cdef inline object _dump_python_json(object adapter, object value):
    if type(adapter) is _TypeAdapter:
        return adapter.serializer.to_python(value, mode="json")
    return adapter.dump_python(value, mode="json")


cdef inline object _validate_json(object adapter, object payload):
    if type(adapter) is _TypeAdapter:
        return adapter.validator.validate_json(payload)
    return adapter.validate_json(payload)


cdef inline object _validate_python(object adapter, object value):
    if type(adapter) is _TypeAdapter:
        return adapter.validator.validate_python(value)
    return adapter.validate_python(value)


def encode_value(adapter, value):
    return _canonical(adapter.dump_python(value, mode="json"))


def decode_value(adapter, payload):
    return adapter.validate_json(payload)


# decode_operations: what it needs from the models and codecs, looked up on first use (the
# core loads neither at import)
cdef object _OperationRecord = None
cdef object _OperationState = None
cdef dict _STATES = None
cdef object _PayloadCodec = None
cdef bytes _MAGIC = None


cdef int _load_record_types() except -1:
    global _OperationRecord, _OperationState, _STATES, _PayloadCodec, _MAGIC
    from ..codecs import ENVELOPE_MAGIC, PayloadCodec
    from ..models import OperationRecord, OperationState
    _STATES = {m.value: m for m in OperationState}
    _PayloadCodec = PayloadCodec
    _MAGIC = ENVELOPE_MAGIC
    _OperationState = OperationState
    _OperationRecord = OperationRecord
    return 0


cdef inline object _decode_payload(object codec, bint plain, object payload):
    # PayloadCodec.decode returns a payload without the envelope's magic unchanged
    if plain and type(payload) is bytes and not (<bytes>payload).startswith(_MAGIC):
        return payload
    return codec.decode(payload)


def decode_operations(rows, codec):
    cdef list out = []
    cdef tuple t
    if _OperationRecord is None:
        _load_record_types()
    cdef bint plain = type(codec) is _PayloadCodec
    new = _OperationRecord.__new__
    cls = _OperationRecord
    for row in rows:
        t = row if type(row) is tuple else tuple(row)
        if len(t) != 15:
            raise ValueError(f"an operation row has 15 fields, got {len(t)}")
        state = t[8]
        member = _STATES.get(state) if type(state) is str else None
        if member is None:
            member = _OperationState(state)  # raises for a state that is not one
        result = t[10]
        # The record's fields set directly: the dataclass's generated __init__ only assigns
        # them (tests/core checks the records equal the ones its __init__ makes).
        rec = new(cls)
        rec.workflow_id = t[0]
        rec.op_id = t[1]
        rec.seq = t[2]
        rec.kind = t[3]
        rec.name = t[4]
        rec.request = _decode_payload(codec, plain, t[5])
        rec.request_digest = t[6]
        rec.site = t[7]
        rec.state = member
        rec.sent = bool(t[9])
        rec.result = None if result is None else _decode_payload(codec, plain, result)
        rec.created_in = t[11]
        rec.resolved_in = t[12]
        rec.created_at = t[13]
        rec.resolved_at = t[14]
        out.append(rec)
    return out


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



# -- the future ------------------------------------------------------------------------------
# A future implemented here, not an asyncio.Future subclass: the index creates it without a
# Python call (no __init__, no loop.get_debug), and the replay step reads and writes its fields
# as C fields. It implements asyncio's future protocol (asyncio.isfuture accepts it: the class
# has ``_asyncio_future_blocking``), so asyncio's tasks (C and Python), gather, wait, wait_for,
# shield and as_completed accept it; its behaviour and errors are asyncio.Future's (the C one:
# "invalid state", "Result is not set.", ...). tests/core/test_future.py checks both side by side.

cdef enum:
    _F_PENDING = 0
    _F_CANCELLED = 1
    _F_FINISHED = 2

cdef tuple _STATE_NAMES = ("PENDING", "CANCELLED", "FINISHED")


@cython.freelist(64)
cdef class CallFuture:
    cdef object _floop
    cdef int _fstate
    cdef object _result
    cdef object _exception
    cdef object _exception_tb
    cdef list _fcallbacks
    cdef object _cancel_msg
    cdef bint _log_tb
    cdef public bint _asyncio_future_blocking
    cdef public object adapter
    cdef public object name
    cdef public object owner
    cdef public object index
    cdef public Py_ssize_t seq
    cdef object __weakref__  # asyncio's futures can be weakly referenced; so can this one

    def __init__(self, index, loop):
        self._floop = loop
        self.index = index
        self.seq = -1
        self.name = ""

    # -- what the replay step uses (C) --------------------------------------------------------
    cdef inline bint _done(self):
        return self._fstate != _F_PENDING

    cdef int _set_result(self, value) except -1:
        if self._fstate != _F_PENDING:
            raise _InvalidStateError("invalid state")
        self._result = value
        self._fstate = _F_FINISHED
        if self._fcallbacks is not None:
            self._schedule_callbacks()
        return 0

    cdef int _set_exception(self, exception) except -1:
        if self._fstate != _F_PENDING:
            raise _InvalidStateError("invalid state")
        if isinstance(exception, type):
            exception = exception()
        if not isinstance(exception, BaseException):
            raise TypeError("invalid exception object")
        if type(exception) is StopIteration or (_WRAP_STOP and isinstance(exception, StopIteration)):
            if not _WRAP_STOP:
                raise TypeError("StopIteration interacts badly with generators and cannot be "
                                "raised into a Future")
            # Python 3.13+: asyncio wraps it in a RuntimeError
            new_exc = RuntimeError("StopIteration interacts badly with generators and cannot "
                                   "be raised into a Future")
            new_exc.__cause__ = exception
            new_exc.__context__ = exception
            exception = new_exc
        self._exception = exception
        self._exception_tb = exception.__traceback__
        self._fstate = _F_FINISHED
        if self._fcallbacks is not None:
            self._schedule_callbacks()
        self._log_tb = True
        return 0

    cdef int _schedule_callbacks(self) except -1:
        cdef list callbacks = self._fcallbacks
        self._fcallbacks = None
        call_soon = self._floop.call_soon
        for fn, ctx in callbacks:
            call_soon(fn, self, context=ctx)
        return 0

    cdef object _cancelled_error(self):
        if self._cancel_msg is None:
            return _CancelledError()
        return _CancelledError(self._cancel_msg)

    cdef object _outcome(self):
        """The result, or raise the exception (what ``await`` gives once done)."""
        if self._fstate == _F_CANCELLED:
            raise self._cancelled_error()
        if self._fstate != _F_FINISHED:
            raise _InvalidStateError("Result is not set.")
        self._log_tb = False
        if self._exception is not None:
            raise self._exception.with_traceback(self._exception_tb)
        return self._result

    # -- asyncio's future protocol ------------------------------------------------------------
    def get_loop(self):
        return self._floop

    @property
    def _loop(self):
        return self._floop

    @property
    def _state(self):
        return _STATE_NAMES[self._fstate]

    @property
    def _cancel_message(self):
        return self._cancel_msg

    @_cancel_message.setter
    def _cancel_message(self, value):
        self._cancel_msg = value

    @property
    def _log_traceback(self):
        return self._log_tb

    @_log_traceback.setter
    def _log_traceback(self, value):
        if value:
            raise ValueError("_log_traceback can only be set to False")
        self._log_tb = False

    @property
    def _callbacks(self):
        return list(self._fcallbacks or ())

    def done(self):
        return self._fstate != _F_PENDING

    def cancelled(self):
        return self._fstate == _F_CANCELLED

    def result(self):
        return self._outcome()

    def exception(self):
        if self._fstate == _F_CANCELLED:
            raise self._cancelled_error()
        if self._fstate != _F_FINISHED:
            raise _InvalidStateError("Exception is not set.")
        self._log_tb = False
        return self._exception

    def set_result(self, result):
        self._set_result(result)

    def set_exception(self, exception):
        self._set_exception(exception)

    def cancel(self, msg=None):
        self._log_tb = False
        if self._fstate != _F_PENDING:
            return False
        self._fstate = _F_CANCELLED
        self._cancel_msg = msg
        if self._fcallbacks is not None:
            self._schedule_callbacks()
        return True

    def _make_cancelled_error(self):
        return self._cancelled_error()

    def add_done_callback(self, fn, *, context=None):
        if context is None:
            context = _copy_context()
        if self._fstate != _F_PENDING:
            self._floop.call_soon(fn, self, context=context)
        elif self._fcallbacks is None:
            self._fcallbacks = [(fn, context)]
        else:
            self._fcallbacks.append((fn, context))

    def remove_done_callback(self, fn):
        if not self._fcallbacks:
            return 0
        cdef list kept = [entry for entry in self._fcallbacks if entry[0] != fn]
        cdef Py_ssize_t removed = len(self._fcallbacks) - len(kept)
        if removed:
            self._fcallbacks = kept or None
        return removed

    def __await__(self):
        if self.seq >= 0:
            if not isinstance(self.index, ReplayIndex):
                raise TypeError(f"this CallFuture's index is not a ReplayIndex: {self.index!r}")
            (<ReplayIndex>self.index)._on_await(self)
        return self

    def __iter__(self):
        return self.__await__()

    def __next__(self):
        if self._fstate == _F_PENDING:
            self._asyncio_future_blocking = True
            return self  # tells the task to wait for completion
        raise StopIteration(self._outcome())

    def __repr__(self):
        state = _STATE_NAMES[self._fstate].lower()
        if self._fstate == _F_FINISHED:
            if self._exception is not None:
                state += f" exception={self._exception!r}"
            else:
                state += f" result={self._result!r}"
        return f"<CallFuture {state}>"

    def __class_getitem__(cls, item):
        return cls



# -- awaiting without Python-level exceptions ------------------------------------------------
# ``await future`` iterates the future: while pending it yields itself (the task waits), once
# done it returns the outcome. Returning through Cython's ``__next__`` means raising
# StopIteration(value) with a traceback entry (0.19 us per await here, 0.94 us in the abi3
# build, against 0.04 us for asyncio's future). The futures the index makes await through the
# C functions below instead: tp_iternext sets StopIteration without a traceback, and am_send
# (which Python 3.11's ``await`` uses; 3.12 and 3.13 use tp_iternext) returns the value with no
# exception at all, as asyncio's own future iterator does. The per-version build points
# CallFuture's slots at them; the abi3 build cannot write a type's slots (the limited API
# hides its layout), so it makes a subclass with these two slots (PyType_FromSpecWithBases,
# stable ABI) and the index instantiates that. A CallFuture made by calling the class
# (tests do) behaves the same through Cython's ``__next__``.
cdef extern from *:
    """
    static int (*lw_pending_fn)(PyObject *) = NULL;
    static PyObject *(*lw_outcome_fn)(PyObject *) = NULL;

    static PyObject *lw_future_iternext(PyObject *self) {
        int pending = lw_pending_fn(self);
        if (pending < 0) return NULL;
        if (pending) { Py_INCREF(self); return self; }
        PyObject *value = lw_outcome_fn(self);
        if (value == NULL) return NULL;
        if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
            /* StopIteration(value) made here: PyErr_SetObject would unpack a tuple */
            PyObject *exc = PyObject_CallFunctionObjArgs(PyExc_StopIteration, value, NULL);
            Py_DECREF(value);
            if (exc == NULL) return NULL;
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        } else {
            PyErr_SetObject(PyExc_StopIteration, value);
            Py_DECREF(value);
        }
        return NULL;
    }

    static PySendResult lw_future_am_send(PyObject *self, PyObject *arg, PyObject **presult) {
        (void)arg;
        int pending = lw_pending_fn(self);
        if (pending < 0) { *presult = NULL; return PYGEN_ERROR; }
        if (pending) { Py_INCREF(self); *presult = self; return PYGEN_NEXT; }
        PyObject *value = lw_outcome_fn(self);
        *presult = value;
        return value == NULL ? PYGEN_ERROR : PYGEN_RETURN;
    }

    #ifdef Py_LIMITED_API
    static PyType_Slot lw_await_slots[] = {
        {Py_tp_iternext, (void *)lw_future_iternext},
        {Py_am_send, (void *)lw_future_am_send},
        {0, NULL},
    };
    static PyType_Spec lw_await_spec = {
        "lambda_workflow._core._c.CallFuture", 0, 0, Py_TPFLAGS_DEFAULT, lw_await_slots,
    };
    #endif

    /* The type the index instantiates: CallFuture itself with its slots pointed at the
       functions above, or (abi3) a new subclass that has them. */
    static PyObject *lw_await_type(PyObject *type, void *pending, void *outcome) {
        lw_pending_fn = (int (*)(PyObject *))pending;
        lw_outcome_fn = (PyObject *(*)(PyObject *))outcome;
    #ifndef Py_LIMITED_API
        PyTypeObject *tp = (PyTypeObject *)type;
        if (tp->tp_as_async == NULL) {
            PyErr_SetString(PyExc_SystemError, "CallFuture has no async slots");
            return NULL;
        }
        tp->tp_iternext = lw_future_iternext;
        tp->tp_as_async->am_send = lw_future_am_send;
        PyType_Modified(tp);
        Py_INCREF(type);
        return type;
    #else
        PyObject *bases = PyTuple_Pack(1, type);
        if (bases == NULL) return NULL;
        PyObject *sub = PyType_FromSpecWithBases(&lw_await_spec, bases);
        Py_DECREF(bases);
        return sub;
    #endif
    }
    """
    object lw_await_type(object type, void* pending, void* outcome)


cdef int _await_pending(CallFuture future) except -1:
    if future._fstate == _F_PENDING:
        future._asyncio_future_blocking = True
        return 1
    return 0


cdef object _await_outcome(CallFuture future):
    return future._outcome()


# The type of the futures the index makes (CallFuture, or its abi3 subclass).
cdef object _FUTURE_TYPE = lw_await_type(CallFuture, <void*>_await_pending,
                                         <void*>_await_outcome)
# Whether CallFuture's own slots were pointed at the C functions (the per-version build).
AWAIT_SLOTS = _FUTURE_TYPE is CallFuture


class ReplayHooks:
    """Protocol only (see the pure twin); present so both twins export the same names."""


cdef object _bad_request_errors = (_ValidationError, PydanticSerializationError, TypeError,
                                   ValueError)
cdef object _fast_errors = (PydanticSerializationError, TypeError, ValueError)


from cpython.pyport cimport PY_SSIZE_T_MAX


# -- recorded operations, as typed fields -----------------------------------------------------
@cython.final
@cython.no_gc
cdef class _Rec:
    """One recorded operation, copied from its record when the index is built: matching,
    staging and settling read these C fields, not the record's attributes. ``rec`` is the
    record itself (for hooks and errors). Not tracked by the garbage collector: it holds a
    record and strings, which never refer back to it."""
    cdef object rec
    cdef object kind
    cdef object name
    cdef object op_id
    cdef object request
    cdef object result
    cdef bint pending
    cdef bint completed
    cdef Py_ssize_t stage  # the stage that delivers its outcome; -1: none in this activation


cdef _Rec _rec_of(object rec, Py_ssize_t activation, dict staged):
    cdef _Rec r = _Rec.__new__(_Rec)
    r.rec = rec
    r.kind = rec.kind
    r.name = rec.name
    r.op_id = rec.op_id
    r.request = rec.request
    r.result = rec.result
    state = rec.state
    r.pending = state == _PENDING_STATE
    r.completed = state == _COMPLETED_STATE
    if not r.pending:
        r.stage = rec.resolved_in or 0
    elif staged and r.op_id in staged:
        r.stage = activation
    else:
        r.stage = -1
    return r


cdef class ReplayIndex:
    cdef list _recs
    cdef dict _staged
    cdef dict _by_stage
    cdef list _schedule
    cdef Py_ssize_t _nsched
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _stage
    cdef set _unsorted
    cdef object _ready  # the loop's ready deque, when it has one (else loop.has_ready())
    # the last _step's decision and payload
    cdef int _decision
    cdef object _payload
    cdef _Rec _last
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
        cdef _Rec r
        self._staged = dict(staged)
        self.barrier = PY_SSIZE_T_MAX
        self.activation = activation
        self.loop = loop
        ready = getattr(loop, "_ready", None)
        self._ready = ready if type(ready) is _deque else None
        self.hooks = hooks
        self.seq = 0
        self.sealed = False
        recs = []
        by_stage = {}
        contexts = {}
        seq = 0
        for rec in operations:
            r = _rec_of(rec, activation, self._staged)
            recs.append(r)
            # Steps and patch markers resolve where the code reaches them (see _py.py).
            if r.stage >= 0 and r.kind not in _RESOLVED_AT_CREATION:
                (contexts if r.kind == "context" else by_stage).setdefault(
                    r.stage, []).append(seq)
            seq += 1
        self._recs = recs
        # Root operations are at positions 0..bound-1 (see _py.py).
        self.bound = len(recs)
        # A finished child context is delivered after the other outcomes of its stage.
        for stage_key, seqs in contexts.items():
            by_stage.setdefault(stage_key, []).extend(seqs)
        self._by_stage = by_stage
        schedule = sorted([s for s in by_stage if s != activation or not self._staged])
        self.n_recorded_stages = len(schedule)
        if self._staged:
            schedule.append(activation)
        self._schedule = schedule
        self._nsched = len(schedule)
        self._pos = 0
        self._stage = -1
        self._unsorted = set()
        self.waiting = {}
        self.pending = []
        self.accepted = []
        self.consumed = set()

    def __len__(self):
        return len(self._recs)

    @property
    def stage(self):
        return self._stage

    @property
    def next_stage(self):
        if self._pos < self._nsched:
            return self._schedule[self._pos]
        return -1

    @property
    def new_allowed(self):
        return self._pos >= self.n_recorded_stages

    @property
    def final_stage(self):
        return self._pos > self.n_recorded_stages

    def match(self, Py_ssize_t seq, kind, name, payload):
        cdef _Rec r = self._match(seq, kind, name, payload)
        return None if r is None else r.rec

    cdef _Rec _match(self, Py_ssize_t seq, kind, name, bytes payload):
        if seq < 0:
            raise ValueError(f"operation seq must be >= 0, got {seq}")
        if seq >= len(self._recs):
            return None
        cdef _Rec r = <_Rec>self._recs[seq]
        if r.kind != kind:
            raise ReplayMismatch(seq, "kind", r.rec, payload)
        if r.name != name:
            raise ReplayMismatch(seq, "name", r.rec, payload)
        if r.request != payload:
            raise ReplayMismatch(seq, "request", r.rec, payload)
        return r

    cdef _Rec _fast_match(self, Py_ssize_t seq, kind, name, request_adapter, request):
        # See _py.py's _fast_match for why equal dump_json bytes prove equal canonical bytes.
        if seq < 0 or seq >= len(self._recs):
            return None
        if self._unsorted and request_adapter in self._unsorted:
            return None
        cdef _Rec r = <_Rec>self._recs[seq]
        if r.kind != kind or r.name != name:
            return None
        try:
            fast = _dump_json(request_adapter, request)
        except AttributeError:  # not a TypeAdapter (a Serdes' adapter has no dump_json)
            self._unsorted.add(request_adapter)
            return None
        except _fast_errors:
            return None  # the canonical encoding reports it
        if fast == r.request:
            return r
        return None

    def step(self, Py_ssize_t seq, kind, name, request_adapter, request_model,
             response_adapter, request, owner=None):
        future = self._step(seq, kind, name, request_adapter, request_model, response_adapter,
                            request, owner)
        r = self._last
        self._last = None
        return (self._decision, future, None if r is None else r.rec, self._payload)

    cdef inline CallFuture _new_future(self):
        cdef CallFuture future = <CallFuture>CallFuture.__new__(_FUTURE_TYPE)
        future._floop = self.loop
        future.index = self
        future.seq = -1
        future.name = ""
        return future

    cdef CallFuture _step(self, Py_ssize_t seq, kind, name, request_adapter, request_model,
                          response_adapter, request, owner):
        cdef Py_ssize_t stage
        cdef bytes payload
        if request_model is None or type(request) is not request_model:
            request = _validate_python(request_adapter, request)
        cdef _Rec r = self._fast_match(seq, kind, name, request_adapter, request)
        if r is not None:
            payload = r.request
        else:
            payload = _canonical(_dump_python_json(request_adapter, request))
            r = self._match(seq, kind, name, payload)
            if r is not None and request_adapter not in self._unsorted:
                # dump_json's bytes are not canonical for this adapter: stop trying them
                self._unsorted.add(request_adapter)
        cdef CallFuture future = self._new_future()
        self._payload = payload
        self._last = r
        if r is None:
            self._decision = C_NEW
            return future
        stage = r.stage
        if stage < 0:
            self.pending.append(r.op_id)
            self._decision = C_PENDING
            return future
        future.adapter = response_adapter
        future.name = name
        future.owner = owner
        if stage <= self._stage:
            self._settle(r, future)
            self._decision = C_READY
            return future
        future.seq = seq
        self.waiting[seq] = future
        self._decision = C_WAIT
        return future

    def call_service(self, service, request, frame):
        if self.sealed:
            cancelled = self.loop.create_future()
            cancelled.cancel()
            return cancelled
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
        cdef Py_ssize_t pos = seq if seq < self.bound else seq + len(self._recs)
        cdef CallFuture future
        try:
            future = self._step(pos, "call", name, request_adapter, request_model,
                                response_adapter, request, service)
        except ReplayMismatch as exc:
            raise self.hooks.mismatch(exc, "call", name, frame) from None
        except _bad_request_errors as exc:
            raise self.hooks.bad_request(exc, service, frame) from None
        self._last = None
        if self._decision == C_NEW:
            self.hooks.new_operation(seq, "call", name, self._payload, frame)
            self.pending.append(operation_id("", seq))
        return future

    def settle(self, rec, CallFuture future):
        self._settle(_rec_of(rec, self.activation, self._staged), future)

    cdef int _settle(self, _Rec r, CallFuture future) except -1:
        staged = self._staged.get(r.op_id) if r.pending and self._staged else None
        if staged is not None:
            ok, payload = staged
            self.consumed.add(r.op_id)
        else:
            ok = r.completed
            payload = r.result or b"null"
        if future._fstate != _F_PENDING:
            # cancelled (the workflow was cancelled while awaiting it): recorded, ignored
            if staged is not None:
                self.accepted.append(r.op_id)
            return 0
        if ok:
            try:
                value = _validate_json(future.adapter, payload)
            except _ValidationError as exc:
                self.hooks.invalid_reply(r.rec, future, payload if staged is not None else None,
                                         exc)
                return 0
            future._set_result(value)
        else:
            err = _loads(payload)
            future._set_exception(ServiceError(
                err.get("type", "Error"), err.get("message", ""), err.get("details"),
                service=future.name, call_id=r.op_id))
        if staged is not None:
            self.accepted.append(r.op_id)
        return 0

    def on_await(self, CallFuture future):
        self._on_await(future)

    cdef int _on_await(self, CallFuture future) except -1:
        cdef Py_ssize_t seq = future.seq
        cdef Py_ssize_t pos = self._pos
        cdef Py_ssize_t stage
        cdef dict waiting = self.waiting
        if len(waiting) != 1 or pos >= self._nsched or seq not in waiting:
            return 0
        if self._ready is not None:
            if len(self._ready):
                return 0
        elif self.loop.has_ready():
            return 0
        if seq < 0 or seq >= len(self._recs):
            raise IndexError("list index out of range")
        cdef _Rec r = <_Rec>self._recs[seq]
        stage = r.stage
        if self._schedule[pos] != stage or stage > self.barrier:
            return 0
        self._pos = pos + 1
        self._stage = stage
        del waiting[seq]
        future.seq = -1
        self._settle(r, future)
        return 0

    def advance(self):
        cdef Py_ssize_t pos = self._pos
        cdef Py_ssize_t stage
        cdef CallFuture future
        if pos >= self._nsched:
            return False
        stage = self._schedule[pos]
        self._pos = pos + 1
        self._stage = stage
        waiting = self.waiting
        for seq in self._by_stage.get(stage, ()):
            found = waiting.pop(seq, None)
            if found is not None:
                future = <CallFuture?>found
                future.seq = -1
                self._settle(<_Rec>self._recs[seq], future)
        return True

    def settle_unreached(self):
        cdef Py_ssize_t pos
        cdef _Rec r
        if not self._staged:
            return
        for pos in range(len(self._recs)):
            r = <_Rec>self._recs[pos]
            staged = self._staged.get(r.op_id) if r.pending else None
            if staged is None or r.op_id in self.consumed:
                continue
            self.consumed.add(r.op_id)
            future = self.waiting.get(pos)
            if future is not None and staged[0]:
                try:
                    _validate_json(future.adapter, staged[1])
                except _ValidationError as exc:
                    self.hooks.invalid_reply(r.rec, future, staged[1], exc)
                    continue
            self.accepted.append(r.op_id)
