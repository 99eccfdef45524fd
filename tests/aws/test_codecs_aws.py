"""Payload codecs on AWS, against moto's server over HTTP (docs/codecs.md): KMS envelope
encryption (data keys, caching, tampering, keys), DynamoDB items and S3 payloads that hold no
plaintext, LAMBDA_WORKFLOW_CODEC, and a workflow end to end with zlib+kms."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from typing import Any

import orjson
import pytest
from backends.contract import StateStoreContract, StoreFactory

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.aws import AwsDeployment, WorkflowClient, service_handler, workflow_handler
from lambda_workflow.aws.config import AwsConfig, ConfigurationError
from lambda_workflow.aws.dynamodb import DynamoDBStateStore
from lambda_workflow.aws.payloads import S3PayloadStore
from lambda_workflow.aws.sqs import ENCODED_BODY_PREFIX, decode_body, resolve_body
from lambda_workflow.backends.protocols import StateStore
from lambda_workflow.codecs import (
    ENVELOPE_MAGIC,
    ChainCodec,
    CodecError,
    KmsCodec,
    PayloadCodec,
    UnknownCodecError,
    ZlibCodec,
    codec_from_spec,
)
from lambda_workflow.models import InstanceRecord, OperationRecord

from .conftest import Aws
from .harness import EventSourceMapping, drain

SECRET = b'{"card":"4111-1111-1111-1111","amount":50}'


def _key(aws: Aws) -> str:
    return str(aws.client("kms").create_key(Description="payloads")["KeyMetadata"]["Arn"])


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- the KMS codec ---------------------------------------------------------------------------
def test_kms_round_trip_with_one_data_key_per_five_minutes(aws: Aws) -> None:
    """100 records cost one GenerateDataKey; another process reads all 100 with one Decrypt;
    after max_age a new data key is generated."""
    clock = Clock()
    writer = KmsCodec(aws.client("kms"), _key(aws), clock=clock)
    records = [PayloadCodec(writer).encode(SECRET + b" %d" % i) for i in range(100)]
    assert writer.kms_calls == {"GenerateDataKey": 1, "Decrypt": 0}
    assert aws.requests["kms.GenerateDataKey"] == 1
    assert all(SECRET not in r and r.startswith(ENVELOPE_MAGIC) for r in records)
    assert len(set(records)) == 100  # a fresh nonce each time
    reader = KmsCodec(aws.client("kms"), None)
    codec = PayloadCodec(readers=[reader])
    assert [codec.decode(r) for r in records] == [SECRET + b" %d" % i for i in range(100)]
    assert reader.kms_calls == {"GenerateDataKey": 0, "Decrypt": 1}
    clock.now = 301.0
    later = PayloadCodec(writer).encode(SECRET)
    assert writer.kms_calls["GenerateDataKey"] == 2
    assert codec.decode(later) == SECRET
    assert reader.kms_calls["Decrypt"] == 2


def test_max_uses_bounds_a_data_key(aws: Aws) -> None:
    writer = KmsCodec(aws.client("kms"), _key(aws), max_uses=3)
    for _ in range(7):
        writer.encode(SECRET)
    assert writer.kms_calls["GenerateDataKey"] == 3


def test_a_tampered_or_truncated_kms_record_fails_clearly(aws: Aws) -> None:
    codec = codec_from_spec(f"kms:{_key(aws)}", kms=aws.client("kms"))
    stored = codec.encode(SECRET)
    flipped = bytearray(stored)
    flipped[-20] ^= 0x01
    with pytest.raises(CodecError, match="authentication"):
        codec.decode(bytes(flipped))
    with pytest.raises(CodecError, match="authentication"):
        codec.decode(stored[:-1])  # written half-way: the tag is cut
    with pytest.raises(CodecError, match="truncated"):
        codec.decode(stored[:len(ENVELOPE_MAGIC) + 2 + 3 + 20])
    assert codec.decode(stored) == SECRET


def test_a_ciphertext_moved_under_another_data_key_fails(aws: Aws) -> None:
    """Two records under two data keys: one's encrypted data key with the other's
    ciphertext does not decrypt (the tag covers the encrypted data key)."""
    key = _key(aws)
    first = KmsCodec(aws.client("kms"), key).encode(SECRET)
    second = KmsCodec(aws.client("kms"), key).encode(b'{"card":"other"}')
    size = 3 + int.from_bytes(first[1:3], "big")
    mixed = first[:size] + second[size:]
    with pytest.raises(CodecError, match="authentication"):
        KmsCodec(aws.client("kms"), None).decode(mixed)


def test_a_record_under_another_key_reads_after_a_key_change(aws: Aws) -> None:
    """KMS names the key from the encrypted data key: after a change of key the records of
    the old key still decode; an encrypted data key KMS does not recognise fails naming
    KMS's error."""
    kms = aws.client("kms")
    old, new = _key(aws), _key(aws)
    stored = codec_from_spec(f"kms:{old}", kms=kms).encode(SECRET)
    assert codec_from_spec(f"kms:{new}", kms=kms).decode(stored) == SECRET
    body = bytearray(stored[len(ENVELOPE_MAGIC) + 2 + len("kms"):])
    body[3:20] = bytes(17)  # the encrypted data key's start: no longer a KMS ciphertext
    bad = stored[:len(ENVELOPE_MAGIC) + 2 + len("kms")] + bytes(body)
    with pytest.raises(CodecError, match=r"KMS Decrypt failed \(\w+\)"):
        codec_from_spec(f"kms:{new}", kms=kms).decode(bad)


