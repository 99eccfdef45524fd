"""The curated public surface of lambda_workflow."""

from __future__ import annotations

import subprocess
import sys
import types

import lambda_workflow


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted (isort style: constants, classes, then the rest) and complete."""
    names = lambda_workflow.__all__

    def isort_key(name: str) -> tuple[int, str]:
        kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
        return kind, name

    assert list(names) == sorted(names, key=isort_key)
    public = {n for n in dir(lambda_workflow) if not n.startswith("_")
              and not isinstance(getattr(lambda_workflow, n), types.ModuleType)}
    assert public == set(names) - {"__version__"}


def test_import_has_no_heavy_or_side_effect_modules() -> None:
    """`import lambda_workflow` loads neither boto3 nor sqlite3 nor asyncio's I/O loops, nor
    logging or secrets (a few milliseconds each of a cold start, loaded where used)."""
    code = ("import sys, lambda_workflow; "
            "print(sorted(m for m in ('boto3', 'botocore', 'sqlite3', '_sqlite3', 'logging', "
            "'secrets', 'random') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_import_is_lazy_about_the_core_and_asyncio() -> None:
    """`import lambda_workflow` loads neither the replay core nor asyncio until they are used,
    and IMPLEMENTATION still answers on first access."""
    code = ("import sys, lambda_workflow; "
            "before = [m for m in ('asyncio', 'lambda_workflow._core', 'lambda_workflow.models')"
            " if m in sys.modules]; "
            "impl = lambda_workflow.IMPLEMENTATION; "
            "print(before, impl, 'lambda_workflow._core' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "[]"
    assert out[1] in {"c", "py"}
    assert out[2] == "True"


def test_implementation_is_reported() -> None:
    """lambda_workflow.IMPLEMENTATION names the loaded replay core."""
    assert lambda_workflow.IMPLEMENTATION in {"c", "py"}
