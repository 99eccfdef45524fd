"""Shared fixtures: a local runtime on each embedded store, and a way to put raw messages on
its workflow queue (as a service in another language, or a broken one, would)."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator

import orjson
import pytest

import lambda_workflow.testing
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.local import LocalRuntime

PostMessage = Callable[[dict[str, object]], None]

# Warm instances (docs/design.md, "Warm instances"): the suite runs with the cache off unless
# LAMBDA_WORKFLOW_INSTANCE_CACHE is set (CI runs tests/runtime and tests/property again with
# it on); when set, it applies to LocalRuntime and Engine and to the testing runtime too.
_WARM = os.environ.get("LAMBDA_WORKFLOW_INSTANCE_CACHE")
if _WARM is None:
    os.environ["LAMBDA_WORKFLOW_INSTANCE_CACHE"] = "0"
else:
    lambda_workflow.testing.DEFAULT_INSTANCE_CACHE = int(_WARM)

# Tests that observe replay itself keep replaying with the cache on: a warm instance
# continues without running the workflow's code again, so a test that counts how often the
# code ran, collects what each replay saw, tears the coroutine down at suspension, or swaps
# code in place under a running instance (not a deploy: the same Workflow object) tests
# replay. Every other test runs both ways and must give the same result.
REPLAY_OBSERVERS = frozenset({
    "test_batch_items_recorded.py::test_flat_items_run_again_on_every_replay",
    "test_callback_keyring.py::test_a_token_read_before_a_crash_is_the_token_replay_hands_out",
    "test_replay.py::test_a_service_error_can_be_caught_and_is_the_same_on_replay",
    "test_replay.py::test_is_replaying_is_true_until_the_first_new_result",
    "test_replay.py::test_teardown_at_suspension_records_and_sends_nothing",
    "test_replay.py::test_the_first_execution_sees_the_value_replay_will_see",
    "test_serdes.py::test_a_callback_payload_is_read_by_its_serdes",
    "test_serdes.py::test_a_child_workflow_result_is_read_by_its_workflow_serdes",
    "test_serdes.py::test_a_serdes_changed_with_instances_in_flight_is_a_non_determinism_error",
    "test_serdes.py::test_a_serdes_that_raises_fails_the_step_recorded_naming_it",
    "test_serdes.py::test_a_step_result_is_round_tripped_on_the_first_run_as_on_replay",
    "test_serdes.py::test_call_requests_and_replies_go_through_the_service_serdes",
    "test_serdes.py::test_recipe_a_serdes_keeps_the_card_number_out_of_the_history",
    "test_time_and_versions.py::test_random_and_uuid4_are_the_same_on_every_replay",
})


@pytest.fixture(autouse=True)
def _replay_observers_replay(request: pytest.FixtureRequest,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    node = request.node
    if f"{node.path.name}::{getattr(node, 'originalname', node.name)}" in REPLAY_OBSERVERS:
        monkeypatch.setenv("LAMBDA_WORKFLOW_INSTANCE_CACHE", "0")
        monkeypatch.setattr(lambda_workflow.testing, "DEFAULT_INSTANCE_CACHE", 0)


@pytest.fixture
def cli_modules_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI loads workflow modules by path (registering them under their file's stem and
    adding their folder to sys.path), as do tests that import a fresh copy of an example: put
    back what they replaced, so other tests keep the modules they imported. Test files of the
    CLI's replay and bench commands use it for every test (``pytestmark``)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = dict(sys.modules)
    yield
    for name in set(sys.modules) - set(before):
        del sys.modules[name]
    for name, module in before.items():
        if sys.modules.get(name) is not module:
            sys.modules[name] = module


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
