"""The typed forms of the testing API at run time: implementation() pairs for services=,
invocations_of() with validated requests and responses, and the calls whose parameters come
from the service or workflow (ctx.call, ctx.child, start, run) refusing a wrong arity with a
TypeError that says what they take."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from lambda_workflow import (
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow.local import LocalRuntime
from lambda_workflow.testing import (
    Implementation,
    Invocation,
    WorkflowTestRuntime,
    implementation,
    runtime_fixture,
)


class Tx(BaseModel):
    account: str
    amount: int


class Balance(BaseModel):
    balance: int


balance_service = Service("balance", Tx, Balance)
debit_service = Service("debit", Tx, None)


@workflow
async def transfer(ctx: WorkflowContext[Tx]) -> str:
    balance = await ctx.call(balance_service, ctx.request)
    if balance.balance < ctx.request.amount:
        return "refused"
    try:
        await ctx.call(debit_service, ctx.request, timeout=60)
    except ServiceError as exc:
        return f"debit failed: {exc.message}"
    return "done"


def balance_of(tx: Tx) -> Balance:
    return Balance(balance=100)


def refuse(tx: Tx) -> None:
    raise ServiceError("Frozen", f"account {tx.account} is frozen", {"until": "monday"})


def test_services_as_implementation_pairs() -> None:
    """services=[implementation(service, fn), ...] implements each service."""
    pairs = [implementation(balance_service, balance_of),
             implementation(debit_service, lambda tx: None)]
    assert all(isinstance(p, Implementation) for p in pairs)
    with WorkflowTestRuntime(transfer, services=pairs) as rt:
        assert rt.run(transfer, Tx(account="a", amount=5)) == "done"
        assert rt.run(transfer, Tx(account="b", amount=500)) == "refused"


def test_services_as_a_mapping_still_work() -> None:
    """The unchecked {service: fn} form is still accepted."""
    with WorkflowTestRuntime(transfer, services={balance_service: balance_of,
                                                 debit_service: lambda tx: None}) as rt:
        assert rt.run(transfer, Tx(account="a", amount=5)) == "done"


def test_services_refuse_an_entry_that_is_not_a_pair() -> None:
    """A bare (service, fn) tuple in the list is refused, naming the entry."""
    with pytest.raises(TypeError, match=r"implementation\(service, fn\) pairs.*'balance'"):
        WorkflowTestRuntime(services=[(balance_service, balance_of)])  # type: ignore[list-item]


def test_implementation_checks_its_arguments() -> None:
    """implementation() takes a Service and a callable, and says which is wrong."""
    with pytest.raises(TypeError, match="takes a Service first, got 'balance'"):
        implementation("balance", balance_of)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="service 'balance' must be callable, got 5"):
        implementation(balance_service, 5)  # type: ignore[arg-type]


def test_invocations_of_gives_typed_requests_and_replies() -> None:
    """invocations_of(service) lists that service's runs with the request validated into its
    request type, the response into its response type, and an error reply as ServiceError."""
    with WorkflowTestRuntime(transfer, services=[implementation(balance_service, balance_of),
                                                 implementation(debit_service, refuse)]) as rt:
        tx = Tx(account="a", amount=5)
        assert rt.run(transfer, tx, workflow_id="t-1") == "debit failed: account a is frozen"
        (seen,) = rt.invocations_of(balance_service)
        assert isinstance(seen, Invocation)
        assert (seen.workflow_id, seen.call_id, seen.ok) == ("t-1", "1", True)
        assert seen.request == tx and isinstance(seen.request, Tx)
        assert seen.response == Balance(balance=100) and seen.error is None
        (failed,) = rt.invocations_of(debit_service)
        assert failed.request == tx and not failed.ok and failed.response is None
        assert failed.error is not None
        assert (failed.error.error_type, failed.error.message, failed.error.details,
                failed.error.service) == ("Frozen", "account a is frozen",
                                          {"until": "monday"}, "debit")
        assert rt.invocations_of(Service("other", Tx, None)) == []


def test_call_with_a_wrong_arity_is_a_type_error() -> None:
    """ctx.call(service) without a request, or with an unknown keyword, fails the workflow
    with a TypeError that says what ctx.call takes."""
    @workflow
    async def no_request(ctx: WorkflowContext[Tx]) -> str:
        await ctx.call(balance_service)  # type: ignore[call-arg]
        return "x"

    @workflow
    async def bad_keyword(ctx: WorkflowContext[Tx]) -> str:
        await ctx.call(balance_service, ctx.request, deadline=3)  # type: ignore[call-arg]
        return "x"

    with WorkflowTestRuntime(services=[implementation(balance_service, balance_of)]) as rt:
        tx = Tx(account="a", amount=5)
        with pytest.raises(WorkflowFailedError) as failed:
            rt.run(no_request, tx)
        assert failed.value.error_type == "TypeError"
        assert ("ctx.call takes (service, request, /, *, timeout=None, name=None): the service, "
                "then one request; got 0 positional arguments after the service"
                ) in str(failed.value)
        with pytest.raises(WorkflowFailedError) as failed:
            rt.run(bad_keyword, tx)
        assert "got 1 positional argument and keyword argument 'deadline'" in str(failed.value)


def test_start_and_run_with_a_wrong_arity_are_type_errors() -> None:
    """start/run without a request, or with an unknown keyword, raise TypeError at once and
    start nothing."""
    with WorkflowTestRuntime(transfer) as rt:
        with pytest.raises(TypeError, match=r"run takes \(workflow, request, /, \*, "
                                            r"workflow_id=None\).*got 0 positional"):
            rt.run(transfer)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="keyword argument 'id'"):
            rt.start(transfer, Tx(account="a", amount=1), id="x")  # type: ignore[call-arg]
        assert rt.store.list_instances() == []
    runtime = LocalRuntime()
    runtime.register(transfer)
    with pytest.raises(TypeError, match="got 2 positional arguments"):
        runtime.start(transfer, Tx(account="a", amount=1), "id")  # type: ignore[call-arg]
    runtime.close()


def test_child_with_a_wrong_arity_is_a_type_error() -> None:
    """ctx.child(workflow) without a request fails the parent with a TypeError."""
    @workflow
    async def parent(ctx: WorkflowContext[Tx]) -> str:
        return await ctx.child(transfer)  # type: ignore[call-arg]

    with WorkflowTestRuntime(transfer) as rt, pytest.raises(WorkflowFailedError) as failed:
        rt.run(parent, Tx(account="a", amount=1))
    assert "ctx.child takes (workflow, request, /, *, workflow_id=None)" in str(failed.value)


typed_rt = runtime_fixture(transfer, services=[implementation(balance_service, balance_of),
                                               implementation(debit_service, lambda tx: None)])


def test_runtime_fixture_takes_implementation_pairs(typed_rt: WorkflowTestRuntime) -> None:
    """runtime_fixture(services=[implementation(...)]) gives a runtime with those services."""
    assert typed_rt.run(transfer, Tx(account="a", amount=5)) == "done"
