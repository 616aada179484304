"""Run a scenario through Flower's simulation engine with the real ServerApp/ClientApp code.

Simulation only swaps the runtime and where site data comes from: the runner wraps the
ClientApp so that each simulated node sees the node config a real site would pass
(``data-path``, ``site-id``), and wraps the ServerApp so that it sees the run config that
``flwr run --run-config`` would pass. Everything else is the deployment code path.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from client import app as client_app_module
from client.manifest import ManifestError, ManifestProblem, read_manifest_table
from models._options import look_up_option
from models.tasks import TaskSpec
from server.app import FederationResult, run_federation
from server.config import RunConfig, RunConfigError
from server.config_checks import federation_size_problems
from server.resume import RESUME_FILE
from server.secagg_app import run_secure_federation
from simulation.baselines import run_local, run_pooled, site_manifests
from simulation.ckd import prepare_ckd_sites
from simulation.faults import Poison, poison_reply
from simulation.results_schema import validate_results
from simulation.scenario import Scenario
from simulation.secagg import as_site, simulated_secagg_client
from simulation.synthetic import generate_dual_center
from simulation.synthetic_biopsy import generate_biopsy
from simulation.synthetic_ct import generate_ct_clinical
from simulation.synthetic_lymph import generate_lymph_node
from strategies.central_dp import central_dp_epsilon
from strategies.history import RoundRecord, RunHistory, json_safe

__all__ = ["SimulationOptions", "client_resources", "simulate", "METHODS", "prepare_data"]

_log = logging.getLogger(__name__)

# Federated methods run the ServerApp with that strategy; the baselines train without Flower.
FEDERATED_METHODS = ("fedavg", "fedprox", "fedbn", "fedadam", "fedyogi")
FEDERATED_METHODS += ("fedmedian", "fedtrimmedavg", "krum")  # robust aggregation
BASELINE_METHODS = ("local", "pooled")
METHODS = FEDERATED_METHODS + BASELINE_METHODS

_GENERATORS: dict[str, Callable[..., Path]] = {
    "dual-center": generate_dual_center,
    "lymph-node": generate_lymph_node,
    "ckd-csv": prepare_ckd_sites,
    "ct-clinical": generate_ct_clinical,
    "biopsy": generate_biopsy,
}


@dataclass(frozen=True)
class SimulationOptions:
    """Command-line level choices for one simulation.

    Args:
        out_dir: where data (when generated), results.json, report.md and plots go.
        methods: training methods to run. Default ("fedavg",).
        rounds: server rounds (overrides the scenario); None keeps the scenario's.
        seed: seeds data generation, splits, model init and sampling. Default 0.
        manifest: a user's manifest with a ``site`` column instead of generated data.
        overrides: further run-config overrides (kebab-case keys).
        cpus: CPUs Ray may use; default all of this machine's.
        cpus_per_site: CPUs reserved per simulated site (bounds parallel sites). Default 1.
        ray_address: an existing Ray cluster to join instead of starting one (``auto`` or
            ``HOST:PORT``); Ray's own resources are then the cluster's.
        client_gpus: GPUs (fractions allowed) reserved per simulated site. Default 0.
        run_label: appended to run names in the run store (e.g. ``" seed 0 fold 1"``).
        site_budget: DP settings every simulated site gets as its own node config
            (``dp-epsilon``, ``dp-delta``, ``dp-max-grad-norm``); empty = no local DP.
        resume: continue each federated method from the resume point a crashed simulation
            left in ``out_dir/METHOD`` (methods without one start from round 1).
        site_epsilon: one site's own ``dp-epsilon`` (by site name), over ``site_budget``.
        task: an ad-hoc task (``simulation.adhoc``) replacing the scenario's preset; it
            travels to the sites in the ``task-json`` run-config key. Default None.
    """

    out_dir: Path
    methods: tuple[str, ...] = ("fedavg",)
    rounds: int | None = None
    seed: int = 0
    manifest: Path | None = None
    overrides: Mapping[str, Any] | None = None
    cpus: int | None = None
    cpus_per_site: float = 1.0
    ray_address: str | None = None
    client_gpus: float = 0.0
    run_label: str = ""
    verbose: bool = False
    site_budget: Mapping[str, float] | None = None
    resume: bool = False
    site_epsilon: Mapping[str, float] | None = None
    task: TaskSpec | None = None

    def per_site(self, sites: Sequence[str]) -> dict[str, dict[str, float]]:
        """Node-config overrides of single sites; refuses names that are not ``sites``."""
        unknown = sorted(set(self.site_epsilon or {}) - set(sites))
        if unknown:
            raise ValueError(
                f"--site-dp-epsilon names {', '.join(unknown)}, which is not a site of this "
                f"simulation (sites: {', '.join(sites)})"
            )
        return {site: {"dp-epsilon": float(e)} for site, e in (self.site_epsilon or {}).items()}

    @property
    def local_dp(self) -> bool:
        """Whether any simulated site trains with a DP budget."""
        return bool(self.site_budget or self.site_epsilon)


def prepare_data(scenario: Scenario, out_dir: Path, *, seed: int) -> Path:
    """Generate the scenario's synthetic site data (PNG + manifest) and return the manifest."""
    options = {k.replace("-", "_"): v for k, v in scenario.data.items()}
    generator_name = str(options.pop("generator", ""))
    if not generator_name:
        raise ValueError(f"scenario {scenario.name!r} has no [data] generator; pass --manifest CSV")
    generator = _GENERATORS[look_up_option("data generator", generator_name, _GENERATORS)]
    if "sites" in options:
        options["patients_per_site"] = tuple(dict(options.pop("sites")).items())
    if "images_per_patient" in options:
        options["images_per_patient"] = tuple(options["images_per_patient"])
    return generator(out_dir, seed=seed, **options)


