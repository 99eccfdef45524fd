"""The object a workflow receives: its input and its durable operations."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

if TYPE_CHECKING:
    import logging
    import random
    import uuid

    import pydantic

    from .batch import BatchResult, Completion
    from .callbacks import Callback
    from .serdes import Serdes
    from .service import Service, ServiceCall
    from .steps import RetryPolicy, Step
    from .workflow import Workflow, WorkflowStart

__all__ = ["MAX_SLEEP", "MIN_SLEEP", "WorkflowContext"]

MIN_SLEEP = timedelta(seconds=1)
MAX_SLEEP = timedelta(days=366)


def _limit(value: float | timedelta, what: str) -> float:
    """A duration for a durable timer, in seconds: 1 second to 366 days."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            MIN_SLEEP.total_seconds() <= seconds <= MAX_SLEEP.total_seconds()):
        raise ValueError(f"{what} must be 1 second to 366 days, got {value!r}")
    return float(seconds)


async def _first_of(reply: Awaitable[CallRespT], timer: Awaitable[None], service: str,
                    seconds: float, label: str | None = None) -> CallRespT:
    import asyncio

    reply_f = asyncio.ensure_future(reply)
    timer_f = asyncio.ensure_future(timer)
    done, _ = await asyncio.wait({reply_f, timer_f}, return_when=asyncio.FIRST_COMPLETED)
    if reply_f in done:
        return reply_f.result()
    from .errors import CallTimeoutError

    what = f"call {label!r} to service {service!r}" if label else f"call to service {service!r}"
    raise CallTimeoutError(f"{what} got no reply within {seconds:g} s")


class _NamedCall:
    """A service as the replay core sees a call given a name: the recorded name carries the
    service and the call's name (``_opnames``); the rest is the service's."""

    __slots__ = ("name", "request_adapter", "request_model", "request_type", "response_adapter",
                 "response_type")

    def __init__(self, service: Service[Any, Any], label: str) -> None:
        from ._opnames import call_name

        self.name = call_name(service.name, label)
        self.request_adapter = service.request_adapter
        self.request_model = service.request_model
        self.request_type = service.request_type
        self.response_adapter = service.response_adapter
        self.response_type = service.response_type


async def _service_named(reply: Awaitable[CallRespT], service: str) -> CallRespT:
    """The reply of a named call, its service's errors naming the service itself."""
    from .errors import ServiceError

    try:
        return await reply
    except ServiceError as exc:
        raise ServiceError(exc.error_type, exc.message, exc.details, service=service,
                           call_id=exc.call_id) from None


ReqT = TypeVar("ReqT")
CallReqT = TypeVar("CallReqT")
CallRespT = TypeVar("CallRespT")
P = ParamSpec("P")
R = TypeVar("R")
CbT = TypeVar("CbT")
ItemT = TypeVar("ItemT")
StateT = TypeVar("StateT")
ChildResT = TypeVar("ChildResT")


class _Driver(Protocol):
    """What the activation engine offers the context (implemented in ``_runtime``)."""

    @property
    def is_replaying(self) -> bool: ...

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def call(
        self, service: Service[CallReqT, CallRespT], request: CallReqT, frame: FrameType | None
    ) -> Awaitable[CallRespT]: ...

    def sleep(self, seconds: float, frame: FrameType | None,
              name: str = "sleep") -> Awaitable[None]: ...

    def create_callback(self, name: str, result_adapter: pydantic.TypeAdapter[Any],
                        timeout: float | None, heartbeat_timeout: float | None,
                        frame: FrameType | None) -> Callback[Any]: ...

    def child(self, workflow: Workflow[Any, Any], request: Any, workflow_id: str | None,
              frame: FrameType | None) -> Awaitable[Any]: ...

    def persist_new_operations(self) -> None: ...

    def run_step(self, st: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 frame: FrameType | None) -> Coroutine[Any, Any, Any]: ...

    def now(self) -> float: ...

    @property
    def rng(self) -> random.Random: ...

    def patched(self, patch_id: str, frame: FrameType | None) -> bool: ...

    def deprecate_patch(self, patch_id: str) -> None: ...

    def run_context(self, name: str, index: int | None, body: Callable[[], Awaitable[Any]],
                    adapter: pydantic.TypeAdapter[Any], frame: FrameType | None
                    ) -> Awaitable[Any]: ...

    def recorded_flat(self) -> bool: ...


