"""A real deployment on 127.0.0.1: SuperLink with TLS + node auth + state database, two
registered SuperNodes started with `fedfusion site run`, one `flwr run`, and a SuperNode with an
unregistered key that is refused.

Everything runs as separate processes, as at a hospital: `fedfusion server start` (certificates
from :mod:`server.certs`), `flwr supernode register` per site key, `fedfusion site run` per site
(each with its own runtime port), and `flwr run` from the repository root with a connection in
``$FLWR_HOME/config.toml`` that trusts only the test CA. Ports are picked at runtime; every
process started here, and every process those started, is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.keys import create_site_keys
from server.certs import create_superlink_certificates
from simulation.synthetic import generate_dual_center

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to stop children"),
]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FEDFUSION = [sys.executable, "-m", "simulation.cli"]
CONNECTION = "fedfusion-test"
SITES = ("center-a", "center-b")
# Seconds for `flwr run`: two tiny rounds; one round measured 40-130 s on 2 busy cores, and
# over 180 s when eight test sessions shared them (300 s then timed out after round 1).
RUN_TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), including detached ones."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class _Processes:
    """Starts processes in their own sessions; stops them and their descendants (TERM, KILL)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.logs,
                start_new_session=True,
            )  # fmt: skip
        self.started[name] = proc
        return proc

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def stop_all(self) -> None:
        pids = {p for proc in self.started.values() for p in _descendants(proc.pid)}
        for proc in reversed(list(self.started.values())):
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in pids:  # detached helpers (flower-superexec, app processes) still alive?
            _signal(pid, signal.SIGTERM)
        time.sleep(0.5)
        for pid in pids:
            _signal(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[_Processes, Path]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    env.update(
        FLWR_HOME=str(tmp_path / "flwr-home"),
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
    )
    procs = _Processes(tmp_path, env)
    try:
        yield procs, tmp_path
    finally:
        procs.stop_all()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def _flwr(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_tls_node_auth_deployment(deployment: tuple[_Processes, Path]) -> None:
    procs, tmp = deployment
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = time.perf_counter() - started

    certs = create_superlink_certificates(
        tmp / "certs", hosts=["127.0.0.1"], include_localhost=True
    )
    keys = {name: create_site_keys(tmp / "keys", name=name) for name in (*SITES, "rogue")}
    manifest = generate_dual_center(
        tmp / "data", patients_per_site=((SITES[0], 6), (SITES[1], 6)), images_per_patient=(1, 2),
        image_size=32, high_grade_fraction=0.4, seed=1,
    )  # fmt: skip
    link_port, *site_ports = (_free_port() for _ in range(4))
    home = tmp / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{link_port}"\nroot-certificates = "{certs.ca_cert}"\n'
    )

    link = procs.start(
        "superlink",
        [*FEDFUSION, "server", "start", "--certs", str(certs.ca_cert.parent),
         "--port", str(link_port), "--database", str(tmp / "state.db")],
    )  # fmt: skip
    _wait_for_port(link_port, link, timeout=90)
    mark("superlink listening")
    node_ids = []
    for name in SITES:
        register = ("supernode", "register", str(keys[name].public_key), CONNECTION)
        for _attempt in range(10):
            done = _flwr(procs.env, *register, "--format", "json")
            if done.returncode == 0:
                break
            time.sleep(2)
        assert done.returncode == 0, f"register {name}: {done.stdout}{done.stderr}"
        node_ids.append(json.loads(done.stdout[done.stdout.index("{") :])["node-id"])
    mark("sites registered")
    assert "--enable-supernode-auth" in procs.log("superlink")
    assert (tmp / "state.db").stat().st_size > 0

    def site_run(name: str, site_id: str, key: Path, port: int) -> subprocess.Popen[bytes]:
        return procs.start(
            name,
            [*FEDFUSION, "site", "run", "--manifest", str(manifest), "--site-id", site_id,
             "--superlink", f"127.0.0.1:{link_port}", "--root-certificates", str(certs.ca_cert),
             "--auth-key", str(key), "--port", str(port), "--no-image-check"],
        )  # fmt: skip

    for name, port in zip(SITES, site_ports, strict=False):
        site_run(name, name, keys[name].private_key, port)
    # A machine that claims to be center-a but holds a key nobody registered.
    rogue = site_run("rogue", SITES[0], keys["rogue"].private_key, site_ports[2])

    out = tmp / "out"
    run_config = (
        "backbone='test_efficientnet' image-size=32 num-server-rounds=2 batch-size=4 "
        f"score-bins=10 local-epochs=1 out-dir='{out}'"
    )
    run = _flwr(procs.env, "run", str(REPO), CONNECTION, "--run-config", run_config, "--stream",
                timeout=RUN_TIMEOUT)  # fmt: skip
    mark("flwr run finished")
    context = f"flwr run: {run.stdout[-3000:]}{run.stderr[-2000:]}\n" + "".join(
        f"--- {n}:\n{procs.log(n)}\n" for n in ("superlink", *SITES)
    )
    assert (out / "history.json").is_file(), context
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2], context
    final = history["rounds"][-1]
    assert sorted(final["train"]) == sorted(SITES), context
    assert sorted(final["sites"]) == sorted(SITES), context
    assert final["global"]["n"] == sum(final["sites"][s]["n"] for s in SITES)

    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == 2 and sorted(audit[0]["answered"]) == sorted(SITES)
    assert len(audit[0]["asked"]) == 2 and audit[0]["missing"] == [] and audit[0]["failed"] == []
    for site in SITES:
        entry = audit[0]["sites"][site]
        assert entry["num-examples"] > 0 and entry["update-l2-norm"] > 0

    # The SuperNode whose key nobody registered is turned away and exits.
    assert rogue.wait(timeout=60) != 0, procs.log("rogue")
    # the whole log: its orphaned SuperExec helper keeps appending retries until stopped
    rogue_log = (tmp / "rogue.log").read_text(errors="replace")
    assert "Failed to activate SuperNode" in rogue_log, procs.log("rogue")

    # The registrations live in the database file: a restarted SuperLink still knows the sites.
    os.killpg(link.pid, signal.SIGTERM)
    link.wait(timeout=30)
    again = procs.start("superlink-restarted", link.args)  # type: ignore[arg-type]
    _wait_for_port(link_port, again, timeout=90)
    listed = _flwr(procs.env, "supernode", "ls", CONNECTION, "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for node_id in node_ids:
        assert str(node_id) in listed.stdout, listed.stdout
    mark("restarted superlink lists the sites")
    print("deployment test timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()))
