"""``lambda-workflow package``: target checks, wheel choice, boto3 exclusion, deterministic zips,
real pip installs for the Lambda platforms, and an arm64 zip imported under qemu-aarch64."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lambda_workflow import _package
from lambda_workflow._package import (
    PackageError,
    build_zip,
    check_target,
    remove_distributions,
    select_wheel,
    write_zip,
)
from lambda_workflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
PURE = "lambda_workflow-0.1.0-py3-none-any.whl"
ABI3_X86 = "lambda_workflow-0.1.0-cp311-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
ABI3_ARM = "lambda_workflow-0.1.0-cp311-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"

HANDLER = '''\
"""A Lambda handler that runs a workflow on the memory runtime and reports the core."""
import asyncio
import sys

from pydantic import BaseModel

import lambda_workflow
import lambda_workflow._core as core
from lambda_workflow import Service, WorkflowContext, workflow
from lambda_workflow.backends.memory import MemoryStateStore
from lambda_workflow.local import LocalRuntime


class Order(BaseModel):
    item: str
    amount: int


class Quote(BaseModel):
    price: int


pricing = Service("pricing", Order, Quote)


@workflow
async def checkout(ctx: WorkflowContext[Order]) -> int:
    first, second = await asyncio.gather(ctx.call(pricing, ctx.request),
                                         ctx.call(pricing, ctx.request))
    return first.price + second.price


def handler(event, context):
    assert core.IMPLEMENTATION == "c", core.IMPLEMENTATION
    runtime = LocalRuntime(store=MemoryStateStore())
    runtime.register(checkout)
    runtime.implement(pricing, lambda order: Quote(price=order.amount * 3))
    handle = runtime.start(checkout, Order(**event), workflow_id="order-1")
    runtime.run_until_idle()
    return {"implementation": lambda_workflow.IMPLEMENTATION,
            "core": sys.modules["lambda_workflow._core._c"].__file__, "result": handle.result()}
'''


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture(scope="session")
def pure_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A py3-none-any lambda-workflow wheel built from a copy of this source tree."""
    tmp = tmp_path_factory.mktemp("pure-wheel")
    src = tmp / "src"
    # A copy, so that the build leaves no build/ or egg-info in the clone (other builds use them).
    for name in ("src", "ext"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "*.c"))
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "LAMBDA_WORKFLOW_NO_EXTENSIONS": "1"}
    env.pop("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(tmp / "wheels"), str(src)],
                   check=True, env=env)
    (wheel,) = (tmp / "wheels").glob("*.whl")
    assert wheel.name == PURE
    return wheel


@pytest.fixture(scope="session")
def handler_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test's handler module, app/handler.py."""
    path = tmp_path_factory.mktemp("app") / "handler.py"
    path.write_text(HANDLER)
    return path


@dataclass
class Built:
    path: Path
    report: str


@pytest.fixture(scope="module")
def arm64_zip(tmp_path_factory: pytest.TempPathFactory, pure_wheel: Path,
              handler_file: Path) -> Built:
    """An arm64 / Python 3.11 zip of the pure wheel whose requirements include jmespath."""
    tmp = tmp_path_factory.mktemp("arm64-zip")
    requirements = tmp / "requirements.txt"
    requirements.write_text("jmespath\n")
    out = tmp / "lambda.zip"
    code, report = run_cli("package", str(handler_file), "--arch", "arm64", "--python", "3.11",
                           "--wheel", str(pure_wheel.parent), "--requirements",
                           str(requirements), "-o", str(out))
    assert code == 0, report
    return Built(out, report)


def _pyc_name(name: str, version: str) -> str:
    """The name in the zip of the byte code of ``name`` (a .py) for Python ``version``."""
    folder, _, file = name.rpartition("/")
    return f"{folder + '/' if folder else ''}__pycache__/{file[:-3]}.cpython-3{version[2:]}.pyc"


