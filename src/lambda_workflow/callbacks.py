"""Callbacks: a workflow hands out a signed token; an external system completes it.

A token is ``<key id>.<payload>.<signature>``, each part base64url without padding. The
payload names the workflow instance, the callback's operation id and a random nonce; the
signature is HMAC-SHA256 under the key the key id names. A token is made once, when its
callback is first created, and recorded in the callback's operation (its request's
``token``): every replay hands out the recorded token, whatever the current key, so
rotating the key never changes a replay. The nonce ties a token to one run of an instance:
a later instance with the same id records other tokens, and the runtime accepts for a
callback only the token recorded for it (compared in constant time).

Keys live in a :class:`CallbackKeyRing`: its current key signs new tokens; every key of the
ring verifies. A token signed with a key that left the ring, a forged or altered token, one
that is malformed (not a string, not ASCII, too long, bad base64, a payload of the wrong
shape), one recorded for another run, or one whose callback has already completed is
refused with :class:`~lambda_workflow.InvalidCallbackTokenError` and changes nothing.

Histories recorded before tokens were recorded hold no token: their callbacks keep the old
derived token, ``<payload>.<signature>`` over the instance and callback id, signed with the
current key on every replay; any key of the ring verifies such a token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import orjson

from .errors import InvalidCallbackTokenError

if TYPE_CHECKING:
    import asyncio

__all__ = ["MAX_TOKEN_CHARS", "Callback", "CallbackKeyRing", "CallbackKeys", "CallbackTokens",
           "key_id", "recorded_token"]

T = TypeVar("T")
_MIN_KEY_BYTES = 16
# A token is at most a few hundred characters (a 128-character id, JSON-escaped and in
# base64); anything much longer is refused before any work is done on it.
MAX_TOKEN_CHARS = 2048
_PART = re.compile(r"[A-Za-z0-9_-]+")
_KEY_ID_LABEL = b"lambda-workflow callback key id"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_bytes(key: object, what: str) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        raise TypeError(f"{what} must be bytes or str, got {type(key).__name__}")
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"{what} needs at least {_MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def key_id(key: bytes | str) -> str:
    """The id a token carries for ``key``: 8 base64url characters of an HMAC of a fixed
    label under the key (it names the key without revealing anything about it)."""
    raw = key.encode() if isinstance(key, str) else key
    return _b64(hmac.new(raw, _KEY_ID_LABEL, hashlib.sha256).digest()[:6])


class CallbackKeyRing:
    """The keys of a deployment: ``current`` signs new tokens; ``current`` and every key of
    ``verify`` (previous keys, or the next key before it becomes current) verify tokens.

    Each key is at least 16 bytes; its id (:func:`key_id`) is derived from it.
    """

    __slots__ = ("current_id", "keys")

    def __init__(self, current: bytes | str, verify: Iterable[bytes | str] = ()) -> None:
        if isinstance(verify, str | bytes):
            raise TypeError("verify takes a list of keys, not one key")
        first = _key_bytes(current, "a callback key")
        self.current_id = key_id(first)
        self.keys: dict[str, bytes] = {self.current_id: first}
        for i, key in enumerate(verify):
            raw = _key_bytes(key, f"callback key verify[{i}]")
            self.keys.setdefault(key_id(raw), raw)

    @property
    def current(self) -> bytes:
        return self.keys[self.current_id]

    @classmethod
    def parse(cls, text: str, source: str) -> CallbackKeyRing:
        """A ring from its text form: either one key (the whole text), or the JSON object
        ``{"current": "<key>", "verify": ["<key>", ...]}``. ``source`` names where the text
        came from, for error messages (which never include a key).

        Raises:
            ValueError: not a key or a ring of keys (too short, wrong JSON shape).
        """
        if not isinstance(text, str):
            raise ValueError(f"{source}: a callback key must be a string")
        if not text.lstrip().startswith("{"):
            try:
                return cls(text)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError(f"{source}: a key ring must be valid JSON") from None
        if (not isinstance(doc, dict) or not isinstance(doc.get("current"), str)
                or not set(doc) <= {"current", "verify"}
                or not isinstance(doc.get("verify", []), list)
                or not all(isinstance(k, str) for k in doc.get("verify", []))):
            raise ValueError(f'{source}: a key ring is {{"current": "<key>", "verify": '
                             f'["<key>", ...]}} (keys as strings); got fields '
                             f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        try:
            return cls(doc["current"], doc.get("verify", []))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def __repr__(self) -> str:
        return f"<CallbackKeyRing current={self.current_id} ids={sorted(self.keys)}>"


CallbackKeys: TypeAlias = "bytes | str | CallbackKeyRing"


def _as_ring(keys: CallbackKeys) -> CallbackKeyRing:
    return keys if isinstance(keys, CallbackKeyRing) else CallbackKeyRing(keys)


def recorded_token(request: bytes) -> str | None:
    """The token recorded in a callback operation's request (``None`` in histories recorded
    before tokens were recorded)."""
    try:
        token = orjson.loads(request).get("token")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def _rejected(why: str) -> InvalidCallbackTokenError:
    return InvalidCallbackTokenError(f"callback token rejected: {why}")


class CallbackTokens:
    """Issues and verifies callback tokens with a key ring.

    ``keys`` is one key (at least 16 bytes), a :class:`CallbackKeyRing`, or a function that
    loads the ring (from a secret store): it is called on first use, again once ``ttl``
    seconds have passed, and at once (at most every ``min_reload`` seconds) when a token
    names a key the ring does not have, so a rotation is picked up without a restart. When
    a reload fails the ring loaded before stays in use, and the load is tried again later.
    """

    def __init__(self, keys: CallbackKeys | Callable[[], CallbackKeyRing], *,
                 ttl: float = 300.0, min_reload: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loader: Callable[[], CallbackKeyRing] | None = None
        self._ring: CallbackKeyRing | None = None
        if callable(keys):
            self._loader = keys
        else:
            self._ring = _as_ring(keys)
        self._ttl = ttl
        self._min_reload = min_reload
        self._clock = clock
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def _load(self) -> CallbackKeyRing:
        assert self._loader is not None
        now = self._clock()
        try:
            ring = self._loader()
        except Exception:
            if self._ring is None:
                raise
            import logging  # only here: `import lambda_workflow` stays free of logging

            logging.getLogger("lambda_workflow.callbacks").warning(
                "reloading the callback keys failed; the keys loaded before stay in use",
                exc_info=True)
            self._loaded_at = now - self._ttl + min(self._ttl, 30.0)
            return self._ring
        self._ring, self._loaded_at = ring, now
        return ring

    @property
    def ring(self) -> CallbackKeyRing:
        """The ring in use (loaded or reloaded first when it is due)."""
        if self._loader is None:
            assert self._ring is not None
            return self._ring
        with self._lock:
            if self._ring is None or self._clock() - self._loaded_at >= self._ttl:
                return self._load()
            return self._ring

    def _key_for(self, kid: str) -> bytes | None:
        key = self.ring.keys.get(kid)
        if key is None and self._loader is not None:
            with self._lock:
                if self._clock() - self._loaded_at >= self._min_reload:
                    key = self._load().keys.get(kid)
        return key

    def issue(self, workflow_id: str, callback_id: str) -> str:
        """A new token for callback ``callback_id`` of instance ``workflow_id``, signed with
        the current key, with a fresh nonce (recorded by the caller: it is never made again)."""
        ring = self.ring
        payload = _b64(orjson.dumps({"w": workflow_id, "c": callback_id,
                                     "n": _b64(os.urandom(12))}))
        signed = f"{ring.current_id}.{payload}"
        return f"{signed}.{_b64(hmac.new(ring.current, signed.encode(), hashlib.sha256).digest())}"

    def legacy_token(self, workflow_id: str, callback_id: str) -> str:
        """The derived token of a callback recorded before tokens were recorded:
        ``<payload>.<signature>``, signed with the current key."""
        payload = _b64(orjson.dumps({"w": workflow_id, "c": callback_id}))
        digest = hmac.new(self.ring.current, payload.encode(), hashlib.sha256).digest()
        return f"{payload}.{_b64(digest)}"

    def verify(self, token: object) -> tuple[str, str]:
        """``(workflow_id, callback_id)`` of a genuine token.

        Raises:
            InvalidCallbackTokenError: the token is not a string, too long, not ASCII,
                malformed, or its signature does not match any key of the ring (forged,
                altered, signed with a key that left the ring or another deployment's).
        """
        if not isinstance(token, str):
            raise _rejected(f"a token is a string, got {type(token).__name__}")
        if len(token) > MAX_TOKEN_CHARS:
            raise _rejected(f"{len(token)} characters, more than any token has "
                            f"({MAX_TOKEN_CHARS} at most)")
        if not token.isascii():
            raise _rejected("it has characters no token has (tokens are ASCII base64url)")
        parts = token.split(".")
        if len(parts) not in (2, 3) or not all(_PART.fullmatch(p) for p in parts):
            raise _rejected("malformed (a token is <key id>.<payload>.<signature> in "
                            "base64url)")
        given = parts[-1].encode()
        if len(parts) == 3:
            kid, payload = parts[0], parts[1]
            key = self._key_for(kid)
            if key is None:
                raise _rejected(
                    f"it was signed with key {kid!r}, which is not in this deployment's key "
                    "ring (a key retired after a rotation, or another deployment's key)")
            signed = f"{kid}.{payload}".encode()
            good = hmac.compare_digest(
                given, _b64(hmac.new(key, signed, hashlib.sha256).digest()).encode())
        else:
            payload = parts[0]
            good = False
            for key in self.ring.keys.values():  # every key, whatever matches first
                good |= hmac.compare_digest(given, _b64(hmac.new(
                    key, payload.encode(), hashlib.sha256).digest()).encode())
        if not good:
            raise _rejected("its signature does not match (forged, altered, or issued by a "
                            "deployment with another callback key)")
        try:
            data = orjson.loads(_unb64(payload))
        except (binascii.Error, ValueError):
            raise _rejected("malformed payload") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("w"), str) or not (
                isinstance(data.get("c"), str)):
            raise _rejected("malformed payload")
        return data["w"], data["c"]

    def check_recorded(self, token: str, request: bytes, workflow_id: str) -> None:
        """Accept ``token`` (already verified) for a callback whose operation recorded
        ``request`` only if it is the token recorded there (compared in constant time);
        a callback recorded before tokens were recorded accepts any genuine token.

        Raises:
            InvalidCallbackTokenError: another token was recorded: the token was issued to
                an earlier run of an instance with the same id.
        """
        recorded = recorded_token(request)
        if recorded is not None and not hmac.compare_digest(recorded.encode(),
                                                            token.encode()):
            raise _rejected(f"it was issued to another run of instance {workflow_id!r} (an "
                            "earlier instance with the same id), not this one")


class Callback(Generic[T]):
    """A callback the workflow created: hand :attr:`token` to an external system, then
    ``await`` it for the value it completes the callback with.

    Raises (when awaited):
        CallbackFailedError: the external system failed it.
        CallbackTimeoutError: ``timeout`` passed first.
        CallbackHeartbeatTimeoutError: ``heartbeat_timeout`` passed without a heartbeat.
    """

    __slots__ = ("_on_reveal", "_start", "_task", "_token", "name")

    def __init__(self, name: str, token: str, start: Callable[[], Coroutine[Any, Any, T]],
                 on_reveal: Callable[[], None] | None = None) -> None:
        self.name = name
        self._token = token
        self._start = start
        self._task: asyncio.Task[T] | None = None
        self._on_reveal = on_reveal

    @property
    def token(self) -> str:
        """The callback's token. The first read of a new callback's token records the
        callback first, so a token that leaves the workflow is always the recorded one."""
        if self._on_reveal is not None:
            reveal, self._on_reveal = self._on_reveal, None
            reveal()
        return self._token

    def __await__(self) -> Generator[Any, None, T]:
        # One waiting task, made on the first await: a callback may be awaited many times
        # (directly, and through gather or wait).
        if self._task is None:
            import asyncio

            self._task = asyncio.ensure_future(self._start())
        return self._task.__await__()

    def __repr__(self) -> str:
        return f"<Callback {self.name!r}>"

