"""What callback heartbeats cost on AWS: an approval with 10 heartbeats, counted on moto and
priced with the cost model of benchmarks/aws_cost.py.

Run:  .venv/bin/python benchmarks/heartbeats.py [--label after] [--json PATH]

The workflow (``approval`` below) creates a callback with a 120 s heartbeat timeout and a day's
timeout and waits for it. A client heartbeats it 10 times, 30 s apart, then completes it. The
workflow function is on the FIFO queue and the timer function on the standard timer queue, as
deployed; the virtual time moves 30 s between heartbeats (moto's SQS delays follow it), and the
queues are drained after each step, so every timer that is due fires. Every AWS request from the
start to the end is recorded and priced as aws_cost.py prices it (SQS requests per 64 KB,
DynamoDB request units from the items, Lambda requests and estimated duration).

The same script measures the code before heartbeats were recorded on the callback: run it with
``PYTHONPATH`` pointing at that version's ``src`` (``git archive <commit> src``) and
``--label before``. Results go to benchmarks/results/heartbeats_<label>.json; the table is in
docs/aws-cost.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests", ROOT / "examples", ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

import aws_cost  # noqa: E402  (benchmarks/)
import boto3  # noqa: E402
import pytest  # noqa: E402

import lambda_workflow  # noqa: E402
from lambda_workflow import WorkflowContext, workflow  # noqa: E402
from lambda_workflow.aws import (  # noqa: E402
    AwsDeployment,
    WorkflowClient,
    timer_handler,
    workflow_handler,
)
from lambda_workflow.aws.payloads import dynamodb_item_size  # noqa: E402
from tests.aws.conftest import _INVOCATIONS, REGION, Aws, moto_server  # noqa: E402
from tests.aws.harness import EventSourceMapping, drain  # noqa: E402

HEARTBEATS = 10
EVERY_S = 30.0
HEARTBEAT_TIMEOUT_S = 120.0
KEY = "a benchmark key of thirty-two b!"
TOKENS: dict[str, str] = {}


@workflow
async def approval(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("approval", bool, timeout=86_400,
                             heartbeat_timeout=HEARTBEAT_TIMEOUT_S)
    TOKENS[ctx.workflow_id] = cb.token
    return "approved" if await cb else "rejected"


class _Clock:
    """Wall-clock time plus an offset the scenario moves (shared with moto's SQS)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@contextmanager
def _shifted_sqs(clock: _Clock) -> Iterator[None]:
    import moto.sqs.models as sqs_models

    real = sqs_models.unix_time_millis  # type: ignore[attr-defined]

    def millis(*args: object) -> float:
        return float(real(*args)) + clock.offset * 1000  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqs_models, "unix_time_millis", millis)
        yield


def run(endpoint: str) -> aws_cost.Run:
    aws_cost._reset(endpoint)
    clock = _Clock()
    with pytest.MonkeyPatch.context() as mp, _shifted_sqs(clock):
        for var in list(os.environ):
            if var.startswith(("LAMBDA_WORKFLOW_", "AWS_")):
                mp.delenv(var)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        session = boto3.Session(region_name=REGION)
        recorder = aws_cost.Recorder()
        recorder.install(session)
        aws = Aws(endpoint, session, Counter(), _INVOCATIONS)
        config = replace(aws.config(), callback_key=KEY,
                         timer_queue_url=aws.create_queue(aws.name("timers")))
        deployment = AwsDeployment(config, session=session, clock=clock)
        sqs = aws.client("sqs")
        mappings = [
            EventSourceMapping(sqs, config.queue_url, recorder.timed(
                "workflow", workflow_handler(approval, deployment=deployment))),
            EventSourceMapping(sqs, config.timer_queue_url or "", recorder.timed(
                "timer", timer_handler(deployment=deployment)))]
        client = WorkflowClient(config, session=session, clock=clock)
        # A warm-up instance, not recorded: every function creates its clients first.
        client.start(approval, "warm-up", workflow_id="warm-up")
        drain(mappings)
        client.complete_callback(TOKENS["warm-up"], True)
        drain(mappings)

        recorder.active = True
        started = time.perf_counter()
        with recorder.caller("client"):
            handle = client.start(approval, "expense 1", workflow_id="approval-1")
        drain(mappings)
        for _ in range(HEARTBEATS):
            clock.offset += EVERY_S
            drain(mappings)  # timers due by now fire first
            with recorder.caller("client"):
                client.heartbeat_callback(TOKENS["approval-1"])
            drain(mappings)
        clock.offset += EVERY_S
        drain(mappings)
        with recorder.caller("client"):
            client.complete_callback(TOKENS["approval-1"], True)
        drain(mappings)
        wall = time.perf_counter() - started
        recorder.active = False
        if handle.result() != "approved":
            raise AssertionError(f"approval-1 ended {handle.status()}, not approved")
        items = [item for item in aws_cost._final_items(endpoint, config.table)
                 if item["pk"]["S"].endswith("approval-1")]
    return aws_cost.Run("approval", [("approval-1", "", 0)], wall, recorder.calls,
                        recorder.invocations,
                        {aws_cost._key(item): dynamodb_item_size(item) for item in items},
                        0, Counter({("completed", "approved"): 1}))


def summarize(costed: aws_cost.Costed, label: str) -> dict[str, Any]:
    run = costed.run
    by_function = Counter(i.function for i in run.invocations)
    writes = sum(n for op, n in costed.requests.items()
                 if op in ("dynamodb.PutItem", "dynamodb.UpdateItem", "dynamodb.DeleteItem",
                           "dynamodb.TransactWriteItems"))
    sends = sum(n for op, n in costed.requests.items()
                if op in ("sqs.SendMessage", "sqs.SendMessageBatch"))
    components = costed.components()
    return {
        "label": label,
        "library": str(Path(lambda_workflow.__file__).resolve().parent),
        "heartbeats": HEARTBEATS, "every_s": EVERY_S,
        "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
        "workflow_activations": by_function["workflow"],
        "timer_function_invocations": by_function["timer"],
        "lambda_invocations": len(run.invocations),
        "dynamodb_write_requests": writes,
        "wru": costed.units.wru,
        "rru": costed.units.rru,
        "sqs_messages_sent": sends,
        "sqs_billed_requests": costed.units.sqs_fifo + costed.units.sqs_standard,
        "usd_per_million_approvals": components["total"] * aws_cost.MILLION,
        "usd_components_per_million": {k: v * aws_cost.MILLION for k, v in components.items()},
        "requests": dict(sorted(costed.requests.items())),
        "requests_by_caller": {k: dict(sorted(v.items()))
                               for k, v in sorted(costed.requests_by_caller.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after",
                        help="name of this measurement (before / after)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: benchmarks/results/heartbeats_<label>.json")
    args = parser.parse_args()
    for name in ("moto", "botocore.credentials", "lambda_workflow", "werkzeug"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with moto_server() as endpoint:
        measured = run(endpoint)
    data = summarize(aws_cost.Costed(measured, 1.0), args.label)
    rows = ["workflow_activations", "timer_function_invocations", "lambda_invocations",
            "dynamodb_write_requests", "wru", "rru", "sqs_messages_sent",
            "sqs_billed_requests", "usd_per_million_approvals"]
    for row in rows:
        value = data[row]
        print(f"{row:<28} {value:.2f}" if isinstance(value, float) else f"{row:<28} {value}")
    out = args.json or ROOT / "benchmarks" / "results" / f"heartbeats_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
