"""Checks on the built wheels, for scripts/build_wheels.sh (run with the tools venv's Python).

    wheel_checks.py tags WHEEL TAG...        the WHEEL file's Tag lines are exactly TAG...
    wheel_checks.py pure WHEEL               py3-none-any, purelib, no compiled file inside
    wheel_checks.py elf WHEEL ARCH           every .so: ELF machine ARCH (x86_64 | aarch64),
                                             named as the wheel's tag says (*.abi3.so for abi3,
                                             *.cpython-3XY-<arch>-linux-gnu.so for cp3XY-cp3XY),
                                             no GLIBC_ version newer than 2.17
    wheel_checks.py auditwheel WHEEL PLAT    `auditwheel show` rates the wheel exactly PLAT
    wheel_checks.py download DIST ARCH/X.Y=TAG...
                                             `pip download --platform manylinux2014_<ARCH>
                                             --python-version X.Y --only-binary=:all:` picks the
                                             wheel of ARCH tagged TAG (cp313-cp313, cp311-abi3)
                                             from DIST, for each ARCH/X.Y given
    wheel_checks.py summary DIST             the names and sizes of what DIST holds

Each command prints one line saying what it found and exits 1 if the check fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

MAX_GLIBC = (2, 17)
ELF_MACHINE = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}
PYTHONS = ("3.11", "3.12", "3.13")


class CheckFailed(Exception):
    pass


def wheel_metadata(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
        msg = Parser().parsestr(zf.read(name).decode())
    return {key: msg.get_all(key) or [] for key in ("Tag", "Root-Is-Purelib")}


def cmd_tags(wheel: Path, *expected: str) -> str:
    tags = sorted(wheel_metadata(wheel)["Tag"])
    if tags != sorted(expected):
        raise CheckFailed(f"{wheel.name}: tags {tags}, expected {sorted(expected)}")
    return f"{wheel.name}: tags {', '.join(tags)}"


def cmd_pure(wheel: Path) -> str:
    meta = wheel_metadata(wheel)
    if meta["Tag"] != ["py3-none-any"] or meta["Root-Is-Purelib"] != ["true"]:
        raise CheckFailed(f"{wheel.name}: tags {meta['Tag']}, purelib {meta['Root-Is-Purelib']}")
    with zipfile.ZipFile(wheel) as zf:
        compiled = [n for n in zf.namelist() if n.endswith((".so", ".pyd", ".c", ".dylib"))]
    if compiled:
        raise CheckFailed(f"{wheel.name}: compiled files in a pure wheel: {compiled}")
    return f"{wheel.name}: py3-none-any, purelib, no compiled file"


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def extension_suffix(wheel: Path, arch: str) -> str:
    """The file name ending CPython gives the wheel's extension: ``.abi3.so`` for an abi3 wheel,
    ``.cpython-3XY-<arch>-linux-gnu.so`` for a cp3XY-cp3XY one (an extension named for another
    architecture or version would not be imported at all)."""
    python, abi = wheel.name.split("-")[-3:-1]
    if abi == "abi3":
        return ".abi3.so"
    match = re.fullmatch(r"cp3(\d+)", abi)
    if not match or python != abi:
        raise CheckFailed(f"{wheel.name}: neither an abi3 nor a cp3XY-cp3XY wheel")
    return f".cpython-3{match.group(1)}-{arch}-linux-gnu.so"


def cmd_elf(wheel: Path, arch: str) -> str:
    found = []
    suffix = extension_suffix(wheel, arch)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        sos = [n for n in zf.namelist() if n.endswith(".so")]
        if not sos:
            raise CheckFailed(f"{wheel.name}: no extension module inside")
        for name in sos:
            if not name.endswith(suffix):
                raise CheckFailed(f"{wheel.name}: {name} is not named *{suffix}, as its tag "
                                  f"requires")
            path = Path(zf.extract(name, tmp))
            machine = re.search(r"Machine:\s*(.+)", readelf("-h", str(path)))
            if not machine or machine.group(1).strip() != ELF_MACHINE[arch]:
                got = machine.group(1).strip() if machine else "?"
                raise CheckFailed(f"{wheel.name}: {name} is for {got}, not {arch}")
            versions = set(re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b",
                                      readelf("-V", "--dyn-syms", str(path))))
            newest = max((tuple(map(int, v.split("."))) for v in versions), default=(0,))
            if newest > MAX_GLIBC:
                raise CheckFailed(f"{wheel.name}: {name} needs GLIBC_"
                                  f"{'.'.join(map(str, newest))} (> 2.17)")
            other = set(re.findall(r"\b(GLIBCXX_[\d.]+|CXXABI_[\d.]+)", readelf("-V", str(path))))
            if other:
                raise CheckFailed(f"{wheel.name}: {name} needs the C++ runtime: {sorted(other)}")
            size = path.stat().st_size
            found.append(f"{name} ({arch}, newest GLIBC_{'.'.join(map(str, newest))}, "
                         f"{size / 1024:.0f} KiB)")
    return f"{wheel.name}: " + "; ".join(found)


def cmd_auditwheel(wheel: Path, plat: str) -> str:
    auditwheel = Path(sys.executable).with_name("auditwheel")
    proc = subprocess.run([str(auditwheel), "show", str(wheel)], capture_output=True, text=True,
                          check=False)
    text = " ".join(proc.stdout.split())
    match = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    if proc.returncode != 0 or not match:
        raise CheckFailed(f"{wheel.name}: auditwheel show failed: {proc.stdout}{proc.stderr}")
    if match.group(1) != plat:
        raise CheckFailed(f"{wheel.name}: auditwheel rates it {match.group(1)}, not {plat}")
    return f"{wheel.name}: auditwheel show: {plat}"


def cmd_download(dist: Path, *expected: str) -> str:
    if not expected:
        raise CheckFailed("download: no ARCH/X.Y=TAG expectation given")
    picked = []
    for item in expected:
        target, _, tag = item.partition("=")
        arch, _, version = target.partition("/")
        if arch not in ELF_MACHINE or version not in PYTHONS or not tag:
            raise CheckFailed(f"download: bad expectation {item!r} (ARCH/X.Y=TAG)")
        with tempfile.TemporaryDirectory() as tmp:
            # --no-index: only dist/ is considered, never a package of that name elsewhere
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-index",
                 "--find-links", str(dist), "--platform", f"manylinux2014_{arch}",
                 "--python-version", version, "--only-binary=:all:", "--no-deps",
                 "--dest", tmp, "lambda-workflow"],
                capture_output=True, text=True, check=False)
            got = sorted(p.name for p in Path(tmp).iterdir())
        ok = (proc.returncode == 0 and len(got) == 1 and f"-{tag}-" in got[0]
              and f"manylinux_2_17_{arch}" in got[0])
        if not ok:
            raise CheckFailed(f"pip download for {arch} Python {version} picked {got}, not the "
                              f"{tag} wheel: {proc.stderr.strip()}")
        picked.append(f"{arch}/{version}: {tag}")
    return "pip download picks " + ", ".join(picked)


def cmd_summary(dist: Path) -> str:
    rows = [f"  {p.stat().st_size / 1024:8.1f} KiB  {p.name}"
            for p in sorted(dist.iterdir()) if p.name.startswith("lambda_workflow-")]
    return "\n".join(rows)


COMMANDS: dict[str, Callable[..., str]] = {
    "tags": cmd_tags, "pure": cmd_pure, "elf": cmd_elf, "auditwheel": cmd_auditwheel,
    "download": cmd_download, "summary": cmd_summary}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command, target, *rest = argv
    try:
        print(COMMANDS[command](Path(target), *rest))
    except CheckFailed as exc:
        print(f"FAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
