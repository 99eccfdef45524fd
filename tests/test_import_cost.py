"""What importing lambda_workflow costs, guarded by the modules it loads (deterministic, no
timing): `import lambda_workflow` loads the package alone; a workflow module's imports load
the few submodules it uses and none of asyncio, hashlib, hmac, sqlite3 or boto3; every public
name still resolves, on first access, to the object its submodule defines.

Each case runs in a fresh interpreter, since this test process has loaded everything already.
benchmarks/cold_start.py measures the times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lambda_workflow

ROOT = Path(__file__).resolve().parents[1]

#: Modules that a workflow module's import must not load: the replay core and its event
#: loop, the callback tokens' crypto, the backends, AWS's SDK, logging.
HEAVY = ("asyncio", "hashlib", "_hashlib", "hmac", "base64", "threading", "random", "secrets",
         "uuid", "sqlite3", "_sqlite3", "boto3", "botocore", "logging", "json")


def _run(body: str) -> object:
    """Run ``body`` in a fresh interpreter and return what it prints, as JSON."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_import_lambda_workflow_loads_the_package_alone() -> None:
    """After `import pydantic, orjson`, `import lambda_workflow` adds exactly one module: the
    package (before, it added 18: batch, callbacks, context, steps and workflow with hashlib,
    hmac, base64, threading and contextvars)."""
    new = _run("""\
        import json, sys
        import pydantic, orjson
        before = set(sys.modules)
        import lambda_workflow
        print(json.dumps(sorted(set(sys.modules) - before)))
    """)
    assert new == ["lambda_workflow"]


def test_a_workflow_module_loads_only_what_it_uses() -> None:
    """A workflow module (its pydantic model, a service, a step and a workflow) loads five
    submodules, and none of the heavy modules, even those pydantic loaded already: the replay
    core, asyncio and the rest load with the first activation."""
    new = _run(f"""\
        import json, sys
        import pydantic, orjson
        from pydantic import BaseModel

        class Req(BaseModel):
            n: int

        svc_model = Req(n=1)  # pydantic's own lazy imports happen here, not below
        # Heavy modules pydantic already loaded are forgotten, so that an import of one of
        # them by lambda_workflow loads it again and shows.
        for name in {HEAVY!r}:
            sys.modules.pop(name, None)
        before = set(sys.modules)
        from lambda_workflow import Service, WorkflowContext, step, workflow

        svc = Service("svc", Req, Req)

        @step
        def double(n: int) -> int:
            return 2 * n

        @workflow
        async def flow(ctx: WorkflowContext[Req]) -> int:
            reply = await ctx.call(svc, ctx.request)
            return await ctx.step(double, reply.n)

        new = set(sys.modules) - before
        print(json.dumps({{"ours": sorted(m for m in new if m.startswith("lambda_workflow")),
                          "heavy": sorted(m for m in {HEAVY!r} if m in new)}}))
    """)
    assert new == {"ours": ["lambda_workflow", "lambda_workflow.context",
                            "lambda_workflow.errors", "lambda_workflow.service",
                            "lambda_workflow.steps", "lambda_workflow.workflow"],
                   "heavy": []}


def test_every_public_name_resolves_to_its_submodules_object() -> None:
    """Each name of ``__all__``, first accessed in a fresh interpreter, is the object its
    submodule defines (``workflow`` the decorator, not the submodule of that name), and
    `from lambda_workflow import *` binds them all."""
    result = _run("""\
        import json, sys, types
        import lambda_workflow
        names = list(lambda_workflow.__all__)
        wrong = []
        for name in names:
            value = getattr(lambda_workflow, name)
            if isinstance(value, types.ModuleType):
                wrong.append(name)
            elif name != "__version__" and not isinstance(value, str):
                home = sys.modules[value.__module__]
                if getattr(home, name, None) is not value:
                    wrong.append(name)
        star = {}
        exec("from lambda_workflow import *", star)
        print(json.dumps({"wrong": wrong, "missing": sorted(set(names) - set(star)),
                          "implementation": lambda_workflow.IMPLEMENTATION}))
    """)
    assert result == {"wrong": [], "missing": [],
                      "implementation": lambda_workflow.IMPLEMENTATION}


