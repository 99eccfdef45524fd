"""What a bank workflow costs on AWS: AWS API requests counted on moto, priced at list prices.

Run:  .venv/bin/python benchmarks/aws_cost.py [--workflows N] [--json PATH]

The bank example (examples/bank_transaction.py: balance and fraud in parallel, then the
transaction) is deployed on a moto server in this process, as tests/aws/bank.py deploys it:
the workflow function on the FIFO queue, the balance service on a standard queue, the fraud
service invoked asynchronously, the plain-boto3 transaction service on a standard queue.
Two scenarios run, each on a freshly reset server:

(a) one workflow alone (alice, 50 -> "success"), drained by the single-threaded poller;
(b) N concurrent workflows (default 100; the mix of tests/aws/test_bank_e2e.py: accounts
    alice/bob/mallory/carol, amounts 1..N) drained with two pollers per queue.

Before each, one workflow runs unrecorded so that every function has created its boto3
clients, as in a warm Lambda container (cold starts are not costed).

Every AWS request made from starting the workflows until the queues are drained is recorded
with its parameters and its response (botocore's ``before-parameter-build`` and
``after-call`` events on the boto3 session), with the Lambda function it was made from (or
the client, or Lambda's SQS poller). Each handler call is one Lambda request, timed with
``time.thread_time()`` (moto's server runs on other threads). Requests are then priced:

- SQS: $0.40 (standard) / $0.50 (FIFO) per million requests, each 64 KB chunk of a request's
  payload billed as one request; the queue type comes from the request's QueueUrl.
- DynamoDB on demand: $0.625 per million write request units, $0.125 per million read
  request units; units computed from the items (moto reports no consumed capacity), see
  ``dynamodb_units``.
- S3: $0.005 per 1,000 PUT, $0.0004 per 1,000 GET (the bank run uses none).
- Lambda arm64: $0.20 per million requests, $0.0000133334 per GB-second, 256 MB; the billed
  duration of an invocation is estimated (see ``billed_ms``).

Prices are the published us-east-1 list prices (Amazon SQS, Amazon DynamoDB, Amazon S3, AWS
Lambda and AWS Step Functions pricing pages) as the issue states them. The same workflow on
Step Functions Standard and on Lambda durable functions is estimated beside it from a count of
what those services bill. Everything is written to benchmarks/results/aws_cost.json; the
method and a run's tables are in docs/aws-cost.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests", ROOT / "examples"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bank_transaction as bank  # noqa: E402  (examples/)
import boto3  # noqa: E402
import pytest  # noqa: E402

from lambda_workflow.aws.payloads import dynamodb_item_size, sqs_message_size  # noqa: E402
from tests.aws.bank import BankOnAws, deploy_bank, expected_result  # noqa: E402
from tests.aws.conftest import _INVOCATIONS, REGION, Aws, _post, moto_server  # noqa: E402
from tests.aws.harness import drain  # noqa: E402

ACCOUNTS = ("alice", "bob", "mallory", "carol")
MILLION = 1_000_000

# -- prices (us-east-1 list prices, as stated in the issue) ---------------------------------
PRICES: dict[str, float] = {
    "sqs_fifo_request": 0.50 / MILLION,       # Amazon SQS pricing: FIFO queues
    "sqs_standard_request": 0.40 / MILLION,   # Amazon SQS pricing: standard queues
    "dynamodb_wru": 0.625 / MILLION,          # Amazon DynamoDB pricing: on-demand writes
    "dynamodb_rru": 0.125 / MILLION,          # Amazon DynamoDB pricing: on-demand reads
    "s3_put": 0.005 / 1000,                   # Amazon S3 pricing: PUT, COPY, POST, LIST
    "s3_get": 0.0004 / 1000,                  # Amazon S3 pricing: GET, SELECT
    "lambda_request": 0.20 / MILLION,         # AWS Lambda pricing: requests
    "lambda_gb_second_arm64": 0.0000133334,   # AWS Lambda pricing: duration, Arm
    "sfn_standard_transition": 25 / MILLION,  # AWS Step Functions pricing: Standard
    "durable_operation": 8 / MILLION,         # AWS Lambda pricing: durable functions
    "durable_data_written_gb": 0.25,          # AWS Lambda pricing: durable functions
    "durable_data_retained_gb_month": 0.15,   # AWS Lambda pricing: durable functions
}
MEMORY_GB = 256 / 1024
SQS_CHUNK = 64 * 1024

# Assumed AWS API latency seen from inside a Lambda function in the same region (ms). An
# invocation's billed duration adds these for every request it made to its CPU time.
LATENCY_MS: dict[str, float] = {
    "sqs.SendMessage": 8, "sqs.SendMessageBatch": 10, "sqs.ReceiveMessage": 8,
    "sqs.DeleteMessage": 8, "sqs.DeleteMessageBatch": 8, "sqs.ChangeMessageVisibility": 8,
    "sqs.ChangeMessageVisibilityBatch": 8,
    "dynamodb.GetItem": 5, "dynamodb.PutItem": 5, "dynamodb.UpdateItem": 5,
    "dynamodb.DeleteItem": 5, "dynamodb.Query": 8, "dynamodb.Scan": 8,
    "dynamodb.TransactWriteItems": 12,
    "lambda.Invoke": 15,
    "s3.PutObject": 30, "s3.GetObject": 20,
}
DEFAULT_LATENCY_MS = 10.0
# The services' own work, counted the same in all three designs: one Lambda request per
# service call, billed at the 1 ms minimum (the bank's services are dictionary lookups).
SERVICE_WORK_MS = 1

# -- Step Functions Standard and Lambda durable functions: what they would bill --------------
# State transitions of the equivalent state machine, per outcome. States: Parallel (two
# branches: BalanceTask, FraudTask) -> Choice -> TransactionTask -> Succeed, and
# Choice -> Declined (a Succeed/Pass state that returns "failure"). One transition is counted
# per state entered, the Parallel state once and each state of its branches once.
SFN_TRANSITIONS = {
    ("completed", "success"): 6,   # Parallel, Balance, Fraud, Choice, Transaction, Succeed
    ("completed", "failure"): 5,   # Parallel, Balance, Fraud, Choice, Declined
    ("failed", "ServiceError"): 3,  # Parallel, Balance (fails), Fraud; the execution fails
}
# Durable operations of the same workflow written with the durable execution SDK:
# context.parallel over two branches that each context.invoke() a service function, then
# context.invoke() the transaction service. Counted: the execution start (1), the parallel
# operation (1), one child context per branch (2), one chained invoke per service call.
DURABLE_OPERATIONS = {
    ("completed", "success"): 7,
    ("completed", "failure"): 6,
    ("failed", "ServiceError"): 6,
}
# A lower count, if only the execution start and the chained invokes were billed.
DURABLE_OPERATIONS_LOW = {
    ("completed", "success"): 4,
    ("completed", "failure"): 3,
    ("failed", "ServiceError"): 3,
}
# Invocations of the durable function: the first, and one re-invocation per chained invoke
# that completes (the function suspends while a service runs and is invoked again after).
DURABLE_INVOCATIONS = {
    ("completed", "success"): 4,
    ("completed", "failure"): 3,
    ("failed", "ServiceError"): 3,
}
DURABLE_CHECKPOINT_MS = 10.0  # one CheckpointDurableExecution call per invocation (assumed)
DURABLE_BYTES_PER_EXECUTION = 1024  # checkpoint data written per execution (assumed)
DURABLE_RETENTION_DAYS = 14  # the default retention period
# Wall time of one invocation of aws-durable-execution-sdk-python 3.0.0 replaying a few
# operations, measured by benchmarks/peers (read from its results.json when present): about
# 100 ms of it is the SDK's checkpoint thread waiting out its 0.1 s poll.
DURABLE_INVOCATION_S_FALLBACK = 0.102
DURABLE_INVOCATION_CPU_S_FALLBACK = 0.0023


# -- recording ----------------------------------------------------------------------------
@dataclass
class Call:
    """One AWS request: ``service.Operation``, its parameters and parsed response, who made
    it (a Lambda function, ``client`` or ``event-source-mapping``)."""

    op: str
    params: Mapping[str, Any]
    response: Mapping[str, Any]
    caller: str

    @property
    def retries(self) -> int:
        """HTTP attempts botocore repeated for this request (each one a billed request)."""
        return int(self.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))

    @property
    def error(self) -> str | None:
        code = self.response.get("Error", {}).get("Code")
        return str(code) if code else None


@dataclass
class Invocation:
    """One Lambda request: the function, its handler's CPU time and the requests it made."""

    function: str
    cpu_s: float = 0.0
    ops: list[str] = field(default_factory=list)


