"""``lambda-workflow package``: a Lambda deployment zip from handler modules and our wheel.

The dependencies are installed the way AWS documents for zips built off Lambda: ``pip install
--target DIR --platform manylinux2014_<arch> --python-version X.Y --implementation cp
--only-binary=:all:``, so pydantic-core and orjson come as wheels for the Lambda platform,
whatever the machine that builds the zip. lambda-workflow itself comes from a local wheel
(``--wheel``, or ``./dist``) chosen here by its tags, or, when there is none, the installed
version's wheel for the target is downloaded from the package index (``pip download
--platform ... --only-binary=:all: --no-deps``, with ``--index-url``/``--find-links`` passed
through to every pip call); a missing platform wheel is reported by name. Handler folders
leave out what is not code (build outputs, state files, tests, zips, virtual environments,
``.git``). The zip is deterministic: sorted entries, a fixed timestamp and normalised
permissions.

Every ``.py`` in the zip gets its byte code (``__pycache__/NAME.cpython-3XY.pyc``) compiled by
an interpreter of the target's Python version (``find_interpreter``): ``/var/task`` is
read-only on Lambda, so without it every cold start compiles pydantic, lambda_workflow and the
handler from source. The byte code is hash-based, not timestamp-based (a timestamp pyc records
the source's mtime and size, and is recompiled in memory at every import when the unzipped
file's mtime differs, which Lambda does not promise to keep): the dependencies' is
``unchecked-hash`` (never compared with the source: they are not edited in place), the
handler's own files' ``checked-hash`` (compared with the source's hash at import, so an edit
in Lambda's console editor is not hidden by stale byte code).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_PYTHON",
    "DIRECT_UPLOAD_LIMIT",
    "PYC_MAGIC",
    "PYTHON_VERSIONS",
    "RUNTIME_PROVIDED",
    "UNZIPPED_LIMIT",
    "Bytecode",
    "PackageError",
    "PackageResult",
    "build_zip",
    "check_target",
    "compile_bytecode",
    "download_wheel",
    "find_interpreter",
    "format_report",
    "index_options",
    "installed_version",
    "remove_distributions",
    "select_wheel",
    "write_zip",
]

#: Lambda's architecture names, with the machine name in wheel and manylinux tags.
ARCHITECTURES = {"arm64": "aarch64", "x86_64": "x86_64"}
#: Lambda Python runtimes this package supports (it requires Python 3.11 or newer).
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
#: The Python version ``lambda-workflow package`` builds for when none is given: the runtime
#: of ``deploy/template.yaml`` (python3.13).
DEFAULT_PYTHON = "3.13"
#: Distributions every Lambda Python runtime already has (boto3 and its dependencies); left out
#: of the zip unless ``with_boto3``.
RUNTIME_PROVIDED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil", "six"})
#: Lambda's limit on a function's unzipped code, and on a zip uploaded directly (not via S3).
UNZIPPED_LIMIT = 262_144_000
DIRECT_UPLOAD_LIMIT = 52_428_800

_PROJECT = "lambda_workflow"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_PIP_TAIL = 15
#: The magic number (a .pyc's first two bytes, little-endian) of each supported Python's final
#: releases: byte code with another one (a pre-release's) is ignored by the Lambda runtime.
PYC_MAGIC = {"3.11": 3495, "3.12": 3531, "3.13": 3571}
#: Where Lambda unpacks the zip: the file names recorded in the byte code.
_TASK_ROOT = "/var/task"


class PackageError(Exception):
    """The zip cannot be built; the message says what is missing or what failed."""


@dataclass
class PackageResult:
    """What ``build_zip`` wrote."""

    path: Path
    arch: str
    python: str
    wheel: Path
    zip_size: int
    unzipped_size: int
    #: Top-level names in the zip (files, packages, ``*.dist-info``) and their unzipped sizes.
    top_level: dict[str, int]
    #: (name, version) of every distribution in the zip, sorted by name.
    distributions: list[tuple[str, str]]
    #: Distributions removed because the Lambda runtime provides them.
    excluded: list[str] = field(default_factory=list)
    #: The compiled replay core's path in the zip, or None if the wheel is pure Python.
    compiled_core: str | None = None
    #: Where the wheel was downloaded from (``wheel`` was then in a temporary folder, now
    #: gone), or None for a local wheel.
    wheel_origin: str | None = None
    #: What the handler folders held that is not in the zip: reason -> names (relative, as
    #: they would be in the zip; a folder once, as ``name/``), in the report's order.
    left_out: dict[str, list[str]] = field(default_factory=dict)
    #: The byte code compiled into the zip (or why there is none).
    bytecode: Bytecode | None = None


@dataclass
class Bytecode:
    """What ``build_zip`` compiled: the ``.pyc`` files in the zip, or why there are none."""

    #: The target Python version, X.Y.
    python: str
    #: The interpreter that compiled it, or None when nothing was compiled.
    interpreter: str | None = None
    #: Number of .pyc files in the zip, and their unzipped size in bytes.
    files: int = 0
    size: int = 0
    #: Dependency files (names in the zip) that the target Python cannot compile, with the
    #: first line of the error; they are shipped as source only (importing them fails anyway).
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Why no byte code was compiled: ``--no-bytecode`` or no interpreter of that version.
    skipped: str | None = None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_target(arch: str, python: str) -> tuple[str, str]:
    """Validate a Lambda architecture and Python version; return (manylinux platform, X.Y)."""
    if arch not in ARCHITECTURES:
        raise PackageError(f"unknown architecture {arch!r}: Lambda has "
                           f"{' and '.join(ARCHITECTURES)}")
    version = python.removeprefix("python")
    if version not in PYTHON_VERSIONS:
        raise PackageError(f"unsupported Python version {python!r}: lambda-workflow runs on the "
                           f"Lambda runtimes python{', python'.join(PYTHON_VERSIONS)}")
    return f"manylinux2014_{ARCHITECTURES[arch]}", version


def _wheel_supported(filename: str, machine: str, minor: int) -> bool:
    """Whether pip, asked for cp3.<minor> on manylinux2014_<machine>, would accept the wheel."""
    parts = filename[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):
        return False
    pythons, abis, platforms = (set(p.split(".")) for p in parts[-3:])
    legacy = {"manylinux1", "manylinux2010"} if machine == "x86_64" else set()
    manylinux = {f"manylinux_2_{n}_{machine}" for n in range(5, 18)}
    manylinux |= {f"manylinux2014_{machine}"} | {f"{tag}_{machine}" for tag in legacy}
    if not platforms & (manylinux | {"any"}):
        return False
    own = f"cp3{minor}"
    if "none" in abis and pythons & ({"py3", own} | {f"py3{m}" for m in range(minor + 1)}):
        return True
    if "abi3" in abis and pythons & {f"cp3{m}" for m in range(2, minor + 1)}:
        return True
    return own in abis and own in pythons


def select_wheel(sources: Sequence[Path], arch: str, python: str) -> Path:
    """The lambda-workflow wheel for the target among wheel files and folders of wheels.

    A wheel with the compiled core (platform-specific) is preferred to the pure one, then the
    newest version, then the per-version build for that Python (``cp313-cp313``) to an abi3
    one (``cp311-abi3``), as pip prefers it.
    """
    platform, version = check_target(arch, python)
    found: list[Path] = []
    for source in sources:
        if source.is_dir():
            found += sorted(source.glob(f"{_PROJECT}-*.whl"))
        elif source.is_file() and source.name.endswith(".whl"):
            if not source.name.startswith(f"{_PROJECT}-"):
                raise PackageError(f"--wheel {source}: not a lambda-workflow wheel")
            found.append(source)
        elif source.exists():
            raise PackageError(f"--wheel {source}: neither a .whl file nor a folder of wheels")
        else:
            raise PackageError(f"--wheel {source}: no such file or folder")
    machine = ARCHITECTURES[arch]
    minor = int(version.split(".")[1])
    fits = [w for w in found if _wheel_supported(w.name, machine, minor)]
    if not fits:
        where = ", ".join(str(s) for s in sources)
        names = ", ".join(w.name for w in found) or "no lambda-workflow wheel at all"
        raise PackageError(
            f"no lambda-workflow wheel for {platform} and Python {version} in {where} "
            f"(found: {names}); build one with `bash scripts/build_wheels.sh`")

    return max(fits, key=lambda wheel: _rank(wheel.name, minor))


def _rank(filename: str, minor: int) -> tuple[bool, tuple[int, ...], int, str]:
    """How ``select_wheel`` orders fitting wheels, best last: the compiled core first, then the
    newest version, then the tag pip prefers for cp3.<minor>: the per-version build
    (cp3<minor>-cp3<minor>, the fast one) before an abi3 build (the newest cp3N-abi3 first)."""
    parts = filename[:-len(".whl")].split("-")
    numbers = tuple(int(n) for n in re.findall(r"\d+", parts[1]))
    pythons, abis = set(parts[-3].split(".")), set(parts[-2].split("."))
    own = f"cp3{minor}"
    if own in abis and own in pythons:
        tag = 100
    elif "abi3" in abis:
        tag = max((int(p[3:]) for p in pythons
                   if re.fullmatch(r"cp3\d+", p) and int(p[3:]) <= minor), default=0)
    else:
        tag = -1
    return (not filename.endswith("-any.whl"), numbers, tag, filename)


#: Folder names left out of handler folders, at any depth, with the reason the report gives.
_LEFT_OUT_FOLDERS = {"build": "build outputs", "dist": "build outputs",
                     "__pycache__": "build outputs", "tests": "tests", ".git": "version control",
                     ".venv": "virtual environments", "venv": "virtual environments"}
#: File-name globs left out of handler folders, with the reason.
_LEFT_OUT_FILES = (
    (("*.pyc", "*.pyo"), "build outputs"),
    ((*(f"*.{ext}{tail}" for ext in ("db", "sqlite", "sqlite3")
        for tail in ("", "-wal", "-shm", "-journal")), "*.lock"), "state files"),
    (("test_*.py", "*_test.py", "conftest.py"), "tests"),
    (("*.zip",), "zips"),
)
#: The order of the reasons in the report.
_REASONS = ("build outputs", "state files", "tests", "zips", "virtual environments",
            "version control", "hidden files", "links to folders",
            "broken links and special files", "--exclude")


@dataclass
class _Handler:
    """A handler path and what it puts at the zip's root."""

    path: Path
    #: Its names at the zip's root as Python imports them (``app`` for ``app.py``).
    names: list[str]
    files: list[tuple[str, Path]]
    #: Reason -> names in the zip (``tests/`` for a folder) that were left out.
    left_out: dict[str, list[str]]
    #: A project folder (its contents at the root) rather than a file or a package.
    project: bool


