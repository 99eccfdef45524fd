"""Replay benchmark for aws-durable-execution-sdk-python (AWS Lambda durable functions).

Run inside the venv that has the SDK installed (see run_peers.py); prints one JSON document on
stdout.  For each N it:

1. records: invokes the decorated handler once as the first invocation of an execution (the
   initial state holds only the EXECUTION operation), so the SDK runs N ``context.step`` calls
   for real and checkpoints them into ``InMemoryDurableService``, a stand-in for the boto3
   ``lambda`` client that applies each checkpoint the way the service does;
2. builds the invocation event the durable-functions service sends for the next invocation: the
   JSON wire form (``DurableExecutionArn``, ``CheckpointToken``, ``InitialExecutionState`` with
   the EXECUTION operation still STARTED plus the N SUCCEEDED step operations);
3. times ``handler(event, lambda_context)``: the SDK parses the event, replays the N steps from
   their checkpointed results (no step function runs) and returns SUCCEEDED.

For the first N between 1 and 100 the recording is checked against the SDK's own local test
runner (aws-durable-execution-sdk-python-testing): both must record the same step operations.

No network is used: the handler is built with ``durable_execution(boto3_client=...)`` and that
client is the in-memory stand-in.  Nothing in this file is timed except the handler call.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

from aws_durable_execution_sdk_python import (
    DurableContext,
    StepContext,
    durable_execution,
    durable_step,
)
from aws_durable_execution_sdk_python.lambda_service import Operation

PEER = "aws-durable-execution-sdk-python"
EXECUTION_ID = "3f1c7a52-0b7e-4d55-9d2a-6c1f0e9a4b10"
ARN = (
    "arn:aws:lambda:us-east-1:123456789012:function:replay-bench:$LATEST"
    f"/durable-execution/replay-bench/{EXECUTION_ID}"
)
# The execution operation's id is the last segment of the ARN (the SDK looks it up that way).
EXECUTION_OPERATION_ID = ARN.rsplit("/", 1)[-1]
INPUT_PAYLOAD = json.dumps({"account_id": "acct-1"})


class InMemoryDurableService:
    """Stands in for the boto3 ``lambda`` client: the two durable-execution APIs the SDK calls.

    Operations are kept as the service's (Smithy-named) dicts.  Checkpoint updates are applied
    the way the service records them (START -> STARTED, SUCCEED -> SUCCEEDED with the payload as
    the step's result and the attempt counted); only what a loop of steps needs is supported.
    """

    def __init__(self, operations: list[dict[str, Any]]) -> None:
        self.operations: dict[str, dict[str, Any]] = {op["Id"]: op for op in operations}
        self.checkpoint_calls = 0
        self.state_calls = 0
        self._token = 0

    def _next_token(self) -> str:
        self._token += 1
        return f"token-{self._token}"

    def checkpoint_durable_execution(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["DurableExecutionArn"] == ARN
        self.checkpoint_calls += 1
        now = datetime.now(UTC)
        changed: list[dict[str, Any]] = []
        execution_done = False
        for update in kwargs["Updates"]:
            if update["Type"] == "EXECUTION":
                execution_done = True
                continue
            changed.append(self._apply_step_update(update, now))
        return {
            "CheckpointToken": None if execution_done else self._next_token(),
            "NewExecutionState": {"Operations": copy.deepcopy(changed)},
        }

    def _apply_step_update(self, update: dict[str, Any], now: datetime) -> dict[str, Any]:
        if update["Type"] != "STEP":
            raise NotImplementedError(f"this stand-in only records steps, got {update['Type']}")
        current = self.operations.get(update["Id"])
        attempt = current["StepDetails"]["Attempt"] if current else 0
        op: dict[str, Any] = {"Id": update["Id"], "Type": "STEP"}
        for key in ("ParentId", "Name", "SubType"):
            if key in update:
                op[key] = update[key]
        op["StartTimestamp"] = current["StartTimestamp"] if current else now
        if update["Action"] == "START":
            op["Status"] = "STARTED"
            op["StepDetails"] = {"Attempt": attempt}
        elif update["Action"] == "SUCCEED":
            op["Status"] = "SUCCEEDED"
            op["EndTimestamp"] = now
            op["StepDetails"] = {"Attempt": attempt + 1, "Result": update.get("Payload")}
        else:
            raise NotImplementedError(f"this stand-in does not record {update['Action']}")
        self.operations[update["Id"]] = op
        return op

    def get_durable_execution_state(self, **kwargs: Any) -> dict[str, Any]:
        # Only called when an invocation input has a NextMarker; ours carry every operation.
        self.state_calls += 1
        return {"Operations": [], "NextMarker": None}


def execution_operation() -> dict[str, Any]:
    return {
        "Id": EXECUTION_OPERATION_ID,
        "Type": "EXECUTION",
        "Status": "STARTED",
        "Name": "replay-bench",
        "StartTimestamp": datetime.now(UTC),
        "ExecutionDetails": {"InputPayload": INPUT_PAYLOAD},
    }


def invocation_event(operations: list[dict[str, Any]], token: str) -> dict[str, Any]:
    """The event the service sends to a durable function, as the Lambda runtime hands it over."""
    event = {
        "DurableExecutionArn": ARN,
        "CheckpointToken": token,
        "InitialExecutionState": {
            # to_json_dict is the SDK's own JSON form (timestamps as epoch milliseconds).
            "Operations": [Operation.from_dict(op).to_json_dict() for op in operations],
            "NextMarker": "",
        },
    }
    # The runtime receives JSON text and passes json.loads() of it: do the same round trip.
    result: dict[str, Any] = json.loads(json.dumps(event))
    return result


def lambda_context() -> SimpleNamespace:
    return SimpleNamespace(
        aws_request_id="replay-bench-request",
        function_name="replay-bench",
        function_version="$LATEST",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:replay-bench",
        memory_limit_in_mb=1024,
        get_remaining_time_in_millis=lambda: 900_000,
    )


STEP_CALLS: list[int] = []  # one entry per real run of the step function


@dataclass(frozen=True)
class Transaction:
    """The step's request: a new object per step, as each of our calls builds a new model."""

    account_id: str
    amount: int


@durable_step
def get_balance(step_context: StepContext, tx: Transaction) -> dict[str, int]:
    STEP_CALLS.append(1)
    return {"balance": 1}


def make_handler(
    n: int, service: InMemoryDurableService, marks: list[float] | None = None
) -> Callable[..., Any]:
    @durable_execution(boto3_client=service)
    def handler(event: dict[str, Any], context: DurableContext) -> int:
        total = 0
        for i in range(n):
            balance = context.step(get_balance(Transaction(account_id="acct-1", amount=i)))
            total += balance["balance"]
        if marks is not None:
            marks.append(time.perf_counter())  # the workflow body is done replaying
        return total

    return handler


def record(n: int) -> list[dict[str, Any]]:
    """First invocation: run the N steps for real, return the service's recorded operations."""
    service = InMemoryDurableService([execution_operation()])
    handler = make_handler(n, service)
    output = handler(
        invocation_event(list(service.operations.values()), "token-0"), lambda_context()
    )
    if output.get("Status") != "SUCCEEDED" or json.loads(output["Result"]) != n:
        raise RuntimeError(f"recording run failed: {output}")
    operations = list(service.operations.values())
    steps = [op for op in operations if op["Type"] == "STEP"]
    if len(steps) != n or any(op["Status"] != "SUCCEEDED" for op in steps):
        raise RuntimeError(f"expected {n} SUCCEEDED steps, recorded {len(steps)}")
    return operations


def verify_against_testing_runner(n: int, operations: list[dict[str, Any]]) -> bool:
    """Check that the stand-in records what the SDK's own local test runner records."""
    from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner
    from aws_durable_execution_sdk_python_testing.stores.memory import InMemoryExecutionStore

    @durable_execution
    def handler(event: dict[str, Any], context: DurableContext) -> int:
        return sum(
            context.step(get_balance(Transaction(account_id="acct-1", amount=i)))["balance"]
            for i in range(n)
        )

    store = InMemoryExecutionStore()
    with DurableFunctionTestRunner(handler=handler, store=store) as runner:
        result = runner.run(input=INPUT_PAYLOAD, execution_timeout=120)
    if result.result is None or json.loads(result.result) != n:
        raise RuntimeError(f"testing runner: unexpected result {result.result!r}")
    (execution,) = store.list_all()

    def key(op: Any) -> tuple[Any, ...]:
        d = op.to_dict() if isinstance(op, Operation) else op
        details = d.get("StepDetails", {})
        return (
            d["Id"], d["Type"], d.get("SubType"), d.get("Name"), d["Status"],
            details.get("Attempt"), details.get("Result"),
        )  # fmt: skip

    theirs = [key(op) for op in execution.operations if op.operation_type.value == "STEP"]
    ours = [key(op) for op in operations if op["Type"] == "STEP"]
    if theirs != ours:
        raise RuntimeError(
            f"stand-in recording differs from the testing runner's:\n{theirs[:2]}\n{ours[:2]}"
        )
    return True


def replay_once(n: int, operations: list[dict[str, Any]]) -> tuple[float, float, float, int]:
    """One timed replay invocation.

    Returns (wall seconds of the whole handler call, seconds from the call until the workflow
    body returned, CPU seconds of the process during the call, checkpoint calls made).
    """
    service = InMemoryDurableService(copy.deepcopy(operations))
    marks: list[float] = []
    handler = make_handler(n, service, marks)
    event = invocation_event(operations, "token-replay")
    context = lambda_context()
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    output = handler(event, context)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if output.get("Status") != "SUCCEEDED" or json.loads(output["Result"]) != n:
        raise RuntimeError(f"replay of {n} steps did not succeed: {output}")
    return wall, marks[0] - t0, cpu, service.checkpoint_calls


def reps_for(requested: int, first_run: float, budget: float) -> int:
    """All requested repetitions if they fit the time budget, else as many as fit, at least 3."""
    if first_run * requested <= budget:
        return requested
    return max(3, int(budget / max(first_run, 1e-9)))


def bench(ns: list[int], reps: int, budget: float, skip_above: float) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    previous: tuple[int, float] | None = None
    verified = False
    for n in ns:
        estimate = None
        if previous is not None and previous[0] > 0:
            estimate = previous[1] * n / previous[0]
            if estimate > skip_above:
                reason = f"estimated {estimate:.0f} s per run (linear from N={previous[0]})"
                results.append({"n": n, "skipped": reason})
                continue
        t0 = time.perf_counter()
        operations = record(n)
        record_s = time.perf_counter() - t0
        if not verified and 0 < n <= 100:
            verified = verify_against_testing_runner(n, operations)
        STEP_CALLS.clear()
        if estimate is None or estimate < 2.0:
            replay_once(n, operations)  # warm-up, not counted
        runs = [replay_once(n, operations)]
        if runs[0][0] > skip_above:
            results.append(
                {"n": n, "skipped": f"one run took {runs[0][0]:.1f} s > {skip_above:.0f} s"}
            )
            continue
        runs += [replay_once(n, operations) for _ in range(reps_for(reps, runs[0][0], budget) - 1)]
        walls = [run[0] for run in runs]
        to_return = statistics.median(run[1] for run in runs)
        cpu = statistics.median(run[2] for run in runs)
        median_wall = statistics.median(walls)
        previous = (n, median_wall)
        results.append({
            "n": n,
            "repetitions": len(runs),
            "median_s": median_wall,
            "min_s": min(walls),
            "median_to_workflow_return_s": to_return,
            "median_cpu_s": cpu,
            "us_per_step": median_wall / n * 1e6 if n else None,
            "to_workflow_return_us_per_step": to_return / n * 1e6 if n else None,
            "cpu_us_per_step": cpu / n * 1e6 if n else None,
            "cpu_s": [run[2] for run in runs],
            "checkpoint_calls_during_replay": max(run[3] for run in runs),
            "step_functions_run_during_replay": len(STEP_CALLS),
            "record_s": record_s,
            "walls_s": walls,
        })  # fmt: skip
    return {
        "peer": PEER,
        "version": version("aws-durable-execution-sdk-python"),
        "testing_version": version("aws-durable-execution-sdk-python-testing"),
        "python": sys.version.split()[0],
        "recording_verified_against_testing_runner": verified,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ns", nargs="+", type=int, help="step counts (0 = empty workflow)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per N")
    parser.add_argument(
        "--skip-above", type=float, default=60.0, help="skip N if a run exceeds this"
    )
    args = parser.parse_args()
    json.dump(bench(args.ns, args.reps, args.budget, args.skip_above), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