def fake_wheels(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


# ---------------------------------------------------------------- checks without pip


def test_check_target_names_the_choices() -> None:
    """An unknown architecture or Python version is rejected with the valid choices."""
    assert check_target("arm64", "3.11") == ("manylinux2014_aarch64", "3.11")
    assert check_target("x86_64", "python3.13") == ("manylinux2014_x86_64", "3.13")
    with pytest.raises(PackageError, match="unknown architecture 'aarch65': Lambda has arm64 "
                                           "and x86_64"):
        check_target("aarch65", "3.11")
    with pytest.raises(PackageError, match=r"unsupported Python version '3.10'.*python3.11, "
                                           r"python3.12, python3.13"):
        check_target("arm64", "3.10")


def test_cli_rejects_a_bad_target_before_anything_else(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI exits 1 with the reason on stderr for an unknown architecture."""
    handler = tmp_path / "handler.py"
    handler.write_text("")
    code, out = run_cli("package", str(handler), "--arch", "arm", "--python", "3.11")
    assert code == 1
    assert "lambda-workflow package: unknown architecture 'arm'" in capsys.readouterr().err
    assert out == ""


def test_missing_handler_and_empty_folder_are_errors(tmp_path: Path) -> None:
    """A handler that does not exist, is not .py, or is a folder with no .py file is reported."""
    wheels = fake_wheels(tmp_path / "dist", PURE)
    with pytest.raises(PackageError, match=r"handler .*nope\.py: no such file or folder"):
        build_zip(tmp_path / "nope.py", arch="arm64", python="3.11", wheels=[wheels])
    (tmp_path / "handler.txt").write_text("")
    with pytest.raises(PackageError, match=r"expected a \.py file or a package folder"):
        build_zip(tmp_path / "handler.txt", arch="arm64", python="3.11", wheels=[wheels])
    (tmp_path / "app").mkdir()
    with pytest.raises(PackageError, match=r"the folder has no \.py file"):
        build_zip(tmp_path / "app", arch="arm64", python="3.11", wheels=[wheels])


def test_select_wheel_prefers_the_compiled_wheel_for_the_platform(tmp_path: Path) -> None:
    """From dist/ the abi3 wheel of the asked architecture wins over the pure wheel."""
    dist = fake_wheels(tmp_path / "dist", PURE, ABI3_X86, ABI3_ARM,
                       "lambda_workflow-0.1.0.tar.gz", "pydantic-2.0-py3-none-any.whl")
    assert select_wheel([dist], "arm64", "3.11").name == ABI3_ARM
    assert select_wheel([dist], "x86_64", "3.13").name == ABI3_X86
    assert select_wheel([dist / PURE], "arm64", "3.12").name == PURE
    newer = fake_wheels(tmp_path / "more", "lambda_workflow-0.10.0-py3-none-any.whl")
    assert select_wheel([dist / PURE, newer], "x86_64", "3.11").parent == newer


def test_select_wheel_prefers_the_per_version_build_to_abi3(tmp_path: Path) -> None:
    """What scripts/build_wheels.sh puts in dist/: a per-version wheel for each runtime it can
    build and test, abi3 for the rest. The per-version wheel of the asked Python wins; arm64
    Python 3.12, which has none, gets the abi3 one; a cp312-abi3 wheel beats a cp311-abi3 one
    for 3.12 and 3.13 but is no per-version build."""
    def name(tag: str, machine: str) -> str:
        return f"lambda_workflow-0.1.0-{tag}-manylinux2014_{machine}.manylinux_2_17_{machine}.whl"

    dist = fake_wheels(tmp_path / "dist", PURE, "lambda_workflow-0.1.0.tar.gz",
                       *(name(t, "x86_64") for t in ("cp311-abi3", "cp311-cp311",
                                                     "cp312-cp312", "cp313-cp313")),
                       *(name(t, "aarch64") for t in ("cp311-abi3", "cp311-cp311",
                                                      "cp313-cp313")))
    for version in ("3.11", "3.12", "3.13"):
        tag = f"cp3{version[2:]}-cp3{version[2:]}"
        assert select_wheel([dist], "x86_64", version).name == name(tag, "x86_64")
    assert select_wheel([dist], "arm64", "3.11").name == name("cp311-cp311", "aarch64")
    assert select_wheel([dist], "arm64", "3.12").name == name("cp311-abi3", "aarch64")
    assert select_wheel([dist], "arm64", "3.13").name == name("cp313-cp313", "aarch64")
    # An abi3 wheel tagged for several Pythons is still not the per-version build.
    several = fake_wheels(tmp_path / "several", name("cp311-abi3", "aarch64").replace(
        "-cp311-abi3-", "-cp311.cp312-abi3-"), name("cp312-cp312", "aarch64"))
    assert select_wheel([several], "arm64", "3.12").name == name("cp312-cp312", "aarch64")
    abi3 = fake_wheels(tmp_path / "abi3", name("cp311-abi3", "aarch64"),
                       name("cp312-abi3", "aarch64"))
    assert select_wheel([abi3], "arm64", "3.11").name == name("cp311-abi3", "aarch64")
    assert select_wheel([abi3], "arm64", "3.13").name == name("cp312-abi3", "aarch64")
    # A newer version still wins over a better tag of an older one.
    newer = fake_wheels(tmp_path / "newer", name("cp313-cp313", "aarch64"),
                        name("cp311-abi3", "aarch64").replace("0.1.0", "0.2.0"))
    assert select_wheel([newer], "arm64", "3.13").name.startswith("lambda_workflow-0.2.0-")


def test_select_wheel_names_the_wheels_that_do_not_fit(tmp_path: Path) -> None:
    """Only an x86_64 wheel when arm64 is asked: the error names the platform and what was found."""
    dist = fake_wheels(tmp_path / "dist", ABI3_X86,
                       "lambda_workflow-0.1.0-cp312-cp312-manylinux_2_17_aarch64.whl")
    with pytest.raises(PackageError) as info:
        select_wheel([dist], "arm64", "3.11")
    message = str(info.value)
    assert "no lambda-workflow wheel for manylinux2014_aarch64 and Python 3.11" in message
    assert ABI3_X86 in message
    assert "cp312-cp312-manylinux_2_17_aarch64" in message
    # The cp312 wheel does fit Python 3.12.
    assert select_wheel([dist], "arm64", "3.12").name.startswith("lambda_workflow-0.1.0-cp312")
    # A wheel for a newer glibc than manylinux2014 does not fit.
    new_glibc = fake_wheels(tmp_path / "new",
                            "lambda_workflow-0.1.0-cp311-abi3-manylinux_2_28_x86_64.whl")
    with pytest.raises(PackageError, match="no lambda-workflow wheel for manylinux2014_x86_64"):
        select_wheel([new_glibc], "x86_64", "3.11")


def test_select_wheel_rejects_bad_wheel_arguments(tmp_path: Path) -> None:
    """A missing path, another project's wheel, or a non-wheel file is named in the error."""
    with pytest.raises(PackageError, match=r"--wheel .*absent: no such file or folder"):
        select_wheel([tmp_path / "absent"], "arm64", "3.11")
    other = fake_wheels(tmp_path, "pydantic-2.0-py3-none-any.whl", "notes.txt")
    with pytest.raises(PackageError, match="not a lambda-workflow wheel"):
        select_wheel([other / "pydantic-2.0-py3-none-any.whl"], "arm64", "3.11")
    with pytest.raises(PackageError, match=r"notes\.txt: neither a \.whl file nor a folder"):
        select_wheel([other / "notes.txt"], "arm64", "3.11")


def test_remove_distributions_uninstalls_by_record(tmp_path: Path) -> None:
    """boto3 and jmespath are removed file by file from their RECORDs; others stay intact."""
    def install(name: str, version: str, files: dict[str, str]) -> None:
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n\nbody\n")
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
        (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))

    install("boto3", "1.35.0", {"boto3/__init__.py": "", "boto3/data/x.json": "{}"})
    install("jmespath", "1.0.1", {"jmespath/__init__.py": ""})
    install("pydantic", "2.9.0", {"pydantic/__init__.py": "", "pydantic/v1/__init__.py": ""})
    (tmp_path / "pydantic" / "unlisted.py").write_text("")  # not in a RECORD: kept
    removed = remove_distributions(tmp_path, ["Boto3", "JMESPath", "six"])
    assert removed == ["boto3 1.35.0", "jmespath 1.0.1"]
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["pydantic", "pydantic-2.9.0.dist-info", "pydantic-2.9.0.dist-info/METADATA",
                    "pydantic-2.9.0.dist-info/RECORD", "pydantic/__init__.py",
                    "pydantic/unlisted.py", "pydantic/v1", "pydantic/v1/__init__.py"]


def test_write_zip_is_sorted_dated_1980_and_reproducible(tmp_path: Path) -> None:
    """Entries are sorted, dated 1980-01-01 with modes 644/755, and two writes are identical."""
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "b.py").write_text("b = 1\n")
    (tree / "a.py").write_text("a = 1\n")
    (tree / "pkg" / "tool.so").write_bytes(b"\x7fELF")
    (tree / "pkg" / "tool.so").chmod(0o775)
    files = [("pkg/b.py", tree / "pkg" / "b.py"), ("pkg/tool.so", tree / "pkg" / "tool.so"),
             ("a.py", tree / "a.py")]
    write_zip(tmp_path / "one.zip", files)
    os.utime(tree / "a.py", (1_000_000_000, 1_000_000_000))  # mtimes do not matter
    write_zip(tmp_path / "out" / "two.zip", reversed(files))
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "out" / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.zip") as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == ["a.py", "pkg/b.py", "pkg/tool.so"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert [i.external_attr >> 16 for i in infos] == [0o100644, 0o100644, 0o100755]
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "two.zip"]


# ---------------------------------------------------------------- several handler paths


def fake_pip_install(args: list[str]) -> None:
    """Install a tiny ``pydantic`` into pip's ``--target``."""
    target = Path(args[args.index("--target") + 1])
    (target / "pydantic").mkdir(parents=True)
    (target / "pydantic" / "__init__.py").write_text("VERSION = '2.0'\n")
    info = target / "pydantic-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pydantic\nVersion: 2.0\n\n")
    (info / "RECORD").write_text("pydantic/__init__.py,,\npydantic-2.0.dist-info/METADATA,,\n"
                                 "pydantic-2.0.dist-info/RECORD,,\n")


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """pip replaced by a stand-in that installs a tiny ``pydantic`` into ``--target``; returns
    the argument lists it was called with."""
    calls: list[list[str]] = []

    def install(args: list[str], description: str) -> None:
        calls.append(args)
        fake_pip_install(args)

    monkeypatch.setattr(_package, "_run_pip", install)
    return calls


