"""The embedded runtime: SQLite state, in-process FIFO queues, a virtual clock.

Everything a deployment on AWS does happens here too, in one process: workflows suspend and
replay, requests leave as messages on a service's queue, services reply with messages on the
workflow's FIFO queue (message group = workflow id, deterministic deduplication ids), and
malformed or poison messages end in a dead-letter list with the reason.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, cast

import orjson

from . import _core, _observe
from ._opnames import service_of
from ._runtime.clock import VirtualClock
from ._runtime.engine import (
    ActivationReport,
    Engine,
    call_request_body,
    call_result_body,
    start_message_body,
    timer_fire_at,
    timer_fired_body,
)
from ._runtime.instances import (
    CallbackCompletion,
    RepairCommands,
    instance_result,
    start_instance,
)
from ._runtime.services import run_service
from ._runtime.warm import InstanceCache, make_instance_cache
from .backends.memory import DeadLetter, InMemoryFifoQueue
from .backends.protocols import Clock, InstanceLister, QueueMessage, StateStore, Transport
from .backends.sqlite import SQLiteStateStore, StateFileLock
from .callbacks import CallbackKeys, CallbackTokens
from .codecs import Codec, CodecError, PayloadCodec, codec_from_spec
from .errors import (
    InvalidMessageError,
    InvalidWorkflowIdError,
    UnknownWorkflowError,
    WorkflowError,
    WorkflowNotFoundError,
)
from .models import (
    CallRequestMessage,
    History,
    InstanceRecord,
    InstanceStatus,
    OperationState,
    WorkflowMessage,
    parse_call_request,
    parse_workflow_message,
    workflow_id_problem,
)
from .service import Service
from .workflow import Workflow, WorkflowStart, start_arguments

__all__ = ["LocalRuntime", "LocalTransport", "ServiceInvocation", "WorkflowHandle"]

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
ResT = TypeVar("ResT")
P = ParamSpec("P")

# One signature (not a union of two): a lambda gets its parameter type from the service.
ServiceFunction = Callable[[ReqT], RespT | Awaitable[RespT]]
LOCAL_REPLY_ADDRESS = "local:workflows"
_log = logging.getLogger("lambda_workflow.local")
# Signs callback tokens on the embedded runtime unless a key is given. It is public: tokens
# of a local runtime prove nothing outside tests and development.
LOCAL_CALLBACK_KEY = b"lambda-workflow local development key"


@dataclass(slots=True, frozen=True)
class ServiceInvocation:
    """One run of a service implementation on the local runtime (for output and tests)."""

    service: str
    workflow_id: str
    call_id: str
    request: bytes
    ok: bool
    reply: bytes


class LocalTransport:
    """A :class:`~lambda_workflow.backends.Transport` onto in-process queues: one FIFO queue
    for workflows, one queue per service."""

    def __init__(self, workflow_queue: InMemoryFifoQueue,
                 service_queue: Callable[[str], InMemoryFifoQueue]) -> None:
        self._workflow_queue = workflow_queue
        self._service_queue = service_queue

    @property
    def reply_address(self) -> str:
        return LOCAL_REPLY_ADDRESS

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        # One queue for every workflow: the name does not route anything here.
        self._workflow_queue.send(body, group_id=workflow_id, dedup_id=dedup_id)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        # Each request is its own group: services handle requests concurrently, not in order.
        self._service_queue(service).send(body, group_id=dedup_id, dedup_id=dedup_id)


class LocalTimers:
    """Durable timers on the virtual clock: due timers become ``timer_fired`` messages on the
    workflow queue when the clock reaches them (:meth:`LocalRuntime.advance_time`, or the time
    skipping of :meth:`LocalRuntime.run_until_idle`)."""

    def __init__(self, clock: VirtualClock, transport: Transport) -> None:
        self._clock = clock
        self._transport = transport
        self._heap: list[tuple[float, str, str]] = []
        self._scheduled: set[tuple[str, str]] = set()

    def schedule(self, workflow_id: str, timer_id: str, fire_at: float) -> None:
        key = (workflow_id, timer_id)
        if key in self._scheduled:
            return
        self._scheduled.add(key)
        heapq.heappush(self._heap, (fire_at, workflow_id, timer_id))

    def withdraw(self, workflow_id: str, timer_id: str) -> None:
        key = (workflow_id, timer_id)
        if key in self._scheduled:
            self._scheduled.discard(key)
            self._heap = [entry for entry in self._heap if entry[1:] != key]
            heapq.heapify(self._heap)

    def next_fire_at(self) -> float | None:
        """When the earliest pending timer fires, or ``None``."""
        return self._heap[0][0] if self._heap else None

    def fire_due(self) -> int:
        """Send ``timer_fired`` for every timer due by now. Returns how many fired."""
        fired = 0
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            _, workflow_id, timer_id = self._heap[0]
            # Sent before it leaves the heap: a failed send keeps the timer.
            self._transport.send_to_workflow(
                workflow_id, _core.dedup_id(workflow_id, "timer_fired", timer_id),
                timer_fired_body(workflow_id, timer_id))
            heapq.heappop(self._heap)
            self._scheduled.discard((workflow_id, timer_id))
            fired += 1
        return fired

    def __len__(self) -> int:
        return len(self._heap)


class WorkflowHandle(Generic[ResT]):
    """A started workflow instance, typed by its result."""

    __slots__ = ("_runtime", "workflow", "workflow_id")

    def __init__(self, runtime: LocalRuntime, workflow: Workflow[Any, ResT],
                 workflow_id: str) -> None:
        self._runtime = runtime
        self.workflow = workflow
        self.workflow_id = workflow_id

    def status(self) -> InstanceStatus:
        """The instance's status."""
        return self._runtime.status(self.workflow_id)

    def result(self) -> ResT:
        """The typed result; raises like :meth:`LocalRuntime.result`."""
        return self._runtime._result(self.workflow_id, self.workflow)

    def history(self) -> History:
        """The recorded history."""
        return self._runtime.history(self.workflow_id)

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow.name} {self.workflow_id!r}>"


