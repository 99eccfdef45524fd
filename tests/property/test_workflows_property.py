"""Random workflows reach the same outcome under adversity as on an undisturbed run.

A workflow here is data (a :class:`Plan`): a list of steps, each a single call or a gather of
2-4 calls to services whose replies are pure functions of the request, some of which fail
with a ``ServiceError`` that the plan either catches (and goes on) or lets fail the workflow.
One ``@workflow`` interprets any plan. Its reference outcome comes from an undisturbed
``LocalRuntime``; the same plan then runs with replies delivered in a random order, with
duplicated replies, and with crashes injected at the store and transport boundaries, and must
end with the same status, result or error and history.

Two kinds of gather appear: ``gather`` (plain ``asyncio.gather``, which raises the first error
to arrive) and ``collect`` (``return_exceptions=True``, errors handled in call order). In the
reference comparisons a plain gather gets at most one failing call: with two, which error is
"first" depends on arrival order in any asyncio program, so a reordered run may legitimately
end differently. Racing failures get their own property: whatever order the replies arrive
in, replay follows it (no NonDeterminismError) and the recorded history replays to the
recorded end.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lambda_workflow import InstanceStatus, _core
from lambda_workflow._runtime.replay import Replayer
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import OperationRecord

from .harness import (
    MAX_CRASHES,
    SERVICES,
    CallSpec,
    FaultInjector,
    FaultyStore,
    FaultyTransport,
    Outcome,
    Plan,
    Run,
    StepSpec,
    interpret,
    run_plans,
    start_retrying,
)


def _call(*, fail_one_in: int) -> st.SearchStrategy[CallSpec]:
    return st.builds(CallSpec, service=st.sampled_from(sorted(SERVICES)),
                     base=st.integers(0, 999),
                     fail=st.integers(1, fail_one_in).map(lambda i: i == 1))


def _at_most_one_failure(calls: list[CallSpec]) -> list[CallSpec]:
    first = next((i for i, c in enumerate(calls) if c.fail), None)
    return [c.model_copy(update={"fail": i == first}) for i, c in enumerate(calls)]


# Three failures in four are caught, so that most plans run past their first failure.
_catch = st.integers(1, 4).map(lambda i: i != 1)
_single_step = st.builds(StepSpec, kind=st.just("call"),
                         calls=st.lists(_call(fail_one_in=4), min_size=1, max_size=1),
                         catch=_catch)
_gather_step = st.builds(StepSpec, kind=st.just("gather"),
                         calls=st.lists(_call(fail_one_in=5), min_size=2, max_size=4)
                         .map(_at_most_one_failure),
                         catch=_catch)
_collect_step = st.builds(StepSpec, kind=st.just("collect"),
                          calls=st.lists(_call(fail_one_in=6), min_size=2, max_size=4),
                          catch=_catch)
# Calls inside a child context, one after another; calls as the items of a nested map.
_context_step = st.builds(StepSpec, kind=st.just("context"),
                          calls=st.lists(_call(fail_one_in=6), min_size=1, max_size=3),
                          catch=_catch)
_map_step = st.builds(StepSpec, kind=st.just("map"),
                      calls=st.lists(_call(fail_one_in=6), min_size=1, max_size=4),
                      catch=_catch)
plans = st.builds(Plan, steps=st.lists(st.one_of(_single_step, _gather_step, _collect_step,
                                                 _context_step, _map_step),
                                       min_size=1, max_size=6))
some_plans = st.lists(plans, min_size=1, max_size=3)
store_kinds = st.sampled_from(["memory", "sqlite"])
# The driver draws many numbers; a seeded Random keeps hypothesis's examples small.
rngs = st.integers(0, 2**32 - 1).map(random.Random)


def _crash_points(boundaries: int) -> st.SearchStrategy[dict[int, bool]]:
    """Up to MAX_CRASHES boundary indices (within a run's boundary calls), each crashing
    before (False) or after (True) its call."""
    return st.dictionaries(st.integers(0, max(boundaries - 1, 0)), st.booleans(),
                           max_size=MAX_CRASHES)


def _reference(plans: Sequence[Plan], store_kind: str) -> Run:
    ref = run_plans(plans, store_kind=store_kind)
    assert ref.dead_letters == []
    calls = Counter((i.workflow_id, i.call_id) for i in ref.invocations)
    assert all(n == 1 for n in calls.values()), calls
    for final in ref.finals.values():
        event(f"reference: {final.status.value}")
    return ref


def _assert_same_as(run: Run, ref: Run) -> None:
    """Same outcome and history per instance, no dead letters, and every service ran once per
    call (more only across a crash while its reply was sent), with the same request."""
    event(f"crashes injected: {len(run.faults.fired)}")
    assert run.finals == ref.finals, run.faults.fired
    assert run.dead_letters == []
    expected = {(i.workflow_id, i.call_id): (i.service, i.request) for i in ref.invocations}
    for inv in run.invocations:
        assert (inv.service, inv.request) == expected[(inv.workflow_id, inv.call_id)], inv
    counts = Counter((i.workflow_id, i.call_id) for i in run.invocations)
    assert set(counts) == set(expected)
    for key, n in counts.items():
        allowed = 1 + run.faults.serve_windows[key]
        assert n <= allowed, (f"call {key} ran {n} times with {allowed - 1} crash windows; "
                              f"crashes: {run.faults.fired}")


PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

_racing_gather_step = st.builds(StepSpec, kind=st.just("gather"),
                                calls=st.lists(_call(fail_one_in=2), min_size=2, max_size=4),
                                catch=st.just(True))
racing_plans = st.builds(Plan, steps=st.lists(st.one_of(_racing_gather_step, _single_step),
                                              min_size=1, max_size=5))


@PROPERTY
@given(st.lists(racing_plans, min_size=1, max_size=3), rngs, store_kinds)
def test_racing_failures_replay_in_arrival_order(
        plans: list[Plan], rng: random.Random, store_kind: str) -> None:
    """Plain gathers with several failing calls, replies in random order: no instance fails
    with NonDeterminismError, and each final history replays to its recorded end."""
    run = run_plans(plans, store_kind=store_kind, rng=rng)
    assert run.dead_letters == []
    for workflow_id, final in run.finals.items():
        assert b"NonDeterminismError" not in (final.error or b""), (workflow_id, final.error)
        assert final.status in {InstanceStatus.COMPLETED, InstanceStatus.FAILED}
        records = [OperationRecord(workflow_id, op_id, seq, "call", name, request,
                                   _core.digest(request), state=state, result=result,
                                   resolved_in=resolved_in)
                   for seq, (op_id, name, request, state, result, resolved_in)
                   in enumerate(final.operations_with_stage)]
        plan = plans[int(workflow_id.removeprefix("wf-"))]
        plan_payload = _core.encode_value(interpret.request_adapter, plan)
        replay = Replayer(interpret, workflow_id, plan_payload, records, {},
                          activation=10_000, now=0.0).run()
        if final.status is InstanceStatus.COMPLETED:
            assert (replay.outcome, replay.result) == ("completed", final.result)
        else:
            assert (replay.outcome, replay.error) == ("failed", final.error)
        assert replay.new_operations == []


@PROPERTY
@given(some_plans, rngs, store_kinds)
def test_replies_in_random_order_give_the_reference_outcome(
        plans: list[Plan], rng: random.Random, store_kind: str) -> None:
    """Delivering replies and running activations and services in a random interleaving
    ends every instance as an undisturbed run does."""
    ref = _reference(plans, store_kind)
    _assert_same_as(run_plans(plans, store_kind=store_kind, rng=rng), ref)


@PROPERTY
@given(some_plans, rngs, store_kinds)
def test_duplicated_replies_change_nothing(plans: list[Plan], rng: random.Random,
                                          store_kind: str) -> None:
    """Extra copies of replies (own deduplication ids, any order) are dropped by the
    engine's conditional recording, so the outcome is the reference one."""
    ref = _reference(plans, store_kind)
    run = run_plans(plans, store_kind=store_kind, rng=rng, copies=0.5)
    event(f"copies sent: {min(run.copies_sent, 5)}{'+' if run.copies_sent > 5 else ''}")
    _assert_same_as(run, ref)


@PROPERTY
@given(some_plans, store_kinds, st.data())
def test_crashes_at_store_and_transport_boundaries_give_the_reference_outcome(
        plans: list[Plan], store_kind: str, data: st.DataObject) -> None:
    """A crash before or after any store or transport call is redelivered and repeated
    until the instance ends as an undisturbed run does."""
    ref = _reference(plans, store_kind)
    crash_at = data.draw(_crash_points(ref.faults.calls), label="crash_at")
    _assert_same_as(run_plans(plans, store_kind=store_kind, crash_at=crash_at), ref)


@PROPERTY
@given(some_plans, rngs, store_kinds, st.data())
def test_reordering_duplicates_and_crashes_together_give_the_reference_outcome(
        plans: list[Plan], rng: random.Random, store_kind: str, data: st.DataObject) -> None:
    """Random delivery order, duplicated replies and injected crashes at once still end
    every instance as an undisturbed run does."""
    ref = _reference(plans, store_kind)
    crash_at = data.draw(_crash_points(ref.faults.calls), label="crash_at")
    run = run_plans(plans, store_kind=store_kind, rng=rng, copies=0.3, crash_at=crash_at)
    _assert_same_as(run, ref)


def _plan(*steps: tuple[str, list[tuple[str, bool]], bool]) -> Plan:
    return Plan(steps=[StepSpec(kind=kind, catch=catch,
                                calls=[CallSpec(service=s, base=i, fail=f)
                                       for i, (s, f) in enumerate(calls)])
                       for kind, calls, catch in steps])


def test_the_interpreter_catches_or_propagates_as_planned() -> None:
    """A caught failure lets the plan go on to complete; an uncaught one fails the instance
    with the service's error (so the properties compare both kinds of outcome)."""
    caught = _plan(("collect", [("alpha", False), ("beta", True)], True),
                   ("call", [("gamma", False)], False))
    uncaught = _plan(("call", [("alpha", False)], False),
                     ("gather", [("beta", False), ("gamma", True)], False),
                     ("call", [("alpha", False)], False))
    run = run_plans([caught, uncaught], store_kind="memory")
    done, failed = run.finals["wf-0"], run.finals["wf-1"]
    assert done.status is InstanceStatus.COMPLETED
    outcome = Outcome.model_validate_json(done.result or b"")
    assert outcome.trace[0] == "0: caught BetaRefused from beta#2"
    assert len(done.operations) == 3
    assert failed.status is InstanceStatus.FAILED
    error = orjson.loads(failed.error or b"{}")
    assert error["type"] == "ServiceError"
    assert error["details"]["error_type"] == "GammaRefused"
    assert [op[1] for op in failed.operations] == ["alpha", "beta", "gamma"]


def test_a_request_whose_send_crashed_leaves_even_if_the_workflow_then_fails() -> None:
    """A call recorded but not sent (crash before its send) is sent on redelivery even when
    that activation fails the workflow, as on an undisturbed run."""
    plan = _plan(("gather", [("alpha", True), ("beta", False)], False))
    ref = run_plans([plan], store_kind="memory")
    second_send = [i for i, what in enumerate(ref.faults.seen)
                   if what == "send_to_service"][1]
    run = run_plans([plan], store_kind="memory", crash_at={second_send: False})
    assert run.faults.fired == [f"before send_to_service (boundary {second_send})"]
    assert run.finals == ref.finals
    assert [(i.service, i.call_id) for i in run.invocations] == [("alpha", "1"), ("beta", "2")]


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bank_transaction.py"


@pytest.fixture(scope="module")
def bank() -> Iterator[tuple[ModuleType, dict[str, int]]]:
    name = "_bank_transaction_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through it
    try:
        spec.loader.exec_module(module)
        yield module, dict(module.BALANCES)
    finally:
        del sys.modules[name]


def _run_bank(bank: tuple[ModuleType, dict[str, int]],
              crash_at: Mapping[int, bool]) -> tuple[dict[str, object], FaultInjector, int]:
    module, balances = bank
    module.BALANCES.clear()
    module.BALANCES.update(balances)
    module.LEDGER.clear()
    with LocalRuntime(max_receives=20) as runtime:
        module.setup(runtime)
        faults = FaultInjector(crash_at)
        runtime.engine.transport = FaultyTransport(runtime.engine.transport, faults)
        runtime.engine.store = FaultyStore(runtime.engine.store, faults)
        for workflow_id, tx in module.EXAMPLES.items():
            start_retrying(runtime, module.make_transaction, tx, workflow_id)
        runtime.run_until_idle()
        assert runtime.dead_letters() == []
        results = {wid: runtime.result(wid) for wid in module.EXAMPLES}
        counts = Counter((i.workflow_id, i.call_id) for i in runtime.invocations)
        for key, n in counts.items():
            assert n <= 1 + faults.serve_windows[key], (key, n, faults.fired)
        applied = sum(i.service == "transaction" for i in runtime.invocations)
        assert len(module.LEDGER) == applied
    return results, faults, applied


def test_a_crash_at_each_boundary_of_the_bank_example_keeps_its_results(
        bank: tuple[ModuleType, dict[str, int]]) -> None:
    """Crashing before or after each store and transport call of the bank example, one at a
    time, gives the results of an undisturbed run."""
    expected, clean, applied = _run_bank(bank, {})
    assert expected == {"tx-ok": "success", "tx-low-balance": "failure",
                        "tx-fraud": "failure"}
    assert clean.fired == [] and applied == 1
    assert clean.calls > 10
    for k in range(clean.calls):
        for after in (False, True):
            results, faults, applied = _run_bank(bank, {k: after})
            assert len(faults.fired) == 1, (k, after)
            assert results == expected, faults.fired
            assert applied >= 1, faults.fired


def test_context_and_map_steps_catch_or_propagate_as_planned() -> None:
    """The child-context and nested-map steps: a caught failure inside a context names the
    call inside it (its id within the context); an item's failure fails the map step with the
    service's error; the operations are the contexts' and their calls'."""
    caught = _plan(("context", [("alpha", False), ("beta", True)], True),
                   ("map", [("gamma", False), ("alpha", False)], False))
    uncaught = _plan(("map", [("beta", False), ("gamma", True)], False))
    run = run_plans([caught, uncaught], store_kind="memory")
    done, failed = run.finals["wf-0"], run.finals["wf-1"]
    assert done.status is InstanceStatus.COMPLETED
    outcome = Outcome.model_validate_json(done.result or b"")
    assert outcome.trace[0] == "0: caught BetaRefused from beta#1.2"
    assert len(done.operations) == 7  # 3 contexts and 4 calls
    assert failed.status is InstanceStatus.FAILED
    assert orjson.loads(failed.error or b"{}")["details"]["error_type"] == "GammaRefused"


def test_a_crash_at_each_boundary_of_a_context_plan_keeps_its_outcome() -> None:
    """Every store and transport boundary of a plan with a context and a map, crashed before
    and after in turn, ends as the undisturbed run does."""
    plan = _plan(("context", [("alpha", False), ("gamma", False)], False),
                 ("map", [("beta", False), ("alpha", True)], True),
                 ("call", [("gamma", False)], False))
    ref = run_plans([plan], store_kind="sqlite")
    assert ref.dead_letters == []
    for boundary in range(ref.faults.calls):
        for after in (False, True):
            run = run_plans([plan], store_kind="sqlite", crash_at={boundary: after})
            assert run.finals == ref.finals, (boundary, after, run.faults.fired)
            assert run.dead_letters == []