def test_several_handler_paths_go_to_the_zip_root(tmp_path: Path,
                                                  fake_pip: list[list[str]]) -> None:
    """`package a.py b.py c.py pkg/` puts the three modules and the package side by side at the
    zip's root with the dependencies, and reports each; --python defaults to 3.13."""
    examples = tmp_path / "examples"
    (examples / "shared").mkdir(parents=True)
    modules = ["bank_lambda.py", "bank_transaction.py", "plain_transaction_service.py"]
    for name in modules:
        (examples / name).write_text(f"NAME = {name!r}\n")
    (examples / "shared" / "__init__.py").write_text("")
    wheels = fake_wheels(tmp_path / "dist", PURE)
    out = tmp_path / "build" / "bank.zip"
    code, report = run_cli("package", *(str(examples / m) for m in modules),
                           str(examples / "shared"), "--arch", "arm64", "--wheel", str(wheels),
                           "-o", str(out))
    assert code == 0, report
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert archive.read("bank_transaction.py") == b"NAME = 'bank_transaction.py'\n"
    assert sorted(n for n in names if "/" not in n) == modules
    assert {"shared/__init__.py", "pydantic/__init__.py"} <= set(names)
    (args,) = fake_pip
    assert args[args.index("--python-version") + 1] == "3.13"
    assert "for Lambda arm64, python3.13" in report
    for top in [*modules, "shared", "pydantic"]:
        assert re.search(rf"^\s+\d+ KB  {re.escape(top)}$", report, re.M), top


def test_handler_paths_with_the_same_top_level_name_are_refused(
        tmp_path: Path, fake_pip: list[list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    """Two paths that would share a name at the zip's root (a/x.py and b/x.py, a module x.py and
    a package x/, or one path given twice) are refused before anything is installed."""
    for folder in ("a", "b", "c/x"):
        (tmp_path / folder).mkdir(parents=True)
    for path in ("a/x.py", "b/x.py", "c/x/__init__.py", "b/y.py"):
        (tmp_path / path).write_text("")
    wheels = fake_wheels(tmp_path / "dist", PURE)

    def build(*paths: str) -> None:
        build_zip([tmp_path / p for p in paths], arch="arm64", python="3.12", wheels=[wheels],
                  output=tmp_path / "x.zip")

    with pytest.raises(PackageError, match=r"handlers \S*a/x\.py and \S*b/x\.py both go to the "
                                           r"zip's root as 'x' \(one would replace the other\); "
                                           r"rename one of them"):
        build("b/y.py", "a/x.py", "b/x.py")
    with pytest.raises(PackageError, match=r"handlers \S*a/x\.py and \S*c/x both go to the "
                                           r"zip's root as 'x'"):
        build("a/x.py", "c/x")
    with pytest.raises(PackageError, match=r"handler \S*a/x\.py is given twice"):
        build("a/x.py", "a/x.py")
    assert fake_pip == []
    assert not (tmp_path / "x.zip").exists()
    code, out = run_cli("package", str(tmp_path / "a/x.py"), str(tmp_path / "b/x.py"),
                        "--arch", "arm64", "--wheel", str(wheels), "-o", str(tmp_path / "x.zip"))
    assert (code, out) == (1, "")
    assert "both go to the zip's root as 'x'" in capsys.readouterr().err


def test_any_handler_path_named_like_a_dependency_is_refused(
        tmp_path: Path, fake_pip: list[list[str]]) -> None:
    """Among several handler paths, the one named like a dependency is named in the error."""
    (tmp_path / "app.py").write_text("")
    (tmp_path / "pydantic.py").write_text("")
    with pytest.raises(PackageError, match=r"handler \S*pydantic\.py: its name 'pydantic' is "
                                           r"also a top-level name of a dependency"):
        build_zip([tmp_path / "app.py", tmp_path / "pydantic.py"], arch="x86_64",
                  python="3.11", wheels=[fake_wheels(tmp_path / "dist", PURE)],
                  output=tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_no_handler_path_is_an_error(tmp_path: Path) -> None:
    """An empty list of handler paths is refused (the CLI requires at least one)."""
    with pytest.raises(PackageError, match="no handler given"):
        build_zip([], arch="arm64", python="3.11", wheels=[fake_wheels(tmp_path, PURE)])
    with pytest.raises(SystemExit):
        run_cli("package", "--arch", "arm64")


# ---------------------------------------------------------------- real pip installs


def test_arm64_zip_has_aarch64_dependencies_and_the_handler(arm64_zip: Built) -> None:
    """The zip holds the handler at its root and pydantic-core and orjson built for aarch64."""
    with zipfile.ZipFile(arm64_zip.path) as archive:
        names = archive.namelist()
    assert "handler.py" in names
    assert "lambda_workflow/__init__.py" in names
    shared = [n for n in names if n.endswith(".so")]
    assert any(re.fullmatch(r"pydantic_core/_pydantic_core\.cpython-311-aarch64-linux-gnu\.so",
                            n) for n in shared), shared
    assert any(n.startswith("orjson/") and "aarch64" in n for n in shared), shared
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert {"pydantic", "pydantic_core", "orjson", "annotated_types", "typing_inspection",
            "typing_extensions.py"} <= tops


def test_arm64_zip_leaves_out_runtime_packages_and_machine_paths(arm64_zip: Built) -> None:
    """jmespath (in the Lambda runtime) is left out, as are bin/ and direct_url.json; the only
    byte code is the zip's own, for Python 3.11, one .pyc beside each .py."""
    with zipfile.ZipFile(arm64_zip.path) as archive:
        names = archive.namelist()
        records = [archive.read(n).decode() for n in names if n.endswith(".dist-info/RECORD")]
    assert not [n for n in names if n.startswith(("jmespath", "bin/"))]
    assert not [n for n in names if n.endswith("direct_url.json")]
    pycs = {n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))}
    assert pycs == {_pyc_name(n, "3.11") for n in names if n.endswith(".py")}
    assert not [line for r in records for line in r.splitlines() if line.startswith("../")]
    assert "left out (the Lambda runtime has them; --with-boto3 keeps them): jmespath" \
        in arm64_zip.report


def test_report_gives_sizes_core_and_contents(arm64_zip: Built) -> None:
    """The report gives the zip and unzipped sizes, the core kind and the top-level contents."""
    report = arm64_zip.report
    zip_size = arm64_zip.path.stat().st_size
    assert f"zip {zip_size / 1_048_576:.1f} MB ({zip_size:,} bytes;" in report
    with zipfile.ZipFile(arm64_zip.path) as archive:
        unzipped = sum(i.file_size for i in archive.infolist())
    assert f"unzipped {unzipped / 1_048_576:.1f} MB ({unzipped:,} bytes) of Lambda's 250 MB" \
        in report
    assert "replay core: pure Python" in report
    assert re.search(r"distributions: .*lambda-workflow 0\.1\.0.*orjson .*pydantic_core ",
                     report)
    assert re.search(r"^\s+\d+\.\d MB  pydantic_core$", report, re.M)
    assert re.search(r"^\s+\d+ KB  handler\.py$", report, re.M)


def test_same_inputs_give_the_same_zip(arm64_zip: Built, pure_wheel: Path, handler_file: Path,
                                       tmp_path: Path) -> None:
    """A second build from the same handler, wheel and requirements is byte-for-byte equal."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("jmespath\n")
    # The handler's mtime (recorded by timestamp byte code) and the hash seed do not matter.
    os.utime(handler_file, (1_000_000_000, 1_000_000_000))
    os.environ["PYTHONHASHSEED"] = "12345"
    try:
        again = build_zip(handler_file, arch="arm64", python="3.11", wheels=[pure_wheel],
                          requirements=requirements, output=tmp_path / "again.zip")
    finally:
        del os.environ["PYTHONHASHSEED"]
    assert again.bytecode is not None and again.bytecode.files > 100
    assert again.path.read_bytes() == arm64_zip.path.read_bytes()


def test_x86_64_with_boto3_keeps_runtime_packages(pure_wheel: Path, tmp_path: Path) -> None:
    """--with-boto3 keeps jmespath; an x86_64 / 3.13 package folder goes in under its name."""
    app = tmp_path / "app"
    (app / "__pycache__").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "main.py").write_text("def handler(event, context):\n    return 1\n")
    (app / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("jmespath\n")
    result = build_zip(app, arch="x86_64", python="3.13", wheels=[pure_wheel],
                       requirements=requirements, with_boto3=True, output=tmp_path / "x.zip")
    with zipfile.ZipFile(result.path) as archive:
        names = archive.namelist()
    # The folder's stale byte code (for 3.11) is left out; the zip's own is for 3.13.
    assert [n for n in names if n.startswith("app/")] == [
        "app/__init__.py", "app/__pycache__/__init__.cpython-313.pyc",
        "app/__pycache__/main.cpython-313.pyc", "app/main.py"]
    assert "jmespath/__init__.py" in names
    assert any(re.fullmatch(r"pydantic_core/_pydantic_core\.cpython-313-x86_64-linux-gnu\.so", n)
               for n in names)
    assert result.excluded == []
    assert result.compiled_core is None


def test_pip_failure_shows_pips_last_lines(pure_wheel: Path, handler_file: Path,
                                           tmp_path: Path) -> None:
    """A requirement pip cannot satisfy fails with pip's own message and leaves no zip."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("jmespath==0.0.1\n")
    with pytest.raises(PackageError) as info:
        build_zip(handler_file, arch="arm64", python="3.12", wheels=[pure_wheel],
                  requirements=requirements, output=tmp_path / "x.zip")
    message = str(info.value)
    assert "pip failed (exit code 1) installing " + PURE in message
    assert "No matching distribution found for jmespath==0.0.1" in message
    assert not (tmp_path / "x.zip").exists()


def test_handler_named_like_a_dependency_is_refused(pure_wheel: Path, tmp_path: Path) -> None:
    """A handler module called pydantic.py would shadow pydantic, so it is refused."""
    (tmp_path / "pydantic.py").write_text("")
    with pytest.raises(PackageError, match="'pydantic' is also a top-level name of a dependency"):
        build_zip(tmp_path / "pydantic.py", arch="x86_64", python="3.11", wheels=[pure_wheel],
                  output=tmp_path / "x.zip")


# ---------------------------------------------------------------- arm64 under qemu

QEMU = "qemu-aarch64-static"
# scripts/build_wheels.sh keeps its Debian roots in <scratch>/roots/<suite>-arm64.
WHEEL_BUILD = Path(os.environ.get("LAMBDA_WORKFLOW_WHEEL_SCRATCH", ROOT / ".wheel-build"))


def _aarch64_wheels() -> list[Path]:
    """The cp311-cp311 aarch64 wheels in dist/: what an arm64 python3.11 zip gets."""
    return sorted((ROOT / "dist").glob("lambda_workflow-*-cp311-cp311-manylinux*_aarch64*.whl"))


def _is_aarch64_elf(path: Path) -> bool:
    try:
        header = path.read_bytes()[:20]
    except OSError:
        return False
    return header[:4] == b"\x7fELF" and header[18:20] == b"\xb7\x00"  # EM_AARCH64


def _arm64_userland() -> Path | None:
    """A complete Debian arm64 root with Python 3.11 (bookworm) from the wheel script."""
    for root in sorted(WHEEL_BUILD.glob("roots/*")):
        if (root / ".complete").is_file() and _is_aarch64_elf(root / "usr/bin/python3.11"):
            return root
    return None


def _run_wheel_script(needs: str) -> None:
    """Run scripts/build_wheels.sh for a test that needs what it builds; fail if it fails."""
    script = ROOT / "scripts" / "build_wheels.sh"
    if not script.is_file():
        pytest.fail(f"this test needs {needs}, which {script} builds, and that script does not "
                    f"exist")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAMBDA_WORKFLOW_NO_EXTENSIONS", "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS")}
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        pytest.fail(f"bash scripts/build_wheels.sh failed (exit {proc.returncode}):\n{tail}")


@pytest.fixture(scope="session")
def arm64_prerequisites() -> Iterator[tuple[Path, Path]]:
    """The cp311-cp311 aarch64 wheel in dist/ and an arm64 userland, built by the wheel script."""
    if not _aarch64_wheels() or _arm64_userland() is None:
        _run_wheel_script(f"dist/*-cp311-cp311-manylinux*_aarch64.whl and a Debian arm64 "
                          f"userland under {WHEEL_BUILD}/roots")
    wheels, userland = _aarch64_wheels(), _arm64_userland()
    if not wheels or userland is None:
        pytest.fail(f"after scripts/build_wheels.sh: aarch64 wheels {wheels}, arm64 userland "
                    f"with python3.11 under {WHEEL_BUILD}/roots: {userland}; both are needed")
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} is not on PATH (Debian package qemu-user-static)")
    yield wheels[-1], userland


