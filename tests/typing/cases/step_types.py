"""ctx.step is typed by its function: the result type is the function's (awaited for an
async function), and the arguments are checked against its parameters (ParamSpec)."""

from typing import reveal_type

from pydantic import BaseModel

from lambda_workflow import RetryPolicy, WorkflowContext, step, workflow


class Receipt(BaseModel):
    amount: int


def charge(amount: int, *, currency: str) -> Receipt:
    return Receipt(amount=amount)


async def fetch_rate(currency: str) -> float:
    return 1.0


@step(retry=RetryPolicy(max_attempts=5))
def reserve(sku: str) -> bool:
    return True


@workflow
async def checkout(ctx: WorkflowContext[int]) -> str:
    receipt = await ctx.step(charge, ctx.request, currency="EUR")
    reveal_type(receipt)  # R: Receipt
    reveal_type(await ctx.step(fetch_rate, "EUR"))  # R: float
    reveal_type(await ctx.step(reserve, "sku-1"))  # R: bool
    reveal_type(ctx.now())  # R: datetime.datetime
    reveal_type(ctx.uuid4())  # R: uuid.UUID
    wrong: str = await ctx.step(charge, 1, currency="EUR")  # E: arg-type
    # mypy reports a missing or wrong argument as no matching overload of ctx.step
    await ctx.step(charge, 10)  # E: call-overload
    await ctx.step(fetch_rate, 3)  # E: call-overload
    await ctx.sleep("a day")  # E: arg-type
    return wrong
