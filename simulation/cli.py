"""The ``fedfusion`` command: subcommands grouped by the package they drive.

- ``fedfusion simulate SCENARIO ...``  (simulation)
- ``fedfusion site check|keys|run ...`` (client; keys/run in client/deploy_cli.py)
- ``fedfusion server certs|start ...`` (server/deploy_cli.py: TLS certificates, SuperLink)
- ``fedfusion list``                   (tasks, models, scenarios)
- ``fedfusion dashboard --db URL``     (server: the central aggregation dashboard)
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from models.tasks import TaskSpec
    from simulation.scenario import Scenario

__all__ = ["main", "build_parser"]

_console = Console(width=max(Console().width, 120))


def _parse_overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``key=value`` pairs (as for ``flwr run --run-config``) with int/float/bool values."""
    out: dict[str, object] = {}
    for pair in pairs:
        for item in shlex.split(pair):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"--run-config expects key=value, got {item!r}")
            out[key.strip()] = _parse_value(value.strip())
    return out


def _parse_site_epsilon(values: list[str]) -> dict[str, float]:
    """``["center-b=0.5", ...]`` -> ``{"center-b": 0.5}`` (``--site-dp-epsilon``)."""
    out: dict[str, float] = {}
    for value in values:
        site, sep, number = value.partition("=")
        try:
            epsilon = float(number)
        except ValueError:
            epsilon = math.nan
        if not sep or not site.strip() or not epsilon > 0:
            raise SystemExit(
                f"--site-dp-epsilon expects SITE=EPSILON with EPSILON > 0, got {value!r}"
            )
        out[site.strip()] = epsilon
    return out


def _parse_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip('"')


def _add_simulate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run a simulated multi-center experiment",
        description="Run a scenario through Flower's simulation engine and write results.json, "
        "report.md and plots.",
    )
    p.add_argument(
        "scenario",
        nargs="?",
        help="a bundled scenario name (see `fedfusion list`) or a .toml path; optional for an "
        "ad-hoc task (--manifest CSV --model NAME ...)",
    )
    p.add_argument("--rounds", type=int, help="server rounds (default: the scenario's)")
    p.add_argument("--methods", default="fedavg", help="comma-separated methods (default: fedavg)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for data, splits and models (default 0)"
    )
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default ./out)")
    p.add_argument(
        "--manifest",
        type=Path,
        help="use this manifest (with a site column) instead of generated data",
    )
    p.add_argument("--backbone", help="timm backbone (e.g. efficientnet_b3 for the study's size)")
    p.add_argument("--image-size", type=int, help="input size in pixels")
    p.add_argument("--local-epochs", type=int, help="local epochs per round")
    p.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="'k=v ...'",
        help="further run-config overrides, as for `flwr run --run-config`",
    )
    p.add_argument(
        "--dp-epsilon", type=float, help="give every simulated site this DP budget (local DP-SGD)"
    )
    p.add_argument(
        "--site-dp-epsilon",
        action="append",
        default=[],
        metavar="SITE=E",
        help="one simulated site's own DP budget, over --dp-epsilon (repeatable)",
    )
    p.add_argument(
        "--dp-delta", type=float, default=1e-5, help="delta of the sites' DP budget (default 1e-5)"
    )
    p.add_argument(
        "--dp-max-grad-norm", type=float, default=1.0, help="per-sample clipping norm (default 1.0)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a crashed simulation in --out from each method's last finished round",
    )
    adhoc = p.add_argument_group(
        "ad-hoc task (any manifest that follows the contract; see docs/tasks.md)",
        "With --model the task is declared here instead of by a preset: give --manifest and "
        "the columns to read. The task is written to OUT/task.json.",
    )
    adhoc.add_argument("--model", help="registered model, e.g. image-classifier, clinical-mlp")
    adhoc.add_argument("--modalities", metavar="A,B", help="image columns, in model order")
    adhoc.add_argument("--features", metavar="F1,F2", help="clinical feature columns")
    adhoc.add_argument(
        "--classes",
        metavar="X,Y",
        help="class names or the integer values of the label column (default: every label "
        "found, sorted; the last is the positive class)",
    )
    adhoc.add_argument(
        "--site-column", default="site", help="column naming each row's site (default site)"
    )
    adhoc.add_argument("--task-name", default="adhoc", help="the task's name (default adhoc)")
    p.add_argument("--cpus", type=int, help="CPUs for the simulation (default: all)")
    p.add_argument("--ray-address", help="join an existing Ray cluster")
    p.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    p.add_argument(
        "--db",
        metavar="URL",
        help="run store for `fedfusion dashboard`: SQLite path "
        "or SQLAlchemy URL (default OUT/runs.sqlite; 'none' for no store)",
    )
    _add_experiment_args(p)
    p.set_defaults(handler=_run_simulate)


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    """Repetitions, partitions, single-modality variants, Ray resources (simulation.experiment)."""
    g = p.add_argument_group("experiment (docs/simulation.md)")
    g.add_argument("--folds", type=int, default=1, help="patient-level K-fold CV within each site")
    g.add_argument("--seeds", help="comma-separated repetition seeds, e.g. 0,1,2 (default --seed)")
    g.add_argument(
        "--partition",
        default="natural",
        help="natural (the site column), iid, dirichlet:ALPHA or quantity:ALPHA",
    )
    g.add_argument("--sites", type=int, help="number of sites for a partition")
    g.add_argument(
        "--intensity-shift", type=float, default=0.0, help="per-site scanner shift scale (0: none)"
    )
    g.add_argument("--missing-modality", help="MODALITY:K: the last K sites lack MODALITY")
    g.add_argument(
        "--single-modality",
        default="auto",
        help="train single-modality variants with this method ('none' = no; default: the "
        "scenario's, when methods are compared)",
    )
    g.add_argument("--client-cpus", type=float, default=1.0, help="Ray CPUs per site (default 1)")
    g.add_argument("--client-gpus", type=float, default=0.0, help="Ray GPUs per site (default 0)")