def test_arm64_zip_imports_the_compiled_core_under_qemu(
        arm64_prerequisites: tuple[Path, Path], handler_file: Path, tmp_path: Path) -> None:
    """An arm64 python3.11 zip from dist/ takes the per-version wheel; unpacked, it runs its
    handler on aarch64 with that wheel's C core."""
    wheel, userland = arm64_prerequisites
    code, report = run_cli("package", str(handler_file), "--arch", "arm64", "--python", "3.11",
                           "--wheel", str(ROOT / "dist"), "-o", str(tmp_path / "arm64.zip"))
    assert code == 0, report
    assert f"(from {wheel.name})" in report
    core = "_c.cpython-311-aarch64-linux-gnu.so"
    assert f"replay core: compiled (lambda_workflow/_core/{core})" in report
    task = tmp_path / "task"  # what Lambda unpacks to /var/task
    with zipfile.ZipFile(tmp_path / "arm64.zip") as archive:
        archive.extractall(task)
    assert _is_aarch64_elf(task / "lambda_workflow" / "_core" / core)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LAMBDA_WORKFLOW_", "PYTHON"))}
    env |= {"PYTHONPATH": str(task), "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}
    # As Lambda does: /var/task on sys.path, then `import handler` and a call of handler.handler;
    # every file of the folder compiled from source (none: the zip's byte code is used) is
    # printed too.
    call = ("import importlib._bootstrap_external as e, json\n"
            "compiled = []\n"
            "original = e.SourceLoader.source_to_code\n"
            "def hook(self, data, path, *args, **kwargs):\n"
            "    compiled.append(path)\n"
            "    return original(self, data, path, *args, **kwargs)\n"
            "e.SourceLoader.source_to_code = hook\n"
            "import handler\n"
            "print('HANDLER-RESULT ' + json.dumps("
            "handler.handler({'item': 'tea', 'amount': 7}, None)))\n"
            f"print('COMPILED ' + json.dumps([p for p in compiled "
            f"if p.startswith({str(task)!r})]))")
    proc = subprocess.run([QEMU, "-L", str(userland), str(userland / "usr/bin/python3.11"),
                           "-s", "-c", call],
                          env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("HANDLER-RESULT "))
    assert '"implementation": "c"' in line
    assert f'"core": "{task}/lambda_workflow/_core/{core}"' in line
    assert '"result": 42' in line
    assert "COMPILED []" in proc.stdout.splitlines()


# ---------------------------------------------------------------- the wheels' benchmark

X86_TAGS = {"3.11": "cp311-cp311", "3.12": "cp312-cp312", "3.13": "cp313-cp313"}


def _x86_64_wheels_missing() -> list[str]:
    """What benchmarks/wheels.py needs for x86_64 and does not find."""
    missing = []
    for v, tag in (*X86_TAGS.items(), ("3.11", "cp311-abi3")):
        if not list((ROOT / "dist").glob(f"lambda_workflow-*-{tag}-manylinux*_x86_64*.whl")):
            missing.append(f"dist/*-{tag}-*x86_64.whl")
        if not (WHEEL_BUILD / "venvs" / f"x86_64-{v}" / "bin" / "python").exists():
            missing.append(f"{WHEEL_BUILD}/venvs/x86_64-{v}")
    return missing


def test_wheels_benchmark_runs_each_wheel_under_its_own_interpreter(tmp_path: Path) -> None:
    """benchmarks/wheels.py (quick, one round, x86_64 only: no figure is checked) measures, for
    each Python, that version's per-version wheel, the abi3 wheel and the pure twin, each with
    the core it names: the per-version extension, _c.abi3.so, no extension."""
    if _x86_64_wheels_missing():
        _run_wheel_script(", ".join(_x86_64_wheels_missing()))
    assert not _x86_64_wheels_missing(), _x86_64_wheels_missing()
    out = tmp_path / "wheels.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_WORKFLOW_")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wheels.py"), "--quick",
                           "--rounds", "1", "--sizes", "10", "--no-aarch64", "--json", str(out)],
                          env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for v, tag in X86_TAGS.items():
        assert set(data["x86_64"][v]) == {tag, "cp311-abi3", "py"}
        cores = {label: data["wheels"][f"x86_64 {v} {label}"]["core"]
                 for label in (tag, "cp311-abi3", "py")}
        assert cores[tag].endswith(f"/_c.cpython-{tag[2:5]}-x86_64-linux-gnu.so"), cores
        assert cores["cp311-abi3"].endswith("/_c.abi3.so"), cores
        assert cores["py"] == "-"
        for label in (tag, "cp311-abi3", "py"):
            rows = data["x86_64"][v][label]
            assert {"floor", "checked_floor", "core"} <= set(rows)
            assert rows["core"]["10"]["median"] > 0
        assert f"| abi3 / {tag} | py / {tag} |" in proc.stdout
    assert data["aarch64"] == {}


