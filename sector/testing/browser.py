"""A headless browser for the web page's tests and its screenshot (issue 16): Debian's
``chromium`` driven through ``chromium-driver`` by selenium, its console log kept."""

from __future__ import annotations

import shutil
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
