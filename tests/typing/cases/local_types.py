"""LocalRuntime.start is typed by the workflow: its input is checked and its handle's result
is the workflow's result type."""

from typing import reveal_type

from pydantic import BaseModel

from lambda_workflow import InstanceStatus, Service, WorkflowContext, workflow
from lambda_workflow.local import LocalRuntime


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
async def count(ctx: WorkflowContext[list[int]]) -> int:
    return len(ctx.request)


async def get_balance(tx: BankTransaction) -> Balance:
    return Balance(balance=100)


def get_balance_now(tx: BankTransaction) -> Balance:
    return Balance(balance=100)


async def apply_transaction(tx: BankTransaction) -> None:
    return None


async def wrong_request(account_id: str) -> Balance:
    return Balance(balance=100)


async def wrong_response(tx: BankTransaction) -> int:
    return 100


runtime = LocalRuntime()
runtime.register(make_transaction, count)
runtime.implement(balance_service, get_balance)
runtime.implement(balance_service, get_balance_now)
runtime.implement(transaction_service, apply_transaction)
runtime.implement(balance_service, wrong_request)  # E: arg-type
runtime.implement(balance_service, wrong_response)  # E: arg-type

tx = BankTransaction(account_id="alice", amount=50)
handle = runtime.start(make_transaction, tx, workflow_id="tx-1")
reveal_type(handle)  # R: lambda_workflow.local.WorkflowHandle[str]
reveal_type(handle.result())  # R: str
reveal_type(handle.workflow_id)  # R: str
reveal_type(handle.status())  # R: lambda_workflow.models.InstanceStatus
reveal_type(runtime.start(count, [1, 2, 3]).result())  # R: int
reveal_type(runtime.result("tx-1"))  # R: object
done: bool = handle.status() is InstanceStatus.COMPLETED

runtime.start(make_transaction, "alice")  # E: arg-type Argument 2 to "start" of "LocalRuntime" has incompatible type "str"; expected "BankTransaction"
runtime.start(make_transaction, Balance(balance=1))  # E: arg-type Argument 2 to "start" of "LocalRuntime" has incompatible type "Balance"; expected "BankTransaction"
runtime.start(count, (1, 2))  # E: arg-type Argument 2 to "start" of "LocalRuntime" has incompatible type "tuple[int, int]"; expected "list[int]"
runtime.start(make_transaction, tx, "tx-1")  # E: call-arg Too many positional arguments
runtime.start(make_transaction, tx, workflow_id=1)  # E: arg-type Argument "workflow_id" to "start" of "LocalRuntime" has incompatible type "int"; expected "str | None"
runtime.start(make_transaction)  # E: call-arg Too few arguments for "start" of "LocalRuntime"
wrong_result: int = handle.result()  # E: assignment