# ---------------------------------------------------------------- a project folder


def _project(root: Path) -> Path:
    """A user's project folder as it is on disk: the handler modules beside everything that must
    not go into a Lambda zip."""
    files = {
        "app.py": "import orders\n", "orders/__init__.py": "", "orders/flow.py": "X = 1\n",
        "orders/tests/test_flow.py": "", "orders/flow_test.py": "", "orders/data.json": "{}",
        "README.md": "# app\n", "tests/test_app.py": "", "tests/conftest.py": "",
        "test_app.py": "", "conftest.py": "", "build/lambda.zip": "", "old.zip": "",
        "dist/app-1.0-py3-none-any.whl": "", "app.egg-info/PKG-INFO": "",
        "orders/__pycache__/flow.cpython-311.pyc": "", "orders/stale.pyc": "",
        "state.db": "", "state.db-wal": "", "runs.sqlite": "", "runs.sqlite3": "",
        "poetry.lock": "", ".venv/pyvenv.cfg": "", ".venv/lib/x.py": "", "venv/lib/y.py": "",
        "env311/pyvenv.cfg": "", "env311/lib/z.py": "", ".git/HEAD": "", ".env": "SECRET=1\n",
        "notes/todo.md": "", "scratch/try.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_package_dot_stores_relative_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fake_pip: list[list[str]]) -> None:
    """`package .` in a project folder puts the folder's contents at the zip's root under
    relative names (it stored `/app.py`, `/orders/flow.py`, ... before)."""
    project = _project(tmp_path / "project")
    monkeypatch.chdir(project)
    out = tmp_path / "out.zip"
    code, report = run_cli("package", ".", "--arch", "arm64", "--wheel",
                           str(fake_wheels(tmp_path / "wheels", PURE)), "-o", str(out))
    assert code == 0, report
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    assert not [n for n in names if n.startswith("/") or n.startswith("..")], names
    assert {"app.py", "orders/__init__.py", "orders/flow.py"} <= set(names)
    assert re.search(r"^\s+\d+ KB  app\.py$", report, re.M)


def test_project_folder_leaves_out_what_is_not_code(tmp_path: Path,
                                                    fake_pip: list[list[str]]) -> None:
    """Build outputs, state files, tests, zips, virtual environments, .git and hidden files stay
    out of the zip, --exclude adds globs, and the report lists what was left out and why."""
    project = _project(tmp_path / "project")
    (project / "shared").symlink_to(project / "orders", target_is_directory=True)
    (project / "gone.py").symlink_to(project / "nothing.py")
    out = tmp_path / "out.zip"
    code, report = run_cli("package", str(project), "--arch", "x86_64", "--wheel",
                           str(fake_wheels(tmp_path / "wheels", PURE)), "--exclude", "notes",
                           "--exclude", "orders/*.json", "-o", str(out))
    assert code == 0, report
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    own = sorted(n for n in names if not n.startswith("pydantic") and "__pycache__" not in n)
    assert own == ["README.md", "app.py", "orders/__init__.py", "orders/flow.py",
                   "scratch/try.py"]
    expected = {
        "build outputs": "app.egg-info/, build/, dist/, orders/__pycache__/, orders/stale.pyc",
        "state files": "poetry.lock, runs.sqlite, runs.sqlite3, state.db, state.db-wal",
        "tests": "conftest.py, orders/flow_test.py, orders/tests/, test_app.py, tests/",
        "zips": "old.zip",
        "virtual environments": ".venv/, env311/, venv/",
        "version control": ".git/",
        "hidden files": ".env",
        "links to folders": "shared/",
        "broken links and special files": "gone.py",
        "--exclude": "notes/, orders/data.json",
    }
    for reason, listed in expected.items():
        assert f"    {reason}: {listed}\n" in report, (reason, report)


def test_project_folder_from_elsewhere_gives_the_same_zip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_pip: list[list[str]]) -> None:
    """`package .`, `package ../project` and `package /abs/project/` write the same bytes."""
    project = _project(tmp_path / "project")
    (tmp_path / "elsewhere").mkdir()
    wheels = str(fake_wheels(tmp_path / "wheels", PURE))
    zips: list[bytes] = []
    for cwd, arg in [(project, "."), (tmp_path / "elsewhere", "../project"),
                     (tmp_path, f"{project}/")]:
        monkeypatch.chdir(cwd)
        out = tmp_path / f"{len(zips)}.zip"
        build_zip(arg, arch="arm64", python="3.12", wheels=[wheels], output=out)
        zips.append(out.read_bytes())
    assert zips[0] == zips[1] == zips[2]


