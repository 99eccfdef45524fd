"""Typing tests: mypy --strict checks the public API's types against inline expectations.

Each file in ``cases/`` uses the public API the way a user would and marks lines:

- ``# R: <type>``: the line's ``reveal_type`` must reveal exactly ``<type>`` (as mypy prints
  it, with the case file's own module prefix removed, so ``Balance`` rather than
  ``call_types.Balance``; library types stay fully qualified).
- ``# E: <code>`` or ``# E: <code> <text>``: mypy must report exactly one error with that code on
  the line (and, when given, ``<text>`` must occur in its message).

Anything else mypy reports about a case file fails the test: an unexpected error, a reveal
on an unmarked line, a note not attached to an expected error, or output that cannot be
parsed. The cases are excluded from the normal ``mypy src tests`` run (they contain errors
on purpose); they are passed here explicitly, which mypy checks despite the exclude (the test
verifies that the file was really checked).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pyproject.toml"
CASES_DIR = Path(__file__).resolve().parent / "cases"
CASES = sorted(CASES_DIR.glob("*.py"))

_REVEAL_MARK = re.compile(r"#\s*R:\s*(?P<type>.+?)\s*$")
_ERROR_MARK = re.compile(r"#\s*E:\s*(?P<code>[a-z][a-z0-9-]*)(?:\s+(?P<text>.+?))?\s*$")
_MESSAGE = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+): (?P<severity>error|note): (?P<message>.*?)"
    r"(?:  \[(?P<code>[a-z][a-z0-9-]*)\])?$"
)
_REVEALED = re.compile(r'^Revealed type is "(?P<type>.*)"$')
_SUMMARY = re.compile(
    r"^(?:Success: no issues found in (?P<ok>\d+) source files?"
    r"|Found \d+ errors? in \d+ files? \(checked (?P<checked>\d+) source files?\))$"
)


@dataclass
class Expectations:
    """What a case file's comments ask of mypy, by line number."""

    reveals: dict[int, str] = field(default_factory=dict)
    errors: dict[int, tuple[str, str | None]] = field(default_factory=dict)


@dataclass
class MypyRun:
    """The output of one mypy run."""

    stdout: str
    stderr: str
    status: int


def parse_expectations(source: str) -> Expectations:
    """Collect the ``# R:`` and ``# E:`` marks of a case file."""
    found = Expectations()
    for lineno, text in enumerate(source.splitlines(), start=1):
        if (reveal := _REVEAL_MARK.search(text)) is not None:
            found.reveals[lineno] = reveal["type"]
        elif (error := _ERROR_MARK.search(text)) is not None:
            found.errors[lineno] = (error["code"], error["text"])
    return found


def run_mypy(case: Path, cache_dir: Path) -> MypyRun:
    """Run mypy --strict with the project's configuration (pydantic plugin) on one file."""
    stdout, stderr, status = mypy_api.run([
        "--config-file", str(CONFIG),
        "--strict",
        "--cache-dir", str(cache_dir),
        "--show-error-codes",
        "--no-color-output",
        "--no-pretty",
        str(case),
    ])
    return MypyRun(stdout, stderr, status)


def _module_prefix(case: Path) -> re.Pattern[str]:
    return re.compile(r"(?<![\w.])" + re.escape(case.stem) + r"\.")


