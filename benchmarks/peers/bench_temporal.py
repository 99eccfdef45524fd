"""Replay benchmark for temporalio (Temporal's Python SDK): ``Replayer.replay_workflow``.

Run inside the venv that has temporalio installed (see run_peers.py); prints one JSON document
on stdout.  For each N it builds the history a Temporal server records for ``BalanceLoop`` (a
workflow that executes N activities one after the other, each returning {"balance": 1}) and
times ``await Replayer(workflows=[BalanceLoop]).replay_workflow(history)``.

Temporal's test servers (``WorkflowEnvironment.start_time_skipping()`` / ``start_local()``)
download a server binary at start, which this machine cannot do, so the history is built here
event by event, in the order and with the links the server writes (see ``build_history``).  Its
payloads are encoded with temporalio's own default data converter.  The replay itself checks the
history against the workflow code: a wrong event, activity id or type fails the replay with a
nondeterminism error, and the workflow fails (so the replay fails) unless the N decoded results
add up to N.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from temporalio import workflow
from temporalio.api.common.v1 import ActivityType, Payloads, RetryPolicy, WorkflowType
from temporalio.api.enums.v1 import EventType, TaskQueueKind
from temporalio.api.history.v1 import (
    ActivityTaskCompletedEventAttributes,
    ActivityTaskScheduledEventAttributes,
    ActivityTaskStartedEventAttributes,
    HistoryEvent,
    WorkflowExecutionCompletedEventAttributes,
    WorkflowExecutionStartedEventAttributes,
    WorkflowTaskCompletedEventAttributes,
    WorkflowTaskScheduledEventAttributes,
    WorkflowTaskStartedEventAttributes,
)
from temporalio.api.sdk.v1 import WorkflowTaskCompletedMetadata
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

PEER = "temporalio"
WORKFLOW_TYPE = "BalanceLoop"
ACTIVITY_TYPE = "get_balance"
TASK_QUEUE = "replay-bench"
ACTIVITY_TIMEOUT = timedelta(seconds=30)
RUN_ID = "0b9c3e9e-6d0f-4f3e-9a53-7d8f1f6f2c11"
# Core internal flags (sdk-core's CoreInternalFlags): 1 id-and-type determinism checks,
# 2 upsert search attributes on patch, 3 move terminal commands, 4 Nexus determinism checks.
CORE_FLAGS = [1, 2, 3, 4]


@dataclass
class Balance:
    balance: int


@workflow.defn(name=WORKFLOW_TYPE)
class BalanceLoop:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for _ in range(n):
            result = await workflow.execute_activity(
                ACTIVITY_TYPE,
                "acct-1",
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                result_type=Balance,
            )
            total += result.balance
        if total != n:
            raise ApplicationError(f"decoded {total} from {n} activity results", non_retryable=True)
        return total


class HistoryBuilder:
    """Appends events with consecutive ids, as the server numbers them."""

    def __init__(self) -> None:
        self.events: list[HistoryEvent] = []
        self._clock = datetime(2026, 1, 1, tzinfo=UTC)

    def add(self, event_type: int, **attributes: Any) -> int:
        self._clock += timedelta(milliseconds=3)
        stamp = Timestamp()
        stamp.FromDatetime(self._clock)
        event = HistoryEvent(
            event_id=len(self.events) + 1,
            event_time=stamp,
            event_type=event_type,  # type: ignore[arg-type]
            task_id=1048576 + len(self.events),
            **attributes,
        )
        self.events.append(event)
        return event.event_id

    def workflow_task(
        self, task_queue: TaskQueue, sdk_metadata: WorkflowTaskCompletedMetadata | None = None
    ) -> int:
        """WorkflowTaskScheduled, Started, Completed; returns the Completed event's id."""
        scheduled = self.add(
            EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
            workflow_task_scheduled_event_attributes=WorkflowTaskScheduledEventAttributes(
                task_queue=task_queue, start_to_close_timeout=Duration(seconds=10), attempt=1
            ),
        )
        started = self.add(
            EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            workflow_task_started_event_attributes=WorkflowTaskStartedEventAttributes(
                scheduled_event_id=scheduled, identity="bench-worker", request_id=f"wft-{scheduled}"
            ),
        )
        return self.add(
            EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
            workflow_task_completed_event_attributes=WorkflowTaskCompletedEventAttributes(
                scheduled_event_id=scheduled,
                started_event_id=started,
                identity="bench-worker",
                sdk_metadata=sdk_metadata,
            ),
        )


