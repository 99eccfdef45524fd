"""Callbacks: a workflow hands out a signed token; an external system completes it.

A token names the workflow instance and the callback's operation id, signed with HMAC-SHA256
under the deployment's callback key: ``<payload>.<signature>``, both base64url without
padding. It is derived, not stored, so every replay hands out the same token. A forged or
altered token, one signed with another key, or one whose callback has already completed is
refused with :class:`~lambda_workflow.InvalidCallbackTokenError` and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from .errors import InvalidCallbackTokenError

if TYPE_CHECKING:
    import asyncio

__all__ = ["Callback", "CallbackTokens"]

T = TypeVar("T")
_MIN_KEY_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CallbackTokens:
    """Signs and verifies callback tokens with one key (at least 16 bytes)."""

    def __init__(self, key: bytes | str) -> None:
        key_bytes = key.encode() if isinstance(key, str) else key
        if len(key_bytes) < _MIN_KEY_BYTES:
            raise ValueError(f"a callback key needs at least {_MIN_KEY_BYTES} bytes, got "
                             f"{len(key_bytes)}")
        self._key = key_bytes

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def sign(self, workflow_id: str, callback_id: str) -> str:
        """The token of callback ``callback_id`` of instance ``workflow_id``."""
        payload = _b64(orjson.dumps({"w": workflow_id, "c": callback_id}))
        return f"{payload}.{self._signature(payload)}"

    def verify(self, token: str) -> tuple[str, str]:
        """``(workflow_id, callback_id)`` of a genuine token.

        Raises:
            InvalidCallbackTokenError: the token is malformed or its signature does not match
                (forged, altered, or signed with another key).
        """
        payload, dot, signature = token.partition(".") if isinstance(token, str) else ("", "", "")
        if not dot or not hmac.compare_digest(signature, self._signature(payload)):
            raise InvalidCallbackTokenError(
                "callback token rejected: its signature does not match (forged, altered, or "
                "issued by a deployment with another callback key)")
        try:
            data = orjson.loads(_unb64(payload))
            workflow_id, callback_id = data["w"], data["c"]
        except (ValueError, KeyError, TypeError):
            raise InvalidCallbackTokenError("callback token rejected: malformed payload"
                                            ) from None
        if not isinstance(workflow_id, str) or not isinstance(callback_id, str):
            raise InvalidCallbackTokenError("callback token rejected: malformed payload")
        return workflow_id, callback_id


class Callback(Generic[T]):
    """A callback the workflow created: hand :attr:`token` to an external system, then
    ``await`` it for the value it completes the callback with.

    Raises (when awaited):
        CallbackFailedError: the external system failed it.
        CallbackTimeoutError: ``timeout`` passed first.
        CallbackHeartbeatTimeoutError: ``heartbeat_timeout`` passed without a heartbeat.
    """

    __slots__ = ("_start", "_task", "name", "token")

    def __init__(self, name: str, token: str, start: Callable[[], Coroutine[Any, Any, T]]
                 ) -> None:
        self.name = name
        self.token = token
        self._start = start
        self._task: asyncio.Task[T] | None = None

    def __await__(self) -> Generator[Any, None, T]:
        # One waiting task, made on the first await: a callback may be awaited many times
        # (directly, and through gather or wait).
        if self._task is None:
            import asyncio

            self._task = asyncio.ensure_future(self._start())
        return self._task.__await__()

    def __repr__(self) -> str:
        return f"<Callback {self.name!r}>"
