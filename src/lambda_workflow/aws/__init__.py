"""lambda-workflow on AWS: Lambda + SQS FIFO + DynamoDB (+ S3 for large payloads).

The only module that imports boto3 (install the ``aws`` extra; Lambda's Python runtimes
include boto3). See ``docs/aws.md``.

- :func:`workflow_handler`: the workflow function's handler (SQS FIFO event source).
- :func:`service_handler`: a service function's handler (SQS or asynchronous invoke).
- :func:`timer_handler`: the timer function's handler (durable timers hop through SQS).
- :class:`WorkflowClient`: start, inspect and cancel instances.
- :class:`DynamoDBStateStore`, :class:`SqsFifoTransport`, :class:`SqsFifoQueue`,
  :class:`S3PayloadStore`: the backends, for custom wiring.
- :class:`AwsConfig`: settings, from ``LAMBDA_WORKFLOW_*`` environment variables.
"""

try:
    import boto3 as _boto3  # noqa: F401  (checked first, for the message below)
    import botocore as _botocore  # noqa: F401
except ModuleNotFoundError as _missing:
    if _missing.name not in ("boto3", "botocore"):
        raise
    raise ModuleNotFoundError(
        f"lambda_workflow.aws needs boto3, which is not installed (no module named "
        f"{_missing.name!r}): install the aws extra with pip install 'lambda-workflow[aws]' "
        "(Lambda's Python runtimes include boto3 already)", name=_missing.name) from _missing

from .client import AwsWorkflowHandle, WorkflowClient
from .config import AwsConfig, ConfigurationError, ServiceTarget
from .dynamodb import ConcurrentWriteError, DynamoDBStateStore
from .handlers import service_handler, timer_handler, workflow_handler
from .payloads import S3PayloadStore
from .runtime import AwsDeployment
from .sqs import SqsFifoQueue, SqsFifoTransport
from .timers import SqsDelayTimers

__all__ = [
    "AwsConfig",
    "AwsDeployment",
    "AwsWorkflowHandle",
    "ConcurrentWriteError",
    "ConfigurationError",
    "DynamoDBStateStore",
    "S3PayloadStore",
    "ServiceTarget",
    "SqsDelayTimers",
    "SqsFifoQueue",
    "SqsFifoTransport",
    "WorkflowClient",
    "service_handler",
    "timer_handler",
    "workflow_handler",
]
