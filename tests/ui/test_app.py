"""The console's routes through Starlette's TestClient (no browser): the list with filters
and pages, the instance page, the history download that ``replay`` accepts, escaping of user
data, and actions: absent and refused without ``allow_actions``, else behind a confirmation
POSTed with the CSRF token."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lambda_workflow._ui.app import Console, create_app
from lambda_workflow.backends.sqlite import SQLiteStateStore
from lambda_workflow.cli import main
from lambda_workflow.local import LocalRuntime
from lambda_workflow.models import InstanceStatus

from .conftest import Run


def client_of(console: Console) -> Iterator[TestClient]:
    with TestClient(create_app(console), base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture
def reader(run: Run) -> Iterator[TestClient]:
    yield from client_of(Console(db=run.db, run=run.module))


@pytest.fixture
def operator(run: Run) -> Iterator[TestClient]:
    yield from client_of(Console(db=run.db, run=run.module, allow_actions=True,
                                 csrf="test-token"))


def ids(html: str) -> list[str]:
    return re.findall(r'<tr class="instance [^"]*" data-id="([^"]+)"', html)


def status_of(run: Run, workflow_id: str) -> InstanceStatus:
    store = SQLiteStateStore(run.db)
    try:
        inst = store.get_instance(workflow_id)
    finally:
        store.close()
    assert inst is not None
    return inst.status


def test_list_shows_the_runs_instances_and_filters_them(reader: TestClient) -> None:
    page = reader.get("/")
    assert page.status_code == 200
    assert sorted(ids(page.text)) == ["p-done", "p-fail", "p-wait"]
    assert ids(reader.get("/", params={"status": "failed"}).text) == ["p-fail"]
    assert ids(reader.get("/", params={"workflow": "other"}).text) == []
    assert sorted(ids(reader.get("/", params={"workflow": "ship"}).text)) == [
        "p-done", "p-fail", "p-wait"]
    assert ids(reader.get("/", params={"since": "2999-01-01"}).text) == []
    assert len(ids(reader.get("/", params={"until": "2999-01-01T00:00:00Z"}).text)) == 3


def test_list_pages_through_the_index(reader: TestClient) -> None:
    first = reader.get("/", params={"limit": "2"})
    assert len(ids(first.text)) == 2
    found = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert found is not None
    second = reader.get(found.group(1).replace("&amp;", "&"))
    assert len(ids(second.text)) == 1
    assert 'id="next-page"' not in second.text and 'id="first-page"' in second.text
    assert sorted(ids(first.text) + ids(second.text)) == ["p-done", "p-fail", "p-wait"]


@pytest.mark.parametrize(("params", "said"), [
    ({"limit": "0"}, "limit '0' must be a number from 1 to 1000"),
    ({"limit": "many"}, "limit 'many' must be a number"),
    ({"status": "sleeping"}, "status 'sleeping' is not one of running, completed"),
    ({"since": "yesterday"}, "since 'yesterday' is not a time"),
    ({"next": "garbage!"}, "next: "),
])
def test_bad_filters_are_refused_naming_what_was_wrong(reader: TestClient,
                                                       params: dict[str, str],
                                                       said: str) -> None:
    page = reader.get("/", params=params)
    assert page.status_code == 400
    problem = re.search(r'id="problem">(.*?)</p>', page.text, re.S)
    assert problem is not None
    assert said in problem.group(1).replace("&#39;", "'")


def test_instance_page_shows_timeline_values_and_what_it_waits_on(reader: TestClient) -> None:
    page = reader.get("/instance", params={"id": "p-wait"})
    assert page.status_code == 200
    assert re.findall(r'<g class="bar" data-op="(\d+)" data-kind="(\w+)" '
                      r'data-outcome="([\w ]+)"', page.text) == [
        ("1", "call", "failed"), ("2", "timer", "completed"), ("3", "callback", "pending")]
    assert re.search(r'id="input">\{\s+&#34;n&#34;: -3', page.text)
    waits = re.findall(r'<li class="waiting" data-op="(\d+)">(.*?)\n', page.text)
    assert waits == [("3", "callback 3 &#39;signature&#39;: a completion of its token (no "
                           "timeout)")]
    # no actions offered without allow_actions
    assert "/action?" not in page.text and "act-cancel" not in page.text


def test_instance_error_names_its_source_line(reader: TestClient) -> None:
    page = reader.get("/instance", params={"id": "p-fail"})
    error = re.search(r'id="error">(.*?)</section>', page.text, re.S)
    assert error is not None
    text = error.group(1)
    assert "<strong>ServiceError</strong>: NoCarrier: no carrier takes parcel -1" in text
    assert "raised by operation #4 (call carrier) at <code>parcels.py:" in text
    assert "await ctx.call(carrier, Parcel(n=signed))" in text  # the line itself
    assert re.search(r'id="result"', page.text) is None


def test_unknown_instance_is_404(reader: TestClient) -> None:
    page = reader.get("/instance", params={"id": "nope"})
    assert page.status_code == 404 and "no workflow instance &#39;nope&#39;" in page.text
    assert reader.get("/instance/history.json", params={"id": "nope"}).status_code == 404


def test_downloaded_history_replays(reader: TestClient, run: Run, tmp_path: Path) -> None:
    for wid in ("p-wait", "p-done", "p-fail"):
        got = reader.get("/instance/history.json", params={"id": wid})
        assert got.status_code == 200
        assert got.headers["content-disposition"] == (f'attachment; filename="{wid}'
                                                      '.history.json"')
        out = io.StringIO()
        assert main(["history", "--db", run.db, wid, "--json"], out=out) == 0
        assert got.text == out.getvalue()  # the exact export of `history --json`
        path = tmp_path / f"{wid}.json"
        path.write_bytes(got.content)
        out = io.StringIO()
        assert main(["replay", str(path), "--workflow", run.module], out=out) == 0, \
            out.getvalue()


def test_ids_and_payloads_are_escaped(run: Run, tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    runtime = LocalRuntime(run.db)
    try:
        run.loaded.setup(runtime)
        runtime.start(run.loaded.ship, run.loaded.Parcel(n=4, note=evil), workflow_id=evil)
        runtime.run_until_idle()
    finally:
        runtime.close()
    for client in client_of(Console(db=run.db, allow_actions=True)):
        listed = client.get("/")
        page = client.get("/instance", params={"id": evil})
        confirm = client.get("/action", params={"do": "cancel", "id": evil})
        for html in (listed.text, page.text, confirm.text):
            assert "<script>" not in html
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert page.status_code == 200 and confirm.status_code == 200
        got = client.get("/instance/history.json", params={"id": evil})
        assert re.fullmatch(r'attachment; filename="[A-Za-z0-9_.\-]+"',
                            got.headers["content-disposition"])


def test_actions_are_refused_without_allow_actions(reader: TestClient, run: Run) -> None:
    confirm = reader.get("/action", params={"do": "cancel", "id": "p-wait"})
    assert confirm.status_code == 403 and "--allow-actions" in confirm.text
    done = reader.post("/action", data={"do": "cancel", "id": "p-wait", "confirm": "yes",
                                        "csrf": "anything"})
    assert done.status_code == 403
    assert status_of(run, "p-wait") is InstanceStatus.RUNNING


def test_cancel_needs_the_csrf_token_and_a_confirmation(operator: TestClient,
                                                         run: Run) -> None:
    page = operator.get("/instance", params={"id": "p-wait"})
    assert 'id="act-cancel"' in page.text
    confirm = operator.get("/action", params={"do": "cancel", "id": "p-wait"})
    assert confirm.status_code == 200
    assert 'method="post"' in confirm.text
    assert 'name="csrf" value="test-token"' in confirm.text
    form = {"do": "cancel", "id": "p-wait", "confirm": "yes", "reason": "test"}
    assert operator.post("/action", data=form).status_code == 403  # no token
    assert operator.post("/action", data={**form, "csrf": "forged"}).status_code == 403
    assert operator.post("/action", data={**form, "csrf": "test-token",
                                          "confirm": ""}).status_code == 400
    # a GET with everything in it changes nothing
    operator.get("/action", params={**form, "csrf": "test-token"})
    assert status_of(run, "p-wait") is InstanceStatus.RUNNING
    done = operator.post("/action", data={**form, "csrf": "test-token"})
    assert done.status_code == 200, done.text
    assert 'id="outcome" class="ok"' in done.text
    assert status_of(run, "p-wait") is InstanceStatus.CANCELLED


def test_completing_a_callback_completes_the_instance(operator: TestClient, run: Run) -> None:
    page = operator.get("/instance", params={"id": "p-wait"})
    link = re.search(r'href="(/action\?do=complete[^"]+)"', page.text)
    assert link is not None
    confirm = operator.get(link.group(1).replace("&amp;", "&"))
    assert confirm.status_code == 200 and "signature" in confirm.text
    done = operator.post("/action", data={"do": "complete", "id": "p-wait", "op": "3",
                                          "result": "5", "confirm": "yes",
                                          "csrf": "test-token"})
    assert done.status_code == 200, done.text
    assert status_of(run, "p-wait") is InstanceStatus.COMPLETED
    page = operator.get("/instance", params={"id": "p-wait"})
    assert re.search(r'id="result">\{\s+&#34;booked&#34;: -1,\s+&#34;signed&#34;: 5', page.text)


def test_a_refused_action_says_why(operator: TestClient, run: Run) -> None:
    """Failing a callback with details that are not JSON: the command's own message."""
    done = operator.post("/action", data={"do": "fail", "id": "p-wait", "op": "3",
                                          "error": "Rejected", "details": "{not json",
                                          "confirm": "yes", "csrf": "test-token"})
    assert done.status_code == 422
    assert "--details &#39;{not json&#39; is not JSON" in done.text
    assert status_of(run, "p-wait") is InstanceStatus.RUNNING