def test_a_data_key_from_another_encryption_context_is_refused(aws: Aws) -> None:
    """A data key KMS generated for something else (another context) does not decrypt as a
    payload key, so an attacker cannot plant one of their own data keys."""
    kms = aws.client("kms")
    key = _key(aws)
    stored = KmsCodec(kms, key).encode(SECRET)
    foreign = kms.generate_data_key(KeyId=key, KeySpec="AES_256")["CiphertextBlob"]
    planted = bytes([1]) + len(foreign).to_bytes(2, "big") + foreign
    size = 3 + int.from_bytes(stored[1:3], "big")
    with pytest.raises(CodecError, match="KMS Decrypt failed"):
        KmsCodec(kms, None).decode(planted + stored[size:])


def test_generate_data_key_failure_names_the_key(aws: Aws) -> None:
    """A key that does not exist (or that the role may not use) fails the write naming the
    key and KMS's error."""
    kms = aws.client("kms")
    key = _key(aws)[:-12] + "000000000000"
    with pytest.raises(CodecError, match=r"GenerateDataKey failed \(NotFoundException\)"
                                         r".*000000000000"):
        KmsCodec(kms, key).encode(SECRET)


# -- the stores ------------------------------------------------------------------------------
class TestDynamoDBStoreWithZlibKms(StateStoreContract):
    """The StateStore contract holds with zlib+kms, payloads inline and in S3."""

    @pytest.fixture
    def make_store(self, aws: Aws) -> StoreFactory:
        key = _key(aws)
        bucket = aws.create_bucket()

        def make() -> StateStore:
            codec = codec_from_spec(f"zlib+kms:{key}", kms=aws.client("kms"))
            return DynamoDBStateStore(
                aws.client("dynamodb"), aws.create_table(),
                payloads=S3PayloadStore(aws.client("s3"), bucket),
                payload_threshold=1024, codec=codec)

        return make


def test_items_and_s3_objects_hold_no_plaintext(aws: Aws) -> None:
    """A small input inline and a large request in S3, both enveloped by the codec; a store
    with another codec still reads them."""
    kms = aws.client("kms")
    bucket, table = aws.create_bucket(), aws.create_table()
    payloads = S3PayloadStore(aws.client("s3"), bucket)
    store = DynamoDBStateStore(aws.client("dynamodb"), table, payloads=payloads,
                               payload_threshold=1024,
                               codec=codec_from_spec(f"kms:{_key(aws)}", kms=kms))
    big = b'{"rows":"' + b"4111-1111 " * 500 + b'"}'
    store.create_instance(InstanceRecord("w-1", "flow", SECRET, "d", created_at=1.0),
                          [OperationRecord("w-1", "1", 0, "call", "svc", big, "d1")])
    ddb, s3 = aws.client("dynamodb"), aws.client("s3")
    items = ddb.scan(TableName=table)["Items"]
    inst = next(i for i in items if i["sk"]["S"] == "#instance")
    assert inst["input"]["B"].startswith(ENVELOPE_MAGIC) and b"4111" not in inst["input"]["B"]
    op = next(i for i in items if i["sk"]["S"] == "op#1")
    assert "request" not in op
    obj = s3.get_object(Bucket=bucket, Key=op["request_s3"]["S"])["Body"].read()
    assert obj.startswith(ENVELOPE_MAGIC) and b"4111" not in obj
    reader = DynamoDBStateStore(aws.client("dynamodb"), table, payloads=payloads,
                                codec=codec_from_spec("zlib", kms=kms))
    history = reader.load_history("w-1")
    assert history is not None
    assert history.instance.input == SECRET and history.operations[0].request == big
    # Without KMS the record's codec is named.
    with pytest.raises(UnknownCodecError, match="'kms'"):
        DynamoDBStateStore(aws.client("dynamodb"), table, payloads=payloads,
                           codec=PayloadCodec(ZlibCodec())).load_history("w-1")