class Recorder:
    """Hooks on a boto3 session that record every request while ``active``."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.invocations: list[Invocation] = []
        self.active = False
        self._lock = threading.Lock()
        self._local = threading.local()

    def install(self, session: boto3.Session) -> None:
        session.events.register("before-parameter-build", self._before)
        session.events.register("after-call", self._after)

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["aws_cost.params"] = params

    def _after(self, event_name: str, parsed: Mapping[str, Any], context: dict[str, Any],
               **_: Any) -> None:
        if not self.active:
            return
        service, operation = event_name.split(".")[1:3]
        op = f"{service}.{operation}"
        invocation: Invocation | None = getattr(self._local, "invocation", None)
        caller = getattr(self._local, "caller", None) or "event-source-mapping"
        if invocation is not None:
            invocation.ops.append(op)
        call = Call(op, context.get("aws_cost.params", {}), parsed, caller)
        with self._lock:
            self.calls.append(call)

    @contextmanager
    def caller(self, name: str) -> Iterator[None]:
        previous = getattr(self._local, "caller", None)
        self._local.caller = name
        try:
            yield
        finally:
            self._local.caller = previous

    def timed(self, function: str, handler: Callable[[Any, Any], Any]
              ) -> Callable[[Any, Any], Any]:
        """``handler`` as one Lambda function: each call is an invocation, timed."""

        def run(event: Any, context: Any = None) -> Any:
            invocation = Invocation(function)
            self._local.invocation = invocation
            self._local.caller = function
            start = time.thread_time()
            try:
                return handler(event, context)
            finally:
                invocation.cpu_s = time.thread_time() - start
                self._local.invocation = None
                self._local.caller = None
                if self.active:
                    with self._lock:
                        self.invocations.append(invocation)

        return run


# -- units ----------------------------------------------------------------------------------
Key = tuple[str, str]


def _key(item: Mapping[str, Any]) -> Key:
    return (item["pk"]["S"], item["sk"]["S"])


def _ceil(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


@dataclass
class Units:
    """Billing units of one request."""

    sqs_fifo: int = 0
    sqs_standard: int = 0
    sqs_empty_receives: int = 0
    wru: float = 0.0
    rru: float = 0.0
    s3_put: int = 0
    s3_get: int = 0
    cancelled_transactions: int = 0
    failed_conditional_writes: int = 0

    def add(self, other: Units) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def sqs_units(call: Call) -> Units:
    """One request per 64 KB chunk of its payload (message bodies and attributes)."""
    params, units = call.params, Units()
    operation = call.op.split(".", 1)[1]
    if operation == "SendMessage":
        size = sqs_message_size(params["MessageBody"], params.get("MessageAttributes"))
    elif operation == "SendMessageBatch":
        size = sum(sqs_message_size(e["MessageBody"], e.get("MessageAttributes"))
                   for e in params["Entries"])
    elif operation == "ReceiveMessage":
        messages = call.response.get("Messages", [])
        if not messages:
            units.sqs_empty_receives = 1
            return units
        size = sum(sqs_message_size(m["Body"], m.get("MessageAttributes")) for m in messages)
    else:
        size = 0
    count = _ceil(size, SQS_CHUNK)
    if str(params.get("QueueUrl", "")).endswith(".fifo"):
        units.sqs_fifo = count
    else:
        units.sqs_standard = count
    return units


def dynamodb_units(call: Call, final_sizes: Mapping[Key, int]) -> Units:
    """Request units by AWS's rules, from the request, the response and the items' final
    sizes (a Scan after the run).

    - PutItem: ceil(item / 1 KB) WRU; UpdateItem: ceil(item after the update / 1 KB), the
      item's final size standing in for it (an upper bound: an item only grows here). A write
      whose condition fails still consumes units: the existing item's size, at least 1 WRU.
    - TransactWriteItems: two underlying writes per Put/Update/Delete (2x its WRU) and two
      underlying reads per ConditionCheck (2x ceil(item / 4 KB) RRU), consumed even when the
      transaction is cancelled.
    - GetItem: ceil(item / 4 KB) RRU strongly consistent (1 when there is no item); Query:
      ceil(total size of the items it read / 4 KB), at least 1 (a projection does not lower
      it: the final size of each item read is used); eventually consistent reads cost half.
    - The listing index (``by_status``): 1 WRU for a write that adds an item to it, 2 for one
      that changes its status (delete and put in the index), none for writes that leave its
      attributes alone (:func:`_index_wru`).
    """
    params, units = call.params, Units()
    operation = call.op.split(".", 1)[1]

    def final(key: Mapping[str, Any]) -> int:
        return final_sizes.get(_key(key), 0)

    failed = call.error == "ConditionalCheckFailedException"
    if failed:
        units.failed_conditional_writes = 1
    if operation == "PutItem":
        size = final(params["Item"]) if failed else dynamodb_item_size(params["Item"])
        units.wru = _ceil(size, 1024)
    elif operation in ("UpdateItem", "DeleteItem"):
        units.wru = _ceil(final(params["Key"]), 1024)
    elif operation == "TransactWriteItems":
        units.cancelled_transactions = int(call.error is not None)
        for part in params["TransactItems"]:
            if "Put" in part:
                units.wru += 2 * _ceil(dynamodb_item_size(part["Put"]["Item"]), 1024)
            elif "ConditionCheck" in part:
                units.rru += 2 * _ceil(final(part["ConditionCheck"]["Key"]), 4096)
            else:
                action = part.get("Update") or part["Delete"]
                units.wru += 2 * _ceil(final(action["Key"]), 1024)
    elif operation == "GetItem":
        item = call.response.get("Item")
        units.rru = _ceil(dynamodb_item_size(item) if item else 0, 4096)
        if not params.get("ConsistentRead"):
            units.rru /= 2
    elif operation in ("Query", "Scan"):
        items = call.response.get("Items", [])
        if "ProjectionExpression" in params:
            size = sum(final(item) for item in items)
        else:
            size = sum(dynamodb_item_size(item) for item in items)
        units.rru = _ceil(size, 4096)
        if not params.get("ConsistentRead"):
            units.rru /= 2
    units.wru += _index_wru(operation, params, call.error)
    return units


#: The table's listing index (``by_status``, keyed by ``lw_status``): the attribute that puts an
#: item in it. Its entries hold the keys and the workflow name, under 1 KB: 1 WRU each.
INDEX_KEY = "lw_status"


def _sets_index_key(action: str, request: Mapping[str, Any]) -> int:
    """Index writes of one write: a Put holding the key adds an entry (1); an Update setting
    it moves the entry to another status (a delete and a put in the index: 2)."""
    if action == "Put":
        return int(INDEX_KEY in request.get("Item", {}))
    if action == "Update":
        names = request.get("ExpressionAttributeNames", {}).values()
        return 2 * int(INDEX_KEY in names
                       or INDEX_KEY in str(request.get("UpdateExpression", "")))
    return 0


def _index_wru(operation: str, params: Mapping[str, Any], error: str | None) -> float:
    """WRU of the writes to the listing index (a global secondary index is billed per write
    to it, on top of the table's write, and a failed or cancelled write writes nothing to
    it). A transaction's index writes are counted once each."""
    if error is not None:
        return 0
    if operation == "TransactWriteItems":
        return sum(_sets_index_key(action, request) for part in params["TransactItems"]
                   for action, request in part.items())
    return _sets_index_key(operation.removesuffix("Item"), params)


