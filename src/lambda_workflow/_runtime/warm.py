"""Warm instances: a bounded per-process cache of suspended workflows kept alive, so the next
activation of an instance continues it instead of replaying its history (docs/design.md,
"Warm instances").

An entry holds the live :class:`~lambda_workflow._runtime.replay.Replayer` (its event loop,
the workflow's task, the futures of its pending operations, the replay index) and the
instance's operations as the store holds them after the activation that suspended it. It is
tagged with what proves that nobody else advanced the instance: the instance record's
``activations`` counter as this process left it, the :class:`Workflow` object that ran it and
the code identity of the process (``AWS_LAMBDA_FUNCTION_VERSION`` on Lambda). The next
activation reads the instance record once (a consistent read, not the history); if every tag
still holds, the engine applies the new outcomes to the live futures and runs the workflow on.
Anything else evicts the entry and the activation replays from the history as without a cache.

``LAMBDA_WORKFLOW_INSTANCE_CACHE`` is the number of instances kept (``0`` turns the cache
off); ``LAMBDA_WORKFLOW_INSTANCE_CACHE_OPERATIONS`` bounds the recorded operations all
entries hold together (memory pressure: least recently used entries go first).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WorkflowError
from ..models import OperationRecord

if TYPE_CHECKING:
    from ..workflow import Workflow
    from .replay import Replayer

__all__ = [
    "CACHE_ENV",
    "DEFAULT_LAMBDA_SIZE",
    "DEFAULT_LOCAL_SIZE",
    "DEFAULT_MAX_OPERATIONS",
    "OPERATIONS_ENV",
    "ConfigurationError",
    "InstanceCache",
    "WarmEntry",
    "code_identity",
    "make_instance_cache",
]

CACHE_ENV = "LAMBDA_WORKFLOW_INSTANCE_CACHE"
OPERATIONS_ENV = "LAMBDA_WORKFLOW_INSTANCE_CACHE_OPERATIONS"
# A Lambda container runs one activation at a time and most of its instances come back to it
# only while it is warm; the DynamoDB store remembers 256 instances' counters.
DEFAULT_LAMBDA_SIZE = 128
DEFAULT_LOCAL_SIZE = 1024
# About 0.5 KB per recorded operation held (its request and result bytes included).
DEFAULT_MAX_OPERATIONS = 200_000


class ConfigurationError(WorkflowError, ValueError):
    """A cache setting that is not a whole number >= 0 (named with its value)."""


def code_identity() -> str:
    """What names the deployed code of this process: the Lambda function's version (a new
    deploy runs in new containers, but the tag says so explicitly), else empty."""
    return os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not a whole number (the number of "
            f"{'instances' if name == CACHE_ENV else 'recorded operations'} the warm instance "
            "cache holds; 0 turns the cache off)") from None
    if value < 0:
        raise ConfigurationError(f"{name}={raw!r} must be >= 0 (0 turns the cache off)")
    return value


@dataclass(slots=True, eq=False)
class WarmEntry:
    """One suspended instance kept alive.

    ``operations`` is the instance's history as the store holds it after ``activations``
    (records updated in place as later activations record outcomes); ``ops`` indexes it by id.
    """

    workflow_id: str
    workflow: Workflow[Any, Any]
    identity: str
    replayer: Replayer
    operations: list[OperationRecord]
    ops: dict[str, OperationRecord]
    activations: int
    hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def discard(self) -> None:
        """Tear the live workflow down: its context is sealed, then its tasks are cancelled so
        their ``finally`` blocks run now (recording and sending nothing)."""
        self.replayer.discard()


class InstanceCache:
    """At most ``size`` warm instances, least recently used evicted first, holding at most
    ``max_operations`` recorded operations together. ``size=0`` keeps nothing.

    Counters for logs, metrics and tests: ``hits``, ``misses`` and ``evictions`` (by reason).
    """

    def __init__(self, size: int, *, max_operations: int = DEFAULT_MAX_OPERATIONS) -> None:
        if size < 0:
            raise ConfigurationError(f"instance cache size {size} must be >= 0 (0: off)")
        if max_operations < 0:
            raise ConfigurationError(
                f"instance cache max_operations {max_operations} must be >= 0")
        self.size = size
        self.max_operations = max_operations
        self._entries: OrderedDict[str, WarmEntry] = OrderedDict()
        # Handlers may share an engine between threads (tests' pollers): the bookkeeping is
        # locked; a dropped entry is torn down outside the lock.
        self._lock = threading.Lock()
        self._held = 0
        self.hits = 0
        self.misses = 0
        self.evictions: dict[str, int] = {}

    @classmethod
    def from_env(cls, default_size: int = DEFAULT_LOCAL_SIZE) -> InstanceCache:
        """The cache ``LAMBDA_WORKFLOW_INSTANCE_CACHE`` and ``..._OPERATIONS`` ask for."""
        return cls(_env_int(CACHE_ENV, default_size),
                   max_operations=_env_int(OPERATIONS_ENV, DEFAULT_MAX_OPERATIONS))

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    @property
    def held_operations(self) -> int:
        """Recorded operations held by all entries."""
        return self._held

    def take(self, workflow_id: str) -> WarmEntry | None:
        """Remove and return the entry of ``workflow_id`` (the activation owns it now)."""
        with self._lock:
            return self._take(workflow_id)

    def _take(self, workflow_id: str) -> WarmEntry | None:
        entry = self._entries.pop(workflow_id, None)
        if entry is not None:
            self._held -= len(entry.operations)
        return entry

    def put(self, entry: WarmEntry) -> None:
        """Keep ``entry`` (most recently used), evicting the least recently used ones over
        the bounds. An entry alone over ``max_operations`` is not kept."""
        dropped: list[tuple[WarmEntry, str]] = []
        with self._lock:
            old = self._take(entry.workflow_id)
            if old is not None and old is not entry:
                dropped.append((old, "replaced"))
            if not self.enabled or len(entry.operations) > self.max_operations:
                dropped.append((entry, "operations"))
            else:
                self._entries[entry.workflow_id] = entry
                self._held += len(entry.operations)
                while len(self._entries) > self.size:
                    dropped.append((self._pop_oldest(), "size"))
                while self._held > self.max_operations:
                    dropped.append((self._pop_oldest(), "operations"))
        for gone, reason in dropped:
            self._drop(gone, reason)

    def evict(self, workflow_id: str, reason: str) -> bool:
        """Drop the entry of ``workflow_id`` if there is one."""
        entry = self.take(workflow_id)
        if entry is None:
            return False
        self._drop(entry, reason)
        return True

    def discard(self, entry: WarmEntry, reason: str) -> None:
        """Drop an entry already taken out (:meth:`take`) that cannot be kept."""
        self._drop(entry, reason)

    def count(self, outcome: str) -> None:
        """Count a ``"hit"`` or a ``"miss"``."""
        with self._lock:
            if outcome == "hit":
                self.hits += 1
            else:
                self.misses += 1

    def clear(self) -> None:
        """Drop every entry."""
        for workflow_id in list(self._entries):
            self.evict(workflow_id, "cleared")

    def _pop_oldest(self) -> WarmEntry:
        _, entry = self._entries.popitem(last=False)
        self._held -= len(entry.operations)
        return entry

    def evicted(self, reason: str) -> None:
        """Count an instance not kept (or dropped) for ``reason``."""
        with self._lock:
            self.evictions[reason] = self.evictions.get(reason, 0) + 1

    def _drop(self, entry: WarmEntry, reason: str) -> None:
        self.evicted(reason)
        entry.discard()


def make_instance_cache(value: InstanceCache | int | None,
                   default_size: int = DEFAULT_LOCAL_SIZE) -> InstanceCache:
    """The cache an engine uses: one given, one of ``value`` instances, or (``None``) the one
    the environment asks for."""
    if isinstance(value, InstanceCache):
        return value
    if value is None:
        return InstanceCache.from_env(default_size)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"instance_cache={value!r}: give the number of instances to keep (0: off) or an "
            "InstanceCache")
    return InstanceCache(value, max_operations=_env_int(OPERATIONS_ENV,
                                                        DEFAULT_MAX_OPERATIONS))
