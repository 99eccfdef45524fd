"""Child contexts and nested batches keep the types of their bodies, names and items."""

from typing import Any, reveal_type

from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow


class Total(BaseModel):
    total: int


square = Service("square", int, int)


async def add(ctx: WorkflowContext[Any], a: int, b: int) -> Total:
    return Total(total=await ctx.call(square, a) + b)


@workflow
async def typed(ctx: WorkflowContext[list[int]]) -> int:
    total = await ctx.run_in_child_context(add, 1, 2, name="add")
    reveal_type(total)  # R: Total
    both = await ctx.parallel([lambda: ctx.call(square, 1), lambda: ctx.call(square, 2)],
                              names=["one", "two"], flat=False)
    reveal_type(both.values())  # R: list[int]

    async def item(n: int) -> str:
        return str(await ctx.call(square, n))

    mapped = await ctx.map(ctx.request, item, item_name=lambda n, i: f"{i}:{n}")
    reveal_type(mapped.values())  # R: list[str]

    async def indexed(n: int, i: int) -> float:
        return n + i / 10

    with_index = await ctx.map(ctx.request, indexed)
    reveal_type(with_index.values())  # R: list[float]
    def number(n: int, i: int) -> int:
        return n

    await ctx.map(ctx.request, item, item_name=number)  # E: arg-type
    return total.total