class WorkflowContext(Generic[ReqT]):
    """The handle a workflow uses to read its input and run durable operations.

    The runtime creates one per activation; workflows never construct it. Every durable
    operation is recorded in the instance's history and, on replay, returns its recorded
    outcome at once instead of running again.
    """

    __slots__ = ("_driver", "_request", "_workflow_id")

    def __init__(self, driver: _Driver, request: ReqT, workflow_id: str) -> None:
        self._driver = driver
        self._request = request
        self._workflow_id = workflow_id

    @property
    def request(self) -> ReqT:
        """The workflow's typed input (the same value on every replay)."""
        return self._request

    @property
    def workflow_id(self) -> str:
        """The id of this workflow instance."""
        return self._workflow_id

    @property
    def is_replaying(self) -> bool:
        """True while the workflow re-executes code whose effects are already recorded."""
        return self._driver.is_replaying

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that drops lines while replaying, so each line is logged once."""
        return self._driver.logger

    def call(self, service: ServiceCall[P, CallRespT], /, *args: P.args,
             **kwargs: P.kwargs) -> Awaitable[CallRespT]:
        """``ctx.call(service, request, /, *, timeout=None, name=None)``: call an asynchronous
        service and return an awaitable of its typed reply.

        The parameters after ``service`` are the service's (its request type, then the
        keyword-only ``timeout`` and ``name``), so a type checker takes the request type from
        the service alone and reports a wrong request as ``Argument 2 to "call" of
        "WorkflowContext" has incompatible type "X"; expected "Y"``.

        The call is created (and its id fixed) when ``call`` is invoked, not when it is
        awaited, so calls passed to ``asyncio.gather`` get ids in program order and all leave
        in the same activation.

        Replay behaviour:
            Recorded: the operation's kind (``call``), the service name, the request (as
            canonical JSON) and its digest, then the reply. On replay a call that already has a
            reply returns it at once (validated into the response type, exactly as on the
            first execution); a call that is still pending is not sent again. A call whose
            service name or request differs from the recorded one raises
            :class:`~lambda_workflow.NonDeterminismError`.

            With ``timeout``, a ``timer`` operation (``timeout:<service>``) is recorded right
            after the call; whichever of the reply and the timer arrives first decides, on
            every replay.

            ``name`` (default: the service's name) names the operation in the history, the
            CLI and errors (``<name> (service <service>)``; the timeout's timer is
            ``timeout:<name>``). It is part of what a replay matches: a call whose name
            changed at the same point raises :class:`~lambda_workflow.NonDeterminismError`,
            as a renamed step does.

        Raises:
            ServiceError: when awaited, if the service replied with an error.
            CallTimeoutError: when awaited, if ``timeout`` passed before the reply (a reply
                that comes later is recorded and ignored).
            InvalidRequestError: if ``request`` does not validate against the service's
                request type.
            ValueError: ``name`` is not a non-empty printable string (before anything is
                recorded).
        """
        # Anything may arrive here at run time: the driver reports what is not a Service.
        svc: Service[Any, CallRespT] = service  # type: ignore[assignment]
        if not kwargs and len(args) == 1:  # the common case, with no timeout: no parsing
            return self._driver.call(svc, args[0], sys._getframe(1))
        request, timeout, label = _call_arguments(args, kwargs)
        frame = sys._getframe(1)
        seconds = None if timeout is None else _limit(timeout, "timeout")
        if label is None:
            reply = self._driver.call(svc, request, frame)
        else:
            from ._opnames import check_label
            from .service import Service as _Service

            check_label(label, "ctx.call's name")
            if not isinstance(svc, _Service):  # the driver reports it
                return self._driver.call(svc, request, frame)
            named: Any = _NamedCall(svc, label)
            reply = _service_named(self._driver.call(named, request, frame), svc.name)
        if seconds is None:
            return reply
        timer = self._driver.sleep(seconds, frame, f"timeout:{label or svc.name}")
        return _first_of(reply, timer, svc.name, seconds, label)

    def sleep(self, duration: float | timedelta, /, *, name: str = "sleep") -> Awaitable[None]:
        """Wait ``duration`` (seconds, or a ``timedelta``) durably: the Lambda suspends and a
        timer wakes the workflow, so a sleep of a month costs nothing while it waits.

        ``name`` (default ``sleep``) names the timer in the history, the CLI and errors.

        Replay behaviour:
            Recorded: a ``timer`` operation named ``name`` with the duration in seconds; it
            fires at the time of the activation that created it plus the duration. On replay
            a timer that fired returns at once; one that has not fired suspends the workflow
            again. A different duration or name at the same point raises
            :class:`~lambda_workflow.NonDeterminismError`.

        Raises:
            ValueError: ``duration`` is under 1 second or over 366 days, or ``name`` is not a
                non-empty printable string (checked before anything is recorded).
        """
        if name != "sleep":
            from ._opnames import check_label

            check_label(name, "ctx.sleep's name")
        return self._driver.sleep(_limit(duration, "ctx.sleep's duration"), sys._getframe(1),
                                  name)

    def now(self) -> datetime:
        """The current time, deterministically: the time at which this point of the workflow
        was first reached (the time of the activation that delivered the last outcome), in
        UTC. Every replay returns the same value; use it instead of ``datetime.now()``."""
        return datetime.fromtimestamp(self._driver.now(), UTC)

    def random(self) -> float:
        """A random float in [0, 1) that is the same on every replay (a generator seeded by
        the workflow id, drawn in program order). Use it instead of ``random.random()``."""
        return self._driver.rng.random()

    def uuid4(self) -> uuid.UUID:
        """A random (version 4) UUID that is the same on every replay. Use it instead of
        ``uuid.uuid4()``, e.g. for idempotency keys sent to services."""
        import uuid  # here: a workflow module's import does not load it

        return uuid.UUID(int=self._driver.rng.getrandbits(128), version=4)

    def patched(self, patch_id: str, /) -> bool:
        """Versioning: whether this instance runs the code of patch ``patch_id``.

        ``if ctx.patched("v2-fraud"): <new code> else: <old code>`` lets a changed workflow
        run both instances started before the change (their history was recorded by the old
        code: ``False``) and new ones (``True``; a marker is recorded in the history). Once no
        instance started before the change is running, replace the call with
        :meth:`deprecate_patch` and drop the old branch; once none recorded with the marker
        remains either, delete that call too. See docs/versioning.md.
        """
        if not isinstance(patch_id, str) or not patch_id:
            raise ValueError(f"ctx.patched takes a non-empty string id, got {patch_id!r}")
        return self._driver.patched(patch_id, sys._getframe(1))

    def deprecate_patch(self, patch_id: str, /) -> None:
        """The old branch of patch ``patch_id`` is gone: consume the patch's marker in
        histories that have one, so instances recorded by :meth:`patched` keep replaying."""
        if not isinstance(patch_id, str) or not patch_id:
            raise ValueError(f"ctx.deprecate_patch takes a non-empty string id, got {patch_id!r}")
        self._driver.deprecate_patch(patch_id)

    @overload
    def step(self, fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args,
             **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...
    @overload
    def step(self, fn: Callable[P, R], /, *args: P.args,
             **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...
    def step(self, fn: Callable[P, Any], /, *args: P.args,
             **kwargs: P.kwargs) -> Coroutine[Any, Any, Any]:
        """Run local code once, durably: ``await ctx.step(charge_card, card, amount)``.

        ``fn`` is a function (``def`` or ``async def``) or a :func:`~lambda_workflow.step`
        object carrying options (name, retry policy, at-least-once or at-most-once). Its
        arguments and result must be JSON-serializable (pydantic models included); the result
        is validated into ``fn``'s return annotation, so the first execution returns exactly
        what a replay returns. Inside the body, :func:`~lambda_workflow.current_step` gives
        the attempt number (from 1).

        Replay behaviour:
            Recorded: one ``step`` operation per attempt (name, arguments, attempt number,
            outcome), and a ``timer`` operation (``retry:<name>``) for each delay between
            attempts: a retry suspends the workflow, it never sleeps in process. On replay a
            recorded attempt returns (or raises) its recorded outcome without running the
            body. An at-most-once attempt is recorded before it runs: if a crash interrupted
            it, the next activation counts it as failed (``StepInterrupted``); an
            at-least-once attempt interrupted by a crash runs again.

        Raises:
            StepError: when awaited, if the last attempt failed (or the error is not
                retryable); carries the original exception's type name and message.
            InvalidRequestError: the arguments are not JSON-serializable.
        """
        from .steps import as_step

        return self._driver.run_step(as_step(fn), args, dict(kwargs), sys._getframe(1))

    @overload
    def create_callback(self, name: str, result_type: type[CbT], /, *,
                        timeout: float | timedelta | None = None,
                        heartbeat_timeout: float | timedelta | None = None,
                        serdes: Serdes[CbT] | None = None) -> Callback[CbT]: ...
    @overload
    def create_callback(self, name: str, /, *, timeout: float | timedelta | None = None,
                        heartbeat_timeout: float | timedelta | None = None,
                        serdes: Serdes[Any] | None = None) -> Callback[Any]: ...
    def create_callback(self, name: str, result_type: Any = Any, /, *,
                        timeout: float | timedelta | None = None,
                        heartbeat_timeout: float | timedelta | None = None,
                        serdes: Serdes[Any] | None = None) -> Callback[Any]:
        """Create a callback an external system completes, and return it at once.

        Hand ``cb.token`` to the external system (an approver's e-mail, a payment provider's
        webhook); it completes the callback through ``complete_callback(token, value)``,
        ``fail_callback(token, error_type, message)`` or ``heartbeat_callback(token)`` of the
        client or the local runtime. ``await cb`` returns the value, validated as
        ``result_type``. Several callbacks may be outstanding and awaited in any order.
        With ``serdes`` (a :class:`~lambda_workflow.Serdes`), ``await cb`` returns
        ``serdes.deserialize`` of the completion's JSON text instead (callback 4.15, 4.16).

        Replay behaviour:
            Recorded: a ``callback`` operation (name and timeouts), and a ``timer`` for each
            timeout; the token is derived from the instance and the operation id, so every
            replay hands out the same token. A heartbeat records a new heartbeat period.

        Raises:
            ValueError: a timeout outside 1 second to 366 days (before anything is recorded).
            CallbackFailedError, CallbackTimeoutError, CallbackHeartbeatTimeoutError: when
                awaited.
        """
        import pydantic as _pydantic

        if not isinstance(name, str) or not name:
            raise ValueError(f"a callback needs a non-empty name, got {name!r}")
        limit = None if timeout is None else _limit(timeout, "timeout")
        beat = None if heartbeat_timeout is None else _limit(heartbeat_timeout,
                                                             "heartbeat_timeout")
        adapter: _pydantic.TypeAdapter[Any]
        if serdes is None:
            adapter = _pydantic.TypeAdapter(result_type)
        else:
            from .serdes import base_adapter, with_serdes

            adapter = with_serdes(serdes, base_adapter(result_type), external=True)
        return self._driver.create_callback(name, adapter, limit, beat, sys._getframe(1))

    async def wait_for_callback(
        self, name: str, submitter: Callable[[str], Any], result_type: type[CbT], /,
        *, timeout: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None, serdes: Serdes[CbT] | None = None,
    ) -> CbT:
        """Create a callback, run ``submitter(token)`` as a retryable step (send the token
        to the external system), then wait for the callback's value (read by ``serdes``
        when given, as :meth:`create_callback` does).

        Raises:
            StepError: the submitter failed on its last attempt.
            CallbackFailedError: the external system failed the callback.
            CallbackTimeoutError: ``timeout`` passed before the callback completed.
            CallbackHeartbeatTimeoutError: ``heartbeat_timeout`` passed without a heartbeat.
        """
        from .steps import Step

        callback = self.create_callback(name, result_type, timeout=timeout,
                                        heartbeat_timeout=heartbeat_timeout, serdes=serdes)
        # The callback must exist in the state before the submitter hands out its token: an
        # external system may answer at once.
        self._driver.persist_new_operations()
        submit = Step(submitter, name=f"submit:{name}", retry=retry)
        await self._driver.run_step(submit, (callback.token,), {}, sys._getframe(1))
        return await callback

    async def run_in_child_context(self, fn: Callable[..., Awaitable[R]], /, *args: Any,
                                   name: str | None = None,
                                   serdes: Serdes[R] | None = None) -> R:
        """Run ``await fn(child_ctx, *args)`` as a child context of this instance: its
        operations are grouped under it, and its result is recorded when it finishes.

        Unlike :meth:`child` (a separate instance, with its own id, history and activations),
        a child context costs no activation and no message: it runs here, now. ``name``
        (default: ``fn``'s name) names it in the history, the CLI and errors. The result
        goes through ``fn``'s return annotation, so the first execution returns what every
        replay returns. Child contexts nest.

        Replay behaviour:
            Recorded: a ``context`` operation (its name), created when the body starts and
            completed with the body's result (or failed with its error) when it ends. The
            body's operations get ids within it (``<context id>.1``, ``.2``, ...), so the ids
            of what follows do not depend on whether the body ran. On replay a finished
            context returns its recorded result (or raises its recorded failure) without
            running the body; an unfinished one runs the body again, which replays its
            recorded operations. A result too large to record (over the payload limit, with
            no payload bucket) is recorded as such and the body runs again on every replay.
            With ``serdes`` (a :class:`~lambda_workflow.Serdes`) the result is recorded as its
            ``serialize`` output and the first run returns it after a round trip too.

        Raises:
            ChildContextError: the body raised; carries the error's type name and message
                (the same on every replay).
            ValueError: ``name`` is empty or not a string (before anything runs).
        """
        from ._runtime.contexts import adapter_for
        from .steps import _result_type

        label = _context_name(fn, name, "ctx.run_in_child_context")
        if serdes is None:
            adapter = adapter_for(_result_type(fn))
        else:  # ``serdes`` records the result (child 3.14)
            from .serdes import base_adapter, with_serdes

            adapter = with_serdes(serdes, base_adapter(_result_type(fn)))
        child: WorkflowContext[ReqT] = WorkflowContext(self._driver, self._request,
                                                       self._workflow_id)
        result: R = await self._driver.run_context(label, None, lambda: fn(child, *args),
                                                   adapter, sys._getframe(1))
        return result

    async def parallel(self, branches: Sequence[Callable[[], Awaitable[R]]], /, *,
                       max_concurrency: int | None = None,
                       completion: Completion | None = None,
                       names: Sequence[str] | None = None, flat: bool = False,
                       result_type: Any = None,
                       item_serdes: Serdes[R] | None = None) -> BatchResult[R]:
        """Run branches (zero-argument async callables) concurrently and return their
        :class:`~lambda_workflow.BatchResult`, in branch order.

        ``max_concurrency`` caps the branches running at once; ``completion`` says when the
        batch is complete (default: all successful, stopping at the first failure; or a
        minimum successful, a tolerated failure count or percentage, or all completed).
        Branches still running when it completes are cancelled; branches never started are
        reported ``not_started``. ``names`` names the branches (default ``parallel[<i>]``) in
        the history, the CLI and errors. Each branch's value goes through ``result_type``
        (default: the branch's return annotation, else it is kept as JSON data), or is
        recorded through ``item_serdes`` (a :class:`~lambda_workflow.Serdes`, nested branches
        only; parallel 8.15).

        Replay behaviour:
            Nested (the default): each branch runs as a child context (see
            :meth:`run_in_child_context`): a ``context`` operation per started branch, its
            operations grouped under it, its value recorded when it finishes. On replay a
            finished branch returns its recorded value and its code does not run again.
            Flat (``flat=True``, and every batch recorded before branches were nested): no
            operation of its own; each branch's operations are recorded directly in the
            enclosing scope, in the order the branches create them, and every replay runs
            every started branch's code again (its operations return their recorded
            outcomes).

        Raises:
            ValueError: ``max_concurrency`` below 1, or ``names`` not one non-empty string per
                branch (before anything runs).
        """
        _check_batch(max_concurrency, completion)
        branches = list(branches)
        for branch in branches:
            if not callable(branch):
                raise TypeError(f"ctx.parallel takes callables returning awaitables, got "
                                f"{branch!r}")
        if names is None:
            labels = [f"parallel[{i}]" for i in range(len(branches))]
        else:
            if isinstance(names, str):
                raise TypeError(f"names must be one string per branch, not a string: "
                                f"{names!r}")
            labels = list(names)
            if len(labels) != len(branches):
                raise ValueError(f"ctx.parallel got {len(labels)} names for {len(branches)} "
                                 "branches")
            for label in labels:
                _context_name(None, label, "a parallel branch's name")
        return await self._batch(branches, labels, result_type, max_concurrency, completion,
                                 flat, item_serdes)

    @overload
    async def map(self, items: Sequence[ItemT], fn: Callable[[ItemT], Awaitable[R]], /, *,
                  max_concurrency: int | None = None,
                  completion: Completion | None = None,
                  item_name: Callable[[ItemT, int], str] | None = None,
                  flat: bool = False, result_type: Any = None,
                  item_serdes: Serdes[R] | None = None) -> BatchResult[R]: ...

    @overload
    async def map(self, items: Sequence[ItemT], fn: Callable[[ItemT, int], Awaitable[R]], /,
                  *, max_concurrency: int | None = None,
                  completion: Completion | None = None,
                  item_name: Callable[[ItemT, int], str] | None = None,
                  flat: bool = False, result_type: Any = None,
                  item_serdes: Serdes[R] | None = None) -> BatchResult[R]: ...

    async def map(self, items: Sequence[ItemT], fn: Callable[..., Awaitable[R]], /, *,
                  max_concurrency: int | None = None,
                  completion: Completion | None = None,
                  item_name: Callable[[ItemT, int], str] | None = None,
                  flat: bool = False, result_type: Any = None,
                  item_serdes: Serdes[R] | None = None) -> BatchResult[R]:
        """``await fn(item)`` for every item, concurrently (see :meth:`parallel`); the
        result's items are in the order of ``items``. A ``fn`` with two required positional
        parameters gets the item's zero-based index too: ``await fn(item, index)`` (map 9.3).

        ``item_name(item, index)`` names each item (default ``map[<index>]``) in the history,
        the CLI and errors. Items run nested (each a child context: a finished item returns
        its recorded value and ``fn`` never runs for it again) unless ``flat=True``; values go
        through ``result_type`` (default: ``fn``'s return annotation), or are recorded
        through ``item_serdes`` (map 9.14).

        Raises:
            ValueError: ``max_concurrency`` below 1, or ``item_name`` returned something
                other than a non-empty string (before anything runs).
        """
        _check_batch(max_concurrency, completion)
        values = list(items)
        labels = [f"map[{i}]" for i in range(len(values))]
        if item_name is not None:
            labels = [_context_name(None, item_name(item, i), f"item_name(item {i})")
                      for i, item in enumerate(values)]

        with_index = _takes_index(fn)

        def branch(item: ItemT, index: int) -> Callable[[], Awaitable[R]]:
            return (lambda: fn(item, index)) if with_index else (lambda: fn(item))

        if result_type is None:
            from .steps import _result_type

            result_type = _result_type(fn)
        return await self._batch([branch(item, i) for i, item in enumerate(values)], labels,
                                 result_type,
                                 max_concurrency, completion, flat, item_serdes)

    async def _batch(self, branches: list[Callable[[], Awaitable[R]]], labels: list[str],
                     result_type: Any, max_concurrency: int | None,
                     completion: Completion | None, flat: bool,
                     item_serdes: Serdes[Any] | None = None) -> BatchResult[R]:
        """Run a batch: each branch a child context, or flat (see :meth:`parallel`)."""
        from ._runtime.contexts import adapter_for
        from .batch import Completion, run_batch

        if not isinstance(flat, bool):
            raise TypeError(f"flat must be a bool, got {flat!r}")
        typed: Callable[[Any], pydantic.TypeAdapter[Any]] = adapter_for
        if item_serdes is not None:
            from .serdes import base_adapter, with_serdes

            if flat:
                raise ValueError("item_serdes records each item's value, and a flat batch "
                                 "records none: use item_serdes without flat=True")
            with_serdes(item_serdes, adapter_for(Any))  # checked before anything runs
            serdes = item_serdes

            def typed(tp: Any) -> pydantic.TypeAdapter[Any]:
                return with_serdes(serdes, base_adapter(tp))
        if flat or not branches or self._driver.recorded_flat():
            return await run_batch(branches, max_concurrency=max_concurrency,
                                   completion=completion or Completion())
        frame = sys._getframe(2)
        driver = self._driver
        fixed = None if result_type is None else typed(result_type)

        def nested(i: int) -> Callable[[], Awaitable[R]]:
            branch = branches[i]
            if fixed is not None:
                adapter = fixed
            else:
                from .steps import _result_type

                adapter = typed(_result_type(branch))
            return lambda: driver.run_context(labels[i], i, branch, adapter, frame)

        return await run_batch([nested(i) for i in range(len(branches))],
                               max_concurrency=max_concurrency,
                               completion=completion or Completion())

    async def child(self, workflow: WorkflowStart[P, ChildResT], /, *args: P.args,
                    **kwargs: P.kwargs) -> ChildResT:
        """``await ctx.child(workflow, request, /, *, workflow_id=None)``: start a child
        workflow and wait for its result (a wrong input is a type error naming both types).

        The child is an instance of its own (id ``workflow_id``, default
        ``<this id>/<operation id>``) with its own history; it must be registered with the
        same runtime. When it ends, its result (or error) comes back as the reply of this
        operation.

        Replay behaviour:
            Recorded: a ``child`` operation (the child workflow's name and input); its start
            message leaves once; on replay the recorded result returns at once.

        Raises:
            ChildWorkflowError: the child failed or was cancelled; carries its error type and
                message.
        """
        from .errors import ChildWorkflowError, ServiceError
        from .workflow import start_arguments

        request, workflow_id = start_arguments("ctx.child", args, kwargs)
        future = self._driver.child(cast("Workflow[Any, Any]", workflow), request, workflow_id,
                                    sys._getframe(1))
        try:
            result: ChildResT = await future
        except ServiceError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            raise ChildWorkflowError(str(details.get("workflow_id", "")), exc.error_type,
                                     exc.message, details.get("details")) from None
        return result

    async def wait_for_condition(
        self, check: Callable[[StateT], StateT] | Callable[[StateT], Awaitable[StateT]],
        initial_state: StateT, wait_strategy: Callable[[StateT, int], float | None], /, *,
        name: str | None = None, max_attempts: int = 60, retry: RetryPolicy | None = None,
        serdes: Serdes[StateT] | None = None,
    ) -> StateT:
        """Poll until a condition holds: ``state = check(state)`` runs as a recorded step,
        then ``wait_strategy(state, attempt)`` returns the seconds to wait before the next
        check, or ``None`` when the condition is met (the state is returned).

        A check that raises is not retried (as on AWS, wait_for_condition 6.7): the error
        fails the operation at once. ``retry`` (a :class:`~lambda_workflow.RetryPolicy`)
        retries a check that raised, as a step's policy does, before the next poll.

        Replay behaviour:
            Each check is a ``step`` operation (its state recorded) and each wait a
            ``timer``; a replay returns recorded states without checking again. With
            ``retry``, each delay between attempts of a check is a ``timer``
            (``retry:<name>``). With ``serdes`` (a :class:`~lambda_workflow.Serdes`) each
            recorded state is its ``serialize`` output, and every check, on the first run and
            on replay, sees the state after a round trip (wait_for_condition 6.11).

        Raises:
            ConditionNotMetError: ``max_attempts`` checks did not satisfy it.
            StepError: a check raised (on its last attempt, when ``retry`` allows several).
            ValueError: ``max_attempts`` below 1 (before anything runs).
            TypeError: ``retry`` is not a ``RetryPolicy`` (before anything runs).
        """
        from .errors import ConditionNotMetError
        from .steps import RetryPolicy, Step

        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or (
                max_attempts < 1):
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"wait_for_condition's retry must be a RetryPolicy or None (no "
                            f"retry), got {retry!r}")
        label = name or getattr(check, "__qualname__", "condition")
        policy = retry or RetryPolicy(max_attempts=1)
        frame = sys._getframe(1)
        state = initial_state
        if serdes is not None:
            final: StateT = await self._serdes_condition(
                check, state, wait_strategy, str(label), max_attempts, policy, serdes, frame)
            return final
        st = Step(check, name=label, retry=policy)
        for attempt in range(1, max_attempts + 1):
            state = await self._driver.run_step(st, (state,), {}, frame)
            delay = wait_strategy(state, attempt)
            if delay is None:
                return state
            if attempt < max_attempts:
                await self._driver.sleep(_limit(delay, "the wait strategy's delay"), frame,
                                         f"poll:{label}")
        raise ConditionNotMetError(f"condition {label!r} not met after {max_attempts} checks")

    async def _serdes_condition(
        self, check: Callable[[Any], Any], state: Any,
        wait_strategy: Callable[[Any, int], float | None], label: str, max_attempts: int,
        policy: RetryPolicy, serdes: Serdes[Any], frame: FrameType | None) -> Any:
        """wait_for_condition with a serdes: each check's argument is recorded as the serdes
        writes the state too, and the check receives it read back, so the state (the initial
        one included) reaches checks and the history only through the serdes."""
        from .errors import ConditionNotMetError, InvalidRequestError
        from .serdes import base_adapter, with_serdes
        from .steps import Step, _result_type

        adapter = with_serdes(serdes, base_adapter(_result_type(check)))

        def checked(recorded: Any) -> Any:
            return check(adapter.validate_python(recorded))

        st = Step(checked, name=label, retry=policy, serdes=serdes)
        for attempt in range(1, max_attempts + 1):
            try:
                argument = adapter.dump_python(state, mode="json")
            except Exception as exc:
                raise InvalidRequestError(f"the state of condition {label!r}: {exc}") from None
            state = await self._driver.run_step(st, (argument,), {}, frame)
            delay = wait_strategy(state, attempt)
            if delay is None:
                return state
            if attempt < max_attempts:
                await self._driver.sleep(_limit(delay, "the wait strategy's delay"), frame,
                                         f"poll:{label}")
        raise ConditionNotMetError(f"condition {label!r} not met after {max_attempts} checks")


def _call_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(request, timeout, name)`` from what ``ctx.call`` received after the service."""
    unexpected = sorted(set(kwargs) - {"timeout", "name"})
    if len(args) != 1 or unexpected:
        got = f"{len(args)} positional argument{'s' if len(args) != 1 else ''}"
        if unexpected:
            got += f" and keyword argument{'s' if len(unexpected) != 1 else ''} " + ", ".join(
                repr(k) for k in unexpected)
        raise TypeError(f"ctx.call takes (service, request, /, *, timeout=None, name=None): the "
                        f"service, then one request; got {got} after the service")
    return args[0], kwargs.get("timeout"), kwargs.get("name")


def _context_name(fn: object, name: object, what: str) -> str:
    """The name of a child context: ``name``, else ``fn``'s name."""
    if name is None:
        name = getattr(fn, "__name__", None) or "context"
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ValueError(f"{what} must be a non-empty printable string, got {name!r}")
    return name


def _check_batch(max_concurrency: int | None, completion: object) -> None:
    from .batch import Completion

    if completion is not None and not isinstance(completion, Completion):
        raise TypeError(f"completion must be a Completion, got {completion!r}")
    if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
            or max_concurrency < 1):
        raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")


def _takes_index(fn: Callable[..., object]) -> bool:
    """Whether a map function takes the item's index too: two or more required positional
    parameters (``fn(item, index)``). Anything else gets the item alone."""
    import inspect

    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): the item alone
        return False
    required = [p for p in parameters
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) >= 2
