"""Workflows as data, and the adversity the property tests put them through.

A :class:`Plan` is a list of steps, each a single call or a gather of calls to services whose
replies are pure functions of the request (some fail with a ``ServiceError``); the one
workflow :data:`interpret` runs any plan. :func:`run_plans` runs plans on a ``LocalRuntime``
whose engine sees its store and transport through a :class:`FaultInjector` (a crash before
or after any chosen call) and whose service replies travel through a :class:`Network` that can
hold them, deliver them in a random order and deliver extra copies.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel

from lambda_workflow import (
    Completion,
    InstanceStatus,
    Service,
    ServiceError,
    Workflow,
    WorkflowContext,
    workflow,
)
from lambda_workflow.backends.memory import DeadLetter, MemoryStateStore
from lambda_workflow.backends.protocols import StateStore, Transport
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.local import LocalRuntime, ServiceInvocation
from lambda_workflow.models import History, InstanceRecord, OperationRecord, OperationState
from lambda_workflow.models import Outcome as RecordedOutcome

T = TypeVar("T")
ReqT = TypeVar("ReqT")
ResT = TypeVar("ResT")
MODULUS = 1_000_003
MAX_CRASHES = 4


class CallSpec(BaseModel):
    service: str
    base: int
    fail: bool


class StepSpec(BaseModel):
    # context: the calls one after another in a child context; map: each call an item of a
    # nested ctx.map (all completed; the first failed item's error is raised)
    kind: Literal["call", "gather", "collect", "context", "map"]
    calls: list[CallSpec]
    catch: bool


class Plan(BaseModel):
    steps: list[StepSpec]


class CallRequest(BaseModel):
    n: int
    fail: bool


class Outcome(BaseModel):
    acc: int
    trace: list[str]


SERVICE_FACTORS = {"alpha": 3, "beta": 7, "gamma": 13}
SERVICES = {name: Service(name, CallRequest, int) for name in SERVICE_FACTORS}


def _respond(name: str) -> Callable[[CallRequest], int]:
    factor = SERVICE_FACTORS[name]

    def respond(request: CallRequest) -> int:
        if request.fail:
            raise ServiceError(f"{name.title()}Refused", f"{name} refused n={request.n}",
                               {"n": request.n})
        return (request.n * factor + 11) % 10_007

    return respond


async def _respond_async(request: CallRequest) -> int:
    await asyncio.sleep(0)
    return _respond("gamma")(request)


@workflow
async def interpret(ctx: WorkflowContext[Plan]) -> Outcome:
    """Run the plan: each request is built from the results so far, so a wrong or reordered
    result changes every later request (and the replay check would notice)."""
    acc = 1
    trace: list[str] = []
    for index, step in enumerate(ctx.request.steps):
        if step.kind in ("context", "map"):
            try:
                values = await _in_contexts(ctx, step, acc, index)
            except ServiceError as err:
                if not step.catch:
                    raise
                acc = (acc * 17 + len(err.message) + len(err.error_type)) % MODULUS
                trace.append(f"{index}: caught {err.error_type} from {err.service}#"
                             f"{err.call_id}")
                continue
            for value in values:
                acc = (acc * 31 + value) % MODULUS
            trace.append(f"{index}: {values}")
            continue
        calls = [ctx.call(SERVICES[c.service], CallRequest(n=(acc + c.base) % MODULUS,
                                                           fail=c.fail))
                 for c in step.calls]
        try:
            if step.kind == "call":
                values = [await calls[0]]
            elif step.kind == "gather":
                values = list(await asyncio.gather(*calls))
            else:
                values = []
                for settled in await asyncio.gather(*calls, return_exceptions=True):
                    if isinstance(settled, BaseException):
                        raise settled
                    values.append(settled)
        except ServiceError as err:
            if not step.catch:
                raise
            acc = (acc * 17 + len(err.message) + len(err.error_type)) % MODULUS
            trace.append(f"{index}: caught {err.error_type} from {err.service}#{err.call_id}")
            continue
        for value in values:
            acc = (acc * 31 + value) % MODULUS
        trace.append(f"{index}: {values}")
    return Outcome(acc=acc, trace=trace)


async def _in_contexts(ctx: WorkflowContext[Plan], step: StepSpec, acc: int,
                       index: int) -> list[int]:
    """A ``context`` or ``map`` step: its calls inside child contexts."""
    if step.kind == "context":
        async def body(child: WorkflowContext[Any], start: int) -> list[int]:
            values: list[int] = []
            n = start
            for c in step.calls:
                value = await child.call(SERVICES[c.service],
                                         CallRequest(n=(n + c.base) % MODULUS, fail=c.fail))
                values.append(value)
                n = (n * 31 + value) % MODULUS
            return values

        return await ctx.run_in_child_context(body, acc, name=f"step {index}")
    result = await ctx.map(
        step.calls, lambda c: ctx.call(SERVICES[c.service],
                                       CallRequest(n=(acc + c.base) % MODULUS, fail=c.fail)),
        completion=Completion(all_completed=True), result_type=int)
    errors = result.errors()
    if errors:
        raise errors[0][1]
    return result.values()


def setup_runtime(runtime: LocalRuntime) -> None:
    """Register :data:`interpret` and implement every service (``gamma`` as async)."""
    runtime.register(interpret)
    for name, service in SERVICES.items():
        runtime.implement(service, _respond_async if name == "gamma" else _respond(name))


class InjectedCrash(Exception):
    """The process 'died' at a store or transport boundary."""


@dataclass
class FaultInjector:
    """Counts boundary calls and crashes at the chosen ones, before or after the call runs.

    ``crash_at`` maps a boundary index to whether the crash comes after the call took effect.
    """

    crash_at: Mapping[int, bool] = field(default_factory=dict)
    calls: int = 0
    seen: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    # (workflow id, call id) -> crashes while a service's reply was being sent: the service
    # may run again for that call once the runtime redelivers the request.
    serve_windows: Counter[tuple[str, str]] = field(default_factory=Counter)

    def around(self, what: str, fn: Callable[[], T], *,
               reply_to: tuple[str, str] | None = None) -> T:
        index = self.calls
        self.calls += 1
        self.seen.append(what)
        after = self.crash_at.get(index)
        if after is None:
            return fn()
        if after:
            fn()
        self.fired.append(f"{'after' if after else 'before'} {what} (boundary {index})")
        if reply_to is not None:
            self.serve_windows[reply_to] += 1
        raise InjectedCrash(self.fired[-1])


class FaultyStore:
    """A StateStore that lets the injector crash around every call."""

    def __init__(self, inner: StateStore, faults: FaultInjector) -> None:
        self._inner = inner
        self._faults = faults

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        return self._faults.around("create_instance",
                                   lambda: self._inner.create_instance(instance, operations))

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        return self._faults.around("get_instance", lambda: self._inner.get_instance(workflow_id))

    def load_history(self, workflow_id: str) -> History | None:
        return self._faults.around("load_history", lambda: self._inner.load_history(workflow_id))

    def add_operations(self, workflow_id: str, operations: Sequence[OperationRecord],
                       activation: int) -> None:
        self._faults.around("add_operations", lambda: self._inner.add_operations(
            workflow_id, operations, activation))

    def record_outcomes(self, workflow_id: str, outcomes: Sequence[RecordedOutcome],
                        activation: int, at: float) -> list[str]:
        return self._faults.around("record_outcomes", lambda: self._inner.record_outcomes(
            workflow_id, outcomes, activation, at))

    def commit_activation(self, workflow_id: str, outcomes: Sequence[RecordedOutcome],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        return self._faults.around("commit_activation", lambda: self._inner.commit_activation(
            workflow_id, outcomes, operations, activation, at))

    def mark_sent(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        self._faults.around("mark_sent", lambda: self._inner.mark_sent(workflow_id, op_ids))

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        return self._faults.around("finish", lambda: self._inner.finish(
            workflow_id, status, result, error, activation, at))

    def list_instances(self) -> list[InstanceRecord]:
        return self._faults.around("list_instances", self._inner.list_instances)

    def repair(self, workflow_id: str, expected_activations: int, drop: Sequence[str],
               put: Sequence[OperationRecord], at: float) -> bool:
        return self._faults.around("repair", lambda: self._inner.repair(
            workflow_id, expected_activations, drop, put, at))


class FaultyTransport:
    """A Transport that lets the injector crash around every send."""

    def __init__(self, inner: Transport, faults: FaultInjector) -> None:
        self._inner = inner
        self._faults = faults

    @property
    def reply_address(self) -> str:
        return self._inner.reply_address

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        message = orjson.loads(body)
        reply = ((workflow_id, str(message["call_id"])) if message["kind"] == "call_result"
                 else None)
        self._faults.around("send_to_workflow",
                            lambda: self._inner.send_to_workflow(workflow_id, dedup_id, body,
                                                                 workflow),
                            reply_to=reply)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self._faults.around("send_to_service",
                            lambda: self._inner.send_to_service(service, dedup_id, body))


class Network:
    """Holds service replies in flight, to deliver them later in any order, some twice.

    A copy carries its own deduplication id, so the queue does not drop it: only the
    engine's conditional recording can.
    """

    def __init__(self, inner: Transport, *, copies: float, rng: random.Random) -> None:
        self._inner = inner
        self._copies = copies
        self._rng = rng
        self.in_flight: list[tuple[str, str, bytes]] = []
        self.copies_sent = 0

    @property
    def reply_address(self) -> str:
        return self._inner.reply_address

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        if orjson.loads(body)["kind"] != "call_result":
            self._inner.send_to_workflow(workflow_id, dedup_id, body)
            return
        self.in_flight.append((workflow_id, dedup_id, body))
        while self._rng.random() < self._copies:
            self.copies_sent += 1
            self.in_flight.append((workflow_id, f"{dedup_id}-copy-{self.copies_sent}", body))

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self._inner.send_to_service(service, dedup_id, body)

    def deliver(self, count: int | None = None) -> None:
        """Deliver ``count`` random replies in a random order (all, in order, if None)."""
        if count is None:
            chosen, self.in_flight = self.in_flight, []
        else:
            chosen = self._rng.sample(self.in_flight, count)
            for item in chosen:
                self.in_flight.remove(item)
        for workflow_id, dedup_id, body in chosen:
            self._inner.send_to_workflow(workflow_id, dedup_id, body)


@dataclass(frozen=True)
class Final:
    """What an instance ended with: status, result or error, and its operations."""

    status: InstanceStatus
    result: bytes | None
    error: bytes | None
    operations: list[tuple[str, str, bytes, OperationState, bytes | None]]
    # The same with the activation that recorded each outcome (its replay stage); kept out of
    # equality because crashes legitimately shift activation numbers.
    operations_with_stage: list[
        tuple[str, str, bytes, OperationState, bytes | None, int | None]
    ] = field(compare=False, default_factory=list)


def final_state(runtime: LocalRuntime, workflow_id: str) -> Final:
    """The instance's status, result, error and operations, read from the unwrapped store."""
    history = runtime.history(workflow_id)
    inst = history.instance
    return Final(inst.status, inst.result, inst.error,
                 [(op.op_id, op.name, op.request, op.state, op.result)
                  for op in history.operations],
                 [(op.op_id, op.name, op.request, op.state, op.result, op.resolved_in)
                  for op in history.operations])