def _sites_of(manifest: Path) -> list[str]:
    """The ``site`` values of a multi-site manifest (ManifestError for a file that is not one)."""
    frame = read_manifest_table(manifest)  # ManifestError: not found, binary, bad quoting, ...
    if "site" not in frame.columns:
        problem = (
            "a simulation needs a 'site' column to know which rows belong to which "
            "simulated hospital"
        )
        raise ManifestError(manifest, [ManifestProblem(None, "site", problem)])
    sites = sorted(s for s in set(frame["site"]) if s)
    if len(sites) < 2:
        problem = f"a federation needs at least 2 sites, found {sites}"
        raise ManifestError(manifest, [ManifestProblem(None, "site", problem)])
    return sites


def _simulated_client(
    manifest: Path,
    sites: Sequence[str],
    site_budget: Mapping[str, float] | None = None,
    poison: Poison | None = None,
    *,
    per_site: Mapping[str, Mapping[str, float]] | None = None,
) -> ClientApp:
    """The real ClientApp functions, given the node config a real site would pass; a
    ``poison`` site's train replies are rewritten (simulation.faults)."""
    app = ClientApp()
    site_list = list(sites)

    def _as_site(context: Context) -> Context:
        return as_site(
            context, manifest=manifest, sites=site_list, site_budget=site_budget, per_site=per_site
        )

    @app.train(mods=client_app_module.TRAIN_MODS)
    def _train(msg: Message, context: Context) -> Message:
        reply = client_app_module.train(msg, _as_site(context))
        if poison is not None and context.node_config["site-id"] == poison.site:
            server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
            reply = poison_reply(reply, msg.content["arrays"], poison, server_round)
        return reply

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return client_app_module.evaluate(msg, _as_site(context))

    return app


