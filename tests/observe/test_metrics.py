"""The EMF writer's own rules: documents refused when the format cannot hold them, the
metrics switch read strictly, and one JSON line per document."""

from __future__ import annotations

import json

import pytest

from lambda_workflow._runtime.engine import ActivationReport
from lambda_workflow.aws.metrics import InvocationMetrics, emf_document, metrics_enabled


def test_a_document_the_format_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="1 to 100 metrics"):
        emf_document("N", {"Function": "f"}, {}, 0)
    with pytest.raises(ValueError, match="at most 30 dimensions"):
        emf_document("N", {f"d{i}": "x" for i in range(31)}, {"M": ("Count", 1)}, 0)
    with pytest.raises(ValueError, match=r"metric names \['Function'\] are also dimension"):
        emf_document("N", {"Function": "f"}, {"Function": ("Count", 1)}, 0)


def test_the_switch_is_on_in_lambda_and_strict_about_its_values() -> None:
    assert metrics_enabled({}) is False
    assert metrics_enabled({"AWS_LAMBDA_FUNCTION_NAME": "wf"}) is True
    assert metrics_enabled({"AWS_LAMBDA_FUNCTION_NAME": "wf",
                            "LAMBDA_WORKFLOW_METRICS": "off"}) is False
    assert metrics_enabled({"LAMBDA_WORKFLOW_METRICS": "1"}) is True
    with pytest.raises(ValueError, match="LAMBDA_WORKFLOW_METRICS must be on or off"):
        metrics_enabled({"LAMBDA_WORKFLOW_METRICS": "sometimes"})


def test_flush_writes_one_line_per_document_and_nothing_for_an_idle_invocation() -> None:
    lines: list[str] = []
    idle = InvocationMetrics(namespace="N", function="wf")
    idle.flush(lines.append)
    assert lines == []
    busy = InvocationMetrics(namespace="N", function="wf")
    report = ActivationReport("w", "x", 3, "completed", replay_seconds=0.0125,
                              created={"call": 2, "timer": 1})
    busy.activation(report, messages=2)
    busy.flush(lines.append)
    docs = [json.loads(line) for line in lines]
    assert all(line.endswith("\n") and "\n" not in line[:-1] for line in lines)
    assert docs[0]["Activations"] == 1 and docs[0]["Messages"] == 2
    assert docs[0]["ReplayTime"] == [12.5] and docs[0]["WorkflowsCompleted"] == 1
    assert [(d["OperationKind"], d["Operations"]) for d in docs[1:]] == [("call", 2),
                                                                         ("timer", 1)]


def test_a_bad_switch_fails_the_workflow_handler_at_its_creation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked with the handler (the cold start in Lambda), not at each invocation, where it
    would fail every batch."""
    from lambda_workflow import WorkflowContext, workflow
    from lambda_workflow.aws import workflow_handler

    @workflow
    async def noop(ctx: WorkflowContext[int]) -> int:
        return ctx.request

    monkeypatch.setenv("LAMBDA_WORKFLOW_METRICS", "sometimes")
    with pytest.raises(ValueError, match="LAMBDA_WORKFLOW_METRICS must be on or off"):
        workflow_handler(noop)
