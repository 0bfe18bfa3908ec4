"""The HTML pages of ``attncheck verify --html`` and ``attncheck bench history --html``, rendered in a real browser.

Each page is built by the real command line (verify on a broken fixture target and the reference; history on
synthetic pytest-benchmark runs with a 30% step, a flat benchmark, a step at the last run and two runs of one
commit), loaded from ``file://`` into Debian's headless Chromium through Selenium, and judged by what it shows:
the matrix cells' words and computed colours, a counterexample hidden until its link is clicked, every chart
image decoded, the red change-point line drawn on the charts that have one (read back from the pixels) and on
no other, the comparison table's statuses, the run labels, and no network request at all (Chrome's own log of
the requests the page made). Without chromium, chromedriver or selenium the browser tests are skipped with the
reason; ``.ci/run`` installs them.

Run as a module, it takes the screenshots of docs/verify.md and docs/benchmarks.md::

    python -m tests.test_html_reports docs/img
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from attncheck.bench import cli as bench_cli
from attncheck.bench.report import trend_figure
from attncheck.bench.statistics import trends
from attncheck.bench.storage import load_history, run_labels
from attncheck.html import verify_page
from attncheck.properties.problems import format_counterexample
from tests.test_bench_compare import rounds, write_run
from tests.test_cli import FIX, attncheck

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROKEN = f"{FIX}:returns_nan"  # a wrong answer (NaN) with a minimal counterexample, and a root cause (no gradient)
STEP = "test_attention[reference-cpu-float32-fwd-B1H4L256D64]"  # 30% slower from run 3 on
FLAT = "test_attention[torch-sdpa-cpu-float32-fwd-B1H4L256D64]"  # no change
LAST = "test_attention[torch-sdpa-cpu-bfloat16-fwd-B1H4L256D64]"  # 40% slower at the last run
COMMITS = [0, 1, 2, 3, 4, 4, 5, 6]  # runs 5 and 6 measure one commit


# --- the browser ------------------------------------------------------------------------------------------------


def start_chromium(width: int = 1200, height: int = 900) -> Any:
    """Headless Chromium (Debian's) driven by Selenium, logging every network request; RuntimeError if absent."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise RuntimeError("selenium is not installed (pip install 'selenium>=4.20')") from None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # Network.* events: what was requested
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        driver = start_chromium()
    except RuntimeError as exc:
        pytest.skip(f"no headless browser: {exc}")
    yield driver
    driver.quit()


def open_page(browser: Any, path: Path) -> None:
    browser.get(path.resolve().as_uri())
    browser.get_log("performance")  # drop the log of earlier pages


def requested_urls(browser: Any, path: Path) -> list[str]:
    """Every URL the page requested while loading, from Chrome's network log (the page itself included)."""
    browser.get_log("performance")
    browser.get(path.resolve().as_uri())
    browser.execute_script("return document.readyState")
    events = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


def rgb(css: str) -> tuple[int, ...]:
    """``rgb(1, 2, 3)`` or ``rgba(1, 2, 3, 1)`` -> (1, 2, 3)."""
    return tuple(int(v) for v in re.findall(r"[\d.]+", css)[:3])


# Pixels of the change-point line (matplotlib's tab:red, #d62728, anti-aliased): count per column of the image.
RED_COLUMNS_JS = """
const img = arguments[0];
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
const columns = new Array(canvas.width).fill(0);
for (let i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - 214) < 40 && data[i + 1] < 110 && data[i + 2] < 110) columns[(i / 4) % canvas.width]++;
}
return columns;
"""


# --- the pages --------------------------------------------------------------------------------------------------


def run_verify(out: Path, *targets: str, extra: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """``attncheck verify TARGETS --json --html`` (the real command line, in a subprocess); (page, JSON report)."""
    page, report = out / "verify.html", out / "verify.json"
    result = attncheck("verify", *targets, "--json", str(report), "--html", str(page), "-q", *extra)
    assert result.returncode == 1, result.stdout + result.stderr  # the broken target fails
    assert f"HTML report written to {page}" in result.stdout
    return page, json.loads(report.read_text())


def write_runs(directory: Path) -> list[Path]:
    """Eight runs of three benchmarks, one commit a day, runs 5 and 6 of one commit (see the constants)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, commit in enumerate(COMMITS):
        day = f"2026-01-{commit + 1:02d}"
        benchmarks = {
            STEP: rounds(1e-3 * (1.3 if i >= 2 else 1.0), seed=i),
            FLAT: rounds(5e-4, seed=100 + i),
            LAST: rounds(2e-3 * (1.4 if i == len(COMMITS) - 1 else 1.0), seed=200 + i),
        }
        when = f"{day}T{10 + i:02d}:00:00+00:00"
        commit_id = f"{commit:07d}abcdef"
        paths.append(
            write_run(
                directory / f"run{i}.json",
                benchmarks,
                commit_time=f"{day}T09:00:00+00:00",
                when=when,
                commit_id=commit_id,
            )
        )
    return paths


def run_history(out: Path, *paths: Path) -> Path:
    """``attncheck bench history PATHS --html OUT`` in this process; the page."""
    assert bench_cli.main(["history", *map(str, paths), "--html", str(out)]) == 0
    return out / "index.html"


@pytest.fixture(scope="module")
def verify_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("verify")
    return run_verify(out, BROKEN, "reference", extra=("--property", "matches_oracle", "--max-examples", "5"))


@pytest.fixture(scope="module")
def history_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The history page and the run labels."""
    root = tmp_path_factory.mktemp("history")
    paths = write_runs(root / "runs")
    page = run_history(root / "html", root / "runs")
    return page, run_labels(load_history(paths))


# --- verify -----------------------------------------------------------------------------------------------------


def cell(browser: Any, target: str, prop: str) -> Any:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'td[data-target="{target}"][data-property="{prop}"]')


def test_verify_matrix_shows_the_verdicts_in_colour(browser: Any, verify_report: tuple[Path, dict[str, Any]]) -> None:
    from selenium.webdriver.common.by import By

    page, report = verify_report
    statuses = {t["name"]: t["properties"][0]["status"] for t in report["targets"]}
    assert statuses == {BROKEN: "failed", "reference": "passed"}  # what the page must show
    open_page(browser, page)
    assert browser.find_element(By.TAG_NAME, "h1").text == "attncheck verify: FAILED"
    assert "Exit status 1" in browser.find_element(By.ID, "verdicts").text
    failed, passed = cell(browser, BROKEN, "matches_oracle"), cell(browser, "reference", "matches_oracle")
    assert failed.text.startswith("FAILED ") and passed.text.startswith("passed ")  # the terminal's words
    red, green = (
        rgb(failed.value_of_css_property("background-color")),
        rgb(passed.value_of_css_property("background-color")),
    )
    assert red[0] > red[1] + 20 and red[0] > red[2] + 20, red
    assert green[1] > green[0] + 20 and green[1] > green[2] + 20, green
    assert failed.value_of_css_property("font-weight") == "700"


def test_verify_counterexample_is_one_click_away(browser: Any, verify_report: tuple[Path, dict[str, Any]]) -> None:
    from selenium.webdriver.common.by import By

    page, report = verify_report
    (check,) = [c for c in report["targets"][0]["properties"][0]["checks"] if c["status"] == "failed"]
    open_page(browser, page)
    link = cell(browser, BROKEN, "matches_oracle").find_element(By.TAG_NAME, "a")
    details = browser.find_element(By.ID, link.get_attribute("href").rpartition("#")[2])
    example = details.find_element(By.CSS_SELECTOR, "code.counterexample")
    assert details.get_attribute("open") is None and not example.is_displayed()  # hidden until asked for
    link.click()
    assert details.get_attribute("open") is not None and example.is_displayed()
    assert example.text == format_counterexample(check["counterexample"])  # as the report holds it
    assert details.find_element(By.CSS_SELECTOR, "pre.repro").text == check["repro"]
    assert check["message"] in details.text and check["name"] in details.text
    causes = browser.find_elements(By.CSS_SELECTOR, "details.root-cause")  # each listed once, a click away
    assert len(causes) == len(report["targets"][0]["root_causes"]) >= 1
    assert not causes[0].find_element(By.CSS_SELECTOR, "pre.repro").is_displayed()
    causes[0].find_element(By.TAG_NAME, "summary").click()  # no script needed: <details>
    assert causes[0].find_element(By.CSS_SELECTOR, "pre.repro").is_displayed()


def test_verify_page_escapes_the_report(verify_report: tuple[Path, dict[str, Any]]) -> None:
    report = copy.deepcopy(verify_report[1])
    report["targets"][0]["properties"][0]["checks"][0]["message"] = "<img src=x onerror=alert(1)>"
    html = verify_page(report, failed=True)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_verify_html_unwritable_is_a_usage_error_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attncheck import cli, plugin

    monkeypatch.setattr(plugin, "AttncheckPlugin", None)  # the run must not start: calling it would raise
    (tmp_path / "file").write_text("")
    under_a_file = tmp_path / "file" / "r.html"
    for path, message in ((tmp_path, "is a directory"), (under_a_file, f"{tmp_path / 'file'} is not a directory")):
        assert cli.main(["verify", "reference", "--html", str(path)]) == 2
        out, err = capsys.readouterr()
        assert err == f"attncheck: error: --html {path}: {message}\n" and out == ""


# --- bench history ----------------------------------------------------------------------------------------------


def figures(browser: Any) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    return {
        f.get_attribute("data-fullname").rpartition("::")[2]: f
        for f in browser.find_elements(By.CSS_SELECTOR, "figure.chart")
    }


def test_history_charts_mark_the_change_points(browser: Any, history_report: tuple[Path, list[str]]) -> None:
    from selenium.webdriver.common.by import By

    page, labels = history_report
    open_page(browser, page)
    charts = figures(browser)
    assert set(charts) == {STEP, FLAT, LAST}
    assert {name: f.get_attribute("data-change-points") for name, f in charts.items()} == {
        STEP: labels[2],  # the 30% step, at run 3
        FLAT: "",
        LAST: labels[-1],
    }
    assert "change points: x1.3" in charts[STEP].text and charts[FLAT].text.endswith("no change point")
    red_at = {}
    for name, figure in charts.items():
        img = figure.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        assert img.size["width"] > 0 and img.size["height"] > 0
        columns = np.array(browser.execute_script(RED_COLUMNS_JS, img))
        red_at[name] = (columns.max(), columns.argmax() / columns.size)  # the vertical line: the reddest column
    assert red_at[FLAT][0] == 0  # no change point drawn on the unchanged benchmark
    assert red_at[STEP][0] > 40 and red_at[LAST][0] > 40
    assert red_at[STEP][1] < 0.45 < 0.7 < red_at[LAST][1]  # run 3 of 8 on the left, the last run on the right


def test_history_latest_comparison_table(browser: Any, history_report: tuple[Path, list[str]]) -> None:
    """The last two runs by compare's rule: the step at the last run is slower, as history's change point says."""
    from selenium.webdriver.common.by import By

    page, labels = history_report
    open_page(browser, page)
    heading = browser.find_element(By.ID, "comparison").text
    assert heading == f"Latest comparison: {labels[-2]} → {labels[-1]}"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.comparison tbody tr")
    statuses = {r.get_attribute("data-fullname").rpartition("::")[2]: r.get_attribute("data-status") for r in rows}
    assert statuses == {LAST: "slower", STEP: "unchanged", FLAT: "unchanged"}
    first = rows[0].find_elements(By.TAG_NAME, "td")  # slower first, coloured
    assert first[0].text == LAST and first[6].text == "slower" and first[7].text.startswith("CI above +10%")
    colour = rgb(first[0].value_of_css_property("background-color"))
    assert colour[0] > colour[1] + 20
    summary = browser.find_element(By.ID, "comparison-summary").text
    assert summary.startswith("1 slower, 0 faster, 2 unchanged, 0 too noisy; threshold 10%, alpha 0.01: REGRESSION")


def test_history_runs_of_one_commit_have_distinct_labels(browser: Any, history_report: tuple[Path, list[str]]) -> None:
    from selenium.webdriver.common.by import By

    page, _ = history_report
    open_page(browser, page)
    shown = [
        r.find_elements(By.TAG_NAME, "td")[1].text
        for r in browser.find_elements(By.CSS_SELECTOR, "table.runs tbody tr")
    ]
    assert len(shown) == len(COMMITS) == len(set(shown))
    same = [label for label in shown if label.startswith("0000004")]
    assert same == ["0000004 01-05 14:00:00", "0000004 01-05 15:00:00"]


@pytest.mark.parametrize("which", ["verify", "history"])
def test_pages_make_no_network_request(browser: Any, request: pytest.FixtureRequest, which: str) -> None:
    page = request.getfixturevalue(f"{which}_report")[0]
    urls = requested_urls(browser, page)
    assert urls and urls[0] == page.resolve().as_uri()
    assert {urlparse(u).scheme for u in urls} <= {"file", "data"}, urls
    entries = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(urlparse(u).scheme in ("file", "data") for u in entries), entries
    assert sorted(p.name for p in page.parent.iterdir() if p.suffix == ".html") == [page.name]  # one file
    links = re.findall(r'(?:src|href)="([^"]*)"', page.read_text())  # what a browser without the CSP would fetch
    assert links and all(link.startswith(("#", "data:")) for link in links), links


def test_history_of_one_run_has_no_comparison(tmp_path: Path) -> None:
    (run, *_) = write_runs(tmp_path / "runs")
    html = run_history(tmp_path / "html", run).read_text()
    assert "One run only: no comparison" in html and 'class="comparison"' not in html
    assert html.count('<figure class="chart"') == 3


def test_history_html_into_a_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_runs(tmp_path / "runs")
    (tmp_path / "taken").write_text("keep")
    assert bench_cli.main(["history", str(paths[0]), "--html", str(tmp_path / "taken")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"attncheck: error: --html {tmp_path / 'taken'}: exists and is not a directory\n"
    assert (tmp_path / "taken").read_text() == "keep"


def test_chart_axis_spans_the_threshold_band(tmp_path: Path) -> None:
    """A 2% difference must not fill the chart: the y axis spans at least [m / 1.1, m * 1.1] at a 10% threshold."""
    runs = load_history(write_runs(tmp_path / "runs"))
    flat = next(t for t in trends(runs, 0.1, 0.01) if t.name == FLAT)
    (ax,) = trend_figure(flat, runs, threshold=0.1).axes
    low, high = ax.get_ylim()
    middle = float(np.median(flat.medians)) * 1e6  # µs, the unit of the plot
    assert low <= middle / 1.1 and high >= middle * 1.1
    assert 0.02 * middle / (high - low) < 0.12  # a 2% step fills about a tenth of the height


# --- screenshots for docs/verify.md and docs/benchmarks.md ------------------------------------------------------------


def screenshots(directory: Path) -> None:
    """``verify-report.png`` (reference, torch-sdpa and a mutant, one counterexample open) and ``bench-history.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    properties = ("rows_sum_to_one", "no_future_leakage", "scaling_variance", "matches_oracle", "mask_semantics")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        verify, _ = run_verify(
            out,
            "reference",
            "torch-sdpa",
            "tests.mutants:no_scaling",
            extra=(*(a for p in properties for a in ("--property", p)), "--max-examples", "10"),
        )
        write_runs(out / "runs")
        history = run_history(out / "history", out / "runs")
        driver = start_chromium()
        try:
            for page, name, height in ((verify, "verify-report.png", 1100), (history, "bench-history.png", 1500)):
                driver.get(page.resolve().as_uri())
                if page == verify:  # one failure's counterexample open, as after a click on its cell
                    driver.execute_script("document.querySelector('details.failure').open = true")
                driver.set_window_size(1200, height)
                driver.save_screenshot(str(directory / name))
                print(f"{directory / name}: {(directory / name).stat().st_size // 1024} KiB")
        finally:
            driver.quit()


if __name__ == "__main__":
    screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
