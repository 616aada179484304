"""Platform overhead: a 2-site federated MUF-Net run vs a plain PyTorch loop, same steps.

The federated run is ``simulation.runner.simulate`` (Flower's simulation engine, the real
ServerApp/ClientApp, one Ray actor so the two sites train one after the other on one core).
The plain loop does the same work in this process on one core, without Flower: per round
and site it loads the global weights, trains ``E`` local epochs with the same loader seeds,
optimiser and loss (``client.train.train_local``), averages the weights by examples, and
evaluates every site's test rows. Both start from the same initial weights, so the final
models should agree (reported as ``final_model_max_abs_difference``).

Reported: CPU seconds per round (for the federation: of every process of the run, Ray's
included; robust to other load on a shared machine) and wall seconds per round (medians over
rounds 2..R; round 1 also builds each site's session and is reported apart); the per-round
ratios ``federated / plain`` (target <= 1.10, i.e. at most 10% overhead) and the engine's
one-off start-up (wall time minus R steady rounds: Ray, the actor process and its imports,
the sites' sessions).

    python -m benchmarks.platform_overhead [--quick]
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks._common import Target, bench_main, ratio
from client.dataset import make_loader
from client.manifest import load_manifest
from client.site import RoundSettings, training_seed
from client.train import evaluate, recalibrate_batchnorm, train_local
from models import create_model_for_task
from server.config import RunConfig
from simulation.runner import SimulationOptions, simulate
from simulation.scenario import Scenario
from simulation.synthetic import generate_dual_center

__all__ = ["run", "main", "plain_loop", "federated_run", "bench_setup"]

DESCRIPTION = __doc__.splitlines()[0]
_log = logging.getLogger(__name__)


def bench_setup(quick: bool) -> dict[str, Any]:
    """Sizes: the CPU-sized MUF-Net round of the ``dual-center`` scenario (the demo): 80 + 60
    patients with 2-4 image pairs each, EfficientNet-b0 branches at 96 px, 2 local epochs."""
    if quick:
        return {
            "patients": {"center-a": 8, "center-b": 6},
            "images_per_patient": (2, 3),
            "image_size": 32,
            "backbone": "test_efficientnet",
            "rounds": 2,
            "local_epochs": 1,
        }
    return {
        "patients": {"center-a": 80, "center-b": 60},
        "images_per_patient": (2, 4),
        "image_size": 96,
        "backbone": "efficientnet_b0",
        "rounds": 3,
        "local_epochs": 2,
    }


def _run_config(setup: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "task": "rcc-grading",
        "backbone": setup["backbone"],
        "image-size": setup["image_size"],
        "num-server-rounds": setup["rounds"],
        "local-epochs": setup["local_epochs"],
        "batch-size": 16,
        "learning-rate": 0.02,
        "seed": seed,
        "client-threads": 1,
        "min-train-nodes": len(setup["patients"]),
        "min-available-nodes": len(setup["patients"]),
    }


def make_data(setup: dict[str, Any], out_dir: Path, seed: int = 0) -> Path:
    return generate_dual_center(
        out_dir,
        patients_per_site=setup["patients"],
        images_per_patient=setup["images_per_patient"],
        image_size=setup["image_size"],
        high_grade_fraction=0.26,
        modality_signal=2.5,
        seed=seed,
    )


def plain_loop(manifest: Path, run_config: dict[str, Any]) -> dict[str, Any]:
    """The federation's work without Flower, in this process; seconds per round."""
    config = RunConfig.from_mapping(run_config)
    task = config.task_spec()
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    model = create_model_for_task(task, dp_safe=config.uses_dp_model)  # the server's init
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    sites = sorted(run_config_sites(manifest))
    manifests = {s: load_manifest(manifest, task, site=s, seed=config.seed) for s in sites}
    # decoded images kept across rounds, as a site does (client.site, cache-images=auto)
    caches: dict[tuple[str, str], dict] = {
        (s, split): {} for s in sites for split in ("train", "test")
    }
    rounds_seconds, rounds_cpu = [], []
    for server_round in range(1, config.num_server_rounds + 1):
        started = time.perf_counter()
        cpu_started = time.process_time()
        rounds = RoundSettings.from_config({**config.client_config(), "server-round": server_round})
        states, weights = [], []
        for site in sites:
            model.load_state_dict(global_state)
            loader = make_loader(
                manifests[site],
                "train",
                batch_size=rounds.batch_size,
                train=True,
                balanced=rounds.class_balanced_sampling,
                seed=rounds.seed + 1000 * rounds.server_round,
                image_cache=caches[site, "train"],
            )
            torch.manual_seed(training_seed(rounds.seed, rounds.server_round, site))
            result = train_local(
                model,
                loader,
                config=rounds.train,
                class_counts=manifests[site].class_counts("train"),
            )
            if rounds.bn_recalibration:  # what a site does after its local epochs
                rows = make_loader(
                    manifests[site],
                    "train",
                    batch_size=rounds.batch_size,
                    train=False,
                    image_cache=caches[site, "train"],
                )
                recalibrate_batchnorm(model, rows)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(result.num_examples)
        total = float(sum(weights))
        global_state = {
            key: sum(
                state[key].double() * (w / total) for state, w in zip(states, weights, strict=True)
            ).to(global_state[key].dtype)
            for key in global_state
        }
        model.load_state_dict(global_state)
        for site in sites:
            loader = make_loader(
                manifests[site],
                rounds.eval_split,
                batch_size=max(rounds.batch_size, 32),
                train=False,
                image_cache=caches.setdefault((site, rounds.eval_split), {}),
            )
            evaluate(model, loader, num_classes=task.num_classes, n_bins=rounds.score_bins)
        rounds_seconds.append(time.perf_counter() - started)
        rounds_cpu.append(time.process_time() - cpu_started)
    return {
        "round_seconds": rounds_seconds,
        "round_cpu_seconds": rounds_cpu,
        "final_state": global_state,
    }


