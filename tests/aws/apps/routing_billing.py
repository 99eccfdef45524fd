"""The billing half of a two-module app for the template generator's tests
(tests/aws/test_template_generator.py): its own workflow handler, so its own workflow
function and queue. ``bill`` runs as a child of ``routing_orders.order``; it sleeps (a timer
fired into this module's queue) and calls ``charge``, which this module implements."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.aws import service_handler, workflow_handler


class Invoice(BaseModel):
    order_id: str
    cents: int


charge = Service("charge", Invoice, str)


@workflow(services=[charge])
async def bill(ctx: WorkflowContext[Invoice]) -> str:
    await ctx.sleep(timedelta(seconds=1))
    return await ctx.call(charge, ctx.request)


async def do_charge(invoice: Invoice) -> str:
    return f"charged {invoice.cents} for {invoice.order_id}"


handler = workflow_handler(bill)
handle_charge = service_handler(charge, do_charge)