def test_the_workflow_submodule_does_not_shadow_the_decorator() -> None:
    """Importing the submodule ``lambda_workflow.workflow`` (which the import system binds on
    the package) leaves ``lambda_workflow.workflow`` the decorator, whether the decorator was
    accessed before or not."""
    result = _run("""\
        import json, sys
        import lambda_workflow
        import lambda_workflow.workflow  # the submodule first
        first = lambda_workflow.workflow is sys.modules["lambda_workflow.workflow"].workflow
        print(json.dumps([first, type(lambda_workflow.workflow).__name__]))
    """)
    assert result == [True, "function"]
    result = _run("""\
        import json, sys
        from lambda_workflow import workflow  # the decorator first
        from lambda_workflow.workflow import Workflow
        import lambda_workflow.workflow as by_path
        import lambda_workflow
        print(json.dumps([lambda_workflow.workflow is workflow, by_path is workflow,
                          type(workflow).__name__]))
    """)
    assert result == [True, True, "function"]


def test_submodules_it_loaded_before_still_resolve_as_attributes() -> None:
    """`import lambda_workflow` used to load errors, steps and the rest, so
    ``lambda_workflow.errors.WorkflowError`` worked without importing the submodule: it still
    does. An unknown name is an AttributeError naming it."""
    result = _run("""\
        import json
        import lambda_workflow
        ok = lambda_workflow.errors.WorkflowError.__name__
        try:
            lambda_workflow.no_such_name
        except AttributeError as exc:
            message = str(exc)
        print(json.dumps([ok, message]))
    """)
    assert result == ["WorkflowError",
                      "module 'lambda_workflow' has no attribute 'no_such_name'"]


def test_dir_lists_every_public_name_before_any_is_loaded() -> None:
    """dir(lambda_workflow) lists the public names at once, before their submodules load."""
    result = _run("""\
        import json, sys
        import lambda_workflow
        names = dir(lambda_workflow)
        print(json.dumps([sorted(set(lambda_workflow.__all__) - set(names)),
                          "lambda_workflow.steps" in sys.modules]))
    """)
    assert result == [[], False]


def test_importtime_reports_the_submodules_names_load() -> None:
    """A public name's submodule, loaded on first access, shows in `python -X importtime`
    (the tool users profile a cold start with), as an import statement's would."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import lambda_workflow; lambda_workflow.step; lambda_workflow.Callback"],
                         capture_output=True, text=True, timeout=120, check=True)
    reported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"lambda_workflow.steps", "lambda_workflow.callbacks"} <= reported

def test_the_aws_handlers_load_no_sqlite_and_the_local_runtime_no_boto3() -> None:
    """The workflow function's handler module loads neither sqlite3 nor the embedded
    runtime; the embedded runtime loads neither boto3 nor the AWS modules."""
    result = _run("""\
        import json, subprocess, sys
        import lambda_workflow.aws.handlers
        aws = sorted(m for m in ("sqlite3", "_sqlite3", "lambda_workflow.local",
                                 "lambda_workflow.backends.sqlite") if m in sys.modules)
        code = ("import json, sys, lambda_workflow.local; print(json.dumps(sorted(m for m in "
                "('boto3', 'botocore', 'lambda_workflow.aws') if m in sys.modules)))")
        local = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                          capture_output=True, text=True).stdout)
        print(json.dumps({"aws": aws, "local": local}))
    """)
    assert result == {"aws": [], "local": []}


def test_the_cold_start_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/cold_start.py (one round, without the moto rows) measures every row in both
    bytecode modes and writes its results, so the script cannot rot. No timing is checked."""
    out = tmp_path / "cold_start.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cold_start.py"),
                          "--rounds", "1", "--no-aws", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    rows = {(e["mode"], e["row"]) for e in report["results"]}
    assert rows == {(mode, row) for mode in ("pyc/current", "source/current")
                    for row in ("python", "pydantic+orjson", "lambda_workflow", "models",
                                "workflow module", "boto3")}
    assert report["importtime"] and "| lambda_workflow " in run.stdout


def test_the_bank_example_loads_no_embedded_runtime() -> None:
    """The bank example is also the deployed workflow module (docs/aws.md): importing it in
    the Lambda zip loads neither the embedded runtime nor sqlite3 (its ``setup`` names
    LocalRuntime for type checkers only)."""
    result = _run(f"""\
        import json, sys
        sys.path.insert(0, {str(ROOT / "examples")!r})
        import bank_transaction
        print(json.dumps(sorted(m for m in ("sqlite3", "lambda_workflow.local",
                                            "lambda_workflow.backends.sqlite")
                                if m in sys.modules)))
    """)
    assert result == []
