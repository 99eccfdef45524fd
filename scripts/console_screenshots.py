"""Screenshots of the web console for docs/observability.md.

Runs the examples (approval.py, order_saga.py, bank_transaction.py) into a fresh state file
with `lambda-workflow run`, serves the console on it (127.0.0.1, a free port) and takes, with
headless chromium (Debian's chromium and chromium-driver, driven by selenium):

- docs/images/console-list.png: the instance list;
- docs/images/console-instance.png: an instance page (exp-escalated: a callback that timed
  out, its escalation, timers and mail calls);
- docs/images/console-failure.png: an instance whose service call failed and was compensated
  (order-undeliverable), with the failed call's error and source line.

    .venv/bin/python scripts/console_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("approval.py", "order_saga.py", "bank_transaction.py")


def run_examples(db: str) -> None:
    from lambda_workflow.cli import main

    for name in EXAMPLES:
        out = io.StringIO()
        code = main(["run", str(ROOT / "examples" / name), "--db", db, "--quiet"], out=out)
        print(f"run examples/{name}: exit {code}")


def browser(width: int) -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        raise SystemExit("needs Debian's chromium and chromium-driver: apt-get install -y "
                         "chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", f"--window-size={width},900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def shoot(driver: object, url: str, path: Path, width: int) -> None:
    driver.get(url)  # type: ignore[attr-defined]
    height = driver.execute_script(  # type: ignore[attr-defined]
        "return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, 4000))  # type: ignore[attr-defined]
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from lambda_workflow._ui.app import Console, bound_port, make_server

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "examples.sqlite3")
        run_examples(db)
        server = make_server(Console(db=db, run=str(ROOT / "examples" / "order_saga.py")),
                             0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline:
                raise SystemExit("the console did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{bound_port(server)}"
        driver = browser(args.width)
        try:
            shoot(driver, url + "/", out / "console-list.png", args.width)
            shoot(driver, url + "/instance?id=exp-escalated", out / "console-instance.png",
                  args.width)
            shoot(driver, url + "/instance?id=order-undeliverable",
                  out / "console-failure.png", args.width)
        finally:
            driver.quit()  # type: ignore[attr-defined]
            server.should_exit = True
            thread.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
