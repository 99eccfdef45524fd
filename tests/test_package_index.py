"""``lambda-workflow package`` without a local wheel: lambda-workflow's wheel for the target comes
from a package index served on 127.0.0.1 (a PEP 503 simple index for ``--index-url``, a plain
folder listing for ``--find-links``), run from a folder that has no ``dist/``."""

from __future__ import annotations

import hashlib
import html
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lambda_workflow import _package
from lambda_workflow._package import PackageError, build_zip, installed_version, select_wheel
from lambda_workflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
VERSION = installed_version()
HANDLER = "def handler(event, context):\n    return event\n"


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@dataclass
class Served:
    """A folder served over HTTP on 127.0.0.1, and the paths requested from it."""

    url: str
    requests: list[str] = field(default_factory=list)


@contextmanager
def serve(root: Path) -> Iterator[Served]:
    """Serve ``root`` on a free loopback port until the block ends."""
    served = Served("")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            served.requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def simple_index(root: Path, wheels: list[Path]) -> Path:
    """A PEP 503 simple index of ``wheels`` under ``root``: ``simple/<project>/`` pages whose
    links (with sha256 fragments) point to ``files/``. Returns ``root``."""
    (root / "files").mkdir(parents=True)
    projects: dict[str, list[str]] = {}
    for wheel in wheels:
        shutil.copy(wheel, root / "files" / wheel.name)
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        projects.setdefault(project, []).append(
            f'<a href="../../files/{html.escape(wheel.name)}#sha256={digest}">'
            f"{html.escape(wheel.name)}</a><br>")
    for project, links in projects.items():
        (root / "simple" / project).mkdir(parents=True)
        (root / "simple" / project / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    (root / "simple" / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n"
        + "\n".join(f'<a href="{p}/">{p}</a>' for p in sorted(projects))
        + "\n</body></html>\n")
    return root


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of lambda-workflow wheels of the installed version: those in dist/ (CI builds
    them with scripts/build_wheels.sh before the tests), else a pure wheel built from a copy of
    this source tree."""
    folder = tmp_path_factory.mktemp("lambda-workflow-wheels")
    built = sorted((ROOT / "dist").glob(f"lambda_workflow-{VERSION}-*.whl"))
    for wheel in built:
        shutil.copy(wheel, folder)
    if built:
        return folder
    src = tmp_path_factory.mktemp("source")
    for name in ("src", "ext"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "*.c"))
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "LAMBDA_WORKFLOW_NO_EXTENSIONS": "1"}
    env.pop("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(folder), str(src)],
                   check=True, env=env)
    assert [w.name for w in folder.iterdir()] == [f"lambda_workflow-{VERSION}-py3-none-any.whl"]
    return folder


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project folder with a handler and no dist/, as the current folder."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "app.py").write_text(HANDLER)
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def only_the_given_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip without this machine's configuration (its find-links, extra indexes): the options
    that ``package`` passes are the only sources."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_install(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The dependencies' install replaced by a stand-in that unpacks only the lambda-workflow
    wheel it is given (the download stays real); returns the install's arguments."""
    calls: list[list[str]] = []

    def install(args: list[str], description: str) -> None:
        calls.append(args)
        target = Path(args[args.index("--target") + 1])
        with zipfile.ZipFile(args[-1]) as wheel:
            wheel.extractall(target)

    monkeypatch.setattr(_package, "_run_pip", install)
    return calls


def test_index_url_serves_the_wheel_and_the_dependencies(
        tmp_path: Path, project: Path, wheels: Path, only_the_given_index: None) -> None:
    """With no dist/ and only a local PEP 503 index, the wheel for x86_64 / Python 3.12 and its
    dependencies all come from that index: its access log shows the requests."""
    expected = select_wheel([wheels], "x86_64", "3.12")
    deps = tmp_path / "deps"
    env = {k: v for k, v in os.environ.items() if k != "PIP_CONFIG_FILE"}
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(deps),
                    "--platform", "manylinux2014_x86_64", "--python-version", "3.12",
                    "--implementation", "cp", "--only-binary=:all:", str(expected)],
                   check=True, env=env)
    offered = sorted(deps.glob("*.whl"))
    offered += [] if (deps / expected.name).exists() else [expected]
    index = simple_index(tmp_path / "index", offered)
    with serve(index) as server:
        code, report = run_cli("package", "app.py", "--arch", "x86_64", "--python", "3.12",
                               "--index-url", f"{server.url}/simple", "-o", "lambda.zip")
    assert code == 0, report
    assert (f"(from {expected.name}, downloaded from the index {server.url}/simple)"
            in report), report
    assert "/simple/lambda-workflow/" in server.requests
    assert f"/files/{expected.name}" in server.requests
    assert "/simple/pydantic-core/" in server.requests
    with zipfile.ZipFile(project / "lambda.zip") as archive:
        names = archive.namelist()
    assert {"app.py", "lambda_workflow/__init__.py"} <= set(names)
    assert any(re.fullmatch(r"pydantic_core/_pydantic_core\.cpython-312-x86_64-linux-gnu\.so", n)
               for n in names)
    assert not any(n.startswith("/") for n in names)


