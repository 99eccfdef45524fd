"""A six-service order workflow with its Lambda handlers, for the template generator's tests
(tests/aws/test_template_generator.py): one module, as a team would write it.

Four services run in this deployment (``service_handler``): ``inventory`` and ``shipping`` on
their own queues, ``payment`` invoked asynchronously (``--invoke-async payment``) and
``audit-log`` on its queue. Two are run by other teams: ``notify`` (their SQS queue) and
``loyalty`` (their Lambda function); the template takes their ARNs as parameters. The
workflow also sleeps (a durable timer), so the timer function takes part; there is no timer
handler here, so the template uses the SDK's built-in one.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.aws import service_handler, workflow_handler


class Order(BaseModel):
    order_id: str
    sku: str
    quantity: int
    amount_cents: int


class Reserved(BaseModel):
    reservation_id: str


class Charged(BaseModel):
    charge_id: str


class Shipped(BaseModel):
    tracking: str


class Points(BaseModel):
    points: int


inventory = Service("inventory", Order, Reserved)
payment = Service("payment", Order, Charged)
shipping = Service("shipping", Order, Shipped)
audit_log = Service("audit-log", str, None)
notify = Service("notify", str, None)
loyalty = Service("loyalty", Order, Points)


@workflow
async def place_order(ctx: WorkflowContext[Order]) -> str:
    order = ctx.request
    reserved, charged = await asyncio.gather(ctx.call(inventory, order), ctx.call(payment, order))
    await ctx.sleep(timedelta(seconds=1))
    shipped = await ctx.call(shipping, order)
    points = await ctx.call(loyalty, order)
    summary = (f"{order.order_id}: {reserved.reservation_id} {charged.charge_id} "
               f"{shipped.tracking} +{points.points}")
    await ctx.call(audit_log, summary)
    await ctx.call(notify, summary)
    return summary


async def reserve(order: Order) -> Reserved:
    return Reserved(reservation_id=f"r-{order.sku}-{order.quantity}")


async def charge(order: Order) -> Charged:
    return Charged(charge_id=f"c-{order.amount_cents}")


async def ship(order: Order) -> Shipped:
    return Shipped(tracking=f"t-{order.order_id}")


async def record(line: str) -> None:
    return None


handler = workflow_handler(place_order)
handle_inventory = service_handler(inventory, reserve)
handle_payment = service_handler(payment, charge)
handle_shipping = service_handler(shipping, ship)
handle_audit = service_handler(audit_log, record)
