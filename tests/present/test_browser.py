"""report.html in a real browser: headless Chromium (Debian's chromium + chromium-driver, via selenium,
which is in the test extra).

Every image must decode, the console must stay free of errors, nothing may be fetched from anywhere;
a table sorts, a finding group expands, a prompt's drill-down opens with report.json's numbers, a
chart shows its values on hover, a figure opens large; and at 420 and 1,400 px the page has no
horizontal scroll, with a screenshot of each (kept in ``$AGGSCOPE_SCREENSHOTS`` when set). The tests
skip only where no browser is installed, and never in CI (`.ci/run` installs one).
"""

from __future__ import annotations

import json
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


def _document(report_page: Path) -> dict[str, Any]:
    return json.loads((report_page.parent / "report.json").read_text())


def _open(browser: Any, report_page: Path, width: int = WIDTH) -> None:
    browser.set_window_size(width, 1000)
    browser.get(report_page.resolve().as_uri())


def _cells(browser: Any, table: Any, column: int) -> list[str]:
    return [row.find_elements("tag name", "td")[column].text for row in table.find_elements("css selector", "tbody tr")]


def test_a_table_sorts_by_a_click_on_its_header(browser: Any, report_page: Path) -> None:
    _open(browser, report_page)
    table = next(
        t for t in browser.find_elements("css selector", "table") if "ESS tokens" in t.find_element("tag name", "thead").text
    )
    header = next(th for th in table.find_elements("tag name", "th") if th.text.startswith("ESS tokens"))
    column = table.find_elements("tag name", "th").index(header)
    header.click()
    values = [int(text.replace(",", "")) for text in _cells(browser, table, column)]
    assert values == sorted(values) and header.get_attribute("aria-sort") == "ascending"
    header.click()
    values = [int(text.replace(",", "")) for text in _cells(browser, table, column)]
    assert values == sorted(values, reverse=True) and header.get_attribute("aria-sort") == "descending"


def test_a_finding_group_starts_collapsed_and_expands(browser: Any, report_page: Path) -> None:
    _open(browser, report_page)
    group = browser.find_element("css selector", "#findings ~ details")
    inner = group.find_element("tag name", "table")
    assert group.get_attribute("open") is None and not inner.is_displayed()
    summary = group.find_element("tag name", "summary")
    code = summary.text.split(" ")[0]
    browser.execute_script("arguments[0].scrollIntoView()", summary)
    summary.click()
    assert group.get_attribute("open") is not None and inner.is_displayed()
    # one layout for every SPEC of a report: its group holds each SPEC's findings (under its own mode) once
    results = _document(report_page)["results"].values()
    expected = {
        (f["step"], f["uid"], tuple(f["rows"]), f["message"])
        for result in results
        for f in result["checks"]["findings"]
        if f["code"] == code
    }
    shown = inner.find_elements("css selector", "tbody tr")
    assert f"{len(expected):,} finding" in summary.text and len(shown) == min(len(expected), 60)


def test_a_prompts_drilldown_shows_report_json_numbers(browser: Any, report_page: Path) -> None:
    _open(browser, report_page)
    document = _document(report_page)
    prompt = document["drilldown"]["prompts"][5]
    search = browser.find_element("id", "prompt-search")
    browser.execute_script("arguments[0].scrollIntoView()", search)
    search.send_keys(prompt["uid"])
    visible = [row for row in browser.find_elements("css selector", "#prompt-table tbody tr") if row.is_displayed()]
    assert [row.get_attribute("data-key") for row in visible] == [f"{prompt['step']}:{prompt['uid']}"]
    visible[0].find_element("css selector", "a.prompt-link").click()
    detail = browser.find_element("id", "prompt-detail")
    assert detail.is_displayed() and prompt["uid"] in detail.find_element("tag name", "h3").text
    rows = detail.find_elements("css selector", "tbody tr")
    assert len(rows) == len(prompt["rows"])
    labels = document["drilldown"]["labels"]
    for row, expected in zip(rows, prompt["rows"], strict=True):
        cells = row.find_elements("tag name", "td")
        values = [cell.get_attribute("data-value") for cell in cells[1:]]
        wanted = [expected["reward"], expected["mean_advantage"], expected["loss_tokens"]]
        for label in labels:
            wanted += [expected["weight"][label], expected["grad_mass"][label]]
        assert [float(v) for v in values] == wanted  # exactly report.json's numbers
        assert cells[3].text == f"{expected['loss_tokens']:,}"


def test_a_uid_in_the_findings_opens_its_drilldown(browser: Any, report_page: Path) -> None:
    _open(browser, report_page)
    group = browser.find_element("css selector", "#findings ~ details")
    group.find_element("tag name", "summary").click()
    link = group.find_element("css selector", "a.prompt-link")
    key = link.get_attribute("data-prompt")
    link.click()
    detail = browser.find_element("id", "prompt-detail")
    assert detail.is_displayed() and detail.get_attribute("data-key") == key


def test_charts_show_their_values_on_hover_and_figures_open_large(browser: Any, report_page: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _open(browser, report_page)
    document = _document(report_page)
    bars = browser.find_elements("css selector", 'svg.chart[data-key="length_quartiles"] rect.bar')
    assert len(bars) == 4 * len(document["specs"])
    bar = bars[-1]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", bar)
    ActionChains(browser).move_to_element(bar).perform()
    tip = browser.find_element("id", "tip")
    label, category = bar.get_attribute("data-label"), int(bar.get_attribute("data-category"))
    share = 100 * document["results"][label]["length_quartiles"]["grad_mass_share"][category]
    assert float(bar.get_attribute("data-value")) == pytest.approx(share, rel=1e-12)
    assert tip.is_displayed() and tip.text.startswith(label) and tip.text.endswith(f"{share:.1f}%")
    figure = browser.find_element("id", "fig-mass_vs_length")
    browser.execute_script("arguments[0].scrollIntoView()", figure)
    figure.click()
    assert "zoomed" in figure.get_attribute("class")
    assert figure.size["width"] >= browser.execute_script("return document.documentElement.clientWidth") - 1
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert "zoomed" not in (figure.get_attribute("class") or "")


@pytest.mark.parametrize("width", [420, 1400])
def test_readable_at_narrow_and_wide_windows(browser: Any, report_page: Path, tmp_path: Path, width: int) -> None:
    _open(browser, report_page, width)
    # Open every finding group and a drill-down: the widest content the page can show.
    for summary in browser.find_elements("css selector", "details > summary"):
        browser.execute_script("arguments[0].parentElement.open = true", summary)
    browser.find_element("css selector", "#prompt-table a.prompt-link").click()
    page_width = browser.execute_script("return document.documentElement.clientWidth")
    assert page_width <= width
    assert browser.execute_script("return document.documentElement.scrollWidth") <= page_width
    for wrap in browser.find_elements("css selector", ".tablewrap"):  # wide tables scroll inside themselves
        assert wrap.size["width"] <= page_width
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(int(height) + 120, 16000))
    browser.execute_script("window.scrollTo(0, 0)")
    folder = Path(os.environ.get("AGGSCOPE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"report-{width}px.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
