"""The SQLite state store (in memory and in a file) against the StateStore contract."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambda_workflow.backends.protocols import StateStore
from lambda_workflow.backends.sqlite import SCHEMA_VERSION, SQLiteStateStore
from lambda_workflow.models import InstanceRecord, OperationRecord, OperationState, Outcome

from .contract import StateStoreContract, StoreFactory


class TestSQLiteMemoryStateStore(StateStoreContract):
    """SQLiteStateStore on ":memory:" meets the StateStore contract."""

    @pytest.fixture
    def make_store(self) -> Iterator[StoreFactory]:
        stores: list[SQLiteStateStore] = []

        def make() -> StateStore:
            stores.append(SQLiteStateStore(":memory:"))
            return stores[-1]

        yield make
        for store in stores:
            store.close()


class TestSQLiteFileStateStore(StateStoreContract):
    """SQLiteStateStore on a database file meets the StateStore contract."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[StoreFactory]:
        stores: list[SQLiteStateStore] = []

        def make() -> StateStore:
            stores.append(SQLiteStateStore(tmp_path / f"state-{len(stores)}.sqlite3"))
            return stores[-1]

        yield make
        for store in stores:
            store.close()


def test_a_file_store_keeps_its_records_when_reopened(tmp_path: Path) -> None:
    """Records written to a database file are read back by a new store on the same file."""
    path = tmp_path / "state.sqlite3"
    first = SQLiteStateStore(path)
    first.create_instance(InstanceRecord("wf-1", "flow", b"{}", "d", created_at=1.0))
    first.add_operations("wf-1", [OperationRecord("wf-1", "1", 0, "call", "svc", b"1", "d1")],
                         activation=1)
    first.record_outcomes("wf-1", [Outcome("1", OperationState.COMPLETED, b"2")], 2, 3.0)
    first.close()
    second = SQLiteStateStore(path)
    try:
        history = second.load_history("wf-1")
        assert history is not None
        assert history.instance.activations == 2
        assert [(op.op_id, op.state, op.result) for op in history.operations] == [
            ("1", OperationState.COMPLETED, b"2")]
    finally:
        second.close()


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """Opening a database whose schema version is newer than this code raises a clear error."""
    path = tmp_path / "state.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteStateStore(path)