def _purpose(action: str, request: Mapping[str, Any]) -> str:
    """What a write is for, from its key and update expression (this project's layout)."""
    pk, sk = _key(request.get("Item") or request["Key"])
    expression = str(request.get("UpdateExpression", ""))
    if pk.startswith("svc#"):
        return "service reply record"
    if sk == "#instance":
        if action == "Put":
            return "create instance (client)"
        if action == "ConditionCheck":
            return "instance condition check"
        if "#sent" in expression:
            return "mark request sent"
        return "finish instance" if "#status" in expression else "activation counter"
    if action == "Put":
        return "new operation"
    if "#sent" in expression:
        return "mark request sent"
    if "#ttl" in expression:
        return "operation TTL at finish"
    return "record reply" if "#state" in expression else "other operation update"


def write_units_by_purpose(call: Call, final_sizes: Mapping[Key, int]) -> dict[str, float]:
    """The WRU of a DynamoDB write request, split by what each written item is for."""
    out: dict[str, float] = defaultdict(float)
    operation = call.op.split(".", 1)[1]
    if operation == "TransactWriteItems":
        for part in call.params["TransactItems"]:
            ((action, request),) = part.items()
            if action != "ConditionCheck":
                single = Call(f"dynamodb.{action}Item", request, {}, call.caller)
                index = _index_wru(f"{action}Item", request, None)
                out[_purpose(action, request)] += 2 * (
                    dynamodb_units(single, final_sizes).wru - index)
                if index and call.error is None:
                    out["listing index entry"] += index
    elif operation in ("PutItem", "UpdateItem", "DeleteItem"):
        action = operation.removesuffix("Item")
        index = _index_wru(operation, call.params, call.error)
        out[_purpose(action, call.params)] += dynamodb_units(call, final_sizes).wru - index
        if index:
            out["listing index entry"] += index
    return dict(out)


