"""A headless browser for the web page's tests and its screenshot (issue 16): Debian's
``chromium`` driven through ``chromium-driver`` by selenium, its console log kept."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from typing import Any

DRIVER = "chromedriver"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def available() -> str | None:
    """Why no headless browser can run here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if shutil.which(DRIVER) is None or not any(shutil.which(b) for b in BROWSERS):
        return "no chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


def chrome(width: int = 1280, height: int = 900) -> Any:
    """A headless chromium of that window size, logging the page's console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if binary:
        opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for chromium's own
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which(DRIVER)), options=opts)


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The page's console entries of level SEVERE since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def post(url: str, body: bytes, token: str | None) -> tuple[int, Any]:
    """POST ``body`` to a node's JSON API (as ``Bearer token`` if one is given): the
    status and the decoded JSON answer, an error status included."""
    req = urllib.request.Request(url, data=body, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
