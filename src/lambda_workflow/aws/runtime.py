"""One deployment's AWS resources, wired together once per Lambda container."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .._runtime.clock import SystemClock
from .._runtime.engine import Engine
from .._runtime.warm import InstanceCache
from ..backends.protocols import Clock
from ..callbacks import CallbackTokens
from ..codecs import PayloadCodec, codec_from_spec
from ..workflow import Workflow
from ._clients import AwsClients
from .callback_keys import callback_tokens
from .config import AwsConfig
from .dynamodb import DynamoDBStateStore
from .payloads import NO_BUCKET_HINT, S3PayloadStore
from .sqs import SqsFifoTransport
from .timers import SqsDelayTimers

if TYPE_CHECKING:
    import boto3

__all__ = ["AwsDeployment"]


class AwsDeployment:
    """The table, queues and bucket of one deployment, with the clients to reach them.

    Built from :class:`AwsConfig` (by default from the environment). Clients are created on
    first use, so a handler module can build this at import time for free.
    """

    def __init__(self, config: AwsConfig | None = None, *, session: boto3.Session | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config if config is not None else AwsConfig.from_env()
        self.clients = AwsClients(self.config, session)
        self.clock: Clock = clock or SystemClock()

    @cached_property
    def payloads(self) -> S3PayloadStore | None:
        """The S3 payload store, or ``None`` without a bucket."""
        if self.config.bucket is None:
            return None
        return S3PayloadStore(self.clients.s3, self.config.bucket)

    @cached_property
    def codec(self) -> PayloadCodec:
        """The payload codec (``LAMBDA_WORKFLOW_CODEC``; the KMS client is made on first
        use)."""
        return codec_from_spec(self.config.codec, kms=lambda: self.clients.kms)

    @cached_property
    def store(self) -> DynamoDBStateStore:
        return DynamoDBStateStore(
            self.clients.dynamodb, self.config.table, payloads=self.payloads,
            payload_threshold=self.config.payload_threshold,
            retention_days=self.config.retention_days, clock=self.clock.now,
            codec=self.codec)

    @cached_property
    def transport(self) -> SqsFifoTransport:
        return SqsFifoTransport(self.config, self.clients, self.payloads, self.codec)

    @cached_property
    def timers(self) -> SqsDelayTimers:
        return SqsDelayTimers(self.config, self.clients, self.clock)

    @cached_property
    def tokens(self) -> CallbackTokens | None:
        """Signs and verifies callback tokens, or ``None`` without callback keys (read from
        Secrets Manager or SSM on first use, cached for ``callback_key_ttl`` seconds)."""
        return callback_tokens(self.config, self.clients, self.clock.now)

    @property
    def payload_limit(self) -> int | None:
        """The largest payload a workflow may record: unlimited with a bucket (large ones go
        to S3), the threshold without."""
        return None if self.payloads is not None else self.config.payload_threshold

    def engine(self, workflows: Mapping[str, Workflow[Any, Any]]) -> Engine:
        return Engine(self.store, self.transport, workflows, self.clock,
                      payload_limit=self.payload_limit, payload_hint=NO_BUCKET_HINT,
                      timers=self.timers, tokens=self.tokens,
                      instance_cache=InstanceCache(
                          self.config.instance_cache,
                          max_operations=self.config.instance_cache_operations))
