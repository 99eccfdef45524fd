"""Fault injection for the simulator: wrapping proxies around the real store, transport, timer
service and AWS clients, each asking one seeded :class:`Faults` at every call whether to crash
before it, after it, or fail it with a throttling error; and :class:`LockStep`, which runs two
activations of one instance interleaved, one boundary at a time, in an order the seed picks.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from lambda_workflow.backends.protocols import StateStore, TimerService, Transport
from lambda_workflow.models import History, InstanceRecord, InstanceStatus, OperationRecord
from lambda_workflow.models import Outcome as RecordedOutcome

from .workflows import ACTIVATION, LOADED_AT

T = TypeVar("T")


class InjectedCrash(Exception):
    """The process 'died' at a boundary (before or after the call took effect)."""


@dataclass(frozen=True)
class FaultPlan:
    """The chance of each fault at each boundary (0 everywhere: an uninterrupted run)."""

    crash_before: float = 0.0       # any store, transport or timer call
    crash_after: float = 0.0        # a write, send or schedule that took effect
    throttle: float = 0.0           # the backend's throttling / busy error instead of the call
    copies: float = 0.0             # an extra copy of a reply, callback or cancel message
    redeliver: float = 0.0          # visibility timeout: a handled batch comes back
    concurrent: float = 0.0         # a second activation of the same batch, interleaved
    service_crash: float = 0.0      # a service ran, then died before its reply left
    duplicate_write: float = 0.0    # (DynamoDB) a write applied, its response lost, retried
    client_throttle: float = 0.0    # (DynamoDB) one call inside a store method throttled
    client_crash_after: float = 0.0  # (DynamoDB) death after one write inside a store method
    s3_transient: float = 0.0       # (S3) a transient error on put/get
    s3_missing: float = 0.0         # (S3) an offloaded payload of a running instance removed

    @staticmethod
    def hostile(*, concurrent: bool, dynamodb: bool, s3_missing: bool = False) -> FaultPlan:
        """The simulator's default adversity."""
        return FaultPlan(crash_before=0.02, crash_after=0.02, throttle=0.01, copies=0.15,
                         redeliver=0.08, concurrent=0.1 if concurrent else 0.0,
                         service_crash=0.05, duplicate_write=0.02 if dynamodb else 0.0,
                         client_throttle=0.01 if dynamodb else 0.0,
                         client_crash_after=0.01 if dynamodb else 0.0,
                         s3_transient=0.02 if dynamodb else 0.0,
                         s3_missing=0.01 if s3_missing else 0.0)