def make_runtime(store_kind: str) -> LocalRuntime:
    """A runtime on the given store that tolerates MAX_CRASHES redeliveries and more."""
    store: StateStore = MemoryStateStore() if store_kind == "memory" else SQLiteStateStore()
    runtime = LocalRuntime(store=store, max_receives=20)
    setup_runtime(runtime)
    return runtime


def start_retrying(runtime: LocalRuntime, wf: Workflow[ReqT, ResT], request: ReqT,
                   workflow_id: str) -> None:
    """Start an instance, starting again after an injected crash (start is idempotent)."""
    for _ in range(MAX_CRASHES + 1):
        try:
            runtime.start(wf, request, workflow_id=workflow_id)
        except InjectedCrash:
            continue
        return
    raise AssertionError(f"could not start {workflow_id} within {MAX_CRASHES + 1} attempts")


def _idle(runtime: LocalRuntime, network: Network) -> bool:
    return (not network.in_flight and len(runtime.queue) == 0
            and all(len(runtime.service_queue(name)) == 0 for name in SERVICES))


def _drive(runtime: LocalRuntime, network: Network, rng: random.Random | None) -> None:
    """Run until idle: in the usual order without ``rng``, else in a random interleaving of
    service steps, workflow activations and reply deliveries."""
    for _ in range(20_000):
        if rng is None:
            network.deliver()
            runtime.step_workflows()
            runtime.step_services()
        else:
            roll = rng.random()
            if network.in_flight and roll < 0.4:
                network.deliver(rng.randint(1, len(network.in_flight)))
            elif roll < 0.7:
                runtime.step_services()
            else:
                runtime.step_workflows()
        if _idle(runtime, network):
            return
    raise AssertionError("the runtime did not settle")


