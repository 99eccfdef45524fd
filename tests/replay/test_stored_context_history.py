"""Histories with child contexts (issue 12: map items recorded as contexts) keep replaying.

The JSON files were written by ``history_to_json`` from runs of examples/fan_out.py over 4
items, 2 at a time: one stored after two activations (items 1 and 2 finished, 3 and 4 waiting
on their calls ``3.1`` and ``4.1``), one completed. If a change to how contexts are recorded
(ids within a context, seq from 2**40, the ``{"v": ...}`` result) would break instances in
flight, these tests fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import orjson

from lambda_workflow._runtime.contexts import SCOPED_SEQ_BASE
from lambda_workflow._runtime.history import history_from_json, history_to_json
from lambda_workflow._runtime.replay import Replayer
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import History

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "examples" / "fan_out.py"
FILES = ("fan_out_contexts_waiting.json", "fan_out_contexts_completed.json")


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fan_out_replay", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stored(name: str) -> History:
    return history_from_json((HERE / name).read_bytes())


def test_the_stored_shape() -> None:
    history = stored("fan_out_contexts_completed.json")
    assert [(op.op_id, op.kind, op.name, op.seq) for op in history.operations] == [
        ("1", "context", "SKU-00001", 0), ("2", "context", "SKU-00002", 1),
        ("3", "context", "SKU-00003", 2), ("4", "context", "SKU-00004", 3),
        ("1.1", "call", "marketplace", SCOPED_SEQ_BASE),
        ("2.1", "call", "marketplace", SCOPED_SEQ_BASE + 1),
        ("3.1", "call", "marketplace", SCOPED_SEQ_BASE + 2),
        ("4.1", "call", "marketplace", SCOPED_SEQ_BASE + 3)]


def test_completed_history_replays_to_its_recorded_result() -> None:
    fan_out = load_example()
    history = stored("fan_out_contexts_completed.json")
    inst = history.instance
    result = Replayer(fan_out.sync_catalog, inst.workflow_id, inst.input, history.operations,
                      {}, activation=inst.activations + 1, now=0.0).run()
    assert result.outcome == "completed"
    assert result.new_operations == []
    assert result.step_outcomes == []
    assert result.result == inst.result


def test_waiting_history_completes_with_the_replies_and_sends_nothing_again() -> None:
    fan_out = load_example()
    history = stored("fan_out_contexts_waiting.json")
    store = MemoryStateStore()
    store.create_instance(history.instance)
    store.add_operations(history.instance.workflow_id, history.operations, 2)
    runtime = LocalRuntime(store=store)
    fan_out.setup(runtime)
    wid = history.instance.workflow_id
    for n in (3, 4):
        runtime.transport.send_to_workflow(wid, f"reply-{n}", orjson.dumps(
            {"v": 1, "kind": "call_result", "workflow_id": wid, "call_id": f"{n}.1",
             "ok": True, "value": {"listing_id": f"L-stored-SKU-0000{n}"}}))
    reports = runtime.run_until_idle()
    assert [r.status for r in reports] == ["completed"]
    assert runtime.result(wid) == fan_out.SyncSummary(
        completion="all_completed", failed=0, not_started=0, succeeded=4, sync_id="stored",
        total=4, unlisted_skus=[])
    assert runtime.invocations == []
    assert runtime.dead_letters() == []
    def shape(h: History) -> list[tuple[object, ...]]:
        return [(op.op_id, op.seq, op.kind, op.name, op.request, op.state, op.result)
                for op in h.operations]

    assert shape(runtime.history(wid)) == shape(stored("fan_out_contexts_completed.json"))


def test_context_history_json_round_trips() -> None:
    for name in FILES:
        raw = (HERE / name).read_bytes()
        assert history_to_json(history_from_json(raw)) + b"\n" == raw
