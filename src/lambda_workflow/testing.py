"""Test workflows with pytest: an embedded runtime with time skipping that replays every
instance from the top after each activation, so non-determinism fails the first test run.

Example:
    >>> from lambda_workflow.testing import WorkflowTestRuntime, implementation
    >>> def test_transaction_succeeds() -> None:
    ...     with WorkflowTestRuntime(make_transaction, services=[
    ...             implementation(balance_service, lambda tx: Balance(balance=100)),
    ...             implementation(fraud_service, lambda tx: FraudCheck(is_likely_fraud=False)),
    ...             implementation(transaction_service, lambda tx: None)]) as rt:
    ...         tx = BankTransaction(account_id="a", amount=5)
    ...         assert rt.run(make_transaction, tx) == "success"

See ``docs/testing.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeVar

import orjson
import pydantic

from ._runtime.clock import VirtualClock
from ._runtime.engine import ActivationReport
from ._runtime.history import history_from_json, history_to_json
from ._runtime.replay_check import ReplayCheck, check_replay
from .backends.memory import DeadLetter
from .backends.protocols import StateStore
from .errors import NonDeterminismError, ServiceError, UnknownWorkflowError, WorkflowError
from .local import LocalRuntime, ServiceFunction, ServiceInvocation, WorkflowHandle
from .service import Service
from .workflow import Workflow, WorkflowStart, start_arguments

if TYPE_CHECKING:
    from _pytest.fixtures import FixtureFunctionDefinition

__all__ = [
    "DEFAULT_START_TIME",
    "AlwaysReplayError",
    "Implementation",
    "Invocation",
    "ReplayCheck",
    "ServiceImplementations",
    "WorkflowTestRuntime",
    "check_replay",
    "history_from_json",
    "history_to_json",
    "implementation",
    "runtime_fixture",
]

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
ResT = TypeVar("ResT")
P = ParamSpec("P")

#: Where the virtual clock of a test runtime starts unless told otherwise: 2024-01-01 00:00 UTC,
#: the same in every run, so tests that look at ``ctx.now()`` are reproducible.
DEFAULT_START_TIME = datetime(2024, 1, 1, tzinfo=UTC)

#: ``{service: implementation}`` for ``services=``. Annotate a dict built apart from the call
#: with it (``SERVICES: ServiceImplementations = {...}``): mypy would infer ``dict[object, ...]``
#: for services of different types. A type checker cannot relate a dict's keys to its values,
#: so this form is not checked against each service's types; a list of
#: :func:`implementation` pairs is.
ServiceImplementations = Mapping[Service[Any, Any], Callable[[Any], Any]]


@dataclass(frozen=True, slots=True)
class Implementation:
    """A service and the function that implements it in a test, type-checked together by
    :func:`implementation`, which makes it. Not generic, so a list of implementations of
    different services needs no annotation."""

    service: Service[Any, Any]
    fn: Callable[[Any], Any]


def implementation(service: Service[ReqT, RespT],
                   fn: ServiceFunction[ReqT, RespT]) -> Implementation:
    """``fn`` implements ``service``, for ``WorkflowTestRuntime(services=[...])``.

    Checked like :meth:`~lambda_workflow.local.LocalRuntime.implement`: ``fn`` (sync or
    ``async``) must take the service's request type and return its response type, or a type
    checker reports the argument with both types::

        services=[implementation(balance_service, get_balance),
                  implementation(fraud_service, lambda tx: FraudCheck(is_likely_fraud=False))]
    """
    if not isinstance(service, Service):
        raise TypeError(f"implementation() takes a Service first, got {service!r}")
    if not callable(fn):
        raise TypeError(f"the implementation of service {service.name!r} must be callable, "
                        f"got {fn!r}")
    return Implementation(service, fn)


@dataclass(frozen=True, slots=True)
class Invocation(Generic[ReqT, RespT]):
    """One run of a service implementation, typed by its service (from
    :meth:`WorkflowTestRuntime.invocations_of`).

    Attributes:
        service: The service.
        workflow_id: The instance that called it.
        call_id: The call's operation id.
        request: The request, validated as the service's request type.
        ok: Whether the implementation returned (``False``: it raised).
        response: The returned response (``None`` when it raised).
        error: The error reply when it raised (a :class:`~lambda_workflow.ServiceError`
            with the reply's type, message and details), else ``None``.
    """

    service: Service[ReqT, RespT]
    workflow_id: str
    call_id: str
    request: ReqT
    ok: bool
    response: RespT | None
    error: ServiceError | None

Event = ActivationReport | ServiceInvocation | DeadLetter
# Activations after which the instance's history is replayed: those that ran the workflow.
_REPLAYED_STATUSES = frozenset({"suspended", "completed", "failed", "cancelled"})


class AlwaysReplayError(NonDeterminismError):
    """Replaying an instance from the top, right after one of its activations, did not
    reproduce its history: the workflow is not deterministic (it branches on the clock, a
    random number, a global counter, a dict of unstable order, ...).

    Attributes:
        workflow_id: The instance.
        activation: The activation after which the replay was checked.
        check: The full verdict of :func:`check_replay`.
    """

    def __init__(self, workflow_id: str, activation: int, check: ReplayCheck) -> None:
        super().__init__(
            f"always_replay: after activation {activation} of workflow "
            f"{check.workflow_name!r} ({workflow_id}), replaying its history from the top "
            f"did not reproduce it: {check.message}. A workflow must make the same decisions "
            "on every replay: use ctx.now(), ctx.random() and ctx.uuid4() instead of the clock "
            "and random numbers, and ctx.step(...) for other local code")
        self.workflow_id = workflow_id
        self.activation = activation
        self.check = check

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow_id, self.activation, self.check))


def _timestamp(value: float | datetime) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"start_time {value!r} has no time zone; give an aware datetime "
                             "(e.g. datetime(2024, 1, 1, tzinfo=UTC)) or a POSIX timestamp")
        return value.timestamp()
    return float(value)


# Warm instances in the testing runtime: off (every activation replays). The project's own
# test suite sets it from LAMBDA_WORKFLOW_INSTANCE_CACHE (tests/conftest.py) to run its tests
# with the cache on as well.
DEFAULT_INSTANCE_CACHE = 0


class WorkflowTestRuntime(LocalRuntime):
    """A :class:`~lambda_workflow.local.LocalRuntime` for tests.

    - Workflows and services are given up front. ``services`` is a list of
      :func:`implementation` pairs, each a :class:`~lambda_workflow.Service` and a plain
      function, sync or ``async``, that takes the request and returns the response (raise
      :class:`~lambda_workflow.ServiceError` for an error reply); a type checker checks each
      function against its service's types. A ``{service: function}`` mapping is accepted
      too, unchecked. :meth:`start` and :meth:`run` also register a workflow on first use.
    - Time is virtual and starts at ``start_time``; :meth:`run_until_idle` skips to the next
      durable timer when nothing else can happen, so ``await ctx.sleep(timedelta(days=30))``
      takes no time. :meth:`advance_time` moves the clock by hand.
    - ``always_replay`` (the default): after every activation that ran the workflow, its
      history is replayed from the top against the code with :func:`check_replay`; if the
      replay does not reproduce the history, the runtime call that ran the activation raises
      :class:`AlwaysReplayError` (a :class:`~lambda_workflow.NonDeterminismError`) naming the
      instance and the file and line of the code that differs.

    Args:
        *workflows: Workflows to register.
        services: ``[implementation(service, fn), ...]``, or ``{service: fn}``.
        always_replay: Check every activation by replaying from the top.
        start_time: The virtual clock's start, a POSIX timestamp or an aware ``datetime``
            (default :data:`DEFAULT_START_TIME`).
        database: SQLite file for state (default ``":memory:"``).
        store: A state store to use instead of SQLite (e.g. ``MemoryStateStore()``).
        on_event: Called with every activation report, service invocation and dead letter.
        **options: Other :class:`~lambda_workflow.local.LocalRuntime` options
            (``max_receives``, ...). ``instance_cache`` defaults to ``0`` here, whatever
            ``LAMBDA_WORKFLOW_INSTANCE_CACHE`` says: every activation replays the history
            (warm instances are for running; a test should exercise replay).
    """

    def __init__(
        self,
        *workflows: Workflow[Any, Any],
        services: Sequence[Implementation] | ServiceImplementations | None = None,
        always_replay: bool = True,
        start_time: float | datetime = DEFAULT_START_TIME,
        database: str | Path = ":memory:",
        store: StateStore | None = None,
        on_event: Callable[[Event], None] | None = None,
        **options: Any,
    ) -> None:
        clock: VirtualClock = options.pop("clock", None) or VirtualClock(_timestamp(start_time))
        options.setdefault("instance_cache", DEFAULT_INSTANCE_CACHE)
        self.always_replay = always_replay
        self.replay_checks: list[ReplayCheck] = []
        self._user_on_event = on_event
        self._replay_failures: list[AlwaysReplayError] = []
        super().__init__(database, store=store, clock=clock, on_event=self._observe, **options)
        self.register(*workflows)
        for service, fn in _service_pairs(services):
            self.implement(service, fn)

    # -- always replay ---------------------------------------------------------------------
    def _observe(self, event: Event) -> None:
        if self._user_on_event is not None:
            self._user_on_event(event)
        if (self.always_replay and isinstance(event, ActivationReport)
                and event.status in _REPLAYED_STATUSES):
            check = self.check_replay(event.workflow_id)
            if not check.ok:
                self._replay_failures.append(
                    AlwaysReplayError(event.workflow_id, event.activation, check))

    def check_replay(self, workflow_id: str) -> ReplayCheck:
        """Replay one instance's history from the top against the registered code now (what
        ``always_replay`` does after each activation) and return the verdict."""
        history = self.history(workflow_id)
        name = history.instance.workflow_name
        wf = self.engine.workflows.get(name)
        if wf is None:
            raise UnknownWorkflowError(f"workflow {name!r} of instance {workflow_id!r} is not "
                                       "registered with this runtime")
        check = check_replay(wf, history, tokens=self.tokens)
        self.replay_checks.append(check)
        return check

    def _raise_replay_failure(self) -> None:
        if self._replay_failures:
            first = self._replay_failures[0]
            self._replay_failures.clear()
            raise first

    def step_workflows(self, reports: list[ActivationReport] | None = None) -> bool:
        """Like :meth:`LocalRuntime.step_workflows`; then raises :class:`AlwaysReplayError`
        if replaying an instance it activated did not reproduce the history."""
        progressed = super().step_workflows(reports)
        self._raise_replay_failure()
        return progressed

    # -- starting and running ----------------------------------------------------------------
    def start(self, workflow: WorkflowStart[P, ResT], /, *args: P.args,
              **kwargs: P.kwargs) -> WorkflowHandle[ResT]:
        """``start(workflow, request, /, *, workflow_id=None)``: start an instance, registering
        ``workflow`` on first use (see :meth:`LocalRuntime.start`)."""
        if isinstance(workflow, Workflow) and self.engine.workflows.get(workflow.name) is None:
            self.register(workflow)
        return super().start(workflow, *args, **kwargs)

    def run(self, workflow: WorkflowStart[P, ResT], /, *args: P.args,
            **kwargs: P.kwargs) -> ResT:
        """``run(workflow, request, /, *, workflow_id=None)``: start an instance, run until
        nothing is left to do (skipping time to each durable timer), and return its typed
        result. The parameters after ``workflow`` are the workflow's: a wrong input is a type
        error naming the expected and the given type.

        Raises:
            WorkflowFailedError: the workflow failed (carries the error's type and message).
            WorkflowNotFinishedError: it is still waiting (e.g. on a service with no
                implementation, or a callback).
            AlwaysReplayError: a replay from the top did not reproduce the history.
        """
        start_arguments("run", args, kwargs)  # a wrong call names run, not start
        handle = self.start(workflow, *args, **kwargs)
        self.run_until_idle()
        return handle.result()

    # -- services ----------------------------------------------------------------------------
    def invocations_of(self, service: Service[ReqT, RespT]) -> list[Invocation[ReqT, RespT]]:
        """The runs of ``service``'s implementation so far, oldest first, with the request
        and the response typed by the service (``rt.invocations`` holds every service's
        runs, with the request and reply as JSON bytes).

        Raises:
            WorkflowError: a request or reply recorded for ``service`` does not validate
                against its types (a message sent without ``ctx.call``'s validation).
        """
        if not isinstance(service, Service):
            raise TypeError(f"invocations_of() takes a Service, got {service!r}")
        return [_typed(service, inv) for inv in self.invocations if inv.service == service.name]

    # -- time --------------------------------------------------------------------------------
    @property
    def now(self) -> datetime:
        """The virtual time (UTC)."""
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def advance_time(self, seconds: float | timedelta) -> None:
        """Move the virtual clock forward by ``seconds`` (or a ``timedelta``); timers due by
        then fire, and their messages are delivered by the next :meth:`run_until_idle`."""
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        super().advance_time(seconds)

    def __enter__(self) -> Self:
        return self


def _service_pairs(services: Sequence[Implementation] | ServiceImplementations | None
                   ) -> list[tuple[Service[Any, Any], Callable[[Any], Any]]]:
    if services is None:
        return []
    if isinstance(services, Mapping):
        return list(services.items())
    pairs: list[tuple[Service[Any, Any], Callable[[Any], Any]]] = []
    for entry in services:
        if not isinstance(entry, Implementation):
            raise TypeError("services= takes implementation(service, fn) pairs or a "
                            f"{{service: fn}} mapping; got the entry {entry!r}")
        pairs.append((entry.service, entry.fn))
    return pairs


def _typed(service: Service[ReqT, RespT], inv: ServiceInvocation) -> Invocation[ReqT, RespT]:
    try:
        request = service.request_adapter.validate_json(inv.request)
        response = service.response_adapter.validate_json(inv.reply) if inv.ok else None
    except pydantic.ValidationError as exc:
        raise WorkflowError(f"call {inv.call_id} of workflow {inv.workflow_id!r} to service "
                            f"{service.name!r}: the recorded request or reply does not "
                            f"validate against the service's types: {exc}") from None
    error = None
    if not inv.ok:
        body = orjson.loads(inv.reply)
        error = ServiceError(str(body.get("type")), str(body.get("message")),
                             body.get("details"), service=service.name, call_id=inv.call_id)
    return Invocation(service, inv.workflow_id, inv.call_id, request, inv.ok, response, error)


def runtime_fixture(*workflows: Workflow[Any, Any],
                    services: Sequence[Implementation] | ServiceImplementations
                    | None = None,
                    name: str | None = None, **options: Any) -> FixtureFunctionDefinition:
    """A pytest fixture that yields a fresh :class:`WorkflowTestRuntime` per test (closed
    afterwards). Assign it in a test module or ``conftest.py``; the fixture is named after the
    variable, or ``name``::

        rt = runtime_fixture(make_transaction, services={balance_service: get_balance})

        def test_it(rt: WorkflowTestRuntime) -> None:
            assert rt.run(make_transaction, tx) == "success"
    """
    import pytest

    pairs = _service_pairs(services)  # a one-shot iterable is read once, here

    def fixture() -> Iterator[WorkflowTestRuntime]:
        with WorkflowTestRuntime(*workflows, services=dict(pairs), **options) as runtime:
            yield runtime

    return pytest.fixture(fixture, name=name)
