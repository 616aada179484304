"""The dashboard's JSON API, pages and access control, through FastAPI's TestClient."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from server.cli import dashboard_hint, is_loopback, run_dashboard, simulation_db_url
from server.dashboard import TOKEN_COOKIE, create_app
from server.store import RunStore
from tests.server._runs import make_round, serve_dashboard

TOKEN = "correct-horse-battery-staple"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    """Two runs: 1 finished with 2 rounds, privacy spend and a checkpoint; 2 running, empty."""
    with RunStore(tmp_path / "runs.sqlite") as opened:
        run_id = opened.start_run(
            name="dc/<b>fedavg</b>",
            task="rcc-grading",
            model="mufnet",
            strategy="fedavg",
            rounds_planned=2,
            classes=("low", "high"),
            config={"local-epochs": 2},
        )
        spend = {"north": {"dp-epsilon-spent": 1.9, "dp-epsilon-budget": 2.0}}
        opened.record_round(run_id, make_round(1))
        opened.record_round(run_id, make_round(2, extra_train=spend, failed_nodes=[5]))
        opened.record_privacy(run_id, "south", epsilon=0.5, budget=4.0, round=2)
        checkpoint = tmp_path / "round-002.pt"
        checkpoint.write_bytes(b"\x00weights")
        opened.add_checkpoint(run_id, 2, checkpoint)
        opened.finish_run(run_id)
        opened.start_run(task="rcc-grading", model="mufnet", strategy="fedavg", rounds_planned=5)
        yield opened


#: Where a browser on the coordinator's machine opens the dashboard (Host: 127.0.0.1:8050).
LOCAL = "http://127.0.0.1:8050"


@pytest.fixture
def client(store: RunStore) -> TestClient:
    return TestClient(create_app(store), base_url=LOCAL)


def test_runs_list(client: TestClient) -> None:
    runs = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == [2, 1]
    done = runs[1]
    assert (done["status"], done["rounds_done"], done["rounds_planned"]) == ("finished", 2, 2)
    assert 0.0 <= done["best_auc"] <= 1.0
    assert runs[0]["status"] == "running" and runs[0]["best_auc"] is None


def test_run_detail_sites_and_privacy_levels(client: TestClient) -> None:
    body = client.get("/api/runs/1").json()
    assert body["run"]["config"] == {"local-epochs": 2}
    sites = {s["site"]: s for s in body["sites"]}
    assert set(sites) == {"north", "south", "node 5"}
    assert sites["north"]["privacy"]["level"] == "danger"  # 1.9 of 2.0: near the limit
    assert sites["north"]["privacy"]["fraction"] == pytest.approx(0.95)
    assert sites["south"]["privacy"]["level"] == "ok"
    assert sites["node 5"]["privacy"] is None and sites["node 5"]["failures"] == 1
    (checkpoint,) = body["checkpoints"]
    assert checkpoint["url"] == "/runs/1/checkpoints/2" and "path" not in checkpoint


def test_rounds_after_a_known_round(client: TestClient) -> None:
    body = client.get("/api/runs/1/rounds").json()
    assert body["status"] == "finished" and [r["round"] for r in body["rounds"]] == [1, 2]
    assert set(body["rounds"][0]["sites"]) == {"north", "south"}
    later = client.get("/api/runs/1/rounds", params={"after": 1}).json()["rounds"]
    assert [r["round"] for r in later] == [2]
    assert client.get("/api/runs/2/rounds").json()["rounds"] == []


def test_roc_and_confusion(client: TestClient) -> None:
    roc = client.get("/api/runs/1/roc").json()
    assert roc["round"] == 2 and roc["classes"] == ["low", "high"]
    assert roc["curves"][0]["fpr"][0] == 0.0 and roc["curves"][0]["fpr"][-1] == 1.0
    assert sum(map(sum, roc["confusion"])) == 45
    assert client.get("/api/runs/1/roc", params={"round": 1}).json()["round"] == 1
    missing = client.get("/api/runs/2/roc")
    assert missing.status_code == 404 and "no ROC curve" in missing.json()["detail"]


def test_checkpoint_download(client: TestClient, tmp_path: Path) -> None:
    response = client.get("/runs/1/checkpoints/2")
    assert response.status_code == 200 and response.content == b"\x00weights"
    assert "run-1-round-002.pt" in response.headers["content-disposition"]
    assert client.get("/runs/1/checkpoints/1").status_code == 404
    (tmp_path / "round-002.pt").unlink()
    assert client.get("/runs/1/checkpoints/2").status_code == 410


def test_events_and_unknown_runs(client: TestClient) -> None:
    kinds = [e["kind"] for e in client.get("/api/runs/1/events").json()["events"]]
    assert kinds[0] == "run-finished" and "site-failure" in kinds
    for path in ("/api/runs/9", "/api/runs/9/rounds", "/api/runs/9/sites", "/runs/9"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "no run with id 9" in response.text


def test_pages_render_and_escape(client: TestClient) -> None:
    runs = client.get("/")
    assert runs.status_code == 200 and "dc/&lt;b&gt;fedavg&lt;/b&gt;" in runs.text
    assert "<b>fedavg</b>" not in runs.text
    page = client.get("/runs/1").text
    for anchor in (
        'id="chart-global-auc"',
        'id="chart-sites-loss"',
        'id="sites-body"',
        'class="privacy-bar danger"',
        "no DP budget reported",
        "/vendor/plotly.min.js",
        "round-002.pt",
    ):
        assert anchor in page, anchor


def test_assets_are_served_locally(client: TestClient) -> None:
    plotly = client.get("/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/static/dashboard.css").status_code == 200


def test_read_only(client: TestClient) -> None:
    for method in ("post", "put", "delete", "patch"):
        assert getattr(client, method)("/api/runs").status_code == 405


# --------------------------------------------------------------------------- access


LOCAL_HOSTS = ["localhost", "localhost:8050", "127.0.0.1", "127.0.0.1:8050", "[::1]",
               "[::1]:8050", "LocalHost:1"]  # fmt: skip
FOREIGN_HOSTS = ["evil.example", "evil.example:8050", "localhost.evil.example",
                 "127.0.0.1.evil.example", "testserver", "192.0.2.10:8050", "[::2]:8050",
                 "[::1]x", ""]  # fmt: skip


@pytest.mark.parametrize("host", LOCAL_HOSTS)
def test_without_a_token_loopback_host_names_are_answered(store: RunStore, host: str) -> None:
    client = TestClient(create_app(store), base_url=LOCAL)
    assert client.get("/api/runs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_without_a_token_other_host_names_are_refused(store: RunStore, host: str) -> None:
    """DNS rebinding: a page on evil.example points its name at 127.0.0.1 and reads the
    dashboard with the browser's Host: evil.example."""
    client = TestClient(create_app(store), base_url=LOCAL)
    for path in ("/", "/api/runs", "/runs/1/checkpoints/2", "/static/dashboard.js"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 403, (host, path)
        assert "refused" in response.json()["detail"]


def test_a_real_server_refuses_a_rebound_host_name(store: RunStore) -> None:
    with serve_dashboard(create_app(store)) as base:
        assert httpx.get(f"{base}/api/runs", timeout=10).status_code == 200
        rebound = httpx.get(f"{base}/api/runs", headers={"Host": "evil.example"}, timeout=10)
        assert rebound.status_code == 403 and "evil.example" in rebound.json()["detail"]
        assert "runs" not in rebound.json()


def test_a_token_dashboard_may_be_served_under_another_name(store: RunStore) -> None:
    client = TestClient(create_app(store, token=TOKEN), base_url="http://dashboard.example")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/runs", headers=headers).status_code == 200


def test_token_is_required_when_set(store: RunStore) -> None:
    client = TestClient(create_app(store, token=TOKEN))
    for path in ("/", "/runs/1", "/api/runs", "/vendor/plotly.min.js", "/runs/1/checkpoints/2"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/runs").status_code == 401
    ok = client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_a_token_link_sets_a_cookie_for_the_browser(store: RunStore) -> None:
    client = TestClient(create_app(store, token=TOKEN))
    response = client.get(f"/runs/1?token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/runs/1"
    assert TOKEN_COOKIE in response.cookies
    assert client.get("/api/runs").status_code == 200  # the cookie now carries it


OFF_SITE = [
    "//evil.example/x",
    "/\\evil.example/x",
    "/\\/evil.example",
    "///evil.example",
    "/%2F%2Fevil.example/x",
    "/%5Cevil.example",
    "/%09/evil.example",
]


@pytest.mark.parametrize("path", OFF_SITE)
def test_the_token_redirect_stays_on_this_host(store: RunStore, path: str) -> None:
    client = TestClient(create_app(store, token=TOKEN), base_url=LOCAL)
    response = client.get(f"{LOCAL}{path}?token={TOKEN}&a=1", follow_redirects=False)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/") and location[1:2] not in ("/", "\\"), location
    assert httpx.URL(LOCAL).join(location).host == "127.0.0.1", location
    assert "evil.example" in location and location.endswith("?a=1")  # the path, kept local
    assert TOKEN not in location


def test_a_real_server_redirects_a_token_link_on_site(store: RunStore) -> None:
    """The raw request line ``GET //evil.example/x?token=T`` (no client rewrites it)."""
    with serve_dashboard(create_app(store, token=TOKEN)) as base:
        url = httpx.URL(base)
        with socket.create_connection((url.host, url.port), timeout=10) as conn:
            conn.sendall(
                f"GET //evil.example/x?token={TOKEN} HTTP/1.1\r\nHost: {url.netloc.decode()}"
                "\r\nConnection: close\r\n\r\n".encode()
            )
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    head = reply.decode("latin-1").split("\r\n\r\n", 1)[0].splitlines()
    assert head[0].split()[1] == "303", head
    (location,) = [
        line.split(":", 1)[1].strip() for line in head if line.lower().startswith("location:")
    ]
    assert location == "/evil.example/x"


def test_a_real_server_refuses_requests_without_the_token(store: RunStore) -> None:
    with serve_dashboard(create_app(store, token=TOKEN)) as base:
        assert httpx.get(f"{base}/api/runs", timeout=10).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{base}/api/runs", headers=headers, timeout=10).status_code == 200


def _args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "db": "runs.sqlite",
        "host": "127.0.0.1",
        "port": 8050,
        "token": None,
        "refresh": 2.0,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "dashboard.example"])
def test_the_command_refuses_other_addresses_without_a_token(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDFUSION_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match=rf"--host {host} is reachable from other machines"):
        run_dashboard(_args(host=host))


def test_the_command_checks_options_before_opening_the_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--port must be in 1..65535, got 0") as info:
        run_dashboard(_args(port=0, refresh=0, token="short"))
    assert "--refresh must be > 0" in str(info.value)
    assert "at least 16 characters" in str(info.value)
    with pytest.raises(ValueError, match="no SQLite file at"):
        run_dashboard(_args(db=str(tmp_path / "missing.sqlite")))


LOOPBACK = [
    ("127.0.0.1", True),
    ("127.0.0.2", True),
    ("localhost", True),
    ("::1", True),
    ("[::1]", True),
    ("0.0.0.0", False),
    ("10.0.0.5", False),
    ("example.org", False),
]


@pytest.mark.parametrize(("host", "expected"), LOOPBACK)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_simulation_default_store_and_hint(tmp_path: Path, store: RunStore) -> None:
    assert simulation_db_url(None, None, tmp_path) == f"sqlite:///{tmp_path}/runs.sqlite"
    assert simulation_db_url("none", None, tmp_path) == ""
    with pytest.raises(ValueError, match=r"run store: cannot open postgresql\+psycopg://u:\*\*\*@"):
        simulation_db_url(None, "postgresql://u:pw@127.0.0.1:1/db", tmp_path)
    hint = dashboard_hint(store.url, prog=".venv/bin/fedfusion")
    assert hint.startswith("dashboard: .venv/bin/fedfusion dashboard --db ")
    assert "runs.sqlite" in hint and hint.endswith("http://127.0.0.1:8050/runs/2)")
