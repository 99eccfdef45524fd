"""Which twin ``lambda_workflow._core`` loads, under each environment variable, in a fresh
interpreter each time (the choice is made once, at import)."""

from __future__ import annotations

import os
import subprocess
import sys

REPORT = """
import lambda_workflow, lambda_workflow._core as core
from lambda_workflow._core import _py
print(core.IMPLEMENTATION, lambda_workflow.IMPLEMENTATION,
      core.ReplayIndex is _py.ReplayIndex, core.CallFuture is _py.CallFuture)
if core.IMPLEMENTATION == "c":
    from lambda_workflow._core import _c
    print(core.ReplayIndex is _c.ReplayIndex, core.encode_value is _c.encode_value)
"""

BLOCK_EXTENSION = """
import sys

class BlockExtension:
    def find_spec(self, name, path=None, target=None):
        if name == "lambda_workflow._core._c":
            raise ImportError("blocked by the test: no compiled core here")
        return None

sys.meta_path.insert(0, BlockExtension())
"""


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with only the given selection variables set."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LAMBDA_WORKFLOW_NO_EXTENSIONS",
                            "LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, timeout=60, check=False)


def lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The printed lines of a run that must have succeeded."""
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_default_loads_the_compiled_core() -> None:
    """With no variable set, this build loads the compiled core."""
    assert lines(run(REPORT)) == ["c c False False", "True True"]


def test_require_extensions_loads_the_compiled_core() -> None:
    """LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1 loads the compiled ReplayIndex and says "c"."""
    out = lines(run(REPORT, LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS="1"))
    assert out == ["c c False False", "True True"]


def test_no_extensions_forces_the_pure_twin() -> None:
    """LAMBDA_WORKFLOW_NO_EXTENSIONS=1 loads the pure twin and says "py"."""
    assert lines(run(REPORT, LAMBDA_WORKFLOW_NO_EXTENSIONS="1")) == ["py py True True"]


def test_no_extensions_does_not_import_the_extension() -> None:
    """Forcing the pure twin does not even import the compiled module."""
    code = "import sys, lambda_workflow._core; print('lambda_workflow._core._c' in sys.modules)"
    assert lines(run(code, LAMBDA_WORKFLOW_NO_EXTENSIONS="1")) == ["False"]


def test_zero_means_unset() -> None:
    """A variable set to "0" or "" counts as unset."""
    out = lines(run(REPORT, LAMBDA_WORKFLOW_NO_EXTENSIONS="0",
                    LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=""))
    assert out[0] == "c c False False"


def test_both_variables_is_an_import_error() -> None:
    """Setting both variables fails the import with a message naming both."""
    proc = run("import lambda_workflow._core", LAMBDA_WORKFLOW_NO_EXTENSIONS="1",
               LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS="1")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "LAMBDA_WORKFLOW_NO_EXTENSIONS and LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS" in proc.stderr
    assert "set only one" in proc.stderr


def test_a_missing_extension_falls_back_to_the_pure_twin() -> None:
    """When the extension cannot be imported, the pure twin is loaded without an error."""
    assert lines(run(BLOCK_EXTENSION + REPORT)) == ["py py True True"]


def test_a_missing_extension_with_require_is_an_import_error() -> None:
    """With REQUIRE set, an extension that cannot be imported is an ImportError naming it and
    the cause."""
    proc = run(BLOCK_EXTENSION + REPORT, LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS="1")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS=1")
    assert "lambda_workflow._core._c" in last
    assert "blocked by the test" in last
