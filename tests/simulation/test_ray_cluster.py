"""``--ray-address``: a simulation joins a Ray cluster that is already running.

Starts a Ray head on 127.0.0.1 (``ray start --head --block``, 2 CPUs, own ports and temp
dir), runs a tiny 2-site simulation against it with bounded per-site resources, checks the
cluster ran it, and stops the head by its process group (never ``ray stop``, which would end
every Ray process of this user on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulation.cli import main

pytestmark = pytest.mark.slow

SCENARIO = """
description = "tiny dual-center for the Ray cluster test"
task = "rcc-grading"

[data]
generator = "dual-center"
sites = { north = 6, south = 6 }
images-per-patient = [1, 1]
image-size = 32
high-grade-fraction = 0.4

[run]
backbone = "test_efficientnet"
image-size = 32
num-server-rounds = 1
batch-size = 8
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on {port} within {timeout} s")


@pytest.fixture()
def ray_head() -> Iterator[str]:
    ray = Path(sys.executable).parent / "ray"
    gcs, node, objects, client, agent, agent_grpc, runtime_env, metrics = _free_ports(8)
    workers = _free_ports(1)[0]
    temp = tempfile.mkdtemp(prefix="ff-ray-", dir="/tmp")  # unix socket paths must be short
    command = [str(ray), "start", "--head", "--block", "--disable-usage-stats"]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2"]
    command += ["--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", temp]
    command += ["--node-manager-port", str(node), "--object-manager-port", str(objects)]
    command += ["--ray-client-server-port", str(client)]
    command += ["--dashboard-agent-listen-port", str(agent)]
    command += ["--dashboard-agent-grpc-port", str(agent_grpc)]
    command += ["--runtime-env-agent-port", str(runtime_env)]
    command += ["--metrics-export-port", str(metrics)]
    command += ["--min-worker-port", str(workers), "--max-worker-port", str(workers + 40)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_for_port(gcs, process)
        yield f"127.0.0.1:{gcs}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the head, its raylet, GCS and workers
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_simulation_runs_on_an_existing_ray_cluster(ray_head: str, tmp_path: Path) -> None:
    import ray

    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out"
    args = ["simulate", str(scenario), "--ray-address", ray_head, "--client-cpus", "1"]
    assert main([*args, "--out", str(out), "--db", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert set(run["final"]["sites"]) == {"north", "south"}
    assert [r["round"] for r in run["rounds"]] == [1]
    ray.init(address=ray_head, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.cluster_resources().get("CPU") == 2.0  # the cluster we started
        assert len(ray._private.state.jobs()) >= 2  # the simulation's driver and this one
    finally:
        ray.shutdown()