def test_the_index_gives_the_per_version_wheel_before_abi3(
        tmp_path: Path, wheels: Path, only_the_given_index: None) -> None:
    """An index offering what scripts/build_wheels.sh builds for arm64 (cp311-cp311, cp313-cp313
    and cp311-abi3): pip downloads the per-version wheel for 3.11 and 3.13 and the abi3 one for
    3.12, and select_wheel picks the same from those files (the pure wheel's contents under the
    compiled wheels' names: pip reads the name and version, not the extension)."""
    pure = wheels / f"lambda_workflow-{VERSION}-py3-none-any.whl"
    offered = tmp_path / "offered"
    offered.mkdir()
    names = {tag: f"lambda_workflow-{VERSION}-{tag}-manylinux2014_aarch64."
                  f"manylinux_2_17_aarch64.whl"
             for tag in ("cp311-abi3", "cp311-cp311", "cp313-cp313")}
    for name in names.values():
        shutil.copy(pure, offered / name)
    index = simple_index(tmp_path / "index", sorted(offered.iterdir()))
    expected = {"3.11": names["cp311-cp311"], "3.12": names["cp311-abi3"],
                "3.13": names["cp313-cp313"]}
    with serve(index) as server:
        for version, name in expected.items():
            got = _package.download_wheel(tmp_path / f"got-{version}", "arm64", version,
                                          index_url=f"{server.url}/simple")
            assert got.name == name, version
            assert select_wheel([offered], "arm64", version).name == name
    assert sorted(r for r in server.requests if r.startswith("/files/")) == sorted(
        f"/files/{name}" for name in expected.values())


def test_find_links_over_http_serves_the_wheel(project: Path, wheels: Path) -> None:
    """--find-links with a folder listing on 127.0.0.1 gives the arm64 / Python 3.11 wheel; the
    dependencies come from pip's configured index, as --find-links only adds a source."""
    expected = select_wheel([wheels], "arm64", "3.11")
    with serve(wheels) as server:
        code, report = run_cli("package", "app.py", "--arch", "arm64", "--python", "3.11",
                               "--find-links", f"{server.url}/", "-o", "lambda.zip")
    assert code == 0, report
    assert (f"(from {expected.name}, downloaded from pip's configured index (PyPI unless "
            f"pip.conf or PIP_INDEX_URL names another) and --find-links {server.url}/)"
            in report), report
    assert f"/{expected.name}" in server.requests
    with zipfile.ZipFile(project / "lambda.zip") as archive:
        names = archive.namelist()
    assert "lambda_workflow/__init__.py" in names
    assert any(re.fullmatch(r"pydantic_core/_pydantic_core\.cpython-311-aarch64-linux-gnu\.so", n)
               for n in names)


def test_dist_without_a_fitting_wheel_falls_back_to_the_index(
        project: Path, wheels: Path, fake_install: list[list[str]],
        only_the_given_index: None) -> None:
    """./dist holding only an x86_64 wheel, arm64 asked: the wheel is downloaded (from a
    --find-links folder path), and the options reach the dependencies' install too."""
    (project / "dist").mkdir()
    (project / "dist" / f"lambda_workflow-{VERSION}-cp311-abi3-manylinux2014_x86_64.whl"
     ).write_bytes(b"")
    expected = select_wheel([wheels], "arm64", "3.13")
    code, report = run_cli("package", "app.py", "--arch", "arm64", "--find-links", str(wheels),
                           "-o", "lambda.zip")
    assert code == 0, report
    assert ("lambda-workflow package: ./dist has no lambda-workflow wheel for "
            "manylinux2014_aarch64 and Python 3.13\n") in report
    assert f"lambda-workflow package: downloading lambda-workflow {VERSION} for " \
           f"manylinux2014_aarch64, Python 3.13 from " in report
    assert f"(from {expected.name}, downloaded from " in report
    (args,) = fake_install
    assert args[args.index("--find-links") + 1] == str(wheels)
    assert Path(args[-1]).name == expected.name


