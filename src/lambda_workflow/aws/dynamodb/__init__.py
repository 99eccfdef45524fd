"""The DynamoDB state store, by role: :mod:`.items` (keys, attribute encoding, payload
placement, sizes, :func:`table_definition`), :mod:`.writes` (the conditional parts of a write,
transactions and their failures, :class:`ConcurrentWriteError`), :mod:`.parts` (the parts a
workflow's writes are made of) and :mod:`.store` (:class:`DynamoDBStateStore`, the
``StateStore`` methods)."""

from .items import table_definition
from .store import DynamoDBStateStore
from .writes import ConcurrentWriteError

__all__ = ["ConcurrentWriteError", "DynamoDBStateStore", "table_definition"]