def call_units(call: Call, final_sizes: Mapping[Key, int]) -> Units:
    service = call.op.split(".", 1)[0]
    if service == "sqs":
        return sqs_units(call)
    if service == "dynamodb":
        return dynamodb_units(call, final_sizes)
    if call.op == "s3.PutObject":
        return Units(s3_put=1)
    if call.op == "s3.GetObject":
        return Units(s3_get=1)
    return Units()  # lambda.Invoke: billed as the invocation it delivers


def billed_ms(invocation: Invocation, cpu_scale: float) -> int:
    """Estimated billed duration: handler CPU time (times ``cpu_scale``) plus the assumed
    latency of each AWS request the invocation made, rounded up to 1 ms."""
    waiting = sum(LATENCY_MS.get(op, DEFAULT_LATENCY_MS) for op in invocation.ops)
    return max(1, math.ceil(invocation.cpu_s * 1000 * cpu_scale + waiting))


# -- one scenario ---------------------------------------------------------------------------
def _reset(endpoint: str) -> None:
    _post(endpoint + "/moto-api/reset")
    _post(endpoint + "/moto-api/config", {"lambda": {"use_docker": False}})
    _INVOCATIONS.take()


def _final_items(endpoint: str, table: str) -> list[dict[str, Any]]:
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = ddb.scan(**kwargs)
        items += page["Items"]
        if not page.get("LastEvaluatedKey"):
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _wrap(deployed: BankOnAws, recorder: Recorder) -> None:
    deployed.workflow_esm.handler = recorder.timed("workflow", deployed.workflow_esm.handler)
    deployed.balance_esm.handler = recorder.timed("balance", deployed.balance_esm.handler)
    deployed.transaction_esm.handler = recorder.timed("transaction",
                                                      deployed.transaction_esm.handler)
    deployed.invoker.functions = {name: recorder.timed("fraud", handler)
                                  for name, handler in deployed.invoker.functions.items()}


@dataclass
class Run:
    name: str
    inputs: list[tuple[str, str, int]]
    wall_s: float
    calls: list[Call]
    invocations: list[Invocation]
    final_sizes: dict[Key, int]
    service_calls: int
    outcomes: Counter[tuple[str, str]]