@dataclass
class Observed:
    """What the proxies saw, for the invariants: when each outbox operation's send was
    recorded (``mark_sent``), and outbox sends that repeated a recorded send."""

    tick: int = 0
    marked_at: dict[tuple[str, str], int] = field(default_factory=dict)
    sends: Counter[tuple[str, str]] = field(default_factory=Counter)
    resent_after_marked: list[str] = field(default_factory=list)
    scheduled: set[tuple[str, str]] = field(default_factory=set)  # timers that reached the heap
    # (workflow id, op id) -> tick at which a write first recorded the operation's outcome
    resolved_at: dict[tuple[str, str], int] = field(default_factory=dict)

    def resolved(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        for op_id in op_ids:
            self.resolved_at.setdefault((workflow_id, op_id), self.tick)

    def next_tick(self) -> int:
        self.tick += 1
        return self.tick

    def outbox_send(self, workflow_id: str, op_id: str, what: str) -> None:
        key = (workflow_id, op_id)
        self.sends[key] += 1
        marked = self.marked_at.get(key)
        if marked is not None and marked < LOADED_AT.get():
            self.resent_after_marked.append(
                f"{what} {op_id} of {workflow_id} sent again by an activation that read its "
                f"history (tick {LOADED_AT.get()}) after the send was recorded (tick {marked})")


class Faults:
    """One seeded source of faults for a whole run; counts and logs what it injected.

    Only threads that belong to the simulation draw from the seed (the main thread and the
    interleaved activations): a backend's own worker threads pass untouched, so a seed
    replays exactly.
    """

    def __init__(self, rng: random.Random, plan: FaultPlan,
                 throttle_error: Callable[[str], Exception], lockstep: LockStep) -> None:
        self.rng = rng
        self.plan = plan
        self.throttle_error = throttle_error
        self.lockstep = lockstep
        self.counts: Counter[str] = Counter()
        self.trail: list[str] = []
        self.observed = Observed()
        self.sim_threads = _SimThreads()
        self.sim_threads.join()
        self.enabled = True

    def hit(self, chance: float) -> bool:
        if not self.enabled or chance <= 0.0 or not self.sim_threads.member():
            return False
        return self.rng.random() < chance

    def note(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        self.trail.append(f"{kind}: {detail}")

    def boundary(self, what: str, fn: Callable[[], T], *, write: bool) -> T:
        """Call ``fn`` at a boundary named ``what``, with the faults the seed draws."""
        self.lockstep.pause()
        self.observed.next_tick()
        if self.hit(self.plan.crash_before):
            self.note("crash_before", what)
            raise InjectedCrash(f"crash before {what}")
        if self.hit(self.plan.throttle):
            self.note("throttle", what)
            raise self.throttle_error(what)
        out = fn()
        if write and self.hit(self.plan.crash_after):
            self.note("crash_after", what)
            raise InjectedCrash(f"crash after {what}")
        return out


class FaultyStore:
    """A StateStore whose every call passes a fault boundary; it also tells the step bodies
    which activation runs them (the engine runs ``activations + 1`` of what it read)."""

    def __init__(self, inner: StateStore, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        def create() -> tuple[InstanceRecord, bool]:
            if operations:
                return self._inner.create_instance(instance, operations)
            return self._inner.create_instance(instance)

        return self._faults.boundary(f"create_instance {instance.workflow_id}", create,
                                     write=True)

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        return self._faults.boundary(f"get_instance {workflow_id}",
                                     lambda: self._inner.get_instance(workflow_id), write=False)

    def load_history(self, workflow_id: str) -> History | None:
        history = self._faults.boundary(f"load_history {workflow_id}",
                                        lambda: self._inner.load_history(workflow_id),
                                        write=False)
        LOADED_AT.set(self._faults.observed.tick)
        if history is not None:
            ACTIVATION.set(history.instance.activations + 1)
        return history

    def add_operations(self, workflow_id: str, operations: Sequence[OperationRecord],
                       activation: int) -> None:
        self._faults.boundary(f"add_operations {workflow_id}", lambda: self._inner.add_operations(
            workflow_id, operations, activation), write=True)

    def record_outcomes(self, workflow_id: str, outcomes: Sequence[RecordedOutcome],
                        activation: int, at: float) -> list[str]:
        def record() -> list[str]:
            recorded = self._inner.record_outcomes(workflow_id, outcomes, activation, at)
            self._faults.observed.resolved(workflow_id, recorded)
            return recorded

        return self._faults.boundary(f"record_outcomes {workflow_id}", record, write=True)

    def commit_activation(self, workflow_id: str, outcomes: Sequence[RecordedOutcome],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        def commit() -> list[str]:
            recorded = self._inner.commit_activation(workflow_id, outcomes, operations,
                                                     activation, at)
            self._faults.observed.resolved(workflow_id, [
                *recorded, *(op.op_id for op in operations if op.state.value != "pending")])
            return recorded

        return self._faults.boundary(f"commit_activation {workflow_id}", commit, write=True)

    def mark_sent(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        def mark() -> None:
            self._inner.mark_sent(workflow_id, op_ids)
            tick = self._faults.observed.tick
            for op_id in op_ids:
                self._faults.observed.marked_at.setdefault((workflow_id, op_id), tick)

        self._faults.boundary(f"mark_sent {workflow_id}", mark, write=True)

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        return self._faults.boundary(f"finish {workflow_id}", lambda: self._inner.finish(
            workflow_id, status, result, error, activation, at), write=True)

    def list_instances(self) -> list[InstanceRecord]:
        return self._faults.boundary("list_instances", self._inner.list_instances, write=False)

    def __getattr__(self, name: str) -> Any:
        # Other methods a store may grow (resume, reset, ...) pass through unfaulted.
        return getattr(self._inner, name)


class TransportProxy:
    """A Transport in front of another: the same reply address, every send passed on
    (subclasses intercept what they need)."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    @property
    def reply_address(self) -> str:
        return self._inner.reply_address

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        self._inner.send_to_workflow(workflow_id, dedup_id, body, workflow)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self._inner.send_to_service(service, dedup_id, body)


class FaultyTransport(TransportProxy):
    """A Transport whose sends pass a fault boundary; outbox sends (call requests, child
    starts) are checked against the sends already recorded."""

    def __init__(self, inner: Transport, faults: Faults) -> None:
        super().__init__(inner)
        self._faults = faults

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        message = orjson.loads(body)
        parent = message.get("parent") if message.get("kind") == "start" else None

        def send() -> None:
            if parent is not None:
                self._faults.observed.outbox_send(parent["workflow_id"], parent["call_id"],
                                                  "child start")
            self._inner.send_to_workflow(workflow_id, dedup_id, body, workflow)

        self._faults.boundary(f"send_to_workflow {message.get('kind')} {workflow_id}", send,
                              write=True)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        message = orjson.loads(body)

        def send() -> None:
            self._faults.observed.outbox_send(message["workflow_id"], message["call_id"],
                                              f"call request ({service})")
            self._inner.send_to_service(service, dedup_id, body)

        self._faults.boundary(f"send_to_service {service} {message['workflow_id']}", send,
                              write=True)


class FaultyTimers:
    """A TimerService whose schedules (and withdrawals) pass a fault boundary."""

    def __init__(self, inner: TimerService, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def schedule(self, workflow_id: str, timer_id: str, fire_at: float) -> None:
        def schedule() -> None:
            self._faults.observed.outbox_send(workflow_id, timer_id, "timer")
            self._inner.schedule(workflow_id, timer_id, fire_at)
            self._faults.observed.scheduled.add((workflow_id, timer_id))

        self._faults.boundary(f"schedule {workflow_id}/{timer_id}", schedule, write=True)

    def withdraw(self, workflow_id: str, timer_id: str) -> None:
        self._faults.boundary(f"withdraw {workflow_id}/{timer_id}",
                              lambda: self._inner.withdraw(workflow_id, timer_id), write=True)


class FaultyClient:
    """A boto3 client whose calls, inside a store method, meet faults: a transient error
    (S3), throttling before, death after a write, or a write applied twice as when the
    response is lost and the SDK retries the request (DynamoDB)."""

    WRITES = frozenset({"put_item", "update_item", "delete_item", "transact_write_items",
                        "batch_write_item", "put_object", "delete_object"})

    def __init__(self, inner: Any, faults: Faults, *, s3: bool = False) -> None:
        self._inner = inner
        self._faults = faults
        self._s3 = s3

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if not callable(real) or name.startswith(("get_paginator", "can_paginate", "meta",
                                                  "exceptions")):
            return real
        write = name in self.WRITES

        def call(*args: Any, **kwargs: Any) -> Any:
            faults = self._faults
            if self._s3 and faults.hit(faults.plan.s3_transient):
                faults.note("s3_transient", name)
                raise faults.throttle_error(f"s3 {name}")
            if self._s3:
                return real(*args, **kwargs)
            if faults.hit(faults.plan.client_throttle):
                faults.note("client_throttle", name)
                raise faults.throttle_error(f"dynamodb {name}")
            if write and faults.hit(faults.plan.duplicate_write):
                faults.note("duplicate_write", name)
                with contextlib.suppress(Exception):  # the lost first response
                    real(*args, **kwargs)
            out = real(*args, **kwargs)
            if write and faults.hit(faults.plan.client_crash_after):
                faults.note("client_crash_after", name)
                raise InjectedCrash(f"crash after dynamodb {name}")
            return out

        return call


class _SimThreads(threading.local):
    """Which threads draw from the seed: those that joined (a thread-local flag, not thread
    ids, which the system reuses for a backend's worker threads)."""

    joined = False

    def join(self) -> None:
        self.joined = True

    def member(self) -> bool:
        return self.joined


class LockStep:
    """Runs functions on threads one at a time, switching only at fault boundaries, in the
    order a seeded generator picks: two activations of one instance, interleaved exactly as
    the seed says (two Lambdas that received the same batch after a visibility timeout)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._cv = threading.Condition()
        self._local = threading.local()
        self._turn: int | None = None
        self._parked: set[int] = set()
        self._done: set[int] = set()
        self.switches = 0

    def pause(self) -> None:
        """A boundary: let the seed pick which activation goes on (no-op outside run())."""
        index: int | None = getattr(self._local, "index", None)
        if index is None:
            return
        with self._cv:
            self._parked.add(index)
            self._turn = None
            self._cv.notify_all()
            while self._turn != index:
                self._cv.wait()
            self._parked.discard(index)

    def run(self, fns: Sequence[Callable[[], T]], sim_threads: _SimThreads
            ) -> list[tuple[bool, T | BaseException]]:
        """Run each function on its own thread, interleaved; returns (ok, value or exception)
        for each, in order."""
        results: list[tuple[bool, Any]] = [(False, None)] * len(fns)
        self._parked, self._done, self._turn = set(), set(), None

        def worker(i: int) -> None:
            self._local.index = i
            sim_threads.join()
            try:
                self.pause()
                results[i] = (True, fns[i]())
            except BaseException as exc:  # reported to the caller, whatever it is
                results[i] = (False, exc)
            finally:
                with self._cv:
                    self._done.add(i)
                    self._turn = None
                    self._cv.notify_all()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(len(fns))]
        for t in threads:
            t.start()
        with self._cv:
            while True:
                while not (self._turn is None
                           and len(self._parked) + len(self._done) == len(fns)):
                    self._cv.wait()
                if len(self._done) == len(fns):
                    break
                self._turn = self._rng.choice(sorted(self._parked))
                self.switches += 1
                self._cv.notify_all()
        for t in threads:
            t.join()
        return results