def test_a_tampered_item_fails_naming_the_record(aws: Aws) -> None:
    kms = aws.client("kms")
    table = aws.create_table()
    store = DynamoDBStateStore(aws.client("dynamodb"), table,
                               codec=codec_from_spec(f"kms:{_key(aws)}", kms=kms))
    store.create_instance(InstanceRecord("w-2", "flow", SECRET, "d", created_at=1.0))
    ddb = aws.client("dynamodb")
    key = {"pk": {"S": "wf#w-2"}, "sk": {"S": "#instance"}}
    stored = ddb.get_item(TableName=table, Key=key)["Item"]["input"]["B"]
    ddb.update_item(TableName=table, Key=key, UpdateExpression="SET #i = :v",
                    ExpressionAttributeNames={"#i": "input"},
                    ExpressionAttributeValues={":v": {"B": stored[:-3] + b"xyz"}})
    fresh = DynamoDBStateStore(aws.client("dynamodb"), table,
                               codec=codec_from_spec(f"kms:{_key(aws)}", kms=kms))
    with pytest.raises(CodecError, match="the input of workflow 'w-2': kms record fails"):
        fresh.load_history("w-2")


# -- configuration ---------------------------------------------------------------------------
def test_lambda_workflow_codec_is_read_and_checked(aws: Aws) -> None:
    env = {"LAMBDA_WORKFLOW_TABLE": "t", "LAMBDA_WORKFLOW_QUEUE_URL": "https://q/w.fifo"}
    assert AwsConfig.from_env(env).codec == "identity"
    config = AwsConfig.from_env({**env, "LAMBDA_WORKFLOW_CODEC": "zlib+kms:alias/payloads"})
    assert config.codec == "zlib+kms:alias/payloads"
    assert AwsDeployment(config, session=aws.session).codec.name == "zlib+kms"
    with pytest.raises(ConfigurationError) as info:
        AwsConfig.from_env({**env, "LAMBDA_WORKFLOW_CODEC": "gzip",
                            "LAMBDA_WORKFLOW_RETENTION_DAYS": "x"})
    assert len(info.value.problems) == 2
    assert any("unknown codec 'gzip'" in p and "LAMBDA_WORKFLOW_CODEC" in p
               for p in info.value.problems)


# -- end to end ------------------------------------------------------------------------------
add = Service("add", list[int], int)


async def _add(xs: list[int]) -> int:
    return sum(xs)


@workflow
async def summed(ctx: WorkflowContext[list[int]]) -> str:
    total = await ctx.call(add, ctx.request)
    doubled = await ctx.step(lambda_double, total)
    return f"total {doubled}"


def lambda_double(n: int) -> int:
    return 2 * n


def _records(aws: Aws, table: str) -> list[bytes]:
    items = aws.client("dynamodb").scan(TableName=table)["Items"]
    return [v["B"] for item in items for v in item.values() if "B" in v]