def _check_excludes(exclude: Sequence[str]) -> None:
    for glob in exclude:
        if not glob.strip():
            raise PackageError(f"--exclude {glob!r}: an empty pattern; give a glob such as "
                               f"'docs' or 'data/*.csv'")
        if glob.startswith("/"):
            raise PackageError(f"--exclude {glob!r}: names in the zip are relative "
                               f"(app/data.json), so a pattern cannot start with /")


def _excluded(arcname: str, exclude: Sequence[str]) -> bool:
    """Whether an --exclude glob matches: one without ``/`` matches the last part of the name
    at any depth, one with ``/`` the whole name in the zip."""
    name = arcname.rsplit("/", 1)[-1]
    for glob in exclude:
        glob = glob.rstrip("/")
        if fnmatch.fnmatchcase(arcname if "/" in glob else name, glob):
            return True
    return False


def _left_out_reason(path: Path, arcname: str, is_dir: bool,
                     exclude: Sequence[str]) -> str | None:
    name = path.name
    if _excluded(arcname, exclude):
        return "--exclude"
    if is_dir:
        if path.is_symlink():
            return "links to folders"
        if (path / "pyvenv.cfg").is_file():
            return "virtual environments"
        if name in _LEFT_OUT_FOLDERS:
            return _LEFT_OUT_FOLDERS[name]
        if name.endswith(".egg-info"):
            return "build outputs"
    else:
        for globs, reason in _LEFT_OUT_FILES:
            if any(fnmatch.fnmatchcase(name, glob) for glob in globs):
                return reason
    return "hidden files" if name.startswith(".") else None


