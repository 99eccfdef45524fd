"""Histories recorded by earlier versions keep replaying under the current code.

The JSON files here were written by ``history_to_json`` from real runs of the bank example. If a
change to operation ids, request encoding or digests would break in-flight workflows, these
tests fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import orjson

from lambda_workflow import _core
from lambda_workflow._runtime.history import history_from_json, history_to_json
from lambda_workflow._runtime.replay import Replayer
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import History, InstanceStatus

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "examples" / "bank_transaction.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bank_transaction_replay", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stored(name: str) -> History:
    return history_from_json((HERE / name).read_bytes())


def test_waiting_history_completes_with_the_stored_reply_and_sends_nothing_again() -> None:
    """An instance stored while waiting on call 3 completes when its reply arrives, re-sending
    none of the recorded calls."""
    bank = load_example()
    history = stored("bank_tx_waiting_for_transaction.json")
    store = MemoryStateStore()
    store.create_instance(history.instance)
    store.add_operations(history.instance.workflow_id, history.operations, 2)
    runtime = LocalRuntime(store=store)
    runtime.register(bank.make_transaction)
    runtime.transport.send_to_workflow("tx-ok", "reply-3", orjson.dumps(
        {"v": 1, "kind": "call_result", "workflow_id": "tx-ok", "call_id": "3", "ok": True,
         "value": None}))
    reports = runtime.run_until_idle()
    assert [r.status for r in reports] == ["completed"]
    assert runtime.result("tx-ok") == "success"
    assert runtime.invocations == []
    assert all(len(runtime.service_queue(s)) == 0 for s in ("balance", "fraud", "transaction"))
    assert runtime.dead_letters() == []


def test_completed_history_replays_to_its_recorded_result() -> None:
    """Replaying a completed history under the current code creates no new operation and returns
    the recorded result."""
    bank = load_example()
    history = stored("bank_tx_completed.json")
    inst = history.instance
    result = Replayer(bank.make_transaction, inst.workflow_id, inst.input, history.operations,
                      {}, activation=4, now=0.0).run()
    assert result.outcome == "completed"
    assert result.new_operations == []
    assert result.result == inst.result == b'"success"'


def test_stored_requests_encode_and_digest_as_the_current_code_does() -> None:
    """The current encoder produces the stored request bytes and digests byte for byte."""
    bank = load_example()
    history = stored("bank_tx_completed.json")
    tx = bank.BankTransaction(account_id="alice", amount=50)
    payload = _core.encode_value(bank.balance_service.request_adapter, tx)
    for op in history.operations:
        assert op.request == payload
        assert op.request_digest == _core.digest(payload)
    assert history.instance.input_digest == _core.digest(payload)
    assert [op.op_id for op in history.operations] == ["1", "2", "3"]


def test_history_json_round_trips() -> None:
    """history_to_json(history_from_json(x)) reproduces the stored file."""
    for name in ("bank_tx_completed.json", "bank_tx_waiting_for_transaction.json"):
        raw = (HERE / name).read_bytes()
        assert history_to_json(history_from_json(raw)) + b"\n" == raw
        assert history_from_json(raw).instance.status in {InstanceStatus.RUNNING,
                                                          InstanceStatus.COMPLETED}
