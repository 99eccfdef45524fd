"""A real AWS-API server for the AWS backends: moto's, over HTTP on 127.0.0.1.

One server per test session (it starts in about a second), listening on a free loopback port
and stopped at the end of the session. Every test that uses :func:`aws` starts from an empty
account: the fixture resets the server's state (``POST /moto-api/reset``) before the test.
Lambda runs as moto's simple backend (no Docker): an async ``Invoke`` is accepted and recorded
by :class:`LambdaInvocations`, and a test plays the Lambda runtime by handing the recorded
events to the handler.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambda_workflow.aws.config import AwsConfig, ServiceTarget

REGION = "us-east-1"
_names = itertools.count()
# The examples (the bank workflow, its Lambda handlers, the plain-boto3 service) import as
# top-level modules, as they do inside a deployment zip.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def _post(url: str, payload: object | None = None) -> None:
    data = json.dumps(payload).encode() if payload is not None else b""
    request = urllib.request.Request(url, data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@dataclass
class LambdaInvocations:
    """Async invocations moto accepted, in order: ``(function name, payload bytes)``."""

    calls: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> list[tuple[str, bytes]]:
        with self.lock:
            out, self.calls = self.calls, []
        return out


_INVOCATIONS = LambdaInvocations()


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's server on 127.0.0.1 (a free port), with async Lambda invocations recorded
    in ``_INVOCATIONS``; yields its URL and stops it on exit."""
    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.server import ThreadedMotoServer

    original = LambdaSimpleBackend.invoke

    def recording_invoke(self: LambdaSimpleBackend, function_name: str, qualifier: str | None,
                         body: Any, headers: Any, response_headers: Any) -> Any:
        payload = body if isinstance(body, bytes) else str(body or "").encode()
        with _INVOCATIONS.lock:
            _INVOCATIONS.calls.append((function_name, payload))
        return original(self, function_name, qualifier, body, headers, response_headers)

    LambdaSimpleBackend.invoke = recording_invoke  # type: ignore[method-assign]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The URL of a moto server on 127.0.0.1 (a free port), for the whole session."""
    for name in ("werkzeug", "moto", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with moto_server() as endpoint:
        yield endpoint


@dataclass
class Aws:
    """One test's view of the moto server: a boto3 session on it, request counts, helpers
    that create resources with fresh names."""

    endpoint: str
    session: boto3.Session
    requests: Counter[str]
    invocations: LambdaInvocations

    def client(self, name: str) -> Any:
        return self.session.client(name, endpoint_url=self.endpoint,  # type: ignore[call-overload]
                                   region_name=REGION)

    def name(self, stem: str) -> str:
        return f"{stem}-{next(_names)}"

    def create_table(self, name: str | None = None) -> str:
        """The deployment's single table, as deploy/template.yaml declares it."""
        from lambda_workflow.aws.dynamodb import table_definition

        name = name or self.name("workflows")
        ddb = self.client("dynamodb")
        ddb.create_table(TableName=name, **table_definition())
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": "expires_at"})
        return name

    def create_fifo_queue(self, name: str | None = None, *, max_receives: int | None = None,
                          visibility_timeout: int = 30) -> tuple[str, str | None]:
        """A FIFO queue (and, with ``max_receives``, its FIFO dead-letter queue with that
        redrive count). Returns the queue URL and the DLQ URL."""
        sqs = self.client("sqs")
        name = name or self.name("workflows")
        dlq_url = None
        attributes = {"FifoQueue": "true", "VisibilityTimeout": str(visibility_timeout)}
        if max_receives is not None:
            dlq_url = sqs.create_queue(QueueName=f"{name}-dlq.fifo",
                                       Attributes={"FifoQueue": "true"})["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
                "Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
        url = sqs.create_queue(QueueName=f"{name}.fifo", Attributes=attributes)["QueueUrl"]
        return url, dlq_url

    def create_queue(self, name: str | None = None) -> str:
        """A standard queue (a service's request queue)."""
        return str(self.client("sqs").create_queue(QueueName=name or self.name("svc"))[
            "QueueUrl"])

    def create_bucket(self, name: str | None = None) -> str:
        name = name or self.name("payloads")
        self.client("s3").create_bucket(Bucket=name)
        return name

    def create_function(self, name: str | None = None) -> str:
        """A Lambda function (moto's simple backend records its async invocations)."""
        import io
        import zipfile

        name = name or self.name("fn")
        iam = self.client("iam")
        try:
            role = iam.get_role(RoleName="lambda-role")["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            role = iam.create_role(RoleName="lambda-role",
                                   AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as zf:
            zf.writestr("handler.py", "def handler(event, context):\n    return None\n")
        self.client("lambda").create_function(
            FunctionName=name, Runtime="python3.12", Role=role, Handler="handler.handler",
            Code={"ZipFile": code.getvalue()})
        return name

    def config(self, *, services: dict[str, str] | None = None, bucket: str | None = None,
               max_receives: int = 5, **overrides: Any) -> AwsConfig:
        """A fresh deployment: table, FIFO queue with DLQ, and the given service targets."""
        table = self.create_table()
        queue_url, dlq_url = self.create_fifo_queue(max_receives=max_receives)
        return AwsConfig(
            table=table, queue_url=queue_url, dead_letter_queue_url=dlq_url, bucket=bucket,
            max_receives=max_receives, endpoint_url=self.endpoint, region=REGION,
            services={k: ServiceTarget.parse(k, v) for k, v in (services or {}).items()},
            **overrides)


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """An empty moto account and a boto3 session that talks to it over HTTP."""
    _post(moto_endpoint + "/moto-api/reset")
    _post(moto_endpoint + "/moto-api/config", {"lambda": {"use_docker": False}})
    _INVOCATIONS.take()
    for var in list(os.environ):
        if var.startswith(("LAMBDA_WORKFLOW_", "AWS_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    session = boto3.Session(region_name=REGION)
    requests: Counter[str] = Counter()

    def count(event_name: str, **kwargs: Any) -> None:
        # event_name is "before-call.<service>.<Operation>"
        service, operation = event_name.split(".", 2)[1:]
        requests[f"{service}.{operation}"] += 1

    session.events.register("before-call", count)
    return Aws(moto_endpoint, session, requests, _INVOCATIONS)