def run_scenario(endpoint: str, name: str, inputs: list[tuple[str, str, int]],
                 threads: int) -> Run:
    _reset(endpoint)
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith(("LAMBDA_WORKFLOW_", "AWS_")):
                mp.delenv(var)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        session = boto3.Session(region_name=REGION)
        recorder = Recorder()
        recorder.install(session)
        aws = Aws(endpoint, session, Counter(), _INVOCATIONS)
        deployed = deploy_bank(aws, mp)
        _wrap(deployed, recorder)
        # A warm-up workflow, not recorded: every function creates its boto3 clients on first
        # use, which a warm Lambda container has already done (cold starts are not costed).
        deployed.client.start(bank.make_transaction,
                              bank.BankTransaction(account_id="alice", amount=1),
                              workflow_id="warm-up")
        drain(deployed.pollers)
        warm_up_calls = sum(deployed.runs.values())

        recorder.active = True
        started = time.perf_counter()
        with recorder.caller("client"):
            for workflow_id, account, amount in inputs:
                deployed.client.start(bank.make_transaction,
                                      bank.BankTransaction(account_id=account, amount=amount),
                                      workflow_id=workflow_id)
        drain(deployed.pollers, threads=threads, timeout=600)
        wall = time.perf_counter() - started
        recorder.active = False

        outcomes: Counter[tuple[str, str]] = Counter()
        for workflow_id, account, amount in inputs:
            status, result = expected_result(account, amount)
            inst = deployed.client.describe(workflow_id)
            if inst.status.value != status:
                raise AssertionError(f"{workflow_id}: {inst.status.value}, expected {status}")
            if status == "completed":
                got = deployed.client.result(workflow_id, bank.make_transaction)
                if got != result:
                    raise AssertionError(f"{workflow_id}: {got!r}, expected {result!r}")
            outcomes[(status, result)] += 1
        ids = {workflow_id for workflow_id, _, _ in inputs}
        items = [item for item in _final_items(endpoint, deployed.config.table)
                 if item["pk"]["S"].rsplit("#", 1)[-1] in ids]
    return Run(name, inputs, wall, recorder.calls, recorder.invocations,
               {_key(item): dynamodb_item_size(item) for item in items},
               sum(deployed.runs.values()) - warm_up_calls, outcomes)


