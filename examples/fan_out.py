"""Fan-out: push 1,000 catalogue prices to a marketplace, 50 at a time, tolerating a few
rejections.

A nightly catalogue sync sends every product's new price to a marketplace API. The workflow
maps over the items with ``ctx.map``: at most ``max_concurrency`` requests are in flight at
once (the marketplace's rate limit), and the batch is allowed to lose up to
``tolerated_failure_percentage`` of the items (the marketplace rejects a few listings every
night; those go to a report instead of failing the sync). The result counts what succeeded
and what failed, from the :class:`~lambda_workflow.BatchResult`.

What is durable: each item runs as a child context named by its SKU (``item_name``), with
its call and reply inside it and its value recorded when it finishes. While requests are in
flight the workflow is suspended; each batch of replies wakes it, the replay returns every
finished item's recorded value without running its code again (no item is sent twice) and
the freed slots are filled with the next items. If the failures exceed the tolerance, the
items not yet started are not sent at all.

Run it on the embedded runtime (prints a line per call; add ``--quiet`` for the result only):

    python -m lambda_workflow run examples/fan_out.py
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from lambda_workflow import Completion, Service, ServiceError, WorkflowContext, workflow
from lambda_workflow.local import LocalRuntime


class CatalogSync(BaseModel):
    """The workflow's input: which items to push and how."""

    batch_id: str
    item_count: int = Field(default=1_000, ge=1, le=10_000)
    max_concurrency: int = Field(default=50, ge=1)
    tolerated_failure_percentage: float = Field(default=5.0, ge=0, le=100)


class PriceUpdate(BaseModel):
    """One item: the request to the marketplace."""

    batch_id: str
    sku: str
    item_number: int
    price_cents: int


class ListingAck(BaseModel):
    listing_id: str


class SyncSummary(BaseModel):
    """The workflow's result."""

    # Named so that they sort first in the canonical JSON the CLI prints.
    completion: str  # the BatchResult's completion reason
    failed: int
    not_started: int
    succeeded: int
    sync_id: str
    total: int
    unlisted_skus: list[str]  # the items the marketplace rejected


marketplace = Service("marketplace", PriceUpdate, ListingAck)


def price_of(item_number: int) -> int:
    """The new price of an item (a stand-in for the pricing engine's output)."""
    return 499 + (item_number * 37) % 5_000


@workflow
async def sync_catalog(ctx: WorkflowContext[CatalogSync]) -> SyncSummary:
    """Send every item to the marketplace, ``max_concurrency`` at a time."""
    sync = ctx.request
    updates = [PriceUpdate(batch_id=sync.batch_id, sku=f"SKU-{n:05d}", item_number=n,
                           price_cents=price_of(n))
               for n in range(1, sync.item_count + 1)]
    result = await ctx.map(
        updates, lambda update: ctx.call(marketplace, update),
        item_name=lambda update, _: update.sku, result_type=ListingAck,
        max_concurrency=sync.max_concurrency,
        completion=Completion(tolerated_failure_percentage=sync.tolerated_failure_percentage))
    rejected = [updates[index].sku for index, _ in result.errors()]
    return SyncSummary(
        completion=result.completion_reason.value, failed=result.failed,
        not_started=len(updates) - result.started, succeeded=result.succeeded,
        sync_id=sync.batch_id, total=len(updates), unlisted_skus=rejected)


# --- Local stand-in for the marketplace API ------------------------------------------------
#: The marketplace rejects every item whose number is a multiple of this (deterministically).
REJECT_EVERY = 97


def publish_price(update: PriceUpdate) -> ListingAck:
    """The marketplace: accepts the price, except for every 97th item (a listing it has
    blocked), which it rejects with an error reply."""
    if update.item_number % REJECT_EVERY == 0:
        raise ServiceError("ListingBlocked", f"{update.sku} is blocked on the marketplace",
                           {"sku": update.sku})
    return ListingAck(listing_id=f"L-{update.batch_id}-{update.sku}")


def setup(runtime: LocalRuntime) -> None:
    """Called by ``lambda-workflow run``: register the workflow and implement the
    marketplace."""
    runtime.register(sync_catalog)
    runtime.implement(marketplace, publish_price)


# Inputs that `lambda-workflow run` starts when no --input is given: 1,000 items with 10
# rejections (1%, within the 5% tolerance).
EXAMPLES = {
    "catalog-sync-1000": CatalogSync(batch_id="nightly-1"),
}
