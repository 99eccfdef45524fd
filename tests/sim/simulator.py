"""The seeded fault simulator (issue 10).

:func:`simulate` starts ``workflows`` instances of the workflows in :mod:`.workflows` and
drives them through the :class:`~lambda_workflow._runtime.engine.Engine` over a real state
store (SQLite file, DynamoDB on the local AWS-API server), the embedded FIFO queues and timer
heap, with every fault drawn from ``random.Random(seed)``: crashes before and after each store
write, send and timer schedule (child creation included), throttling errors, duplicate and
concurrent delivery, visibility-timeout redelivery, reordering across groups, lost-response
retries of DynamoDB writes, transient S3 errors. The same instances run once more without a
single fault (on SQLite in memory), and :func:`check` compares the two: every instance must end
as the uninterrupted run ended, no effect may exceed its documented guarantee, and no instance
may be left waiting on an input that was delivered.

A failing seed prints itself and the command that replays it exactly
(``LAMBDA_WORKFLOW_SIM_SEED=<seed> pytest tests/sim -k <store>``).
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from lambda_workflow import InstanceStatus, _core
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow._runtime.engine import (
    ActivationReport,
    Engine,
    call_result_body,
    child_workflow_id,
)
from lambda_workflow._runtime.instances import CallbackCompletion, start_instance
from lambda_workflow._runtime.services import run_service
from lambda_workflow.backends.memory import InMemoryFifoQueue
from lambda_workflow.backends.protocols import QueueMessage, StateStore, Transport
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.callbacks import CallbackTokens
from lambda_workflow.errors import InvalidCallbackTokenError, InvalidMessageError
from lambda_workflow.local import LocalTimers, LocalTransport
from lambda_workflow.models import (
    History,
    OperationState,
    WorkflowMessage,
    parse_call_request,
    parse_workflow_message,
)

from . import workflows as wfs
from .faults import (
    FaultPlan,
    Faults,
    FaultyStore,
    FaultyTimers,
    FaultyTransport,
    InjectedCrash,
    LockStep,
    TransportProxy,
)

START_TIME = 1_700_000_000.0
CALLBACK_KEY = b"fault simulator callback key 0123"
SEED_VARIABLE = "LAMBDA_WORKFLOW_SIM_SEED"
WORKFLOWS_VARIABLE = "LAMBDA_WORKFLOW_SIM_WORKFLOWS"
# A message is never dead-lettered for being received often (crashes are many); a group whose
# activation fails this many times in a row for a reason that is not an injected fault is
# poison, and its instance fails as the AWS handler fails it.
POISON_AFTER = 8
MAX_ROUNDS = 20_000
Final = dict[str, tuple[InstanceStatus, bytes | None, bytes | None]]


@dataclass
class Backend:
    """A store under test: ``open()`` gives a store object on it (each call another one, as
    each Lambda container has its own); ``observer`` reads it for the driver and the checks
    without faults; ``concurrent`` says whether two activations of one instance may run at
    once (a store with a second-writer guard)."""

    name: str
    open: Callable[[Faults], StateStore]
    observer: StateStore
    throttle_error: Callable[[str], Exception]
    concurrent: bool
    remove_payload: Callable[[random.Random, str], str | None] | None = None
    close: Callable[[], None] = lambda: None


def sqlite_throttle(what: str) -> Exception:
    return sqlite3.OperationalError(f"database is locked (injected at {what})")


def sqlite_backend(path: str) -> Backend:
    """SQLite on one file: one store object (one process holds the file)."""
    store = SQLiteStateStore(path)
    return Backend("sqlite", lambda faults: store, store, sqlite_throttle, concurrent=False,
                   close=store.close)


@dataclass
class Delivery:
    """A message held between its sender and the workflow queue (a service's reply, a
    callback, a cancel): delivered later, in any order, maybe more than once."""

    workflow_id: str
    dedup_id: str
    body: bytes


@dataclass
class SimReport:
    """One run of one seed."""

    seed: int
    store: str
    workflows: int
    instances: Final
    faults: Counter[str]
    violations: list[str]
    trail: list[str] = field(default_factory=list)
    rounds: int = 0
    replay: str = ""  # the command that replays this seed

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def describe(self) -> str:
        lines = [f"seed {self.seed} on {self.store}: {len(self.violations)} violation(s), "
                 f"{self.injected} faults injected ({dict(self.faults)})",
                 *(f"  - {v}" for v in self.violations),
                 "  last faults: " + "; ".join(self.trail[-12:]),
                 f"  replay: {self.replay}"]
        return "\n".join(lines)


class _Callbacks(CallbackCompletion):
    def __init__(self, store: StateStore, tokens: CallbackTokens, transport: Transport) -> None:
        self._parts = (store, tokens, transport)

    def _callback_parts(self) -> tuple[StateStore, CallbackTokens | None, Transport]:
        return self._parts


class _Network(TransportProxy):
    """The driver's own senders (services, the approver, the canceller) reach the workflow
    queue through this: messages wait in flight and arrive later, in a seeded order."""

    def __init__(self, queue_transport: Transport, world: World) -> None:
        super().__init__(queue_transport)
        self._world = world

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        self._world.hold(Delivery(workflow_id, dedup_id, body))


class World:
    """The queues, timers, services and external actors around the engine, driven by a seed."""

    def __init__(self, backend: Backend, plan: FaultPlan, seed: int) -> None:
        self.backend = backend
        self.plan = plan
        self.rng = random.Random(seed)
        self.lockstep = LockStep(self.rng)
        self.faults = Faults(self.rng, plan, backend.throttle_error, self.lockstep)
        self.clock = VirtualClock(START_TIME)
        self.queue = InMemoryFifoQueue(clock=self.clock, max_receives=1_000_000)
        self.service_queues: dict[str, InMemoryFifoQueue] = {}
        self.transport = LocalTransport(self.queue, self._service_queue)
        self.timers = LocalTimers(self.clock, self.transport)
        self.tokens = CallbackTokens(CALLBACK_KEY)
        self.ledger = wfs.Ledger()
        self.in_flight: list[Delivery] = []
        self.copies = 0
        self.violations: list[str] = []
        self.escaped: list[str] = []
        self.failures: Counter[str] = Counter()  # group -> activations failed in a row
        self.last_error: dict[str, str] = {}
        self.service_sends: Counter[tuple[str, str]] = Counter()
        self.service_redeliveries: Counter[tuple[str, str]] = Counter()
        self.cancelled: set[str] = set()
        self.approved: set[str] = set()
        self.rounds = 0
        self.removed_payloads: dict[str, str] = {}
        self.poisoned: dict[str, str] = {}
        self.final: Final = {}
        self.engines = [self._engine(backend.open(self.faults))]
        network = _Network(self.transport, self)
        self.network = network
        self.callbacks = _Callbacks(backend.observer, self.tokens, network)
        self.registry = {wf.name: wf for wf in wfs.WORKFLOWS}

    def _service_queue(self, name: str) -> InMemoryFifoQueue:
        queue = self.service_queues.get(name)
        if queue is None:
            queue = self.service_queues[name] = InMemoryFifoQueue(clock=self.clock,
                                                                  max_receives=1_000_000)
        return queue

    def _engine(self, store: StateStore) -> Engine:
        return Engine(FaultyStore(store, self.faults),
                      FaultyTransport(self.transport, self.faults),
                      {wf.name: wf for wf in wfs.WORKFLOWS}, self.clock,
                      timers=FaultyTimers(self.timers, self.faults), tokens=self.tokens)

    # -- messages in flight ------------------------------------------------------------------
    def hold(self, delivery: Delivery) -> None:
        self.in_flight.append(delivery)
        while self.faults.hit(self.plan.copies):
            # A copy with its own deduplication id: only the engine's conditional records
            # can drop it (a producer retry after the queue's deduplication window).
            self.copies += 1
            self.faults.note("duplicate_delivery", f"{delivery.workflow_id}")
            self.in_flight.append(Delivery(delivery.workflow_id,
                                           f"{delivery.dedup_id[:100]}-copy-{self.copies}",
                                           delivery.body))

    def deliver(self, count: int | None = None) -> None:
        if count is None:
            chosen, self.in_flight = self.in_flight, []
        else:
            chosen = self.rng.sample(self.in_flight, count)
            for item in chosen:
                self.in_flight.remove(item)
        for d in chosen:
            self.transport.send_to_workflow(d.workflow_id, d.dedup_id, d.body)

    # -- starting ----------------------------------------------------------------------------
    def start(self, workflow_id: str, workflow: Any, request: int) -> None:
        engine = self.engines[0]
        for _ in range(200):  # the client retries a start that failed (starts are idempotent)
            try:
                start_instance(engine.store, engine.transport, workflow, request, workflow_id,
                               self.clock.now())
                return
            except (InjectedCrash, sqlite3.OperationalError) as exc:
                self.last_error[workflow_id] = repr(exc)
            except Exception as exc:
                if not self._injected(exc):
                    raise
        self.violations.append(f"could not start {workflow_id}: {self.last_error}")

    def _injected(self, exc: BaseException) -> bool:
        text = str(exc)
        return isinstance(exc, InjectedCrash) or "injected" in text

    # -- workflow activations ----------------------------------------------------------------
    def step_workflows(self) -> bool:
        size = self.rng.randint(1, 10) if self.plan != FaultPlan() else 10
        batch = self.queue.receive(size)
        if not batch:
            return False
        groups: dict[str, list[QueueMessage]] = {}
        for message in batch:
            groups.setdefault(message.group_id, []).append(message)
        order = list(groups)
        if self.plan != FaultPlan():
            self.rng.shuffle(order)  # groups of one batch in any order (one Lambda each)
        for group in order:
            self._activate(group, groups[group])
        return True

    def _activate(self, group: str, received: list[QueueMessage]) -> None:
        parsed: list[WorkflowMessage] = []
        kept: list[QueueMessage] = []
        for message in received:
            try:
                parsed.append(parse_workflow_message(message.body))
                kept.append(message)
            except InvalidMessageError as exc:
                self.violations.append(f"a message the simulator sent was refused: {exc}")
                self.queue.delete(message)
        if not parsed:
            return
        outcomes: list[tuple[bool, ActivationReport | BaseException]]
        if self.backend.concurrent and self.faults.hit(self.plan.concurrent):
            self.faults.note("concurrent_delivery", group)
            while len(self.engines) < 2:
                self.engines.append(self._engine(self.backend.open(self.faults)))
            outcomes = self.lockstep.run(
                [_activation(e, group, parsed) for e in self.engines[:2]],
                self.faults.sim_threads)
        else:
            try:
                outcomes = [(True, self.engines[0].activate(group, parsed))]
            except BaseException as exc:  # judged below: only Exception may come out
                outcomes = [(False, exc)]
        reports: list[ActivationReport] = []
        error: BaseException = InjectedCrash("no error")
        for _, value in outcomes:
            if isinstance(value, ActivationReport):
                reports.append(value)
            elif not isinstance(value, Exception):
                self.escaped.append(f"{type(value).__name__}({value}) escaped the engine "
                                    f"activating {group}")
            else:
                error = value
        if len(reports) < len(outcomes):
            # Any activation that failed puts the messages back (the last receiver's delete
            # is the one SQS honours): they are delivered again.
            self._failed(group, kept, error if not reports else InjectedCrash("concurrent"),
                         record=not reports)
            return
        self.failures.pop(group, None)
        for i, message in enumerate(kept):
            reasons = [r.rejected[i] for r in reports if i in r.rejected]
            if reasons:
                self.violations.append(f"a message to {group} was dead-lettered: {reasons[0]}")
                self.queue.delete(message)
            elif self.faults.hit(self.plan.redeliver):
                self.faults.note("redelivery", f"{group} {parsed[i].kind}")
                self.queue.release(message)  # visibility timeout before the delete
            else:
                self.queue.delete(message)

    def _failed(self, group: str, kept: list[QueueMessage], exc: BaseException, *,
                record: bool = True) -> None:
        """The activation failed: the group's messages go back (FIFO), or on the last
        allowed failure for a reason that was not injected, the instance fails as poison."""
        if not isinstance(exc, Exception):
            for message in kept:  # a process killed by its workflow: report, do not spin
                self.queue.delete(message)
            return
        injected = self._injected(exc) or isinstance(exc, sqlite3.OperationalError)
        if record and not injected:
            self.failures[group] += 1
            self.last_error[group] = f"{type(exc).__name__}: {exc}"
        if self.failures[group] < POISON_AFTER:
            for message in kept:
                self.queue.release(message)
            return
        self.poisoned[group] = (f"activations of {group} failed {POISON_AFTER} times: "
                                f"{self.last_error[group]}")
        try:
            forget = getattr(self.backend.observer, "forget", None)
            if forget is not None:
                forget(group)  # as the AWS handler does: its memory of the counter is stale
            inst = self.backend.observer.get_instance(group)
            if inst is not None and inst.status is InstanceStatus.RUNNING:
                error = orjson.dumps({"type": "PoisonMessage", "details": None,
                                      "message": self.last_error[group]})
                self.backend.observer.finish(group, InstanceStatus.FAILED, None, error,
                                             inst.activations, self.clock.now())
        except Exception as poison_exc:
            self.violations.append(f"failing poison instance {group} raised "
                                   f"{type(poison_exc).__name__}: {poison_exc}")
        for message in kept:
            self.queue.delete(message)

    # -- services ----------------------------------------------------------------------------
    def step_services(self) -> bool:
        progressed = False
        services = {svc.name: (svc, fn) for svc, fn in wfs.SERVICES.items()}
        for name, (service, fn) in services.items():
            queue = self._service_queue(name)
            for message in queue.receive(10):
                progressed = True
                request = parse_call_request(message.body)
                key = (request.workflow_id, request.call_id)
                self.ledger.services[key] += 1
                self.ledger.requests.setdefault(key, set()).add(
                    orjson.dumps(request.request))
                ok, reply = run_service(service, fn, request.request, _no_async)
                if self.faults.hit(self.plan.service_crash):
                    # The service ran, then died before replying: the request comes back.
                    self.faults.note("service_crash", f"{name} {request.call_id}")
                    self.service_redeliveries[key] += 1
                    queue.release(message)
                    continue
                self.network.send_to_workflow(
                    request.workflow_id,
                    _core.dedup_id(request.workflow_id, "call_result", request.call_id),
                    call_result_body(request.workflow_id, request.call_id, ok, reply))
                queue.delete(message)
        return progressed

    # -- external actors ---------------------------------------------------------------------
    def act(self) -> bool:
        """The approver completes handed-out callbacks; the canceller cancels instances of
        ``cancellable`` once their callback and child are recorded."""
        acted = False
        for workflow_id, tokens in self.ledger.tokens.items():
            for token in tokens:
                if token in self.approved:
                    continue
                try:
                    self.callbacks.complete_callback(token, 99)
                except InvalidCallbackTokenError:
                    pass  # already completed or ended: a late approver changes nothing
                except Exception:
                    # An instance whose payload was removed cannot be read: the client
                    # says so (and changes nothing); anything else is the runtime's fault.
                    if workflow_id not in self.removed_payloads:
                        raise
                self.approved.add(token)
                acted = True
        for inst in self.backend.observer.list_instances():
            if (inst.workflow_id in self.removed_payloads and inst.workflow_id not in
                    self.cancelled and inst.status is InstanceStatus.RUNNING):
                # Nothing can read it, and it may wait on something that never comes (a
                # callback its approver could not complete): an operator cancels it, and the
                # activation that brings the cancel meets the missing payload.
                self._cancel(inst.workflow_id, "its payload is gone")
                acted = True
                continue
            if (inst.workflow_name != wfs.cancellable.name or inst.workflow_id in self.cancelled
                    or inst.status is not InstanceStatus.RUNNING):
                continue
            history = self.backend.observer.load_history(inst.workflow_id)
            assert history is not None
            kinds = {(op.kind, op.state) for op in history.operations}
            if ("callback", OperationState.PENDING) in kinds and any(
                    op.kind == "child" and op.sent for op in history.operations):
                self._cancel(inst.workflow_id, "cancelled by the simulator")
                acted = True
        return acted

    def _cancel(self, wid: str, reason: str) -> None:
        self.network.send_to_workflow(
            wid, _core.dedup_id(wid, "cancel", "sim"),
            orjson.dumps({"v": 1, "kind": "cancel", "workflow_id": wid, "reason": reason}))
        self.cancelled.add(wid)

    def maybe_remove_payload(self) -> None:
        remove = self.backend.remove_payload
        if remove is None or not self.faults.hit(self.plan.s3_missing):
            return
        running = sorted(i.workflow_id for i in self.backend.observer.list_instances()
                         if i.status is InstanceStatus.RUNNING
                         and i.workflow_id not in self.removed_payloads)
        if not running:
            return
        workflow_id = self.rng.choice(running)
        key = remove(self.rng, workflow_id)
        if key is not None:
            self.faults.note("s3_missing", f"{workflow_id}: {key}")
            self.removed_payloads[workflow_id] = key

    # -- the loop ----------------------------------------------------------------------------
    def idle(self) -> bool:
        return (not self.in_flight and len(self.queue) == 0
                and all(len(q) == 0 for q in self.service_queues.values()))

    def run(self) -> int:
        hostile = self.plan != FaultPlan()
        for rounds in range(MAX_ROUNDS):
            if self.escaped:
                return rounds
            if hostile:
                roll = self.rng.random()
                if self.in_flight and roll < 0.35:
                    self.deliver(self.rng.randint(1, len(self.in_flight)))
                elif roll < 0.6:
                    self.step_services()
                elif roll < 0.7:
                    self.act()
                else:
                    self.step_workflows()
                self.maybe_remove_payload()
            else:
                self.deliver()
                self.step_workflows()
                self.step_services()
            if self.idle():
                if self.act():
                    continue
                fire_at = self.timers.next_fire_at()
                if fire_at is None:
                    return rounds
                self.clock.advance(max(0.0, fire_at - self.clock.now()))
                self.timers.fire_due()
        self.violations.append(f"the simulation did not settle within {MAX_ROUNDS} rounds")
        return MAX_ROUNDS


def _activation(engine: Engine, group: str, messages: list[WorkflowMessage]
                ) -> Callable[[], ActivationReport]:
    return lambda: engine.activate(group, messages)


def _no_async(awaitable: Any) -> Any:
    raise AssertionError("the simulator's services are synchronous")


def plan_instances(seed: int, count: int) -> list[tuple[str, Any, int]]:
    """The instances of a seed: (workflow id, workflow, input)."""
    rng = random.Random(f"instances-{seed}")
    out = []
    for i in range(count):
        roll = rng.random()
        wf = (wfs.everything if roll < 0.5 else wfs.calls if roll < 0.77
              else wfs.cancellable if roll < 0.95 else wfs.exits)
        out.append((f"sim-{seed}-{i}", wf, rng.randint(1, 50)))
    return out


def finals(store: StateStore) -> Final:
    """How every instance of a store ended (status, result, error)."""
    return {i.workflow_id: (i.status, i.result, i.error) for i in store.list_instances()}


def run_world(backend: Backend, plan: FaultPlan, seed: int, count: int) -> World:
    world = World(backend, plan, seed)
    wfs.use_ledger(world.ledger)
    for workflow_id, wf, request in plan_instances(seed, count):
        world.start(workflow_id, wf, request)
    world.rounds = world.run()
    world.faults.enabled = False
    return world


_REFERENCE: dict[tuple[int, int], Final]
_REFERENCE = {}


def reference(seed: int, count: int
              ) -> Final:
    """How the instances of a seed end in an uninterrupted run (SQLite in memory)."""
    key = (seed, count)
    if key not in _REFERENCE:
        backend = sqlite_backend(":memory:")
        try:
            world = run_world(backend, FaultPlan(), seed, count)
            if world.violations or world.escaped:
                raise AssertionError(f"the fault-free run of seed {seed} itself failed: "
                                     f"{world.violations + world.escaped}")
            _REFERENCE[key] = finals(backend.observer)
        finally:
            backend.close()
    return _REFERENCE[key]


def check(world: World, expected: Final
          ) -> list[str]:
    """The invariants, as a list of violations (empty: all hold)."""
    store = world.backend.observer
    out = list(world.escaped) + list(world.violations)
    # An instance whose payload was removed, and its parent and children, may end otherwise
    # than the uninterrupted run (failed, and the failure travels to the parent).
    exempt = {wid for wid in set(expected) | set(world.removed_payloads)
              if any(wid.split("~")[0] == gone.split("~")[0]
                     for gone in world.removed_payloads)}
    out += [reason for group, reason in world.poisoned.items() if group not in exempt]
    got: Final = {}
    histories: dict[str, History] = {}
    for wid in sorted(set(expected) | set(world.removed_payloads)):
        try:
            inst = store.get_instance(wid)
        except Exception as exc:
            out.append(f"{wid}: its instance record cannot be read: {type(exc).__name__}: {exc}")
            continue
        if inst is not None:
            got[wid] = (inst.status, inst.result, inst.error)
        try:
            history = store.load_history(wid)
        except Exception as exc:
            if wid not in world.removed_payloads or "missing" not in str(exc):
                out.append(f"{wid}: its history cannot be read: {type(exc).__name__}: {exc}")
            continue
        if history is not None:
            histories[wid] = history
    world.final = got
    for wid in sorted(set(expected) | set(got)):
        if wid in exempt:
            status, _, error = got.get(wid, (None, None, None))
            if wid in world.removed_payloads and (
                    status is InstanceStatus.RUNNING or (status is InstanceStatus.FAILED and (
                        b"missing" not in (error or b"")))):
                out.append(f"{wid}: ended {status} ({(error or b'')[:300]!r}) after its payload "
                           f"{world.removed_payloads[wid]} was removed: it must end failed "
                           "with a reason naming the missing payload")
            continue
        if wid not in got:
            out.append(f"{wid}: missing (the uninterrupted run has it, "
                       f"{expected[wid][0].value})")
            continue
        if wid not in expected:
            out.append(f"{wid}: exists, but not in the uninterrupted run ({got[wid][0].value})")
            continue
        if got[wid] != expected[wid]:
            status, result, error = got[wid]
            out.append(f"{wid}: ended {status.value} {(result or error or b'')[:200]!r}; "
                       f"the uninterrupted run ended {expected[wid][0].value} "
                       f"{(expected[wid][1] or expected[wid][2] or b'')[:200]!r}")
        if got[wid][0] is InstanceStatus.RUNNING and wid in histories:
            out += _waiting_on_delivered(world, histories[wid], got)
    # Services: every execution was of a recorded call with its recorded request, and no call
    # ran more often than its request was sent or redelivered.
    for (wid, call_id), runs in sorted(world.ledger.services.items()):
        history = histories.get(wid)
        if wid in exempt:
            continue
        op = next((o for o in history.operations if o.op_id == call_id), None) if history else None
        if op is None or op.kind != "call":
            out.append(f"service ran call {call_id} of {wid}, which its history does not have")
            continue
        if world.ledger.requests[(wid, call_id)] != {orjson.dumps(orjson.loads(op.request))}:
            out.append(f"call {call_id} of {wid} ran with a request its history does not hold")
        allowed = world.faults.observed.sends[(wid, call_id)] + world.service_redeliveries[
            (wid, call_id)]
        if runs > allowed:
            out.append(f"call {call_id} of {wid} ran {runs} times; {allowed} allowed by its "
                       "sends and redeliveries")
    out += world.faults.observed.resent_after_marked
    # Steps: at least once, never again once their outcome is recorded; at-most-once steps
    # at most once per attempt.
    resolved_at = world.faults.observed.resolved_at
    for (wid, name, attempt, args), executions in sorted(world.ledger.steps.items()):
        history = histories.get(wid)
        if history is None or wid in exempt:
            continue
        if name == "once" and len(executions) > 1:
            out.append(f"at-most-once step {name!r} attempt {attempt} of {wid} ran "
                       f"{len(executions)} times (activations {[a for a, _ in executions]})")
        for op in history.operations:
            if op.kind != "step" or op.name != name or op.state is OperationState.PENDING:
                continue
            request = orjson.loads(op.request)
            if request.get("attempt") != attempt or orjson.dumps(request.get("args")) != args:
                continue
            recorded = resolved_at.get((wid, op.op_id))
            late = [a for a, loaded in executions if recorded is not None and loaded > recorded]
            if late:
                out.append(f"step {name!r} attempt {attempt} of {wid} ran again in "
                           f"activation(s) {late}, which read the history after the step's "
                           f"outcome was recorded (activation {op.resolved_in})")
    return out


def _waiting_on_delivered(world: World, history: History, got: Final) -> list[str]:
    wid = history.instance.workflow_id
    out = []
    for op in history.operations:
        if op.state is not OperationState.PENDING:
            continue
        delivered = None
        if op.kind == "call" and world.ledger.services[(wid, op.op_id)]:
            delivered = "its service replied"
        elif op.kind == "child":
            child = child_workflow_id(wid, op.op_id, orjson.loads(op.request).get("workflow_id"))
            if child in got and got[child][0] is not InstanceStatus.RUNNING:
                delivered = f"child {child} ended {got[child][0].value}"
        elif op.kind == "timer" and (wid, op.op_id) in world.faults.observed.scheduled:
            delivered = "its timer was scheduled and the clock passed it"
        if delivered is not None:
            out.append(f"{wid}: left waiting on {op.kind} {op.op_id} ({op.name}) though "
                       f"{delivered}")
    if not out:
        pending = [(o.kind, o.op_id, o.sent) for o in history.operations
                   if o.state is OperationState.PENDING]
        out.append(f"{wid}: left running; pending (kind, id, sent): {pending}")
    return out


def pytest_replay(seed: int, count: int, test: str) -> str:
    """The command that replays one seed of a CI test."""
    return (f"{SEED_VARIABLE}={seed} {WORKFLOWS_VARIABLE}={count} .venv/bin/pytest "
            f"-p no:cacheprovider -q tests/sim -k {test}")


def simulate(backend: Backend, seed: int, count: int, plan: FaultPlan, *,
             replay: str = "") -> SimReport:
    """Run ``count`` instances of seed ``seed`` on ``backend`` under ``plan``, and check
    them against an uninterrupted run. ``replay`` is the command that runs this again."""
    expected = reference(seed, count)
    world = run_world(backend, plan, seed, count)
    violations = check(world, expected)
    return SimReport(seed, backend.name, count, world.final, world.faults.counts,
                     violations, world.faults.trail, world.rounds, replay)
