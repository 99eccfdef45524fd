"""The writes of the DynamoDB store: the conditional parts of a write (``_Write``), how parts
are split into ``TransactWriteItems`` calls (100 parts, 4 MB), how a transaction is sent and
what a failed condition or a cancellation reason does, and single-item updates.

Every part is conditional, so a repeated write changes nothing already recorded. DynamoDB
cancels a whole transaction when one condition fails; the failed part is then handled by its
``on_fail`` and the rest sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from ...errors import PayloadTooLargeError, WorkflowError
from ..config import DYNAMODB_MAX_ITEM_BYTES
from .items import Item, _is_size_error

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

MAX_TRANSACTION_ITEMS = 100
# TransactWriteItems refuses more than 4 MB of items; keep a margin under 4,000,000 bytes.
MAX_TRANSACTION_BYTES = 3_900_000
# Per-item updates (TTL at finish, per-operation sent flags) go one after another up to this
# many, and on this many threads beyond.
_UPDATE_THREADS = 8


class ConcurrentWriteError(WorkflowError):
    """Another writer changed a workflow instance since this store read it.

    The store remembers the ``activations`` counter it last read (``load_history``) or wrote
    for each workflow; a write conditioned on it found another value. The write was not
    applied: the other writer's activation stands, and the messages of this one are
    redelivered and replayed on the history as it now is.

    Attributes:
        workflow_id: The instance.
        expected: The counter this store last read or wrote.
        actual: The counter the table holds.
    """

    def __init__(self, workflow_id: str, expected: int, actual: int) -> None:
        self.workflow_id = workflow_id
        self.expected = expected
        self.actual = actual
        moved = (f"the table now holds activations={actual}" if actual != expected else
                 "another activation wrote the instance since (its write version moved)")
        super().__init__(
            f"workflow {workflow_id!r} was written by another writer: this store read or "
            f"wrote activations={expected}, {moved}; this write was not applied")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConcurrentWriteError, (self.workflow_id, self.expected, self.actual))


class ConflictingOperationError(ConcurrentWriteError):
    """Another writer recorded a different operation under an id this activation made (two
    activations of one instance at once, the other one's commit first): this activation lost
    and sends nothing; its messages are redelivered and replayed on the history as it is."""

    def __init__(self, workflow_id: str, op_id: str) -> None:
        self.workflow_id = workflow_id
        self.op_id = op_id
        self.expected = self.actual = -1
        WorkflowError.__init__(
            self, f"workflow {workflow_id!r} was written by another writer: operation "
            f"{op_id!r} is recorded with a different request than this activation made; "
            "this write was not applied")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConflictingOperationError, (self.workflow_id, self.op_id))


class _InstanceMissing(Exception):
    pass


class _NotRunning(Exception):
    pass


OnFail = Callable[[Item | None], "_Write | None"]


@dataclass(slots=True, eq=False)
class _Write:
    """One part of a transaction. A part whose condition fails is dropped (``on_fail`` is
    ``None``: already recorded), replaced by what ``on_fail`` returns, or ends the write
    (``on_fail`` raises). A transaction is only sent while an ``essential`` part is left."""

    action: TransactWriteItemTypeDef
    size: int
    label: str
    essential: bool = True
    on_fail: OnFail | None = None
    op_id: str | None = None


def _send(client: DynamoDBClient, writes: Sequence[_Write]) -> None:
    if len(writes) > 1:
        client.transact_write_items(TransactItems=[w.action for w in writes])
        return
    action: Any = writes[0].action
    if "Put" in action:
        client.put_item(**action["Put"])
    elif "Update" in action:
        client.update_item(**action["Update"])
    else:  # pragma: no cover - a lone ConditionCheck is never essential, never sent
        raise AssertionError("a lone ConditionCheck")


def execute(client: DynamoDBClient, workflow_id: str,
            writes: Sequence[_Write]) -> list[_Write]:
    """Write ``writes`` atomically, each part conditional: a part whose condition fails
    is handled by its ``on_fail`` and the rest sent again (DynamoDB cancels a whole
    transaction when one condition fails). Returns the parts written."""
    pending = list(writes)
    for _ in range(2 * len(pending) + 2):
        if not any(w.essential for w in pending):
            return []
        try:
            _send(client, pending)
        except ClientError as exc:
            pending = _after_failure(workflow_id, exc, pending)
        else:
            return pending
    raise AssertionError("a conditional write did not settle")  # pragma: no cover


def _after_failure(workflow_id: str, exc: ClientError,
                   pending: list[_Write]) -> list[_Write]:
    response = cast(Mapping[str, Any], exc.response)
    error = response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    reasons: list[tuple[str | None, Item | None, str]]
    if code == "ConditionalCheckFailedException" and len(pending) == 1:
        reasons = [("ConditionalCheckFailed", response.get("Item"), message)]
    elif code == "TransactionCanceledException" and len(
            response.get("CancellationReasons") or ()) == len(pending):
        reasons = [(None if r.get("Code") in (None, "None") else r["Code"], r.get("Item"),
                    r.get("Message", "")) for r in response["CancellationReasons"]]
    elif code == "ValidationException" and _is_size_error(message):
        size = max(w.size for w in pending)
        raise PayloadTooLargeError(
            f"a record of workflow {workflow_id!r}", size, DYNAMODB_MAX_ITEM_BYTES,
            f"DynamoDB refused the write: {message}") from None
    else:
        raise exc
    retry: list[_Write] = []
    for write, (reason, old, why) in zip(pending, reasons, strict=True):
        if reason is None:
            retry.append(write)
        elif reason == "ConditionalCheckFailed":
            replacement = write.on_fail(old) if write.on_fail is not None else None
            if replacement is not None:
                retry.append(replacement)
        elif reason == "ValidationError" and _is_size_error(why):
            raise PayloadTooLargeError(
                f"the record of {write.label}", write.size, DYNAMODB_MAX_ITEM_BYTES,
                f"DynamoDB refused the write: {why}") from None
        else:
            raise exc
    return retry


def split(body: Sequence[_Write], tail: Sequence[_Write],
          guard: _Write | None) -> list[list[_Write]]:
    """Split a write that exceeds one transaction (100 parts, 4 MB): ``tail`` goes in
    the last transaction, filled up with ``body``; the rest of ``body`` goes first, in
    transactions that each carry ``guard``."""

    def fits(parts: Sequence[_Write]) -> bool:
        return (len(parts) <= MAX_TRANSACTION_ITEMS
                and sum(w.size for w in parts) <= MAX_TRANSACTION_BYTES)

    everything = [*body, *tail]
    if fits(everything):
        return [everything]
    early, last = list(body), list(tail)
    while len(last) > 1 and not fits(last):
        early.append(last.pop(0))  # more replies than one transaction holds
    while early and fits([*last, early[-1]]):
        last.append(early.pop())
    extra = [guard] if guard is not None else []
    chunks: list[list[_Write]] = []
    current: list[_Write] = []
    for write in early:
        if current and not fits([*current, write, *extra]):
            chunks.append([*current, *extra])
            current = []
        current.append(write)
    if current:
        chunks.append([*current, *extra])
    return [*chunks, last]


def run(client: DynamoDBClient, workflow_id: str,
        transactions: Sequence[Sequence[_Write]]) -> list[_Write]:
    written: list[_Write] = []
    for parts in transactions:
        written += execute(client, workflow_id, parts)
    return written


def update_each(client: DynamoDBClient, updates: Sequence[Mapping[str, Any]]) -> None:
    """Independent single-item updates, each conditional on its item existing (a missing
    item is skipped, never created); several threads when there are many."""

    def update(kwargs: Mapping[str, Any]) -> None:
        try:
            client.update_item(**kwargs)
        except ClientError as exc:
            response = cast(Mapping[str, Any], exc.response)
            if response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise

    if len(updates) <= _UPDATE_THREADS:
        for kwargs in updates:
            update(kwargs)
        return
    with ThreadPoolExecutor(max_workers=_UPDATE_THREADS) as pool:
        for _ in pool.map(update, updates):
            pass
