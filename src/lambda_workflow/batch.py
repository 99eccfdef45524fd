"""Parallel branches and maps over items, with a concurrency limit and completion rules.

Branches run as tasks on the workflow's own loop, so their operations are recorded like any
other (in the order the branches create them) and a branch that waits suspends the workflow
while completed branches stay recorded: a replay returns their results without running their
operations again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import WorkflowError

__all__ = [
    "BatchError",
    "BatchItem",
    "BatchResult",
    "Completion",
    "CompletionReason",
    "ItemStatus",
    "run_batch",
]

T = TypeVar("T")


class ItemStatus(enum.StrEnum):
    """How one branch of a batch ended (:attr:`BatchItem.status`)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # started, then stopped because the batch was complete
    NOT_STARTED = "not_started"  # never started because the batch was complete


class CompletionReason(enum.StrEnum):
    """Why a batch was complete (:attr:`BatchResult.completion_reason`)."""

    ALL_COMPLETED = "all_completed"
    MIN_SUCCESSFUL_REACHED = "min_successful_reached"
    FAILURE_TOLERANCE_EXCEEDED = "failure_tolerance_exceeded"


@dataclass(frozen=True, slots=True)
class Completion:
    """When a batch is complete, with AWS's semantics (parallel 8.6-8.22, map 9.5-9.10).

    The default (no argument) is *all successful*: the batch stops at the first failure
    (``tolerated_failure_count=0``). A failure never raises by itself: the batch returns its
    :class:`BatchResult`, and :meth:`BatchResult.raise_if_error` raises if an item failed.

    Args:
        min_successful: Complete as soon as this many items succeeded, without starting the
            rest. Failures alone do not stop a batch that sets only this rule: when the
            minimum is never reached every item runs (``all_completed``).
        tolerated_failure_count: Stop once more than this many items failed
            (``failure_tolerance_exceeded``).
        tolerated_failure_percentage: Stop once failures exceed this percentage of all
            items, strictly (1 of 4 failing is 25%, which a tolerance of 25 allows).
        all_completed: Run every item whatever fails (failures are reported, not fatal).

    The tolerances are checked before the minimum, so a batch whose failures exceed them
    reports ``failure_tolerance_exceeded`` even if the minimum was reached at the same
    moment. A batch whose every item ended reports ``all_completed`` unless a tolerance was
    exceeded.
    """

    min_successful: int | None = None
    tolerated_failure_count: int | None = None
    tolerated_failure_percentage: float | None = None
    all_completed: bool = False

    def __post_init__(self) -> None:
        if self.min_successful is not None and (
                isinstance(self.min_successful, bool) or not isinstance(self.min_successful, int)
                or self.min_successful < 1):
            raise ValueError(f"min_successful must be an integer >= 1, got "
                             f"{self.min_successful!r}")
        if self.tolerated_failure_count is not None and (
                isinstance(self.tolerated_failure_count, bool)
                or not isinstance(self.tolerated_failure_count, int)
                or self.tolerated_failure_count < 0):
            raise ValueError(f"tolerated_failure_count must be an integer >= 0, got "
                             f"{self.tolerated_failure_count!r}")
        pct = self.tolerated_failure_percentage
        if pct is not None and (isinstance(pct, bool) or not isinstance(pct, int | float)
                                or not math.isfinite(pct) or not 0 <= pct <= 100):
            raise ValueError(f"tolerated_failure_percentage must be 0 to 100, got {pct!r}")

    def failed_too_often(self, failed: int, total: int) -> bool:
        """Whether ``failed`` failures out of ``total`` items exceed the tolerance, so the
        batch stops (``failure_tolerance_exceeded``)."""
        if failed == 0 or self.all_completed:
            return False
        if self.tolerated_failure_count is not None and failed > self.tolerated_failure_count:
            return True
        pct = self.tolerated_failure_percentage
        if pct is not None and failed * 100 > pct * total:
            return True
        # No tolerance given: all successful (the default), unless a minimum is the only
        # rule; then failures do not stop the batch (parallel 8.17).
        return self.tolerated_failure_count is None and pct is None and (
            self.min_successful is None)

    def decide(self, succeeded: int, failed: int, total: int) -> CompletionReason | None:
        """Whether a batch of ``total`` items is complete once ``succeeded`` of them
        succeeded and ``failed`` failed, and why; ``None`` while it goes on."""
        if self.failed_too_often(failed, total):
            return CompletionReason.FAILURE_TOLERANCE_EXCEEDED
        if succeeded + failed >= total:
            return CompletionReason.ALL_COMPLETED
        if self.min_successful is not None and succeeded >= self.min_successful:
            return CompletionReason.MIN_SUCCESSFUL_REACHED
        return None


