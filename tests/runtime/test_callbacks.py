"""Callbacks on the embedded runtime: tokens, completion, failure, timeouts, heartbeats,
several outstanding callbacks, wait_for_callback, and every way a bad token is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from lambda_workflow import (
    CallbackFailedError,
    CallbackHeartbeatTimeoutError,
    CallbackTimeoutError,
    InvalidCallbackTokenError,
    RetryPolicy,
    WorkflowContext,
    current_step,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.callbacks import CallbackTokens
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import InstanceStatus, OperationState

TOKENS: dict[str, str] = {}


class Approval(BaseModel):
    approved: bool
    by: str


def _runtime(*workflows: Any) -> LocalRuntime:
    rt = LocalRuntime(clock=VirtualClock(1_700_000_000.0))
    rt.register(*workflows)
    return rt


@workflow
async def approve(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("manager", Approval, timeout=3600)
    TOKENS[ctx.request] = cb.token
    try:
        decision = await cb
    except CallbackTimeoutError as exc:
        return f"timeout: {exc.message}"
    except CallbackFailedError as exc:
        return f"failed: {exc.error_type}: {exc.message} {exc.details}"
    return f"{decision.approved} by {decision.by}"


def test_a_callback_completes_with_a_typed_value() -> None:
    """The workflow suspends on the callback; complete_callback with the token resumes it
    with the value validated as the callback's type. The token is the same on every replay."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "a1")
        rt.run_until_idle(skip_time=False)
        token = TOKENS["a1"]
        rt.complete_callback(token, {"approved": True, "by": "ana"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "True by ana"
        assert TOKENS["a1"] == token
        kinds = [(op.kind, op.name, op.state) for op in handle.history().operations]
    assert kinds == [("callback", "manager", OperationState.COMPLETED),
                     ("timer", "timeout:manager", OperationState.PENDING)]


def test_a_failed_callback_raises_with_the_reported_error() -> None:
    """fail_callback reaches the workflow as CallbackFailedError with the type, message and
    details the external system gave."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "a2")
        rt.run_until_idle(skip_time=False)
        rt.fail_callback(TOKENS["a2"], "Rejected", "budget exceeded", {"limit": 100})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "failed: Rejected: budget exceeded {'limit': 100}"


def test_a_callback_times_out_and_a_late_completion_is_refused() -> None:
    """Nobody completes it within the hour: CallbackTimeoutError. Completing it afterwards
    (the workflow has ended) raises InvalidCallbackTokenError and sends nothing."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "a3")
        rt.run_until_idle()
        assert handle.result() == "timeout: not completed within 3600 s"
        with pytest.raises(InvalidCallbackTokenError, match="has ended"):
            rt.complete_callback(TOKENS["a3"], {"approved": True, "by": "late"})
        assert len(rt.queue) == 0


@workflow
async def watched(ctx: WorkflowContext[None]) -> str:
    cb = ctx.create_callback("export", int, timeout=86_400, heartbeat_timeout=60)
    TOKENS["watched"] = cb.token
    try:
        return f"rows {await cb}"
    except CallbackHeartbeatTimeoutError as exc:
        return f"stalled: {exc.message}"


def test_heartbeats_keep_a_callback_alive_until_they_stop() -> None:
    """Each heartbeat starts the heartbeat timeout again; when heartbeats stop, the workflow
    gets CallbackHeartbeatTimeoutError (distinct from the overall timeout)."""
    with _runtime(watched) as rt:
        handle = rt.start(watched, None)
        rt.run_until_idle(skip_time=False)
        for _ in range(3):
            rt.advance_time(50)
            rt.heartbeat_callback(TOKENS["watched"])
            rt.run_until_idle(skip_time=False)
        assert handle.status().value == "running"
        rt.advance_time(61)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "stalled: no heartbeat within 60 s"


def test_heartbeats_then_completion() -> None:
    """A heartbeated callback completes normally with its value."""
    with _runtime(watched) as rt:
        handle = rt.start(watched, None)
        rt.run_until_idle(skip_time=False)
        rt.advance_time(30)
        rt.heartbeat_callback(TOKENS["watched"])
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["watched"], 1234)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "rows 1234"


@workflow
async def three_approvals(ctx: WorkflowContext[None]) -> list[str]:
    callbacks = [ctx.create_callback(name, str) for name in ("legal", "finance", "ceo")]
    for cb in callbacks:
        TOKENS[cb.name] = cb.token
    first_done = await asyncio.wait([asyncio.ensure_future(cb) for cb in callbacks],
                                    return_when=asyncio.ALL_COMPLETED)
    assert first_done
    return [await cb for cb in reversed(callbacks)]


def test_several_callbacks_complete_in_any_order() -> None:
    """Three outstanding callbacks completed in reverse order of creation, awaited in yet
    another order: each returns its own value."""
    with _runtime(three_approvals) as rt:
        handle = rt.start(three_approvals, None)
        rt.run_until_idle()
        for name in ("ceo", "finance", "legal"):
            rt.complete_callback(TOKENS[name], f"{name} ok")
            rt.run_until_idle()
        assert handle.result() == ["ceo ok", "finance ok", "legal ok"]


SUBMITTED: list[tuple[int, str]] = []


def send_to_approver(token: str) -> None:
    SUBMITTED.append((current_step().attempt, token))
    if current_step().attempt == 1:
        raise ConnectionError("mail server down")


@workflow
async def request_approval(ctx: WorkflowContext[None]) -> bool:
    decision: Approval = await ctx.wait_for_callback(
        "approval", send_to_approver, Approval, timeout=3600,
        retry=RetryPolicy(max_attempts=3, initial_delay=5, jitter="none"))
    return decision.approved


def test_wait_for_callback_submits_the_token_as_a_retryable_step() -> None:
    """wait_for_callback creates the callback, runs the submitter with its token as a step
    (retried after a failure, on a timer) and returns the completion value."""
    SUBMITTED.clear()
    with _runtime(request_approval) as rt:
        handle = rt.start(request_approval, None)
        rt.run_until_idle(skip_time=False)
        rt.advance_time(5)
        rt.run_until_idle(skip_time=False)
        assert [attempt for attempt, _ in SUBMITTED] == [1, 2]
        token = SUBMITTED[-1][1]
        rt.complete_callback(token, {"approved": False, "by": "bo"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() is False


def _altered(token: str) -> str:
    kid, payload, signature = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    data["c"] = "2"
    forged = base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()
    return f"{kid}.{forged}.{signature}"


@pytest.mark.parametrize("make_token", [
    lambda token: "not-a-token",
    lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
    _altered,
    lambda token: CallbackTokens(b"another deployment's key").issue(
        *CallbackTokens(b"lambda-workflow local development key").verify(token)),
], ids=["garbage", "bad-signature", "altered-payload", "other-key"])
def test_forged_or_altered_tokens_are_refused_and_change_nothing(make_token: Any) -> None:
    """A forged, altered or foreign token raises InvalidCallbackTokenError for complete,
    fail and heartbeat; nothing is queued and the callback stays pending."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "f1")
        rt.run_until_idle(skip_time=False)
        bad = make_token(TOKENS["f1"])
        with pytest.raises(InvalidCallbackTokenError):
            rt.complete_callback(bad, {"approved": True, "by": "x"})
        with pytest.raises(InvalidCallbackTokenError):
            rt.fail_callback(bad, "X", "y")
        with pytest.raises(InvalidCallbackTokenError):
            rt.heartbeat_callback(bad)
        assert len(rt.queue) == 0
        assert handle.history().operations[0].state is OperationState.PENDING


def test_a_token_completes_its_callback_once() -> None:
    """After the callback completed, its token is refused (replayed-after-completion)."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "once")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["once"], {"approved": True, "by": "ana"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "True by ana"
        with pytest.raises(InvalidCallbackTokenError, match="already completed"):
            rt.complete_callback(TOKENS["once"], {"approved": False, "by": "eve"})


def test_a_forged_callback_message_on_the_queue_is_dead_lettered(
        ) -> None:
    """A callback_completed message posted straight to the queue with a forged token is
    dead-lettered with the reason; the workflow keeps waiting."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "q1")
        rt.run_until_idle(skip_time=False)
        body = orjson.dumps({"v": 1, "kind": "callback_completed", "workflow_id":
                             handle.workflow_id, "token": "abc.def", "ok": True,
                             "value": {"approved": True, "by": "mallory"}})
        rt.transport.send_to_workflow(handle.workflow_id, "forged", body)
        rt.run_until_idle(skip_time=False)
        (letter,) = rt.dead_letters()
        assert "signature does not match" in letter.reason
        assert handle.status().value == "running"


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"heartbeat_timeout": -5},
                                    {"timeout": 10**9}])
def test_bad_callback_timeouts_are_refused_before_recording(kwargs: dict[str, Any]) -> None:
    """A timeout outside 1 s to 366 days raises ValueError at create_callback."""
    @workflow
    async def bad(ctx: WorkflowContext[None]) -> None:
        ctx.create_callback("x", **kwargs)

    with _runtime(bad) as rt:
        handle = rt.start(bad, None)
        rt.run_until_idle()
        assert handle.status().value == "failed"
        assert handle.history().operations == []


def test_short_keys_are_refused() -> None:
    """A callback key shorter than 16 bytes is refused."""
    with pytest.raises(ValueError, match="16 bytes"):
        CallbackTokens(b"short")


# -- hostile tokens: every entry point refuses them with InvalidCallbackTokenError (or
# dead-letters the message) and changes nothing ------------------------------------------
DEV_KEY = b"lambda-workflow local development key"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(part: str, key: bytes = DEV_KEY) -> str:
    """A token whose signature is genuine (the key's id and an HMAC under the key, as
    docs/primitives.md describes them) over the payload part ``part``, whatever it holds."""
    kid = _b64u(hmac.new(key, b"lambda-workflow callback key id", hashlib.sha256).digest()[:6])
    signature = hmac.new(key, f"{kid}.{part}".encode(), hashlib.sha256).digest()
    return f"{kid}.{part}.{_b64u(signature)}"


HOSTILE_TOKENS: dict[str, Any] = {
    "non-ascii": "ключ.подпись",
    "non-ascii-signature": _b64u(b'{"w":"h","c":"1"}') + "." + "é" * 43,
    "non-ascii-in-genuine": "GENUINE-WITH-É",  # replaced by the genuine token with an É
    "huge": "A" * 1_000_000,
    "huge-dotted": "A" * 300_000 + "." + "B" * 300_000,
    "empty": "",
    "dots": "..",
    "four-parts": "a.b.c.d",
    "bad-base64": "ab$c.d%f",
    "signed-bad-base64": _signed("A"),
    "signed-not-json": _signed(_b64u(b"\xff\xfe not json")),
    "signed-list": _signed(_b64u(b"[1,2]")),
    "signed-null": _signed(_b64u(b"null")),
    "signed-int-id": _signed(_b64u(b'{"w":1,"c":"1"}')),
    "signed-missing-callback": _signed(_b64u(b'{"w":"h"}')),
    "int": 12345,
    "none": None,
    "bytes": b"abc.def",
    "list": ["a", "b"],
}


def _hostile(name: str, genuine: str) -> Any:
    token = HOSTILE_TOKENS[name]
    return genuine[:5] + "É" + genuine[6:] if token == "GENUINE-WITH-É" else token


@pytest.mark.parametrize("name", HOSTILE_TOKENS)
def test_hostile_tokens_are_refused_by_the_runtime_and_change_nothing(name: str) -> None:
    """complete, fail and heartbeat_callback refuse every hostile token (non-ASCII, huge,
    empty, bad base64, not a string, a genuine signature over a payload of the wrong shape)
    with InvalidCallbackTokenError: nothing is queued, the history is unchanged, and the
    genuine token still completes the callback afterwards."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "h1")
        rt.run_until_idle(skip_time=False)
        before = handle.history().operations
        bad = _hostile(name, TOKENS["h1"])
        with pytest.raises(InvalidCallbackTokenError, match="callback token rejected"):
            rt.complete_callback(bad, {"approved": True, "by": "x"})
        with pytest.raises(InvalidCallbackTokenError, match="callback token rejected"):
            rt.fail_callback(bad, "X", "y")
        with pytest.raises(InvalidCallbackTokenError, match="callback token rejected"):
            rt.heartbeat_callback(bad)
        assert len(rt.queue) == 0
        assert handle.history().operations == before
        rt.complete_callback(TOKENS["h1"], {"approved": True, "by": "ana"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "True by ana"


@pytest.mark.parametrize("name", [n for n, t in HOSTILE_TOKENS.items() if isinstance(t, str)])
def test_hostile_tokens_on_the_queue_are_dead_lettered_and_the_batch_goes_on(name: str) -> None:
    """A callback_completed and a callback_heartbeat message carrying a hostile token, queued
    ahead of the genuine completion, are dead-lettered with the reason; the genuine one in
    the same batch completes the instance."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "h2")
        rt.run_until_idle(skip_time=False)
        wid = handle.workflow_id
        bad = _hostile(name, TOKENS["h2"])
        for kind, extra in (("callback_completed", {"ok": True, "value": {
                "approved": True, "by": "mallory"}}), ("callback_heartbeat", {})):
            rt.transport.send_to_workflow(wid, f"bad-{kind}", orjson.dumps(
                {"v": 1, "kind": kind, "workflow_id": wid, "token": bad, **extra}))
        rt.complete_callback(TOKENS["h2"], {"approved": False, "by": "ana"})
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "False by ana"
        letters = rt.dead_letters()
        assert len(letters) == 2
        assert all("token" in letter.reason for letter in letters), letters


@pytest.mark.parametrize("token", [12345, None, ["a"], {"w": "x"}])
def test_a_token_that_is_not_a_string_on_the_queue_is_dead_lettered(token: object) -> None:
    """A callback message whose token is not a string is dead-lettered as invalid; the
    instance keeps waiting."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "h3")
        rt.run_until_idle(skip_time=False)
        wid = handle.workflow_id
        rt.transport.send_to_workflow(wid, "bad", orjson.dumps(
            {"v": 1, "kind": "callback_completed", "workflow_id": wid, "token": token,
             "ok": True, "value": {"approved": True, "by": "mallory"}}))
        rt.run_until_idle(skip_time=False)
        (letter,) = rt.dead_letters()
        assert "token" in letter.reason
        assert handle.status().value == "running"
        assert handle.history().operations[0].state is OperationState.PENDING


def test_a_completion_that_does_not_validate_does_not_block_a_corrected_one() -> None:
    """A completion whose value does not validate as the callback's type is dead-lettered
    and changes nothing; the client's corrected completion then completes the callback.
    Before, both messages had one deduplication id (the token's), so the queue dropped the
    corrected one as a duplicate and the workflow waited until its timeout. Two identical
    completions are still one message."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "fix")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["fix"], {"approved": "maybe"})
        rt.run_until_idle(skip_time=False)
        assert handle.status() is InstanceStatus.RUNNING
        assert len(rt.queue.dead_letters) == 1
        rt.complete_callback(TOKENS["fix"], {"approved": True, "by": "ana"})
        rt.complete_callback(TOKENS["fix"], {"approved": True, "by": "ana"})
        assert len(rt.queue) == 1
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "True by ana"


def test_two_different_completions_at_once_complete_the_callback_with_the_first() -> None:
    """Two clients complete one callback with different values before the workflow runs:
    both messages are delivered (their contents differ), the first completes the callback
    and the second is dropped as a duplicate reply, not dead-lettered."""
    with _runtime(approve) as rt:
        handle = rt.start(approve, "race")
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(TOKENS["race"], {"approved": True, "by": "ana"})
        rt.complete_callback(TOKENS["race"], {"approved": False, "by": "bob"})
        assert len(rt.queue) == 2
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "True by ana"
        assert rt.queue.dead_letters == []
