"""Helpers for the e2e tests that drive a real browser: Debian's headless chromium through
its chromium-driver (``apt-get install chromium chromium-driver``), never a browser or driver
Selenium Manager would download, and the web app served by uvicorn on a free loopback port.

``Browsers`` opens independent browser sessions (own profile, cookies and cache each: two
leads on two computers) and quits them all at the end; ``serving`` runs an ASGI app in a
thread until the block ends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from helpers import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = "Debian chromium and chromium-driver are not installed: apt-get install chromium chromium-driver"


def need_chromium() -> None:
    """Skip the test when Debian's chromium or its driver is missing."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(MISSING)


class Browsers:
    """Headless chromium sessions, each its own browser process; ``quit()`` ends them all.
    ``SE_OFFLINE=true``: Selenium Manager is never asked to download anything."""

    def __init__(self, width: int = 1000, height: int = 1400) -> None:
        need_chromium()
        self._offline = os.environ.get("SE_OFFLINE")
        os.environ["SE_OFFLINE"] = "true"
        self.width, self.height = width, height
        self.sessions: list[WebDriver] = []

    def open(self) -> WebDriver:
        options = Options()
        options.binary_location = str(CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            f"--window-size={self.width},{self.height}",
            "--lang=en-US",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.sessions.append(driver)
        return driver

    def quit(self) -> None:
        for driver in self.sessions:
            driver.quit()
        self.sessions.clear()
        if self._offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = self._offline


def text_appears(driver: WebDriver, text: str, timeout: float = 15.0) -> str:
    """Wait until the page's text holds ``text``; returns the page's text. While a posted
    form's answer replaces the page, the old body goes stale: that is waited out too."""

    def holds(d: WebDriver) -> str | None:
        body = d.find_element(By.TAG_NAME, "body").text
        return body if text in body else None

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, timeout, ignored_exceptions=ignored).until(holds)


@contextmanager
def serving(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 (``port``, default a free one) in a thread,
    once ``/healthz`` answers; yields the base URL and stops the server at the end."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