def _folder_files(folder: Path, prefix: str, exclude: Sequence[str],
                  left_out: dict[str, list[str]]) -> list[tuple[str, Path]]:
    """(name in the zip, file) of the files under ``folder``, named ``prefix`` + their path
    relative to it; what is left out is added to ``left_out`` (a folder once, as ``name/``)."""
    files: list[tuple[str, Path]] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        arcname = f"{prefix}{entry.name}"
        is_dir = entry.is_dir()
        reason = _left_out_reason(entry, arcname, is_dir, exclude)
        if reason is not None:
            left_out.setdefault(reason, []).append(arcname + "/" if is_dir else arcname)
        elif is_dir:
            files += _folder_files(entry, arcname + "/", exclude, left_out)
        elif entry.is_file():
            files.append((arcname, entry))
        else:
            left_out.setdefault("broken links and special files", []).append(arcname)
    return files


def _handler_files(handler: Path, exclude: Sequence[str]) -> _Handler:
    """What a handler path puts at the zip's root: a ``.py`` file under its name, a package
    folder (with ``__init__.py``) under its name, or a project folder's contents."""
    if handler.is_file():
        if handler.suffix != ".py":
            raise PackageError(f"handler {handler}: expected a .py file or a package folder")
        return _Handler(handler, [handler.stem], [(handler.name, handler)], {}, project=False)
    if handler.is_dir():
        left_out: dict[str, list[str]] = {}
        project = not (handler / "__init__.py").is_file()
        # abspath: `.` and `..` have no usable name of their own.
        package = Path(os.path.abspath(handler)).name
        prefix = "" if project else f"{package}/"
        files = _folder_files(handler, prefix, exclude, left_out)
        if not any(name.endswith(".py") for name, _ in files):
            raise PackageError(f"handler {handler}: the folder has no .py file")
        if project:
            tops = {name.split("/")[0] for name, _ in files}
            names = sorted(top.removesuffix(".py") for top in tops)
        else:
            names = [package]
        return _Handler(handler, names, files, {r: sorted(v) for r, v in left_out.items()},
                        project)
    raise PackageError(f"handler {handler}: no such file or folder")


