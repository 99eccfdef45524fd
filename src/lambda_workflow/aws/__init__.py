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
