"""Callback keys on the embedded runtime: rotation with instances in flight (tokens handed
out inside step arguments and call requests before the rotation), key rings, tokens bound
to one run of an instance, histories recorded before tokens were recorded, and the key
ring's reload from a secret store."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from lambda_workflow import (
    CallbackTimeoutError,
    InvalidCallbackTokenError,
    Service,
    WorkflowContext,
    workflow,
)
from lambda_workflow._runtime.clock import VirtualClock
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.callbacks import CallbackKeyRing, CallbackKeys, CallbackTokens, key_id
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import InstanceRecord, InstanceStatus, OperationRecord, OperationState

K1 = b"the first callback key, 32 bytes"
K2 = b"the second callback key (rotated)"
K3 = b"a third key, from another deployment"
T0 = 1_700_000_000.0
ISSUED: dict[str, str] = {}
NOTIFIED: list[str] = []
SEEN: dict[str, list[str]] = {}

notify = Service("notify", str, int)


def remember(token: str) -> int:
    return len(token)


@workflow
async def expense(ctx: WorkflowContext[str]) -> str:
    cb = ctx.create_callback("approve", bool, timeout=86_400)
    ISSUED[ctx.workflow_id] = cb.token
    SEEN.setdefault(ctx.workflow_id, []).append(cb.token)
    await ctx.step(remember, cb.token)  # the token inside a step's arguments
    await ctx.call(notify, cb.token)  # and inside a call request
    try:
        return "approved" if await cb else "rejected"
    except CallbackTimeoutError:
        return "timed out"


def _notify(token: str) -> int:
    NOTIFIED.append(token)
    return len(token)


def _open(path: Path, key: CallbackKeys, clock: VirtualClock) -> LocalRuntime:
    rt = LocalRuntime(path, clock=clock, callback_key=key)
    rt.register(expense)
    rt.implement(notify, _notify)
    return rt


def _kid(token: str) -> str:
    return token.split(".")[0]


def _message(workflow_id: str, token: str, ok: bool) -> bytes:
    return orjson.dumps({"v": 1, "kind": "callback_completed", "workflow_id": workflow_id,
                         "token": token, "ok": True, "value": ok})


def test_instances_in_flight_replay_after_the_key_changes(tmp_path: Path) -> None:
    """Instances that handed out a token (in a step's arguments and a call request) before
    the key changed keep replaying under the new key (the recorded token is handed out
    again, whatever the key): no NonDeterminismError. With the old key gone from the ring,
    their tokens are refused, and they end by their timeout."""
    path, clock = tmp_path / "state.sqlite3", VirtualClock(T0)
    with _open(path, K1, clock) as rt:
        handles = [rt.start(expense, "lunch", workflow_id=f"r-{i}") for i in range(2)]
        rt.run_until_idle(skip_time=False)
        assert all(h.status() is InstanceStatus.RUNNING for h in handles)
    old = dict(ISSUED)
    with _open(path, K2, clock) as rt:  # reopening replays every running instance
        rt.run_until_idle(skip_time=False)
        for i in range(2):
            assert rt.status(f"r-{i}") is InstanceStatus.RUNNING, rt.history(f"r-{i}")
            assert ISSUED[f"r-{i}"] == old[f"r-{i}"]
        with pytest.raises(InvalidCallbackTokenError, match="not in this deployment's key"):
            rt.complete_callback(old["r-0"], True)
        rt.run_until_idle()  # the day passes
        assert [rt.result(f"r-{i}") for i in range(2)] == ["timed out", "timed out"]


def test_a_key_ring_rotation_with_instances_in_flight(tmp_path: Path) -> None:
    """K1, then the ring (K2 signs, K1 verifies), then K2 alone. Tokens handed out under K1
    complete their callbacks during the overlap, through the runtime and as queue messages;
    new tokens carry K2's id; once K1 leaves the ring its tokens are refused (dead-lettered
    on the queue), nothing changes, and the instance still replays to its timeout."""
    path, clock = tmp_path / "state.sqlite3", VirtualClock(T0)
    with _open(path, K1, clock) as rt:
        for i in range(1, 4):
            rt.start(expense, "taxi", workflow_id=f"k-{i}")
        rt.run_until_idle(skip_time=False)
    t1, t2, t3 = (ISSUED[f"k-{i}"] for i in range(1, 4))
    assert {_kid(t) for t in (t1, t2, t3)} == {key_id(K1)}

    with _open(path, CallbackKeyRing(K2, verify=[K1]), clock) as rt:
        rt.run_until_idle(skip_time=False)
        rt.complete_callback(t1, True)
        rt.transport.send_to_workflow("k-2", "raw-k-2", _message("k-2", t2, False))
        rt.start(expense, "hotel", workflow_id="k-4")
        rt.run_until_idle(skip_time=False)
        assert rt.result("k-1") == "approved" and rt.result("k-2") == "rejected"
        assert rt.dead_letters() == []
        assert _kid(ISSUED["k-4"]) == key_id(K2)

    with _open(path, K2, clock) as rt:
        rt.run_until_idle(skip_time=False)
        before = rt.history("k-3").operations
        with pytest.raises(InvalidCallbackTokenError, match="not in this deployment's key"):
            rt.complete_callback(t3, True)
        rt.transport.send_to_workflow("k-3", "raw-k-3", _message("k-3", t3, True))
        rt.complete_callback(ISSUED["k-4"], True)
        rt.run_until_idle(skip_time=False)
        (letter,) = rt.dead_letters()
        assert "not in this deployment's key ring" in letter.reason
        assert rt.history("k-3").operations == before
        assert rt.result("k-4") == "approved"
        rt.run_until_idle()
        assert rt.result("k-3") == "timed out"


def test_a_token_of_an_earlier_run_is_refused_by_a_new_run(tmp_path: Path) -> None:
    """expense-42 runs and completes; its state is gone (another state file here, as after
    records expire); a new expense-42 hands out another token. The old token is refused by
    the new run, through the runtime and as a queue message, and changes nothing; the new
    token completes it."""
    clock = VirtualClock(T0)
    with _open(tmp_path / "first.sqlite3", K1, clock) as rt:
        rt.start(expense, "dinner", workflow_id="expense-42")
        rt.run_until_idle(skip_time=False)
        old = ISSUED["expense-42"]
        rt.complete_callback(old, True)
        rt.run_until_idle(skip_time=False)
        assert rt.result("expense-42") == "approved"
    with _open(tmp_path / "second.sqlite3", K1, clock) as rt:
        handle = rt.start(expense, "dinner", workflow_id="expense-42")
        rt.run_until_idle(skip_time=False)
        new = ISSUED["expense-42"]
        assert new != old
        before = handle.history().operations
        for refuse in (rt.complete_callback, rt.heartbeat_callback):
            with pytest.raises(InvalidCallbackTokenError, match="another run"):
                refuse(old, True) if refuse == rt.complete_callback else refuse(old)
        with pytest.raises(InvalidCallbackTokenError, match="another run"):
            rt.fail_callback(old, "Forged", "replayed token")
        assert len(rt.queue) == 0
        rt.transport.send_to_workflow("expense-42", "replayed", _message("expense-42", old,
                                                                         True))
        rt.run_until_idle(skip_time=False)
        (letter,) = rt.dead_letters()
        assert "another run" in letter.reason
        assert handle.history().operations == before
        assert handle.status() is InstanceStatus.RUNNING
        rt.complete_callback(new, False)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "rejected"


def _crash_first_commit(rt: LocalRuntime) -> list[bool]:
    commit = rt.store.commit_activation
    crashed: list[bool] = []

    def crash_once(*args: Any, **kwargs: Any) -> list[str]:
        if not crashed:
            crashed.append(True)
            raise OSError("the process died before its commit")
        return commit(*args, **kwargs)

    rt.store.commit_activation = crash_once  # type: ignore[method-assign]
    return crashed


def test_a_token_read_before_a_crash_is_the_token_replay_hands_out(tmp_path: Path) -> None:
    """The first read of a new callback's token records the callback, so a token that left
    the workflow (here, in a step's arguments) before the activation crashed is the one the
    next activation hands out, and it completes the callback."""
    with _open(tmp_path / "state.sqlite3", K1, VirtualClock(T0)) as rt:
        crashed = _crash_first_commit(rt)
        handle = rt.start(expense, "taxi", workflow_id="c-1")
        rt.run_until_idle(skip_time=False)
        assert crashed and len(SEEN["c-1"]) >= 2 and len(set(SEEN["c-1"])) == 1
        rt.complete_callback(SEEN["c-1"][0], True)
        rt.run_until_idle(skip_time=False)
        assert handle.result() == "approved"


# -- a history recorded before tokens were recorded --------------------------------------
# tests/runtime/data/legacy_callback_history.json: the records of an instance of `expense`
# made by lambda-workflow before tokens were recorded (commit eccb5f0) under key K1 (the
# fields of InstanceRecord and OperationRecord, bytes as text), waiting on its callback; its
# token (derived, <payload>.<signature>) is in the step's arguments and the call's request.
LEGACY = Path(__file__).parent / "data" / "legacy_callback_history.json"


def _record(cls: type[Any], fields: dict[str, Any]) -> Any:
    values = {k: v.encode() if k in ("input", "result", "error", "request") and v is not None
              else v for k, v in fields.items()}
    values["state" if cls is OperationRecord else "status"] = (
        OperationState(values["state"]) if cls is OperationRecord
        else InstanceStatus(values["status"]))
    return cls(**values)


def _import_legacy(path: Path) -> tuple[str, str]:
    doc = orjson.loads(LEGACY.read_bytes())
    inst: InstanceRecord = _record(InstanceRecord, doc["instance"])
    ops: list[OperationRecord] = [_record(OperationRecord, op) for op in doc["operations"]]
    store = SQLiteStateStore(path)
    store.create_instance(inst)
    store.add_operations(inst.workflow_id, ops, inst.activations)
    store.close()
    step = next(op for op in ops if op.kind == "step")
    return inst.workflow_id, orjson.loads(step.request)["args"][0]


def test_a_history_recorded_before_tokens_were_recorded_goes_on(tmp_path: Path) -> None:
    """Its callback keeps the derived token (signed with the current key on every replay, as
    before), which any key of the ring verifies: it replays and completes."""
    path = tmp_path / "state.sqlite3"
    workflow_id, token = _import_legacy(path)
    assert token.count(".") == 1
    with _open(path, CallbackKeyRing(K1, verify=[K2]), VirtualClock(T0 + 60)) as rt:
        rt.run_until_idle(skip_time=False)
        assert rt.status(workflow_id) is InstanceStatus.RUNNING
        assert ISSUED[workflow_id] == token
        rt.complete_callback(token, True)
        rt.run_until_idle(skip_time=False)
        assert rt.result(workflow_id) == "approved"
        assert rt.history(workflow_id).operations[0].state is OperationState.COMPLETED


def test_a_derived_token_signed_with_a_key_outside_the_ring_is_refused(tmp_path: Path) -> None:
    """A derived token verifies only under a key of the ring."""
    path = tmp_path / "state.sqlite3"
    _, token = _import_legacy(path)
    with _open(path, CallbackKeyRing(K2, verify=[K3]), VirtualClock(T0 + 60)) as rt:
        with pytest.raises(InvalidCallbackTokenError, match="signature does not match"):
            rt.complete_callback(token, True)
        assert len(rt.queue) <= 1  # the wake-up sent on opening, nothing else


# -- the key ring -------------------------------------------------------------------------
def test_tokens_carry_the_signing_keys_id_and_every_key_of_the_ring_verifies() -> None:
    """The current key signs; each key's id is in its tokens; the ring verifies tokens of
    each of its keys and refuses a key outside it, naming the key id."""
    old, new, ring = CallbackTokens(K1), CallbackTokens(K2), CallbackTokens(
        CallbackKeyRing(K2, verify=[K1]))
    t_old, t_new = old.issue("w", "1"), new.issue("w", "1")
    assert (_kid(t_old), _kid(t_new)) == (key_id(K1), key_id(K2))
    assert _kid(ring.issue("w", "2")) == key_id(K2)
    assert ring.verify(t_old) == ring.verify(t_new) == ("w", "1")
    assert old.issue("w", "1") != t_old  # a fresh nonce each time
    with pytest.raises(InvalidCallbackTokenError, match=repr(key_id(K2))):
        old.verify(t_new)


@pytest.mark.parametrize("text, error", [
    ("short", "at least 16 bytes"),
    ('{"current": "a key of 16+ bytes!!", "verify": "one key"}', "a key ring is"),
    ('{"current": "a key of 16+ bytes!!", "next": []}', "a key ring is"),
    ('{"current": "a key of 16+ bytes!!", "verify": ["short"]}', "verify\\[0\\]"),
    ("{not json", "valid JSON"),
])
def test_a_bad_key_ring_is_refused_with_where_it_came_from(text: str, error: str) -> None:
    """The text form of a ring (one key, or {"current", "verify"}) is checked; the error
    names its source and never echoes a key."""
    with pytest.raises(ValueError, match=error) as info:
        CallbackKeyRing.parse(text, "secret callback-keys")
    assert str(info.value).startswith("secret callback-keys:")
    assert "a key of 16+ bytes!!" not in str(info.value)


def test_a_loaded_ring_is_reloaded_after_its_ttl_and_for_an_unknown_key_id() -> None:
    """A ring loaded from a source is kept for ttl seconds, reloaded after; a token with an
    unknown key id reloads it at once (at most every min_reload seconds); a failed reload
    keeps the ring loaded before."""
    now = [0.0]
    stored = ["one key of sixteen bytes or more"]
    loads: list[float] = []

    def load() -> CallbackKeyRing:
        loads.append(now[0])
        if stored[0] == "unavailable":
            raise ConnectionError("secret store unavailable")
        return CallbackKeyRing.parse(stored[0], "test")

    tokens = CallbackTokens(load, ttl=300, min_reload=10, clock=lambda: now[0])
    first = tokens.issue("w", "1")
    assert loads == [0.0]
    other = CallbackTokens(K2).issue("w", "1")
    stored[0] = orjson.dumps({"current": K2.decode(), "verify": [stored[0]]}).decode()
    now[0] = 5.0
    with pytest.raises(InvalidCallbackTokenError, match="not in this deployment"):
        tokens.verify(other)  # too soon after the load to reload
    now[0] = 11.0
    assert tokens.verify(other) == ("w", "1")  # unknown key id: reloaded at once
    assert tokens.verify(first) == ("w", "1")
    assert loads == [0.0, 11.0]
    now[0] = 400.0
    stored[0] = "unavailable"
    assert _kid(tokens.issue("w", "2")) == key_id(K2)  # the reload failed: the ring stays
    assert loads == [0.0, 11.0, 400.0]


def test_a_ring_needs_keys_of_sixteen_bytes_and_a_list_of_verify_keys() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        CallbackKeyRing(K1, verify=[b"short"])
    with pytest.raises(TypeError, match="list of keys"):
        CallbackKeyRing(K1, verify=K2)  # type: ignore[arg-type]
    assert base64.urlsafe_b64decode(key_id(K1) + "==")
