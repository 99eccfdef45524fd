"""The console in a real headless browser (Debian's chromium and chromedriver, driven by
selenium): the list shows a run's instances and its filter and pages work, an instance page
shows its timeline, and a cancel changes the instance once confirmed. The server runs in a
thread on 127.0.0.1 (a free port); the fixture stops it, and a watchdog stops it anyway
after two minutes."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from lambda_workflow._ui.app import Console, bound_port, make_server

from .conftest import Run

WATCHDOG_SECONDS = 120


@dataclass
class Site:
    url: str
    browser: WebDriver

    def open(self, path: str) -> None:
        self.browser.get(self.url + path)

    def follow(self, by: str, value: str) -> None:
        """Click what leads to another page and wait until that page has replaced this one
        (a click returns before the navigation it starts has finished)."""
        old = self.browser.find_element(By.TAG_NAME, "html")
        self.browser.find_element(by, value).click()
        # While a page loads, chromedriver may answer a query about the old one with an
        # error of its own ("unhandled inspector error"): ask again until the page is gone.
        WebDriverWait(self.browser, 20, ignored_exceptions=(WebDriverException,)).until(
            expected_conditions.staleness_of(old))

    def ids(self) -> list[str]:
        return [row.get_attribute("data-id") or ""
                for row in self.browser.find_elements(By.CSS_SELECTOR, "tr.instance")]


def _install_browser() -> None:
    """Install Debian's chromium and its driver, as scripts/build_wheels.sh installs qemu for
    the arm64 tests: the README's test command runs on a fresh Debian machine (as root)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver (as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                              check=False)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-2000:]}")


def chrome() -> WebDriver:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        _install_browser()
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert binary and driver, "apt-get installed chromium, but chromium or chromedriver is missing"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def site(run: Run) -> Iterator[Site]:
    server = make_server(Console(db=run.db, run=run.module, allow_actions=True), 0)
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    watchdog = threading.Timer(WATCHDOG_SECONDS, lambda: setattr(server, "should_exit", True))
    watchdog.daemon = True
    watchdog.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    browser = chrome()
    try:
        yield Site(f"http://127.0.0.1:{bound_port(server)}", browser)
    finally:
        browser.quit()
        server.should_exit = True
        watchdog.cancel()
        thread.join(10)
        assert not thread.is_alive()


def test_list_shows_the_instances_and_filters_and_pages(site: Site) -> None:
    site.open("/")
    assert sorted(site.ids()) == ["p-done", "p-fail", "p-wait"]
    Select(site.browser.find_element(By.ID, "f-status")).select_by_value("failed")
    site.follow(By.ID, "f-apply")
    assert site.ids() == ["p-fail"]
    site.open("/?limit=2")
    first = site.ids()
    site.follow(By.ID, "next-page")
    second = site.ids()
    assert len(first) == 2 and len(second) == 1
    assert sorted(first + second) == ["p-done", "p-fail", "p-wait"]


def test_instance_page_shows_its_timeline(site: Site) -> None:
    site.open("/")
    site.follow(By.LINK_TEXT, "p-fail")
    assert site.browser.find_element(By.ID, "status").text == "failed"
    svg = site.browser.find_element(By.CSS_SELECTOR, "#timeline svg.timeline")
    assert svg.size["width"] > 300 and svg.size["height"] > 50  # drawn, not empty
    bars = svg.find_elements(By.CSS_SELECTOR, "g.bar")
    assert [(b.get_attribute("data-op"), b.get_attribute("data-outcome")) for b in bars] == [
        ("1", "completed"), ("2", "completed"), ("3", "completed"), ("4", "failed")]
    assert len(svg.find_elements(By.CSS_SELECTOR, "line.activation")) == 5
    assert "no carrier takes parcel -1" in site.browser.find_element(By.ID, "error").text


def test_cancel_changes_the_instance_after_its_confirmation(site: Site) -> None:
    site.open("/")
    site.follow(By.LINK_TEXT, "p-wait")
    assert site.browser.find_element(By.ID, "status").text == "running"
    site.follow(By.ID, "act-cancel")
    site.browser.find_element(By.ID, "reason").send_keys("browser test")
    site.follow(By.ID, "confirm-button")
    # not confirmed: refused, nothing changed
    assert "not confirmed" in site.browser.find_element(By.ID, "problem").text
    site.browser.back()
    # The form comes back from the history or is fetched again (then its fields are empty):
    # wait for it, and fill it again if it was fetched.
    wait = WebDriverWait(site.browser, 20, ignored_exceptions=(WebDriverException,))
    box = wait.until(expected_conditions.element_to_be_clickable((By.ID, "confirm-box")))
    reason = site.browser.find_element(By.ID, "reason")
    if not reason.get_attribute("value"):
        reason.send_keys("browser test")
    if not box.is_selected():
        box.click()
    site.follow(By.ID, "confirm-button")
    # the answer page, once it has loaded: the outcome, or the problem that refused it
    answer = wait.until(expected_conditions.any_of(
        expected_conditions.presence_of_element_located((By.ID, "outcome")),
        expected_conditions.presence_of_element_located((By.ID, "problem"))))
    assert answer.get_attribute("id") == "outcome", answer.text
    assert answer.text == "done"
    site.follow(By.ID, "back")
    status = wait.until(expected_conditions.presence_of_element_located((By.ID, "status")))
    assert status.text == "cancelled"
