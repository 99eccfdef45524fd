"""boto3 clients of one deployment, created on first use (cold starts pay only for what a
function uses)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from .config import AwsConfig

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

__all__ = ["AwsClients"]

_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5,
                      read_timeout=30, tcp_keepalive=True)


class AwsClients:
    """The SQS, DynamoDB, S3 and Lambda clients, sharing one session and endpoint (hooks on
    ``session.events`` see every request: the cost table counts them that way)."""

    def __init__(self, config: AwsConfig, session: boto3.Session | None = None) -> None:
        self.config = config
        self.session = session or boto3.Session(region_name=config.region)

    def _client(self, name: str) -> Any:
        return self.session.client(name, endpoint_url=self.config.endpoint_url,  # type: ignore[call-overload]
                                   region_name=self.config.region, config=_BOTO_CONFIG)

    @cached_property
    def sqs(self) -> SQSClient:
        client: SQSClient = self._client("sqs")
        return client

    @cached_property
    def dynamodb(self) -> DynamoDBClient:
        client: DynamoDBClient = self._client("dynamodb")
        return client

    @cached_property
    def s3(self) -> S3Client:
        client: S3Client = self._client("s3")
        return client

    @cached_property
    def scheduler(self) -> Any:
        """EventBridge Scheduler (used for timers longer than one SQS delay)."""
        return self._client("scheduler")

    @cached_property
    def secretsmanager(self) -> Any:
        """Secrets Manager (the callback keys, when kept there)."""
        return self._client("secretsmanager")

    @cached_property
    def ssm(self) -> Any:
        """SSM Parameter Store (the callback keys, when kept there)."""
        return self._client("ssm")

    @cached_property
    def kms(self) -> Any:
        """KMS (the payload codec's data keys, when ``LAMBDA_WORKFLOW_CODEC`` uses kms)."""
        return self._client("kms")

    @cached_property
    def lambda_(self) -> LambdaClient:
        client: LambdaClient = self._client("lambda")
        return client