def _experiment_options(args: argparse.Namespace, scenario) -> object:  # type: ignore[no-untyped-def]
    from simulation.experiment import ExperimentOptions
    from simulation.partition import parse_partition

    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip()) if args.seeds else ()
    single = args.single_modality
    if single == "auto":  # the scenario's choice, when methods are compared and it is one
        methods = [m.strip() for m in args.methods.split(",")]
        compared = len(methods) > 1 or args.folds > 1
        single = scenario.experiment.get("single-modality") if compared else None
        single = single if single in methods else None
    return ExperimentOptions(
        folds=args.folds,
        seeds=seeds,
        partition=parse_partition(
            args.partition,
            sites=args.sites,
            intensity_shift=args.intensity_shift,
            missing=args.missing_modality,
        ),
        single_modality=None if single in (None, "", "none") else str(single),
    )


def _run_simulate(args: argparse.Namespace) -> int:
    from simulation.experiment import run_experiment
    from simulation.report import COMPARISON_HEADER, comparison_rows, metric_table
    from simulation.runner import SimulationOptions

    scenario, task, manifest = _scenario_and_task(args)
    overrides = _parse_overrides(args.run_config)
    for key, value in (
        ("backbone", args.backbone),
        ("image-size", args.image_size),
        ("local-epochs", args.local_epochs),
    ):
        if value is not None:
            overrides[key] = value
    from server.cli import simulation_db_url

    db_url = simulation_db_url(args.db, overrides.get("db-url"), args.out)
    overrides["db-url"] = db_url
    options = SimulationOptions(
        out_dir=args.out,
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        rounds=args.rounds,
        seed=args.seed,
        manifest=manifest,
        overrides=overrides,
        task=task,
        cpus=args.cpus,
        cpus_per_site=args.client_cpus,
        client_gpus=args.client_gpus,
        ray_address=args.ray_address,
        verbose=args.verbose,
        resume=args.resume,
        site_budget=(
            {
                "dp-epsilon": args.dp_epsilon,
                "dp-delta": args.dp_delta,
                "dp-max-grad-norm": args.dp_max_grad_norm,
            }
            if args.dp_epsilon
            else None
        ),
        site_epsilon=_parse_site_epsilon(args.site_dp_epsilon),
    )
    experiment = _experiment_options(args, scenario)
    planned = args.rounds or int(scenario.run.get("num-server-rounds", 3))
    repeats = max(1, experiment.folds) * max(1, len(experiment.seeds))  # type: ignore[attr-defined]
    _console.print(f"[bold]fedfusion simulate[/] {scenario.name}: {scenario.description}")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TimeElapsedColumn(),
        console=_console,
        transient=False,
    ) as progress:
        bars: dict[str, int] = {}

        def on_round(method: str, record) -> None:  # type: ignore[no-untyped-def]
            if method not in bars:
                bars[method] = progress.add_task(escape(method), total=planned * repeats)
            auc = record.global_metrics.get("auc")
            note = (
                f"{method}: round {record.round} global AUC {auc:.3f}"
                if isinstance(auc, float)
                else method
            )
            progress.update(bars[method], advance=1, description=escape(note))

        reps_bar = progress.add_task("repetitions", total=repeats) if repeats > 1 else None

        def on_repetition(index: int, count: int, rep) -> None:  # type: ignore[no-untyped-def]
            if reps_bar is not None:
                progress.update(reps_bar, completed=index, description=f"repetition: {rep.label}")

        results = run_experiment(
            scenario,
            options,
            experiment,  # type: ignore[arg-type]
            on_round_end=on_round,
            on_repetition=on_repetition,
            command=args.command_line,
        )
        if reps_bar is not None:
            progress.update(reps_bar, completed=repeats, description="repetitions")

    report = args.out / "report.md"
    if experiment.folds > 1 or len(results["experiment"]["seeds"]) > 1:  # type: ignore[attr-defined]
        _print_experiment(results)
        _console.print(f"results: {args.out / 'results.json'}")
        _console.print(f"report:  {report}")
        return 0
    if len(results["runs"]) > 1:
        comparison = Table(title="methods compared: final models, test rows of every site")
        for column in COMPARISON_HEADER:
            comparison.add_column(column, no_wrap=True)
        for row in comparison_rows(results):
            comparison.add_row(*row)
        _console.print(comparison)
        _print_comparisons(results)
    for run in results["runs"] if len(results["runs"]) == 1 else []:
        table = Table(title=f"{run['method']}: final model, test rows of each site")
        header, rows = metric_table(run, list(results["task"]["classes"]))
        for column in header:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        _console.print(table)
        aucs = [r["global"].get("auc") for r in run["rounds"]]
        if run.get("epsilon"):
            _console.print(
                "privacy spent (epsilon): "
                + ", ".join(f"{site} {eps:.2f}" for site, eps in sorted(run["epsilon"].items()))
            )
        _console.print(
            "global AUC by round: " + ", ".join("n/a" if a is None else f"{a:.3f}" for a in aucs)
        )
    _console.print(f"results: {args.out / 'results.json'}")
    _console.print(f"report:  {report}")
    if db_url:
        from server.cli import dashboard_hint

        prog = sys.argv[0] if Path(sys.argv[0]).name == "fedfusion" else "fedfusion"
        _console.print(dashboard_hint(db_url, prog=prog), soft_wrap=True, markup=False)
    return 0


