"""The plug points of the runtime, named for their roles."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..models import History, InstanceRecord, InstanceStatus, OperationRecord, Outcome

__all__ = ["HEARTBEAT_REFUSALS", "Clock", "FifoQueue", "HeartbeatStore", "InstanceLister",
           "InstancePage", "InstanceSummary", "InvalidPageTokenError", "QueueMessage",
           "StateStore", "TimerService", "Transport"]


class Clock(Protocol):
    """Where the runtime reads the time (seconds since the epoch)."""

    def now(self) -> float:
        """The current time."""
        ...


class StateStore(Protocol):
    """Durable state of workflow instances: one instance record and its operation records.

    Every write is conditional, so a repeated write (a redelivered message, a second writer)
    changes nothing that is already recorded.
    """

    def create_instance(self, instance: InstanceRecord,
                        operations: Sequence[OperationRecord] = ()
                        ) -> tuple[InstanceRecord, bool]:
        """Store ``instance`` unless its id exists, with ``operations`` in the same atomic
        write (a child's link to its parent: a crash cannot leave one without the other).
        Returns the stored record and whether it was created by this call."""
        ...

    def get_instance(self, workflow_id: str) -> InstanceRecord | None:
        """The instance record, or ``None``."""
        ...

    def load_history(self, workflow_id: str) -> History | None:
        """The instance and all its operations ordered by ``seq``, in one read."""
        ...

    def add_operations(self, workflow_id: str, operations: Sequence[OperationRecord],
                       activation: int) -> None:
        """Insert operations whose ``op_id`` is not recorded yet; existing ones are kept as
        they are."""
        ...

    def record_outcomes(self, workflow_id: str, outcomes: Sequence[Outcome], activation: int,
                        at: float) -> list[str]:
        """Record the outcomes of operations that exist and are still pending, all in one
        atomic write (an activation's replies are recorded together or not at all, so a
        crash cannot split them across two replay stages). Returns the op ids recorded;
        duplicates and unknown ops are skipped."""
        ...

    def commit_activation(self, workflow_id: str, outcomes: Sequence[Outcome],
                          operations: Sequence[OperationRecord], activation: int,
                          at: float) -> list[str]:
        """Record an activation's replies and its new operations in one atomic write, each
        conditional as in :meth:`record_outcomes` and :meth:`add_operations`. A crash can then
        never leave replies recorded without the calls the workflow made after them (the next
        replay would meet those calls before the history's last stage). Returns the op ids
        whose outcomes were recorded."""
        ...

    def mark_sent(self, workflow_id: str, op_ids: Sequence[str]) -> None:
        """Note that the requests of these operations left through the transport."""
        ...

    def finish(self, workflow_id: str, status: InstanceStatus, result: bytes | None,
               error: bytes | None, activation: int, at: float) -> bool:
        """Mark a running instance as finished. Returns ``False`` if it was not running."""
        ...

    def list_instances(self) -> list[InstanceRecord]:
        """Every instance, oldest first."""
        ...

    def repair(self, workflow_id: str, expected_activations: int, drop: Sequence[str],
               put: Sequence[OperationRecord], at: float) -> bool:
        """Reopen an instance for a repair (``resume``, ``reset``), in one atomic write and
        only if its activation counter is still ``expected_activations`` (nothing ran since
        the caller read it): delete the operations ``drop``, store each of ``put`` (inserted,
        or replacing the operation of the same id), and make the instance running again
        (result and error cleared, ``updated_at`` = ``at``) with its counter one higher, so
        an activation that read the history before loses its commit. Returns ``False`` and
        changes nothing when the counter moved or the instance does not exist.

        A store that cannot delete every operation of ``drop`` in that one write (DynamoDB:
        more than one transaction holds) deletes the first ones with it and the rest after
        it: the ids a reset drops are fenced in its record, and the engine ignores records
        with a fenced id."""
        ...


HEARTBEAT_REFUSALS = ("unknown", "completed", "ended")


class HeartbeatStore(Protocol):
    """A store that records callback heartbeats without an activation: the client writes the
    callback's last heartbeat time, and the heartbeat timer reads it when it fires."""

    def record_heartbeat(self, workflow_id: str, callback_id: str, request_digest: str,
                         at: float) -> str | None:
        """Record ``at`` as the last heartbeat of callback ``callback_id``, in one conditional
        write: the instance is running, and the callback is pending with this request digest
        (the request holds the token). A later heartbeat already recorded stands. Returns
        ``None`` when recorded, else why not: ``"unknown"`` (no such callback, or another one
        under that id), ``"completed"`` (the callback) or ``"ended"`` (the instance)."""
        ...

    def last_heartbeat(self, workflow_id: str, callback_id: str) -> float | None:
        """The last heartbeat recorded for the callback as it is now, if any (strongly
        consistent: a heartbeat recorded before the call is seen)."""
        ...


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    """One listed instance: what a listing shows without reading payloads."""

    workflow_id: str
    workflow_name: str
    status: InstanceStatus
    created_at: float
    updated_at: float
    activations: int


@dataclass(frozen=True, slots=True)
class InstancePage:
    """One page of a listing; ``next_token`` continues it (``None``: nothing more)."""

    instances: list[InstanceSummary]
    next_token: str | None


class InvalidPageTokenError(ValueError):
    """A page token that no listing of this store handed out (altered, truncated, or from
    another backend)."""


def encode_page_token(backend: str, position: Any) -> str:
    """An opaque page token: the backend's name and its position, as URL-safe base64 JSON."""
    raw = json.dumps({"b": backend, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(backend: str, token: str) -> Any:
    """The position in a token from :func:`encode_page_token` for ``backend``.

    Raises:
        InvalidPageTokenError: the token is not one (names what is wrong with it).
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidPageTokenError(
            f"page token {token[:40]!r} is not a token a listing printed (it does not "
            "decode); pass the --next-token value exactly as printed") from None
    if not isinstance(doc, dict) or "p" not in doc:
        raise InvalidPageTokenError(f"page token {token[:40]!r} is not a token a listing "
                                    "printed (no position in it)")
    if doc.get("b") != backend:
        raise InvalidPageTokenError(
            f"page token {token[:40]!r} comes from a listing of a {doc.get('b')!r} store, "
            f"not of this {backend!r} store")
    return doc["p"]


class InstanceLister(Protocol):
    """A store that lists instances through an index, a page at a time."""

    def list_page(self, *, status: InstanceStatus | None = None,
                  workflow_name: str | None = None, since: float | None = None,
                  until: float | None = None, limit: int = 100,
                  next_token: str | None = None) -> InstancePage:
        """Instances with this status and workflow name, created between ``since`` and
        ``until`` (seconds since the epoch, both included), at most ``limit`` of them.
        Pass the page's ``next_token`` back to read the next page.

        Raises:
            InvalidPageTokenError: ``next_token`` is not one this store handed out.
            ValueError: ``limit`` is below 1.
        """
        ...


class Transport(Protocol):
    """Where messages go: the workflow's FIFO queue, and services."""

    @property
    def reply_address(self) -> str:
        """The address services send replies to (carried in each request)."""
        ...

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        """Send a message to an instance (FIFO group = ``workflow_id``). ``workflow`` is the
        instance's workflow name when the sender knows it: a deployment with a queue per
        workflow function routes by it (a start message names its workflow itself; without
        a name the message goes to the sender's own workflow queue)."""
        ...

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        """Send a call request to the named service."""
        ...


class TimerService(Protocol):
    """Durable timers: deliver a ``timer_fired`` message to an instance at a given time."""

    def schedule(self, workflow_id: str, timer_id: str, fire_at: float) -> None:
        """Send ``timer_fired`` for ``timer_id`` to ``workflow_id`` at ``fire_at`` (seconds
        since the epoch), or at once if that has passed. Scheduling the same timer again is
        harmless (the message carries the timer's deduplication id)."""
        ...

    def withdraw(self, workflow_id: str, timer_id: str) -> None:
        """The timer is no longer needed (its instance ended): drop it if the carrier can.
        A timer that fires anyway is harmless."""
        ...


@dataclass(slots=True)
class QueueMessage:
    """A received message. ``receipt`` identifies this delivery for delete and release."""

    body: bytes
    group_id: str
    dedup_id: str
    message_id: str
    receipt: str
    receive_count: int


class FifoQueue(Protocol):
    """A FIFO queue with message groups and deduplication, as SQS FIFO behaves.

    Messages of one group are delivered in order, and none is delivered while another of its
    group is in flight. A message sent again with a deduplication id seen within the window is
    dropped.
    """

    def send(self, body: bytes, *, group_id: str, dedup_id: str) -> str | None:
        """Enqueue; returns the message id, or ``None`` if dropped as a duplicate."""
        ...

    def receive(self, max_messages: int = 10) -> list[QueueMessage]:
        """Up to ``max_messages`` (1 to 10) visible messages, in group order."""
        ...

    def delete(self, message: QueueMessage) -> None:
        """Remove a delivered message for good."""
        ...

    def release(self, message: QueueMessage) -> None:
        """Make a delivered message visible again (it will be redelivered)."""
        ...
