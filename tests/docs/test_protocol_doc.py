"""docs/protocol.md cannot drift from the code: its JSON examples parse with the real parsers,
its worked example is what the runtime sends, and its shell recipe computes real ids."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shlex
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import (
    Service,
    ServiceError,
    WorkflowContext,
    WorkflowFailedError,
    workflow,
)
from lambda_workflow._core import dedup_id
from lambda_workflow.backends.protocols import Transport
from lambda_workflow.errors import InvalidMessageError
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import (
    CallbackCompletedMessage,
    CallRequestMessage,
    CallResultMessage,
    WorkflowMessage,
    parse_call_request,
    parse_workflow_message,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
_FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks(lang: str) -> list[tuple[int, str]]:
    """The fenced blocks of the given language, with the line each starts on."""
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m["body"])
            for m in _FENCE.finditer(text) if m["lang"] == lang]


def parse_any(body: str) -> WorkflowMessage | CallRequestMessage:
    """Parse a message with the parser of the queue it travels on."""
    data = orjson.loads(body)
    if isinstance(data, dict) and data.get("kind") == "call":
        return parse_call_request(body)
    return parse_workflow_message(body)


def test_every_json_block_is_a_valid_message() -> None:
    """Each ```json block of the protocol page parses with parse_workflow_message or
    parse_call_request."""
    found = blocks("json")
    assert found, "docs/protocol.md has no json blocks"
    failures = []
    for line, body in found:
        try:
            parse_any(body)
        except (ValueError, orjson.JSONDecodeError) as exc:
            failures.append(f"docs/protocol.md:{line}: {exc}")
    assert failures == [], "\n".join(failures)


def test_every_message_kind_has_an_example() -> None:
    """The page shows each message kind, and both the ok and the error form of a reply."""
    shown: set[str] = set()
    for _, body in blocks("json"):
        msg = parse_any(body)
        form: str = msg.kind
        if isinstance(msg, CallResultMessage | CallbackCompletedMessage):
            form += ":ok" if msg.ok else ":error"
        shown.add(form)
    assert {"start", "call", "call_result:ok", "call_result:error", "timer_fired",
            "callback_completed:ok", "cancel"} <= shown


class BankTransaction(BaseModel):
    account_id: str
    amount: int


class Balance(BaseModel):
    balance: int


class FraudCheck(BaseModel):
    is_likely_fraud: bool


balance_service = Service("balance", BankTransaction, Balance)
fraud_service = Service("fraud", BankTransaction, FraudCheck)
transaction_service = Service("transaction", BankTransaction, None)


@workflow
async def make_transaction(ctx: WorkflowContext[BankTransaction]) -> str:
    tx = ctx.request
    balance, fraud = await asyncio.gather(
        ctx.call(balance_service, tx),
        ctx.call(fraud_service, tx),
    )
    if balance.balance < tx.amount or fraud.is_likely_fraud:
        return "failure"
    await ctx.call(transaction_service, tx)
    return "success"


async def get_balance(tx: BankTransaction) -> Balance:
    if tx.account_id != "alice":
        raise ServiceError("UnknownAccount", f"no account {tx.account_id!r}")
    return Balance(balance=100)


async def check_fraud(tx: BankTransaction) -> FraudCheck:
    return FraudCheck(is_likely_fraud=False)


async def apply_transaction(tx: BankTransaction) -> None:
    return None


class RecordingTransport:
    """Passes every message on and keeps (group or service, dedup id, body)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.to_workflows: list[tuple[str, str, bytes]] = []
        self.to_services: list[tuple[str, str, bytes]] = []

    @property
    def reply_address(self) -> str:
        return self.inner.reply_address

    def send_to_workflow(self, workflow_id: str, dedup_id: str, body: bytes,
                         workflow: str | None = None) -> None:
        self.to_workflows.append((workflow_id, dedup_id, body))
        self.inner.send_to_workflow(workflow_id, dedup_id, body, workflow)

    def send_to_service(self, service: str, dedup_id: str, body: bytes) -> None:
        self.to_services.append((service, dedup_id, body))
        self.inner.send_to_service(service, dedup_id, body)


def test_worked_example_is_what_the_runtime_sends() -> None:
    """Every message the bank workflow really sends for tx-1 and tx-2 appears on the page with
    its deduplication id, and every deduplication id on the page is one the runtime used."""
    with LocalRuntime() as rt:
        rt.register(make_transaction)
        rt.implement(balance_service, get_balance)
        rt.implement(fraud_service, check_fraud)
        rt.implement(transaction_service, apply_transaction)
        recorder = RecordingTransport(rt.engine.transport)
        rt.engine.transport = recorder
        ok = rt.start(make_transaction, BankTransaction(account_id="alice", amount=50),
                      workflow_id="tx-1")
        failed = rt.start(make_transaction, BankTransaction(account_id="carol", amount=5),
                          workflow_id="tx-2")
        rt.run_until_idle()
        assert ok.result() == "success"
        with pytest.raises(WorkflowFailedError, match="UnknownAccount"):
            failed.result()

    text = DOC.read_text()
    documented = [orjson.loads(body) for _, body in blocks("json")]
    sent = recorder.to_workflows + recorder.to_services
    assert len(sent) == 12  # tx-1: start, 3 calls, 3 replies; tx-2: start, 2 calls, 2 replies
    missing = []
    for _, dedup, body in sent:
        message = orjson.loads(body)
        if message["workflow_id"] == "tx-2" and message["kind"] != "call_result":
            continue  # the page shows only tx-2's error reply
        if message["workflow_id"] == "tx-2" and message["ok"]:
            continue
        if message not in documented:
            missing.append(f"message not on the page: {body.decode()}")
        if dedup not in text:
            missing.append(f"deduplication id {dedup} of {body.decode()} not on the page")
    assert missing == [], "\n".join(missing)
    for group, _, body in recorder.to_workflows:
        assert orjson.loads(body)["workflow_id"] == group
    used = {dedup for _, dedup, _ in sent}
    stale = set(re.findall(r"\b[0-9a-f]{64}\b", text)) - used
    assert stale == set()


def test_shell_reply_recipe_matches_dedup_id() -> None:
    """The page's printf | sha256sum recipe and its aws sqs send-message commands produce
    valid replies with the deduplication id the runtime uses."""
    (line, script), *more = blocks("sh")
    commands = [script] + [body for _, body in more]
    assert len(commands) == 2, f"expected two sh blocks, found {len(commands)}"
    variables = dict(re.findall(r"^(WORKFLOW_ID|CALL_ID)=(\S+)$", script, re.MULTILINE))
    recipe = re.search(r"printf '(?P<fmt>[^']*)' \"\$WORKFLOW_ID\" \"\$CALL_ID\" \| sha256sum",
                       script)
    assert recipe is not None, f"docs/protocol.md:{line}: no printf | sha256sum recipe"
    fmt = recipe["fmt"].replace("\\0", "\0")
    computed = hashlib.sha256(
        (fmt % (variables["WORKFLOW_ID"], variables["CALL_ID"])).encode()).hexdigest()
    assert computed == dedup_id(variables["WORKFLOW_ID"], "call_result", variables["CALL_ID"])
    for command in commands:
        args = shlex.split(command.replace("\\\n", " "), comments=True)
        at = args.index("send-message")
        options = dict(zip(args[at + 1::2], args[at + 2::2], strict=True))
        assert options["--message-group-id"] == "$WORKFLOW_ID"
        assert options["--message-deduplication-id"] == "$DEDUP_ID"
        reply = parse_workflow_message(options["--message-body"])
        assert isinstance(reply, CallResultMessage)
        assert (reply.workflow_id, reply.call_id) == (variables["WORKFLOW_ID"],
                                                      variables["CALL_ID"])


@pytest.mark.parametrize("kind, key", [("call_result", "call_id"), ("callback_completed", "token")])
@pytest.mark.parametrize("ok, error", [(False, None), (True, {"type": "E", "message": "m"})])
def test_outcome_without_matching_error_is_malformed(
    kind: str, key: str, ok: bool, error: dict[str, str] | None
) -> None:
    """As the page says, ok=false needs an error and ok=true forbids one, for replies and
    callback completions alike."""
    body = {"v": 1, "kind": kind, "workflow_id": "tx-1", key: "1", "ok": ok}
    if error is not None:
        body["error"] = error
    with pytest.raises(InvalidMessageError, match=f"malformed {kind} message"):
        parse_workflow_message(orjson.dumps(body))
