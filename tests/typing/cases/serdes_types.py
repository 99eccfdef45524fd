"""A Serdes is typed by the value it records: each operation's serdes must be a serdes of
that operation's value type, and the operation's result keeps its type."""

from typing import reveal_type

from lambda_workflow import Serdes, Service, WorkflowContext, step, workflow


class Upper(Serdes[str]):
    def serialize(self, value: str) -> str:
        return value.upper()

    def deserialize(self, data: str | bytes) -> str:
        return str(data)


class Cents(Serdes[int]):
    def serialize(self, value: int) -> str:
        return str(value)

    def deserialize(self, data: str | bytes) -> int:
        return int(data)


shout = Service("shout", str, int, request_serdes=Upper(), response_serdes=Cents())
wrong_request = Service("wrong", str, int, request_serdes=Cents())  # E: misc "ReqT"
wrong_reply = Service("wrong", str, int, response_serdes=Upper())  # E: misc "RespT"


@step(serdes=Upper())
def name_of(n: int) -> str:
    return str(n)


async def body(ctx: WorkflowContext[None]) -> str:
    return "x"


@workflow
async def flow(ctx: WorkflowContext[str]) -> int:
    reveal_type(await ctx.call(shout, ctx.request))  # R: int
    reveal_type(await ctx.step(name_of, 3))  # R: str
    reveal_type(await ctx.run_in_child_context(body, serdes=Upper()))  # R: str
    await ctx.run_in_child_context(body, serdes=Cents())  # E: arg-type
    cb = ctx.create_callback("amount", int, serdes=Cents())
    reveal_type(cb)  # R: lambda_workflow.callbacks.Callback[int]
    ctx.create_callback("amount", int, serdes=Upper())  # E: misc "CbT"
    return await cb
