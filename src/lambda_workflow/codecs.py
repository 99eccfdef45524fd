"""Payload codecs: bytes to bytes, both ways, applied to every payload a deployment stores.

A codec turns a payload (a workflow's input, result or error; an operation's request or
result) into the bytes written to the state store (SQLite, memory, DynamoDB and the S3 objects
of large payloads) and back. :class:`PayloadCodec` wraps the deployment's codec in a short
envelope that names the codec that wrote the record, so a deployment may change its codec
while instances are in flight: records written before the change still decode, and a record of
a codec this deployment cannot read fails with :class:`UnknownCodecError` naming it.

The codecs here: :class:`IdentityCodec` (no change, no envelope: records are byte for byte
those of a deployment without a codec), :class:`ZlibCodec` (compression),
:class:`KmsCodec` (envelope encryption: AES-256-GCM under a data key from AWS KMS) and
:class:`ChainCodec` (several in turn, e.g. ``zlib+kms``). :func:`codec_from_spec` reads the
``LAMBDA_WORKFLOW_CODEC`` syntax. docs/codecs.md describes the formats.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import WorkflowError

__all__ = [
    "ENVELOPE_MAGIC",
    "ChainCodec",
    "Codec",
    "CodecError",
    "IdentityCodec",
    "KmsCodec",
    "PayloadCodec",
    "UnknownCodecError",
    "ZlibCodec",
    "codec_from_spec",
]

#: The first bytes of an enveloped record. A JSON text never starts with a NUL byte, so a
#: record without them is a plain payload (written by the identity codec, or before codecs).
ENVELOPE_MAGIC = b"\x00lwc"
_ENVELOPE_VERSION = 1
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")
#: The most a compressed record may expand to (a record is at most an S3 object, but a
#: tampered one must not exhaust the function's memory).
MAX_DECODED_BYTES = 256 * 1024 * 1024


class CodecError(WorkflowError, ValueError):
    """A record that does not decode: tampered, truncated, written half-way, encrypted under
    another key, or of a codec this deployment cannot read. The message names the codec and
    what is wrong, never the payload's content."""


class UnknownCodecError(CodecError, LookupError):
    """A record written by a codec this deployment does not know. ``codec`` is its id."""

    def __init__(self, codec: str, known: Iterable[str]) -> None:
        self.codec = codec
        self.known = sorted(known)
        super().__init__(
            f"record written by codec {codec!r}, which this deployment cannot read (it reads "
            f"{', '.join(self.known)}): configure it (LAMBDA_WORKFLOW_CODEC, "
            "LocalRuntime(codec=...)) or add it to the codec's readers")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.codec, self.known))


@runtime_checkable
class Codec(Protocol):
    """Bytes to bytes, both ways: ``decode(encode(data)) == data``.

    ``name`` is the short id written in each record's envelope (lower-case letters, digits,
    ``_``, ``-``, ``.``; ``+`` joins the names of a chain). ``decode`` raises
    :class:`CodecError` for bytes it did not write.
    """

    @property
    def name(self) -> str:
        """The codec's id in the envelope."""
        ...

    def encode(self, data: bytes) -> bytes:
        """The bytes to store for ``data``."""
        ...

    def decode(self, data: bytes) -> bytes:
        """The payload ``encode`` was given."""
        ...


class IdentityCodec:
    """No change. Records it writes carry no envelope."""

    name = "identity"

    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> bytes:
        return data


class ZlibCodec:
    """zlib compression (stdlib), ``level`` 1 (fastest) to 9 (smallest), default 6.
    Decoding refuses output over ``MAX_DECODED_BYTES`` (a tampered record cannot be a
    decompression bomb)."""

    name = "zlib"

    def __init__(self, level: int = 6) -> None:
        if not isinstance(level, int) or not 0 <= level <= 9:
            raise ValueError(f"zlib level must be an integer from 0 to 9, got {level!r}")
        self.level = level

    def encode(self, data: bytes) -> bytes:
        return zlib.compress(data, self.level)

    def decode(self, data: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, MAX_DECODED_BYTES)
        except zlib.error as exc:
            raise CodecError(f"zlib record does not decompress ({exc}): corrupted or "
                             "written half-way") from None
        if inflater.unconsumed_tail:
            raise CodecError(f"zlib record expands beyond {MAX_DECODED_BYTES} bytes: refused")
        if not inflater.eof or inflater.unused_data:
            raise CodecError("zlib record is truncated or has trailing bytes: corrupted or "
                             "written half-way")
        return out