def test_a_fitting_wheel_in_dist_is_used_without_the_index(
        tmp_path: Path, project: Path, wheels: Path, fake_install: list[list[str]]) -> None:
    """A fitting wheel in ./dist wins: the index is not asked for lambda-workflow."""
    shutil.copytree(wheels, project / "dist")
    expected = select_wheel([wheels], "x86_64", "3.11")
    with serve(wheels) as server:
        code, report = run_cli("package", "app.py", "--arch", "x86_64", "--python", "3.11",
                               "--find-links", f"{server.url}/", "-o", "lambda.zip")
    assert code == 0, report
    assert f"(from {expected.name})\n" in report
    assert "download" not in report
    assert server.requests == []


def test_no_wheel_for_the_version_or_platform_names_all_four(
        tmp_path: Path, project: Path, only_the_given_index: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An index with an older version and an x86_64-only wheel of this one, arm64 asked: the
    error names the version, the platform, the Python and the index (its password hidden), and
    no zip is written."""
    files = tmp_path / "offered"
    files.mkdir()
    for name in ("lambda_workflow-0.0.9-py3-none-any.whl",
                 f"lambda_workflow-{VERSION}-cp311-abi3-manylinux2014_x86_64.whl"):
        (files / name).write_bytes(b"not fetched")
    index = simple_index(tmp_path / "index", sorted(files.iterdir()))
    with serve(index) as server:
        url = server.url.replace("http://", "http://reader:s3cret@") + "/simple"
        with pytest.raises(PackageError) as info:
            build_zip("app.py", arch="arm64", python="3.11", index_url=url,
                      output="lambda.zip")
        code, out = run_cli("package", "app.py", "--arch", "arm64", "--python", "3.11",
                            "--index-url", url, "-o", "lambda.zip")
    message = str(info.value)
    shown = server.url.replace("http://", "http://reader:****@") + "/simple"
    assert message.startswith(
        f"no lambda-workflow {VERSION} wheel for manylinux2014_aarch64 and Python 3.11 on the "
        f"index {shown}; pass --index-url or --find-links where that wheel is, or --wheel"), \
        message
    assert "(from versions: 0.0.9)" in message  # pip's own lines follow
    assert "s3cret" not in message
    assert "/simple/lambda-workflow/" in server.requests
    assert not [r for r in server.requests if r.startswith("/files/")]
    assert (code, out.count("downloading")) == (1, 1)
    assert f"lambda-workflow package: no lambda-workflow {VERSION} wheel for " \
           "manylinux2014_aarch64 and Python 3.11" in capsys.readouterr().err
    assert not (project / "lambda.zip").exists()


def test_an_index_that_cannot_be_reached_is_named(
        tmp_path: Path, project: Path, only_the_given_index: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An index on a closed port is reported as unreachable, not as lacking the wheel."""
    monkeypatch.setenv("PIP_RETRIES", "1")  # one retry: its warning is what pip says
    with serve(tmp_path) as server:
        closed = server.url  # the port is closed once the server stops
    with pytest.raises(PackageError) as info:
        build_zip("app.py", arch="x86_64", python="3.13", index_url=f"{closed}/simple")
    message = str(info.value)
    assert message.startswith(
        f"could not reach the index {closed}/simple to download lambda-workflow {VERSION} for "
        f"manylinux2014_x86_64 and Python 3.13; pip's last lines:\n"), message
    assert "Connection refused" in message


def test_bad_index_options_are_named_before_pip_runs(
        project: Path, fake_install: list[list[str]]) -> None:
    """An --index-url that is not a URL and a --find-links that does not exist are refused."""
    with pytest.raises(PackageError, match=r"--index-url 'dist/': not an http://, https:// or "
                                           r"file:// URL \(for a folder of wheels, use "
                                           r"--find-links\)"):
        build_zip("app.py", arch="arm64", python="3.11", index_url="dist/")
    with pytest.raises(PackageError, match=r"--find-links 'wheelhouse': neither a URL nor an "
                                           r"existing file or folder"):
        build_zip("app.py", arch="arm64", python="3.11", find_links=["wheelhouse"])
    assert fake_install == []
