"""Wire messages: every kind parses, and every malformed message says what is wrong."""

from __future__ import annotations

import orjson
import pytest

from lambda_workflow import InvalidMessageError
from lambda_workflow.models import (
    CallbackCompletedMessage,
    CallRequestMessage,
    CallResultMessage,
    CancelMessage,
    ErrorInfo,
    StartMessage,
    TimerFiredMessage,
    parse_call_request,
    parse_workflow_message,
)


def body(**fields: object) -> bytes:
    return orjson.dumps({"v": 1, "workflow_id": "wf-1", **fields})


def test_start_message_parses() -> None:
    """A start message carries the workflow name and its JSON input."""
    msg = parse_workflow_message(body(kind="start", workflow="orders", input={"sku": "a"}))
    assert msg == StartMessage(workflow_id="wf-1", workflow="orders", input={"sku": "a"})


def test_ok_call_result_parses() -> None:
    """An ok call result carries the call id and the value."""
    msg = parse_workflow_message(body(kind="call_result", call_id="1", ok=True, value=[1, 2]))
    assert msg == CallResultMessage(workflow_id="wf-1", call_id="1", ok=True, value=[1, 2])


def test_error_call_result_parses() -> None:
    """An error call result carries the error's type, message and details."""
    msg = parse_workflow_message(body(
        kind="call_result", call_id="2", ok=False,
        error={"type": "OutOfStock", "message": "none left", "details": {"sku": "a"}}))
    assert isinstance(msg, CallResultMessage)
    assert msg.error == ErrorInfo(type="OutOfStock", message="none left", details={"sku": "a"})
    assert msg.value is None


def test_timer_fired_parses() -> None:
    """A timer message names the timer."""
    msg = parse_workflow_message(body(kind="timer_fired", timer_id="3"))
    assert msg == TimerFiredMessage(workflow_id="wf-1", timer_id="3")


def test_callback_completed_parses() -> None:
    """A callback message carries its token and value."""
    msg = parse_workflow_message(body(kind="callback_completed", token="t0k", ok=True,
                                      value="yes"))
    assert msg == CallbackCompletedMessage(workflow_id="wf-1", token="t0k", ok=True, value="yes")


def test_cancel_parses_with_and_without_a_reason() -> None:
    """A cancel message's reason is optional and defaults to empty."""
    assert parse_workflow_message(body(kind="cancel")) == CancelMessage(workflow_id="wf-1")
    msg = parse_workflow_message(body(kind="cancel", reason="customer asked"))
    assert isinstance(msg, CancelMessage)
    assert msg.reason == "customer asked"


def test_a_message_parses_from_str_as_well_as_bytes() -> None:
    """The parser takes the body as received, bytes or text."""
    raw = body(kind="cancel")
    assert parse_workflow_message(raw.decode()) == parse_workflow_message(raw)


def test_parsed_messages_are_frozen() -> None:
    """A parsed message cannot be modified after parsing."""
    msg = parse_workflow_message(body(kind="cancel"))
    with pytest.raises(ValueError, match="frozen"):
        msg.workflow_id = "other"  # type: ignore[misc]  # the point of the test


@pytest.mark.parametrize("raw", [b"{not json", "", b"\xff\xfe"], ids=["broken", "empty", "binary"])
def test_invalid_json_is_refused(raw: bytes | str) -> None:
    """A body that is not JSON is refused and the message says so."""
    with pytest.raises(InvalidMessageError, match="workflow message is not valid JSON"):
        parse_workflow_message(raw)


@pytest.mark.parametrize(("raw", "type_name"), [(b"[1, 2]", "list"), (b'"start"', "str"),
                                                (b"3", "int"), (b"null", "NoneType")])
def test_a_non_object_is_refused(raw: bytes, type_name: str) -> None:
    """A JSON value that is not an object is refused, naming what it is."""
    with pytest.raises(InvalidMessageError, match=f"must be a JSON object, got {type_name}$"):
        parse_workflow_message(raw)