def _root_entries(paths: Sequence[Path], exclude: Sequence[str]) -> list[_Handler]:
    """The handler paths' files; two paths that would land on the same top-level name
    (``a/x.py`` and ``b/x.py``, or ``x.py`` and a package ``x/``, which Python imports under one
    name, or a project folder and a module in it) are refused, as one would hide the other in
    the zip."""
    if not paths:
        raise PackageError("no handler given: name a .py file or a package folder")
    handlers: list[_Handler] = []
    seen: dict[str, Path] = {}
    given: set[Path] = set()
    for path in paths:
        if path.exists() and path.resolve() in given:
            raise PackageError(f"handler {path} is given twice")
        given.add(path.resolve())
        handler = _handler_files(path, exclude)
        for name in handler.names:
            if name in seen:
                raise PackageError(
                    f"handlers {seen[name]} and {path} both go to the zip's root as {name!r} "
                    f"(one would replace the other); rename one of them")
            seen[name] = path
        handlers.append(handler)
    return handlers


def _pip(args: list[str]) -> tuple[int, str]:
    """Run this interpreter's pip; return its exit code and the last lines of its output."""
    command = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    return proc.returncode, "\n".join(proc.stdout.rstrip().splitlines()[-_PIP_TAIL:])


def _run_pip(args: list[str], description: str) -> None:
    code, tail = _pip(args)
    if code != 0:
        raise PackageError(f"pip failed (exit code {code}) installing {description}; "
                           f"its last lines:\n{tail}")


def installed_version() -> str:
    """The version of the lambda-workflow running this code (its distribution's metadata, or
    ``lambda_workflow.__version__`` when it runs from a source tree without one)."""
    try:
        return importlib.metadata.version("lambda-workflow")
    except importlib.metadata.PackageNotFoundError:
        from . import __version__
        return __version__


