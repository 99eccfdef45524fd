"""Wrong requests to ctx.call and wrong uses of its reply are type errors."""

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
transaction_service = Service("transaction", BankTransaction, None)


@workflow
async def make_transaction(ctx: WorkflowContext[BankTransaction]) -> str:
    tx = ctx.request
    # mypy solves the service's request type and the request's type together; when they
    # disagree it reports that it cannot solve the type variable (code misc), not arg-type.
    await ctx.call(balance_service, "alice")  # E: misc Cannot infer value of type parameter "CallReqT"
    await ctx.call(balance_service, Balance(balance=1))  # E: misc Cannot infer value of type parameter "CallReqT"
    await ctx.call("balance", tx)  # E: arg-type
    await ctx.call(balance_service)  # E: call-arg
    # With a declared target, mypy infers the reply type from it and flags the service.
    direct: str = await ctx.call(balance_service, tx)  # E: arg-type expected "Service[BankTransaction, str]"
    balance = await ctx.call(balance_service, tx)
    as_str: str = balance  # E: assignment
    as_fraud: FraudCheck = balance  # E: assignment
    balance.is_likely_fraud  # E: attr-defined
    # A service typed to return None has no reply worth keeping.
    nothing = await ctx.call(transaction_service, tx)  # E: func-returns-value
    return balance  # E: return-value
