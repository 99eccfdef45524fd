"""``import lambda_workflow.aws`` without boto3 (or botocore) says to install the aws extra;
``import lambda_workflow`` needs neither. Each case runs in a fresh interpreter whose import
system refuses the module, as if it were not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_BLOCKER = """\
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def _run(blocked: str, body: str) -> subprocess.CompletedProcess[str]:
    code = _BLOCKER.format(blocked=blocked) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("blocked", ["boto3", "botocore"])
def test_importing_the_aws_module_without_boto3_says_what_to_install(blocked: str) -> None:
    """The error is a ModuleNotFoundError (an ImportError) naming the missing module and the
    command that installs it."""
    run = _run(blocked, """\
        try:
            import lambda_workflow.aws
        except ModuleNotFoundError as exc:
            print(exc.name)
            print(exc)
        else:
            print("imported")
    """)
    assert run.returncode == 0, run.stderr
    name, message = run.stdout.splitlines()
    assert name == blocked
    assert message == (
        f"lambda_workflow.aws needs boto3, which is not installed (no module named "
        f"'{blocked}'): install the aws extra with pip install 'lambda-workflow[aws]' "
        "(Lambda's Python runtimes include boto3 already)")


def test_the_core_package_imports_without_boto3() -> None:
    """Only lambda_workflow.aws needs boto3: the embedded runtime and testing do not."""
    run = _run("boto3", """\
        import lambda_workflow, lambda_workflow.local, lambda_workflow.testing
        print("boto3" in sys.modules)
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_a_broken_boto3_install_keeps_its_own_error() -> None:
    """boto3 present but one of its own dependencies missing (jmespath): the original error
    stands, since installing the extra is not the fix."""
    run = _run("jmespath", """\
        try:
            import lambda_workflow.aws
        except ModuleNotFoundError as exc:
            print(exc.name)
            print(exc)
    """)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["jmespath", "No module named 'jmespath'"]
