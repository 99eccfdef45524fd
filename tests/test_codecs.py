"""Payload codecs (docs/codecs.md): the envelope, identity, zlib, chains, the spec syntax,
and what a tampered, truncated or unknown record does. KMS is tested against moto's server in
tests/aws/test_codecs_aws.py."""

from __future__ import annotations

import zlib

import orjson
import pytest

from lambda_workflow.codecs import (
    ENVELOPE_MAGIC,
    ChainCodec,
    Codec,
    CodecError,
    IdentityCodec,
    KmsCodec,
    PayloadCodec,
    UnknownCodecError,
    ZlibCodec,
    codec_from_spec,
)

PAYLOAD = orjson.dumps({"account_id": "alice", "amount": 50, "memo": "x" * 500})


class Reverse:
    """A codec of the test's own: reverses the bytes."""

    name = "reverse"

    def encode(self, data: bytes) -> bytes:
        return data[::-1]

    def decode(self, data: bytes) -> bytes:
        return data[::-1]


def test_identity_writes_records_unchanged_and_without_envelope() -> None:
    codec = PayloadCodec()
    assert codec.encode(PAYLOAD) == PAYLOAD
    assert codec.decode(PAYLOAD) == PAYLOAD
    assert codec.codec_of(PAYLOAD) == "identity"
    assert codec.encode(b"") == b""


def test_identity_envelopes_a_payload_that_looks_like_an_envelope() -> None:
    """A (custom-serialized) payload that happens to start with the magic bytes is wrapped,
    so it cannot be read as another codec's record."""
    tricky = ENVELOPE_MAGIC + b"\x01\x04zlibnot zlib"
    codec = PayloadCodec()
    stored = codec.encode(tricky)
    assert stored != tricky
    assert codec.codec_of(stored) == "identity"
    assert codec.decode(stored) == tricky


def test_zlib_round_trip_names_the_codec_and_shrinks() -> None:
    codec = PayloadCodec(ZlibCodec())
    stored = codec.encode(PAYLOAD)
    assert stored.startswith(ENVELOPE_MAGIC)
    assert codec.codec_of(stored) == "zlib"
    assert len(stored) < len(PAYLOAD)
    assert codec.decode(stored) == PAYLOAD


def test_every_codec_reads_plain_and_zlib_records() -> None:
    """A deployment that changes codec with instances in flight reads what it wrote before:
    plain records (identity, or before codecs) and zlib records, whatever it writes now."""
    old_zlib = PayloadCodec(ZlibCodec()).encode(PAYLOAD)
    for now in (PayloadCodec(), PayloadCodec(Reverse()), PayloadCodec(ZlibCodec(9))):
        assert now.decode(PAYLOAD) == PAYLOAD
        assert now.decode(old_zlib) == PAYLOAD


def test_a_chain_applies_in_order_and_decodes_in_reverse() -> None:
    chain = ChainCodec(ZlibCodec(), Reverse())
    assert chain.name == "zlib+reverse"
    codec = PayloadCodec(chain)
    stored = codec.encode(PAYLOAD)
    assert codec.codec_of(stored) == "zlib+reverse"
    body = stored[len(ENVELOPE_MAGIC) + 2 + len("zlib+reverse"):]
    assert zlib.decompress(body[::-1]) == PAYLOAD
    assert codec.decode(stored) == PAYLOAD
    # A reader that knows the chain's parts reads it, though it writes something else.
    assert PayloadCodec(readers=[Reverse()]).decode(stored) == PAYLOAD


def test_a_record_of_an_unknown_codec_fails_naming_it() -> None:
    stored = PayloadCodec(Reverse()).encode(PAYLOAD)
    with pytest.raises(UnknownCodecError, match="'reverse'") as info:
        PayloadCodec(ZlibCodec()).decode(stored)
    assert info.value.codec == "reverse"
    assert "identity, zlib" in str(info.value)
    # A chain with one unknown part is named whole.
    chained = PayloadCodec(ChainCodec(ZlibCodec(), Reverse())).encode(PAYLOAD)
    with pytest.raises(UnknownCodecError, match="'zlib\\+reverse'"):
        PayloadCodec().decode(chained)


