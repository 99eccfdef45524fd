"""Runs for the timeline and console tests: a module whose workflow calls a service (that
fails for some inputs), sleeps, and waits on a callback, run on the embedded runtime into a
SQLite state file."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

# moto's server and a fresh account on it, for the --table tests (test_table.py)
from aws.conftest import aws, moto_endpoint  # noqa: F401

from lambda_workflow.local import LocalRuntime

MODULE = '''
from pydantic import BaseModel

from lambda_workflow import Service, ServiceError, WorkflowContext, workflow


class Parcel(BaseModel):
    n: int
    note: str = ""


carrier = Service("carrier", Parcel, int)


@workflow
async def ship(ctx: WorkflowContext[Parcel]) -> dict[str, int]:
    try:
        booked = await ctx.call(carrier, ctx.request)
    except ServiceError:
        booked = -1
    await ctx.sleep(3600)
    signed = await ctx.create_callback("signature", int)
    if signed < 0:
        await ctx.call(carrier, Parcel(n=signed))
    return {"booked": booked, "signed": signed}


def book(parcel: Parcel) -> int:
    if parcel.n < 0:
        raise ServiceError("NoCarrier", f"no carrier takes parcel {parcel.n}")
    return parcel.n * 10


def setup(runtime):
    runtime.register(ship)
    runtime.implement(carrier, book)
'''


@dataclass
class Run:
    """A state file after a run of ``MODULE``: ``module`` is the module's file."""

    db: str
    module: str
    loaded: ModuleType


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """Instances in a state file: ``p-wait`` waits on its callback (after a failed booking:
    its first call failed), ``p-done`` completed, ``p-fail`` failed (its last call
    failed and the workflow did not catch it)."""
    path = tmp_path / "parcels.py"
    path.write_text(MODULE)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    loaded = load(path, "parcels")
    monkeypatch.setitem(sys.modules, "parcels", loaded)
    db = str(tmp_path / "state.sqlite3")
    runtime = LocalRuntime(db)
    try:
        loaded.setup(runtime)
        runtime.start(loaded.ship, loaded.Parcel(n=-3), workflow_id="p-wait")
        runtime.start(loaded.ship, loaded.Parcel(n=2), workflow_id="p-done")
        runtime.start(loaded.ship, loaded.Parcel(n=5), workflow_id="p-fail")
        runtime.run_until_idle()
        for wid, value in (("p-done", 7), ("p-fail", -1)):
            runtime.complete_callback(callback_token(runtime, wid), value)
        runtime.run_until_idle()
    finally:
        runtime.close()
    yield Run(db, str(path), loaded)


def callback_token(runtime: LocalRuntime, workflow_id: str) -> str:
    import orjson

    history = runtime.store.load_history(workflow_id)
    assert history is not None
    op = next(o for o in history.operations if o.kind == "callback")
    token = orjson.loads(op.request)["token"]
    assert isinstance(token, str)
    return token
