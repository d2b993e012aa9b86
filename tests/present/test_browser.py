"""report.html in a real browser: headless Chromium (Debian's chromium + chromium-driver, via selenium).

Every image must decode, the console must stay free of errors, nothing may be fetched from anywhere,
and a screenshot is taken. The test skips only where no browser is installed, and never in CI
(`.ci/run` installs one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aggscope.cli import app

pytestmark = pytest.mark.slow  # end to end: headless Chromium

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Any attempt to reach a host fails at once: the page must need none.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
WIDTH = 1280


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test, but {reason} (.ci/run installs chromium and chromium-driver)")
    pytest.skip(f"no headless browser: {reason} (apt-get install chromium chromium-driver; pip install selenium)")


@pytest.fixture(scope="module")
def browser() -> Any:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    binary = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("chromium or chromedriver is not on PATH")
    options = Options()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={WIDTH},1000")
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser-report")
    args = ["report", "-m", "token_mean", "-m", "sequence_mean", "-m", "prompt_mean", "--mini-batch-size", "100", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "report.html"


def test_report_html_in_headless_chromium(browser: Any, report_page: Path, tmp_path: Path) -> None:
    browser.get(report_page.resolve().as_uri())
    assert browser.title == "aggscope report"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"
    )
    assert len(images) == 6
    for image in images:
        assert image["complete"] and image["w"] > 0 and image["h"] > 0, image
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in {"SEVERE", "ERROR"}]
    assert errors == []
    # Nothing was fetched: no resource entries at all (data URIs are not fetches).
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    # The page reads at a normal window width: no sideways scrolling of the page itself.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    text = browser.find_element("tag name", "body").text
    assert "get no gradient under token_mean" in text and "At a glance" in text
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, min(int(height) + 120, 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 100_000
