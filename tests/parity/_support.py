"""Helpers shared by the parity tests: a runtime on a virtual clock, the failure of a
finished instance, and a compact view of what an instance recorded."""

from __future__ import annotations

from typing import Any

import pytest

from lambda_workflow import BatchResult, WorkflowFailedError
from lambda_workflow.local import WorkflowHandle
from lambda_workflow.testing import Implementation, WorkflowTestRuntime


def runtime(*workflows: Any, services: list[Implementation] | None = None
            ) -> WorkflowTestRuntime:
    """An embedded test runtime (virtual time, every activation replayed from the top)."""
    return WorkflowTestRuntime(*workflows, services=services or [])


def failure(handle: WorkflowHandle[Any]) -> WorkflowFailedError:
    """The error a failed instance ended with."""
    with pytest.raises(WorkflowFailedError) as failed:
        handle.result()
    return failed.value


def recorded(handle: WorkflowHandle[Any]) -> list[tuple[str, str, str]]:
    """``(kind, name, state)`` of every recorded operation, in the order created."""
    return [(op.kind, op.name, op.state.value) for op in handle.history().operations]


def requests(handle: WorkflowHandle[Any], kind: str) -> list[bytes]:
    """The recorded requests of the operations of one kind."""
    return [op.request for op in handle.history().operations if op.kind == kind]


def activations(handle: WorkflowHandle[Any]) -> int:
    """How many activations (Lambda invocations on AWS) the instance took."""
    return handle.history().instance.activations


def projection(result: BatchResult[Any]) -> dict[str, Any]:
    """A batch result in the words of AWS's requirements (enum names upper case, as AWS
    spells them; ours are lower-case values of the same names)."""
    return {"completionReason": result.completion_reason.name, "status": result.status.name,
            "successCount": result.success_count, "failureCount": result.failure_count,
            "totalCount": result.total_count}
