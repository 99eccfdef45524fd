"""The advice a replay mismatch carries (what the NonDeterminismError tells the user to do):
the same text from both cores, pointing to ctx.patched and docs/versioning.md."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from .helpers import record

PY = importlib.import_module("lambda_workflow._core._py")

CASES = [(field, kind) for field in ("kind", "name", "request")
         for kind in ("call", "step", "timer", "callback", "child", "patch", "")]


@pytest.mark.parametrize(("field", "kind"), CASES)
def test_both_cores_give_the_same_advice(core: ModuleType, field: str, kind: str) -> None:
    """For every field and recorded kind, the twin's advice (the function and the attribute
    of ReplayMismatch) equals the pure twin's, and it names ctx.patched and the guide."""
    advice = core.mismatch_advice(field, kind)
    assert advice == PY.mismatch_advice(field, kind)
    assert 'ctx.patched("<patch-id>")' in advice
    assert "docs/versioning.md" in advice
    exc = core.ReplayMismatch(0, field, record(0, kind=kind or "call"))
    assert exc.advice == PY.mismatch_advice(field, kind or "call")


def test_the_advice_depends_on_what_changed(core: ModuleType) -> None:
    """A timer's changed request is a duration; another request may also come from the clock
    or a random number; a changed kind or name is changed code."""
    assert core.mismatch_advice("request", "timer").startswith(
        "A changed duration is a change of the workflow's code")
    assert core.mismatch_advice("request", "call").endswith(
        "Otherwise build requests only from the workflow's input and recorded results (not "
        "the clock or random numbers)")
    assert core.mismatch_advice("name", "call").startswith(
        "If the workflow's code changed on purpose, instances started before the change must "
        "replay the recorded operations")
    assert core.ReplayMismatch(0, "request", object()).advice == core.mismatch_advice(
        "request", "")