def test_a_workflow_end_to_end_with_zlib_kms_then_zlib(aws: Aws) -> None:
    """A deployment encrypting with zlib+kms runs a workflow through its functions; every
    payload in the table names zlib+kms; the deployment then switches to zlib with the first
    instance's records still there, reads them, and runs a second instance."""
    key = _key(aws)
    base = aws.config(services={"add": f"sqs:{aws.create_queue(aws.name('add'))}"})
    sqs = aws.client("sqs")

    def run(config: AwsConfig, workflow_id: str, numbers: list[int]) -> Any:
        deployment = AwsDeployment(config, session=aws.session)
        pollers = [
            EventSourceMapping(sqs, config.queue_url,
                               workflow_handler(summed, deployment=deployment)),
            EventSourceMapping(sqs, config.services["add"].address,
                               service_handler(add, _add, deployment=deployment)),
        ]
        client = WorkflowClient(config, session=aws.session)
        handle = client.start(summed, numbers, workflow_id=workflow_id)
        drain(pollers)
        return client, handle

    encrypted = replace(base, codec=f"zlib+kms:{key}")
    client, handle = run(encrypted, "sum-1", [4111, 1111])
    assert handle.result() == "total 10444"
    stored = _records(aws, base.table)
    assert stored and {PayloadCodec().codec_of(r) for r in stored} == {"zlib+kms"}
    assert not any(b"4111" in r for r in stored)
    assert aws.requests["kms.GenerateDataKey"] >= 1

    compressed = replace(base, codec="zlib")
    client, handle = run(compressed, "sum-2", [1, 2])
    assert handle.result() == "total 6"
    assert client.result("sum-1", summed) == "total 10444"
    assert {PayloadCodec().codec_of(r) for r in _records(aws, base.table)} == {
        "zlib+kms", "zlib"}


def test_chain_of_zlib_and_kms_compresses_before_encrypting(aws: Aws) -> None:
    kms = aws.client("kms")
    key = _key(aws)
    text = b'{"memo":"' + b"a" * 4000 + b'"}'
    both = PayloadCodec(ChainCodec(ZlibCodec(), KmsCodec(kms, key))).encode(text)
    alone = PayloadCodec(KmsCodec(kms, key)).encode(text)
    assert len(both) < 400 < len(alone)


# -- queue messages --------------------------------------------------------------------------
def test_queue_bodies_are_encoded_and_read_back(aws: Aws) -> None:
    """Under a codec, a message to a workflow and a request to a service (SQS and Lambda
    targets) carry the codec's envelope in base64, large ones through S3 too; receivers
    decode them, and plain JSON bodies (services built without this SDK) still read."""
    bucket = aws.create_bucket()
    fn = aws.create_function()
    config = replace(aws.config(services={"svc": f"sqs:{aws.create_queue(aws.name('s'))}",
                                          "fn": f"lambda:{fn}"}, bucket=bucket),
                     codec=f"zlib+kms:{_key(aws)}", payload_threshold=1024)
    deployment = AwsDeployment(config, session=aws.session)
    transport, codec, sqs = deployment.transport, deployment.codec, aws.client("sqs")
    small = b'{"v":1,"kind":"cancel","workflow_id":"q-1","card":"4111"}'
    large = b'{"rows":"' + os.urandom(3000).hex().encode() + b'4111"}'  # incompressible
    transport.send_to_workflow("q-1", "d1", small)
    transport.send_to_workflow("q-1", "d2", large)
    transport.send_to_service("svc", "d3", small)
    transport.send_to_service("fn", "d4", small)
    got = sqs.receive_message(QueueUrl=config.queue_url, MaxNumberOfMessages=10,
                              MessageAttributeNames=["All"])["Messages"]
    got += sqs.receive_message(QueueUrl=config.services["svc"].address,
                               MessageAttributeNames=["All"])["Messages"]
    bodies = [m["Body"] for m in got]
    assert len(bodies) == 3
    assert bodies[0].encode().startswith(ENCODED_BODY_PREFIX) and "4111" not in bodies[0]
    assert "PayloadS3Pointer" in bodies[1]  # offloaded: the S3 object is the encoded body
    key = bodies[1].split('"s3Key":"')[1].split('"')[0]
    obj = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert obj.startswith(ENCODED_BODY_PREFIX) and b"4111" not in obj
    decoded = [resolve_body(m["Body"], {k: {"stringValue": v.get("StringValue"),
                                            "dataType": v["DataType"]}
                                        for k, v in m.get("MessageAttributes", {}).items()},
                            deployment.payloads, codec) for m in got]
    assert decoded == [small, large, small]
    ((name, event),) = aws.invocations.take()
    assert name == fn and event.startswith(b'"' + ENCODED_BODY_PREFIX)
    assert decode_body(event[1:-1], codec) == small
    assert decode_body(small, codec) == small  # plain JSON is read as it is


