"""The ``core`` fixture: every core test runs on the compiled twin and on the pure one."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


@pytest.fixture(params=["c", "py"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    """``lambda_workflow._core._c`` or ``lambda_workflow._core._py``, imported directly.

    A missing extension fails the "c" tests instead of skipping them: the build ships it.
    """
    name = f"lambda_workflow._core._{request.param}"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(f"{name} cannot be imported ({exc}); build it with "
                    "`pip install -e .` and a C compiler", pytrace=False)