@pytest.mark.parametrize(("kind", "shown"), [("bogus", "'bogus'"), (None, "None"), (7, "7")])
def test_an_unknown_kind_is_refused(kind: object, shown: str) -> None:
    """An unknown or missing kind is refused, listing the kinds that exist."""
    fields = {} if kind is None else {"kind": kind}
    with pytest.raises(InvalidMessageError) as info:
        parse_workflow_message(body(**fields))
    text = str(info.value)
    assert f"unknown message kind {shown}" in text
    assert "start, call_result, timer_fired, callback_completed, callback_heartbeat, cancel" in text


def test_a_missing_field_is_named() -> None:
    """A message without a required field names the kind and the field."""
    with pytest.raises(InvalidMessageError, match="malformed call_result message") as info:
        parse_workflow_message(body(kind="call_result", ok=True, value=1))
    assert "call_id: Field required" in str(info.value)


def test_a_missing_workflow_id_is_named() -> None:
    """A message without a workflow id names ``workflow_id``."""
    raw = orjson.dumps({"v": 1, "kind": "cancel"})
    with pytest.raises(InvalidMessageError, match="malformed cancel message") as info:
        parse_workflow_message(raw)
    assert "workflow_id: Field required" in str(info.value)


def test_a_field_of_the_wrong_type_is_named() -> None:
    """A field of the wrong type names the field and the expected type."""
    with pytest.raises(InvalidMessageError, match=r"ok: Input should be a valid boolean"):
        parse_workflow_message(body(kind="call_result", call_id="1", ok="perhaps"))


def test_an_unknown_field_is_refused() -> None:
    """Extra fields are refused (a typo must not be silently ignored)."""
    with pytest.raises(InvalidMessageError, match=r"valeu: Extra inputs are not permitted"):
        parse_workflow_message(body(kind="call_result", call_id="1", ok=True, valeu=1))


def test_an_unsupported_protocol_version_is_refused() -> None:
    """A message of another protocol version is refused, naming the field ``v``."""
    with pytest.raises(InvalidMessageError, match="malformed cancel message") as info:
        parse_workflow_message(orjson.dumps({"v": 2, "kind": "cancel", "workflow_id": "w"}))
    assert "v: Input should be 1" in str(info.value)


def test_ok_reply_with_an_error_is_refused() -> None:
    """A reply that says ok=true but carries an error is contradictory and refused."""
    with pytest.raises(InvalidMessageError, match="ok=true must not carry an error"):
        parse_workflow_message(body(kind="call_result", call_id="1", ok=True,
                                    error={"type": "E", "message": "m"}))


def test_failed_reply_without_an_error_is_refused() -> None:
    """A reply with ok=false must say what went wrong."""
    with pytest.raises(InvalidMessageError, match=r"ok=false must carry an error \{type, message"):
        parse_workflow_message(body(kind="call_result", call_id="1", ok=False, value=1))


def test_an_error_without_a_type_is_refused() -> None:
    """An error object needs a non-empty type."""
    with pytest.raises(InvalidMessageError, match=r"error\.type"):
        parse_workflow_message(body(kind="call_result", call_id="1", ok=False,
                                    error={"type": "", "message": "m"}))


def test_call_request_parses() -> None:
    """A service parses a call request with its id, service name, request and reply address."""
    msg = parse_call_request(body(kind="call", call_id="1", service="balance",
                                  request={"account_id": "a"}, reply_to="queue-url"))
    assert msg == CallRequestMessage(workflow_id="wf-1", call_id="1", service="balance",
                                     request={"account_id": "a"}, reply_to="queue-url")


def test_call_request_of_another_kind_is_refused() -> None:
    """A service refuses a workflow message, naming the kind it got."""
    with pytest.raises(InvalidMessageError, match="expected a message of kind 'call', got 'start'"):
        parse_call_request(body(kind="start", workflow="orders"))


def test_call_request_without_a_service_is_refused() -> None:
    """A call request without a service name says the field is missing."""
    with pytest.raises(InvalidMessageError,
                       match="malformed call request: service: Field required"):
        parse_call_request(body(kind="call", call_id="1"))


def test_call_request_that_is_not_json_is_refused() -> None:
    """A call request that is not JSON is refused and called a call request."""
    with pytest.raises(InvalidMessageError, match="call request is not valid JSON"):
        parse_call_request(b"<xml/>")