def _run_fedavg(
    run_config: dict[str, Any],
    manifest: Path,
    sites: Sequence[str],
    options: SimulationOptions,
    on_round_end: Callable[[RoundRecord], None],
) -> FederationResult:
    from flwr.simulation import run_simulation  # heavy import (Ray)

    # Ray's future default (keep CUDA_VISIBLE_DEVICES as it is); also silences its notice.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

    outcome: dict[str, FederationResult] = {}
    server_app = ServerApp()
    secure = RunConfig.from_mapping(run_config).secagg  # SecAgg+: legacy apps (server.secagg_app)

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        if secure:
            outcome["result"] = run_secure_federation(
                grid, context, run_config=run_config, on_round_end=on_round_end
            )
            return
        outcome["result"] = run_federation(grid, run_config, on_round_end=on_round_end)

    init_args: dict[str, Any] = {"include_dashboard": False}
    if options.ray_address:
        init_args["address"] = options.ray_address
    else:
        init_args["num_cpus"] = options.cpus or os.cpu_count() or 1
    if not options.verbose:
        init_args["log_to_driver"] = False
        init_args["logging_level"] = logging.ERROR
    per_site = options.per_site(sites)
    client_app = (
        simulated_secagg_client(manifest, sites, options.site_budget, per_site=per_site)
        if secure
        else _simulated_client(
            manifest,
            sites,
            options.site_budget,
            Poison.from_run_config(run_config, sites),
            per_site=per_site,
        )
    )
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(sites),
        backend_config={
            "client_resources": client_resources(options),
            "init_args": init_args,
        },
        verbose_logging=options.verbose,
    )
    if "result" not in outcome:
        raise RuntimeError("the simulated federation ended without a result; rerun with --verbose")
    return outcome["result"]


def client_resources(options: SimulationOptions) -> dict[str, float]:
    """Ray resources each simulated site reserves; they bound how many sites run at once."""
    problems = []
    if not options.cpus_per_site > 0:
        problems.append(f"client CPUs must be > 0, got {options.cpus_per_site}")
    if not options.client_gpus >= 0:
        problems.append(f"client GPUs must be >= 0, got {options.client_gpus}")
    if options.cpus and not options.ray_address and options.cpus_per_site > options.cpus:
        problems.append(
            f"each site asks for {options.cpus_per_site} CPUs but the simulation has "
            f"{options.cpus}: no site could ever start"
        )
    if problems:
        raise ValueError("invalid simulation resources: " + "; ".join(problems))
    return {"num_cpus": float(options.cpus_per_site), "num_gpus": float(options.client_gpus)}