def payloads(*values: Any) -> Payloads:
    return Payloads(payloads=DataConverter.default.payload_converter.to_payloads(list(values)))


def build_history(n: int) -> WorkflowHistory:
    """The history of a completed BalanceLoop(n) run.

    WorkflowExecutionStarted, then one workflow task (Scheduled, Started, Completed) whose
    completion schedules activity 1; per activity: ActivityTaskScheduled (linked to the
    workflow task that scheduled it), ActivityTaskStarted, ActivityTaskCompleted, and the
    workflow task the completion triggers; after the last one, WorkflowExecutionCompleted.
    4 + 6 N + 1 events.
    """
    history = HistoryBuilder()
    task_queue = TaskQueue(name=TASK_QUEUE, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL)
    history.add(
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
            workflow_type=WorkflowType(name=WORKFLOW_TYPE),
            task_queue=task_queue,
            input=payloads(n),
            workflow_task_timeout=Duration(seconds=10),
            original_execution_run_id=RUN_ID,
            first_execution_run_id=RUN_ID,
            identity="bench-client",
            attempt=1,
        ),
    )
    # A worker writes its SDK's name and version and the core flags it uses into the first
    # workflow task completion (temporalio's core writes every flag it knows on a new workflow).
    # Flag 1 turns on the activity id and type checks during replay.
    first_metadata = WorkflowTaskCompletedMetadata(
        core_used_flags=CORE_FLAGS, sdk_name="temporal-python", sdk_version=version("temporalio")
    )
    completed_task = history.workflow_task(task_queue, first_metadata)
    activity_input = payloads("acct-1")
    activity_result = payloads({"balance": 1})
    timeout = Duration()
    timeout.FromTimedelta(ACTIVITY_TIMEOUT)
    for seq in range(1, n + 1):
        scheduled = history.add(
            EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            activity_task_scheduled_event_attributes=ActivityTaskScheduledEventAttributes(
                activity_id=str(seq),
                activity_type=ActivityType(name=ACTIVITY_TYPE),
                task_queue=task_queue,
                input=activity_input,
                schedule_to_close_timeout=Duration(),
                schedule_to_start_timeout=Duration(),
                start_to_close_timeout=timeout,
                heartbeat_timeout=Duration(),
                workflow_task_completed_event_id=completed_task,
                retry_policy=RetryPolicy(
                    initial_interval=Duration(seconds=1),
                    backoff_coefficient=2.0,
                    maximum_interval=Duration(seconds=100),
                ),
            ),
        )
        started = history.add(
            EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(
                scheduled_event_id=scheduled,
                identity="bench-worker",
                request_id=f"act-{seq}",
                attempt=1,
            ),
        )
        history.add(
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            activity_task_completed_event_attributes=ActivityTaskCompletedEventAttributes(
                result=activity_result,
                scheduled_event_id=scheduled,
                started_event_id=started,
                identity="bench-worker",
            ),
        )
        completed_task = history.workflow_task(task_queue)
    history.add(
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        workflow_execution_completed_event_attributes=WorkflowExecutionCompletedEventAttributes(
            result=payloads(n), workflow_task_completed_event_id=completed_task
        ),
    )
    return WorkflowHistory(workflow_id=f"balance-loop-{n}", events=history.events)


async def replay_once(replayer: Replayer, history: WorkflowHistory) -> tuple[float, float]:
    """One timed replay: returns (wall seconds, CPU seconds of the process)."""
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await replayer.replay_workflow(history)  # raises on any replay failure
    return time.perf_counter() - t0, time.process_time() - cpu0


def reps_for(requested: int, first_run: float, budget: float) -> int:
    """All requested repetitions if they fit the time budget, else as many as fit, at least 3."""
    if first_run * requested <= budget:
        return requested
    return max(3, int(budget / max(first_run, 1e-9)))