def tree_cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of (this process and the ClientApp actors, Ray's other
    processes: raylet, GCS, agents)."""
    me = psutil.Process()
    work = me.cpu_times().user + me.cpu_times().system
    daemons = 0.0
    for process in me.children(recursive=True):
        try:
            times = process.cpu_times()
            name = " ".join(process.cmdline()[:1])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "ClientAppActor" in name:
            work += times.user + times.system
        else:
            daemons += times.user + times.system
    return work, daemons


def run_config_sites(manifest: Path) -> list[str]:
    import pandas as pd

    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return sorted(set(frame["site"]))


def federated_run(manifest: Path, run_config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The same run through Flower's simulation engine; per-round and start-up seconds."""
    scenario = Scenario(
        name="platform-overhead",
        description="platform overhead benchmark",
        task=str(run_config["task"]),
        data={},
        run=dict(run_config),
    )
    marks = [tree_cpu_seconds()]

    def _round_done(_method: str, _record: object) -> None:
        marks.append(tree_cpu_seconds())  # CPU of every process at each round's end

    started = time.perf_counter()
    results = simulate(
        scenario,
        SimulationOptions(out_dir=out_dir, manifest=manifest, seed=int(run_config["seed"]), cpus=1),
        on_round_end=_round_done,
    )
    wall = time.perf_counter() - started
    (entry,) = results["runs"]
    rounds = [float(r["seconds"]) for r in entry["rounds"]]
    final = torch.load(out_dir / "fedavg" / "global_model.pt", weights_only=True)
    cpu = [sum(b) - sum(a) for a, b in zip(marks, marks[1:], strict=False)]
    work = [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)]
    return {
        "round_seconds": rounds,
        "round_cpu_seconds": cpu,
        "round_work_cpu_seconds": work,
        "wall_seconds": wall,
        "final_state": final,
    }


def _max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(
        float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()
    )


def run(quick: bool = False) -> dict:
    setup = bench_setup(quick)
    seed = 0
    with tempfile.TemporaryDirectory(prefix="fedfusion-overhead-") as tmp:
        manifest = make_data(setup, Path(tmp) / "data", seed)
        run_config = _run_config(setup, seed)
        plain_before = plain_loop(manifest, run_config)
        federated = federated_run(manifest, run_config, Path(tmp) / "fed")
        plain_after = plain_loop(manifest, run_config)
    later = slice(1, None) if setup["rounds"] > 1 else slice(None)
    plain_rounds = plain_before["round_seconds"][later] + plain_after["round_seconds"][later]
    fed_rounds = federated["round_seconds"][later]
    plain_round = statistics.median(plain_rounds)
    fed_round = statistics.median(fed_rounds)
    plain_cpu = statistics.median(
        plain_before["round_cpu_seconds"][later] + plain_after["round_cpu_seconds"][later]
    )
    fed_cpu = statistics.median(federated["round_cpu_seconds"][later])
    fed_work = statistics.median(federated["round_work_cpu_seconds"][later])
    # everything beyond R steady rounds: Ray, actor processes (imports), site sessions
    startup = federated["wall_seconds"] - setup["rounds"] * fed_round
    return {
        "name": "platform_overhead",
        "description": DESCRIPTION,
        "setup": setup,
        "plain_round_seconds": {
            "before": plain_before["round_seconds"],
            "after": plain_after["round_seconds"],
        },
        "federated_round_seconds": federated["round_seconds"],
        "plain_round_cpu_seconds": {
            "before": plain_before["round_cpu_seconds"],
            "after": plain_after["round_cpu_seconds"],
        },
        "federated_round_cpu_seconds": federated["round_cpu_seconds"],
        "federated_round_work_cpu_seconds": federated["round_work_cpu_seconds"],
        "federated_wall_seconds": federated["wall_seconds"],
        "engine_startup_seconds": startup,
        "final_model_max_abs_difference": _max_abs_difference(
            plain_before["final_state"], federated["final_state"]
        ),
        "per_round_overhead": ratio(fed_round, plain_round) - 1,
        "ratios": {
            "federated_over_plain_round_cpu": ratio(fed_cpu, plain_cpu),
            "federated_over_plain_round_cpu_without_ray_daemons": ratio(fed_work, plain_cpu),
            "federated_over_plain_round": ratio(fed_round, plain_round),
            "first_round_federated_over_plain": ratio(
                federated["round_seconds"][0], plain_before["round_seconds"][0]
            ),
            "startup_over_plain_round": ratio(startup, plain_round),
        },
        "targets": {
            "federated_over_plain_round_cpu": Target(
                1.10, note="<= 10% overhead per round (CPU time)"
            ).to_dict(),
            "federated_over_plain_round": Target(
                1.10, note="<= 10% overhead per round (wall time; noisy on a shared machine)"
            ).to_dict(),
        },
        "headline": {
            "plain CPU seconds per round (median, rounds 2..R)": plain_cpu,
            "federated CPU seconds per round, all processes (median, rounds 2..R)": fed_cpu,
            "federated CPU seconds per round, server + ClientApp actors": fed_work,
            "plain seconds per round (median, rounds 2..R)": plain_round,
            "federated seconds per round (median, rounds 2..R)": fed_round,
            "per-round overhead (federated / plain - 1)": ratio(fed_round, plain_round) - 1,
            "engine start-up seconds (once)": startup,
            "final model max |difference|": _max_abs_difference(
                plain_before["final_state"], federated["final_state"]
            ),
        },
    }


def main() -> None:
    bench_main(run, DESCRIPTION)


if __name__ == "__main__":
    main()