def test_package_folder_keeps_its_name_and_leaves_out_tests(
        tmp_path: Path, fake_pip: list[list[str]]) -> None:
    """A folder with __init__.py is a package: it goes in under its name, without its tests,
    byte code and --exclude matches (matched against the names in the zip)."""
    project = _project(tmp_path / "project")
    result = build_zip(project / "orders", arch="arm64", python="3.12",
                       wheels=[fake_wheels(tmp_path / "wheels", PURE)],
                       exclude=["orders/data.json"], output=tmp_path / "x.zip")
    with zipfile.ZipFile(result.path) as archive:
        names = [n for n in archive.namelist()
                 if n.startswith("orders") and "__pycache__" not in n]
    assert names == ["orders/__init__.py", "orders/flow.py"]
    assert result.left_out == {
        "build outputs": ["orders/__pycache__/", "orders/stale.pyc"],
        "tests": ["orders/flow_test.py", "orders/tests/"],
        "--exclude": ["orders/data.json"]}


def test_project_folder_entries_clash_like_handler_paths(
        tmp_path: Path, fake_pip: list[list[str]]) -> None:
    """A project folder's top-level entries count as handler names: a module given beside the
    folder that holds it, or an entry named like a dependency, is refused."""
    project = _project(tmp_path / "project")
    wheels = [fake_wheels(tmp_path / "wheels", PURE)]
    with pytest.raises(PackageError, match=r"handlers \S*project and \S*app\.py both go to the "
                                           r"zip's root as 'app'"):
        build_zip([project, project / "app.py"], arch="arm64", python="3.12", wheels=wheels,
                  output=tmp_path / "x.zip")
    (project / "pydantic").mkdir()
    (project / "pydantic" / "__init__.py").write_text("")
    with pytest.raises(PackageError, match=r"handler \S*project: its entry 'pydantic' is also a "
                                           r"top-level name of a dependency"):
        build_zip(project, arch="arm64", python="3.12", wheels=wheels, output=tmp_path / "x.zip")


def test_bad_exclude_glob_is_an_error(tmp_path: Path) -> None:
    """An empty --exclude, or one that starts with / (names in the zip are relative), is named."""
    (tmp_path / "app.py").write_text("")
    wheels = [fake_wheels(tmp_path / "wheels", PURE)]
    for glob in ("", "/app.py"):
        with pytest.raises(PackageError, match=rf"--exclude {glob!r}: "):
            build_zip(tmp_path, arch="arm64", python="3.12", wheels=wheels, exclude=[glob])


# ---------------------------------------------------------------- byte code

PYC_HANDLER = """\
\"\"\"A handler whose import loads pydantic, lambda_workflow and a workflow.\"\"\"
from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow


class Order(BaseModel):
    amount: int


pricing = Service("pricing", Order, Order)


@workflow
async def checkout(ctx: WorkflowContext[Order]) -> int:
    return (await ctx.call(pricing, ctx.request)).amount


def handler(event, context):
    from lambda_workflow.backends.memory import MemoryStateStore
    from lambda_workflow.local import LocalRuntime

    runtime = LocalRuntime(store=MemoryStateStore())
    runtime.register(checkout)
    runtime.implement(pricing, lambda order: Order(amount=order.amount * 2))
    handle = runtime.start(checkout, Order(**event), workflow_id="order-1")
    runtime.run_until_idle()
    return handle.result()
"""

#: Run in the unpacked zip as Lambda runs a handler (its folder the current directory, no site
#: packages): imports and calls the handler and reports every file of the folder that the
#: import system compiled from source (SourceLoader.source_to_code is called only then), and
#: the byte code path of each module loaded from the folder.
IMPORT_PROBE = """\
import importlib._bootstrap_external as external, json, os, sys
compiled = []
original = external.SourceLoader.source_to_code
def source_to_code(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)
external.SourceLoader.source_to_code = source_to_code
import handler
result = handler.handler({"amount": 21}, None)
task = os.getcwd() + "/"
modules = {name: module.__spec__.cached for name, module in sys.modules.items()
           if (getattr(module, "__file__", None) or "").startswith(task)
           and module.__file__.endswith(".py")}
print(json.dumps({"result": result, "modules": modules,
                  "compiled": [p for p in compiled if p.startswith(task)]}))
"""


def _run_probe(python: str, task: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LAMBDA_WORKFLOW_", "PYTHON"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # /var/task is read-only on Lambda
    proc = subprocess.run([python, "-S", "-c", IMPORT_PROBE], cwd=task, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return data


@pytest.fixture(scope="module")
def x86_64_312_zip(tmp_path_factory: pytest.TempPathFactory, pure_wheel: Path) -> Built:
    """An x86_64 / Python 3.12 zip of PYC_HANDLER (this machine is x86_64, so a Python 3.12
    here runs it)."""
    tmp = tmp_path_factory.mktemp("x86-312")
    (tmp / "handler.py").write_text(PYC_HANDLER)
    out = tmp / "lambda.zip"
    code, report = run_cli("package", str(tmp / "handler.py"), "--arch", "x86_64", "--python",
                           "3.12", "--wheel", str(pure_wheel), "--require-bytecode", "-o",
                           str(out))
    assert code == 0, report
    return Built(out, report)


def _python(version: str) -> str:
    python, tried = _package.find_interpreter(version)
    assert python is not None, f"this test needs a Python {version}: {tried}"
    return python


def test_zip_has_byte_code_for_each_module_with_the_targets_magic(x86_64_312_zip: Built) -> None:
    """Every .py has its __pycache__/*.cpython-312.pyc, with Python 3.12's magic number (as that
    interpreter itself reports it) and hash-based flags: unchecked for the dependencies,
    checked for the handler's own file."""
    magic = subprocess.run([_python("3.12"), "-c", "import importlib.util, sys; "
                            "sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER)"],
                           capture_output=True, check=True).stdout
    assert int.from_bytes(magic[:2], "little") == _package.PYC_MAGIC["3.12"] == 3531
    with zipfile.ZipFile(x86_64_312_zip.path) as archive:
        names = archive.namelist()
        sources = [n for n in names if n.endswith(".py")]
        pycs = {n: archive.read(n) for n in names if n.endswith(".pyc")}
    assert set(pycs) == {_pyc_name(n, "3.12") for n in sources}
    assert len(pycs) > 100
    assert {data[:4] for data in pycs.values()} == {magic}
    flags = {n: int.from_bytes(data[4:8], "little") for n, data in pycs.items()}
    assert flags.pop("__pycache__/handler.cpython-312.pyc") == 0b11  # hash-based, checked
    assert set(flags.values()) == {0b01}  # hash-based, unchecked
    assert re.search(r"byte code: \d+ \.pyc files \(\d\.\d MB\) for python3\.12, compiled by "
                     r"\S+python3\.12 \(unchecked-hash; the handler's own files checked-hash\)",
                     x86_64_312_zip.report)


def test_unpacked_zip_imports_from_byte_code_without_compiling(x86_64_312_zip: Built,
                                                               tmp_path: Path) -> None:
    """Unpacked with new mtimes and run by Python 3.12 without writing byte code (as on Lambda),
    the handler's import and first call compile nothing from source: every module of the folder
    comes from its .pyc. With the __pycache__ folders removed the same run compiles them all,
    so the check would see it."""
    task = tmp_path / "task"
    with zipfile.ZipFile(x86_64_312_zip.path) as archive:
        archive.extractall(task)
    for path in task.rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))
    python = _python("3.12")
    got = _run_probe(python, task)
    assert got["result"] == 42
    assert got["compiled"] == []
    modules = got["modules"]
    assert {"handler", "pydantic", "pydantic.main", "lambda_workflow",
            "lambda_workflow.local", "typing_extensions"} <= set(modules)
    for name, cached in modules.items():
        assert cached is not None and Path(cached).is_file(), name
        assert ".cpython-312.pyc" in cached
    assert not [p for p in task.rglob("*.pyc") if not p.name.endswith(".cpython-312.pyc")]
    for cache in list(task.rglob("__pycache__")):
        shutil.rmtree(cache)
    without = _run_probe(python, task)
    assert without["result"] == 42
    assert {f"{task}/handler.py", f"{task}/pydantic/main.py",
            f"{task}/lambda_workflow/__init__.py"} <= set(without["compiled"])
    assert len(without["compiled"]) == len(modules)