def _redact(url: str) -> str:
    """The URL with its password (an index token) replaced by ``****``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:****@{host}").geturl()


def index_options(index_url: str | None, find_links: Sequence[str]) -> list[str]:
    """pip's ``--index-url`` and ``--find-links`` options, checked: the index is a URL, and each
    find-links source is a URL or an existing file or folder."""
    args: list[str] = []
    if index_url is not None:
        if urllib.parse.urlsplit(index_url).scheme not in ("http", "https", "file"):
            raise PackageError(f"--index-url {_redact(index_url)!r}: not an http://, https:// or "
                               f"file:// URL (for a folder of wheels, use --find-links)")
        args += ["--index-url", index_url]
    for source in find_links:
        scheme = urllib.parse.urlsplit(source).scheme
        if scheme not in ("http", "https", "file") and not Path(source).exists():
            raise PackageError(f"--find-links {source!r}: neither a URL nor an existing file "
                               f"or folder")
        args += ["--find-links", source]
    return args


def _index_description(index_url: str | None, find_links: Sequence[str]) -> str:
    where = (f"the index {_redact(index_url)}" if index_url is not None else
             "pip's configured index (PyPI unless pip.conf or PIP_INDEX_URL names another)")
    if find_links:
        where += " and --find-links " + ", ".join(_redact(f) for f in find_links)
    return where


#: What pip prints when an index or a find-links URL cannot be read (pip then also says that
#: no version was found, which would wrongly blame the index's contents).
_UNREACHABLE = ("connection broken by", "Could not fetch URL", "Max retries exceeded",
                "Failed to establish a new connection")


def download_wheel(dest: Path, arch: str, python: str, *, version: str | None = None,
                   index_url: str | None = None, find_links: Sequence[str] = ()) -> Path:
    """Download lambda-workflow's wheel for the target from the package index into ``dest``.

    ``pip download lambda-workflow==<version> --platform manylinux2014_<arch> --python-version
    X.Y --implementation cp --only-binary=:all: --no-deps`` (the dependencies are installed
    with the wheel, from the same sources). The version defaults to the installed one.

    Raises:
        PackageError: The sources have no wheel of that version for the target (naming the
            version, platform, Python and sources, with pip's last lines), or pip failed.
    """
    platform, py_version = check_target(arch, python)
    version = version or installed_version()
    args = ["download", "--dest", str(dest), "--platform", platform,
            "--python-version", py_version, "--implementation", "cp", "--only-binary=:all:",
            "--no-deps", "--disable-pip-version-check", "--no-input", "--quiet",
            *index_options(index_url, find_links), f"lambda-workflow=={version}"]
    code, tail = _pip(args)
    where = _index_description(index_url, find_links)
    if code != 0 and any(sign in tail for sign in _UNREACHABLE):
        raise PackageError(
            f"could not reach {where} to download lambda-workflow {version} for {platform} and "
            f"Python {py_version}; pip's last lines:\n{tail}")
    if code != 0 and ("No matching distribution found" in tail
                      or "Could not find a version" in tail):
        raise PackageError(
            f"no lambda-workflow {version} wheel for {platform} and Python {py_version} on "
            f"{where}; pass --index-url or --find-links where that wheel is, or --wheel with "
            f"one built by `bash scripts/build_wheels.sh`. pip's last lines:\n{tail}")
    if code != 0:
        raise PackageError(f"pip failed (exit code {code}) downloading lambda-workflow {version} "
                           f"for {platform} and Python {py_version} from {where}; its last "
                           f"lines:\n{tail}")
    return select_wheel([dest], arch, py_version)


def _dist_infos(target: Path) -> list[tuple[str, str, Path]]:
    """(name, version, folder) of every distribution installed in ``target``."""
    dists = []
    for info in sorted(target.glob("*.dist-info")):
        name, _, version = info.name[:-len(".dist-info")].partition("-")
        metadata = info / "METADATA"
        if metadata.is_file():
            for line in metadata.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                elif not line:
                    break
        dists.append((name, version, info))
    return dists


def _record_paths(info: Path) -> list[str]:
    record = info / "RECORD"
    if not record.is_file():
        return []
    return [line.split(",")[0] for line in record.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def remove_distributions(target: Path, names: Iterable[str]) -> list[str]:
    """Uninstall the named distributions from a ``pip --target`` folder; return 'name version'.

    Each distribution's files are those its RECORD lists; folders left empty are removed.
    """
    wanted = {_normalize(n) for n in names}
    removed = []
    root = target.resolve()
    for name, version, info in _dist_infos(target):
        if _normalize(name) not in wanted:
            continue
        for rel in _record_paths(info):
            path = (target / rel).resolve()
            if path.is_relative_to(root) and path.is_file():
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
        removed.append(f"{name} {version}")
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed


def _tidy(target: Path) -> None:
    """Drop what depends on the build machine: console scripts (their shebang names the local
    interpreter, and Lambda does not run them), ``direct_url.json`` (the wheel's local path),
    byte code, and the lines of RECORD that name them."""
    shutil.rmtree(target / "bin", ignore_errors=True)
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for info in target.glob("*.dist-info"):
        (info / "direct_url.json").unlink(missing_ok=True)
        record = info / "RECORD"
        if record.is_file():
            lines = record.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines
                    if not line.startswith("../") and "__pycache__/" not in line
                    and not line.split(",")[0].endswith("/direct_url.json")]
            record.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


_PROBE = ("import sys, importlib.util; print(sys.implementation.name, '%d.%d' % "
          "sys.version_info[:2], int.from_bytes(importlib.util.MAGIC_NUMBER[:2], 'little'))")


def _probe(candidate: str, version: str) -> str | None:
    """Why ``candidate`` cannot compile byte code for CPython ``version``, or None if it can."""
    try:
        proc = subprocess.run([candidate, "-S", "-s", "-c", _PROBE], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"does not run ({exc})"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[0]
        return f"does not run (exit code {proc.returncode}: {last})"
    parts = proc.stdout.split()
    if len(parts) != 3:
        return f"printed {proc.stdout.strip()!r}, not its version"
    name, got, magic = parts
    if name != "cpython":
        return f"is {name}, not CPython"
    if got != version:
        return f"is Python {got}"
    if int(magic) != PYC_MAGIC[version]:
        return (f"writes byte code with magic number {magic}, not {PYC_MAGIC[version]} as "
                f"Python {version}'s releases do (a pre-release?)")
    return None


def _version_key(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", folder.name))


def find_interpreter(version: str, *, explicit: str | Path | None = None,
                     environ: dict[str, str] | None = None) -> tuple[str | None, list[str]]:
    """An interpreter of CPython ``version`` (X.Y) to compile the zip's byte code with.

    Looked for in this order: ``explicit`` (``--bytecode-python``), this interpreter
    (``sys.executable``), ``pythonX.Y`` in each folder of ``PATH``, pyenv's versions
    (``$PYENV_ROOT/versions/X.Y.*``, newest first) and uv's (``$UV_PYTHON_INSTALL_DIR`` or
    ``~/.local/share/uv/python``). Each candidate is run once to check its implementation,
    version and byte code magic number (a pyenv shim for a version that is not selected, for
    instance, does not run).

    Returns:
        The interpreter's path (None if none fits) and, for each candidate turned down, why.

    Raises:
        PackageError: ``explicit`` is not an interpreter of that version.
    """
    env = dict(os.environ if environ is None else environ)
    if explicit is not None:
        why = _probe(str(explicit), version)
        if why is not None:
            raise PackageError(f"--bytecode-python {explicit}: {why}; it must be CPython "
                               f"{version}, the target's version")
        return str(explicit), []
    tried: list[str] = []
    if (sys.implementation.name == "cpython" and sys.version_info[:2] == tuple(
            int(n) for n in version.split(".")) and int.from_bytes(
                importlib.util.MAGIC_NUMBER[:2], "little") == PYC_MAGIC[version]):
        return sys.executable, tried
    tried.append(f"{sys.executable} (this interpreter) is Python "
                 f"{sys.version_info[0]}.{sys.version_info[1]}")
    name = f"python{version}"
    candidates: list[str] = []
    for folder in env.get("PATH", "").split(os.pathsep):
        path = Path(folder or ".") / name
        if path.is_file() and os.access(path, os.X_OK):
            candidates.append(str(path))
    if not candidates:
        tried.append(f"no {name} on PATH")
    home = Path(env.get("HOME", str(Path.home())))
    for label, root, pattern in (
            ("pyenv", Path(env.get("PYENV_ROOT", str(home / ".pyenv"))) / "versions",
             f"{version}.*"),
            ("uv", Path(env.get("UV_PYTHON_INSTALL_DIR",
                                str(home / ".local/share/uv/python"))), f"cpython-{version}.*")):
        found = [f / "bin" / name for f in sorted(root.glob(pattern), key=_version_key,
                                                   reverse=True) if (f / "bin" / name).is_file()]
        if not found:
            tried.append(f"{label}: no {root}/{pattern}/bin/{name}")
        candidates += [str(f) for f in found]
    seen: set[str] = set()
    for candidate in candidates:
        if candidate in seen:
            continue
        seen.add(candidate)
        why = _probe(candidate, version)
        if why is None:
            return candidate, tried
        tried.append(f"{candidate} {why}")
    return None, tried


_COMPILE = """\
import json, py_compile, sys
unchecked = py_compile.PycInvalidationMode.UNCHECKED_HASH
checked = py_compile.PycInvalidationMode.CHECKED_HASH
failed = []
for source, cfile, dfile, check in json.load(sys.stdin):
    try:
        py_compile.compile(source, cfile=cfile, dfile=dfile, doraise=True, optimize=0,
                           invalidation_mode=checked if check else unchecked)
    except Exception as exc:
        msg = exc.msg if isinstance(exc, py_compile.PyCompileError) else repr(exc)
        failed.append([dfile, msg.strip().splitlines()[-1] if msg.strip() else repr(exc)])
json.dump(failed, sys.stdout)
"""


def compile_bytecode(interpreter: str, version: str, sources: Sequence[tuple[str, Path, bool]],
                     dest: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """Compile ``(name in the zip, source, checked)`` with ``interpreter`` (CPython
    ``version``) into ``dest``, laid out as in the zip: ``pkg/__pycache__/mod.cpython-3XY.pyc``
    for ``pkg/mod.py``.

    The byte code is hash-based (``checked`` ones are compared with their source at import,
    the others never), optimisation level 0 (Lambda runs Python without ``-O``), and records
    each file as ``/var/task/<name>``, so it does not depend on where the zip was built: the
    same sources give the same bytes. The compiler runs with a fixed hash seed.

    Returns:
        ``(name in the zip, .pyc)`` of each compiled file, sorted, and ``(name in the zip,
        error)`` of each one the target Python cannot compile.
    """
    tag = f"cpython-3{version.split('.')[1]}"
    jobs: list[list[str | bool]] = []
    out: list[tuple[str, Path]] = []
    for arcname, source, check in sorted(sources):
        folder, _, filename = arcname.rpartition("/")
        pyc = f"{folder + '/' if folder else ''}__pycache__/{filename[:-len('.py')]}.{tag}.pyc"
        jobs.append([str(source), str(dest / pyc), f"{_TASK_ROOT}/{arcname}", check])
        out.append((pyc, dest / pyc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run([interpreter, "-S", "-s", "-W", "ignore", "-c", _COMPILE],
                          input=json.dumps(jobs), capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise PackageError(f"{interpreter} failed (exit code {proc.returncode}) compiling the "
                           f"byte code; its last lines:\n"
                           + "\n".join(proc.stderr.strip().splitlines()[-_PIP_TAIL:]))
    failed = [(dfile.removeprefix(f"{_TASK_ROOT}/"), msg)
              for dfile, msg in json.loads(proc.stdout)]
    bad = {name for name, _ in failed}
    return [(pyc, path) for (pyc, path), job in zip(out, jobs, strict=True)
            if str(job[2]).removeprefix(f"{_TASK_ROOT}/") not in bad], failed


def write_zip(output: Path, files: Iterable[tuple[str, Path]]) -> None:
    """Write a deterministic zip: entries sorted by name, all dated 1980-01-01, mode 644 (755 for
    files executable by their owner), no folder entries. Written beside ``output``, then moved."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, path in sorted(files):
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.create_system = 3  # Unix, so that unzip applies the modes
                mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as src, archive.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_zip(handler: str | Path | Sequence[str | Path], *, arch: str, python: str,
              wheels: Sequence[str | Path] = (), requirements: str | Path | None = None,
              with_boto3: bool = False, output: str | Path = "build/lambda.zip",
              exclude: Sequence[str] = (), index_url: str | None = None,
              find_links: Sequence[str] = (), bytecode: bool = True,
              require_bytecode: bool = False, bytecode_python: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> PackageResult:
    """Build a Lambda deployment zip for ``arch`` and ``python``.

    Args:
        handler: The handler module (``app/handler.py``, at the zip's root as ``handler.py``),
            a package folder (``app/`` with ``__init__.py``, at the root as ``app/``) or a
            project folder (any other folder, ``.`` for instance: its contents at the root), or
            several of them (the handler's own modules, for functions that share one zip).
            Folders leave out build outputs, state files, tests, zips, virtual environments,
            ``.git`` and hidden files.
        arch: ``"arm64"`` or ``"x86_64"``.
        python: ``"3.11"``, ``"3.12"`` or ``"3.13"``.
        wheels: lambda-workflow wheel files or folders holding them. Without them, the wheel
            for the target in ``./dist``, and when there is none, the installed version's
            wheel for the target downloaded from the package index (``download_wheel``).
        requirements: A requirements file of the handler's own dependencies (binary wheels
            only, as for any zip built off Lambda).
        with_boto3: Keep boto3 and its dependencies, which the runtime otherwise provides.
        output: Where to write the zip.
        exclude: Globs of more to leave out of handler folders: one without ``/`` matches a
            file or folder name at any depth, one with ``/`` the whole name in the zip.
        index_url: pip's ``--index-url`` for every pip call (the wheel's download and the
            dependencies' install); default pip's own configuration.
        find_links: pip's ``--find-links`` sources (URLs, folders or files), likewise.
        bytecode: Compile every ``.py`` in the zip for the target Python (``find_interpreter``
            finds an interpreter of that version); False ships sources only.
        require_bytecode: Fail when no interpreter of the target version is found, instead
            of shipping sources only (with a warning in the report).
        bytecode_python: The interpreter to compile with (``--bytecode-python``).
        log: Called with a line of progress.

    Raises:
        PackageError: Unknown target, missing handler, wheel or requirements file, no wheel for
            the target, a pip failure, two handler paths with the same top-level name, a
            handler whose name clashes with a dependency, a handler file the target Python
            cannot compile, or (``require_bytecode``) no interpreter of the target version.
    """
    say = log or (lambda _line: None)
    platform, version = check_target(arch, python)
    paths = [Path(handler)] if isinstance(handler, (str, Path)) else [Path(h) for h in handler]
    _check_excludes(exclude)
    handlers = _root_entries(paths, exclude)
    handler_files = [pair for h in handlers for pair in h.files]
    left_out: dict[str, list[str]] = {}
    for h in handlers:
        for reason, names in h.left_out.items():
            left_out.setdefault(reason, []).extend(names)
    sources = index_options(index_url, find_links)
    wheel: Path | None = None
    if wheels:
        wheel = select_wheel([Path(w) for w in wheels], arch, version)
    elif Path("dist").is_dir():
        try:
            wheel = select_wheel([Path("dist")], arch, version)
        except PackageError:
            say(f"./dist has no lambda-workflow wheel for {platform} and Python {version}")
    if requirements is not None and not Path(requirements).is_file():
        raise PackageError(f"requirements file {requirements}: no such file")
    compiled = Bytecode(python=version)
    interpreter: str | None = None
    if not bytecode:
        if require_bytecode or bytecode_python is not None:
            raise PackageError("--no-bytecode contradicts --require-bytecode and "
                               "--bytecode-python")
        compiled.skipped = "--no-bytecode"
    else:
        interpreter, tried = find_interpreter(version, explicit=bytecode_python)
        if interpreter is None:
            compiled.skipped = (
                f"no Python {version} interpreter found to compile it with ("
                + "; ".join(tried) + f"). Install Python {version} (`pyenv install {version}`, "
                f"`uv python install {version}` or your system's python{version} package) or "
                f"name one with --bytecode-python")
            if require_bytecode:
                raise PackageError(f"--require-bytecode: {compiled.skipped}")

    with tempfile.TemporaryDirectory(prefix="lambda-workflow-package-") as tmp:
        origin = None
        if wheel is None:
            origin = _index_description(index_url, find_links)
            say(f"downloading lambda-workflow {installed_version()} for {platform}, Python "
                f"{version} from {origin}")
            wheel = download_wheel(Path(tmp) / "wheel", arch, version, index_url=index_url,
                                   find_links=find_links)
        target = Path(tmp) / "site"
        args = ["install", "--target", str(target), "--platform", platform,
                "--python-version", version, "--implementation", "cp",
                "--only-binary=:all:", "--no-compile", "--disable-pip-version-check",
                "--no-input", "--quiet", *sources, str(wheel.resolve())]
        if requirements is not None:
            args += ["--requirement", str(requirements)]
        say(f"installing {wheel.name} and its dependencies for {platform}, Python {version}")
        _run_pip(args, f"{wheel.name} for {platform} and Python {version}")
        excluded = [] if with_boto3 else remove_distributions(target, RUNTIME_PROVIDED)
        _tidy(target)
        installed = sorted(p for p in target.rglob("*") if p.is_file())
        top_names = {p.relative_to(target).parts[0] for p in installed}
        for h in handlers:
            for name in h.names:
                if name in top_names or f"{name}.py" in top_names:
                    what = "its entry" if h.project else "its name"
                    raise PackageError(f"handler {h.path}: {what} {name!r} is also a top-level "
                                       f"name of a dependency; rename it")
        files = handler_files + [(p.relative_to(target).as_posix(), p) for p in installed]
        if interpreter is not None:
            say(f"compiling byte code for Python {version} with {interpreter}")
            own = {arcname for arcname, _ in handler_files}
            py_files = [(a, p, a in own) for a, p in files if a.endswith(".py")]
            pycs, failed = compile_bytecode(interpreter, version, py_files, Path(tmp) / "pyc")
            mine = [f"{name}: {error}" for name, error in failed if name in own]
            if mine:
                raise PackageError(
                    f"Python {version} cannot compile the handler's "
                    + "; ".join(mine) + " (fix it, or leave the file out with --exclude)")
            compiled = Bytecode(python=version, interpreter=interpreter, files=len(pycs),
                                size=sum(p.stat().st_size for _, p in pycs), failed=failed)
            files += pycs
        out = Path(output)
        write_zip(out, files)
        top_level: dict[str, int] = {}
        for arcname, path in files:
            top = arcname.split("/")[0]
            top_level[top] = top_level.get(top, 0) + path.stat().st_size
        dists = sorted((n, v) for n, v, _ in _dist_infos(target))
    core = sorted(a for a, _ in files if re.fullmatch(rf"{_PROJECT}/_core/_c\..*\.so", a))
    return PackageResult(path=out, arch=arch, python=version, wheel=wheel, wheel_origin=origin,
                         zip_size=out.stat().st_size, unzipped_size=sum(top_level.values()),
                         top_level=top_level, distributions=dists, excluded=excluded,
                         compiled_core=core[0] if core else None, bytecode=compiled,
                         left_out={r: sorted(left_out[r]) for r in _REASONS if r in left_out})


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB" if size >= 1_048_576 else f"{size / 1024:.0f} KB"


def format_report(result: PackageResult) -> list[str]:
    """The lines ``lambda-workflow package`` prints about a zip it built."""
    origin = f", downloaded from {result.wheel_origin}" if result.wheel_origin else ""
    lines = [f"wrote {result.path} for Lambda {result.arch}, python{result.python} "
             f"(from {result.wheel.name}{origin})",
             f"  zip {_mb(result.zip_size)} ({result.zip_size:,} bytes; "
             f"{_mb(DIRECT_UPLOAD_LIMIT)} at most for a direct upload, larger goes via S3)",
             f"  unzipped {_mb(result.unzipped_size)} ({result.unzipped_size:,} bytes) of "
             f"Lambda's 250 MB limit"]
    if result.compiled_core:
        lines.append(f"  replay core: compiled ({result.compiled_core})")
    else:
        lines.append("  replay core: pure Python (the wheel has no compiled core for this "
                     "platform; lambda_workflow.IMPLEMENTATION will be 'py')")
    code = result.bytecode
    if code is not None and code.interpreter is not None:
        lines.append(f"  byte code: {code.files:,} .pyc files ({_mb(code.size)}) for "
                     f"python{code.python}, compiled by {code.interpreter} (unchecked-hash; "
                     f"the handler's own files checked-hash)")
        if code.failed:
            lines.append(f"  not compiled ({len(code.failed)}, shipped as source; Python "
                         f"{code.python} cannot import them): "
                         + ", ".join(f"{n} ({e})" for n, e in code.failed))
    elif code is not None and code.skipped == "--no-bytecode":
        lines.append("  byte code: none (--no-bytecode): every cold start compiles the modules "
                     "it imports")
    elif code is not None:
        lines.append(f"  WARNING byte code: none, {code.skipped}. Every cold start will "
                     f"compile the modules it imports (about twice the import time); "
                     f"--require-bytecode makes this an error")
    lines.append("  distributions: " + ", ".join(f"{n} {v}" for n, v in result.distributions))
    if result.excluded:
        lines.append("  left out (the Lambda runtime has them; --with-boto3 keeps them): "
                     + ", ".join(result.excluded))
    if result.left_out:
        lines.append("  left out of the handler folders:")
        lines += [f"    {reason}: {', '.join(names)}" for reason, names in result.left_out.items()]
    infos = {k: v for k, v in result.top_level.items() if k.endswith(".dist-info")}
    lines.append("  contents:")
    for top, size in sorted(result.top_level.items(), key=lambda kv: (-kv[1], kv[0])):
        if top not in infos:
            lines.append(f"    {_mb(size):>9}  {top}")
    lines.append(f"    {_mb(sum(infos.values())):>9}  {len(infos)} *.dist-info folders")
    if result.unzipped_size > UNZIPPED_LIMIT:
        lines.append("  TOO LARGE: Lambda rejects code over 250 MB unzipped")
    return lines
