"""Scenarios: small TOML files naming a task, where site data comes from and run overrides."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from models._options import look_up_option

__all__ = ["Scenario", "ScenarioError", "load_scenario", "list_scenarios"]


class ScenarioError(ValueError):
    """A scenario file is missing or malformed."""


@dataclass(frozen=True)
class Scenario:
    """A simulated multi-center experiment.

    Args:
        name: scenario name (file stem).
        task: task preset name.
        description: one line.
        data: how site data is made (``generator`` and its options) when no manifest is given.
        run: run-config overrides (keys of ``[tool.flwr.app.config]``).
        experiment: experiment defaults, e.g. ``single-modality = "fedavg"`` (train the
            task's single-modality variants with that method when methods are compared).
    """

    name: str
    task: str
    description: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)


def _scenario_dir() -> Path:
    return Path(str(resources.files("simulation") / "scenarios"))


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in _scenario_dir().glob("*.toml"))


def load_scenario(name_or_path: str) -> Scenario:
    """Load a bundled scenario by name, or a scenario TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        name = look_up_option("scenario", name_or_path, list_scenarios())
        path = _scenario_dir() / f"{name}.toml"
    if not path.is_file():
        raise ScenarioError(f"scenario file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from err
    unknown = set(raw) - {"task", "description", "data", "run", "experiment"}
    if unknown:
        raise ScenarioError(
            f"{path}: unknown top-level keys {sorted(unknown)}; "
            "expected task, description, [data], [run], [experiment]"
        )
    if "task" not in raw:
        raise ScenarioError(f"{path}: missing 'task' (a task preset name)")
    for table in ("data", "run", "experiment"):
        if not isinstance(raw.get(table, {}), dict):
            raise ScenarioError(f"{path}: [{table}] must be a table")
    return Scenario(
        name=path.stem,
        task=str(raw["task"]),
        description=str(raw.get("description", "")),
        data=dict(raw.get("data", {})),
        run=dict(raw.get("run", {})),
        experiment=dict(raw.get("experiment", {})),
    )
