"""``fedfusion plan new|show|hash``: the coordinator writes and inspects a training plan.

A plan file (TOML, flat keys) holds every run setting (models.plan); it doubles as
``flwr run --run-config PLAN.toml``, so a run cannot forget a setting such as ``task``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.plan import SECTIONS, TrainingPlan, load_plan, plan_keys

__all__ = ["register", "describe_plan"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plan`` command group to the ``fedfusion`` command."""
    group = subparsers.add_parser("plan", help="write and inspect a training plan")
    commands = group.add_subparsers(dest="plan_command", required=True)

    new = commands.add_parser(
        "new",
        help="write a plan file from the defaults plus KEY=VALUE settings",
        description=(
            "Write a training plan: every run setting, with the defaults of models.plan "
            "replaced by the KEY=VALUE pairs given (kebab-case keys, e.g. task=ckd-risk "
            f"num-server-rounds=10). Keys: {', '.join(plan_keys())}."
        ),
    )
    new.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="settings to change")
    new.add_argument("--out", type=Path, required=True, help="the plan file to write (.toml)")
    new.add_argument("--force", action="store_true", help="replace an existing file")
    new.set_defaults(handler=_new)

    show = commands.add_parser("show", help="print a plan by section, with its hash")
    show.add_argument("plan", type=Path, help="the plan file")
    show.set_defaults(handler=_show)

    hash_ = commands.add_parser("hash", help="print a plan's SHA-256 (what sites approve)")
    hash_.add_argument("plan", type=Path, help="the plan file")
    hash_.set_defaults(handler=_hash)


def _parse_settings(pairs: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"setting {pair!r}: expected KEY=VALUE, e.g. num-server-rounds=10")
        settings[key.strip()] = value.strip().strip('"')
    return settings


def _new(args: argparse.Namespace) -> int:
    settings = _parse_settings(args.settings)
    unknown = sorted(set(settings) - set(plan_keys()))
    if unknown:
        raise ValueError(
            f"unknown plan key(s) {', '.join(unknown)}; keys: {', '.join(plan_keys())}"
        )
    if "app-hash" not in settings:
        from models.app_hash import app_hash

        settings["app-hash"] = app_hash()
    plan = TrainingPlan.from_mapping(settings, source="plan settings")
    if args.out.exists() and not args.force:
        raise ValueError(f"{args.out} exists: give --force to replace it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(plan.to_toml(), encoding="utf-8")
    sys.stdout.write(f"wrote {args.out}\nplan hash {plan.hash}\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(describe_plan(load_plan(args.plan)))
    return 0


def _hash(args: argparse.Namespace) -> int:
    sys.stdout.write(load_plan(args.plan).hash + "\n")
    return 0


def describe_plan(plan: TrainingPlan) -> str:
    """The plan by section, the task resolved to its modalities, features and classes."""
    task = plan.task_spec()
    lines = [
        f"plan {plan.hash} (version {plan.plan_version})",
        f"code: {plan.app_hash or 'any fedfusion version (app-hash not pinned)'}",
        f"task: {task.name}: model {task.model}, classes {', '.join(task.classes)}",
        f"  image columns: {', '.join(task.modalities) or 'none'}",
        f"  clinical columns: {', '.join(task.features) or 'none'}",
    ]
    sections = plan.to_sections()
    for section in SECTIONS:
        lines.append(f"[{section}]")
        values = sections[section]
        assert isinstance(values, dict)
        lines += [f"  {key} = {value!r}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