def test_callback_actions_on_a_state_file_need_the_module(run: Run) -> None:
    for client in client_of(Console(db=run.db, allow_actions=True)):
        confirm = client.get("/action", params={"do": "complete", "id": "p-wait", "op": "3"})
        assert confirm.status_code == 200
        assert "start the console with <code>--run FILE.py</code>" in confirm.text
        assert "confirm-form" not in confirm.text


def test_reset_of_a_failed_instance_runs_it_again(operator: TestClient, run: Run) -> None:
    assert 'id="act-resume"' in operator.get("/instance", params={"id": "p-fail"}).text
    done = operator.post("/action", data={"do": "reset", "id": "p-fail", "to": "2",
                                          "confirm": "yes", "csrf": "test-token"})
    assert done.status_code == 200, done.text
    # kept the call and the timer; the callback is created again and waits
    assert status_of(run, "p-fail") is InstanceStatus.RUNNING


def test_requests_for_another_host_are_refused(run: Run) -> None:
    """A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing:
    the console answers only requests addressed to 127.0.0.1 or localhost."""
    with TestClient(create_app(Console(db=run.db, allow_actions=True)),
                    base_url="http://attacker.example") as client:
        assert client.get("/").status_code == 400
        assert client.get("/action", params={"do": "cancel", "id": "p-wait"}).status_code == 400
    with TestClient(create_app(Console(db=run.db)), base_url="http://localhost:8765") as client:
        assert client.get("/").status_code == 200
