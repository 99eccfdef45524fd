"""``lambda-workflow ui``: bad flags exit 2 naming them, a missing state file exits 1, and
the command serves the console on 127.0.0.1 (port 0: a free one, printed)."""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.request

import pytest

from lambda_workflow.cli import main

from .conftest import Run


def test_bad_port_exits_2(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--db", run.db, "--port", "70000"], out=io.StringIO()) == 2
    assert "--port 70000 is not a port" in capsys.readouterr().err


def test_run_with_a_table_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ui", "--table", "t", "--run", "app.py"], out=io.StringIO()) == 2
    assert "--run works with --db only" in capsys.readouterr().err


def test_missing_state_file_exits_1(tmp_path: object, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    assert main(["ui", "--db", "/nonexistent/state.sqlite3"], out=io.StringIO()) == 1
    assert "no such state file: /nonexistent/state.sqlite3" in capsys.readouterr().err


def test_ui_serves_on_localhost(run: Run) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lambda_workflow", "ui", "--db", run.db, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"lambda-workflow console of state file {run.db} on "
                               "http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        url = line.split(" on ", 1)[1].split(";")[0]
        with urllib.request.urlopen(url, timeout=10) as page:
            html = page.read().decode()
        assert 'data-id="p-wait"' in html
        assert "act-cancel" not in html and "actions allowed" not in html
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
