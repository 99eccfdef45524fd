"""The timer function's handler for deployments whose modules have none: ``lambda-workflow
template`` names it (``lambda_workflow.aws.timer_function.handler``) when no given module
defines ``timer_handler()``. It is in every zip that ``lambda-workflow package`` builds."""

from __future__ import annotations

from .handlers import timer_handler

__all__ = ["handler"]

handler = timer_handler()