@pytest.fixture
def no_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A target version other than this interpreter's, and a PATH, HOME, pyenv and uv with no
    interpreter of it: only a ``python3.X`` on PATH that is in fact Python 3.11."""
    version = "3.13" if sys.version_info[:2] == (3, 12) else "3.12"
    fake = tmp_path / "bin" / f"python{version}"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho cpython 3.11 3495\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "uv"))
    return version, fake


def test_no_interpreter_of_the_target_version_ships_sources_and_warns(
        tmp_path: Path, fake_pip: list[list[str]], no_python: tuple[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without a Python of the target version the zip has sources only and the report says
    why (each place looked at) and what to do; --require-bytecode makes it an error before
    anything is installed, as does a --bytecode-python of another version."""
    version, fake = no_python
    (tmp_path / "app.py").write_text("X = 1\n")
    wheels = str(fake_wheels(tmp_path / "dist", PURE))
    out = tmp_path / "x.zip"
    code, report = run_cli("package", str(tmp_path / "app.py"), "--arch", "arm64", "--python",
                           version, "--wheel", wheels, "-o", str(out))
    assert code == 0, report
    with zipfile.ZipFile(out) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".pyc")]
        assert "app.py" in archive.namelist()
    line = next(x for x in report.splitlines() if "byte code" in x)
    assert line.startswith(f"  WARNING byte code: none, no Python {version} interpreter found")
    assert f"{fake} is Python 3.11" in line
    assert f"pyenv: no {tmp_path}/pyenv/versions/{version}.*/bin/python{version}" in line
    assert f"`pyenv install {version}`" in line and "--bytecode-python" in line
    assert "--require-bytecode makes this an error" in line
    assert len(fake_pip) == 1
    code, report = run_cli("package", str(tmp_path / "app.py"), "--arch", "arm64", "--python",
                           version, "--wheel", wheels, "--require-bytecode", "-o",
                           str(tmp_path / "y.zip"))
    assert (code, report) == (1, "")
    err = capsys.readouterr().err
    assert f"--require-bytecode: no Python {version} interpreter found" in err
    assert f"{fake} is Python 3.11" in err
    with pytest.raises(PackageError, match=rf"--bytecode-python \S+: is Python 3\.11; it must be "
                                           rf"CPython {version}"):
        build_zip(tmp_path / "app.py", arch="arm64", python=version, wheels=[wheels],
                  bytecode_python=fake, output=tmp_path / "z.zip")
    assert len(fake_pip) == 1
    assert not (tmp_path / "y.zip").exists() and not (tmp_path / "z.zip").exists()


def test_no_bytecode_ships_sources_only(tmp_path: Path, fake_pip: list[list[str]]) -> None:
    """--no-bytecode: no .pyc in the zip, and the report says so; it cannot be combined with
    --require-bytecode."""
    (tmp_path / "app.py").write_text("X = 1\n")
    wheels = str(fake_wheels(tmp_path / "dist", PURE))
    code, report = run_cli("package", str(tmp_path / "app.py"), "--arch", "arm64", "--python",
                           "3.11", "--wheel", wheels, "--no-bytecode", "-o",
                           str(tmp_path / "x.zip"))
    assert code == 0, report
    with zipfile.ZipFile(tmp_path / "x.zip") as archive:
        assert sorted(archive.namelist()) == [
            "app.py", "pydantic-2.0.dist-info/METADATA", "pydantic-2.0.dist-info/RECORD",
            "pydantic/__init__.py"]
    assert "  byte code: none (--no-bytecode)" in report
    with pytest.raises(SystemExit):
        run_cli("package", str(tmp_path / "app.py"), "--arch", "arm64", "--no-bytecode",
                "--require-bytecode")


