"""Configuration of the AWS backends, from arguments or from environment variables.

Every Lambda function of a deployment reads the same variables (the SAM template in
``deploy/template.yaml`` sets them):

=================================== ========================================================
``LAMBDA_WORKFLOW_TABLE``           the DynamoDB table (required)
``LAMBDA_WORKFLOW_QUEUE_URL``       the workflow FIFO queue's URL (required)
``LAMBDA_WORKFLOW_DLQ_URL``         its dead-letter FIFO queue's URL (rejected messages go
                                    there with their reason)
``LAMBDA_WORKFLOW_WORKFLOW_QUEUES`` JSON object: workflow name to the FIFO queue URL of the
                                    function that runs it, for a deployment with several
                                    workflow functions; a workflow it does not name runs on
                                    ``LAMBDA_WORKFLOW_QUEUE_URL`` (optional)
``LAMBDA_WORKFLOW_BUCKET``          the S3 bucket for payloads over the threshold (optional)
``LAMBDA_WORKFLOW_TIMER_QUEUE_URL`` a standard SQS queue for durable timers (``ctx.sleep``):
                                    delayed messages hop through it, 15 minutes at most each
                                    (required by workflows that sleep)
``LAMBDA_WORKFLOW_SCHEDULER_ROLE_ARN`` a role EventBridge Scheduler assumes to send to the
                                    timer queue: timers longer than 15 minutes then become
                                    one one-time schedule each instead of SQS hops (optional)
``LAMBDA_WORKFLOW_SCHEDULER_GROUP`` the schedule group for those schedules (default
                                    ``default``)
``LAMBDA_WORKFLOW_CALLBACK_KEY_SECRET`` the Secrets Manager secret (name or ARN) holding the
                                    callback keys: one key (16 bytes or more), or the ring
                                    ``{"current": "<key>", "verify": ["<key>", ...]}``;
                                    required by workflows that create callbacks, and by
                                    clients that complete them (or the next variable)
``LAMBDA_WORKFLOW_CALLBACK_KEY_PARAMETER`` instead: an SSM Parameter Store SecureString
                                    parameter holding the same
``LAMBDA_WORKFLOW_CALLBACK_KEY_TTL`` seconds the keys are cached before they are read again
                                    (default 300): a rotation reaches every function within it
``LAMBDA_WORKFLOW_CALLBACK_KEY``    the keys themselves, in plain text: for local and
                                    development use only (an environment variable is readable
                                    by anyone who can read the function's configuration)
``LAMBDA_WORKFLOW_PAYLOAD_THRESHOLD`` bytes above which a payload goes to S3 (default 65536)
``LAMBDA_WORKFLOW_RETENTION_DAYS``  days a finished workflow's items live before TTL deletes
                                    them (default 30; 0 keeps them for ever)
``LAMBDA_WORKFLOW_MAX_RECEIVES``    deliveries before a message is dead-lettered; equal to the
                                    queue's redrive ``maxReceiveCount`` (default 5)
``LAMBDA_WORKFLOW_SERVICES``        JSON object: service name to target, ``"sqs:<queue url>"``
                                    or ``"lambda:<function name or ARN>"``
``LAMBDA_WORKFLOW_SERVICE_<NAME>``  one service's target (name upper-cased, ``-`` as ``_``);
                                    wins over ``LAMBDA_WORKFLOW_SERVICES``
``LAMBDA_WORKFLOW_CODEC``           the payload codec of everything stored (docs/codecs.md):
                                    ``identity`` (default), ``zlib``, ``kms:<key ARN>``,
                                    ``zlib+kms:<key ARN>``
``LAMBDA_WORKFLOW_PLAIN_SERVICES``  services written without this SDK, comma-separated: their
                                    requests are sent as plain JSON under any codec
``LAMBDA_WORKFLOW_INSTANCE_CACHE``  warm instances kept per container, continued without a
                                    replay (default 128; 0: every activation replays)
``LAMBDA_WORKFLOW_INSTANCE_CACHE_OPERATIONS`` recorded operations the warm instances
                                    hold together (default 200000; least recently used go)
``AWS_ENDPOINT_URL``                boto3's own: an alternative endpoint (tests use moto's)
=================================== ========================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._runtime.warm import DEFAULT_LAMBDA_SIZE, DEFAULT_MAX_OPERATIONS
from ..callbacks import CallbackKeyRing
from ..codecs import codec_from_spec
from ..errors import WorkflowError

__all__ = ["DEFAULT_PAYLOAD_THRESHOLD", "AwsConfig", "ConfigurationError", "ServiceTarget"]

DEFAULT_PAYLOAD_THRESHOLD = 64 * 1024
SQS_MAX_MESSAGE_BYTES = 1024 * 1024
DYNAMODB_MAX_ITEM_BYTES = 400 * 1024
LAMBDA_MAX_ASYNC_PAYLOAD_BYTES = 256 * 1024
_ENV = "LAMBDA_WORKFLOW_"


class ConfigurationError(WorkflowError, ValueError):
    """A required setting is missing or a setting has an invalid value. ``problems`` lists
    each problem (one error names them all)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """Where requests to one service go: an SQS queue (standard or FIFO) or a Lambda function
    invoked asynchronously."""

    kind: str  # "sqs" or "lambda"
    address: str  # the queue URL or the function name/ARN

    @classmethod
    def parse(cls, service: str, spec: str) -> ServiceTarget:
        kind, sep, address = spec.partition(":")
        if not sep or kind not in ("sqs", "lambda") or not address:
            raise ConfigurationError(
                f"service {service!r} has the target {spec!r}; expected 'sqs:<queue url>' or "
                "'lambda:<function name or ARN>'")
        return cls(kind, address)

    @property
    def fifo(self) -> bool:
        return self.kind == "sqs" and self.address.endswith(".fifo")

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int,
         problems: list[str]) -> int:
    """The integer variable ``name``; a bad value is added to ``problems`` (and the default
    stands in for it, so the other settings are still checked)."""
    raw = env.get(_ENV + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{_ENV}{name}={raw!r} is not an integer")
        return default
    if value < minimum:
        problems.append(f"{_ENV}{name}={value} must be at least {minimum}")
        return default
    return value


def _problems(config: AwsConfig) -> list[str]:
    """Every problem of a configuration's values, in the order of the fields."""
    problems: list[str] = []
    if not config.table:
        problems.append("no DynamoDB table configured (LAMBDA_WORKFLOW_TABLE)")
    if not config.queue_url:
        problems.append("no workflow queue configured (LAMBDA_WORKFLOW_QUEUE_URL)")
    elif not config.queue_url.endswith(".fifo"):
        problems.append(
            f"the workflow queue must be an SQS FIFO queue (a URL ending in .fifo), got "
            f"{config.queue_url!r} (LAMBDA_WORKFLOW_QUEUE_URL)")
    for name, url in sorted(config.workflow_queues.items()):
        if not url.endswith(".fifo"):
            problems.append(
                f"the queue of workflow {name!r} must be an SQS FIFO queue (a URL ending in "
                f".fifo), got {url!r} ({_ENV}WORKFLOW_QUEUES)")
    if not 1024 <= config.payload_threshold <= 240 * 1024:
        problems.append(
            f"payload_threshold={config.payload_threshold} must be between 1024 and 245760 "
            "bytes (it must leave room for the envelope under the Lambda, SQS and DynamoDB "
            "limits) (LAMBDA_WORKFLOW_PAYLOAD_THRESHOLD)")
    if config.timer_queue_url is not None and config.timer_queue_url.endswith(".fifo"):
        problems.append(
            "the timer queue must be a standard SQS queue (FIFO queues refuse per-message "
            f"delays), got {config.timer_queue_url!r} (LAMBDA_WORKFLOW_TIMER_QUEUE_URL)")
    sources = [name for name, value in (
        ("CALLBACK_KEY", config.callback_key),
        ("CALLBACK_KEY_SECRET", config.callback_key_secret),
        ("CALLBACK_KEY_PARAMETER", config.callback_key_parameter)) if value is not None]
    if len(sources) > 1:
        problems.append(
            "callback keys come from one place; got " + " and ".join(_ENV + s for s in sources))
    if config.callback_key is not None:
        try:
            CallbackKeyRing.parse(config.callback_key, _ENV + "CALLBACK_KEY")
        except ValueError as exc:
            problems.append(f"{exc} (a random secret)")
    if config.callback_key_ttl < 0:
        problems.append(f"callback_key_ttl={config.callback_key_ttl} must be >= 0")
    if config.retention_days < 0:
        problems.append(f"retention_days={config.retention_days} must be >= 0")
    if config.max_receives < 1:
        problems.append(f"max_receives={config.max_receives} must be >= 1")
    if config.instance_cache < 0:
        problems.append(f"instance_cache={config.instance_cache} must be >= 0 (0: off) "
                        f"({_ENV}INSTANCE_CACHE)")
    if config.instance_cache_operations < 0:
        problems.append(f"instance_cache_operations={config.instance_cache_operations} must "
                        f"be >= 0 ({_ENV}INSTANCE_CACHE_OPERATIONS)")
    try:
        codec_from_spec(config.codec, kms=_NO_KMS_CALLS)
    except ValueError as exc:
        problems.append(f"{exc} ({_ENV}CODEC)")
    return problems


def _no_kms_calls() -> Any:
    raise AssertionError("the configuration check makes no KMS call")


_NO_KMS_CALLS = _no_kms_calls


def raise_problems(problems: list[str]) -> None:
    """One :class:`ConfigurationError` naming every problem (none: nothing happens)."""
    if len(problems) == 1:
        raise ConfigurationError(problems[0])
    if problems:
        raise ConfigurationError(
            f"the configuration has {len(problems)} problems:\n" +
            "\n".join(f"- {p}" for p in problems), problems)


@dataclass(frozen=True, slots=True)
class AwsConfig:
    """Names and limits of one deployment. Build it directly or with :meth:`from_env`."""

    table: str
    queue_url: str
    dead_letter_queue_url: str | None = None
    bucket: str | None = None
    timer_queue_url: str | None = None
    scheduler_role_arn: str | None = None
    scheduler_group: str = "default"
    callback_key: str | None = field(default=None, repr=False)
    callback_key_secret: str | None = None
    callback_key_parameter: str | None = None
    callback_key_ttl: int = 300
    payload_threshold: int = DEFAULT_PAYLOAD_THRESHOLD
    retention_days: int = 30
    max_receives: int = 5
    services: Mapping[str, ServiceTarget] = field(default_factory=dict)
    workflow_queues: Mapping[str, str] = field(default_factory=dict)
    endpoint_url: str | None = None
    region: str | None = None
    codec: str = "identity"
    plain_services: frozenset[str] = frozenset()
    # Warm instances kept per Lambda container (0: off) and the recorded operations they may
    # hold together (docs/design.md, "Warm instances").
    instance_cache: int = DEFAULT_LAMBDA_SIZE
    instance_cache_operations: int = DEFAULT_MAX_OPERATIONS

    def __post_init__(self) -> None:
        raise_problems(_problems(self))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 require_services: Iterable[str] = (), **overrides: Any) -> AwsConfig:
        """Read the ``LAMBDA_WORKFLOW_*`` variables (see the module's documentation).

        Args:
            env: The variables (default ``os.environ``).
            require_services: Services that must have a target (a workflow function passes
                every service its workflows can call).
            overrides: Field values that win over the variables.

        Raises:
            ConfigurationError: a required variable is missing, a value is invalid or a
                required service has no target; one error names every problem and the
                variable of each.
        """
        env = os.environ if env is None else env
        problems: list[str] = []
        required = sorted(set(require_services))
        services = _services(env, problems, required)
        values: dict[str, Any] = {
            "table": env.get(_ENV + "TABLE", ""),
            "queue_url": env.get(_ENV + "QUEUE_URL", ""),
            "dead_letter_queue_url": env.get(_ENV + "DLQ_URL") or None,
            "bucket": env.get(_ENV + "BUCKET") or None,
            "timer_queue_url": env.get(_ENV + "TIMER_QUEUE_URL") or None,
            "scheduler_role_arn": env.get(_ENV + "SCHEDULER_ROLE_ARN") or None,
            "scheduler_group": env.get(_ENV + "SCHEDULER_GROUP") or "default",
            "callback_key": env.get(_ENV + "CALLBACK_KEY") or None,
            "callback_key_secret": env.get(_ENV + "CALLBACK_KEY_SECRET") or None,
            "callback_key_parameter": env.get(_ENV + "CALLBACK_KEY_PARAMETER") or None,
            "callback_key_ttl": _int(env, "CALLBACK_KEY_TTL", 300, 0, problems),
            "payload_threshold": _int(env, "PAYLOAD_THRESHOLD", DEFAULT_PAYLOAD_THRESHOLD, 1,
                                      problems),
            "retention_days": _int(env, "RETENTION_DAYS", 30, 0, problems),
            "max_receives": _int(env, "MAX_RECEIVES", 5, 1, problems),
            "services": services,
            "workflow_queues": _workflow_queues(env, problems),
            "endpoint_url": env.get("AWS_ENDPOINT_URL") or None,
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            "codec": env.get(_ENV + "CODEC") or "identity",
            "plain_services": frozenset(
                name.strip() for name in env.get(_ENV + "PLAIN_SERVICES", "").split(",")
                if name.strip()),
            "instance_cache": _int(env, "INSTANCE_CACHE", DEFAULT_LAMBDA_SIZE, 0, problems),
            "instance_cache_operations": _int(env, "INSTANCE_CACHE_OPERATIONS",
                                              DEFAULT_MAX_OPERATIONS, 0, problems),
        }
        values.update(overrides)
        for service in required:
            if service not in values["services"]:
                problems.append(missing_target(service, values["services"]))
        try:
            config = cls(**values)
        except ConfigurationError as exc:
            raise_problems(problems + exc.problems)
            raise
        raise_problems(problems)
        return config

    def workflow_queue(self, workflow: str | None) -> str:
        """The FIFO queue of the function that runs ``workflow``: its entry in
        ``workflow_queues``, else this function's own queue (``queue_url``; also for
        ``None``, a workflow whose name is not known)."""
        if workflow is None:
            return self.queue_url
        return self.workflow_queues.get(workflow, self.queue_url)

    @property
    def deployment_queues(self) -> frozenset[str]:
        """Every workflow queue of the deployment this configuration knows: its own and
        those of ``workflow_queues`` (the only destinations a timer may name)."""
        return frozenset({self.queue_url, *self.workflow_queues.values()})

    def missing_services(self, services: Iterable[str]) -> list[str]:
        """Of ``services``, those without a target, sorted."""
        return sorted({s for s in services if s not in self.services})

    def service_target(self, service: str) -> ServiceTarget:
        """The target of ``service``.

        Raises:
            ConfigurationError: the service has no target; names the variable to set.
        """
        target = self.services.get(service)
        if target is None:
            raise ConfigurationError(missing_target(service, self.services))
        return target