async def self_check(replayer: Replayer) -> str:
    """Show that the replay checks the history: a wrong activity type must fail it."""
    history = build_history(3)
    scheduled = [
        e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
    ]
    scheduled[1].activity_task_scheduled_event_attributes.activity_type.name = "not_get_balance"
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    if result.replay_failure is None:
        raise RuntimeError("a history with a wrong activity type replayed without error")
    return type(result.replay_failure).__name__


async def bench_variant(
    name: str,
    replayer: Replayer,
    ns: list[int],
    reps: int,
    budget: float,
    skip_above: float,
    max_n: int | None = None,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    previous: tuple[int, float] | None = None
    for n in ns:
        if max_n is not None and n > max_n:
            reason = f"not run: this variant is limited to N <= {max_n} (--{name}-max-n)"
            results.append({"variant": name, "n": n, "skipped": reason})
            continue
        estimate = None
        if previous is not None and previous[0] > 0:
            estimate = previous[1] * n / previous[0]
            if estimate > skip_above:
                reason = f"estimated {estimate:.0f} s per run (linear from N={previous[0]})"
                results.append({"variant": name, "n": n, "skipped": reason})
                continue
        t0 = time.perf_counter()
        history = build_history(n)
        build_s = time.perf_counter() - t0
        if estimate is None or estimate < 2.0:
            await replay_once(replayer, history)  # warm-up, not counted
        wall, cpu = await replay_once(replayer, history)
        if wall > skip_above:
            reason = f"one run took {wall:.1f} s > {skip_above:.0f} s"
            results.append({"variant": name, "n": n, "skipped": reason})
            continue
        walls, cpus = [wall], [cpu]
        for _ in range(reps_for(reps, wall, budget) - 1):
            wall, cpu = await replay_once(replayer, history)
            walls.append(wall)
            cpus.append(cpu)
        median_wall = statistics.median(walls)
        previous = (n, median_wall)
        results.append({
            "variant": name,
            "n": n,
            "events": len(history.events),
            "repetitions": len(walls),
            "median_s": median_wall,
            "min_s": min(walls),
            "median_cpu_s": statistics.median(cpus),
            "us_per_step": median_wall / n * 1e6 if n else None,
            "cpu_us_per_step": statistics.median(cpus) / n * 1e6 if n else None,
            "history_build_s": build_s,
            "walls_s": walls,
        })  # fmt: skip
    return results


async def bench(
    ns: list[int],
    reps: int,
    budget: float,
    skip_above: float,
    variants: list[str],
    max_ns: dict[str, int | None],
) -> dict[str, Any]:
    runners = {
        "sandboxed": SandboxedWorkflowRunner(),  # the default of Worker and Replayer
        "unsandboxed": UnsandboxedWorkflowRunner(),
    }
    results: list[dict[str, Any]] = []
    self_checks: dict[str, str] = {}
    for name in variants:
        replayer = Replayer(workflows=[BalanceLoop], workflow_runner=runners[name])
        self_checks[name] = await self_check(replayer)
        results += await bench_variant(
            name, replayer, ns, reps, budget, skip_above, max_ns.get(name)
        )
    return {
        "peer": PEER,
        "version": version("temporalio"),
        "python": sys.version.split()[0],
        "history_source": "built event by event (no Temporal server reachable offline)",
        "wrong_activity_type_replay_fails_with": self_checks,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ns", nargs="+", type=int, help="activity counts (0 = empty workflow)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per N")
    parser.add_argument(
        "--skip-above", type=float, default=60.0, help="skip N if a run exceeds this"
    )
    parser.add_argument(
        "--variants", default="sandboxed,unsandboxed", help="workflow runners, comma-separated"
    )
    parser.add_argument("--sandboxed-max-n", type=int, help="largest N for this variant")
    parser.add_argument("--unsandboxed-max-n", type=int, help="largest N for this variant")
    args = parser.parse_args()
    max_ns = {"sandboxed": args.sandboxed_max_n, "unsandboxed": args.unsandboxed_max_n}
    variants = [v for v in args.variants.split(",") if v]
    # Core logs to stdout; keep it for the JSON (the self-check's expected failure logs a WARN).
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet))))
    result = asyncio.run(bench(args.ns, args.reps, args.budget, args.skip_above, variants, max_ns))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
