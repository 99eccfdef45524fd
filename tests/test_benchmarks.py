"""The replay benchmark's quick mode runs, so the script cannot rot (no timing is checked)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ROOT / "benchmarks" / "replay.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPLAY), *args], capture_output=True, text=True,
                          check=False, timeout=300)


def test_replay_quick_measures_every_row_on_both_twins(tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    proc = run("--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "checked floor" in proc.stdout and "pure / compiled, activation" in proc.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["sizes"] == [10, 100] and data["rounds"] == 2 and data["clock"] == "cpu"
    rows = data["rows"]
    expected = {"floor", "checked_floor", *(f"{row}_{impl}" for impl in ("c", "py")
                                             for row in ("core", "core_gather10", "activation"))}
    assert set(rows) == expected
    for name, per_n in rows.items():
        assert set(per_n) == {"10", "100"}, name
        for n, s in per_n.items():
            # The floors pool both children's rounds; the others have one sample per round.
            assert len(s["samples"]) == (4 if "floor" in name else 2), (name, n)
            assert 0 < s["min"] <= s["median"] <= s["max"], (name, n, s)
    # A ratio is taken round by round: within a child (compiled / its checked floor), or
    # between the two children of a round (pure / compiled).
    samples, ratios = data["samples"], data["ratios"]
    c, py = samples["c"], samples["py"]
    assert len(c["checked_floor"]["10"]) == 2
    assert ratios["10"]["c_over_checked_floor"]["samples"] == [
        x / y for x, y in zip(c["core"]["10"], c["checked_floor"]["10"], strict=True)]
    assert ratios["100"]["py_over_c_activation"]["samples"] == [
        x / y for x, y in zip(py["activation"]["100"], c["activation"]["100"], strict=True)]
    assert rows["checked_floor"]["10"]["samples"] == (
        c["checked_floor"]["10"] + py["checked_floor"]["10"])
    assert ratios["flat"]["from"] == 10 and ratios["flat"]["to"] == 100
    assert ratios["flat"]["core_c"]["samples"] == [
        x / y for x, y in zip(c["core"]["100"], c["core"]["10"], strict=True)]
    # The docs' tables come from this file.
    md = run("--markdown", str(out))
    assert md.returncode == 0, md.stderr
    checked = rows["checked_floor"]["100"]
    assert ("| checked floor | " in md.stdout
            and f"{checked['median'] * 1e6:.2f} ({checked['min'] * 1e6:.2f}-" in md.stdout)


def test_replay_markdown_names_a_file_that_is_not_its_results(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"rows": {}}')
    proc = run("--markdown", str(other))
    assert proc.returncode == 2
    assert f"--markdown: {other} is not a results file" in proc.stderr


def test_replay_measures_another_build_in_the_same_rounds(tmp_path: Path) -> None:
    # Any interpreter with a compiled core installed; here the same one, under another name.
    out = tmp_path / "replay.json"
    proc = run("--quick", "--sizes", "10", "--rounds", "1", "--clock", "wall",
               "--build", f"same={sys.executable}",
               "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert data["builds"] == {"same": sys.executable} and data["clock"] == "wall"
    assert data["measured"]["same"]["python"] == sys.executable
    assert data["measured"]["same"]["core_file"] == data["measured"]["c"]["core_file"]
    assert {"core_same", "core_gather10_same", "activation_same"} <= set(data["rows"])
    assert data["ratios"]["10"]["same_over_c_core"]["samples"] == [
        data["samples"]["same"]["core"]["10"][0] / data["samples"]["c"]["core"]["10"][0]]
    md = run("--markdown", str(out))
    assert md.returncode == 0 and "| compiled (same) |" in md.stdout


def test_replay_names_a_bad_build(tmp_path: Path) -> None:
    for spec, says in (("abi3", "expected NAME=PYTHON"), ("py=/bin/sh", "other than c and py"),
                       (f"abi3={tmp_path / 'nope'}", "is not a file")):
        proc = run("--quick", "--build", spec, "--json", str(tmp_path / "x.json"))
        assert proc.returncode == 2, spec
        assert says in proc.stderr and spec.split("=")[0] in proc.stderr, (spec, proc.stderr)
    assert not (tmp_path / "x.json").exists()


def test_replay_rejects_sizes_the_gather_shape_cannot_replay(tmp_path: Path) -> None:
    proc = run("--sizes", "10,15", "--json", str(tmp_path / "x.json"))
    assert proc.returncode == 2
    assert "--sizes" in proc.stderr and "multiple of 10" in proc.stderr and "10,15" in proc.stderr
    assert not (tmp_path / "x.json").exists()


PEERS = ROOT / "benchmarks" / "peers"


def test_ours_in_the_peer_driver_measures_both_cores_and_a_slope(tmp_path: Path) -> None:
    # run_peers.py with ours alone (the AWS SDK's venv comes from PyPI: not in the test suite).
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(PEERS / "run_peers.py"), "--peers", "lambda_workflow", "--quick",
         "--ours-python", sys.executable, "--output", str(out)],
        capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    table = data["table"]
    variants = {row["variant"] for row in table}
    assert variants == {"replayer (c)", "replayer (py)", "activation (c)", "activation (py)"}
    for row in table:
        assert row["peer"] == "lambda-workflow" and row["n"] in (0, 10, 100)
        assert row["repetitions"] >= 3 and row["median_cpu_s"] > 0
        if row["n"] == 100:  # slope from the previous N measured for that variant
            assert row["cpu_slope_from_n"] == 10
            assert row["cpu_slope_us_per_step"] == (
                row["median_cpu_s"] - next(r["median_cpu_s"] for r in table if
                                           r["variant"] == row["variant"] and r["n"] == 10)
            ) / 90 * 1e6
    assert data["like_for_like"] == []  # no AWS rows in this run: nothing to compare
    md = subprocess.run([sys.executable, str(PEERS / "run_peers.py"), "--markdown", str(out)],
                        capture_output=True, text=True, check=False, timeout=60)
    assert md.returncode == 0 and "| ours | N | AWS's SDK | ours | AWS / ours |" in md.stdout


def test_peer_driver_names_an_unknown_peer(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(PEERS / "run_peers.py"), "--peers", "aws_durable,temporl",
         "--output", str(tmp_path / "x.json")],
        capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2
    assert "unknown temporl" in proc.stderr and "aws_durable" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def load_replay_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("replay_benchmark", REPLAY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_like_for_like_target_reads_the_compiled_rows_of_the_span() -> None:
    script = load_replay_script()

    def pair(ours: str, from_n: int, n: int, ratio: float) -> dict[str, Any]:
        return {"ours": ours, "from_n": from_n, "n": n, "aws_over_ours": ratio,
                "aws_cpu_slope_us_per_step": 40.0, "ours_cpu_slope_us_per_step": 40.0 / ratio}

    peers = {"like_for_like": [pair("replayer (c)", 100, 1000, 20.0),
                               pair("replayer (c)", 1000, 10000, 12.0),
                               pair("replayer (py)", 1000, 10000, 8.0),
                               pair("activation (c)", 1000, 10000, 9.99)]}
    rows = script.peer_targets(peers)
    assert [(r["target"].rsplit("ours: ", 1)[1], r["value"], r["met"]) for r in rows] == [
        ("replayer (c)", 12.0, True), ("activation (c)", 9.99, False)]
    assert rows[0]["detail"] == "40.00 µs against 3.33 µs"


def test_replay_markdown_peers_needs_markdown_and_a_readable_file(tmp_path: Path) -> None:
    proc = run("--peers", str(tmp_path / "p.json"))
    assert proc.returncode == 2 and "--peers goes with --markdown" in proc.stderr
    results = tmp_path / "r.json"
    results.write_text("{}")
    proc = run("--markdown", str(results), "--peers", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and f"--peers: cannot read {tmp_path / 'missing.json'}" in (
        proc.stderr)


DOCS = ROOT / "benchmarks" / "replay_docs.py"
DOC_FILES = ("docs/core.md", "README.md", "benchmarks/peers/README.md")


def replay_docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DOCS), *args], capture_output=True, text=True,
                          check=False, timeout=60)


def test_the_docs_quote_the_last_replay_and_peer_runs() -> None:
    proc = replay_docs("--check")
    assert proc.returncode == 0, proc.stderr


def test_replay_docs_finds_and_fixes_a_figure_that_is_not_the_last_runs(tmp_path: Path) -> None:
    for name in DOC_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    readme = tmp_path / "README.md"
    begin = readme.read_text().index("<!-- replay_docs:readme -->")
    text = readme.read_text()
    # A figure changed by hand: the first decimal number in the region gets one more digit.
    changed = re.sub(r"(\d+\.\d+)", r"\g<1>9", text[begin:], count=1)
    assert changed != text[begin:]
    readme.write_text(text[:begin] + changed)
    proc = replay_docs("--check", "--root", str(tmp_path))
    assert proc.returncode == 1 and "not the figures of the last run: README.md" in proc.stderr
    assert replay_docs("--root", str(tmp_path)).returncode == 0
    assert readme.read_text() == (ROOT / "README.md").read_text()
    assert replay_docs("--check", "--root", str(tmp_path)).returncode == 0
    core = tmp_path / "docs" / "core.md"
    core.write_text(core.read_text().replace("<!-- /replay_docs:core-targets -->", ""))
    proc = replay_docs("--check", "--root", str(tmp_path))
    assert proc.returncode == 2
    assert "docs/core.md: expected one <!-- replay_docs:core-targets -->" in proc.stderr
