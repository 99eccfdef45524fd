"""A monthly sales report: sleep 30 days, build the report for the period that just ended,
publish it; three times.

One workflow instance per subscription runs for three months. Each month it sleeps 30 days
with ``ctx.sleep`` (a durable timer: the Lambda is not running, and nothing is billed, while
it waits), then builds the report for the 30 days that just ended in a **step** and publishes
it through the report publisher **service**. The period's dates come from ``ctx.now()``, the
workflow's deterministic clock: the time at which that point of the workflow was first
reached, the same on every replay, so a replay a month later asks for the same period.

What is durable: each timer (its duration and when it fires), each report the step built (a
replay does not query the warehouse again, so the published numbers never change), and each
publication.

Run it on the embedded runtime (time is virtual, so the 90 days pass at once):

    python -m lambda_workflow run examples/monthly_report.py
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from lambda_workflow import RetryPolicy, Service, WorkflowContext, step, workflow
from lambda_workflow.local import LocalRuntime

#: The length of a report period, and the sleep before each report.
PERIOD = timedelta(days=30)


class ReportSubscription(BaseModel):
    """The workflow's input: whose sales to report, to whom, and for how many months."""

    account_id: str
    recipients: list[str]
    months: int = Field(default=3, ge=1, le=12)


class ReportPeriod(BaseModel):
    account_id: str
    start: datetime
    end: datetime


class MonthlyReport(BaseModel):
    """What the report step builds."""

    account_id: str
    period_start: datetime
    period_end: datetime
    orders: int
    revenue_cents: int


class Publication(BaseModel):
    """The request to the publisher: the report and who receives it."""

    report: MonthlyReport
    recipients: list[str]


class PublishReceipt(BaseModel):
    url: str


class ReportRun(BaseModel):
    month: int
    generated_at: datetime
    report: MonthlyReport
    url: str


class ReportSeries(BaseModel):
    """The workflow's result: every report it published, in order."""

    account_id: str
    runs: list[ReportRun]


publish_report = Service("report-publisher", Publication, PublishReceipt)


@step(name="build-report", retry=RetryPolicy(max_attempts=3, initial_delay=60))
def build_report(period: ReportPeriod) -> MonthlyReport:
    """Query the sales of the period (a stand-in: numbers derived from the account and the
    dates, as a warehouse query would return them). Run once per month and recorded."""
    seed = hashlib.sha256(f"{period.account_id}|{period.start.isoformat()}".encode()).digest()
    orders = 100 + int.from_bytes(seed[:2], "big") % 900
    average_cents = 2_000 + int.from_bytes(seed[2:4], "big") % 8_000
    return MonthlyReport(account_id=period.account_id, period_start=period.start,
                         period_end=period.end, orders=orders,
                         revenue_cents=orders * average_cents)


@workflow
async def monthly_reports(ctx: WorkflowContext[ReportSubscription]) -> ReportSeries:
    """Every 30 days, report on the 30 days that just ended, ``months`` times."""
    subscription = ctx.request
    runs: list[ReportRun] = []
    for month in range(1, subscription.months + 1):
        period_start = ctx.now()
        await ctx.sleep(PERIOD)
        period_end = ctx.now()
        report = await ctx.step(build_report, ReportPeriod(
            account_id=subscription.account_id, start=period_start, end=period_end))
        receipt = await ctx.call(publish_report, Publication(
            report=report, recipients=subscription.recipients))
        ctx.logger.info("report %d for %s published at %s", month, subscription.account_id,
                        receipt.url)
        runs.append(ReportRun(month=month, generated_at=period_end, report=report,
                              url=receipt.url))
    return ReportSeries(account_id=subscription.account_id, runs=runs)


# --- Local stand-in for the publisher (on AWS: a Lambda writing to S3 and sending mail) ----
@dataclass
class LocalPublisher:
    """Keeps every published report, by URL."""

    published: dict[str, Publication] = field(default_factory=dict)

    def publish(self, publication: Publication) -> PublishReceipt:
        report = publication.report
        url = (f"s3://reports/{report.account_id}/"
               f"{report.period_end.date().isoformat()}.pdf")
        self.published[url] = publication
        return PublishReceipt(url=url)


def setup(runtime: LocalRuntime) -> LocalPublisher:
    """Called by ``lambda-workflow run``: register the workflow and implement the publisher
    with a fresh :class:`LocalPublisher`, which is returned."""
    publisher = LocalPublisher()
    runtime.register(monthly_reports)
    runtime.implement(publish_report, publisher.publish)
    return publisher


# Inputs that `lambda-workflow run` starts when no --input is given.
EXAMPLES = {
    "reports-acme": ReportSubscription(account_id="acme", recipients=["cfo@acme.example"]),
}
