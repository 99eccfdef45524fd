"""Tracing fixtures: an SDK tracer provider with an in-memory exporter, switched on for the
test and off after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lambda_workflow import tracing

from .otel_spans import Spans


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorder = Spans()
    tracing.enable(recorder.provider)
    try:
        yield recorder
    finally:
        tracing.disable()
        recorder.provider.shutdown()


# The AWS tests' moto server and account (tests/aws/conftest.py) and their shifted clock.
from aws.conftest import aws, moto_endpoint  # noqa: E402, F401
from aws.test_timers import clock  # noqa: E402, F401
