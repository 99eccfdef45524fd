"""What the replay core does for child contexts (docs/primitives.md, "Child contexts"), on
the compiled twin and on the pure one: ``bound`` (the recorded root operations), finished
contexts last in their stage, and staged replies to operations inside contexts."""

from __future__ import annotations

import dataclasses
from types import ModuleType

from lambda_workflow._runtime.contexts import SCOPED_SEQ_BASE
from lambda_workflow.models import OperationRecord

from .helpers import INT, SERVICE, Req, make_index, record


class OrderAdapter:
    """A response adapter that records the payloads it validates, in order."""

    def __init__(self, log: list[bytes]) -> None:
        self.log = log

    def validate_json(self, payload: bytes) -> object:
        self.log.append(payload)
        return INT.validate_json(payload)


def scoped(rec: OperationRecord, op_id: str, seq: int) -> OperationRecord:
    """``rec`` as an operation inside a child context."""
    return dataclasses.replace(rec, op_id=op_id, seq=seq)


def test_a_finished_context_is_settled_after_the_other_outcomes_of_its_stage(
        core: ModuleType) -> None:
    """It finished after the outcome its body waited on last, so a stage delivers it after
    the stage's other outcomes even though it was created first."""
    recs = [record(0, "completed", result=b"0", resolved_in=1, kind="context", name="ctx"),
            record(1, "completed", result=b"1", resolved_in=1)]
    index, _ = make_index(core, recs)
    log: list[bytes] = []
    for seq in (0, 1):
        index.step(seq, recs[seq].kind, recs[seq].name, SERVICE.request_adapter, Req,
                   OrderAdapter(log), Req(n=seq))
    assert index.advance()
    assert log == [b"1", b"0"]


def test_ctx_call_past_bound_is_a_new_root_operation(core: ModuleType) -> None:
    """With operations of child contexts after the root's, a root call past ``bound`` is new
    (not matched against the first scoped record), and the hook gets its root seq."""
    recs = [record(0, "completed", result=b"4", resolved_in=1),
            scoped(record(1, "completed", result=b"9", resolved_in=1), "9.1", SCOPED_SEQ_BASE)]
    index, hooks = make_index(core, recs)
    index.bound = 1
    index.call_service(SERVICE, Req(n=0), None)
    future = index.call_service(SERVICE, Req(n=5), None)
    assert not future.done()
    assert [c[:3] for c in hooks.calls if c[0] == "new_operation"] == [
        ("new_operation", 1, "call")]
    assert index.pending == ["2"]


def test_an_invalid_staged_reply_inside_a_context_is_reported(core: ModuleType) -> None:
    """settle_unreached finds the waiting future of a scoped operation by its position (its
    seq is 2**40 on): an invalid reply is reported, not recorded."""
    recs = [record(0, "completed", result=b"0", resolved_in=1, kind="context", name="ctx"),
            scoped(record(1), "1.1", SCOPED_SEQ_BASE)]
    index, hooks = make_index(core, recs, {"1.1": (True, b'"not an int"')}, activation=2)
    index.bound = 1
    index.step(1, "call", "svc", SERVICE.request_adapter, Req, INT, Req(n=1), SERVICE)
    index.settle_unreached()
    assert [c[:2] for c in hooks.calls] == [("invalid_reply", "1.1")]
    assert index.accepted == []