def _print_experiment(results: dict) -> None:  # type: ignore[type-arg]
    from simulation.experiment_report import summary_rows

    for view, title in (("pooled", "pooled test set"), ("site-mean", "mean over sites")):
        header, rows = summary_rows(results, view)
        table = Table(title=f"methods x metrics, {title} (mean ± sd (95% CI))")
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        _console.print(table)
    _print_comparisons(results)


def _print_comparisons(results: dict) -> None:  # type: ignore[type-arg]
    for c in results.get("comparisons", []):
        if c["rows"] == "all sites" and c["p"] is not None:
            _console.print(
                f"{c['comparison']}: {c['a']} {c['auc_a']:.3f} vs {c['b']} {c['auc_b']:.3f}, "
                f"DeLong P {c['p']:.3g} (seed {c['seed']})",
                markup=False,
            )


def _scenario_and_task(
    args: argparse.Namespace,
) -> tuple[Scenario, TaskSpec | None, Path | None]:
    """(scenario, ad-hoc task or None, manifest or None) from the ``simulate`` arguments."""
    from simulation.adhoc import AdhocRequest, build_adhoc_task, split_list
    from simulation.scenario import Scenario, load_scenario

    declared = [
        flag
        for flag, value in (
            ("--modalities", args.modalities),
            ("--features", args.features),
            ("--classes", args.classes),
            ("--site-column", None if args.site_column == "site" else args.site_column),
        )
        if value
    ]
    if args.model is None:
        if declared:
            raise ValueError(f"{', '.join(declared)} declare an ad-hoc task: add --model NAME")
        if not args.scenario:
            raise ValueError(
                "give a scenario (see `fedfusion list`), or an ad-hoc task: "
                "--manifest CSV --model NAME --modalities ... / --features ..."
            )
        return load_scenario(args.scenario), None, args.manifest
    if args.manifest is None:
        raise ValueError("an ad-hoc task (--model) needs --manifest CSV with a site column")
    request = AdhocRequest(
        manifest=args.manifest,
        model=args.model,
        site_column=args.site_column,
        modalities=split_list(args.modalities),
        features=split_list(args.features),
        classes=split_list(args.classes),
        backbone=args.backbone or "",
        image_size=args.image_size or 0,
        name=args.task_name,
    )
    task, manifest = build_adhoc_task(request, out_dir=args.out)
    scenario = (
        load_scenario(args.scenario)
        if args.scenario
        else Scenario(name=task.name, task=task.name, description=task.description)
    )
    return scenario, task, manifest


