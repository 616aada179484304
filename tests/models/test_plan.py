"""The training plan: one place for defaults, a canonical form and hash, clear errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from models.plan import PlanError, TrainingPlan, load_plan, plan_defaults, plan_keys
from server.config import RunConfig, RunConfigError

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"out-dir", "db-url", "run-name", "resume-run"}


def _pyproject_config() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_the_plans():
    config = _pyproject_config()
    defaults = plan_defaults()
    assert set(config) - SERVER_ONLY == set(defaults), "pyproject and models.plan list other keys"
    for key, value in defaults.items():
        assert config[key] == value, f"{key}: pyproject {config[key]!r}, plan {value!r}"
        assert type(config[key]) is type(value), f"{key}: type differs"


def test_run_config_defaults_come_from_the_plan():
    config = RunConfig()
    assert config.plan() == TrainingPlan()
    assert RunConfig.from_mapping(_pyproject_config()).plan() == TrainingPlan()


def test_hash_is_canonical_across_formats_and_key_order(tmp_path):
    plan = TrainingPlan().replace(task="ckd-risk", num_server_rounds=7, learning_rate=0.1)
    toml_file = tmp_path / "plan.toml"
    toml_file.write_text(plan.to_toml())
    json_file = tmp_path / "plan.json"
    json_file.write_text(plan.canonical_json())
    flat = dict(reversed(list(plan.to_flat().items())))
    assert load_plan(toml_file).hash == plan.hash
    assert load_plan(json_file).hash == plan.hash
    assert TrainingPlan.from_mapping(flat).hash == plan.hash
    # an int given for a float setting is the same plan
    assert TrainingPlan.from_mapping({**flat, "momentum": 0.9}).hash == plan.hash


@pytest.mark.parametrize(
    "change",
    [{"num-server-rounds": 8}, {"eval-split": "val"}, {"score-bins": 20}, {"dp-epsilon": 4.0}],
)
def test_any_change_is_another_plan(change):
    assert TrainingPlan.from_mapping(change).hash != TrainingPlan().hash


BAD = [
    ({"score-bins": 100000}, "score-bins"),
    ({"eval-split": "train"}, "eval-split"),
    ({"num-server-round": 3}, "Did you mean 'num-server-rounds'"),
    ({"learning-rate": "fast"}, "learning-rate: expected float"),
    ({"learning-rate": "nan"}, "learning-rate: expected float"),
    ({"strategy": "fedavgg"}, "strategy"),
    ({"plan-version": 99}, "plan-version"),
    ({"app-hash": "abc"}, "app-hash"),
    ({"max-site-examples": 0}, "max-site-examples"),
]


@pytest.mark.parametrize(("raw", "expected"), BAD)
def test_bad_values_are_named(raw, expected):
    with pytest.raises(PlanError, match=expected):
        TrainingPlan.from_mapping(raw)


def test_run_config_errors_list_every_problem():
    with pytest.raises(RunConfigError) as err:
        RunConfig.from_mapping({"score-bins": 1, "local-epochs": 0})
    assert "score-bins" in str(err.value) and "local-epochs" in str(err.value)


def test_unreadable_plan_file_names_the_file(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text("task = [unclosed")
    with pytest.raises(PlanError, match="plan.toml"):
        load_plan(path)
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.toml")


def test_plan_commands(tmp_path):
    out = tmp_path / "plan.toml"
    cli = [sys.executable, "-m", "simulation.cli"]
    made = subprocess.run(
        [*cli, "plan", "new", "task=ckd-risk", "num-server-rounds=4", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    plan = load_plan(out)
    assert plan.task == "ckd-risk" and plan.num_server_rounds == 4
    assert len(plan.app_hash) == 64
    assert plan.hash in made.stdout
    hashed = subprocess.run(
        [*cli, "plan", "hash", str(out)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert hashed.stdout.strip() == plan.hash
    shown = subprocess.run(
        [*cli, "plan", "show", str(out)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "[privacy]" in shown.stdout and "clinical columns" in shown.stdout
    refused = subprocess.run(
        [*cli, "plan", "new", "tsk=x", "--out", str(tmp_path / "x.toml")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert refused.returncode != 0 and "tsk" in refused.stdout + refused.stderr


def test_every_plan_key_has_a_section_and_help():
    import dataclasses

    for f in dataclasses.fields(TrainingPlan):
        assert f.metadata.get("section") and f.metadata.get("help"), f.name
    assert len(plan_keys()) == len(set(plan_keys()))