# -- costing --------------------------------------------------------------------------------
@dataclass
class Costed:
    """A run's units and costs, per workflow."""

    run: Run
    cpu_scale: float
    units: Units = field(default_factory=Units)
    requests: Counter[str] = field(default_factory=Counter)
    requests_by_caller: dict[str, Counter[str]] = field(default_factory=dict)
    wru_by_purpose: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def __post_init__(self) -> None:
        by_caller: dict[str, Counter[str]] = defaultdict(Counter)
        for call in self.run.calls:
            self.units.add(call_units(call, self.run.final_sizes))
            if call.op.startswith("dynamodb."):
                for purpose, wru in write_units_by_purpose(call, self.run.final_sizes).items():
                    self.wru_by_purpose[purpose] += wru
            self.requests[call.op] += 1
            by_caller[call.caller][call.op] += 1
        self.requests_by_caller = dict(by_caller)

    @property
    def n(self) -> int:
        return len(self.run.inputs)

    def lambda_gb_s(self, functions: set[str] | None = None, scale: float | None = None
                    ) -> float:
        scale = self.cpu_scale if scale is None else scale
        return sum(billed_ms(i, scale) / 1000 * MEMORY_GB for i in self.run.invocations
                   if functions is None or i.function in functions)

    def components(self) -> dict[str, float]:
        """Cost per workflow of each component (USD)."""
        u, n, p = self.units, self.n, PRICES
        parts = {
            "SQS FIFO": u.sqs_fifo * p["sqs_fifo_request"],
            "SQS standard": u.sqs_standard * p["sqs_standard_request"],
            "DynamoDB writes": u.wru * p["dynamodb_wru"],
            "DynamoDB reads": u.rru * p["dynamodb_rru"],
            "S3": u.s3_put * p["s3_put"] + u.s3_get * p["s3_get"],
            "Lambda requests": len(self.run.invocations) * p["lambda_request"],
            "Lambda duration": self.lambda_gb_s() * p["lambda_gb_second_arm64"],
        }
        per_workflow = {k: v / n for k, v in parts.items()}
        per_workflow["total"] = sum(per_workflow.values())
        return per_workflow

    def service_work(self) -> float:
        """The services' own Lambda cost per workflow, the same in all three designs."""
        per_call = (PRICES["lambda_request"]
                    + SERVICE_WORK_MS / 1000 * MEMORY_GB * PRICES["lambda_gb_second_arm64"])
        return self.run.service_calls * per_call / self.n

    def invocation_stats(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        by_function: dict[str, list[Invocation]] = defaultdict(list)
        for inv in self.run.invocations:
            by_function[inv.function].append(inv)
        for function, invs in sorted(by_function.items()):
            out[function] = {
                "invocations_per_workflow": len(invs) / self.n,
                "median_cpu_ms": statistics.median(i.cpu_s * 1000 for i in invs),
                "mean_cpu_ms": statistics.fmean(i.cpu_s * 1000 for i in invs),
                "median_requests": statistics.median(len(i.ops) for i in invs),
                "median_billed_ms": statistics.median(billed_ms(i, self.cpu_scale)
                                                      for i in invs),
                "mean_billed_ms": statistics.fmean(billed_ms(i, self.cpu_scale)
                                                   for i in invs),
            }
        return out


def durable_invocation() -> tuple[float, float, str]:
    """Wall and CPU time of one durable-function invocation replaying a few operations (the
    Python SDK, measured by benchmarks/peers), and where the numbers come from."""
    path = ROOT / "benchmarks" / "peers" / "results.json"
    try:
        data = json.loads(path.read_text())
        for peer in data["peers"]:
            if peer["peer"] != "aws-durable-execution-sdk-python":
                continue
            for row in peer["results"]:
                if row["n"] == 10:
                    return (float(row["median_s"]), float(row["median_cpu_s"]),
                            f"{path.relative_to(ROOT)} ({peer['peer']} {peer['version']}, "
                            "N = 10, medians)")
    except (OSError, KeyError, ValueError):
        pass
    return (DURABLE_INVOCATION_S_FALLBACK, DURABLE_INVOCATION_CPU_S_FALLBACK,
            "fallback constants (benchmarks/peers not run)")


def alternatives(costed: Costed) -> dict[str, dict[str, float]]:
    """Step Functions Standard and Lambda durable functions, per workflow, for the run's mix
    of outcomes."""
    n, p = costed.n, PRICES
    outcomes = costed.run.outcomes
    transitions = sum(SFN_TRANSITIONS[o] * k for o, k in outcomes.items()) / n
    operations = sum(DURABLE_OPERATIONS[o] * k for o, k in outcomes.items()) / n
    operations_low = sum(DURABLE_OPERATIONS_LOW[o] * k for o, k in outcomes.items()) / n
    invocations = sum(DURABLE_INVOCATIONS[o] * k for o, k in outcomes.items()) / n
    invocation_s, invocation_cpu_s, _ = durable_invocation()
    ms = math.ceil(invocation_s * 1000 + DURABLE_CHECKPOINT_MS)
    ms_no_idle = math.ceil(invocation_cpu_s * 1000 + DURABLE_CHECKPOINT_MS)
    gb = DURABLE_BYTES_PER_EXECUTION / 1024**3
    data = gb * (p["durable_data_written_gb"]
                 + p["durable_data_retained_gb_month"] * DURABLE_RETENTION_DAYS / 30)
    service = costed.service_work()
    duration = invocations * ms / 1000 * MEMORY_GB * p["lambda_gb_second_arm64"]
    duration_no_idle = invocations * ms_no_idle / 1000 * MEMORY_GB * p[
        "lambda_gb_second_arm64"]
    durable_orch = (operations * p["durable_operation"]
                    + invocations * p["lambda_request"] + duration + data)
    lw = costed.components()["total"]
    return {
        "lambda-workflow": {"orchestration": lw - service, "all_in": lw},
        "step_functions_standard": {
            "transitions_per_workflow": transitions,
            "orchestration": transitions * p["sfn_standard_transition"],
            "all_in": transitions * p["sfn_standard_transition"] + service},
        "lambda_durable_functions": {
            "operations_per_workflow": operations,
            "invocations_per_workflow": invocations,
            "billed_ms_per_invocation": ms,
            "billed_ms_per_invocation_without_sdk_idle": ms_no_idle,
            "operations": operations * p["durable_operation"],
            "lambda_requests": invocations * p["lambda_request"],
            "lambda_duration": duration,
            "data_written_and_retained": data,
            "orchestration": durable_orch,
            "orchestration_without_sdk_idle": durable_orch - duration + duration_no_idle,
            "all_in": durable_orch + service,
            "operations_per_workflow_low": operations_low,
            "orchestration_low": durable_orch - (operations - operations_low) * p[
                "durable_operation"],
            "all_in_low": durable_orch + service - (operations - operations_low) * p[
                "durable_operation"]},
        "service_work": {"per_workflow": service,
                         "service_calls_per_workflow": costed.run.service_calls / n},
    }


# -- output ---------------------------------------------------------------------------------
def usd(per_workflow: float) -> str:
    """Per workflow -> per million workflows."""
    return f"${per_workflow * MILLION:,.2f}"


def table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A markdown table; every column but the first right-aligned when ``numeric``."""
    align = "---:" if numeric else "---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else align for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(one: Costed, many: Costed) -> tuple[str, dict[str, Any]]:
    out: list[str] = []
    c1, c2 = one.components(), many.components()
    a1, a2 = alternatives(one), alternatives(many)
    label2 = f"per workflow, {many.n} concurrent"
    out.append("### lambda-workflow: cost per million bank workflows (estimate)\n")
    rows = [[k, usd(c1[k]), usd(c2[k])] for k in c1 if k != "S3" or c1[k] or c2[k]]
    rows[-1] = [f"**{r}**" for r in rows[-1]]
    out.append(table(["component", "one workflow alone", label2], rows))

    out.append("\n### Billing units per workflow\n")
    unit_rows = []
    for name, label in (("sqs_fifo", "SQS FIFO requests (64 KB chunks)"),
                        ("sqs_standard", "SQS standard requests (64 KB chunks)"),
                        ("wru", "DynamoDB write request units"),
                        ("rru", "DynamoDB read request units"),
                        ("cancelled_transactions", "cancelled TransactWriteItems"),
                        ("failed_conditional_writes", "failed conditional writes"),
                        ("sqs_empty_receives", "empty ReceiveMessage (not billed above)")):
        unit_rows.append([label, f"{getattr(one.units, name) / one.n:g}",
                          f"{getattr(many.units, name) / many.n:g}"])
    unit_rows.append(["Lambda requests", f"{len(one.run.invocations) / one.n:g}",
                      f"{len(many.run.invocations) / many.n:g}"])
    unit_rows.append(["Lambda GB-seconds", f"{one.lambda_gb_s() / one.n:.4f}",
                      f"{many.lambda_gb_s() / many.n:.4f}"])
    out.append(table(["unit", "one workflow alone", label2], unit_rows))

    out.append("\n### DynamoDB write units per workflow, by purpose\n")
    purposes = sorted(set(one.wru_by_purpose) | set(many.wru_by_purpose),
                      key=lambda k: -many.wru_by_purpose.get(k, 0))
    out.append(table(["written for", "one workflow alone", label2],
                     [[k, f"{one.wru_by_purpose.get(k, 0) / one.n:g}",
                       f"{many.wru_by_purpose.get(k, 0) / many.n:g}"] for k in purposes]))

    out.append("\n### AWS API requests per workflow, by kind\n")
    kinds = sorted(set(one.requests) | set(many.requests))
    out.append(table(["request", "one workflow alone", label2],
                     [[k, f"{one.requests[k] / one.n:g}", f"{many.requests[k] / many.n:g}"]
                      for k in kinds]
                     + [["**all**", f"**{sum(one.requests.values()) / one.n:g}**",
                         f"**{sum(many.requests.values()) / many.n:g}**"]]))

    out.append("\n### Who makes them (one workflow alone)\n")
    out.append(table(["caller", "requests"], [
        [caller, ", ".join(f"{op} x{k}" for op, k in sorted(ops.items()))]
        for caller, ops in sorted(one.requests_by_caller.items())], numeric=False))

    out.append("\n### Lambda invocations\n")
    s1, s2 = one.invocation_stats(), many.invocation_stats()
    rows = []
    for function in sorted(set(s1) | set(s2)):
        row = [function]
        for stats in (s1, s2):
            st = stats.get(function)
            row += ([f"{st['invocations_per_workflow']:g}", f"{st['median_cpu_ms']:.1f}",
                     f"{st['median_billed_ms']:g}"] if st else ["-", "-", "-"])
        rows.append(row)
    out.append(table(["function", "(a) per wf", "(a) median CPU ms", "(a) median billed ms",
                      "(b) per wf", "(b) median CPU ms", "(b) median billed ms"], rows))

    out.append("\n### Compared: cost per million bank workflows (estimates)\n")
    rows = []
    for label, alt in (("one workflow alone (success)", a1), (f"{many.n} concurrent, mix", a2)):
        for line, key in (("orchestration only", "orchestration"), ("all-in", "all_in")):
            durable = alt["lambda_durable_functions"]
            rows.append([f"{line}, {label}", usd(alt["lambda-workflow"][key]),
                         usd(alt["step_functions_standard"][key]),
                         f"{usd(durable[key])} ({usd(durable[key + '_low'])})"])
    out.append(table(["", "lambda-workflow", "Step Functions Standard",
                      "Lambda durable functions (low count)"], rows))
    d2 = a2["lambda_durable_functions"]
    out.append(
        f"\nService work (same in all three, in all-in): {usd(a2['service_work']['per_workflow'])}"
        f" per million ({a2['service_work']['service_calls_per_workflow']:g} service calls per "
        f"workflow, one Lambda request and {SERVICE_WORK_MS} ms each). Step Functions: "
        f"{a2['step_functions_standard']['transitions_per_workflow']:g} transitions per "
        f"workflow (mix). Durable functions (mix): {d2['operations_per_workflow']:g} operations "
        f"(low count {d2['operations_per_workflow_low']:g}) "
        f"{usd(d2['operations'])}, {d2['invocations_per_workflow']:g} invocations "
        f"{usd(d2['lambda_requests'])}, duration at {d2['billed_ms_per_invocation']} ms each "
        f"{usd(d2['lambda_duration'])}, data {usd(d2['data_written_and_retained'])}; without "
        "the Python SDK's ~100 ms idle per invocation "
        f"({d2['billed_ms_per_invocation_without_sdk_idle']} ms each) orchestration would be "
        f"{usd(d2['orchestration_without_sdk_idle'])}.")
    scale_note = (f"Lambda duration above uses handler CPU x {one.cpu_scale:g}. "
                  if one.cpu_scale != 1 else "")
    unscaled = [many.lambda_gb_s(scale=s) / many.n * PRICES["lambda_gb_second_arm64"]
                for s in (1.0, 1769 / 256)]
    out.append(
        f"\n{scale_note}Lambda duration per million ({many.n} concurrent) with CPU as measured: "
        f"{usd(unscaled[0])}; with CPU x 6.91 (a 256 MB function gets 256/1769 of a vCPU): "
        f"{usd(unscaled[1])}.")
    retries = [sum(c.retries for c in x.run.calls) for x in (one, many)]
    out.append(f"\nRequests botocore retried (moto answered HTTP 500, e.g. its "
               f"TransactWriteItems racing another thread; not costed above): {retries[0]} "
               f"alone, {retries[1]} in the concurrent run.")
    out.append(f"\nWall time on moto: one workflow {one.run.wall_s:.2f} s; {many.n} concurrent "
               f"{many.run.wall_s:.2f} s (start to drained; moto in this process).")

    def scenario(c: Costed, alt: dict[str, dict[str, float]]) -> dict[str, Any]:
        return {
            "workflows": c.n,
            "wall_s": c.run.wall_s,
            "outcomes": {f"{s}/{r}": k for (s, r), k in c.run.outcomes.items()},
            "cost_per_workflow_usd": c.components(),
            "cost_per_million_workflows_usd": {k: v * MILLION
                                               for k, v in c.components().items()},
            "units_total": vars(c.units),
            "lambda_invocations": len(c.run.invocations),
            "lambda_gb_seconds": c.lambda_gb_s(),
            "wru_per_workflow_by_purpose": {
                k: v / c.n for k, v in sorted(c.wru_by_purpose.items(), key=lambda kv: -kv[1])},
            "requests_total": dict(sorted(c.requests.items())),
            "botocore_retries": sum(call.retries for call in c.run.calls),
            "requests_per_workflow": {k: v / c.n for k, v in sorted(c.requests.items())},
            "requests_by_caller": {caller: dict(sorted(ops.items()))
                                   for caller, ops in sorted(c.requests_by_caller.items())},
            "invocations": c.invocation_stats(),
            "table_bytes_per_workflow": sum(c.run.final_sizes.values()) / c.n,
            "table_items_per_workflow": len(c.run.final_sizes) / c.n,
            "comparison_per_million_usd": {
                design: {k: (v * MILLION if k in ("orchestration", "all_in", "operations",
                                                  "lambda_requests", "lambda_duration",
                                                  "data_written_and_retained",
                                                  "orchestration_without_sdk_idle",
                                                  "orchestration_low", "all_in_low",
                                                  "per_workflow") else v)
                         for k, v in values.items()}
                for design, values in alt.items()},
        }

    invocation_s, invocation_cpu_s, source = durable_invocation()
    data: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "note": "estimates: request counts are measured on moto; units, durations and the "
                "Step Functions / durable functions columns are computed from stated "
                "assumptions (docs/aws-cost.md)",
        "prices_usd": PRICES,
        "assumptions": {
            "lambda_memory_mb": 256, "lambda_architecture": "arm64",
            "cpu_scale": one.cpu_scale, "latency_ms": LATENCY_MS,
            "default_latency_ms": DEFAULT_LATENCY_MS, "service_work_ms": SERVICE_WORK_MS,
            "sfn_transitions": {f"{s}/{r}": v for (s, r), v in SFN_TRANSITIONS.items()},
            "durable_operations": {f"{s}/{r}": v for (s, r), v in DURABLE_OPERATIONS.items()},
            "durable_invocations": {f"{s}/{r}": v
                                    for (s, r), v in DURABLE_INVOCATIONS.items()},
            "durable_invocation_s": invocation_s, "durable_invocation_cpu_s": invocation_cpu_s,
            "durable_invocation_source": source,
            "durable_checkpoint_ms": DURABLE_CHECKPOINT_MS,
            "durable_bytes_per_execution": DURABLE_BYTES_PER_EXECUTION,
        },
        "one_alone": scenario(one, a1),
        "concurrent": scenario(many, a2),
    }
    return "\n".join(out), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", type=int, default=100,
                        help="workflows in the concurrent scenario (default 100)")
    parser.add_argument("--cpu-scale", type=float, default=1.0,
                        help="multiply measured handler CPU time by this for billed duration "
                             "(default 1: as measured here)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "aws_cost.json")
    args = parser.parse_args()

    for name in ("moto", "botocore.credentials", "lambda_workflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # moto's server errors are counted as retries below instead of printed.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    with moto_server() as endpoint:
        one = run_scenario(endpoint, "one", [("tx-ok", "alice", 50)], threads=1)
        inputs = [(f"tx-{i:03d}", ACCOUNTS[i % 4], i + 1) for i in range(args.workflows)]
        many = run_scenario(endpoint, "concurrent", inputs, threads=2)

    text, data = report(Costed(one, args.cpu_scale), Costed(many, args.cpu_scale))
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    print(f"\nwrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")


if __name__ == "__main__":
    main()