def _add_list(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list task presets, models and scenarios")
    p.set_defaults(handler=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    from models import list_models
    from models.tasks import get_task, list_tasks
    from simulation.scenario import list_scenarios, load_scenario

    table = Table(title="task presets")
    for column in ("task", "model", "modalities", "classes", "backbone @ size"):
        table.add_column(column)
    for name in list_tasks():
        t = get_task(name)
        inputs = ", ".join(t.modalities) or f"({len(t.features)} clinical features)"
        table.add_row(
            name,
            t.model,
            inputs,
            ", ".join(t.classes),
            f"{t.backbone} @ {t.image_size}" if t.modalities else "-",
        )
    _console.print(table)
    _console.print("models: " + ", ".join(list_models()))
    for name in list_scenarios():
        _console.print(f"scenario {name}: {load_scenario(name).description}")
    return 0


def _quiet_flower(*, verbose: bool) -> None:
    """Flower logs every round at INFO on its own handler; keep the console for our summary."""
    from flwr.supercore.logger import update_console_handler

    # WARNING would show run_simulation's deprecation notice on every run; errors still show.
    update_console_handler(level=logging.INFO if verbose else logging.ERROR)
    logging.getLogger("flwr").propagate = False  # it has its own handler: avoid duplicates
    logging.getLogger("ray").setLevel(logging.INFO if verbose else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    from client.cli import register as register_site
    from server.cli import register as register_dashboard
    from server.deploy_cli import register as register_server
    from server.plan_cli import register as register_plan

    parser = argparse.ArgumentParser(
        prog="fedfusion",
        description="Federated learning of multimodal medical-imaging models across hospitals.",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_simulate(subparsers)
    register_site(subparsers)
    register_dashboard(subparsers)
    register_server(subparsers)
    register_plan(subparsers)
    _add_list(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "fedfusion " + shlex.join(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    _quiet_flower(verbose=bool(getattr(args, "verbose", False)))
    try:
        return int(args.handler(args) or 0)
    except ValueError as err:  # the project's validation errors all derive from ValueError
        _console.print(f"[red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
