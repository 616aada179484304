"""The run configuration: read once from Flower's run config into a typed, frozen object.

Flower passes ``[tool.flwr.app.config]`` (plus ``--run-config`` overrides) as a flat dict of
bool/int/float/str. Only :func:`RunConfig.from_mapping` reads that dict; everything else uses
the typed fields.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from models.plan import PlanError, TrainingPlan
from models.plan_checks import UPDATE_DTYPES, coerce, misspelt_keys, plan_problems

__all__ = ["RunConfig", "RunConfigError", "CLIENT_KEYS", "UPDATE_DTYPES"]

_log = logging.getLogger(__name__)


class RunConfigError(PlanError):
    """A run configuration value is missing, of the wrong type or out of range."""


# Keys sent to every site with each train/evaluate message (the site reads them in client.app).
CLIENT_KEYS = (
    "task",
    "task-json",
    "backbone",
    "image-size",
    "local-epochs",
    "batch-size",
    "learning-rate",
    "lr-step-epochs",
    "lr-gamma",
    "momentum",
    "weight-decay",
    "focal-gamma",
    "grad-clip-norm",
    "bn-recalibration",
    "class-balanced-sampling",
    "seed",
    "score-bins",
    "eval-split",
    "client-threads",
    "num-server-rounds",
    "dp-safe-model",
    "dp-epsilon",
    "dp-delta",
    "dp-max-grad-norm",
    "model-options",
    "update-dtype",
)


@dataclass(frozen=True)
class RunConfig(TrainingPlan):
    """Typed view of the run config: the training plan (models.plan, where every default is
    written) plus the server's own settings, which never reach a site."""

    out_dir: str = ""
    db_url: str = ""  # run store (SQLAlchemy URL or SQLite path); "" = no store
    run_name: str = ""  # the run's label in the run store and dashboard
    resume_run: str = ""  # continue this run: its out-dir, or its id in the run store at db-url

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> RunConfig:  # type: ignore[override]
        """Build from Flower's flat run config; unknown keys are ignored (misspellings of a
        setting are refused).

        Raises:
            RunConfigError: listing every bad value at once.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        problems: list[str] = []
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in fields:
                if not key.startswith(("sim-", "num-workers", "poison-")):
                    _log.debug("run config key %r is not used by the server", key)
                continue
            default = fields[name].default
            try:
                values[name] = coerce(value, type(default))
            except (TypeError, ValueError):
                problems.append(f"{key}: expected {type(default).__name__}, got {value!r}")
        misspelt = misspelt_keys(raw, {name.replace("_", "-") for name in fields})
        if problems:
            raise RunConfigError("invalid run config: " + "; ".join(problems + misspelt))
        config = cls(**values)  # type: ignore[arg-type]
        problems = plan_problems(config) + misspelt
        if problems:
            raise RunConfigError("invalid run config: " + "; ".join(problems))
        return config

    def validate(self, *, source: str = "run config") -> None:
        """Check ranges, names and combinations; raise one RunConfigError naming every bad
        value."""
        problems = plan_problems(self)
        if problems:
            raise RunConfigError(f"invalid {source}: " + "; ".join(problems))

    def plan(self) -> TrainingPlan:
        """The training plan of this run (without the server's own settings)."""
        names = {f.name for f in dataclasses.fields(TrainingPlan)}
        return TrainingPlan(**{k: v for k, v in vars(self).items() if k in names})

    def client_config(self) -> dict[str, bool | int | float | str]:
        """The settings every site receives with each message (Flower ConfigRecord values)."""
        out: dict[str, bool | int | float | str] = {}
        for key in CLIENT_KEYS:
            out[key] = getattr(self, key.replace("-", "_"))
        out["dp-safe-model"] = self.uses_dp_model
        return out

    def to_dict(self) -> dict[str, object]:
        """Kebab-case keys, as in the run config; a password in ``db-url`` is hidden."""
        out = {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.db_url:
            from server.store import redact_url

            out["db-url"] = redact_url(self.db_url) if "://" in self.db_url else self.db_url
        return out
