"""A new user's path to AWS, timed end to end: from `pip install` of the built wheel in a fresh
virtual environment to a workflow completing on the resources its generated template created.

The AWS account is moto's server on 127.0.0.1 (started here, stopped at the end). Each step is
what docs/aws.md tells a new user to do, run as a separate command:

1. `python -m venv` and `pip install '<wheel>[aws]'` (the x86_64 wheel from dist/: run
   `bash scripts/build_wheels.sh` first);
2. write a workflow module of their own (below: a refund with two services, a step and a
   durable timer), `mypy --strict` it, then `lambda-workflow template app.py -o template.yaml`;
3. `lambda-workflow package app.py --arch x86_64 --python 3.11` (lambda-workflow's wheel from
   the index: here `--find-links dist/`);
4. deploy: what `sam deploy` does (upload the zip, SAM transform, create the stack), with
   aws-sam-translator and CloudFormation's CreateStack on the server;
5. `lambda-workflow start app.py --table ... --queue-url ...` from the stack's outputs;
6. Lambda's part, played here: each created function's handler, imported from the unzipped
   package (the zip's own lambda-workflow and pydantic, boto3 from the runtime as on Lambda),
   runs with the environment its configuration holds, fed by its event source mapping's queue,
   until the instance completes; then `lambda-workflow status` and `history` on the table.

Run: .venv/bin/python benchmarks/new_user_path.py  (writes benchmarks/results/new_user_path.json)
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "new_user_path.json"
REGION = "us-east-1"

APP = '''\
"""Refunds: check the order, refund the payment, wait a cooling-off period, notify."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.aws import service_handler, workflow_handler


class Refund(BaseModel):
    order_id: str
    amount_cents: int


class Receipt(BaseModel):
    refund_id: str


payments = Service("payments", Refund, Receipt)
notify = Service("notify", Receipt, None)


@workflow
async def refund(ctx: WorkflowContext[Refund]) -> str:
    fee = await ctx.step(restocking_fee, ctx.request.amount_cents)
    receipt = await ctx.call(payments, Refund(order_id=ctx.request.order_id,
                                              amount_cents=ctx.request.amount_cents - fee))
    await ctx.sleep(timedelta(seconds=2))
    await ctx.call(notify, receipt)
    return receipt.refund_id


def restocking_fee(amount_cents: int) -> int:
    return amount_cents // 10


async def pay(request: Refund) -> Receipt:
    return Receipt(refund_id=f"rf-{request.order_id}-{request.amount_cents}")


async def send(receipt: Receipt) -> None:
    return None