def missing_target(service: str, services: Mapping[str, ServiceTarget]) -> str:
    known = ", ".join(sorted(services)) or "none"
    return (f"no target configured for service {service!r} (configured: {known}); set "
            f"{_ENV}SERVICE_{service.upper().replace('-', '_')}='sqs:<queue url>' or "
            f"'lambda:<function>', or add it to {_ENV}SERVICES")


def _workflow_queues(env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """The ``LAMBDA_WORKFLOW_WORKFLOW_QUEUES`` table (workflow name to FIFO queue URL); a bad
    value is added to ``problems`` (and an empty table stands in for it)."""
    raw = env.get(_ENV + "WORKFLOW_QUEUES")
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except ValueError as exc:
        problems.append(f"{_ENV}WORKFLOW_QUEUES is not valid JSON: {exc}")
        return {}
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in table.items()):
        problems.append(f"{_ENV}WORKFLOW_QUEUES must be a JSON object of workflow name to "
                        f"FIFO queue URL, got {raw[:200]!r}")
        return {}
    return dict(table)


def workflow_queues_of(env: Mapping[str, str]) -> dict[str, str]:
    """The ``LAMBDA_WORKFLOW_WORKFLOW_QUEUES`` table of ``env``; empty when it is absent or
    does not parse."""
    return _workflow_queues(env, [])


