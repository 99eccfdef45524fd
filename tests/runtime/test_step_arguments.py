"""ctx.step checks the arguments against the step function's signature before the body runs:
a missing, extra or unknown argument, or a value its annotation excludes, fails the step at
once with StepArgumentError (a TypeError and a StepError) naming the step and the argument. The
attempt is recorded as failed and never retried (no retry timers), so every replay raises the
same error."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any, Literal, NewType, Protocol, TypedDict

import pytest
from pydantic import BaseModel

from lambda_workflow import (
    RetryPolicy,
    StepArgumentError,
    StepError,
    WorkflowContext,
    WorkflowFailedError,
    step,
    workflow,
)
from lambda_workflow.steps import Step
from lambda_workflow.testing import WorkflowTestRuntime, check_replay

RUNS: list[str] = []


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    RUNS.clear()


class Card(BaseModel):
    number: str


def charge(card: Card, amount: int, *, reference: str) -> str:
    RUNS.append(f"charge {amount}")
    return f"{reference}:{amount}"


def _ops(rt: WorkflowTestRuntime, workflow_id: str) -> list[tuple[str, str, str]]:
    return [(op.kind, op.name, op.state.value)
            for op in rt.history(workflow_id).operations]


@workflow
async def missing_keyword(ctx: WorkflowContext[int]) -> str:
    return await ctx.step(charge, Card(number="4242"), ctx.request)  # type: ignore[call-overload, no-any-return]


def test_a_missing_argument_fails_at_once_and_is_not_retried() -> None:
    """A step called without a required argument: the body never runs, one failed attempt is
    recorded, no retry timer; the workflow fails with StepArgumentError naming the step, the
    missing argument and the signature."""
    with WorkflowTestRuntime(missing_keyword) as rt:
        with pytest.raises(WorkflowFailedError) as failed:
            rt.run(missing_keyword, 5, workflow_id="m-1")
        assert _ops(rt, "m-1") == [("step", "charge", "failed")]
    assert RUNS == []
    assert failed.value.error_type == "StepArgumentError"
    assert failed.value.message == (
        "step 'charge' (signature charge(card: 'Card', amount: 'int', *, reference: 'str') "
        "-> 'str') was given 2 positional arguments: missing the required argument "
        "'reference'; the body did not run, and the step is not retried")


@workflow
async def wrong_type(ctx: WorkflowContext[str]) -> str:
    try:
        return await ctx.step(charge, Card(number="4242"), ctx.request,  # type: ignore[arg-type]
                              reference="r-1")
    except TypeError as exc:  # StepArgumentError is a TypeError
        assert isinstance(exc, StepArgumentError) and isinstance(exc, StepError)
        assert (exc.step, exc.error_type, exc.attempts) == ("charge", "StepArgumentError", 1)
        return f"refused: {exc}"


def test_a_wrong_type_is_a_type_error_the_workflow_can_catch() -> None:
    """A value its annotation excludes ('5' for amount: int) is caught as a TypeError in the
    workflow, whose message names the argument, its value and type, and the annotation."""
    with WorkflowTestRuntime(wrong_type) as rt:
        result = rt.run(wrong_type, "5", workflow_id="w-1")
        assert _ops(rt, "w-1") == [("step", "charge", "failed")]
        assert all(check.ok for check in rt.replay_checks)  # always-replay: deterministic
    assert RUNS == []
    assert result.startswith("refused: step 'charge' (signature charge(")
    assert result.endswith(": argument 'amount' is '5' (str), but its annotation is int; the "
                           "body did not run, and the step is not retried")


@step(retry=RetryPolicy(max_attempts=5, retryable=[TypeError]))
def retried_on_type_errors(count: int) -> int:
    RUNS.append("ran")
    return count


@workflow
async def unknown_keyword(ctx: WorkflowContext[None]) -> int:
    return await ctx.step(retried_on_type_errors, 1, cuont=2)  # type: ignore[arg-type, call-arg]


def test_an_unknown_keyword_is_not_retried_even_when_type_errors_are() -> None:
    """A policy that retries TypeError still does not retry an argument error: the same
    arguments would fail the same way."""
    with WorkflowTestRuntime(unknown_keyword) as rt:
        with pytest.raises(WorkflowFailedError) as failed:
            rt.run(unknown_keyword, None, workflow_id="u-1")
        assert _ops(rt, "u-1") == [("step", "retried_on_type_errors", "failed")]
    assert RUNS == []
    assert "was given 1 positional argument and keyword 'cuont': got an unexpected keyword " \
           "argument 'cuont'" in failed.value.message


@step(name="charge")
def charge_fixed(card: Card, amount: int | str, *, reference: str = "r-0") -> str:
    RUNS.append("fixed")
    return "fixed"


@workflow(name="missing_keyword")
async def missing_keyword_fixed(ctx: WorkflowContext[int]) -> str:
    return await ctx.step(charge_fixed, Card(number="4242"), ctx.request)


def test_replay_returns_the_recorded_argument_error_after_the_code_changed() -> None:
    """The failed attempt is in the history: replaying it with code whose signature now
    accepts the arguments returns the recorded failure (the body does not run), so the
    instance's replay stays deterministic."""
    with WorkflowTestRuntime(missing_keyword) as rt:
        with pytest.raises(WorkflowFailedError):
            rt.run(missing_keyword, 5, workflow_id="m-2")
        history = rt.history("m-2")
    check = check_replay(missing_keyword_fixed, history)
    assert check.ok, check.message
    assert RUNS == []