handler = workflow_handler(refund)
handle_payments = service_handler(payments, pay)
handle_notify = service_handler(notify, send)
'''


def _run(step: str, argv: list[str], timings: dict[str, float], cwd: Path,
         env: dict[str, str] | None = None) -> str:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    timings[step] = timings.get(step, 0.0) + time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{step}: {' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}")
    return done.stdout


def _moto() -> tuple[Any, str, list[tuple[str, bytes]]]:
    """moto's server on 127.0.0.1, recording asynchronous Lambda invocations."""
    import logging

    from moto.awslambda_simple.models import LambdaSimpleBackend
    from moto.server import ThreadedMotoServer

    for noisy in ("werkzeug", "moto", "botocore.credentials"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    calls: list[tuple[str, bytes]] = []
    original = LambdaSimpleBackend.invoke

    def recording(self: Any, name: str, qualifier: Any, body: Any, headers: Any,
                  response_headers: Any) -> Any:
        calls.append((name, body if isinstance(body, bytes) else str(body or "").encode()))
        return original(self, name, qualifier, body, headers, response_headers)

    LambdaSimpleBackend.invoke = recording  # type: ignore[method-assign, assignment]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}", calls


def _deploy(session: Any, endpoint: str, template: Path, code: Path) -> dict[str, str]:
    """What `sam deploy` does: upload the zip, translate, create the stack; the outputs."""
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    s3, cfn = (session.client(n, endpoint_url=endpoint) for n in ("s3", "cloudformation"))
    s3.create_bucket(Bucket="sam-artifacts")
    s3.put_object(Bucket="sam-artifacts", Key="app.zip", Body=code.read_bytes())
    sam = yaml_parse(template.read_text(encoding="utf-8"))
    sam = copy.deepcopy(sam)
    sam["Globals"]["Function"]["CodeUri"] = "s3://sam-artifacts/app.zip"
    translated = Translator(None, Parser(), boto_session=SimpleNamespace(region_name=REGION)
                            ).translate(sam, parameter_values={},
                                        get_managed_policy_map=lambda: {})
    for name, resource in translated["Resources"].items():
        # moto names a FIFO queue without its .fifo and then refuses the name (a moto gap:
        # CloudFormation names it <stack>-<id>-<suffix>.fifo); name them as AWS would.
        if resource["Type"] == "AWS::SQS::Queue" and resource["Properties"].get("FifoQueue"):
            resource["Properties"]["QueueName"] = f"refunds-{name}-X1.fifo"
    cfn.create_stack(StackName="refunds", TemplateBody=json.dumps(translated),
                     Capabilities=["CAPABILITY_IAM"])
    stack = cfn.describe_stacks(StackName="refunds")["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise SystemExit(f"the stack is {stack['StackStatus']}")
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


class _Context:
    aws_request_id = "new-user"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def _play_lambda(session: Any, endpoint: str, task: Path, calls: list[tuple[str, bytes]],
                 outputs: dict[str, str], client_env: dict[str, str],
                 workflow_id: str) -> int:
    """Run the stack's functions from the unzipped package until the instance is done;
    returns the number of invocations."""
    sys.path.insert(0, str(task))  # the zip's packages first, as in /var/task
    import importlib

    lam, sqs = (session.client(n, endpoint_url=endpoint) for n in ("lambda", "sqs"))
    runtime = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
               "AWS_ENDPOINT_URL": endpoint}
    pollers: list[tuple[str, Any, dict[str, str], str]] = []
    by_name: dict[str, tuple[Any, dict[str, str]]] = {}
    for output, name in sorted(outputs.items()):
        if not output.endswith("FunctionName"):
            continue
        config = lam.get_function_configuration(FunctionName=name)
        owner, attribute = config["Handler"].rsplit(".", 1)
        handler = getattr(importlib.import_module(owner), attribute)
        env = {k: str(v) for k, v in config["Environment"]["Variables"].items()} | runtime
        by_name[name] = by_name[config["FunctionArn"]] = (handler, env)
        for mapping in lam.list_event_source_mappings(FunctionName=name)[
                "EventSourceMappings"]:
            lam.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
            queue = sqs.get_queue_url(QueueName=mapping["EventSourceArn"].split(":")[-1])[
                "QueueUrl"]
            pollers.append((queue, handler, env, mapping["EventSourceArn"]))
    lock = threading.Lock()

    def invoke(handler: Any, env: dict[str, str], event: Any) -> Any:
        with lock:
            saved = dict(os.environ)
            os.environ.clear()
            os.environ.update(env)
            try:
                return handler(event, _Context())
            finally:
                os.environ.clear()
                os.environ.update(saved)

    from lambda_workflow.aws import AwsConfig, WorkflowClient

    client = WorkflowClient(AwsConfig(table=client_env["table"],
                                      queue_url=client_env["queue"], endpoint_url=endpoint,
                                      region=REGION), session=session)
    invocations = 0
    deadline = time.monotonic() + 120
    while client.describe(workflow_id).status.value == "running":
        if time.monotonic() > deadline:
            raise SystemExit("the workflow did not finish in 120 s")
        got = 0
        for queue, handler, env, arn in pollers:
            messages = sqs.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"]).get("Messages", [])
            if not messages:
                continue
            got += len(messages)
            records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"], "attributes": dict(m.get("Attributes", {})),
                        "messageAttributes": {
                            k: {"stringValue": a.get("StringValue"),
                                "dataType": a["DataType"]}
                            for k, a in m.get("MessageAttributes", {}).items()},
                        "eventSource": "aws:sqs", "eventSourceARN": arn,
                        "awsRegion": REGION} for m in messages]
            response = invoke(handler, env, {"Records": records}) or {}
            invocations += 1
            failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages) if m["MessageId"] not in failed]
            if done:
                sqs.delete_message_batch(QueueUrl=queue, Entries=done)
        while calls:
            name, payload = calls.pop(0)
            handler, env = by_name[name]
            invoke(handler, env, json.loads(payload))
            invocations += 1
            got += 1
        if not got:
            time.sleep(0.2)
    return invocations


def main() -> None:
    # The wheel pip would pick for this interpreter: its per-version build, else the abi3 one.
    own = f"cp{sys.version_info.major}{sys.version_info.minor}"
    dist = ROOT / "dist"
    wheels = (sorted(dist.glob(f"lambda_workflow-*-{own}-{own}-manylinux2014_x86_64*.whl"))
              or sorted(dist.glob("lambda_workflow-*-abi3-manylinux2014_x86_64*.whl")))
    if not wheels:
        raise SystemExit("no x86_64 wheel in dist/: run `bash scripts/build_wheels.sh` first")
    import boto3

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="new-user-") as tmp:
        home = Path(tmp)
        python = home / ".venv" / "bin" / "python"
        cli = [str(python), "-m", "lambda_workflow"]
        _run("1 venv + pip install", [sys.executable, "-m", "venv", ".venv"], timings, home)
        _run("1 venv + pip install", [str(python), "-m", "pip", "install", "-q",
                                      f"{wheels[-1]}[aws]", "mypy"], timings, home)
        (home / "app.py").write_text(APP, encoding="utf-8")
        _run("2 mypy --strict app.py", [str(python), "-m", "mypy", "--strict", "app.py"],
             timings, home)
        shown = _run("2 template", [*cli, "template", "app.py", "--python", "3.11",
                                    "--arch", "x86_64", "-o", "template.yaml"], timings, home)
        print(shown.strip())
        shown = _run("3 package", [*cli, "package", "app.py", "--arch", "x86_64",
                                   "--python", "3.11", "--find-links", str(ROOT / "dist"),
                                   "-o", "build/lambda.zip"], timings, home)
        print(shown.strip().splitlines()[-1])
        server, endpoint, calls = _moto()
        try:
            session = boto3.Session(aws_access_key_id="testing",
                                    aws_secret_access_key="testing", region_name=REGION)
            t0 = time.perf_counter()
            outputs = _deploy(session, endpoint, home / "template.yaml",
                              home / "build" / "lambda.zip")
            resources = (home / "template.yaml").read_text(encoding="utf-8").count(
                "\n    Type: ")
            timings["4 deploy (upload, transform, create stack)"] = time.perf_counter() - t0
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
                   "AWS_ENDPOINT_URL": endpoint}
            table, queue = outputs["TableName"], outputs["WorkflowQueueUrl"]
            _run("5 start", [*cli, "start", "app.py", "--table", table, "--queue-url", queue,
                             "--id", "refund-1", "--input",
                             '{"order_id": "o-1", "amount_cents": 1000}'], timings, home, env)
            task = home / "task"
            with zipfile.ZipFile(home / "build" / "lambda.zip") as zf:
                zf.extractall(task)
            t0 = time.perf_counter()
            invocations = _play_lambda(session, endpoint, task, calls, outputs,
                                       {"table": table, "queue": queue}, "refund-1")
            timings["6 run until completed (2 s of it a durable timer)"] = (
                time.perf_counter() - t0)
            status = _run("7 status + history", [*cli, "status", "--table", table], timings,
                          home, env)
            history = _run("7 status + history", [*cli, "history", "refund-1", "--table",
                                                  table], timings, home, env)
        finally:
            server.stop()
    total = time.perf_counter() - started
    print(status.strip())
    print(history.strip())
    print("\n| step | seconds |\n|---|--:|")
    for step, seconds in timings.items():
        print(f"| {step} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** |")
    RESULTS.write_text(json.dumps({
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "wheel": wheels[-1].name, "steps_seconds": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(total, 1), "lambda_invocations": invocations,
        "template_resources": resources}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
