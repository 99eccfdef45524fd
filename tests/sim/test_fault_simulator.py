"""The seeded fault simulator in CI: a bounded number of seeds on each store (a SQLite file,
DynamoDB with S3 payloads on the local AWS-API server); ``scripts/soak_faults.py`` runs many
more. A failing seed prints itself and the command that replays it exactly:
``LAMBDA_WORKFLOW_SIM_SEED=<seed> .venv/bin/pytest -p no:cacheprovider -q tests/sim -k <store>``
(``LAMBDA_WORKFLOW_SIM_WORKFLOWS`` sets the instances per seed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from aws.conftest import Aws

from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.models import InstanceRecord, OperationRecord
from sim.aws_backend import dynamodb_backend
from sim.faults import FaultPlan, InjectedCrash
from sim.simulator import (
    SEED_VARIABLE,
    WORKFLOWS_VARIABLE,
    Backend,
    SimReport,
    pytest_replay,
    simulate,
    sqlite_backend,
    sqlite_throttle,
)


def _seeds(count: int, offset: int) -> list[int]:
    chosen = os.environ.get(SEED_VARIABLE)
    return [int(chosen)] if chosen else list(range(offset, offset + count))


def _workflows(default: int) -> int:
    return int(os.environ.get(WORKFLOWS_VARIABLE, default))


def _judge(report: SimReport) -> None:
    assert report.injected > 0, f"seed {report.seed} injected no fault"
    assert not report.violations, report.describe()


@pytest.mark.parametrize("seed", _seeds(24, 0))
def test_sqlite_file_under_faults(seed: int, tmp_path: Path) -> None:
    """Crashes before and after every store write, send and timer schedule, throttling
    ('database is locked'), duplicate, redelivered and reordered messages, services dying
    before their reply: every instance ends as its uninterrupted run, no call runs beyond
    its sends and redeliveries, no step runs again after its outcome is recorded, nothing
    is left waiting on an input that was delivered."""
    backend = sqlite_backend(str(tmp_path / "state.sqlite3"))
    try:
        count = _workflows(8)
        _judge(simulate(backend, seed, count, FaultPlan.hostile(concurrent=False, dynamodb=False),
                        replay=pytest_replay(seed, count, "test_sqlite_file_under_faults")))
    finally:
        backend.close()


@pytest.mark.parametrize("seed", _seeds(3, 1000))
def test_dynamodb_under_faults(seed: int, aws: Aws) -> None:
    """The same on DynamoDB with payloads in S3, plus two activations of one instance
    interleaved (a visibility timeout), writes applied twice (a lost response retried) and
    transient S3 errors."""
    count = _workflows(4)
    _judge(simulate(dynamodb_backend(aws.endpoint, session=aws.session), seed, count,
                    FaultPlan.hostile(concurrent=True, dynamodb=True),
                    replay=pytest_replay(seed, count, "test_dynamodb_under_faults")))


@pytest.mark.parametrize("seed", _seeds(2, 2000))
def test_dynamodb_with_payloads_removed(seed: int, aws: Aws) -> None:
    """Offloaded payloads of running instances disappear from S3 (a lifecycle rule): those
    instances end failed with a reason, never left running or unreadable; the others end as
    their uninterrupted runs."""
    count = _workflows(4)
    _judge(simulate(dynamodb_backend(aws.endpoint, session=aws.session), seed, count,
                    FaultPlan.hostile(concurrent=True, dynamodb=True, s3_missing=True),
                    replay=pytest_replay(seed, count, "test_dynamodb_with_payloads_removed")))


def test_a_seed_replays_exactly(tmp_path: Path) -> None:
    """The same seed injects the same faults at the same boundaries and ends the same."""
    reports = []
    for run in ("a", "b"):
        backend = sqlite_backend(str(tmp_path / f"{run}.sqlite3"))
        try:
            reports.append(simulate(backend, 7, 6,
                                    FaultPlan.hostile(concurrent=False, dynamodb=False)))
        finally:
            backend.close()
    first, second = reports
    assert first.injected > 10
    assert first.trail == second.trail
    assert first.instances == second.instances


class _LosesSends(SQLiteStateStore):
    """A broken store: it records every other operation batch as sent before it is."""

    calls = 0

    def commit_activation(self, workflow_id: str, outcomes: Sequence[object],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        recorded = super().commit_activation(workflow_id, outcomes,  # type: ignore[arg-type]
                                             operations, activation, at)
        _LosesSends.calls += 1
        if _LosesSends.calls % 2 == 0 and operations:
            self.mark_sent(workflow_id, [op.op_id for op in operations])
        return recorded


def test_the_simulator_catches_a_broken_store(tmp_path: Path) -> None:
    """Not vacuous: a store that marks requests sent before they leave (so a crash loses
    them) makes the simulator report instances left running or ending otherwise."""
    store = _LosesSends(str(tmp_path / "broken.sqlite3"))
    backend = Backend("broken-sqlite", lambda faults: store, store,
                      lambda what: RuntimeError(f"database is locked (injected at {what})"),
                      concurrent=False, close=store.close)
    try:
        report = simulate(backend, 0, 8, FaultPlan.hostile(concurrent=False, dynamodb=False))
    finally:
        backend.close()
    print(report.describe())
    assert report.violations, report.describe()
    assert any("left" in v or "ended" in v for v in report.violations), report.describe()


class _SplitsChildLinks(SQLiteStateStore):
    """A broken store, as the runtime was before issue 10's finding 1 was fixed: it creates a
    child instance and its link to the parent in two writes, and the process dies between
    them the first time."""

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        stored, created = super().create_instance(instance)
        if created and operations:
            raise InjectedCrash(f"crash between creating {instance.workflow_id} and its link")
        return stored, created


def test_the_simulator_catches_a_lost_child_link(tmp_path: Path) -> None:
    """The simulator reports finding 1 of issue 10: a child whose link to its parent was lost
    in a crash leaves the parent ending otherwise than its uninterrupted run (waiting for
    ever on a child that ended, or failing because the child's id is taken)."""
    store = _SplitsChildLinks(str(tmp_path / "split.sqlite3"))
    backend = Backend("split-sqlite", lambda faults: store, store, sqlite_throttle,
                      concurrent=False, close=store.close)
    try:
        report = simulate(backend, 0, 4, FaultPlan(copies=0.01))
    finally:
        backend.close()
    parents = [v for v in report.violations if "~" not in v.split(":")[0]]
    assert parents, report.describe()
