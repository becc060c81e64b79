"""The dashboard served by a real ``streamlit run`` on 127.0.0.1 and opened in headless
Chromium (Debian's chromium + chromium-driver, driven by selenium) on the results of a real
search (``results_root``: the CLI end to end, hence marked slow): the front chart draws its
points under the view the page opens on (the final suite's worst case over seen attacks once
it ran), a click shows the trial's details, a new trial written while the page is open appears
without a reload, and a screenshot is saved in the test's tmp_path."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard import load, views
from raysearch import store
from raysearch.schema import Status

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")]

CHROME_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,1100",
               "--disable-dev-shm-usage")
POINTS = '.st-key-front_chart .js-plotly-plot .scatterlayer path.point'


@pytest.fixture
def root(results_root, tmp_path) -> Path:
    """A private copy of the shared results (the test appends a trial to it)."""
    copy = tmp_path / "results"
    shutil.copytree(results_root, copy, symlinks=True,
                    ignore=shutil.ignore_patterns(".components", "*.pkl", "train", "checkpoint*", "run_*"))
    return copy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(root, tmp_path):
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "wb")
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--", "--results", str(root), "--refresh", "1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(DRIVER, log_output=str(tmp_path / "chromedriver.log")), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, what, timeout=60.0, every=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what(driver)
        if got:
            return got
        time.sleep(every)
    return what(driver)


def test_page_draws_front_selects_and_updates_live(server, browser, root, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    res = load.load_results(root)
    opening = views.default_view(views.views(res.evals, res.trials))
    table = views.objectives(res.trials, res.evals, opening)
    drawn = table[["clean", "robust"]].notna().all(axis=1)
    expected = int(drawn.sum())
    assert expected > 0

    browser.get(server)
    points = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, POINTS)
                   if len(d.find_elements(By.CSS_SELECTOR, POINTS)) >= expected else None)
    time.sleep(1.0)  # let the layout settle before the picture
    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert points, f"front chart drew {len(browser.find_elements(By.CSS_SELECTOR, POINTS))} of {expected} points"
    assert len(points) == expected
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    legend = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".st-key-front_chart .legendtext")}
    flagged = {"masking check fired"} if table.loc[drawn, "masking"].astype(bool).any() else set()
    assert legend == set(table.loc[drawn, "method"]) | flagged

    # a click on the front's best-robust point lists that trial's details
    front_points = browser.find_elements(By.CSS_SELECTOR, POINTS)
    ActionChains(browser).move_to_element(front_points[0]).click().perform()
    details = _wait(browser, lambda d: [e for e in d.find_elements(By.TAG_NAME, "p") if "trial(s) selected" in e.text],
                    timeout=30)
    browser.save_screenshot(str(tmp_path / "dashboard_selected.png"))
    assert details and details[0].text.startswith("1 trial")

    # a trial written while the page is open shows up without a reload
    exp = res.experiments[0]
    rows = store.read_rows(root / exp / store.TRIALS)
    # with its final summary, so that it is drawn under the final view too
    new = {**rows[0], "trial_id": "late_trial", "clean_acc": 0.5, "robust_acc": 0.25, "status": Status.COMPLETED,
           "final_clean_acc": 0.5, "final_worst_seen": 0.25, "final_union_unseen": 0.2, "final_n": 100,
           "finished_at": max(r["finished_at"] or 0 for r in rows) + 1}
    store.write_trials(root / exp, rows + [new])
    count = f"{len(res.trials) + 1} trials"
    grown = _wait(browser, lambda d: count in d.find_element(By.TAG_NAME, "body").text, timeout=45)
    browser.save_screenshot(str(tmp_path / "dashboard_updated.png"))
    assert grown, f"page did not show {count!r} after a new trial was written"
    assert len(browser.find_elements(By.CSS_SELECTOR, POINTS)) == expected + 1
