"""ctx.request, ctx.workflow_id and ctx.call follow the types of the workflow and services."""

import asyncio
from typing import reveal_type

from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow


class BankTransaction(BaseModel):
    account_id: str
    amount: int


class Balance(BaseModel):
    balance: int


class FraudCheck(BaseModel):
    is_likely_fraud: bool


balance_service = Service("balance", BankTransaction, Balance)
fraud_service = Service("fraud", BankTransaction, FraudCheck)
transaction_service = Service("transaction", BankTransaction, None)


@workflow
async def make_transaction(ctx: WorkflowContext[BankTransaction]) -> str:
    tx = ctx.request
    reveal_type(ctx.request)  # R: BankTransaction
    reveal_type(ctx.workflow_id)  # R: str
    reveal_type(ctx.is_replaying)  # R: bool
    reveal_type(ctx.call(balance_service, tx))  # R: typing.Awaitable[Balance]
    reveal_type(await ctx.call(balance_service, tx))  # R: Balance
    balance, fraud = await asyncio.gather(
        ctx.call(balance_service, tx),
        ctx.call(fraud_service, tx),
    )
    reveal_type(balance)  # R: Balance
    reveal_type(fraud)  # R: FraudCheck
    both = asyncio.gather(ctx.call(balance_service, tx), ctx.call(fraud_service, tx))
    reveal_type(await both)  # R: tuple[Balance, FraudCheck]
    reveal_type(await ctx.call(transaction_service, tx))  # R: None
    reveal_type(await ctx.call(balance_service, tx, name="check-balance"))  # R: Balance
    reveal_type(await ctx.call(balance_service, tx, timeout=30, name="check"))  # R: Balance
    reveal_type(await ctx.sleep(60, name="cool-off"))  # R: None
    if balance.balance < tx.amount or fraud.is_likely_fraud:
        return "failure"
    await ctx.call(transaction_service, tx)
    return "success"
