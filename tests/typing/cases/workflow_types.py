"""@workflow and @workflow(name=...) give Workflow[RequestType, ResultType]."""

from typing import reveal_type

from pydantic import BaseModel

from lambda_workflow import Workflow, WorkflowContext, workflow


class BankTransaction(BaseModel):
    account_id: str
    amount: int


@workflow
async def make_transaction(ctx: WorkflowContext[BankTransaction]) -> str:
    return "success"


@workflow(name="make-transaction-v2")
async def make_transaction_v2(ctx: WorkflowContext[BankTransaction]) -> str:
    return "success"


@workflow
async def count(ctx: WorkflowContext[list[int]]) -> int:
    return len(ctx.request)


@workflow
async def fire_and_forget(ctx: WorkflowContext[str]) -> None:
    return None


reveal_type(make_transaction)  # R: lambda_workflow.workflow.Workflow[BankTransaction, str]
reveal_type(make_transaction_v2)  # R: lambda_workflow.workflow.Workflow[BankTransaction, str]
reveal_type(count)  # R: lambda_workflow.workflow.Workflow[list[int], int]
reveal_type(fire_and_forget)  # R: lambda_workflow.workflow.Workflow[str, None]
reveal_type(make_transaction.name)  # R: str

as_base: Workflow[BankTransaction, int] = make_transaction  # E: assignment


@workflow  # E: arg-type
def not_async(ctx: WorkflowContext[BankTransaction]) -> str:
    return "success"


@workflow
async def wrong_return(ctx: WorkflowContext[BankTransaction]) -> str:
    return 3  # E: return-value


@workflow  # E: arg-type
async def no_context(tx: BankTransaction) -> str:
    return "success"