def check(case: Path, expected: Expectations, run: MypyRun) -> list[str]:
    """Compare mypy's output with a case's expectations; return every mismatch, worded for
    a person (an empty list means the case passed)."""
    problems: list[str] = []
    if run.stderr.strip():
        problems.append(f"mypy wrote to stderr: {run.stderr.strip()}")
    prefix = _module_prefix(case)
    seen_reveals: dict[int, str] = {}
    matched_errors: set[int] = set()
    error_count = 0
    checked: int | None = None
    for raw in run.stdout.splitlines():
        if (summary := _SUMMARY.match(raw)) is not None:
            checked = int(summary["ok"] or summary["checked"])
            continue
        msg = _MESSAGE.match(raw)
        if msg is None:
            problems.append(f"unparsable mypy output: {raw!r}")
            continue
        line, message = int(msg["line"]), msg["message"]
        where = f"{case.name}:{line}"
        if Path(msg["path"]).resolve() != case.resolve():
            problems.append(f"mypy reported on another file: {raw}")
            if msg["severity"] == "error":
                error_count += 1
            continue
        if msg["severity"] == "error":
            error_count += 1
            want = expected.errors.get(line)
            if want is None:
                problems.append(f"{where}: unexpected error: {message}  [{msg['code']}]")
            elif line in matched_errors:
                problems.append(f"{where}: a second error on a line that expects one: "
                                f"{message}  [{msg['code']}]")
            elif msg["code"] != want[0] or (want[1] is not None and want[1] not in message):
                expect_text = f" containing {want[1]!r}" if want[1] is not None else ""
                problems.append(f"{where}: expected error [{want[0]}]{expect_text}, got: "
                                f"{message}  [{msg['code']}]")
                matched_errors.add(line)
            else:
                matched_errors.add(line)
            continue
        revealed = _REVEALED.match(message)
        if revealed is None:
            if line not in expected.errors:
                problems.append(f"{where}: unexpected note: {message}")
            continue
        got = prefix.sub("", revealed["type"])
        if line in seen_reveals:
            problems.append(f"{where}: more than one reveal on the line")
        seen_reveals[line] = got
        want_type = expected.reveals.get(line)
        if want_type is None:
            problems.append(f"{where}: reveal on a line without an R mark: {got}")
        elif got != want_type:
            problems.append(f"{where}: expected reveal {want_type!r}, mypy revealed {got!r}")
    for line, want_type in sorted(expected.reveals.items()):
        if line not in seen_reveals:
            problems.append(f"{case.name}:{line}: expected reveal {want_type!r}, mypy revealed "
                            "nothing")
    for line, (code, _) in sorted(expected.errors.items()):
        if line not in matched_errors:
            problems.append(f"{case.name}:{line}: expected error [{code}], mypy reported none")
    if checked != 1:
        problems.append(f"mypy did not check exactly the case file (summary: checked "
                        f"{checked}); was it excluded?")
    if run.status != (1 if error_count else 0):
        problems.append(f"mypy exited with status {run.status} after {error_count} errors")
    return problems


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the session, so each case re-checks only its own file."""
    return tmp_path_factory.mktemp("mypy-cache")


def test_cases_exist_and_expect_something() -> None:
    """Every case file carries at least one expectation, so none passes by being empty."""
    assert CASES, f"no typing cases in {CASES_DIR}"
    empty = []
    for case in CASES:
        marks = parse_expectations(case.read_text())
        if not marks.reveals and not marks.errors:
            empty.append(case.name)
    assert empty == []


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_public_api_types_match_expectations(case: Path, mypy_cache: Path) -> None:
    """mypy --strict reveals exactly the marked types and reports exactly the marked errors."""
    expected = parse_expectations(case.read_text())
    problems = check(case, expected, run_mypy(case, mypy_cache))
    assert problems == [], "\n".join(problems)


_HEADER = """\
from typing import reveal_type

from pydantic import BaseModel

from lambda_workflow import Service


class Balance(BaseModel):
    balance: int


balance_service = Service("balance", str, Balance)
"""

_BROKEN_CASES = {
    "wrong_reveal": (
        "reveal_type(balance_service)  # R: lambda_workflow.service.Service[str, int]\n",
        "expected reveal 'lambda_workflow.service.Service[str, int]', mypy revealed "
        "'lambda_workflow.service.Service[str, Balance]'",
    ),
    "wrong_error_code": (
        "x: int = balance_service.name  # E: arg-type\n",
        "expected error [arg-type], got: Incompatible types in assignment",
    ),
    "wrong_error_text": (
        "x: int = balance_service.name  # E: assignment no such words\n",
        "expected error [assignment] containing 'no such words'",
    ),
    "unexpected_error": (
        "x: int = balance_service.name\n",
        "unexpected error: Incompatible types in assignment",
    ),
    "missing_error": (
        "x: str = balance_service.name  # E: assignment\n",
        "expected error [assignment], mypy reported none",
    ),
    "missing_reveal": (
        "x = balance_service  # R: lambda_workflow.service.Service[str, Balance]\n",
        "mypy revealed nothing",
    ),
    "unmarked_reveal": (
        "reveal_type(balance_service.name)\n",
        "reveal on a line without an R mark: str",
    ),
}


@pytest.mark.parametrize("name", sorted(_BROKEN_CASES))
def test_checker_reports_a_wrong_expectation(
    name: str, tmp_path: Path, mypy_cache: Path
) -> None:
    """A case whose marks disagree with mypy is reported, naming the line and the mismatch."""
    body, wanted = _BROKEN_CASES[name]
    case = tmp_path / f"broken_{name}.py"
    case.write_text(_HEADER + textwrap.dedent(body))
    last_line = len(case.read_text().splitlines())
    problems = check(case, parse_expectations(case.read_text()), run_mypy(case, mypy_cache))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{case.name}:{last_line}: ")
    assert wanted in problems[0]


def test_checker_accepts_a_correct_case(tmp_path: Path, mypy_cache: Path) -> None:
    """The same kind of file with correct marks gives no problems (the checker is not
    failing everything)."""
    case = tmp_path / "correct.py"
    case.write_text(_HEADER + textwrap.dedent("""\
        reveal_type(balance_service)  # R: lambda_workflow.service.Service[str, Balance]
        x: int = balance_service.name  # E: assignment Incompatible types in assignment
    """))
    problems = check(case, parse_expectations(case.read_text()), run_mypy(case, mypy_cache))
    assert problems == [], "\n".join(problems)


def test_explicit_case_file_is_checked_despite_the_exclude(mypy_cache: Path) -> None:
    """pyproject's mypy exclude of tests/typing/cases/ does not stop mypy from checking a case
    file passed on the command line."""
    case = CASES_DIR / "call_types.py"
    run = run_mypy(case, mypy_cache)
    assert "Revealed type is" in run.stdout
    assert re.search(r"\(checked 1 source file\)|in 1 source file", run.stdout), run.stdout