@pytest.mark.parametrize("cut", [len(ENVELOPE_MAGIC), len(ENVELOPE_MAGIC) + 1,
                                 len(ENVELOPE_MAGIC) + 3])
def test_a_truncated_envelope_is_a_clear_error(cut: int) -> None:
    stored = PayloadCodec(ZlibCodec()).encode(PAYLOAD)
    with pytest.raises(CodecError, match="truncated"):
        PayloadCodec().decode(stored[:cut])


def test_an_envelope_of_a_later_version_is_refused() -> None:
    stored = bytearray(PayloadCodec(ZlibCodec()).encode(PAYLOAD))
    stored[len(ENVELOPE_MAGIC)] = 7
    with pytest.raises(CodecError, match="envelope version 7"):
        PayloadCodec().decode(bytes(stored))


def test_a_zlib_record_written_half_way_or_altered_fails_clearly() -> None:
    codec = PayloadCodec(ZlibCodec())
    stored = codec.encode(PAYLOAD)
    with pytest.raises(CodecError, match="zlib record"):
        codec.decode(stored[:-5])
    altered = bytearray(stored)
    altered[-10] ^= 0xFF
    with pytest.raises(CodecError, match="zlib"):
        codec.decode(bytes(altered))
    with pytest.raises(CodecError, match="trailing"):
        codec.decode(stored + b"extra")


def test_zlib_refuses_a_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    import lambda_workflow.codecs as codecs

    monkeypatch.setattr(codecs, "MAX_DECODED_BYTES", 1000)
    stored = PayloadCodec(ZlibCodec()).encode(b"\0" * 5000)
    with pytest.raises(CodecError, match="beyond 1000 bytes"):
        PayloadCodec().decode(stored)


def test_kms_records_need_a_kms_reader() -> None:
    """A kms record read where no KMS client is configured fails naming the codec."""
    stored = ENVELOPE_MAGIC + b"\x01\x03kms" + b"\x01\x00\x00"
    with pytest.raises(UnknownCodecError, match="'kms'"):
        codec_from_spec("zlib").decode(stored)


def test_spec_syntax() -> None:
    assert codec_from_spec("").name == "identity"
    assert codec_from_spec("identity").name == "identity"
    assert codec_from_spec("zlib").name == "zlib"
    zlib9 = codec_from_spec("zlib:9").writer
    assert isinstance(zlib9, ZlibCodec) and zlib9.level == 9
    spec = "zlib+kms:arn:aws:kms:us-east-1:123456789012:key/abc"
    codec = codec_from_spec(spec, kms=object())
    assert codec.name == "zlib+kms"
    assert isinstance(codec.writer, ChainCodec)
    kms = codec.writer.codecs[1]
    assert isinstance(kms, KmsCodec) and kms.key_id == "arn:aws:kms:us-east-1:123456789012:key/abc"
    # With a KMS client, a codec that does not encrypt still reads kms records.
    assert "kms" in codec_from_spec("zlib", kms=object()).readable
    assert "kms" not in codec_from_spec("zlib").readable


def test_spec_problems_are_named_together() -> None:
    with pytest.raises(ValueError) as info:
        codec_from_spec("gzip+zlib:11+kms")
    message = str(info.value)
    assert "unknown codec 'gzip'" in message
    assert "zlib level '11'" in message
    assert "kms needs a key" in message
    with pytest.raises(ValueError, match="needs a KMS client"):
        codec_from_spec("kms:alias/payloads")


def test_codec_names_are_checked() -> None:
    class Bad(Reverse):
        name = "Bad Name"

    with pytest.raises(ValueError, match="'Bad Name'"):
        PayloadCodec(Bad())


def test_the_protocol_is_runtime_checkable() -> None:
    for codec in (IdentityCodec(), ZlibCodec(), Reverse(), ChainCodec(Reverse())):
        assert isinstance(codec, Codec)
    assert not isinstance(object(), Codec)


def test_kms_without_cryptography_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cryptography" else real(name, *a))
    with pytest.raises(ValueError, match=r"lambda-workflow\[kms\]"):
        codec_from_spec("kms:alias/payloads", kms=object())