def test_a_step_error_recorded_as_an_argument_error_is_rebuilt_as_one() -> None:
    """StepError(...) with the error type StepArgumentError (as the engine raises from the
    record) is a StepArgumentError, keeps its message unprefixed, and survives pickling."""
    exc = StepError("charge", "StepArgumentError", "step 'charge' ...: bad", 1)
    assert type(exc) is StepArgumentError and isinstance(exc, TypeError)
    assert str(exc) == "step 'charge' ...: bad"
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is StepArgumentError and str(again) == str(exc)
    other = StepError("charge", "ValueError", "no", 2)
    assert type(other) is StepError and str(other) == "step 'charge' failed after 2 " \
                                                      "attempts: ValueError: no"


class Named(Protocol):
    name: str


class Point(TypedDict):
    x: int


UserId = NewType("UserId", str)


def everything(a: float, b: complex, c: int | None, d: list[int], e: Sequence[str],
               f: Literal["x", "y"], g: UserId, h: Point, i: Named, j: Card, k: Any,
               *rest: int, **extra: str) -> None:
    return None


def unresolvable(a: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
    return None


def test_arguments_that_fit_pass_and_each_misfit_is_named() -> None:
    """The check follows the typing rules (an int is a float and a complex, None fits an
    Optional, a Literal's values, a NewType's base, a TypedDict's dict, a model instance);
    what isinstance cannot judge (a non-runtime Protocol, Any, an unresolvable annotation)
    passes; each misfit names its argument."""
    st = Step(everything)
    good: tuple[Any, ...] = (1, 2, None, [1], ("s",), "x", UserId("u"), {"x": 1}, object(),
                             Card(number="1"), object(), 3, 4)
    assert st.argument_problem(good, {"z": "v"}) is None
    assert st.argument_problem((True, 2.5, 3, [], [], "y", "u", {}, 1, Card(number="1"), 1),
                               {}) is None
    cases: dict[str, tuple[int, object]] = {
        "argument 'a' is 'x' (str), but its annotation is float": (0, "x"),
        "argument 'c' is 1.5 (float), but its annotation is int | None": (2, 1.5),
        "argument 'd' is (1,) (tuple), but its annotation is list[int]": (3, (1,)),
        "argument 'f' is 'z' (str), but its annotation is Literal['x', 'y']": (5, "z"),
        "argument 'h' is [] (list), but its annotation is": (7, []),
        "argument 'j' is {'number': '1'} (dict), but its annotation is Card": (
            9, {"number": "1"}),
        "argument 'rest[1]' is 'four' (str), but its annotation is int": (12, "four"),
    }
    for wanted, (index, value) in cases.items():
        args = list(good)
        args[index] = value
        problem = st.argument_problem(tuple(args), {})
        assert problem is not None and wanted in problem, (wanted, problem)
    problem = st.argument_problem(good, {"z": 5})
    assert problem is not None and "argument \"extra['z']\" is 5 (int)" in problem
    assert Step(unresolvable).argument_problem((object(),), {}) is None
    assert "too many positional arguments" in (
        Step(unresolvable).argument_problem((1, 2), {}) or "")
    assert Step(len).argument_problem(([],), {}) is None
