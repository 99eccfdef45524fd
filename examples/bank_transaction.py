"""The bank transaction workflow from DESIGN.md, with local service implementations.

Run it on the embedded runtime:

    python -m lambda_workflow run examples/bank_transaction.py
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import BaseModel

from lambda_workflow import Service, ServiceError, WorkflowContext, workflow

if TYPE_CHECKING:  # the Lambda zip's handler must not load the embedded runtime (sqlite3)
    from lambda_workflow.local import LocalRuntime


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
    balance, fraud = await asyncio.gather(  # both requests leave in one activation
        ctx.call(balance_service, tx),
        ctx.call(fraud_service, tx),
    )
    if balance.balance < tx.amount or fraud.is_likely_fraud:
        return "failure"
    await ctx.call(transaction_service, tx)
    return "success"


# --- Local stand-ins for the three services (on AWS these are Lambda functions) -----------
BALANCES = {"alice": 100, "bob": 20, "mallory": 1_000}
LEDGER: list[BankTransaction] = []


async def get_balance(tx: BankTransaction) -> Balance:
    if tx.account_id not in BALANCES:
        raise ServiceError("UnknownAccount", f"no account {tx.account_id!r}")
    return Balance(balance=BALANCES[tx.account_id])


async def check_fraud(tx: BankTransaction) -> FraudCheck:
    return FraudCheck(is_likely_fraud=tx.account_id == "mallory")


async def apply_transaction(tx: BankTransaction) -> None:
    BALANCES[tx.account_id] -= tx.amount
    LEDGER.append(tx)


def setup(runtime: LocalRuntime) -> None:
    """Called by ``lambda-workflow run``: register the workflow and implement the services."""
    runtime.register(make_transaction)
    runtime.implement(balance_service, get_balance)
    runtime.implement(fraud_service, check_fraud)
    runtime.implement(transaction_service, apply_transaction)


# Inputs that `lambda-workflow run` starts when no --input is given: one per outcome.
EXAMPLES = {
    "tx-ok": BankTransaction(account_id="alice", amount=50),
    "tx-low-balance": BankTransaction(account_id="bob", amount=50),
    "tx-fraud": BankTransaction(account_id="mallory", amount=50),
}