def test_handler_the_target_python_cannot_compile_is_an_error(
        tmp_path: Path, fake_pip: list[list[str]]) -> None:
    """A handler file with syntax the target Python lacks (a 3.12 `type` statement for 3.11)
    fails the build, naming the file and the error; a dependency's file that does not compile
    is shipped as source and listed in the report."""
    _python("3.11")
    (tmp_path / "app.py").write_text("type Id = int\n")
    wheels = str(fake_wheels(tmp_path / "dist", PURE))
    with pytest.raises(PackageError, match=r"Python 3\.11 cannot compile the handler's app\.py: "
                                           r".*invalid syntax.*\(fix it, or leave the file out "
                                           r"with --exclude\)"):
        build_zip(tmp_path / "app.py", arch="arm64", python="3.11", wheels=[wheels],
                  output=tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()

    def install_with_a_python2_file(args: list[str], description: str) -> None:
        fake_pip_install(args)
        target = Path(args[args.index("--target") + 1])
        (target / "pydantic" / "_legacy.py").write_text("print 'hello'\n")

    (tmp_path / "app.py").write_text("X = 1\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_package, "_run_pip", install_with_a_python2_file)
        result = build_zip(tmp_path / "app.py", arch="arm64", python="3.11", wheels=[wheels],
                           output=tmp_path / "x.zip")
    with zipfile.ZipFile(result.path) as archive:
        names = archive.namelist()
    assert "pydantic/_legacy.py" in names
    assert "pydantic/__pycache__/_legacy.cpython-311.pyc" not in names
    assert "pydantic/__pycache__/__init__.cpython-311.pyc" in names
    assert result.bytecode is not None
    assert [n for n, _ in result.bytecode.failed] == ["pydantic/_legacy.py"]
    assert "Missing parentheses in call to 'print'" in result.bytecode.failed[0][1]
    assert re.search(r"not compiled \(1, shipped as source; Python 3\.11 cannot import them\): "
                     r"pydantic/_legacy\.py \(.*print", "\n".join(_package.format_report(result)))


def test_find_interpreter_looks_in_pyenv_newest_first(tmp_path: Path) -> None:
    """A pyenv root's versions are tried newest first; a pyenv shim on PATH that does not run
    (its version not selected) is turned down with its error."""
    real = _python("3.12")
    shim = tmp_path / "shims" / "python3.12"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.12: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    for patch in ("3.12.2", "3.12.10", "3.11.9"):
        folder = tmp_path / "pyenv" / "versions" / patch / "bin"
        folder.mkdir(parents=True)
        (folder / f"python{patch[:4]}").symlink_to(real)
    env = {"PATH": str(shim.parent), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "pyenv")}
    python, tried = _package.find_interpreter("3.12", environ=env)
    assert python == f"{tmp_path}/pyenv/versions/3.12.10/bin/python3.12"
    assert (f"{shim} does not run (exit code 127: pyenv: python3.12: command not found)"
            in tried)
    # Named explicitly, an interpreter of the version is taken as it is, whatever PATH holds.
    assert _package.find_interpreter("3.12", explicit=real, environ=env) == (real, [])


def test_cold_start_benchmark_runs_the_zips_package_builds(pure_wheel: Path,
                                                          tmp_path: Path) -> None:
    """benchmarks/cold_start.py --zip (one round, without the moto rows; no timing is checked)
    builds the zip with and without byte code and runs every row from each unpacked zip."""
    out = tmp_path / "cold_start.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDA_WORKFLOW_")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cold_start.py"),
                          "--rounds", "1", "--no-aws", "--zip", "--wheel", str(pure_wheel),
                          "--json", str(out)], env=env, capture_output=True, text=True,
                         timeout=900, check=False)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    rows = {(e["mode"], e["row"]) for e in report["results"]}
    for mode in ("zip-pyc/current", "zip-source/current"):
        assert {(mode, row) for row in ("lambda_workflow", "workflow module", "boto3")} <= rows
    zips = report["zips"]
    assert zips["zip-pyc"]["pyc_files"] > 100 and zips["zip-source"]["pyc_files"] == 0
    assert zips["zip-pyc"]["unzipped_bytes"] > zips["zip-source"]["unzipped_bytes"]
    assert "zip: workflow module import, source only / with byte code" in report["derived"]


# ---------------------------------------------------------------- scripts/wheel_checks.py
# The checks scripts/build_wheels.sh runs on each wheel: an extension named for the wrong
# version or architecture, or built for the wrong machine, fails its check. The extensions
# come from the wheels in dist/.

DIST = ROOT / "dist"
ARM = "lambda_workflow-0.1.0-cp313-cp313-manylinux2014_aarch64.manylinux_2_17_aarch64.whl"


def _load_wheel_checks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheel_checks",
                                                  ROOT / "scripts" / "wheel_checks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks = _load_wheel_checks()


def _extension(tag: str, machine: str) -> bytes:
    """The compiled core's bytes from dist/'s wheel of that tag and machine."""
    found = sorted(DIST.glob(f"lambda_workflow-*-{tag}-manylinux*_{machine}*.whl"))
    if not found:
        _run_wheel_script(f"dist/*-{tag}-*_{machine}.whl")
        found = sorted(DIST.glob(f"lambda_workflow-*-{tag}-manylinux*_{machine}*.whl"))
    assert found, f"no {tag} {machine} wheel in dist/ after scripts/build_wheels.sh"
    with zipfile.ZipFile(found[-1]) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".so")]
        return zf.read(name)


def _wheel(folder: Path, wheel_name: str, so_name: str, data: bytes) -> Path:
    path = folder / wheel_name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"lambda_workflow/_core/{so_name}", data)
    return path


def test_extension_suffix_follows_the_tag() -> None:
    assert checks.extension_suffix(Path(ARM), "aarch64") == ".cpython-313-aarch64-linux-gnu.so"
    abi3 = Path(ARM.replace("cp313-cp313", "cp311-abi3"))
    assert checks.extension_suffix(abi3, "aarch64") == ".abi3.so"
    with pytest.raises(checks.CheckFailed, match="neither an abi3 nor a cp3XY-cp3XY wheel"):
        checks.extension_suffix(Path(ARM.replace("cp313-cp313", "py3-none")), "aarch64")


def test_elf_passes_the_right_extension(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, ARM, "_c.cpython-313-aarch64-linux-gnu.so",
                   _extension("cp313-cp313", "aarch64"))
    line = checks.cmd_elf(wheel, "aarch64")
    assert "_c.cpython-313-aarch64-linux-gnu.so (aarch64, newest GLIBC_2.17" in line


def test_elf_refuses_an_extension_named_for_the_host(tmp_path: Path) -> None:
    """An aarch64 build named by the x86_64 host's EXT_SUFFIX would never be imported on arm64:
    what a cross build without SETUPTOOLS_EXT_SUFFIX makes."""
    wheel = _wheel(tmp_path, ARM, "_c.cpython-313-x86_64-linux-gnu.so",
                   _extension("cp313-cp313", "aarch64"))
    with pytest.raises(checks.CheckFailed,
                       match=r"not named \*\.cpython-313-aarch64-linux-gnu\.so"):
        checks.cmd_elf(wheel, "aarch64")


def test_elf_refuses_an_abi3_file_in_a_per_version_wheel(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, ARM, "_c.abi3.so", _extension("cp313-cp313", "aarch64"))
    with pytest.raises(checks.CheckFailed, match="is not named"):
        checks.cmd_elf(wheel, "aarch64")


def test_elf_refuses_an_x86_64_binary_in_an_aarch64_wheel(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, ARM, "_c.cpython-313-aarch64-linux-gnu.so",
                   _extension("cp313-cp313", "x86_64"))
    with pytest.raises(checks.CheckFailed, match="is for Advanced Micro Devices X86-64, not "
                                                  "aarch64"):
        checks.cmd_elf(wheel, "aarch64")


def test_download_needs_well_formed_expectations(tmp_path: Path) -> None:
    with pytest.raises(checks.CheckFailed, match=r"no ARCH/X\.Y=TAG expectation given"):
        checks.cmd_download(tmp_path)
    with pytest.raises(checks.CheckFailed, match=r"bad expectation 'arm64/3\.12=cp312-cp312'"):
        checks.cmd_download(tmp_path, "arm64/3.12=cp312-cp312")


def test_download_fails_when_pip_picks_another_wheel(tmp_path: Path) -> None:
    """Only the abi3 aarch64 wheel offered, the per-version one expected for 3.13: the check
    fails, naming what pip picked (pip reads only the file name and metadata here)."""
    found = sorted(DIST.glob("lambda_workflow-*-py3-none-any.whl"))
    if not found:
        _run_wheel_script("dist/*-py3-none-any.whl")
        found = sorted(DIST.glob("lambda_workflow-*-py3-none-any.whl"))
    abi3 = ARM.replace("cp313-cp313", "cp311-abi3")
    (tmp_path / abi3).write_bytes(found[-1].read_bytes())
    with pytest.raises(checks.CheckFailed, match=rf"picked \['{abi3}'\], not the cp313-cp313"):
        checks.cmd_download(tmp_path, "aarch64/3.13=cp313-cp313")
    assert checks.cmd_download(tmp_path, "aarch64/3.12=cp311-abi3") == (
        "pip download picks aarch64/3.12: cp311-abi3")
