"""Checkpoint and resume: a crashed or restarted run continues where it stopped.

After every round the server writes a *resume point* ``resume.pt`` into the run's folder (its
out-dir, else its checkpoint folder beside a SQLite run store): the global model, the
strategy's state (round history, server-optimiser moments of FedAdam/FedYogi), the round
number, the run config and the run's id in the run store. The file is replaced atomically,
so a crash while writing leaves the previous one.

``resume-run=RUN`` (a run's out-dir, a ``resume.pt`` path, or the run's id in the run store at
``db-url``) loads it: the run continues at the next round with the same round numbers, the
same run-store entry and the same audit trail, and ends after ``num-server-rounds`` rounds.
With deterministic site training (seeded by run seed, round and site), the final model equals
an uninterrupted run's up to floating-point summation order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESUME_FILE",
    "ResumeError",
    "ResumePoint",
    "MUST_MATCH",
    "find_resume_point",
    "load_resume_point",
    "save_resume_point",
    "config_mismatches",
]

_log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
_FORMAT = 1

#: Run-config keys a resumed run must share with the run it continues (else the result is
#: not that run's): what sites train with, how the server aggregates, and the round count.
MUST_MATCH = (
    "task", "task-json", "backbone", "image-size", "num-server-rounds", "local-epochs",
    "batch-size", "learning-rate", "lr-step-epochs", "lr-gamma", "momentum", "weight-decay",
    "focal-gamma", "grad-clip-norm", "bn-recalibration", "class-balanced-sampling", "seed",
    "dp-safe-model", "dp-epsilon", "dp-delta", "dp-max-grad-norm", "central-dp-noise-multiplier",
    "central-dp-clipping-norm", "strategy", "proximal-mu", "server-lr", "trim-beta",
    "krum-malicious", "fraction-train",
)  # fmt: skip


class ResumeError(ValueError):
    """A run cannot be resumed (no resume point, unreadable file, other settings)."""


@dataclass
class ResumePoint:
    """What the server needs to continue a run after ``round``."""

    round: int
    arrays: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    config: dict[str, Any]
    run_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_resume_point(folder: str | Path, point: ResumePoint) -> Path:
    """Write ``folder/resume.pt`` atomically; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESUME_FILE
    partial = path.with_suffix(".pt.partial")
    torch.save(
        {
            "format": _FORMAT,
            "round": point.round,
            "arrays": {k: v.detach().cpu().clone() for k, v in point.arrays.items()},
            "strategy": point.strategy,
            "config": point.config,
            "run-id": point.run_id,
            "extra": point.extra,
        },
        partial,
    )
    partial.replace(path)
    return path


def load_resume_point(path: str | Path) -> ResumePoint:
    """Read a resume point written by :func:`save_resume_point`.

    Raises:
        ResumeError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as err:
        raise ResumeError(f"resume: no resume point at {path}") from err
    except Exception as err:  # noqa: BLE001 - any unpickling error means "unreadable"
        raise ResumeError(
            f"resume: {path} is not a readable resume point ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ResumeError(
            f"resume: {path} is not a fedfusion resume point of format {_FORMAT} "
            f"(found {data.get('format') if isinstance(data, dict) else type(data).__name__})"
        )
    return ResumePoint(
        round=int(data["round"]),
        arrays=dict(data["arrays"]),
        strategy=dict(data["strategy"]),
        config=dict(data["config"]),
        run_id=data.get("run-id"),
        extra=dict(data.get("extra") or {}),
    )


def find_resume_point(resume_run: str, *, db_url: str = "") -> Path:
    """The ``resume.pt`` that ``resume-run`` names.

    Args:
        resume_run: a run's out-dir (or checkpoint folder), a ``resume.pt`` path, or the id of
            a run in the run store at ``db_url``.
        db_url: the run store (needed for a run id).

    Raises:
        ResumeError: listing where it looked.
    """
    text = resume_run.strip()
    if text.isdigit():
        if not db_url:
            raise ResumeError(
                f"resume-run={text} is a run id, but no run store is configured (db-url); "
                "pass the run's out-dir instead"
            )
        from server.store import RunStore, checkpoint_dir_for

        with RunStore(db_url) as store:
            run = store.get_run(int(text))
            folders = [Path(run["out_dir"])] if run["out_dir"] else []
            checkpoints = checkpoint_dir_for(store, int(text), run["out_dir"])
        folders += [checkpoints] if checkpoints is not None else []
    else:
        path = Path(text).expanduser()
        if path.is_file():
            return path
        folders = [path]
    looked = [folder / RESUME_FILE for folder in folders]
    for candidate in looked:
        if candidate.is_file():
            return candidate
    raise ResumeError(
        f"resume-run={text}: no {RESUME_FILE} at {', '.join(str(p) for p in looked) or '-'} "
        "(a run writes it after each round when it has an out-dir or a SQLite run store)"
    )


def config_mismatches(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The :data:`MUST_MATCH` settings that differ between the saved run and this one."""
    problems = []
    for key in MUST_MATCH:
        if key in saved and key in current and saved[key] != current[key]:
            problems.append(f"{key} was {saved[key]!r}, now {current[key]!r}")
    return problems
