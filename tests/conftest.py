"""Shared fixtures: a local runtime on each embedded store, and a way to put raw messages on
its workflow queue (as a service in another language, or a broken one, would)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import orjson
import pytest

from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.local import LocalRuntime

PostMessage = Callable[[dict[str, object]], None]


@pytest.fixture(params=["memory", "sqlite"])
def runtime(request: pytest.FixtureRequest) -> Iterator[LocalRuntime]:
    """A fresh LocalRuntime on the in-memory store and on SQLite ``:memory:``."""
    store = MemoryStateStore() if request.param == "memory" else SQLiteStateStore(":memory:")
    rt = LocalRuntime(store=store)
    yield rt
    rt.close()


@pytest.fixture
def post_message(runtime: LocalRuntime) -> PostMessage:
    """Send a raw JSON message to the ``runtime`` fixture's workflow queue.

    The FIFO group is the message's ``workflow_id``, ``v`` defaults to 1, and every message
    gets its own deduplication id, so a deliberate duplicate is not dropped by the queue.
    """
    counter = itertools.count(1)

    def post(message: dict[str, object]) -> None:
        body = orjson.dumps({"v": 1, **message})
        runtime.queue.send(body, group_id=str(message.get("workflow_id", "no-group")),
                           dedup_id=f"test-{next(counter)}")

    return post
