"""Expense approval: a human decision that may take days, with escalation on silence.

An employee files an expense. The workflow

1. validates it in a **step** (policy checks and the org-chart lookup of the approvers);
2. creates a **callback** that only the employee's manager can complete, and sends the
   manager an approval mail carrying the callback's token through the mail **service**;
3. waits for the manager, who approves (``complete_callback(token, Decision)``) or rejects
   (``fail_callback(token, "Rejected", reason)``);
4. if the manager says nothing for 3 days, the callback's timeout fires and the request is
   escalated to the manager's manager, who gets 2 days; if nobody answers, the expense is
   auto-rejected.

What is durable: the validation result, the callback and its timeout timer, the mail call
and its reply, and the decision are recorded in the instance's history. While it waits for a
human the workflow is suspended: on AWS no Lambda runs, so the 3 days cost nothing. Every
replay hands out the same token, validates nothing again and sends no second mail.

Why a service call sends the mail (and not a step inside the activation): the token may only
be used once its callback is recorded, and a call leaves through the outbox after the
activation that recorded the callback has committed; an approver who answers at once (as the
local stand-ins below do) therefore always finds the callback.

Run it on the embedded runtime (time is virtual, so the 3-day timeouts pass at once):

    python -m lambda_workflow run examples/approval.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from lambda_workflow import (
    CallbackFailedError,
    CallbackTimeoutError,
    InvalidCallbackTokenError,
    RetryPolicy,
    Service,
    StepError,
    WorkflowContext,
    step,
    workflow,
)
from lambda_workflow.local import LocalRuntime

#: How long the employee's manager has to decide before the request is escalated.
MANAGER_TIMEOUT = timedelta(days=3)
#: How long the second approver has before the expense is rejected automatically.
ESCALATION_TIMEOUT = timedelta(days=2)

Category = Literal["travel", "meals", "equipment", "training", "entertainment"]


class ExpenseReport(BaseModel):
    """What the employee files (the workflow's input)."""

    expense_id: str
    employee: str
    amount_cents: int
    currency: str = "EUR"
    category: Category
    description: str
    receipt_url: str | None = None


class ValidatedExpense(BaseModel):
    """An expense that passed the policy checks, with the people who may approve it."""

    expense: ExpenseReport
    manager: str
    skip_level: str


class ApprovalMail(BaseModel):
    """The mail an approver receives; ``token`` is what the approve and reject links carry."""

    to: str
    expense: ExpenseReport
    token: str
    respond_within_hours: int
    escalated: bool


class MailReceipt(BaseModel):
    message_id: str


class Decision(BaseModel):
    """What an approver completes the callback with when approving."""

    approver: str
    comment: str = ""


class ExpenseOutcome(BaseModel):
    """The workflow's result."""

    # Named so that it sorts first in the canonical JSON the CLI prints.
    approval: Literal["approved", "rejected", "auto_rejected", "invalid"]
    expense_id: str
    decided_by: str | None = None
    reason: str = ""
    escalated: bool = False
    approvers_asked: list[str] = Field(default_factory=list)
    decided_at: datetime


mail_service = Service("mail", ApprovalMail, MailReceipt)

# The org chart: employee -> (manager, manager's manager). On AWS the validation step would
# read it from a directory; a step records what it read, so a replay sees the same approvers
# even if the org chart changed in the meantime.
ORG_CHART: dict[str, tuple[str, str]] = {
    "alice": ("maria", "diane"),
    "bob": ("omar", "diane"),
    "erin": ("omar", "victor"),
}
RECEIPT_REQUIRED_ABOVE_CENTS = 25_00
POLICY_LIMIT_CENTS = 10_000_00


class InvalidExpense(ValueError):
    """The expense breaks the expense policy; retrying would not help."""


@step(name="validate-expense",
      retry=RetryPolicy(max_attempts=3, initial_delay=10, non_retryable=[InvalidExpense]))
def validate_expense(expense: ExpenseReport) -> ValidatedExpense:
    """Policy checks and the approvers' lookup, run once and recorded."""
    if expense.amount_cents <= 0:
        raise InvalidExpense(f"amount must be positive, got {expense.amount_cents} cents")
    if expense.amount_cents > POLICY_LIMIT_CENTS:
        raise InvalidExpense(f"{expense.amount_cents / 100:.2f} {expense.currency} is over the "
                             f"policy limit of {POLICY_LIMIT_CENTS / 100:.2f}")
    if expense.amount_cents > RECEIPT_REQUIRED_ABOVE_CENTS and not expense.receipt_url:
        raise InvalidExpense(f"a receipt is required above "
                             f"{RECEIPT_REQUIRED_ABOVE_CENTS / 100:.2f} {expense.currency}")
    if expense.employee not in ORG_CHART:
        raise InvalidExpense(f"unknown employee {expense.employee!r}")
    manager, skip_level = ORG_CHART[expense.employee]
    return ValidatedExpense(expense=expense, manager=manager, skip_level=skip_level)


async def ask_approver(ctx: WorkflowContext[ExpenseReport], checked: ValidatedExpense,
                       approver: str, timeout: timedelta, *, escalated: bool) -> Decision:
    """Create the approver's callback, mail them its token, and wait for their decision.

    Raises:
        CallbackFailedError: the approver rejected the expense (error type ``Rejected``).
        CallbackTimeoutError: the approver did not answer within ``timeout``.
    """
    callback = ctx.create_callback(f"approval:{approver}", Decision, timeout=timeout)
    await ctx.call(mail_service, ApprovalMail(
        to=approver, expense=checked.expense, token=callback.token,
        respond_within_hours=int(timeout.total_seconds() // 3600), escalated=escalated))
    return await callback


@workflow
async def approve_expense(ctx: WorkflowContext[ExpenseReport]) -> ExpenseOutcome:
    """Validate the expense, ask the manager, escalate once on silence, else auto-reject."""
    expense = ctx.request
    try:
        checked = await ctx.step(validate_expense, expense)
    except StepError as exc:
        if exc.error_type != InvalidExpense.__name__:
            raise
        return ExpenseOutcome(expense_id=expense.expense_id, approval="invalid",
                              reason=exc.message, decided_at=ctx.now())
    chain = ((checked.manager, MANAGER_TIMEOUT), (checked.skip_level, ESCALATION_TIMEOUT))
    asked: list[str] = []
    for level, (approver, timeout) in enumerate(chain):
        asked.append(approver)
        try:
            decision = await ask_approver(ctx, checked, approver, timeout,
                                          escalated=level > 0)
        except CallbackTimeoutError:
            ctx.logger.info("%s did not answer within %s", approver, timeout)
            continue
        except CallbackFailedError as exc:
            if exc.error_type != "Rejected":
                raise
            return ExpenseOutcome(expense_id=expense.expense_id, approval="rejected",
                                  decided_by=approver, reason=exc.message,
                                  escalated=level > 0, approvers_asked=asked,
                                  decided_at=ctx.now())
        return ExpenseOutcome(expense_id=expense.expense_id, approval="approved",
                              decided_by=decision.approver, reason=decision.comment,
                              escalated=level > 0, approvers_asked=asked,
                              decided_at=ctx.now())
    waited = MANAGER_TIMEOUT + ESCALATION_TIMEOUT
    return ExpenseOutcome(expense_id=expense.expense_id, approval="auto_rejected",
                          reason=f"no approver answered within {waited.days} days",
                          escalated=True, approvers_asked=asked, decided_at=ctx.now())


# --- Local stand-ins: the mail service and the people reading the mail ---------------------
@dataclass
class StandInApprover:
    """An approver who reads the mail at once (or is away and never does) and decides by a
    simple rule: approve up to ``limit_cents``, never approve ``refused`` categories."""

    name: str
    in_office: bool = True
    limit_cents: int = 2_000_00
    refused: frozenset[str] = frozenset({"entertainment"})

    def decide(self, mail: ApprovalMail) -> tuple[bool, str]:
        expense = mail.expense
        if expense.category in self.refused:
            return False, f"{expense.category} is not reimbursable"
        if expense.amount_cents > self.limit_cents:
            return False, f"over my approval limit of {self.limit_cents / 100:.2f}"
        return True, "ok" if not mail.escalated else "ok (escalated to me)"


@dataclass
class LocalOffice:
    """The mail service's local implementation: it delivers each approval mail to an
    approver's inbox, and an approver who is in the office answers through the runtime, as
    the approve and reject links of a real mail would (``complete_callback`` and
    ``fail_callback`` with the token)."""

    runtime: LocalRuntime
    approvers: dict[str, StandInApprover]
    inbox: list[ApprovalMail] = field(default_factory=list)

    def deliver(self, mail: ApprovalMail) -> MailReceipt:
        self.inbox.append(mail)
        approver = self.approvers.get(mail.to)
        if approver is not None and approver.in_office:
            approved, comment = approver.decide(mail)
            try:
                if approved:
                    self.runtime.complete_callback(
                        mail.token, Decision(approver=approver.name, comment=comment))
                else:
                    self.runtime.fail_callback(mail.token, "Rejected", comment,
                                               {"approver": approver.name})
            except InvalidCallbackTokenError:
                pass  # a mail delivered twice: its link was already used; it decides once
        return MailReceipt(message_id=f"<{mail.expense.expense_id}.{mail.to}@mail.local>")


def default_approvers() -> dict[str, StandInApprover]:
    """maria and diane are in the office (diane may approve more); omar and victor are on
    leave and never answer."""
    return {
        "maria": StandInApprover("maria"),
        "diane": StandInApprover("diane", limit_cents=10_000_00),
        "omar": StandInApprover("omar", in_office=False),
        "victor": StandInApprover("victor", in_office=False),
    }


def setup(runtime: LocalRuntime) -> LocalOffice:
    """Called by ``lambda-workflow run``: register the workflow and implement the mail service
    with stand-in approvers who answer through ``runtime``. Returns the office (its inbox
    holds every mail sent)."""
    office = LocalOffice(runtime, default_approvers())
    runtime.register(approve_expense)
    runtime.implement(mail_service, office.deliver)
    return office


# Inputs that `lambda-workflow run` starts when no --input is given: one per outcome.
EXAMPLES = {
    # maria approves at once
    "exp-approved": ExpenseReport(
        expense_id="exp-approved", employee="alice", amount_cents=420_00, category="travel",
        description="Train to the Lyon customer workshop", receipt_url="s3://receipts/1.pdf"),
    # maria rejects: entertainment is never reimbursed
    "exp-rejected": ExpenseReport(
        expense_id="exp-rejected", employee="alice", amount_cents=880_00,
        category="entertainment", description="Team concert tickets",
        receipt_url="s3://receipts/2.pdf"),
    # omar is on leave: after 3 days diane gets the request and approves
    "exp-escalated": ExpenseReport(
        expense_id="exp-escalated", employee="bob", amount_cents=1_250_00,
        category="equipment", description="Replacement laptop",
        receipt_url="s3://receipts/3.pdf"),
    # omar and victor are both on leave: rejected automatically after 3 + 2 days
    "exp-auto-rejected": ExpenseReport(
        expense_id="exp-auto-rejected", employee="erin", amount_cents=600_00,
        category="training", description="Kubernetes course", receipt_url="s3://receipts/4.pdf"),
    # no receipt: the validation step refuses it, nobody is asked
    "exp-invalid": ExpenseReport(
        expense_id="exp-invalid", employee="alice", amount_cents=95_00, category="meals",
        description="Client dinner"),
}
