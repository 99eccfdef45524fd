"""The API reference (mkdocs.yml, docs/api/): built from the docstrings by mkdocstrings in
strict mode, so a broken reference, a docstring the handler cannot parse or a broken link in
docs/ fails here; and complete: every name a public module exports has its entry."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "scripts" / "mkdocs_roles.py"


def _roles() -> Any:
    """scripts/mkdocs_roles.py, the griffe extension mkdocs.yml loads by path."""
    spec = importlib.util.spec_from_file_location("mkdocs_roles", ROLES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Each public module and its page.
PAGES = {
    "lambda_workflow": "api/lambda_workflow",
    "lambda_workflow.aws": "api/aws",
    "lambda_workflow.testing": "api/testing",
    "lambda_workflow.local": "api/local",
    "lambda_workflow.errors": "api/errors",
}
# `lambda_workflow.workflow` is the decorator and the module defining it: the page documents
# the decorator under the module's path.
ANCHOR = {("lambda_workflow", "workflow"): "lambda_workflow.workflow.workflow"}


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(config), "-d", str(site)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mkdocs build --strict` of the repository's mkdocs.yml, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    built = mkdocs_build(ROOT / "mkdocs.yml", out)
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    return out


@pytest.mark.parametrize("module", sorted(PAGES))
def test_every_exported_name_has_an_entry_on_its_page(site: Path, module: str) -> None:
    """Each name in the module's ``__all__`` is an anchor of its page, and the page documents
    nothing the module does not export."""
    html = (site / PAGES[module] / "index.html").read_text()
    anchors = set(re.findall(r'id="([A-Za-z_][\w.]*)"', html))
    exported = importlib.import_module(module).__all__
    missing = [name for name in exported
               if ANCHOR.get((module, name), f"{module}.{name}") not in anchors]
    assert missing == []
    documented = {a.removeprefix(f"{module}.") for a in anchors
                  if a.startswith(f"{module}.") and a.count(".") == module.count(".") + 1}
    assert documented - set(exported) - {"workflow"} == set()


def test_the_reference_carries_the_docstrings(site: Path) -> None:
    """The pages hold the docstrings' text, their sections and signatures."""
    html = (site / "api" / "lambda_workflow" / "index.html").read_text()
    assert "Replay behaviour" in html
    assert "Declare an <code>async def</code> as a durable workflow" in html
    testing = (site / "api" / "testing" / "index.html").read_text()
    assert "Replay <code>history</code> from the top against" in testing


def test_sphinx_roles_become_links_or_code(site: Path) -> None:
    """The docstrings' Sphinx roles (scripts/mkdocs_roles.py) are links to the documented
    object, or inline code when the reference does not document it; no role markup is left.
    (A link to an object the reference lacks would fail the strict build.)"""
    pages = {p: (site / PAGES[p] / "index.html").read_text() for p in PAGES}
    for module, html in pages.items():
        for role in (":class:`", ":meth:`", ":func:`", ":attr:`", ":exc:`", ":mod:`"):
            assert role not in html, (module, role)
    assert ('<a class="autorefs autorefs-internal" title="NonDeterminismError" '
            'href="#lambda_workflow.NonDeterminismError"><code>NonDeterminismError</code></a>'
            in pages["lambda_workflow"])


@pytest.mark.parametrize(("text", "converted"), [
    (":class:`~lambda_workflow.ServiceError`", "[`ServiceError`][lambda_workflow.ServiceError]"),
    (":class:`ServiceError`", "[`ServiceError`][lambda_workflow.ServiceError]"),
    (":attr:`Workflow.services`", "[`Workflow.services`][lambda_workflow.Workflow.services]"),
    (":func:`workflow`", "[`workflow`][lambda_workflow.workflow.workflow]"),
    (":meth:`advance_time`", "`advance_time`"),  # not resolvable from a short name
    (":class:`~lambda_workflow.backends.StateStore`", "`StateStore`"),  # not in the reference
    (":mod:`.items`", "`items`"),
    (":func:`check_replay`", "[`check_replay`][lambda_workflow.testing.check_replay]"),
])
def test_roles_are_converted(text: str, converted: str) -> None:
    """Roles are resolved against the package's exports and the docstring's own module."""
    assert _roles().convert(f"see {text}.", "lambda_workflow.testing") == f"see {converted}."


def _config_with(tmp_path: Path, page: str, module_source: str | None = None) -> Path:
    """A copy of mkdocs.yml whose site is one API page (and, optionally, a module of its own
    beside lambda_workflow on the handler's path)."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    paths = [str(ROOT / "src")]
    if module_source is not None:
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "broken_docs.py").write_text(module_source)
        paths.insert(0, str(tmp_path / "pkg"))
    config["docs_dir"] = str(docs)
    config["nav"] = ["index.md"]
    handler = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    handler["paths"] = paths
    # Relative to the configuration file, which is not in the repository here.
    handler["options"]["extensions"] = [f"{ROLES}:SphinxRoles"]
    path = tmp_path / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_reference_to_a_missing_name_fails_the_build(tmp_path: Path) -> None:
    """The strict build fails, naming the identifier, when a page refers to a name the
    package does not have (a renamed or removed API)."""
    config = _config_with(tmp_path, "# API\n\n::: lambda_workflow.NoSuchThing\n")
    built = mkdocs_build(config, tmp_path / "site")
    assert built.returncode != 0
    assert "lambda_workflow.NoSuchThing" in built.stderr


def test_a_docstring_the_handler_cannot_parse_fails_the_build(tmp_path: Path) -> None:
    """A ``Raises:`` entry without its ``exception: description`` form is a warning, and
    strict mode makes it an error naming the file and line."""
    source = ('"""A module."""\n\n\ndef f() -> None:\n    """Do it.\n\n    Raises:\n'
              '        ValueError, TypeError.\n    """\n')
    config = _config_with(tmp_path, "# API\n\n::: broken_docs\n", source)
    built = mkdocs_build(config, tmp_path / "site")
    assert built.returncode != 0
    assert "broken_docs.py:8" in built.stderr and "Failed to get" in built.stderr
