"""A griffe extension for the API reference (mkdocs.yml): the docstrings' Sphinx roles
(``:class:`~lambda_workflow.ServiceError```, ``:meth:`advance_time```, ...) become links to
the documented object when the reference documents it, and inline code otherwise, instead of
showing the role's markup.

A target is documented when it is a name a public module exports (its ``__all__``), or an own
public member of such a class (inherited members are not rendered). Short names are looked up
in the package's exports and in the exports of the module the docstring belongs to.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from typing import Any

import griffe

# The modules with a reference page (docs/api/), as mkdocs.yml lists them.
PUBLIC = ("lambda_workflow", "lambda_workflow.aws", "lambda_workflow.testing",
          "lambda_workflow.local", "lambda_workflow.errors")
# Names whose anchor is not their import path: the decorator shares its module's name.
ANCHORS = {"lambda_workflow.workflow": "lambda_workflow.workflow.workflow"}
_ROLE = re.compile(r":(?:class|func|meth|attr|exc|data|mod|obj|all):`(~?)([^`]+)`")


@cache
def _exports(module: str) -> frozenset[str]:
    return frozenset(getattr(importlib.import_module(module), "__all__", ()))


def _documented(path: str) -> str | None:
    """The anchor of ``path`` if the reference documents it, else None."""
    if path in ANCHORS:
        return ANCHORS[path]
    for module in sorted(PUBLIC, key=len, reverse=True):
        if not path.startswith(module + "."):
            continue
        first, *rest = path[len(module) + 1:].split(".")
        if first not in _exports(module):
            return None
        value: Any = getattr(importlib.import_module(module), first)
        for name in rest:
            if name.startswith("_") or not isinstance(value, type) or name not in vars(value):
                return None
            value = vars(value)[name]
        return path
    return None


def _replace(match: re.Match[str], module: str) -> str:
    short, target = match.group(1) == "~", match.group(2).lstrip(".")
    shown = target.rsplit(".", 1)[-1] if short else target
    candidates = [target] if target.startswith("lambda_workflow.") else [
        f"lambda_workflow.{target}", f"{module}.{target}"]
    for candidate in candidates:
        anchor = _documented(candidate)
        if anchor is not None:
            return f"[`{shown}`][{anchor}]"
    return f"`{shown}`"


def convert(text: str, module: str) -> str:
    """``text`` with its Sphinx roles replaced (links or inline code)."""
    return _ROLE.sub(lambda m: _replace(m, module), text)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring's roles when griffe loads the object."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any,
                    **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, obj.module.path)
