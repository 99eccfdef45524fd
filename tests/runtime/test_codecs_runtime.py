"""A workflow end to end on the embedded runtime with each payload codec, and a codec change
with an instance in flight (docs/codecs.md)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from lambda_workflow import Service, ServiceError, WorkflowContext, workflow
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.codecs import (
    ENVELOPE_MAGIC,
    ChainCodec,
    PayloadCodec,
    UnknownCodecError,
    ZlibCodec,
)
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import InstanceStatus

START = 1_700_000_000.0
SECRET = "alice-account-4111-1111"


class Transfer(BaseModel):
    account: str
    amount: int


lookup = Service("lookup", Transfer, Transfer)


async def _lookup(t: Transfer) -> Transfer:
    if t.amount < 0:
        raise ServiceError("Negative", f"no negative amounts for {t.account}")
    return Transfer(account=t.account.upper(), amount=t.amount * 2)


def double(n: int) -> int:
    return n * 2


@workflow
async def transfer(ctx: WorkflowContext[Transfer]) -> str:
    found = await ctx.call(lookup, ctx.request)
    doubled = await ctx.step(double, found.amount)
    await ctx.sleep(60)
    return f"{found.account}:{doubled}"


@workflow
async def refused(ctx: WorkflowContext[Transfer]) -> str:
    await ctx.call(lookup, ctx.request)
    return "unreachable"


class Xor:
    """A codec of the test's own (stands for any user codec): XOR with 0x5A."""

    name = "xor"

    def encode(self, data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)

    def decode(self, data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)


CODECS: dict[str, Any] = {
    "identity": None, "zlib": "zlib", "xor": Xor(), "zlib+xor": ChainCodec(ZlibCodec(), Xor())}


def _runtime(path: Path | str, codec: Any) -> LocalRuntime:
    rt = LocalRuntime(path, clock=VirtualClock(START), codec=codec)
    rt.register(transfer, refused)
    rt.implement(lookup, _lookup)
    return rt


def _stored_payloads(path: Path) -> list[bytes]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT input, result, error FROM instances").fetchall()
        rows += db.execute("SELECT request, result, NULL FROM operations").fetchall()
    finally:
        db.close()
    return [v for row in rows for v in row if v is not None]


@pytest.mark.parametrize("name", list(CODECS))
def test_a_workflow_runs_end_to_end_with_each_codec(tmp_path: Path, name: str) -> None:
    """Inputs, requests, results and errors are stored encoded (no plaintext in the file
    except with identity), and the workflow's result and history read back as without a
    codec."""
    path = tmp_path / "state.sqlite3"
    with _runtime(path, CODECS[name]) as rt:
        handle = rt.start(transfer, Transfer(account=SECRET, amount=21), workflow_id="t-1")
        failing = rt.start(refused, Transfer(account=SECRET, amount=-1), workflow_id="t-2")
        rt.run_until_idle()
        assert handle.result() == f"{SECRET.upper()}:84"
        assert failing.status() is InstanceStatus.FAILED
        ops = handle.history().operations
        assert [op.kind for op in ops][:2] == ["call", "step"]
        assert ops[0].request == b'{"account":"alice-account-4111-1111","amount":21}'
    stored = _stored_payloads(path)
    assert len(stored) >= 8
    plain = [v for v in stored if not v.startswith(ENVELOPE_MAGIC)]
    if name == "identity":
        assert plain == stored
        assert any(SECRET.encode() in v for v in stored)
    else:
        assert plain == []
        assert not any(SECRET.encode() in v or SECRET.upper().encode() in v for v in stored)
        assert {PayloadCodec().codec_of(v) for v in stored} == {name}


def test_the_memory_store_keeps_encoded_payloads() -> None:
    store = MemoryStateStore(codec=PayloadCodec(Xor()))
    with LocalRuntime(store=store, clock=VirtualClock(START)) as rt:
        rt.register(transfer)
        rt.implement(lookup, _lookup)
        handle = rt.start(transfer, Transfer(account=SECRET, amount=1), workflow_id="m-1")
        rt.run_until_idle()
        assert handle.result() == f"{SECRET.upper()}:4"
    kept = store._instances["m-1"]
    assert kept.input.startswith(ENVELOPE_MAGIC) and SECRET.encode() not in kept.input
    assert all(op.request.startswith(ENVELOPE_MAGIC) for op in store._ops["m-1"].values())


def test_the_codec_changes_with_an_instance_in_flight(tmp_path: Path) -> None:
    """Started under zlib, finished under xor after a restart: the records zlib wrote still
    decode, new ones say xor, and the result is the same."""
    path = tmp_path / "state.sqlite3"
    with _runtime(path, "zlib") as rt:
        handle = rt.start(transfer, Transfer(account=SECRET, amount=5), workflow_id="f-1")
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING  # asleep
    assert {PayloadCodec().codec_of(v) for v in _stored_payloads(path)} == {"zlib"}
    with _runtime(path, Xor()) as rt:
        rt.run_until_idle()
        assert rt.result("f-1") == f"{SECRET.upper()}:20"
        assert [op.state.value for op in rt.history("f-1").operations][:2] == [
            "completed", "completed"]
    codecs = {PayloadCodec().codec_of(v) for v in _stored_payloads(path)}
    assert codecs == {"zlib", "xor"}


def test_a_runtime_that_cannot_read_a_codec_names_it_and_loses_nothing(
        tmp_path: Path) -> None:
    """Records of a codec the runtime does not know: the file still opens, the instance is
    reported unrecovered with the codec's name, and reading it raises UnknownCodecError
    naming it; a runtime with the codec then finishes it."""
    path = tmp_path / "state.sqlite3"
    with _runtime(path, Xor()) as rt:
        rt.start(transfer, Transfer(account=SECRET, amount=5), workflow_id="u-1")
        rt.run_until_idle(skip_time=False)
    with _runtime(path, "zlib") as rt:
        assert "xor" in rt.unrecovered["u-1"]
        with pytest.raises(UnknownCodecError, match="'xor'"):
            rt.history("u-1")
    with _runtime(path, Xor()) as rt:
        rt.run_until_idle()
        assert rt.result("u-1") == f"{SECRET.upper()}:20"