class ChainCodec:
    """Several codecs in turn: ``encode`` applies them in order, ``decode`` in reverse (so
    ``ChainCodec(ZlibCodec(), kms)`` compresses, then encrypts)."""

    def __init__(self, *codecs: Codec) -> None:
        if not codecs:
            raise ValueError("a chain needs at least one codec")
        self.codecs = codecs
        self.name = "+".join(c.name for c in codecs)

    def encode(self, data: bytes) -> bytes:
        for codec in self.codecs:
            data = codec.encode(data)
        return data

    def decode(self, data: bytes) -> bytes:
        for codec in reversed(self.codecs):
            data = codec.decode(data)
        return data


# -- KMS envelope encryption -------------------------------------------------------------------
_KMS_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
#: KMS's encryption context of every data key: CloudTrail shows it, and a data key generated
#: for anything else does not decrypt here.
KMS_CONTEXT = {"lambda-workflow": "payload"}
_AAD = b"lambda-workflow kms v1"


class KmsCodec:
    """Envelope encryption: AES-256-GCM (``cryptography``) under a data key from AWS KMS.

    A record is ``version | len(encrypted data key) | encrypted data key | nonce |
    ciphertext and tag``: each record carries the data key KMS encrypted, so any function with
    ``kms:Decrypt`` on the key reads it, and the key that wrote it may differ from the one
    configured now (KMS finds the key from the encrypted data key). The tag covers the
    encrypted data key too: a tampered, truncated or swapped record fails to decode.

    Data keys: one ``GenerateDataKey`` serves this process's writes for ``max_age`` seconds
    (default 300) or ``max_uses`` records (default 2**20), whichever comes first; then a new
    one. A warm Lambda container thus calls KMS about once per five minutes instead of once
    per record, a plaintext data key lives in memory five minutes at most, and random 96-bit
    nonces stay far below AES-GCM's 2**32 messages per key. Decrypted data keys are cached
    (at most ``cache_size``, each for ``max_age`` seconds), so reading a history whose records
    share a data key costs one ``Decrypt``.

    Args:
        kms: A boto3 KMS client, or a function returning one (called on first use).
        key_id: The KMS key (ARN, id or alias) that encrypts new records; ``None`` makes a
            codec that only decrypts.
    """

    name = "kms"

    def __init__(self, kms: Any, key_id: str | None, *, max_age: float = 300.0,
                 max_uses: int = 2**20, cache_size: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kms = kms
        self.key_id = key_id
        self.max_age = max_age
        self.max_uses = max_uses
        self.cache_size = cache_size
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[bytes, bytes, float] | None = None  # plaintext, encrypted, born
        self._uses = 0
        self._plain: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.kms_calls = {"GenerateDataKey": 0, "Decrypt": 0}

    def _client(self) -> Any:
        if callable(self._kms) and not hasattr(self._kms, "generate_data_key"):
            self._kms = self._kms()
        return self._kms

    def _kms_error(self, action: str, exc: Exception) -> CodecError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        return CodecError(f"KMS {action} failed ({code}) for a record of codec 'kms' (key "
                          f"{self.key_id or 'named by the record'}): the function needs "
                          f"kms:{action} on the key, and the key must be enabled: {exc}")

    def _data_key(self) -> tuple[bytes, bytes]:
        now = self._clock()
        cur = self._current
        if cur is not None and self._uses < self.max_uses and now - cur[2] < self.max_age:
            self._uses += 1
            return cur[0], cur[1]
        if self.key_id is None:
            raise CodecError("this kms codec only decrypts: give it a key_id to encrypt")
        try:
            out = self._client().generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=KMS_CONTEXT)
        except Exception as exc:  # botocore's ClientError and connection errors
            raise self._kms_error("GenerateDataKey", exc) from exc
        self.kms_calls["GenerateDataKey"] += 1
        plain, encrypted = bytes(out["Plaintext"]), bytes(out["CiphertextBlob"])
        self._current, self._uses = (plain, encrypted, now), 1
        self._remember(encrypted, plain, now)
        return plain, encrypted

    def _remember(self, encrypted: bytes, plain: bytes, now: float) -> None:
        self._plain[encrypted] = (plain, now)
        self._plain.move_to_end(encrypted)
        while len(self._plain) > self.cache_size:
            self._plain.popitem(last=False)

    def _decrypt_key(self, encrypted: bytes) -> bytes:
        now = self._clock()
        hit = self._plain.get(encrypted)
        if hit is not None and now - hit[1] < self.max_age:
            self._plain.move_to_end(encrypted)
            return hit[0]
        try:
            out = self._client().decrypt(CiphertextBlob=encrypted,
                                         EncryptionContext=KMS_CONTEXT)
        except Exception as exc:
            raise self._kms_error("Decrypt", exc) from exc
        self.kms_calls["Decrypt"] += 1
        plain = bytes(out["Plaintext"])
        if len(plain) != 32:
            raise CodecError(f"KMS returned a {len(plain)}-byte data key for a 'kms' record; "
                             "AES-256 needs 32")
        self._remember(encrypted, plain, now)
        return plain

    def encode(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        with self._lock:
            plain, encrypted = self._data_key()
        header = struct.pack(">BH", _KMS_VERSION, len(encrypted)) + encrypted
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + AESGCM(plain).encrypt(nonce, data, _AAD + header)

    def decode(self, data: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(data) < 3:
            raise CodecError(f"kms record of {len(data)} bytes is truncated (written half-way "
                             "or corrupted)")
        version, size = struct.unpack_from(">BH", data)
        if version != _KMS_VERSION:
            raise CodecError(f"kms record has format version {version}; this version of "
                             f"lambda-workflow reads version {_KMS_VERSION}")
        end = 3 + size
        if len(data) < end + _NONCE_BYTES + _TAG_BYTES:
            raise CodecError(f"kms record of {len(data)} bytes is truncated (written half-way "
                             "or corrupted)")
        header, encrypted = data[:end], data[3:end]
        nonce, sealed = data[end:end + _NONCE_BYTES], data[end + _NONCE_BYTES:]
        with self._lock:
            plain = self._decrypt_key(encrypted)
        try:
            return AESGCM(plain).decrypt(nonce, sealed, _AAD + header)
        except InvalidTag:
            raise CodecError("kms record fails its AES-GCM authentication: tampered, "
                             "truncated, or its ciphertext and data key do not belong "
                             "together") from None


# -- the envelope ------------------------------------------------------------------------------
def _check_name(name: str) -> None:
    parts = name.split("+")
    if not name or len(name) > 255 or any(not p or set(p) - _NAME_CHARS for p in parts):
        raise ValueError(f"codec name {name!r} must be 1 to 255 characters of a-z, 0-9, _, "
                         "-, . (with + between the names of a chain)")


class PayloadCodec:
    """A deployment's codec: ``writer`` encodes every new record, inside an envelope naming
    it; ``decode`` reads any record whose codec (or, for a chain, each of its codecs) is
    among the writer's, ``readers``, identity and zlib.

    A record without the envelope is a plain payload (the identity codec writes none, and
    nothing had one before codecs). The identity writer envelopes only a payload that happens
    to start with :data:`ENVELOPE_MAGIC`.

    Raises (``decode``):
        UnknownCodecError: the record's codec is not one of those.
        CodecError: the record is truncated, tampered or does not decode.
    """

    def __init__(self, writer: Codec | None = None, readers: Sequence[Codec] = ()) -> None:
        self.writer: Codec = writer if writer is not None else IdentityCodec()
        _check_name(self.writer.name)
        self._header = (ENVELOPE_MAGIC + bytes([_ENVELOPE_VERSION, len(self.writer.name)])
                        + self.writer.name.encode())
        self._plain = isinstance(self.writer, IdentityCodec)
        self._by_name: dict[str, Codec] = {"identity": IdentityCodec(), "zlib": ZlibCodec()}
        for codec in (*readers, *_parts(self.writer)):
            _check_name(codec.name)
            self._by_name[codec.name] = codec

    @property
    def name(self) -> str:
        """The writer's name (what new records say)."""
        return self.writer.name

    @property
    def readable(self) -> frozenset[str]:
        """The names of the codecs this one decodes (a chain of any of them too)."""
        return frozenset(self._by_name)

    def encode(self, data: bytes) -> bytes:
        """``data`` as stored: unchanged for the identity writer, else enveloped."""
        if self._plain and not data.startswith(ENVELOPE_MAGIC):
            return data
        return self._header + self.writer.encode(data)

    def encode_optional(self, data: bytes | None) -> bytes | None:
        """:meth:`encode`, passing ``None`` through."""
        return None if data is None else self.encode(data)

    def codec_of(self, record: bytes) -> str:
        """The name of the codec that wrote ``record`` (``identity`` without an envelope)."""
        return self._parse(record)[0]

    def _parse(self, record: bytes) -> tuple[str, int]:
        if not record.startswith(ENVELOPE_MAGIC):
            return "identity", 0
        start = len(ENVELOPE_MAGIC)
        if len(record) < start + 2:
            raise CodecError(f"record of {len(record)} bytes has a truncated codec envelope "
                             "(written half-way or corrupted)")
        version, size = record[start], record[start + 1]
        if version != _ENVELOPE_VERSION:
            raise CodecError(f"record has codec envelope version {version}; this version of "
                             f"lambda-workflow reads version {_ENVELOPE_VERSION}")
        end = start + 2 + size
        try:
            name = record[start + 2:end].decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if len(record) < end or not name:
            raise CodecError("record has a truncated or malformed codec envelope (written "
                             "half-way or corrupted)")
        return name, end

    def decode(self, record: bytes) -> bytes:
        """The payload a record holds."""
        name, end = self._parse(record)
        if end == 0:
            return record
        codecs = [self._by_name.get(part) for part in name.split("+")]
        if any(c is None for c in codecs):
            raise UnknownCodecError(name, self._by_name)
        data = record[end:]
        for codec in reversed(codecs):
            assert codec is not None
            data = codec.decode(data)
        return data

    def decode_optional(self, record: bytes | None) -> bytes | None:
        """:meth:`decode`, passing ``None`` through."""
        return None if record is None else self.decode(record)


def _parts(codec: Codec) -> tuple[Codec, ...]:
    if isinstance(codec, ChainCodec):
        return tuple(p for c in codec.codecs for p in _parts(c))
    return (codec,)


def codec_from_spec(spec: str, kms: Any = None) -> PayloadCodec:
    """The codec ``spec`` names: ``identity`` (or empty), ``zlib``, ``zlib:<level>``,
    ``kms:<key>`` (a KMS key ARN, id or alias), or several joined by ``+`` in the order they
    apply (``zlib+kms:<key arn>``: compress, then encrypt). ``kms`` is the KMS client (or a
    function returning one) for ``kms:``; when it is given the codec also reads ``kms``
    records of any key (KMS names the key), so a deployment that stops encrypting still reads
    what it encrypted.

    Raises:
        ValueError: names every problem of the spec.
    """
    parts: list[Codec] = []
    problems: list[str] = []
    for raw in (spec or "identity").split("+"):
        word, _, arg = raw.strip().partition(":")
        if word == "identity" and not arg:
            continue
        if word == "zlib":
            try:
                parts.append(ZlibCodec(int(arg)) if arg else ZlibCodec())
            except ValueError:
                problems.append(f"zlib level {arg!r} is not an integer from 0 to 9")
        elif word == "kms":
            if not arg:
                problems.append("kms needs a key: kms:<key ARN, id or alias>")
            elif kms is None:
                problems.append("kms needs a KMS client (none was given)")
            elif importlib.util.find_spec("cryptography") is None:
                problems.append("kms needs the cryptography package: pip install "
                                "'lambda-workflow[kms]' (and add cryptography to the "
                                "functions' requirements)")
            else:
                parts.append(KmsCodec(kms, arg))
        else:
            problems.append(f"unknown codec {raw.strip()!r} (codecs: identity, zlib, "
                            "zlib:<level>, kms:<key arn>)")
    if problems:
        raise ValueError(f"codec {spec!r}: " + "; ".join(problems))
    writer: Codec | None = (None if not parts else parts[0] if len(parts) == 1
                            else ChainCodec(*parts))
    readers: list[Codec] = []
    if kms is not None and not any(isinstance(p, KmsCodec) for p in parts):
        readers.append(KmsCodec(kms, None))
    return PayloadCodec(writer, readers)
