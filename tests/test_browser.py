"""`bench leaderboard` served for real and opened in headless Chromium (Playwright for Python).

CI installs Debian's chromium (`apt-get install -y chromium`); without /usr/bin/chromium the
browser test is skipped and says why. The screenshot is saved under the test's tmp_path and
copied to artifacts/leaderboard.png (git-ignored) for humans.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.results import read_results

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CHART = '[data-testid="stVegaLiteChart"] svg, [data-testid="stVegaLiteChart"] canvas'

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench() -> list[str]:
    exe = Path(sys.executable).parent / "bench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bench.cli"]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server by its PID: SIGTERM to its process group, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture(scope="module")
def results(real_runs, tmp_path_factory) -> Path:
    """The real runs, one adversarially trained run (pruning, fgsm_rs: the only pruning row) and a
    corrupt file, as the issues' checks use."""
    from bench.cli import main

    d = tmp_path_factory.mktemp("browser-results")
    for p in real_runs.glob("*.parquet"):
        shutil.copy(p, d)
    assert main(["run", "--method", "pruning", "--compression", "0.5", "--objective", "fgsm_rs[eps=0.05]",
                 "--epochs", "1", "--no-attacks", "--quiet", "--results-dir", str(d)]) == 0
    (d / "corrupt.parquet").write_bytes(b"this is not parquet")
    return d


@pytest.fixture(scope="module")
def server(results, tmp_path_factory):
    """`bench leaderboard` on a free loopback port; yields (process, port, log path)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "leaderboard.log"
    env = dict(os.environ)
    env.pop("BENCH_RESULTS_DIR", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(_bench() + ["leaderboard", "--results-dir", str(results), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bench leaderboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get(f"http://127.0.0.1:{port}/_stcore/health") == (200, b"ok"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"bench leaderboard did not answer on port {port}:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc, port, log
    finally:
        _stop(proc)


def test_leaderboard_serves_on_loopback(server):
    proc, port, log = server
    status, body = _get(f"http://127.0.0.1:{port}/")
    assert status == 200 and b"<html" in body.lower()
    text = log.read_text()
    assert f"http://127.0.0.1:{port}/" in text and f"kill {proc.pid}" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get update && apt-get install -y chromium)")
def test_leaderboard_in_chromium(server, results, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    proc, port, log = server
    with pytest.warns(UserWarning, match="corrupt.parquet"):
        rows = read_results(results)
    # The leaderboard opens on clean-trained rows: the adversarially trained pruning run is not among them.
    methods = sorted(rows.loc[rows["objective"] == "standard", "method"].unique())
    assert "pruning" not in methods and set(rows["method"]) - set(methods) == {"pruning"}
    shot = tmp_path / "leaderboard.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector(f"{CHART}, [data-testid='stException']", timeout=90_000)
            assert page.locator("[data-testid='stException']").count() == 0, \
                page.locator("[data-testid='stException']").first.inner_text()
            assert page.locator("[data-testid='stVegaLiteChart']").count() >= 1

            # The table's cells: st.dataframe paints on a canvas and mirrors every cell into an
            # accessible table, which is what a screen reader (and this test) reads.
            table = page.locator("[data-testid='stDataFrame']").first
            for m in methods:
                cell = table.locator("td").filter(has_text=re.compile(rf"^{re.escape(m)}$"))
                expect(cell.first, f"method {m!r} not in the table").to_be_attached(timeout=30_000)
            # ...and they are visible on the page in the charts' legends.
            for m in methods:
                page.get_by_text(m, exact=True).filter(visible=True).first.wait_for(state="visible", timeout=30_000)
            assert page.get_by_text("corrupt.parquet").count() >= 1, "the corrupt file is not named"
            assert table.locator("td").filter(has_text=re.compile(r"^pruning$")).count() == 0, \
                "an adversarially trained row is ranked among the clean-trained ones"

            # Streamlit scrolls an inner element, so grow the viewport to the page's height for
            # a screenshot of the whole page, and let the charts re-lay out.
            height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
            page.set_viewport_size({"width": 1600, "height": int(min(max(height + 40, 1000), 8000))})
            page.wait_for_timeout(2500)
            page.screenshot(path=str(shot), full_page=True)

            # Filter by objective: the adversarially trained run alone, the clean-trained ones gone.
            page.get_by_role("combobox", name="Training objective").click()
            page.get_by_role("option", name="fgsm_rs (1 runs)").click()
            table = page.locator("[data-testid='stDataFrame']").first
            expect(table.locator("td").filter(has_text=re.compile(r"^pruning$")).first).to_be_attached(timeout=30_000)
            for m in methods:
                expect(table.locator("td").filter(has_text=re.compile(rf"^{re.escape(m)}$")),
                       f"clean-trained {m!r} still shown under fgsm_rs").to_have_count(0, timeout=30_000)
            assert page.locator("[data-testid='stException']").count() == 0
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "leaderboard.png")

    _stop(proc)
    assert proc.returncode is not None
    deadline = time.monotonic() + 10
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _port_open(port), "the server still answers after it was stopped"