@dataclass
class Run:
    """Everything a run of some plans left behind."""

    finals: dict[str, Final]
    invocations: list[ServiceInvocation]
    dead_letters: list[DeadLetter]
    faults: FaultInjector
    copies_sent: int


def run_plans(plans: Sequence[Plan], *, store_kind: str, rng: random.Random | None = None,
              copies: float = 0.0, crash_at: Mapping[int, bool] | None = None) -> Run:
    """Run each plan as instance ``wf-<index>`` until nothing is left to do.

    Args:
        plans: The plans to start, in this order.
        store_kind: ``"memory"`` or ``"sqlite"`` (``:memory:``).
        rng: Interleave steps and deliver replies at random with it; without it, run in the
            usual order (all replies delivered before each workflow step).
        copies: The chance that a reply gets one more copy (repeatedly).
        crash_at: Boundary indices to crash at, each before (False) or after (True) its call.
    """
    runtime = make_runtime(store_kind)
    try:
        faults = FaultInjector(crash_at or {})
        network = Network(runtime.engine.transport, copies=copies,
                          rng=rng or random.Random(0))
        runtime.engine.transport = FaultyTransport(network, faults)
        runtime.engine.store = FaultyStore(runtime.engine.store, faults)
        ids = [f"wf-{i}" for i in range(len(plans))]
        for workflow_id, plan in zip(ids, plans, strict=True):
            start_retrying(runtime, interpret, plan, workflow_id)
        _drive(runtime, network, rng)
        return Run({wid: final_state(runtime, wid) for wid in ids}, list(runtime.invocations),
                   runtime.dead_letters(), faults, network.copies_sent)
    finally:
        runtime.close()
