"""The tracing switch: enable/disable, the handlers' environment variable read strictly, and
a clear error when OpenTelemetry is not installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from lambda_workflow import _observe, tracing


@pytest.fixture(autouse=True)
def _off() -> Iterator[None]:
    tracing.disable()
    yield
    tracing.disable()


def test_the_environment_switches_tracing_on_and_refuses_other_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(tracing.ENVIRONMENT_VARIABLE, raising=False)
    assert tracing.enable_from_environment() is False
    monkeypatch.setenv(tracing.ENVIRONMENT_VARIABLE, "off")
    assert tracing.enable_from_environment() is False and not tracing.is_enabled()
    monkeypatch.setenv(tracing.ENVIRONMENT_VARIABLE, "maybe")
    with pytest.raises(ValueError, match=r"LAMBDA_WORKFLOW_TRACING must be one of .*'maybe'"):
        tracing.enable_from_environment()
    monkeypatch.setenv(tracing.ENVIRONMENT_VARIABLE, "ON")
    assert tracing.enable_from_environment() is True and _observe.TRACING is not None
    tracing.disable()
    assert _observe.TRACING is None


def test_enable_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "lambda_workflow._observe.otel"
                 or m.startswith("opentelemetry")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'lambda-workflow\[otel\]'"):
        tracing.enable()
    assert not tracing.is_enabled()
