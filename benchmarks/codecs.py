"""What a payload codec costs per activation: bytes stored and time, identity vs zlib vs kms.

Run:  .venv/bin/python benchmarks/codecs.py [--workflows N] [--json PATH]

Two workflows run on the embedded runtime (LocalRuntime on a SQLite file), N instances each,
once per codec (identity, zlib, kms, zlib+kms):

- ``bank``: the bank example (examples/bank_transaction.py): small payloads (30 to 60 bytes
  of JSON each), three calls, three activations per instance;
- ``order``: a step that returns an order of 100 line items (about 9 KB of JSON), a call that
  prices it, a step that summarises it: larger, repetitive payloads.

For each: the payload bytes stored in the file (every input, result, error, request and
operation result, as the SQLite store holds them), the time spent in the codec per
activation (its encode and decode calls, timed apart: the median of ``--rounds`` runs), the
wall time per activation (the whole run divided by the activations, noisy on a shared
machine), and KMS requests. KMS is moto's
server on 127.0.0.1 in this process (over HTTP): the time of its requests is not AWS's, so
the KMS requests are counted and reported separately (one GenerateDataKey per five minutes of
writes and one Decrypt per data key per process, whatever N is). A micro-benchmark times
encode + decode of one payload of each workload's typical size per codec.

Results go to benchmarks/results/codecs.json; docs/codecs.md cites a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from lambda_workflow import Service, WorkflowContext, workflow  # noqa: E402
from lambda_workflow._runtime.clock import VirtualClock  # noqa: E402
from lambda_workflow.codecs import (  # noqa: E402
    ChainCodec,
    KmsCodec,
    PayloadCodec,
    ZlibCodec,
)
from lambda_workflow.local import LocalRuntime  # noqa: E402


class Line(BaseModel):
    sku: str
    description: str
    quantity: int
    unit_cents: int


class Order(BaseModel):
    order_id: str
    customer: str
    lines: list[Line]


pricing = Service("pricing", Order, int)


def load_order(order_id: str) -> Order:
    return Order(order_id=order_id, customer="customer-" + order_id, lines=[
        Line(sku=f"SKU-{i:05d}", description=f"widget model {i % 7} in colour {i % 5}",
             quantity=1 + i % 3, unit_cents=199 + i) for i in range(100)])


def summarise(order: Order, total: int) -> str:
    return f"{order.order_id}: {len(order.lines)} lines, {total} cents"


@workflow
async def order_flow(ctx: WorkflowContext[str]) -> str:
    order = await ctx.step(load_order, ctx.request)
    total = await ctx.call(pricing, order)
    return await ctx.step(summarise, order, total)


async def _price(order: Order) -> int:
    return sum(line.quantity * line.unit_cents for line in order.lines)


class TimedCodec(PayloadCodec):
    """A PayloadCodec that adds up the time spent in its own encode and decode (the codec's
    cost, measured apart from the rest of the activation, which the shared machine makes
    noisy) and counts the calls."""

    def __init__(self, inner: PayloadCodec) -> None:
        super().__init__(inner.writer, [inner._by_name[n] for n in inner.readable])
        self.seconds = 0.0
        self.calls = 0

    def encode(self, data: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return super().encode(data)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def decode(self, record: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return super().decode(record)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def _stored_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (a,) = db.execute("SELECT COALESCE(SUM(LENGTH(input) + COALESCE(LENGTH(result), 0)"
                          " + COALESCE(LENGTH(error), 0)), 0) FROM instances").fetchone()
        (b,) = db.execute("SELECT COALESCE(SUM(LENGTH(request) + COALESCE(LENGTH(result), 0)),"
                          " 0) FROM operations").fetchone()
    finally:
        db.close()
    return int(a + b)


def _run(workload: str, codec: PayloadCodec, n: int, tmp: Path) -> dict[str, float]:
    import bank_transaction as bank

    codec = TimedCodec(codec)
    path = tmp / f"{workload}-{codec.name}-{time.monotonic_ns()}.sqlite3"
    activations = 0

    def count(event: Any) -> None:
        nonlocal activations
        if type(event).__name__ == "ActivationReport":
            activations += 1

    with LocalRuntime(path, clock=VirtualClock(1_700_000_000.0), codec=codec,
                      on_event=count) as rt:
        if workload == "bank":
            bank.BALANCES["alice"] = 10**9  # every transaction succeeds
            bank.setup(rt)
            start = time.perf_counter()
            for i in range(n):
                rt.start(bank.make_transaction,
                         bank.BankTransaction(account_id="alice", amount=1 + i % 50),
                         workflow_id=f"tx-{i}")
        else:
            rt.register(order_flow)
            rt.implement(pricing, _price)
            start = time.perf_counter()
            for i in range(n):
                rt.start(order_flow, f"o-{i}", workflow_id=f"o-{i}")
        rt.run_until_idle()
        elapsed = time.perf_counter() - start
    stored = _stored_bytes(path)
    path.unlink()
    return {"activations": activations, "seconds": elapsed,
            "us_per_activation": elapsed / activations * 1e6,
            "codec_us_per_activation": codec.seconds / activations * 1e6,
            "codec_calls_per_activation": codec.calls / activations,
            "stored_bytes_per_instance": stored / n}


def _micro(codec: PayloadCodec, payload: bytes, repeats: int = 2000) -> float:
    """Microseconds per encode + decode of ``payload`` (median of 5 batches)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            codec.decode(codec.encode(payload))
        times.append((time.perf_counter() - start) / repeats * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "codecs.json"))
    args = parser.parse_args()

    import bank_transaction as bank  # noqa: F401  (checks the example imports)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    kms = boto3.client("kms", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    key = kms.create_key()["KeyMetadata"]["Arn"]
    requests: dict[str, int] = {}
    kms.meta.events.register("before-call.kms.*", lambda event_name, **_: requests.__setitem__(
        event_name.rsplit(".", 1)[1], requests.get(event_name.rsplit(".", 1)[1], 0) + 1))
    makers: dict[str, Callable[[], PayloadCodec]] = {
        "identity": PayloadCodec,
        "zlib": lambda: PayloadCodec(ZlibCodec()),
        "kms": lambda: PayloadCodec(KmsCodec(kms, key)),
        "zlib+kms": lambda: PayloadCodec(ChainCodec(ZlibCodec(), KmsCodec(kms, key))),
    }
    results: dict[str, Any] = {"workflows": args.workflows, "rounds": args.rounds,
                               "python": platform.python_version(),
                               "machine": platform.machine(), "runs": {}, "micro": {}}
    payloads = {"bank": b'{"account_id":"alice","amount":50}',
                "order": load_order("o-1").model_dump_json().encode()}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workload in ("bank", "order"):
                for name, make in makers.items():
                    runs = []
                    for _ in range(args.rounds):
                        requests.clear()
                        run = _run(workload, make(), args.workflows, Path(tmp))
                        run["kms_requests"] = dict(requests)
                        runs.append(run)
                    best = sorted(runs, key=lambda r: r["codec_us_per_activation"])[
                        len(runs) // 2]
                    results["runs"][f"{workload}/{name}"] = best
                    print(f"{workload:6} {name:9} {best['us_per_activation']:8.1f} us/activation"
                          f" (codec {best['codec_us_per_activation']:6.1f} us in "
                          f"{best['codec_calls_per_activation']:.1f} calls)"
                          f"  {best['stored_bytes_per_instance']:8.0f} B/instance"
                          f"  kms {best['kms_requests']}")
            for workload, payload in payloads.items():
                for name, make in makers.items():
                    codec = make()
                    stored = len(codec.encode(payload))
                    results["micro"][f"{workload}/{name}"] = {
                        "payload_bytes": len(payload), "stored_bytes": stored,
                        "us_encode_decode": _micro(codec, payload)}
                    print(f"micro {workload:6} {name:9} {len(payload):6} -> {stored:6} B  "
                          f"{results['micro'][f'{workload}/{name}']['us_encode_decode']:7.1f} us")
    finally:
        server.stop()
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