def _payload_codec(codec: Codec | PayloadCodec | str | None) -> PayloadCodec | None:
    """``LocalRuntime(codec=...)`` as the store's :class:`PayloadCodec`."""
    if codec is None or isinstance(codec, PayloadCodec):
        return codec
    if isinstance(codec, str):
        return codec_from_spec(codec)
    return PayloadCodec(codec)


class LocalRuntime(CallbackCompletion, RepairCommands):
    """Run workflows on one machine, durably, with the same protocol as on AWS.

    Example:
        >>> rt = LocalRuntime("state.sqlite3")
        >>> rt.register(make_transaction)
        >>> rt.implement(balance_service, get_balance)
        >>> handle = rt.start(make_transaction, tx, workflow_id="tx-1")
        >>> rt.run_until_idle()
        >>> handle.result()

    Args:
        database: The SQLite file holding workflow state, or ``":memory:"`` (the default).
        store: Use this state store instead of SQLite (e.g. a ``MemoryStateStore``).
        clock: The virtual clock (default: starts at the wall clock's time and moves only with
            :meth:`advance_time`).
        max_receives: Deliveries of a message before it is dead-lettered as poison.
        callback_key: The key that signs callback tokens (at least 16 bytes), or a
            :class:`~lambda_workflow.callbacks.CallbackKeyRing` (its current key signs, all
            its keys verify); the default is a public development key.
        on_event: Called with every :class:`ActivationReport`, :class:`ServiceInvocation` and
            :class:`DeadLetter`, in order (the CLI prints them).
        codec: The payload codec of the SQLite store (docs/codecs.md): a
            :class:`~lambda_workflow.codecs.Codec`, a
            :class:`~lambda_workflow.codecs.PayloadCodec`, or a spec such as ``"zlib"``.
            With ``store``, give the codec to the store instead.
        instance_cache: Warm instances (docs/design.md): how many suspended instances stay
            alive in this process so their next activation continues without a replay
            (``0``: every activation replays). Default: ``LAMBDA_WORKFLOW_INSTANCE_CACHE``,
            else 1024.
    """

    def __init__(
        self,
        database: str | Path = ":memory:",
        *,
        store: StateStore | None = None,
        clock: VirtualClock | None = None,
        max_receives: int = 5,
        callback_key: CallbackKeys = LOCAL_CALLBACK_KEY,
        on_event: Callable[[ActivationReport | ServiceInvocation | DeadLetter], None]
        | None = None,
        codec: Codec | PayloadCodec | str | None = None,
        instance_cache: InstanceCache | int | None = None,
    ) -> None:
        if codec is not None and store is not None:
            raise ValueError("LocalRuntime(codec=...) applies to its SQLite store; with "
                             "store=..., give the codec to the store")
        self.clock = clock or VirtualClock()
        # Settings that may be refused are read before the state file is locked and opened,
        # so a refused one leaves no lock and no open connection behind.
        cache = make_instance_cache(instance_cache)
        self.tokens = CallbackTokens(callback_key)
        # One runtime per state file (StateFileLock): taken before anything is read or sent.
        self.store_path = str(getattr(store, "path", ":memory:") if store is not None
                              else database)
        self._lock = (StateFileLock(self.store_path) if self.store_path != ":memory:"
                      else None)
        self.store: StateStore = (store if store is not None else SQLiteStateStore(
            database, codec=_payload_codec(codec)))
        self.unrecovered: dict[str, str] = {}
        # Running instances of workflows not registered (yet): recovered when they are.
        self._held: dict[str, list[InstanceRecord]] = {}
        self._on_event = on_event
        self.queue = InMemoryFifoQueue(clock=self.clock, max_receives=max_receives)
        self._service_queues: dict[str, InMemoryFifoQueue] = {}
        self._max_receives = max_receives
        self._workflows: dict[str, Workflow[Any, Any]] = {}
        self._services: dict[str, tuple[Service[Any, Any], Callable[[Any], Any]]] = {}
        transport = LocalTransport(self.queue, self.service_queue)
        self.timers = LocalTimers(self.clock, transport)
        self.engine = Engine(self.store, transport, self._workflows, self.clock,
                             instance_cache=cache,
                             timers=self.timers, tokens=self.tokens)
        self.invocations: list[ServiceInvocation] = []
        self._last_errors: dict[str, str] = {}
        self._aio: asyncio.AbstractEventLoop | None = None
        if store is None and str(database) != ":memory:":
            try:
                self.recover()
            except BaseException:
                self.close()
                raise

    # -- setup -----------------------------------------------------------------------------
    @property
    def transport(self) -> Transport:
        """The transport activations and services send through."""
        return self.engine.transport

    def service_queue(self, service: str) -> InMemoryFifoQueue:
        """The request queue of a service (created on first use)."""
        queue = self._service_queues.get(service)
        if queue is None:
            queue = self._service_queues[service] = InMemoryFifoQueue(
                clock=self.clock, max_receives=self._max_receives)
        return queue

    def register(self, *workflows: Workflow[Any, Any]) -> None:
        """Make workflows runnable here. Registering two different workflows under one name
        is an error."""
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise TypeError(f"register() takes @workflow objects, got {wf!r}")
            existing = self._workflows.get(wf.name)
            if existing is not None and existing is not wf:
                raise ValueError(f"a different workflow is already registered as {wf.name!r}")
            self._workflows[wf.name] = wf
            for inst in self._held.pop(wf.name, ()):
                self._recover_one(inst)

    def implement(self, service: Service[ReqT, RespT], fn: ServiceFunction[ReqT, RespT]) -> None:
        """Run ``fn`` for every request to ``service``, as if it were a remote service.

        ``fn`` receives the validated request and returns the response (it may be ``async``).
        An exception becomes an error reply: a :class:`ServiceError` keeps its type, message
        and details; any other exception reports its class name and message.
        """
        if service.name in self._services and self._services[service.name][0] is not service:
            raise ValueError(f"service {service.name!r} is already implemented")
        self._services[service.name] = (service, fn)

    @property
    def implemented(self) -> frozenset[str]:
        """The names of the services implemented here (:meth:`implement`)."""
        return frozenset(self._services)

    def recover(self) -> int:
        """Re-send what the queues of an earlier process held, after a restart.

        State lives in the store, but the embedded queues live in memory. For every running
        instance this sends a wake-up (its start message) and the request of every pending
        call, with the same call ids and deduplication ids as before; services must be
        idempotent per call id, as the protocol requires of them anyway. Called automatically
        when the runtime opens an existing SQLite file. Returns the number of messages sent.

        An instance whose workflow is not registered here is left as it is (a file may hold
        the instances of several programs): it is recovered when its workflow is registered,
        and never failed for being unknown. An instance that cannot be recovered (an id no
        queue accepts, a damaged row) does not stop the others: it is logged and kept in
        :attr:`unrecovered` with the reason.
        """
        sent = 0
        self._held.clear()
        for inst in self._running_instances():
            if (inst.workflow_name not in self._workflows
                    and workflow_id_problem(inst.workflow_id) is None):
                self._held.setdefault(inst.workflow_name, []).append(inst)
                continue
            sent += self._recover_one(inst)
        return sent

    def _running_instances(self) -> list[InstanceRecord]:
        try:
            return [i for i in self.store.list_instances()
                    if i.status is InstanceStatus.RUNNING]
        except CodecError:
            if not hasattr(self.store, "list_page"):
                raise
        # A record of a codec this runtime cannot read: list without payloads and read each
        # instance alone, so that only the unreadable ones are left out (and reported).
        lister = cast(InstanceLister, self.store)
        found: list[InstanceRecord] = []
        token: str | None = None
        while True:
            page = lister.list_page(status=InstanceStatus.RUNNING, limit=1000,
                                    next_token=token)
            for summary in page.instances:
                wid = summary.workflow_id
                try:
                    inst = self.store.get_instance(wid)
                except CodecError as exc:
                    self.unrecovered[wid] = f"{type(exc).__name__}: {exc}"
                    _log.error("could not recover workflow instance %r from %s: %s",
                               wid[:200], self.store_path, self.unrecovered[wid])
                    continue
                if inst is not None:
                    found.append(inst)
            token = page.next_token
            if token is None:
                return found

    @property
    def held(self) -> dict[str, list[str]]:
        """Running instances in the file whose workflow is not registered here, by workflow
        name: they wait, untouched, for a runtime that registers it."""
        return {name: [i.workflow_id for i in insts] for name, insts in self._held.items()}

    def _recover_one(self, inst: InstanceRecord) -> int:
        try:
            return self._recover_instance(inst)
        except Exception as exc:  # one bad row never keeps the file from opening
            reason = f"{type(exc).__name__}: {exc}"
            self.unrecovered[inst.workflow_id] = reason
            _log.error("could not recover workflow instance %r from %s: %s",
                       inst.workflow_id[:200], self.store_path, reason)
            return 0

    def _recover_instance(self, inst: InstanceRecord) -> int:
        wid = inst.workflow_id
        problem = workflow_id_problem(wid)
        if problem is not None:
            raise InvalidWorkflowIdError(problem)
        self.transport.send_to_workflow(wid, _core.dedup_id(wid, "start", ""),
                                        start_message_body(wid, inst.workflow_name, inst.input))
        sent = 1
        history = self.store.load_history(wid)
        # With tracing on, re-sent requests carry their operation's span, as the first did.
        trace = (_observe.TRACING.begin(history, (), inst.activations, self.clock.now())
                 if _observe.TRACING is not None and history is not None else None)
        for op in history.operations if history else ():
            traceparent = trace.operation_parent(op) if trace is not None else None
            if op.state is OperationState.PENDING and op.kind == "timer":
                self.timers.schedule(wid, op.op_id, timer_fire_at(op))
            elif op.state is OperationState.PENDING and op.kind == "child":
                self.engine.start_child(op, inst.workflow_name, traceparent)
            elif op.state is OperationState.PENDING and op.kind == "call":
                self.transport.send_to_service(
                    service_of(op.name), _core.dedup_id(wid, "call", op.op_id),
                    call_request_body(op, self.transport.reply_address, traceparent))
                sent += 1
        return sent

    # -- starting and reading --------------------------------------------------------------
    def start(self, workflow: WorkflowStart[P, ResT], /, *args: P.args,
              **kwargs: P.kwargs) -> WorkflowHandle[ResT]:
        """``start(workflow, request, /, *, workflow_id=None)``: start an instance (idempotent
        per ``workflow_id``). The parameters after ``workflow`` are the workflow's, so a type
        checker reports a wrong input as an argument of the wrong type.

        Starting an existing id with the same workflow and input returns the existing
        instance; with a different one it raises :class:`WorkflowAlreadyStartedError`.

        Raises:
            UnknownWorkflowError: ``workflow`` is not registered.
            InvalidRequestError: ``request`` is not a valid input of the workflow.
        """
        request, workflow_id = start_arguments("start", args, kwargs)
        wf = cast("Workflow[Any, ResT]", workflow)
        if self._workflows.get(getattr(wf, "name", None)) is not wf:  # type: ignore[arg-type]
            raise UnknownWorkflowError(
                f"workflow {getattr(wf, 'name', wf)!r} is not registered with this "
                f"runtime (registered: {', '.join(sorted(self._workflows)) or 'none'}); call "
                "runtime.register(...) first")
        workflow_id = start_instance(self.store, self.transport, wf, request, workflow_id,
                                     self.clock.now())
        return WorkflowHandle(self, wf, workflow_id)

    def _instance(self, workflow_id: str) -> InstanceRecord:
        inst = self.store.get_instance(workflow_id)
        if inst is None:
            raise WorkflowNotFoundError(f"no workflow instance {workflow_id!r}")
        return inst

    def status(self, workflow_id: str) -> InstanceStatus:
        """The status of an instance."""
        return self._instance(workflow_id).status

    def history(self, workflow_id: str) -> History:
        """The instance and its recorded operations."""
        history = self.store.load_history(workflow_id)
        if history is None:
            raise WorkflowNotFoundError(f"no workflow instance {workflow_id!r}")
        return history

    def result(self, workflow_id: str) -> object:
        """The result of a completed instance (use the handle from :meth:`start` for a
        typed result).

        Raises:
            WorkflowFailedError: the workflow failed or was cancelled; carries the error's
                type, message and details.
            WorkflowNotFinishedError: it is still running.
        """
        inst = self._instance(workflow_id)
        wf = self._workflows.get(inst.workflow_name)
        if wf is None:
            raise UnknownWorkflowError(f"workflow {inst.workflow_name!r} of instance "
                                       f"{workflow_id!r} is not registered")
        return self._result(workflow_id, wf)

    def _result(self, workflow_id: str, workflow: Workflow[Any, ResT]) -> ResT:
        return instance_result(self._instance(workflow_id), workflow)

    # -- callbacks (complete/fail/heartbeat_callback come from CallbackCompletion) ----------
    def _callback_parts(self) -> tuple[StateStore, CallbackTokens | None, Transport]:
        return self.store, self.tokens, self.transport

    def _callback_now(self) -> float:
        return self.clock.now()  # heartbeats are recorded on the virtual clock

    def dead_letters(self) -> list[DeadLetter]:
        """Messages that were rejected or poison, with the reason, oldest first."""
        out = list(self.queue.dead_letters)
        for queue in self._service_queues.values():
            out.extend(queue.dead_letters)
        return out

    # -- repair ----------------------------------------------------------------------------
    def _repair_parts(self) -> tuple[StateStore, Transport, Clock]:
        return self.store, self.transport, self.clock

    def advance_time(self, seconds: float) -> None:
        """Move the virtual clock forward; timers that are due then fire (their messages
        wait on the workflow queue for the next :meth:`step_workflows`)."""
        self.clock.advance(seconds)
        self.timers.fire_due()

    # -- running ---------------------------------------------------------------------------
    def run_until_idle(self, *, skip_time: bool = True,
                       max_rounds: int = 100_000) -> list[ActivationReport]:
        """Deliver messages and run services until nothing is left to do.

        With ``skip_time`` (the default), when nothing else can happen the virtual clock
        jumps to the next durable timer, which fires, so a workflow that sleeps 30 days
        finishes at once; without it, timers fire only when :meth:`advance_time` reaches
        them. Returns the activations that ran, in order. Requests to services that have no
        implementation stay on their queue.
        """
        reports: list[ActivationReport] = []
        for _ in range(max_rounds):
            progressed = self.timers.fire_due() > 0
            progressed = self.step_workflows(reports) or progressed
            progressed = self.step_services() or progressed
            if not progressed:
                fire_at = self.timers.next_fire_at() if skip_time else None
                if fire_at is None:
                    return reports
                self.clock.advance(max(0.0, fire_at - self.clock.now()))
        raise WorkflowError(f"run_until_idle did not settle within {max_rounds} rounds")

    def step_workflows(self, reports: list[ActivationReport] | None = None) -> bool:
        """Receive one batch from the workflow queue and activate each instance in it, as a
        Lambda invocation would. Returns whether any message was received."""
        dead_before = len(self.queue.dead_letters)
        batch = self.queue.receive(10)
        self._after_dead_letters(self.queue, dead_before)
        if not batch:
            return dead_before != len(self.queue.dead_letters)
        groups: dict[str, list[QueueMessage]] = {}
        for message in batch:
            groups.setdefault(message.group_id, []).append(message)
        for workflow_id, received in groups.items():
            report = self._activate(workflow_id, received)
            if report is not None and reports is not None:
                reports.append(report)
        return True

    def _activate(self, workflow_id: str,
                  received: list[QueueMessage]) -> ActivationReport | None:
        parsed: list[WorkflowMessage] = []
        kept: list[QueueMessage] = []
        for message in received:
            try:
                msg = parse_workflow_message(message.body)
                if msg.workflow_id != workflow_id:
                    raise InvalidMessageError(
                        f"message for workflow {msg.workflow_id!r} arrived in group "
                        f"{workflow_id!r}; the group id must be the workflow id")
            except InvalidMessageError as exc:
                self._dead_letter(self.queue, message, str(exc))
                continue
            parsed.append(msg)
            kept.append(message)
        if not parsed:
            return None
        try:
            report = self.engine.activate(workflow_id, parsed)
        except Exception as exc:
            # The activation did not finish: every message of the group goes back (the FIFO
            # rule) and is delivered again; repeated failure ends in the dead-letter list.
            for message in kept:
                self._last_errors[message.message_id] = f"{type(exc).__name__}: {exc}"
                self.queue.release(message)
            return None
        for i, message in enumerate(kept):
            self._last_errors.pop(message.message_id, None)
            if i in report.rejected:
                self._dead_letter(self.queue, message, report.rejected[i])
            else:
                self.queue.delete(message)
        self._emit(report)
        return report

    def step_services(self) -> bool:
        """Receive one batch from each implemented service's queue and run the service on
        each request. Returns whether any request was received."""
        progressed = False
        for name, (service, fn) in list(self._services.items()):
            queue = self.service_queue(name)
            if len(queue) and inspect.iscoroutinefunction(fn):
                # Checked before receiving: raised inside _serve, the misuse would become an
                # error reply recorded in the workflow's history for good.
                self._require_no_running_loop()
            dead_before = len(queue.dead_letters)
            batch = queue.receive(10)
            self._after_dead_letters(queue, dead_before)
            for message in batch:
                progressed = True
                try:
                    request = parse_call_request(message.body)
                except InvalidMessageError as exc:
                    self._dead_letter(queue, message, str(exc))
                    continue
                try:
                    self._serve(service, fn, request)
                except Exception as exc:
                    self._last_errors[message.message_id] = f"{type(exc).__name__}: {exc}"
                    queue.release(message)
                    continue
                self._last_errors.pop(message.message_id, None)
                queue.delete(message)
        return progressed

    def _serve(self, service: Service[Any, Any], fn: Callable[[Any], Any],
               request: CallRequestMessage) -> None:
        ok, reply = _observe.serve_traced(service.name, request, lambda: run_service(
            service, fn, request.request, self._run_async))
        invocation = ServiceInvocation(service.name, request.workflow_id, request.call_id,
                                       orjson.dumps(request.request), ok, reply)
        self.invocations.append(invocation)
        self._emit(invocation)
        self.transport.send_to_workflow(
            request.workflow_id, _core.dedup_id(request.workflow_id, "call_result",
                                                request.call_id),
            call_result_body(request.workflow_id, request.call_id, ok, reply))

    @staticmethod
    def _require_no_running_loop() -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise WorkflowError("LocalRuntime runs async services on its own event loop; call "
                            "run_until_idle() from synchronous code (not inside a running "
                            "event loop)")

    def _run_async(self, awaitable: Awaitable[Any]) -> Any:
        self._require_no_running_loop()
        if self._aio is None:
            self._aio = asyncio.new_event_loop()

        async def wrap() -> Any:
            return await awaitable

        return self._aio.run_until_complete(wrap())

    def _dead_letter(self, queue: InMemoryFifoQueue, message: QueueMessage, reason: str) -> None:
        queue.dead_letter(message, reason)
        self._emit(queue.dead_letters[-1])

    def _after_dead_letters(self, queue: InMemoryFifoQueue, before: int) -> None:
        """Poison messages moved by the queue's redrive policy: fail their instance."""
        for letter in queue.dead_letters[before:]:
            self._emit(letter)
            if queue is not self.queue:
                continue
            inst = self.store.get_instance(letter.group_id)
            if inst is None or inst.status is not InstanceStatus.RUNNING:
                continue
            kind: str
            try:
                kind = parse_workflow_message(letter.body).kind
            except InvalidMessageError:
                kind = "unparsable"
            last = self._last_errors.get(letter.message_id, "unknown error")
            error = orjson.dumps({"type": "PoisonMessage", "details": None, "message": (
                f"a {kind} message failed {self._max_receives} times and was moved to the "
                f"dead-letter queue; last error: {last}")})
            self.store.finish(letter.group_id, InstanceStatus.FAILED, None, error,
                              inst.activations, self.clock.now())

    def _emit(self, event: ActivationReport | ServiceInvocation | DeadLetter) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def close(self) -> None:
        """Release the database and the event loop, and tear down the warm instances (their
        ``finally`` blocks run now, recording nothing)."""
        self.engine.instance_cache.clear()
        if self._aio is not None:
            self._aio.close()
            self._aio = None
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> LocalRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