def _services(env: Mapping[str, str], problems: list[str],
              names: Iterable[str] = ()) -> dict[str, ServiceTarget]:
    """The service targets the variables give; a bad one is added to ``problems``. A
    ``LAMBDA_WORKFLOW_SERVICE_<NAME>`` variable names the service of the JSON table or of
    ``names`` (the services required) that it spells, upper-cased with ``-`` as ``_``
    (``MAIL_OUT`` is ``mail-out``), else its name lower-cased."""
    services: dict[str, ServiceTarget] = {}

    def parse(name: str, spec: str) -> None:
        try:
            services[name] = ServiceTarget.parse(name, spec)
        except ConfigurationError as exc:
            problems.append(str(exc))

    raw = env.get(_ENV + "SERVICES")
    if raw:
        try:
            table = json.loads(raw)
        except ValueError as exc:
            problems.append(f"{_ENV}SERVICES is not valid JSON: {exc}")
            table = {}
        if not isinstance(table, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            problems.append(
                f"{_ENV}SERVICES must be a JSON object of service name to target string")
            table = {}
        for name, spec in table.items():
            parse(name, spec)
    prefix = _ENV + "SERVICE_"
    for key, spec in sorted(env.items()):
        if key.startswith(prefix) and len(key) > len(prefix):
            # the env name is upper-cased; match it to a known service case-insensitively
            wanted = key[len(prefix):]
            name = next((n for n in (*services, *names)
                         if n.upper().replace("-", "_") == wanted), wanted.lower())
            parse(name, spec)
    return services
