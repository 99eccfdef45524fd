"""Builds the optional compiled replay core (ext/_c.pyx -> lambda_workflow._core._c).

Everything else is in pyproject.toml. Without a C compiler (or with
LAMBDA_WORKFLOW_NO_EXTENSIONS=1 at build time) the package installs pure Python, and
lambda_workflow._core falls back to its pure twin. LAMBDA_WORKFLOW_LIMITED_API=1 builds an
abi3 extension (one binary for CPython 3.11 and newer), as the Lambda wheels use.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension if possible; otherwise warn and install pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        if os.environ.get("LAMBDA_WORKFLOW_REQUIRE_EXTENSIONS") == "1":
            raise exc
        print(f"WARNING: lambda-workflow's compiled core was not built ({exc}); "
              "installing the pure-Python core", file=sys.stderr)


def extensions() -> list[Extension]:
    if os.environ.get("LAMBDA_WORKFLOW_NO_EXTENSIONS") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython is not available; installing the pure-Python core",
              file=sys.stderr)
        return []
    limited = os.environ.get("LAMBDA_WORKFLOW_LIMITED_API") == "1"
    ext = Extension(
        "lambda_workflow._core._c",
        ["ext/_c.pyx"],
        define_macros=[("Py_LIMITED_API", "0x030B0000")] if limited else [],
        py_limited_api=limited,
    )
    return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)


limited_api = os.environ.get("LAMBDA_WORKFLOW_LIMITED_API") == "1"
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if limited_api else {},
)
