"""Structured logs of ``ctx.logger`` (the replay-aware logger).

Every line ``ctx.logger`` emits (never during replay) is a record of the logger
``lambda_workflow.workflow`` carrying these fields as attributes: ``workflow_id``,
``workflow`` (its name), ``run`` (0, then 1, 2, ... after each reset that started the
workflow's code over from an earlier point), ``activation`` (the activation's number) and
``operation`` (the id of the operation the workflow created or met last, ``None`` before its
first one). :class:`JsonFormatter` writes a record as one JSON object with them;
:func:`use_json` sends the workflow's lines through it, :func:`use_powertools` through an AWS
Lambda Powertools ``Logger`` (its JSON, its keys, plus these fields). The workflow handler
calls :func:`configure_from_environment`: with ``LAMBDA_WORKFLOW_LOG_FORMAT=json`` it writes
the lines with :class:`JsonFormatter` (unless the workflow logger has a handler already).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._runtime.replay import Replayer

__all__ = ["FIELDS", "LOGGER_NAME", "JsonFormatter", "configure_from_environment",
           "record_fields", "use_json", "use_powertools"]

LOGGER_NAME = "lambda_workflow.workflow"
#: The fields every ``ctx.logger`` record carries.
FIELDS = ("workflow_id", "workflow", "run", "activation", "operation")
_FORMAT_VARIABLE = "LAMBDA_WORKFLOW_LOG_FORMAT"


def record_fields(replayer: Replayer) -> dict[str, Any]:
    """The structured fields of a line logged now by the workflow ``replayer`` runs (a log
    line never fails the workflow: fields that cannot be had are ``None``)."""
    try:
        return _fields(replayer)
    except Exception:  # pragma: no cover - the replayer's internals changed under us
        return {"workflow_id": replayer.workflow_id, "workflow": None, "run": None,
                "activation": None, "operation": None}


def _fields(replayer: Replayer) -> dict[str, Any]:
    from ._runtime.contexts import CURRENT

    scope_id = replayer._scope  # "" before any reset, "r<k>" after the k-th
    run = int(scope_id[1:]) if scope_id.startswith("r") and scope_id[1:].isdigit() else 0
    operation: str | None = None
    scope = CURRENT.get()
    if scope is not None and scope.owner is replayer:
        operation = f"{scope.prefix}.{scope.count}" if scope.count else scope.prefix
    else:
        position = replayer._index.seq - 1
        if 0 <= position < replayer._n_root:
            operation = replayer._history[position].op_id
        elif position >= 0 and not scope_id:
            # Not in the history replayed from (a new operation, or one a warm instance
            # made after it): root ids follow creation order.
            operation = str(position + 1)
        elif position >= 0:
            operation = next((op.op_id for op in reversed(replayer.new_operations)
                              if op.seq == position), None)
    return {"workflow_id": replayer.workflow_id, "workflow": replayer.workflow.name,
            "run": run, "activation": replayer._activation, "operation": operation}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, the workflow fields when the record has them, and ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in FIELDS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _route(handler: logging.Handler) -> logging.Handler:
    """Send the workflow logger's lines to ``handler`` alone (not also to the root's
    handlers, which would print them a second time), at INFO unless a level was set."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        if getattr(old, "_lambda_workflow", False):
            logger.removeHandler(old)
    handler._lambda_workflow = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return handler


def use_json(stream: IO[str] | None = None) -> logging.Handler:
    """Write ``ctx.logger``'s lines as JSON (:class:`JsonFormatter`) to ``stream`` (default:
    standard output, which Lambda sends to CloudWatch Logs). Returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter())
    return _route(handler)


def use_powertools(logger: Any) -> logging.Handler:
    """Write ``ctx.logger``'s lines through an AWS Lambda Powertools ``Logger``: its
    handler and JSON formatter (its service, cold start and Lambda context keys), with the
    workflow fields as keys of their own. Returns the handler.

    Raises:
        TypeError: ``logger`` is not a Powertools ``Logger``.
    """
    handler = getattr(logger, "registered_handler", None)
    if not isinstance(handler, logging.Handler):
        raise TypeError(f"use_powertools() takes an aws_lambda_powertools.Logger, got "
                        f"{type(logger).__name__}")
    return _route(handler)


def configure_from_environment() -> None:
    """``LAMBDA_WORKFLOW_LOG_FORMAT=json``: JSON lines for ``ctx.logger`` (:func:`use_json`)
    unless its logger has a handler already (one the application set, such as Powertools');
    ``text`` or unset: the lines go to the logging configuration as they are.

    Raises:
        ValueError: ``LAMBDA_WORKFLOW_LOG_FORMAT`` is neither ``json`` nor ``text``.
    """
    value = os.environ.get(_FORMAT_VARIABLE, "").strip().lower()
    if value not in ("", "json", "text"):
        raise ValueError(f"{_FORMAT_VARIABLE} must be json or text, got {value!r}")
    if value == "json" and not logging.getLogger(LOGGER_NAME).handlers:
        use_json()