def test_an_encoded_request_reaches_a_lambda_service(aws: Aws) -> None:
    """A service function invoked asynchronously with an encoded request (a JSON string
    event) decodes it, runs and replies through the codec."""
    fn = aws.create_function()
    config = replace(aws.config(services={"add": f"lambda:{fn}"}), codec="zlib")
    deployment = AwsDeployment(config, session=aws.session)
    body = (b'{"v":1,"kind":"call","workflow_id":"l-1","call_id":"1","service":"add",'
            b'"reply_to":"' + config.queue_url.encode() + b'","request":[40,2]}')
    deployment.transport.send_to_service("add", "d", body)
    ((_, event),) = aws.invocations.take()
    service_handler(add, _add, deployment=deployment)(orjson.loads(event), None)
    (reply,) = aws.client("sqs").receive_message(QueueUrl=config.queue_url)["Messages"]
    assert PayloadCodec().codec_of(base64.b64decode(reply["Body"])) == "zlib"
    assert orjson.loads(decode_body(reply["Body"].encode(), deployment.codec))["value"] == 42


# -- the template ----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
def test_the_bank_stack_with_a_kms_key_runs_encrypted(aws: Aws,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/template.yaml with KmsKeyArn set, on moto's CloudFormation: every function
    reads LAMBDA_WORKFLOW_CODEC zlib+kms:<key>, the key policy attaches to the roles that
    read or write payloads (not the timer's nor the plain service's), the workflow function
    sends the plain service plain JSON, and a transaction completes with every workflow
    record in the table encrypted."""
    import bank_transaction as bank
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    from .harness import AsyncInvoker
    from .test_template_generator import (
        BANK_TEMPLATE,
        ROOT,
        _deploy,
        _run_until_done,
        translate,
    )

    monkeypatch.setattr(bank, "BALANCES", dict(bank.BALANCES))
    key = _key(aws)
    sam = yaml_parse(BANK_TEMPLATE.read_text(encoding="utf-8"))
    cfn = translate(sam, parameters={"KmsKeyArn": key})
    policy = cfn["Resources"]["PayloadKeyPolicy"]
    assert policy["Condition"] == "HasKmsKey"
    assert sorted(r["Ref"] for r in policy["Properties"]["Roles"]) == [
        "BalanceRole", "ClientRole", "FraudRole", "WorkflowRole"]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert statement["Resource"] == {"Ref": "KmsKeyArn"}
    examples = ROOT / "examples"
    deployed = _deploy(aws, sam, "bankkms", {f"{m}.py": examples / f"{m}.py" for m in (
        "bank_lambda", "bank_transaction", "plain_transaction_service")}, {"KmsKeyArn": key})
    for env in deployed.environments.values():
        assert env["LAMBDA_WORKFLOW_CODEC"] == f"zlib+kms:{key}"
    assert deployed.environments["WorkflowFunctionName"][
        "LAMBDA_WORKFLOW_PLAIN_SERVICES"] == "transaction"
    outputs = deployed.outputs
    client = WorkflowClient(AwsConfig(
        table=outputs["TableName"], queue_url=outputs["WorkflowQueueUrl"],
        bucket=outputs["PayloadBucketName"], endpoint_url=aws.endpoint, region="us-east-1",
        codec=f"zlib+kms:{key}"), session=aws.session)
    handle = client.start(bank.make_transaction,
                          bank.BankTransaction(account_id="alice", amount=30),
                          workflow_id="tx-kms")
    _run_until_done([*deployed.pollers, AsyncInvoker(aws.invocations,
                                                     deployed.async_functions)], handle)
    assert handle.result() == "success"
    items = aws.client("dynamodb").scan(TableName=outputs["TableName"])["Items"]
    ours = [v["B"] for i in items if not i["pk"]["S"].startswith("svc#transaction#")
            for v in i.values() if "B" in v]
    assert len(ours) >= 6
    assert {PayloadCodec().codec_of(r) for r in ours} == {"zlib+kms"}
    assert deployed.modules["TransactionFunctionName"].LEDGER == [
        {"account_id": "alice", "amount": 30}]


def test_a_body_that_looks_encoded_but_is_not_base64_is_invalid() -> None:
    """Dead-lettered at once with the reason (InvalidMessageError), never retried."""
    from lambda_workflow.errors import InvalidMessageError

    with pytest.raises(InvalidMessageError, match="not base64"):
        decode_body(ENCODED_BODY_PREFIX + b"!!! not base64", PayloadCodec())
