"""Steps: local code run once and recorded (``await ctx.step(fn, *args)``), with retries.

A step runs inside the workflow's activation. Each attempt is one recorded operation (kind
``step``) holding the arguments, the attempt number and the outcome: the value (after a round
trip through JSON, so the first execution returns exactly what replay returns) or the error
(type name and message). Between attempts the workflow sleeps on a durable timer (kind
``timer``, name ``retry:<step>``): a retry delay suspends the Lambda, it never sleeps in
process.
"""

from __future__ import annotations

import contextvars
import enum
import inspect
import math
import types
import typing
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import pydantic

from .errors import WorkflowError

if TYPE_CHECKING:
    from .serdes import Serdes

__all__ = [
    "Jitter",
    "RetryPolicy",
    "Semantics",
    "Step",
    "StepArgumentError",
    "StepError",
    "StepInfo",
    "current_step",
    "step",
]

P = ParamSpec("P")
R = TypeVar("R")


class Jitter(enum.StrEnum):
    """How a retry delay is randomised (deterministically, per workflow, step and attempt)."""

    FULL = "full"  # uniform in [0, delay]
    HALF = "half"  # uniform in [delay / 2, delay]
    NONE = "none"  # exactly the delay


class Semantics(enum.StrEnum):
    """What a crash in the middle of an attempt means."""

    AT_LEAST_ONCE = "at_least_once"  # the attempt runs again (nothing was recorded)
    AT_MOST_ONCE = "at_most_once"  # the attempt counts as failed (its start was recorded)


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{what} must be a non-negative number of seconds, got {value!r}")
    return float(seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how often a failed step runs again.

    Args:
        max_attempts: Attempts in all, counting the first (1 = no retry).
        initial_delay: The delay before the second attempt (seconds or ``timedelta``).
        backoff_rate: Each further delay is the previous one times this (>= 1).
        max_delay: No delay is longer than this.
        jitter: ``full`` (uniform in [0, delay]), ``half`` ([delay/2, delay]) or ``none``.
            Delays are at least 1 second (a durable timer's resolution).
        retryable: Exception types (or their names) that are retried; others fail the step
            at once. Default: every ``Exception``.
        non_retryable: Exception types (or names) never retried, even if ``retryable``
            matches.
    """

    max_attempts: int = 3
    initial_delay: float | timedelta = 1.0
    backoff_rate: float = 2.0
    max_delay: float | timedelta = 300.0
    jitter: Jitter | str = Jitter.FULL
    retryable: Sequence[type[BaseException] | str] = (Exception,)
    non_retryable: Sequence[type[BaseException] | str] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or (
                self.max_attempts < 1):
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        _seconds(self.initial_delay, "initial_delay")
        _seconds(self.max_delay, "max_delay")
        if not isinstance(self.backoff_rate, int | float) or not (
                math.isfinite(self.backoff_rate) and self.backoff_rate >= 1):
            raise ValueError(f"backoff_rate must be >= 1, got {self.backoff_rate!r}")
        try:
            object.__setattr__(self, "jitter", Jitter(self.jitter))
        except ValueError:
            raise ValueError(f"jitter must be one of full, half, none; got {self.jitter!r}"
                             ) from None
        for name in ("retryable", "non_retryable"):
            for entry in getattr(self, name):
                if not (isinstance(entry, str) or (
                        isinstance(entry, type) and issubclass(entry, BaseException))):
                    raise TypeError(f"{name} takes exception types or names, got {entry!r}")

    def retries(self, error_type: type[BaseException] | None, error_name: str) -> bool:
        """Whether an error is retried: by class when it is known, else by name (an
        ``Exception`` entry matches any name)."""
        def matches(entries: Sequence[type[BaseException] | str]) -> bool:
            for entry in entries:
                if isinstance(entry, str):
                    if entry == error_name:
                        return True
                elif error_type is not None:
                    if issubclass(error_type, entry):
                        return True
                elif entry.__name__ == error_name or entry in (Exception, BaseException):
                    return True
            return False
        if error_type is not None and issubclass(error_type, StepArgumentError):
            return False  # the same arguments would fail the same way on every attempt
        return matches(self.retryable) and not matches(self.non_retryable)

    def delay(self, attempt: int, key: str) -> float:
        """The delay after failed attempt ``attempt`` (1-based), jittered deterministically
        by ``key`` (the same on every replay)."""
        base = _seconds(self.initial_delay, "initial_delay") * self.backoff_rate ** (attempt - 1)
        delay = min(base, _seconds(self.max_delay, "max_delay"))
        import hashlib  # only a retry needs it: a workflow module's import stays light

        fraction = int.from_bytes(hashlib.sha256(f"{key}\0{attempt}".encode()).digest()[:8],
                                  "big") / 2**64
        if self.jitter is Jitter.FULL:
            delay *= fraction
        elif self.jitter is Jitter.HALF:
            delay = delay / 2 + delay / 2 * fraction
        return max(1.0, math.ceil(delay))


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a step's body may know about the attempt running it."""

    name: str
    attempt: int
    workflow_id: str


_CURRENT: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "lambda_workflow_step", default=None)


def current_step() -> StepInfo:
    """The running step's name, attempt number (from 1) and workflow id.

    Raises:
        WorkflowError: called outside a step's body.
    """
    info = _CURRENT.get()
    if info is None:
        raise WorkflowError("current_step() is only available inside a step's body")
    return info


class StepError(WorkflowError):
    """A step failed: its last attempt raised and no retry is left (or the error is not
    retryable). Raised in the workflow at the ``await`` of the step.

    Attributes:
        step: The step's name.
        error_type: The class name of the exception the body raised.
        message: Its message.
        attempts: How many attempts ran.
    """

    def __new__(cls, step: str, error_type: str, message: str, attempts: int) -> StepError:
        # The engine raises StepError(...) from a recorded outcome (the first execution and
        # every replay alike); an outcome recorded as StepArgumentError comes back as one, so
        # the workflow can catch it as the TypeError it is.
        if cls is StepError and error_type == StepArgumentError.__name__:
            cls = StepArgumentError
        return super().__new__(cls)

    def __init__(self, step: str, error_type: str, message: str, attempts: int) -> None:
        self.step = step
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        super().__init__(f"step {step!r} failed after {attempts} attempt"
                         f"{'s' if attempts != 1 else ''}: {error_type}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (StepError, (self.step, self.error_type, self.message, self.attempts))


class StepArgumentError(StepError, TypeError):
    """The arguments given to ``ctx.step`` do not fit the step function's signature (a
    missing, extra or unknown argument, or one of a type its annotation excludes).

    Checked before the body runs; the attempt is recorded as failed with this error type,
    is never retried, and raises this error (a :class:`TypeError` and a :class:`StepError`)
    at the ``await``, on the first execution and on every replay. Its message names the step,
    the argument and the signature.
    """

    def __init__(self, step: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(step, error_type, message, attempts)
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


class Step(Generic[P, R]):
    """A function with its step options (made by :func:`step`). Calling it calls the
    function; ``await ctx.step(it, ...)`` runs it durably."""

    __slots__ = ("_parameters", "fn", "name", "result_adapter", "result_type", "retry",
                 "semantics", "serdes")

    def __init__(self, fn: Callable[P, R], *,
                 name: str | None = None, retry: RetryPolicy | None = None,
                 semantics: Semantics | str = Semantics.AT_LEAST_ONCE,
                 serdes: Serdes[Any] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a step needs a function, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.retry, self.semantics = _options(self.name, retry, semantics)
        self.result_type = _result_type(fn)
        # A custom serialization of the result (serdes.py); None: JSON through the type.
        self.serdes = serdes
        self.result_adapter: pydantic.TypeAdapter[Any]
        if serdes is None:
            self.result_adapter = pydantic.TypeAdapter(self.result_type)
        else:
            from .serdes import base_adapter, with_serdes

            self.result_adapter = with_serdes(serdes, base_adapter(self.result_type))
        self._parameters: _Parameters | None = None

    def argument_problem(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Why ``args`` and ``kwargs`` do not fit the function's signature (arity, names, and
        each value against its annotation where an ``isinstance`` check can tell), or
        ``None`` when they fit or the signature cannot be read."""
        if self._parameters is None:
            self._parameters = _Parameters.of(self.fn)
        return self._parameters.problem(self.name, args, kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def run(self, info: StepInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the body once (an ``async`` body on its own event loop, in a worker thread,
        since the workflow's loop does no I/O)."""
        problem = self.argument_problem(args, kwargs)
        if problem is not None:
            raise StepArgumentError(self.name, StepArgumentError.__name__, problem,
                                    info.attempt)
        context = contextvars.copy_context()
        context.run(_CURRENT.set, info)
        result = context.run(self.fn, *args, **kwargs)
        if not inspect.isawaitable(result):
            return result
        import asyncio  # only async steps need them; `import lambda_workflow` stays light
        import threading

        outcome: list[Any] = []

        def work() -> None:
            async def wrap() -> Any:
                return await result

            try:
                outcome.append((True, context.run(asyncio.run, wrap())))
            except BaseException as exc:
                outcome.append((False, exc))

        worker = threading.Thread(target=work, name=f"step {self.name}")
        worker.start()
        worker.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def __repr__(self) -> str:
        return f"<Step {self.name!r}>"


_REPR_LIMIT = 60
_NOT_RUN = "; the body did not run, and the step is not retried"


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "..."


def _hint_name(hint: object) -> str:
    if hint is None or hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")


def _fits(value: object, hint: object) -> bool:
    """Whether ``value`` can be of type ``hint``, judged by ``isinstance`` on the hint's outer
    class (``list[int]`` checks ``list``); whatever cannot be judged so fits. Numbers follow
    the typing rules: an ``int`` is a ``float`` and a ``complex``."""
    if hint is Any or hint is object or isinstance(hint, TypeVar | ParamSpec | str):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _fits(value, typing.get_args(hint)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(hint))
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _fits(value, supertype)
    if typing.is_typeddict(hint):
        return isinstance(value, dict)
    cls = origin if origin is not None else hint
    if cls is float:
        return isinstance(value, int | float)
    if cls is complex:
        return isinstance(value, int | float | complex)
    if not isinstance(cls, type):
        return True
    try:
        return isinstance(value, cls)
    except TypeError:  # a Protocol that is not runtime-checkable, and the like
        return True


class _Parameters:
    """A step function's signature and its resolved annotations. (A plain class: a
    dataclass costs a millisecond at ``import lambda_workflow``.)"""

    __slots__ = ("hints", "shown", "signature")

    def __init__(self, signature: inspect.Signature | None, hints: dict[str, Any],
                 shown: str) -> None:
        self.signature = signature
        self.hints = hints
        self.shown = shown

    @staticmethod
    def of(fn: Callable[..., Any]) -> _Parameters:
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have none
            return _Parameters(None, {}, "")
        try:
            hints = typing.get_type_hints(inspect.unwrap(fn))
        except Exception:  # an unresolvable annotation: check the arity only
            hints = {}
        name = getattr(fn, "__name__", None) or type(fn).__name__
        return _Parameters(signature, hints, f"{name}{signature}")

    def problem(self, step: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if self.signature is None:
            return None
        where = f"step {step!r} (signature {self.shown})"
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            given = f"{len(args)} positional argument{'s' if len(args) != 1 else ''}"
            if kwargs:
                given += f" and keyword{'s' if len(kwargs) != 1 else ''} " + ", ".join(
                    map(repr, kwargs))
            return f"{where} was given {given}: {self._missing(args, kwargs) or exc}{_NOT_RUN}"
        for name, value in bound.arguments.items():
            hint = self.hints.get(name, Any)
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
            elif kind is inspect.Parameter.VAR_KEYWORD:
                items = [(f"{name}[{k!r}]", v) for k, v in value.items()]
            else:
                items = [(name, value)]
            for label, item in items:
                if not _fits(item, hint):
                    return (f"{where}: argument {label!r} is {_short_repr(item)} "
                            f"({type(item).__qualname__}), but its annotation is "
                            f"{_hint_name(hint)}{_NOT_RUN}")
        return None

    def _missing(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """Which required parameters the call leaves out, in words of our own (Python's
        own wording differs between versions, and the message is recorded); None when the
        problem is another (too many arguments, an unknown keyword)."""
        assert self.signature is not None
        try:
            given = self.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return None
        missing = [name for name, p in self.signature.parameters.items()
                   if p.default is p.empty and name not in given
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not missing:
            return None
        return (f"missing the required argument{'s' if len(missing) != 1 else ''} "
                + ", ".join(map(repr, missing)))


def _options(name: object, retry: RetryPolicy | None,
             semantics: Semantics | str) -> tuple[RetryPolicy, Semantics]:
    """Check a step's options; returns its retry policy and semantics."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a step name must be a non-empty string, got {name!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
    try:
        return retry or DEFAULT_RETRY, Semantics(semantics)
    except ValueError:
        raise ValueError("semantics must be 'at_least_once' or 'at_most_once', got "
                         f"{semantics!r}") from None


_PLAIN: weakref.WeakKeyDictionary[Callable[..., Any], Step[Any, Any]] = (
    weakref.WeakKeyDictionary())


def as_step(fn: Callable[..., Any]) -> Step[Any, Any]:
    """``fn`` itself if it is a :class:`Step`, else a default-options step for it (made once
    per function: reading the return annotation builds a validator)."""
    if isinstance(fn, Step):
        return fn
    try:
        cached = _PLAIN.get(fn)
    except TypeError:  # not weak-referenceable (a builtin): no cache
        return Step(fn)
    if cached is None:
        cached = _PLAIN[fn] = Step(fn)
    return cached


def _result_type(fn: Callable[..., Any]) -> Any:
    target = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return Any
    result = hints.get("return", Any)
    origin = typing.get_origin(result)
    if origin in (Awaitable, typing.Coroutine) or (
            origin is not None and getattr(origin, "__name__", "") in ("Coroutine", "Awaitable")):
        args = typing.get_args(result)
        result = args[-1] if args else Any
    return result


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(*, name: str | None = None, retry: RetryPolicy | None = None,
         semantics: Semantics | str = Semantics.AT_LEAST_ONCE,
         serdes: Serdes[Any] | None = None
         ) -> Callable[[Callable[P, R]], Step[P, R]]: ...
def step(fn: Callable[P, R] | None = None, /, *, name: str | None = None,
         retry: RetryPolicy | None = None,
         semantics: Semantics | str = Semantics.AT_LEAST_ONCE,
         serdes: Serdes[Any] | None = None
         ) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Give a function step options: ``@step`` or ``@step(name=..., retry=RetryPolicy(...),
    semantics="at_most_once", serdes=MySerdes())``. Options are checked here, before
    anything runs. ``serdes`` (a :class:`~lambda_workflow.Serdes`) records the result
    through it instead of as JSON (see docs/primitives.md, "Custom serialization")."""
    if fn is not None:
        return Step(fn)

    def decorate(f: Callable[P, R]) -> Step[P, R]:
        return Step(f, name=name, retry=retry, semantics=semantics, serdes=serdes)

    # Checked now, so a bad option fails at import time rather than mid-workflow.
    _options(name or "check", retry, semantics)
    if serdes is not None:
        from .serdes import SerdesAdapter

        SerdesAdapter(serdes, pydantic.TypeAdapter(Any))
    return decorate
