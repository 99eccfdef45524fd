"""WorkflowTestRuntime and its helpers are typed: run/start check the input against the
workflow, implementation() checks a function against its service, invocations_of() gives
typed requests and responses, and runtime_fixture() returns a pytest fixture."""

from typing import reveal_type

from pydantic import BaseModel

from lambda_workflow import Service, ServiceError, WorkflowContext, workflow
from lambda_workflow.aws import WorkflowClient
from lambda_workflow.testing import WorkflowTestRuntime, implementation, runtime_fixture


class BankTransaction(BaseModel):
    account_id: str
    amount: int


class Balance(BaseModel):
    balance: int


balance_service = Service("balance", BankTransaction, Balance)
transaction_service = Service("transaction", BankTransaction, None)


@workflow
async def make_transaction(ctx: WorkflowContext[BankTransaction]) -> str:
    return "success"


@workflow
async def parent(ctx: WorkflowContext[str]) -> int:
    tx = BankTransaction(account_id=ctx.request, amount=1)
    reveal_type(await ctx.child(make_transaction, tx))  # R: str
    await ctx.child(make_transaction, tx, workflow_id="child-1")
    await ctx.child(make_transaction, ctx.request)  # E: arg-type Argument 2 to "child" of "WorkflowContext" has incompatible type "str"; expected "BankTransaction"
    return 1


def get_balance(tx: BankTransaction) -> Balance:
    return Balance(balance=100)


async def get_balance_later(tx: BankTransaction) -> Balance:
    return Balance(balance=100)


def wrong_request(account_id: str) -> Balance:
    return Balance(balance=100)


def wrong_response(tx: BankTransaction) -> int:
    return 100


reveal_type(implementation(balance_service, get_balance))  # R: lambda_workflow.testing.Implementation
implementation(balance_service, get_balance_later)
implementation(balance_service, lambda tx: Balance(balance=tx.amount))
implementation(transaction_service, lambda tx: None)
implementation(balance_service, wrong_request)  # E: arg-type Argument 2 to "implementation" has incompatible type "Callable[[str], Balance]"; expected "Callable[[BankTransaction], Balance | Awaitable[Balance]]"
implementation(balance_service, wrong_response)  # E: arg-type Argument 2 to "implementation" has incompatible type "Callable[[BankTransaction], int]"; expected "Callable[[BankTransaction], Balance | Awaitable[Balance]]"
implementation(balance_service, lambda tx: tx.missing)  # E: attr-defined "BankTransaction" has no attribute "missing"

rt = WorkflowTestRuntime(make_transaction, services=[
    implementation(balance_service, get_balance),
    implementation(transaction_service, lambda tx: None),
])
WorkflowTestRuntime(services={balance_service: get_balance})  # the mapping form, unchecked
pairs = [implementation(balance_service, get_balance),
         implementation(transaction_service, lambda tx: None)]
reveal_type(pairs)  # R: list[lambda_workflow.testing.Implementation]
WorkflowTestRuntime(services=pairs)
WorkflowTestRuntime(services=[(balance_service, get_balance)])  # E: list-item

tx = BankTransaction(account_id="alice", amount=50)
reveal_type(rt.run(make_transaction, tx))  # R: str
reveal_type(rt.start(make_transaction, tx, workflow_id="tx-1"))  # R: lambda_workflow.local.WorkflowHandle[str]
rt.run(make_transaction, "alice")  # E: arg-type Argument 2 to "run" of "WorkflowTestRuntime" has incompatible type "str"; expected "BankTransaction"
rt.start(make_transaction, Balance(balance=1))  # E: arg-type Argument 2 to "start" of "WorkflowTestRuntime" has incompatible type "Balance"; expected "BankTransaction"
rt.run(make_transaction, tx, "tx-1")  # E: call-arg Too many positional arguments for "run" of "WorkflowTestRuntime"

calls = rt.invocations_of(balance_service)
reveal_type(calls[0])  # R: lambda_workflow.testing.Invocation[BankTransaction, Balance]
reveal_type(calls[0].request)  # R: BankTransaction
reveal_type(calls[0].response)  # R: Balance | None
reveal_type(calls[0].error)  # R: lambda_workflow.errors.ServiceError | None
amount: str = calls[0].request.amount  # E: assignment
rt.invocations_of("balance")  # E: arg-type

fixture_rt = runtime_fixture(make_transaction, services=[implementation(balance_service, get_balance)])
reveal_type(fixture_rt)  # R: _pytest.fixtures.FixtureFunctionDefinition

client = WorkflowClient()
reveal_type(client.start(make_transaction, tx).result())  # R: str
client.start(make_transaction, "alice")  # E: arg-type Argument 2 to "start" of "WorkflowClient" has incompatible type "str"; expected "BankTransaction"
error: ServiceError | None = calls[0].error
