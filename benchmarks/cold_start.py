"""Cold start: what importing lambda_workflow, a workflow module and the workflow function's
handler costs, and the handler's first activation, against `import boto3` alone.

Run:  python benchmarks/cold_start.py [--rounds R] [--quick] [--no-aws] [--compare REV]
                                      [--zip [--wheel WHEEL_OR_DIR]]
                                      [--json benchmarks/results/cold_start.json]

Every sample is a fresh interpreter (a cold start imports everything once). Rows:
- python: an empty interpreter (``pass``); only the process's wall time.
- pydantic+orjson: ``import pydantic, orjson``, the package's two dependencies.
- lambda_workflow: the same, then ``import lambda_workflow``; "adds" is that last import.
- models: ``import pydantic, orjson``, then a module holding the workflow's two pydantic
  models only (what any pydantic user pays).
- workflow module: the same models in a workflow module (a Service, a step and a workflow
  calling it, from ``from lambda_workflow import ...``); "adds" is that module's import, so
  "workflow module - models" is lambda_workflow's part.
- boto3: ``import boto3`` alone.
- handler: the import of the handler module (the workflow module and
  ``workflow_handler(flow)``) as Lambda imports it (``AWS_LAMBDA_FUNCTION_NAME`` set, so the
  configuration is checked and the deployment's clients made at import, as in Lambda's init
  phase).
- first activation: in the same interpreter as the handler row, the first invocation: an SQS event
  with one start message, against moto's server over HTTP on 127.0.0.1 (no in-process mocks):
  read the instance, record the call, send it to the service's queue, commit, suspend.
- bank_lambda import: examples/bank_lambda.py as shipped (its bank_transaction module imports
  the embedded runtime for its ``__main__`` demo).

Children run with ``-S`` on a folder laid out as a Lambda function sees its code: the zip's
packages (lambda_workflow, pydantic, pydantic_core, orjson and their pure-Python dependencies,
with their dist-info) and the runtime's boto3 and its dependencies; nothing else of this venv is
importable (pydantic scans every distribution's metadata for plugins on its first model). Two
bytecode modes: "pyc" (byte code cached, as on a machine that compiled it once: a private
PYTHONPYCACHEPREFIX warmed by a first run) and "source" (the zip's packages have no byte code
and are compiled at every start, as on Lambda when the zip holds no .pyc and /var/task is
read-only; the standard library and boto3 keep theirs, as Lambda's runtime ships them
compiled).

``--zip`` adds two modes that run the zip as ``lambda-workflow package`` builds it (for this
machine's architecture and Python, from ``--wheel``, default ``dist/``, with the benchmark's
modules as the handler files): "zip-pyc" (the byte code ``package`` compiles) and
"zip-source" (``--no-bytecode``). Each zip is unpacked to a folder that is the children's
current directory (as /var/task is Lambda's), the runtime's boto3 on PYTHONPATH after it, and
PYTHONDONTWRITEBYTECODE set (/var/task is read-only). Their sizes are reported too.

Rounds are interleaved (each round runs every row once, in a rotated order). Reported: the
median over rounds and the spread (min-max), in milliseconds. "import" is measured inside the
child with perf_counter around the imports; "wall" is the whole process as the parent sees it.
``--compare REV`` adds the lambda_workflow and workflow-module rows for the source tree of a
git revision (``git archive REV src``), measured in the same rounds. One `-X importtime`
run of the handler import (pyc mode) lists the modules with the largest own import time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
REGION = "us-east-1"
#: What a deployment zip carries (the package and its dependencies, with their dist-info).
ZIP_PACKAGES = {"lambda_workflow": None, "pydantic": "pydantic", "pydantic_core": "pydantic_core",
                "orjson": "orjson", "typing_extensions": "typing_extensions",
                "annotated_types": "annotated_types", "typing_inspection": "typing_inspection"}
#: What Lambda's Python runtime provides (boto3 and its dependencies), compiled.
RUNTIME_PACKAGES = {"boto3": "boto3", "botocore": "botocore", "s3transfer": "s3transfer",
                    "jmespath": "jmespath", "dateutil": "python_dateutil", "six": "six",
                    "urllib3": "urllib3"}

MODELS = '''\
from pydantic import BaseModel


class Transaction(BaseModel):
    account_id: str
    amount: int


class Balance(BaseModel):
    balance: int
'''

WORKFLOW = '''\
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, step, workflow


class Transaction(BaseModel):
    account_id: str
    amount: int


class Balance(BaseModel):
    balance: int


balance_service = Service("balance", Transaction, Balance)


@step
def fee(amount: int) -> int:
    return amount // 100


@workflow
async def transfer(ctx: WorkflowContext[Transaction]) -> int:
    balance = await ctx.call(balance_service, ctx.request)
    return balance.balance - await ctx.step(fee, ctx.request.amount)
'''

HANDLER = '''\
from cold_workflow import transfer

from lambda_workflow.aws import workflow_handler

handle = workflow_handler(transfer)
'''


#: Starts the line of the child's results (the handler may log to stdout too).
MARK = "cold-start-result: "


def _child(imports: str, *, before: str = "pass", after: str = "pass") -> str:
    """Child code: time ``before`` (baseline imports) and then ``imports``, run ``after``
    (which may add to ``_extra``), print the timings as JSON."""
    return "\n".join([
        "import time",
        "_t0 = time.perf_counter()",
        before,
        "_t1 = time.perf_counter()",
        imports,
        "_t2 = time.perf_counter()",
        "_extra = {}",
        f"_MARK = {MARK!r}",
        after,
        "import json as _json, sys as _sys",
        '_sys.stdout.write("\\n" + _MARK + _json.dumps({"base": (_t1 - _t0) * 1e3, '
        '"adds": (_t2 - _t1) * 1e3, **_extra}) + "\\n")',
    ]) + "\n"


ACTIVATE = textwrap.dedent("""\
    import json as _json, os as _os
    with open(_os.environ["COLD_START_EVENT"]) as _f:
        _event = _json.load(_f)
    _t3 = time.perf_counter()
    _extra["response"] = handle(_event, None)
    _extra["activation"] = (time.perf_counter() - _t3) * 1e3""")

#: Each row's child code.
ROWS: dict[str, str] = {
    "python": "pass",
    "pydantic+orjson": _child("import pydantic, orjson"),
    "lambda_workflow": _child("import lambda_workflow", before="import pydantic, orjson"),
    "models": _child("import cold_models", before="import pydantic, orjson"),
    "workflow module": _child("import cold_workflow", before="import pydantic, orjson"),
    "boto3": _child("import boto3"),
    "handler": _child("from cold_handler import handle", after=ACTIVATE),
    "bank_lambda import": _child("import bank_lambda"),
}
AWS_ROWS = ("handler", "bank_lambda import")
COMPARED = ("lambda_workflow", "workflow module")


@contextmanager
def moto() -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port), as tests/aws/conftest.py runs it."""
    import logging

    from moto.server import ThreadedMotoServer

    for name in ("werkzeug", "moto", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class Deployment:
    """A table, the workflow FIFO queue and the balance service's queue on moto; makes one
    start message per round and hands it over as the SQS event Lambda would pass."""

    def __init__(self, endpoint: str, work: Path) -> None:
        import boto3

        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION=REGION)
        session = boto3.Session(region_name=REGION)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        ddb = session.client("dynamodb", endpoint_url=endpoint)
        sys.path.insert(0, str(work))
        from lambda_workflow.aws import WorkflowClient
        from lambda_workflow.aws.config import AwsConfig, ServiceTarget
        from lambda_workflow.aws.dynamodb import table_definition

        ddb.create_table(TableName="cold", **table_definition())
        self.queue = self.sqs.create_queue(QueueName="cold.fifo", Attributes={
            "FifoQueue": "true", "VisibilityTimeout": "600"})["QueueUrl"]
        self.arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        balance = self.sqs.create_queue(QueueName="balance")["QueueUrl"]
        bank = {name: self.sqs.create_queue(QueueName=name)["QueueUrl"]
                for name in ("fraud", "transaction")}
        self.env = {
            "LAMBDA_WORKFLOW_TABLE": "cold", "LAMBDA_WORKFLOW_QUEUE_URL": self.queue,
            "LAMBDA_WORKFLOW_SERVICE_BALANCE": f"sqs:{balance}",
            "LAMBDA_WORKFLOW_SERVICE_FRAUD": f"sqs:{bank['fraud']}",
            "LAMBDA_WORKFLOW_SERVICE_TRANSACTION": f"sqs:{bank['transaction']}",
            "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_LAMBDA_FUNCTION_NAME": "cold-start-workflow"}
        config = AwsConfig(table="cold", queue_url=self.queue, endpoint_url=endpoint,
                           region=REGION, services={
                               "balance": ServiceTarget.parse("balance", f"sqs:{balance}")})
        self.client = WorkflowClient(config, session=session)
        self.count = 0

    def event(self, path: Path) -> Path:
        """Start a new instance and write its start message, as an SQS event, to ``path``."""
        import cold_workflow

        self.count += 1
        self.client.start(cold_workflow.transfer,
                          cold_workflow.Transaction(account_id="alice", amount=self.count),
                          workflow_id=f"cold-{self.count}")
        messages = self.sqs.receive_message(
            QueueUrl=self.queue, MaxNumberOfMessages=1, MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"], WaitTimeSeconds=1).get("Messages", [])
        if len(messages) != 1:
            raise RuntimeError(f"expected the start message on the queue, got {messages!r}")
        m = messages[0]
        record = {
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": dict(m.get("Attributes", {})), "messageAttributes": {
                k: {"stringValue": a.get("StringValue"), "binaryValue": a.get("BinaryValue"),
                    "stringListValues": [], "binaryListValues": [], "dataType": a["DataType"]}
                for k, a in m.get("MessageAttributes", {}).items()},
            "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs",
            "eventSourceARN": self.arn, "awsRegion": REGION}
        path.write_text(json.dumps({"Records": [record]}))
        self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])
        return path

    def check(self, count: int) -> None:
        """The activation did its work: instance ``cold-<count>`` is running, its call sent."""
        ops = self.client.history(f"cold-{count}").operations
        if [(op.name, op.state.value, op.sent) for op in ops] != [("balance", "pending", True)]:
            raise RuntimeError(f"cold-{count}: unexpected history {ops!r}")


