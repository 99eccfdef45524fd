"""decode_operations: a store's rows to operation records, the same on both twins as the
SQLite store's row decoder (the reference, one record at a time)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_workflow.backends.sqlite import SQLiteStateStore, _operation
from lambda_workflow.codecs import ENVELOPE_MAGIC, CodecError, PayloadCodec, ZlibCodec
from lambda_workflow.models import InstanceRecord, OperationRecord, OperationState

C: ModuleType = importlib.import_module("lambda_workflow._core._c")
PY: ModuleType = importlib.import_module("lambda_workflow._core._py")

PLAIN = PayloadCodec()
ZLIB = PayloadCodec(ZlibCodec())

payloads = st.binary(max_size=40) | st.builds(lambda b: ENVELOPE_MAGIC + b, st.binary(max_size=8))
rows = st.tuples(
    st.text(max_size=5), st.text(max_size=5), st.integers(0, 2**45), st.sampled_from(
        ["call", "timer", "step", "context", "callback"]), st.text(max_size=8), payloads,
    st.text(max_size=8), st.text(max_size=8),
    st.sampled_from([s.value for s in OperationState]), st.sampled_from([0, 1]),
    st.none() | payloads, st.integers(0, 99), st.none() | st.integers(0, 99),
    st.floats(allow_nan=False), st.none() | st.floats(allow_nan=False))


def reference(rows: list[tuple[Any, ...]], codec: PayloadCodec) -> Any:
    try:
        return ("ok", [_operation(row, codec) for row in rows])
    except Exception as exc:
        return ("raise", type(exc), str(exc))


def decoded(core: ModuleType, rows: list[tuple[Any, ...]], codec: PayloadCodec) -> Any:
    try:
        return ("ok", core.decode_operations(rows, codec))
    except Exception as exc:
        return ("raise", type(exc), str(exc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, max_size=6), st.sampled_from([PLAIN, ZLIB]))
def test_both_twins_decode_rows_as_the_store_does(batch: list[tuple[Any, ...]],
                                                  codec: PayloadCodec) -> None:
    """Records, field for field and type for type, or the same error (a malformed envelope)."""
    expected = reference(batch, codec)
    for core in (C, PY):
        got = decoded(core, batch, codec)
        assert got == expected
        if got[0] == "ok":
            for record in got[1]:
                assert type(record) is OperationRecord
                assert type(record.state) is OperationState and type(record.sent) is bool


def test_enveloped_payloads_are_decoded_by_the_codec(core: ModuleType) -> None:
    request, result = ZLIB.encode(b'{"n":1}'), ZLIB.encode(b"42")
    row = ("wf", "1", 0, "call", "svc", request, "d", "", "completed", 1, result, 1, 2, 0.5, 1.5)
    (rec,) = core.decode_operations([row], ZLIB)
    assert (rec.request, rec.result, rec.state, rec.sent) == (
        b'{"n":1}', b"42", OperationState.COMPLETED, True)
    with pytest.raises(CodecError):
        core.decode_operations([(*row[:5], ENVELOPE_MAGIC, *row[6:])], PLAIN)


def test_bad_rows_are_refused_naming_the_problem(core: ModuleType) -> None:
    row = ("wf", "1", 0, "call", "svc", b"{}", "d", "", "pending", 0, None, 1, None, 0.5, None)
    with pytest.raises(ValueError, match="'done' is not a valid OperationState"):
        core.decode_operations([(*row[:8], "done", *row[9:])], PLAIN)
    with pytest.raises(ValueError, match="an operation row has 15 fields, got 14"):
        core.decode_operations([row[:14]], PLAIN)
    assert core.decode_operations([list(row)], PLAIN) == [_operation(row)]


def test_the_sqlite_store_loads_histories_through_the_core(tmp_path: Any) -> None:
    store = SQLiteStateStore(tmp_path / "h.sqlite3")
    try:
        store.create_instance(InstanceRecord("wf", "w", b"1", "d"))
        ops = [OperationRecord("wf", str(i + 1), i, "call", "svc", b'{"n":%d}' % i, "d",
                               state=OperationState.COMPLETED, sent=True, result=b"7",
                               created_in=1, resolved_in=2) for i in range(3)]
        store.add_operations("wf", ops, 1)
        history = store.load_history("wf")
        assert history is not None and history.operations == ops
    finally:
        store.close()