@dataclass(slots=True)
class BatchItem(Generic[T]):
    """One branch or item: its position, status, and value or error."""

    index: int
    status: ItemStatus = ItemStatus.NOT_STARTED
    value: T | None = None
    error: BaseException | None = None


class BatchError(WorkflowError):
    """Items of a batch failed (raised by :meth:`BatchResult.raise_if_error`).

    Attributes:
        errors: ``(index, exception)`` of every failed item, in index order.
    """

    def __init__(self, errors: Sequence[tuple[int, BaseException]]) -> None:
        self.errors = list(errors)
        first_index, first = self.errors[0]
        super().__init__(f"{len(self.errors)} item(s) failed; first: item {first_index}: "
                         f"{type(first).__name__}: {first}")


@dataclass(slots=True)
class BatchResult(Generic[T]):
    """The outcome of ``ctx.parallel`` or ``ctx.map``: one :class:`BatchItem` per branch or
    item, in index order, and why the batch completed."""

    items: list[BatchItem[T]]
    completion_reason: CompletionReason
    started: int = field(default=0)

    @property
    def succeeded(self) -> int:
        return sum(item.status is ItemStatus.SUCCEEDED for item in self.items)

    @property
    def failed(self) -> int:
        return sum(item.status is ItemStatus.FAILED for item in self.items)

    @property
    def success_count(self) -> int:
        """How many items succeeded (AWS's ``successCount``; the same as :attr:`succeeded`)."""
        return self.succeeded

    @property
    def failure_count(self) -> int:
        """How many items failed (AWS's ``failureCount``; the same as :attr:`failed`)."""
        return self.failed

    @property
    def total_count(self) -> int:
        """How many items started: succeeded, failed or cancelled; items never started
        because the batch was complete are not counted (AWS's ``totalCount``, parallel 8.8)."""
        return sum(item.status is not ItemStatus.NOT_STARTED for item in self.items)

    @property
    def has_failure(self) -> bool:
        """Whether any item failed."""
        return any(item.status is ItemStatus.FAILED for item in self.items)

    @property
    def status(self) -> ItemStatus:
        """``failed`` if any item failed, else ``succeeded`` (AWS's batch status: a batch that
        tolerated its failures still reports ``failed``, parallel 8.9)."""
        return ItemStatus.FAILED if self.has_failure else ItemStatus.SUCCEEDED

    def values(self) -> list[T]:
        """The values of the items that succeeded, in index order."""
        return [item.value for item in self.items  # type: ignore[misc]
                if item.status is ItemStatus.SUCCEEDED]

    def errors(self) -> list[tuple[int, BaseException]]:
        return [(item.index, item.error) for item in self.items
                if item.status is ItemStatus.FAILED and item.error is not None]

    def raise_if_error(self) -> None:
        """Raise :class:`BatchError` if any item failed."""
        errors = self.errors()
        if errors:
            raise BatchError(errors)


async def run_batch(branches: Sequence[Callable[[], Awaitable[T]]], *,
                    max_concurrency: int | None, completion: Completion) -> BatchResult[T]:
    """Run ``branches`` on the workflow loop, at most ``max_concurrency`` at a time, until
    ``completion`` says the batch is complete; stop the rest."""
    import asyncio

    items: list[BatchItem[T]] = [BatchItem(i) for i in range(len(branches))]
    running: dict[asyncio.Future[T], int] = {}
    next_index = 0
    reason: CompletionReason | None = None
    total = len(branches)
    succeeded = failed = started = 0
    while True:
        while reason is None and next_index < total and (
                max_concurrency is None or len(running) < max_concurrency):
            running[asyncio.ensure_future(branches[next_index]())] = next_index
            items[next_index].status = ItemStatus.CANCELLED  # until it ends
            next_index += 1
            started += 1
        if not running:
            break
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=running.__getitem__):  # index order: deterministic
            item = items[running.pop(task)]
            if task.cancelled():
                continue
            error = task.exception()
            if error is None:
                item.status, item.value = ItemStatus.SUCCEEDED, task.result()
                succeeded += 1
            else:
                item.status, item.error = ItemStatus.FAILED, error
                failed += 1
            # Decided item by item, in index order, as AWS decides on each completion: items
            # that ended together after the decision keep their outcome, not its reason.
            if reason is None:
                reason = completion.decide(succeeded, failed, total)
        if reason is not None:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)
            running.clear()
            break
    for item in items[next_index:]:
        item.status = ItemStatus.NOT_STARTED
    return BatchResult(items, reason or CompletionReason.ALL_COMPLETED, started)