def _origin(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{module} is not installed (pip install it into this venv)")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def _dist_info(origin: Path, dist: str) -> list[Path]:
    return sorted(p for p in origin.parent.glob("*.dist-info")
                  if p.name.split("-")[0].lower() == dist.lower())


def lambda_tree(work: Path, name: str, src: Path) -> Path:
    """A folder laid out as a Lambda function sees its code: the zip's packages (copied, as
    source only: no __pycache__; lambda_workflow from ``src``) and the runtime's boto3 and
    its dependencies (linked, with their byte code). Children run with ``-S`` and this folder
    on PYTHONPATH, so nothing else of this venv is importable or scanned (pydantic looks for
    plugins in every distribution's metadata on its first model)."""
    tree = work / name
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for module, dist in ZIP_PACKAGES.items():
        origin = src / "lambda_workflow" if dist is None else _origin(module)
        extra = [] if dist is None else _dist_info(origin, dist)
        for path in [origin, *extra]:
            if path.is_dir():
                shutil.copytree(path, tree / path.name, ignore=ignore)
            else:
                shutil.copy2(path, tree / path.name)
    for module, dist in RUNTIME_PACKAGES.items():
        origin = _origin(module)
        for path in [origin, *_dist_info(origin, dist)]:
            (tree / path.name).symlink_to(path)
    return tree


def runtime_tree(work: Path) -> Path:
    """The Lambda runtime's packages (boto3 and its dependencies, with their byte code), linked
    into a folder of their own, as /var/runtime is beside /var/task."""
    tree = work / "runtime"
    tree.mkdir()
    for module, dist in RUNTIME_PACKAGES.items():
        origin = _origin(module)
        for path in [origin, *_dist_info(origin, dist)]:
            (tree / path.name).symlink_to(path)
    return tree


def package_zips(work: Path, wheels: list[Path]) -> dict[str, dict[str, Any]]:
    """Build the benchmark's handler modules with ``lambda-workflow package`` for this machine
    and Python, with and without byte code; unpack each to ``work/<mode>``. Returns, per mode,
    the folder and the zip's sizes."""
    sys.path.insert(0, str(ROOT / "src"))
    from lambda_workflow._package import ARCHITECTURES, build_zip

    arch = next(a for a, m in ARCHITECTURES.items() if m == platform.machine())
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    handlers = [work / n for n in ("cold_models.py", "cold_workflow.py", "cold_handler.py",
                                   "bank_lambda.py", "bank_transaction.py")]
    out: dict[str, dict[str, Any]] = {}
    for mode, bytecode in (("zip-pyc", True), ("zip-source", False)):
        result = build_zip(handlers, arch=arch, python=version, wheels=wheels,
                           bytecode=bytecode, require_bytecode=bytecode,
                           output=work / f"{mode}.zip")
        task = work / mode
        with zipfile.ZipFile(result.path) as archive:
            archive.extractall(task)
        out[mode] = {"task": task, "wheel": result.wheel.name, "zip_bytes": result.zip_size,
                     "unzipped_bytes": result.unzipped_size,
                     "pyc_files": result.bytecode.files if result.bytecode else 0}
        print(f"{mode}: {result.path.name} {result.zip_size:,} bytes, unzipped "
              f"{result.unzipped_size:,}, {out[mode]['pyc_files']} .pyc, from "
              f"{result.wheel.name}", file=sys.stderr)
    return out


def run_child(code: str, env: dict[str, str], cwd: Path) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=300, check=False)
    wall = (time.perf_counter() - start) * 1e3
    lines = [line for line in run.stdout.splitlines() if line.startswith(MARK)]
    out = json.loads(lines[-1].removeprefix(MARK)) if lines else {}
    if run.returncode != 0 or out.get("response", {"batchItemFailures": []}) != {
            "batchItemFailures": []}:
        raise RuntimeError(f"child failed:\n{code}\n{run.stdout}\n{run.stderr}")
    return wall, out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def importtime(env: dict[str, str], cwd: Path, code: str, top: int) -> list[dict[str, Any]]:
    """The modules with the largest own import time in one `-X importtime` run."""
    run = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                         check=True)
    rows = []
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, total, name = line.removeprefix("import time:").split("|")
        rows.append({"module": name.strip(), "self_ms": int(own) / 1e3,
                     "cumulative_ms": int(total) / 1e3})
    return sorted(rows, key=lambda r: -r["self_ms"])[:top]


