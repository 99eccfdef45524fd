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
    # The service alone fixes the request type: a wrong request is an argument of the wrong
    # type, named with the expected and the given type.
    await ctx.call(balance_service, "alice")  # E: arg-type Argument 2 to "call" of "WorkflowContext" has incompatible type "str"; expected "BankTransaction"
    await ctx.call(balance_service, Balance(balance=1))  # E: arg-type Argument 2 to "call" of "WorkflowContext" has incompatible type "Balance"; expected "BankTransaction"
    await ctx.call(balance_service, tx, timeout="soon")  # E: arg-type Argument "timeout" to "call" of "WorkflowContext" has incompatible type "str"; expected "float | timedelta | None"
    await ctx.call(balance_service, tx, name=3)  # E: arg-type Argument "name" to "call" of "WorkflowContext" has incompatible type "int"; expected "str | None"
    await ctx.sleep(60, name=None)  # E: arg-type Argument "name" to "sleep" of "WorkflowContext" has incompatible type "None"; expected "str"
    await ctx.call(balance_service, tx, deadline=5)  # E: call-arg Unexpected keyword argument "deadline" for "call" of "WorkflowContext"
    await ctx.call(balance_service, request=tx)  # E: call-arg Unexpected keyword argument "request" for "call" of "WorkflowContext"
    await ctx.call("balance", tx)  # E: arg-type Argument 1 to "call" of "WorkflowContext" has incompatible type "str"; expected "ServiceCall[[BankTransaction], Never]"
    await ctx.call(balance_service)  # E: call-arg Too few arguments for "call" of "WorkflowContext"
    # With a declared target, mypy infers the reply type from it and flags the service.
    direct: str = await ctx.call(balance_service, tx)  # E: arg-type expected "ServiceCall[[BankTransaction], str]"
    balance = await ctx.call(balance_service, tx)
    as_str: str = balance  # E: assignment
    as_fraud: FraudCheck = balance  # E: assignment
    balance.is_likely_fraud  # E: attr-defined
    # A service typed to return None has no reply worth keeping.
    nothing = await ctx.call(transaction_service, tx)  # E: func-returns-value
    return balance  # E: return-value
