"""The training plan: the one schema of every run setting, with a canonical form and a hash.

A :class:`TrainingPlan` says what a federated run trains (task: model, options, modalities,
features, classes), how (training), how updates are combined (strategy), under which privacy
terms (privacy) and what sites report back (evaluation). Its defaults are written here and
nowhere else: ``pyproject.toml``'s ``[tool.flwr.app.config]`` repeats them for Flower and a
test checks that both agree; the server's run config, the site's round settings and the
baselines read a plan.

The coordinator writes a plan (``fedfusion plan new``), each site's operator approves its
hash (``fedfusion site approve``), and a message from the server then carries only the plan's
hash, the round number and the weights: a site acts on the plan it approved, never on settings
a message brings along. The hash is the SHA-256 of :meth:`TrainingPlan.canonical_json`.

Flower-free on purpose: both sides and the command line import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PLAN_VERSION",
    "PlanError",
    "SECTIONS",
    "TrainingPlan",
    "load_plan",
    "plan_keys",
]

#: Bumped when a field changes meaning; a site refuses plans of a version it does not know.
PLAN_VERSION = 1

#: The plan's sections, in the order they are shown to a site operator.
SECTIONS = ("task", "training", "strategy", "privacy", "evaluation")


class PlanError(ValueError):
    """A training plan is unreadable, has an unknown key, or a value out of range."""


def _setting(default: object, section: str, help: str) -> object:
    return field(default=default, metadata={"section": section, "help": help})


@dataclass(frozen=True)
class TrainingPlan:
    """Every setting of a federated run that a site must agree to (kebab-case keys map to
    snake_case fields; values are bool/int/float/str as Flower's run config allows)."""

    # task
    task: str = _setting("rcc-grading", "task", "task preset (models.tasks)")
    task_json: str = _setting("", "task", "an ad-hoc task's definition; '' = the preset")
    backbone: str = _setting("", "task", "timm backbone; '' = the task's")
    image_size: int = _setting(0, "task", "input side in pixels; 0 = the task's")
    model_options: str = _setting("", "task", "'key=value ...' over the task's model options")
    # training (what each site does in a round)
    num_server_rounds: int = _setting(3, "training", "rounds of the run")
    local_epochs: int = _setting(1, "training", "epochs over the site's rows per round")
    batch_size: int = _setting(16, "training", "rows per step")
    learning_rate: float = _setting(0.05, "training", "initial SGD learning rate")
    lr_step_epochs: int = _setting(10, "training", "learning rate x lr-gamma every N epochs")
    lr_gamma: float = _setting(0.5, "training", "learning-rate step factor")
    momentum: float = _setting(0.9, "training", "SGD momentum")
    weight_decay: float = _setting(1e-4, "training", "L2 penalty")
    focal_gamma: float = _setting(2.0, "training", "focal loss gamma; 0 = weighted CE")
    grad_clip_norm: float = _setting(0.0, "training", "clip each step's gradient; 0 = off")
    bn_recalibration: bool = _setting(True, "training", "recompute BatchNorm statistics")
    class_balanced_sampling: bool = _setting(True, "training", "sample classes evenly")
    seed: int = _setting(0, "training", "seeds model init, splits and non-DP training")
    client_threads: int = _setting(1, "training", "torch threads per site")
    update_dtype: str = _setting("float32", "training", "float16 = half-precision diffs")
    # strategy (how the server combines updates)
    strategy: str = _setting("fedavg", "strategy", "aggregation strategy")
    fraction_train: float = _setting(1.0, "strategy", "fraction of sites asked per round")
    min_train_nodes: int = _setting(2, "strategy", "sites asked per round at least")
    min_available_nodes: int = _setting(2, "strategy", "sites connected before a round")
    round_timeout: float = _setting(3600.0, "strategy", "seconds a round waits for replies")
    min_answers: int = _setting(1, "strategy", "usable updates that make a round")
    max_site_examples: int = _setting(
        100000, "strategy", "the most training rows one site may weigh in with"
    )
    update_norm_factor: float = _setting(10.0, "strategy", "reject > N x median norm; 0 = off")
    proximal_mu: float = _setting(0.01, "strategy", "FedProx proximal term")
    server_lr: float = _setting(0.01, "strategy", "FedAdam / FedYogi server learning rate")
    trim_beta: float = _setting(0.2, "strategy", "fedtrimmedavg: fraction cut at each end")
    krum_malicious: int = _setting(1, "strategy", "krum: sites assumed malicious")
    # privacy
    dp_safe_model: bool = _setting(False, "privacy", "GroupNorm model (needed for DP-SGD)")
    dp_epsilon: float = _setting(0.0, "privacy", "local DP the server asks of every site")
    dp_delta: float = _setting(1e-5, "privacy", "local DP delta")
    dp_max_grad_norm: float = _setting(1.0, "privacy", "DP-SGD per-sample clipping norm")
    central_dp_noise_multiplier: float = _setting(0.0, "privacy", "central DP noise; 0 = off")
    central_dp_clipping_norm: float = _setting(1.0, "privacy", "central DP update clipping")
    central_dp_delta: float = _setting(1e-5, "privacy", "central DP delta")
    secagg: bool = _setting(False, "privacy", "secure aggregation (SecAgg+)")
    secagg_num_shares: int = _setting(0, "privacy", "0 = every sampled site")
    secagg_reconstruction_threshold: float = _setting(0.66, "privacy", "shares to unmask")
    secagg_clipping_range: float = _setting(8.0, "privacy", "SecAgg+ clipping range")
    secagg_quantization_range: int = _setting(4194304, "privacy", "SecAgg+ integer levels")
    secagg_max_weight: float = _setting(1000.0, "privacy", "SecAgg+ largest site weight")
    # evaluation (what sites report back)
    score_bins: int = _setting(50, "evaluation", "bins of the shared score histograms")
    eval_split: str = _setting("test", "evaluation", "rows scored: val or test")
    # which code runs the plan (models.app_hash.app_hash); '' = not pinned
    app_hash: str = _setting("", "app", "SHA-256 of the fedfusion code the plan was made for")
    plan_version: int = _setting(PLAN_VERSION, "app", "schema version of this plan")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], *, source: str = "plan") -> TrainingPlan:
        """A plan from flat kebab-case keys (a plan file or Flower's run config); every
        unknown key and bad value is reported at once."""
        from models.plan_checks import coerce, misspelt_keys

        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        problems: list[str] = []
        for key, value in raw.items():
            if key not in fields:
                continue
            try:
                values[fields[key].name] = coerce(value, type(fields[key].default))
            except (TypeError, ValueError):
                kind = type(fields[key].default).__name__
                problems.append(f"{key}: expected {kind}, got {value!r}")
        problems += misspelt_keys(raw, set(fields))
        if problems:
            raise PlanError(f"invalid {source}: " + "; ".join(problems))
        plan = cls(**values)  # type: ignore[arg-type]
        plan.validate(source=source)
        return plan

    def validate(self, *, source: str = "plan") -> None:
        """Raise one PlanError naming every bad value (ranges, names, combinations)."""
        from models.plan_checks import plan_problems

        problems = plan_problems(self)
        if problems:
            raise PlanError(f"invalid {source}: " + "; ".join(problems))

    def replace(self, **changes: object) -> TrainingPlan:
        """A copy with snake_case fields changed (validated)."""
        plan = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        plan.validate()
        return plan

    # -- canonical form -------------------------------------------------------------------

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Flat kebab-case keys, as in Flower's run config and a plan file."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_sections(self) -> dict[str, object]:
        """The plan by section (the canonical JSON's shape)."""
        out: dict[str, object] = {"plan-version": self.plan_version, "app-hash": self.app_hash}
        for section in SECTIONS:
            out[section] = {
                f.name.replace("_", "-"): getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.metadata["section"] == section
            }
        return out

    def canonical_json(self) -> str:
        """Sorted keys, no spaces, floats as Python's shortest repr: equal plans give equal
        bytes, whatever file format or key order they came from."""
        return json.dumps(self.to_sections(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def to_toml(self) -> str:
        """A plan file: flat keys by section, usable as ``flwr run --run-config FILE``."""
        lines = [
            f"# fedfusion training plan {self.hash}",
            "# Sites approve this file's hash (fedfusion site approve); any change is a new plan.",
        ]
        flat = self.to_flat()
        for section in ("app", *SECTIONS):
            lines.append(f"\n# -- {section}")
            for f in dataclasses.fields(self):
                if f.metadata["section"] == section:
                    key = f.name.replace("_", "-")
                    lines.append(f"{key} = {_toml_value(flat[key])}")
        return "\n".join(lines) + "\n"

    # -- derived views ---------------------------------------------------------------------

    def task_spec(self):  # type: ignore[no-untyped-def]  # -> models.tasks.TaskSpec
        """The task (the preset, or the ad-hoc ``task-json``) with the plan's backbone /
        image-size overrides and model options applied."""
        from models.tasks import TaskSpec, get_task

        base = (
            TaskSpec.from_json(self.task_json, source="plan task-json")
            if self.task_json
            else get_task(self.task)
        )
        task = base.replace(backbone=self.backbone, image_size=self.image_size)
        return task.with_model_options(self.model_options)

    @property
    def central_dp(self) -> bool:
        return self.central_dp_noise_multiplier > 0

    @property
    def uses_dp_model(self) -> bool:
        """Whether the global model is built DP-safe (asked for, or implied by DP)."""
        return self.dp_safe_model or self.dp_epsilon > 0 or self.central_dp

    @property
    def keeps_local_norm(self) -> bool:
        """FedBN: sites keep their normalisation layers."""
        return self.strategy == "fedbn"


def plan_keys() -> tuple[str, ...]:
    """Every plan key, kebab-case."""
    return tuple(f.name.replace("_", "-") for f in dataclasses.fields(TrainingPlan))


def plan_defaults() -> dict[str, bool | int | float | str]:
    """The default of every plan key (what ``pyproject.toml`` must repeat)."""
    return TrainingPlan().to_flat()


def load_plan(path: str | Path) -> TrainingPlan:
    """Read a plan file (TOML written by :meth:`TrainingPlan.to_toml`, or JSON, flat or by
    section). Raises PlanError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PlanError(f"cannot read plan file {path}: {err.strerror or err}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise PlanError(
            f"plan file {path} is not valid {path.suffix[1:] or 'TOML'}: {err}"
        ) from None
    if not isinstance(raw, dict):
        raise PlanError(f"plan file {path}: expected a table of settings")
    flat = _flatten_sections(raw)
    return TrainingPlan.from_mapping(flat, source=f"plan file {path}")


def _flatten_sections(raw: Mapping[str, object]) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanError(f"plan values must be finite, got {value}")
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string