def simulate(
    scenario: Scenario,
    options: SimulationOptions,
    *,
    on_round_end: Callable[[str, RoundRecord], None] | None = None,
    write_results: bool = True,
) -> dict[str, Any]:
    """Run every requested method and (by default) write ``results.json``; returns the results.

    Every run's final model is saved under ``out_dir``: ``<method>/global_model.pt``,
    ``local/<site>/global_model.pt`` and ``pooled/global_model.pt``.
    """
    methods = tuple(look_up_option("method", m, METHODS) for m in options.methods)
    run_config: dict[str, Any] = {**scenario.run, "task": scenario.task, "seed": options.seed}
    run_config.update(options.overrides or {})
    if options.task is not None:
        run_config.update({"task": options.task.name, "task-json": options.task.to_json()})
    if options.rounds is not None:
        run_config["num-server-rounds"] = options.rounds
    if options.local_dp:
        run_config["dp-safe-model"] = True  # sites with a DP budget need a GroupNorm model
    RunConfig.from_mapping(run_config)  # names, ranges, combinations: before generating data
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = options.manifest or prepare_data(scenario, out_dir / "data", seed=options.seed)
    sites = _sites_of(manifest)
    options.per_site(sites)  # unknown site names fail before anything starts
    run_config.setdefault("min-train-nodes", len(sites))
    run_config.setdefault("min-available-nodes", len(sites))
    config = RunConfig.from_mapping(run_config)  # fail before starting Ray
    too_few = federation_size_problems(config, sites)
    if too_few and any(m in FEDERATED_METHODS for m in methods):
        raise RunConfigError("invalid run config: " + "; ".join(too_few))
    client_resources(options)
    for method in (m for m in methods if m in FEDERATED_METHODS):
        RunConfig.from_mapping({**run_config, "strategy": method})  # e.g. secagg is FedAvg only
    task = config.task_spec()
    # the task as run (preset or ad-hoc, with overrides): `fedfusion site check --task-json`
    (out_dir / "task.json").write_text(task.to_json() + "\n", encoding="utf-8")

    runs = []
    for method in methods:
        if method in BASELINE_METHODS:
            runs += _run_baseline(method, manifest, sites, config, options, on_round_end)
            continue
        method_config = {**run_config, "strategy": method, "out-dir": str(out_dir / method)}
        method_config.setdefault("run-name", f"{scenario.name}/{method}")
        if options.resume and (out_dir / method / RESUME_FILE).is_file():
            method_config["resume-run"] = str(out_dir / method)
        method_config.setdefault("run-name", f"{scenario.name}/{method}{options.run_label}")
        started = time.perf_counter()

        def _round_done(record: RoundRecord, _method: str = method) -> None:
            if on_round_end is not None:
                on_round_end(_method, record)

        outcome = _run_fedavg(method_config, manifest, sites, options, _round_done)
        runs.append(
            _run_entry(
                method,
                outcome.history,
                time.perf_counter() - started,
                outcome.config,
                central_dp=outcome.central_dp,
                dp_sites=sites if options.site_budget else list(options.site_epsilon or {}),
            )
        )

    results = {
        "scenario": scenario.name,
        "task": task.to_dict(),
        "seed": options.seed,
        "sites": sites,
        "manifest": str(manifest),
        "config": config.to_dict(),
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "runs": runs,
    }
    results = json_safe(results)
    validate_results(results)
    if write_results:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _run_baseline(
    method: str,
    manifest: Path,
    sites: Sequence[str],
    config: RunConfig,
    options: SimulationOptions,
    on_round_end: Callable[[str, RoundRecord], None] | None,
) -> list[dict[str, Any]]:
    if options.local_dp or config.central_dp:
        raise ValueError(f"method {method!r} has no DP variant; run it without DP options")
    torch.set_num_threads(options.cpus or os.cpu_count() or 1)
    manifests = site_manifests(manifest, sites, config)
    if method == "pooled":
        history, seconds = run_pooled(
            manifests,
            config,
            on_round_end=on_round_end,
            save_to=options.out_dir / "pooled" / "global_model.pt",
        )
        return [_run_entry("pooled", history, seconds, config)]
    return [
        _run_entry(name, history, seconds, config)
        for name, (history, seconds) in run_local(
            manifests, config, on_round_end=on_round_end, save_dir=options.out_dir / "local"
        ).items()
    ]


def _run_entry(
    method: str,
    history: RunHistory,
    wall_seconds: float,
    config: RunConfig,
    *,
    central_dp: Mapping[str, Any] | None = None,
    dp_sites: Sequence[str] = (),
) -> dict[str, Any]:
    rounds = [r.to_results() for r in history.rounds]
    last = history.last
    final = {
        "global": json_safe(last.global_metrics) if last else {},
        "sites": json_safe(last.sites) if last else {},
        "summary": last.global_summary if last else {},
    }
    entry: dict[str, Any] = {
        "method": method,
        "rounds": rounds,
        "final": final,
        "wall_seconds": wall_seconds,
    }
    # a site with a budget that declined every round has spent nothing
    spent: dict[str, float] = dict.fromkeys(dp_sites, 0.0)
    spent |= {
        site: metrics["dp-epsilon-spent"]
        for record in history.rounds
        for site, metrics in record.train.items()
        if isinstance(metrics.get("dp-epsilon-spent"), float)
        and metrics["dp-epsilon-spent"] == metrics["dp-epsilon-spent"]  # not NaN
    }
    if spent:
        entry["epsilon"] = spent  # the last round each site trained in
    if config.central_dp:  # the server's accountant: per round and cumulative epsilon
        entry["central_dp"] = {
            "clipping_norm": config.central_dp_clipping_norm,
            **(
                central_dp
                or {
                    "noise_multiplier": config.central_dp_noise_multiplier,
                    "delta": config.central_dp_delta,
                    "epsilon": central_dp_epsilon(
                        noise_multiplier=config.central_dp_noise_multiplier,
                        rounds=len(history.rounds),
                        delta=config.central_dp_delta,
                    ),
                }
            ),
        }
    return entry