def derive(results: list[dict[str, Any]]) -> dict[str, float]:
    """Differences and ratios of medians of the same run, per mode."""
    med = {(e["mode"], e["row"], k): e[k]["median"] for e in results
           for k in ("import_ms", "adds_ms", "activation_ms", "wall_ms") if k in e}
    out: dict[str, float] = {}
    for mode in sorted({e["mode"] for e in results}):
        def get(row: str, key: str) -> float | None:
            return med.get((mode, row, key))  # noqa: B023 (used at once)

        lw, models, wf = (get("lambda_workflow", "adds_ms"), get("models", "adds_ms"),
                          get("workflow module", "adds_ms"))
        if lw is not None:
            out[f"{mode}: import lambda_workflow adds (ms)"] = lw
        if models is not None and wf is not None:
            out[f"{mode}: a workflow module's lambda_workflow part (ms, workflow - models)"] = (
                wf - models)
        handler, act, boto = (get("handler", "import_ms"), get("handler", "activation_ms"),
                              get("boto3", "import_ms"))
        if handler is not None and act is not None and boto is not None:
            out[f"{mode}: handler import + first activation (ms)"] = handler + act
            out[f"{mode}: (handler import + first activation) / import boto3"] = (
                (handler + act) / boto)
    for row, key in (("handler", "import_ms"), ("workflow module", "import_ms")):
        pyc, source = med.get(("zip-pyc/current", row, key)), med.get(
            ("zip-source/current", row, key))
        if pyc is not None and source is not None:
            out[f"zip: {row} import, source only / with byte code"] = source / pyc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--no-aws", action="store_true", help="skip the rows that need moto")
    parser.add_argument("--compare", metavar="REV",
                        help="also measure lambda_workflow's source tree at this git revision")
    parser.add_argument("--zip", action="store_true",
                        help="also run the zips `lambda-workflow package` builds, with and "
                             "without byte code")
    parser.add_argument("--wheel", type=Path, action="append",
                        help="lambda-workflow wheel or folder for --zip (default dist/)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cold_start.json")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds

    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp, \
            (moto() if not args.no_aws else _nothing()) as endpoint:
        work = Path(tmp)
        (work / "cold_models.py").write_text(MODELS)
        (work / "cold_workflow.py").write_text(WORKFLOW)
        (work / "cold_handler.py").write_text(HANDLER)
        for name in ("bank_lambda.py", "bank_transaction.py"):
            shutil.copy2(EXAMPLES / name, work / name)
        base_env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONPATH")
                    and not k.startswith(("LAMBDA_WORKFLOW_", "AWS_"))}
        deployment = Deployment(endpoint, work) if endpoint else None
        if deployment is not None:
            base_env.update(deployment.env)
        trees = {"current": ROOT / "src"}
        if args.compare:
            old = work / "compare"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare, "src"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            trees[args.compare] = old / "src"
        modes: dict[str, dict[str, str]] = {}
        for label, src in trees.items():
            tree = lambda_tree(work, f"tree-{label}", src)
            modes[f"pyc/{label}"] = {**base_env, "PYTHONPYCACHEPREFIX": str(work / f"pyc-{label}"),
                                     "PYTHONPATH": f"{tree}{os.pathsep}{work}"}
            if label == "current":
                modes["source/current"] = {**base_env, "PYTHONDONTWRITEBYTECODE": "1",
                                           "PYTHONPATH": f"{tree}{os.pathsep}{work}"}
        cwds = dict.fromkeys(modes, work)
        zips: dict[str, dict[str, Any]] = {}
        if args.zip:
            runtime = runtime_tree(work)
            zips = package_zips(work, args.wheel or [ROOT / "dist"])
            for mode, built in zips.items():
                modes[f"{mode}/current"] = {**base_env, "PYTHONDONTWRITEBYTECODE": "1",
                                            "PYTHONPATH": f"{built['task']}{os.pathsep}{runtime}"}
                cwds[f"{mode}/current"] = built["task"]
        plan = [(mode, row) for mode in modes for row in ROWS
                if (deployment is not None or row not in AWS_ROWS)
                and (mode.endswith("/current") or row in COMPARED)]
        # Warm-up: writes the byte code of the pyc modes (and checks every row runs).
        for mode, row in plan:
            env = dict(modes[mode])
            if row == "handler" and deployment is not None:
                env["COLD_START_EVENT"] = str(deployment.event(work / "event.json"))
            run_child(ROWS[row], env, cwds[mode])
        samples: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = {k: [] for k in plan}
        for r in range(rounds):
            shift = r % len(plan)
            for mode, row in plan[shift:] + plan[:shift]:
                env = dict(modes[mode])
                if row == "handler" and deployment is not None:
                    env["COLD_START_EVENT"] = str(deployment.event(work / "event.json"))
                wall, out = run_child(ROWS[row], env, cwds[mode])
                if row == "handler" and deployment is not None:
                    deployment.check(deployment.count)
                samples[(mode, row)].append((wall, out))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        breakdown = importtime(modes["pyc/current"], work, "from cold_handler import handle"
                               if deployment is not None else "import cold_workflow", 25)

    results: list[dict[str, Any]] = []
    for (mode, row), got in samples.items():
        entry: dict[str, Any] = {"mode": mode, "row": row,
                                 "wall_ms": summary([w for w, _ in got])}
        outs = [o for _, o in got]
        if outs and outs[0]:
            entry["import_ms"] = summary([o["base"] + o["adds"] for o in outs])
            entry["adds_ms"] = summary([o["adds"] for o in outs])
            if "activation" in outs[0]:
                entry["activation_ms"] = summary([o["activation"] for o in outs])
        results.append(entry)

    def fmt(s: dict[str, float] | None) -> str:
        return "" if s is None else f"{s['median']:7.1f} ({s['min']:.1f}-{s['max']:.1f})"

    print(f"\nCold start, ms: median (min-max) of {rounds} rounds, fresh interpreters")
    header = f"| {'mode':<18} | {'row':<18} | {'import':>20} | {'adds':>20} | {'wall':>20} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for e in results:
        print(f"| {e['mode']:<18} | {e['row']:<18} | {fmt(e.get('import_ms')):>20} | "
              f"{fmt(e.get('adds_ms')):>20} | {fmt(e['wall_ms']):>20} |")
        if "activation_ms" in e:
            print(f"| {e['mode']:<18} | {'first activation':<18} | "
                  f"{fmt(e['activation_ms']):>20} | {'':>20} | {'':>20} |")
    derived = derive(results)
    for mode, z in zips.items():
        print(f"\n{mode}: zip {z['zip_bytes']:,} bytes, unzipped {z['unzipped_bytes']:,} "
              f"bytes, {z['pyc_files']} .pyc files (from {z['wheel']})", end="")
    print("\n\nFrom the medians above:")
    for name, value in derived.items():
        print(f"  {name}: {value:.2f}")
    what = "the handler import" if endpoint else "the workflow module's import"
    print(f"\n`-X importtime` of {what} (pyc), largest own times:")
    for b in breakdown[:15]:
        print(f"  {b['self_ms']:6.2f} ms own {b['cumulative_ms']:7.2f} ms with imports  "
              f"{b['module']}")
    report = {
        "benchmark": "cold_start", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(), "machine": platform.machine(),
        "rounds": rounds, "aws": "moto server over HTTP on 127.0.0.1" if not args.no_aws
        else None, "compare": args.compare, "results": results, "derived": derived,
        "zips": {mode: {k: v for k, v in z.items() if k != "task"} for mode, z in zips.items()},
        "importtime": breakdown}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
