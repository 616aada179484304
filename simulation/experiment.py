"""The experiment runner: methods x (folds x seeds), partitions, single-modality baselines.

One call answers "is federation worth it here?": every requested method (federated ones through
Flower's simulation engine, ``local`` and ``pooled`` without it) is trained on the same sites,
folds, initial model and budget; each repetition (one fold of one seed) goes to its own folder
with its own ``results.json`` and ``report.md``; the top-level ``results.json`` holds every run
(tagged with ``seed`` and ``fold``), the summary over repetitions, out-of-fold metrics and
DeLong comparisons (see :mod:`simulation.aggregate`).

Layout of ``out_dir``::

    data/                  generated data (when no --manifest)
    partition/manifest.csv the partitioned manifest (with --partition / shifts / missing)
    folds/seed-<s>/fold-<k>.csv   cross-validation manifests (with --folds K >= 2)
    seed-<s>/fold-<k>/     one repetition: results.json, report.md, <method>/global_model.pt
    results.json, report.md, *.png   the experiment
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models._options import look_up_option
from models.tasks import get_task, list_tasks
from server.config import RunConfig
from simulation import aggregate
from simulation.aggregate import Repetition
from simulation.experiment_report import write_experiment_report
from simulation.folds import fold_manifests
from simulation.partition import PartitionSpec, partition_manifest
from simulation.results_schema import validate_results
from simulation.runner import FEDERATED_METHODS, METHODS, SimulationOptions, prepare_data, simulate
from simulation.scenario import Scenario
from simulation.scoring import score_model
from strategies.history import RoundRecord, json_safe

__all__ = ["ExperimentOptions", "run_experiment", "single_modality_tasks"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExperimentOptions:
    """What is repeated and compared, on top of :class:`SimulationOptions`.

    Args:
        folds: K of patient-level K-fold cross-validation within each site; 1 = each site's
            own train/val/test split (no CV). Default 1.
        seeds: repetition seeds (fold assignment, model init, sampling); empty = the
            simulation's ``seed``. Data are generated once, from the simulation's ``seed``.
        partition: how the data become sites; None = the manifest's ``site`` column.
        single_modality: a federated method to train single-modality variants of a fusion
            task with (each ``<task>-<modality>`` preset), reported as ``<method>[<modality>]``;
            None = none.
    """

    folds: int = 1
    seeds: tuple[int, ...] = ()
    partition: PartitionSpec | None = None
    single_modality: str | None = None


def single_modality_tasks(task_name: str) -> dict[str, str]:
    """Modality -> the registered single-modality preset ``<task>-<modality>`` of a fusion task."""
    try:
        task = get_task(task_name)
    except ValueError:  # an ad-hoc task: no presets to pair with
        return {}
    if len(task.modalities) < 2:
        return {}
    known = set(list_tasks())
    return {m: f"{task_name}-{m}" for m in task.modalities if f"{task_name}-{m}" in known}


def _repetitions(
    scenario: Scenario, options: SimulationOptions, experiment: ExperimentOptions, manifest: Path
) -> list[Repetition]:
    seeds = experiment.seeds or (options.seed,)
    out = options.out_dir
    if experiment.folds <= 1:
        if len(seeds) == 1:
            return [Repetition(seeds[0], None, manifest, out)]
        return [Repetition(s, None, manifest, out / f"seed-{s}") for s in seeds]
    task = _run_config(scenario, options).task_spec()
    reps = []
    for seed in seeds:
        paths = fold_manifests(
            manifest,
            task,
            folds=experiment.folds,
            seed=seed,
            out_dir=out / "folds" / f"seed-{seed}",
        )
        reps += [
            Repetition(seed, k, path, out / f"seed-{seed}" / f"fold-{k}")
            for k, path in enumerate(paths, start=1)
        ]
    return reps


def _run_config(scenario: Scenario, options: SimulationOptions) -> RunConfig:
    raw: dict[str, Any] = {**scenario.run, "task": scenario.task, "seed": options.seed}
    raw.update(options.overrides or {})
    if options.task is not None:  # an ad-hoc task (simulation.adhoc), as simulate() passes it
        raw.update({"task": options.task.name, "task-json": options.task.to_json()})
    return RunConfig.from_mapping(raw)


def _run_repetition(
    rep: Repetition,
    scenario: Scenario,
    options: SimulationOptions,
    experiment: ExperimentOptions,
    on_round_end: Callable[[str, RoundRecord], None] | None,
) -> dict[str, Any]:
    rep_options = dataclasses.replace(
        options,
        out_dir=rep.out_dir,
        manifest=rep.manifest,
        seed=rep.seed,
        run_label="" if rep.out_dir == options.out_dir else f" ({rep.label})",
    )
    results = simulate(scenario, rep_options, on_round_end=on_round_end)
    rep.runs = [{**run, "seed": rep.seed, "fold": rep.fold} for run in results["runs"]]
    sites = results["sites"]
    models: list[tuple[str, dict[str, Any], Path]] = []
    for run in results["runs"]:
        method = run["method"]
        if method == "fedbn":
            continue  # each site keeps its own BN layers: no single model to score
        if method.startswith("local:"):
            path = rep.out_dir / "local" / method.split(":", 1)[1] / "global_model.pt"
        else:
            path = rep.out_dir / method / "global_model.pt"
        models.append((method, results["config"], path))
    if experiment.single_modality:
        method = experiment.single_modality
        for modality, task_name in single_modality_tasks(scenario.task).items():
            single = dataclasses.replace(
                rep_options,
                out_dir=rep.out_dir / f"single-{modality}",
                methods=(method,),
                overrides={**(options.overrides or {}), "task": task_name},
                task=None,
                run_label=f"{rep_options.run_label} [{modality}]",
            )
            label = f"{method}[{modality}]"

            def _round(name: str, record: RoundRecord, _label: str = label) -> None:
                if on_round_end is not None:
                    on_round_end(_label, record)

            extra = simulate(scenario, single, on_round_end=_round, write_results=False)
            for run in extra["runs"]:
                rep.runs.append({**run, "method": label, "seed": rep.seed, "fold": rep.fold})
                models.append((label, extra["config"], single.out_dir / method / "global_model.pt"))
    for method, config, path in models:
        if path.is_file():
            rep.scores[method] = score_model(rep.manifest, sites, config, path)
    aggregate.add_local_composite(rep, sites)
    return results


def run_experiment(
    scenario: Scenario,
    options: SimulationOptions,
    experiment: ExperimentOptions,
    *,
    on_round_end: Callable[[str, RoundRecord], None] | None = None,
    on_repetition: Callable[[int, int, Repetition], None] | None = None,
    command: str = "fedfusion simulate",
) -> dict[str, Any]:
    """Run every repetition, aggregate, write the top-level ``results.json`` and ``report.md``.

    Args:
        scenario: the scenario (task, data, run overrides).
        options: the simulation settings (methods, seed, out_dir, resources, ...).
        experiment: folds, seeds, partition, single-modality variants.
        on_round_end: called as ``(method, record)`` after every round of every run.
        on_repetition: called as ``(index, count, repetition)`` before each repetition.
        command: the command line, written into the report to reproduce it.

    Returns:
        The top-level results (also in ``out_dir/results.json``).
    """
    methods = tuple(look_up_option("method", m, METHODS) for m in options.methods)
    if experiment.single_modality:
        look_up_option("single-modality method", experiment.single_modality, FEDERATED_METHODS)
        if not single_modality_tasks(scenario.task):
            _log.warning("task %s has no single-modality presets; none trained", scenario.task)
    options = dataclasses.replace(options, methods=methods)
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = _run_config(scenario, options)  # fail early on a bad config
    manifest = options.manifest or prepare_data(scenario, out_dir / "data", seed=options.seed)
    partition: dict[str, Any] | None = None
    if experiment.partition is not None and not experiment.partition.is_identity:
        manifest, partition = partition_manifest(
            manifest,
            config.task_spec(),
            experiment.partition,
            seed=options.seed,
            out_dir=out_dir / "partition",
        )
    reps = _repetitions(scenario, options, experiment, manifest)
    last: dict[str, Any] = {}
    for index, rep in enumerate(reps):
        if on_repetition is not None:
            on_repetition(index, len(reps), rep)
        last = _run_repetition(rep, scenario, options, experiment, on_round_end)
    sites = list(last["sites"])
    binary = config.task_spec().num_classes == 2
    metrics = aggregate.BINARY_METRICS if binary else aggregate.MULTICLASS_METRICS
    reference = next((m for m in methods if m in FEDERATED_METHODS and m != "fedbn"), "fedavg")
    results = {
        **{k: last[k] for k in ("scenario", "task", "sites", "config", "environment")},
        "seed": options.seed,
        "manifest": str(manifest),
        "experiment": {
            "methods": list(methods),
            "folds": experiment.folds,
            "seeds": sorted({rep.seed for rep in reps}),
            "repetitions": [
                {"seed": r.seed, "fold": r.fold, "dir": str(r.out_dir.relative_to(out_dir))}
                for r in reps
            ],
            "single_modality": experiment.single_modality,
            "reference": reference,
            "partition": partition,
            "metrics": list(metrics),
            "wall_seconds": time.perf_counter() - started,
        },
        "environment": {
            **last["environment"],
            "platform": platform.platform(),
            "cpus_available": len(os.sched_getaffinity(0)),
        },
        "runs": [run for rep in reps for run in rep.runs],
        "summary": aggregate.summarise(reps, sites, metrics, n_bins=config.score_bins),
        "out_of_fold": aggregate.out_of_fold(reps, sites),
        "comparisons": aggregate.comparisons(reps, sites, reference=reference),
    }
    results = json_safe(results)
    validate_results(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    first_seed = min(rep.seed for rep in reps)
    roc = {
        method: rows
        for method in sorted({m for rep in reps for m in rep.scores})
        if not method.startswith("local:")
        and (rows := aggregate.oof_rows(reps, method, first_seed, sites)) is not None
    }
    write_experiment_report(results, out_dir, command=command, roc_scores=roc)
    return results
