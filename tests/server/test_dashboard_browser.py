"""The dashboard end to end: a real 2-round simulation writes the run store, headless Chromium
(Debian's ``chromium``, driven by Playwright) reads it through the dashboard.

Set ``FEDFUSION_SCREENSHOT_DIR`` to keep the screenshot (docs/img/dashboard.png is made so).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.dashboard import create_app
from server.store import RunStore
from simulation.cli import main
from tests.server._runs import make_round, serve_dashboard

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SCENARIO = """
description = "tiny dual-center for dashboard tests"
task = "rcc-grading"

[data]
generator = "dual-center"
sites = { north = 10, south = 10 }
images-per-patient = [1, 2]
image-size = 32
high-grade-fraction = 0.4
modality-signal = 3.0

[run]
backbone = "test_efficientnet"
image-size = 32
num-server-rounds = 2
local-epochs = 2
batch-size = 8
learning-rate = 0.05
"""


def _browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed (pip install playwright, the [test] extra)"
    return None


_MISSING = _browser_missing()
needs_browser = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real 2-round, 2-site simulation through Flower's engine; its run store is the
    default ``OUT/runs.sqlite``."""
    root = tmp_path_factory.mktemp("dashboard-sim")
    scenario = root / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = root / "out"
    code = main(["simulate", str(scenario), "--out", str(out), "--seed", "1", "--cpus", "2"])
    assert code == 0
    return {"out": out, "db": out / "runs.sqlite"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def _traces(page: Any, chart: str) -> list[dict[str, Any]]:
    return page.evaluate(
        """(id) => (document.getElementById(id).data || []).map(
               t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))""",
        chart,
    )


def _wait_for_traces(page: Any, chart: str, points: int, timeout: float = 15_000) -> None:
    page.wait_for_function(
        """([id, n]) => { const d = document.getElementById(id);
               return !!(d && d.data && d.data.length && d.data[0].x.length >= n); }""",
        arg=[chart, points],
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_simulation_fills_the_run_store(
    simulated: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with RunStore(simulated["db"], create=False) as store:
        (run,) = store.list_runs()
        assert run["name"] == "tiny/fedavg" and run["status"] == "finished"
        assert (run["rounds_done"], run["rounds_planned"]) == (2, 2)
        assert run["model"] == "mufnet" and run["strategy"] == "fedavg"
        rounds = store.rounds(run["id"])
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(set(r["sites"]) == {"north", "south"} for r in rounds)
        assert store.roc(run["id"])["round"] == 2
        checkpoints = store.checkpoints(run["id"])
        assert [c["round"] for c in checkpoints] == [1, 2]
        assert all(Path(c["path"]).is_file() for c in checkpoints)
        assert store.get_run(run["id"])["config"]["db-url"].endswith("runs.sqlite")


@pytest.mark.slow
@pytest.mark.browser
@needs_browser
def test_the_browser_shows_a_simulated_run(
    simulated: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    with RunStore(simulated["db"], create=False) as store:
        run_id = store.latest_run_id()
        assert run_id is not None
        # The DP issue's sites report their spend; here one near its limit, one well within.
        store.record_privacy(run_id, "north", epsilon=1.86, budget=2.0, delta=1e-5, round=2)
        store.record_privacy(run_id, "south", epsilon=0.7, budget=2.0, delta=1e-5, round=2)
        checkpoint_size = store.checkpoints(run_id)[-1]["size_bytes"]

        with serve_dashboard(create_app(store, refresh_seconds=1.0)) as base:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))

            page.goto(base + "/")
            rows = page.locator("#runs-body tr")
            assert rows.count() == 1
            row_text = rows.first.inner_text()
            for expected in ("tiny/fedavg", "rcc-grading", "mufnet", "fedavg", "finished", "2 / 2"):
                assert expected in row_text, (expected, row_text)

            page.click("text=tiny/fedavg")
            page.wait_for_url(f"**/runs/{run_id}")
            _wait_for_traces(page, "chart-sites-auc", 2)
            _wait_for_traces(page, "chart-global-auc", 2)
            for metric in ("loss", "auc", "accuracy"):
                (global_trace,) = _traces(page, f"chart-global-{metric}")
                assert global_trace["name"] == "global" and global_trace["x"] == [1, 2]
                per_site = _traces(page, f"chart-sites-{metric}")
                assert sorted(t["name"] for t in per_site) == ["north", "south"], metric
                assert all(t["x"] == [1, 2] for t in per_site)
            page.wait_for_selector("#confusion-table")
            roc = _traces(page, "chart-roc")
            assert roc[0]["name"].startswith("high (AUC ") and roc[-1]["name"] == "chance"

            sites = page.locator("#sites-body tr")
            assert sites.count() == 2
            north = page.locator('#sites-body tr[data-site="north"]')
            assert "ε 1.86 / 2.00" in north.inner_text()
            assert "danger" in north.locator(".privacy-bar").get_attribute("class")
            red = north.locator(".privacy-bar .fill").evaluate(
                "el => getComputedStyle(el).backgroundColor"
            )
            assert red == "rgb(220, 38, 38)"
            south_bar = page.locator('#sites-body tr[data-site="south"] .privacy-bar')
            assert "ok" in south_bar.get_attribute("class")

            links = page.locator("#checkpoints-body a")
            assert links.count() == 2
            download = page.request.get(base + links.last.get_attribute("href"))
            assert download.status == 200 and len(download.body()) == checkpoint_size
            assert not errors, errors

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            keep = os.environ.get("FEDFUSION_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(keep) / "dashboard.png")
            page.close()


@pytest.mark.browser
@needs_browser
def test_a_running_run_gains_a_round_without_reload(browser: Any, tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        run_id = store.start_run(
            name="live",
            task="rcc-grading",
            model="mufnet",
            strategy="fedavg",
            rounds_planned=3,
            classes=("low", "high"),
        )
        store.record_round(run_id, make_round(1))
        with serve_dashboard(create_app(store, refresh_seconds=0.3)) as base:
            page = browser.new_page()
            page.goto(f"{base}/runs/{run_id}")
            _wait_for_traces(page, "chart-global-auc", 1)
            assert page.inner_text("#run-rounds") == "1 / 3"
            page.evaluate("window.__sameDocument = 42")

            store.record_round(run_id, make_round(2))  # the server writes while we watch
            _wait_for_traces(page, "chart-global-auc", 2)
            _wait_for_traces(page, "chart-sites-auc", 2)
            page.wait_for_function("document.getElementById('run-rounds').textContent === '2 / 3'")
            assert _traces(page, "chart-global-auc")[0]["x"] == [1, 2]
            assert page.evaluate("window.__sameDocument") == 42  # no reload happened

            store.finish_run(run_id)
            page.wait_for_function(
                "document.getElementById('run-status').textContent === 'finished'"
            )
            assert page.evaluate("window.__sameDocument") == 42
            page.close()
