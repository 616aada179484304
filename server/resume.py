"""Checkpoint and resume: a crashed or restarted run continues where it stopped.

After every round the server writes a *resume point* into the run's folder (its out-dir, else
its checkpoint folder beside a SQLite run store): the global model, the strategy's state
(round history, server-optimiser moments of FedAdam/FedYogi), the round number, the run
config and the run's id in the run store.

A resume point is two files, and nothing in either is unpickled:

``resume.json``
    everything but arrays (round, run id, config, the strategy's scalars and lists), with the
    name and SHA-256 of its tensors file.
``resume-tensors-<sha256 prefix>.pt``
    a flat ``dict[str, Tensor]`` (``torch.save``) holding the global model (``model/<key>``)
    and every array of the strategy state (``state/<n>``; ``resume.json`` says where each
    goes). It is read only with ``torch.load(..., weights_only=True)``.

Writing is atomic: the tensors file gets a new name (its hash) and is in place before
``resume.json`` is replaced to point at it, so a crash at any moment leaves a complete,
matching pair; older tensors files are removed afterwards. A reader checks the hash, so it
never combines a ``resume.json`` with another save's tensors.

``resume-run=RUN`` (a run's out-dir, a ``resume.json`` path, or the run's id in the run store
at ``db-url``) loads it: the run continues at the next round with the same round numbers, the
same run-store entry and the same audit trail, and ends after ``num-server-rounds`` rounds.
With deterministic site training (seeded by run seed, round and site), the final model equals
an uninterrupted run's up to floating-point summation order.

Resume points of format 1 (one pickled ``resume.pt``, written by fedfusion 0.1.0 before this
format) are refused without being unpickled: unpickling a file runs whatever code it names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
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

RESUME_FILE = "resume.json"
_FORMAT = 2
_KIND = "fedfusion-resume-point"
_TENSORS_PREFIX = "resume-tensors-"
_TENSORS_NAME = re.compile(r"resume-tensors-[0-9a-f]{16}\.pt")
#: The pickled resume point of format 1 (fedfusion 0.1.0), refused without unpickling.
_LEGACY_FILE = "resume.pt"
_LEGACY_HINT = (
    "resume points of format 1 (a pickled resume.pt, written by fedfusion 0.1.0 before "
    f"format {_FORMAT}) cannot be resumed: start the run again"
)
_CHUNK = 1 << 20

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
    """A run cannot be resumed (no resume point, unreadable or unsafe file, other settings)."""


@dataclass
class ResumePoint:
    """What the server needs to continue a run after ``round``.

    ``arrays`` is the global model by ``state_dict`` key. ``strategy`` and ``extra`` may hold
    numpy arrays and tensors anywhere inside dicts, lists and tuples (they are stored in the
    tensors file and come back as the same kind); everything else in them, and all of
    ``config``, must be JSON values (str, int, float, bool, None).
    """

    round: int
    arrays: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    config: dict[str, Any]
    run_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- writing


def save_resume_point(folder: str | Path, point: ResumePoint) -> Path:
    """Write the resume point into ``folder`` atomically; returns the ``resume.json`` path.

    Raises:
        ResumeError: when the strategy state, ``extra`` or ``config`` holds a value that is
            neither a JSON value nor an array (naming where).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in point.arrays.items():
        tensors[f"model/{key}"] = _as_tensor(value, f"arrays[{key!r}]")
    document = {
        "format": _FORMAT,
        "kind": _KIND,
        "round": int(point.round),
        "run-id": None if point.run_id is None else int(point.run_id),
        "arrays": [str(key) for key in point.arrays],
        "strategy": _encode(point.strategy, tensors, "strategy"),
        "config": _encode(point.config, None, "config"),
        "extra": _encode(point.extra, tensors, "extra"),
    }

    digest, tensors_path = _write_tensors(folder, tensors)
    document["tensors"] = {
        "file": tensors_path.name,
        "sha256": digest,
        "bytes": tensors_path.stat().st_size,
    }
    path = folder / RESUME_FILE
    text = json.dumps(document, indent=1, allow_nan=True)
    _write_atomically(folder, path, lambda f: f.write(text.encode()))
    for stale in folder.glob(f"{_TENSORS_PREFIX}*"):  # earlier saves and crashed writes
        if stale.name != tensors_path.name:
            stale.unlink(missing_ok=True)
    return path


def _write_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, Path]:
    """``torch.save`` ``tensors`` under a name made from their file's SHA-256."""
    temp = folder / f"{_TENSORS_PREFIX}{secrets.token_hex(8)}.partial"
    try:
        with open(temp, "x+b") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            digest = _sha256(f)
        path = folder / f"{_TENSORS_PREFIX}{digest[:16]}.pt"
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return digest, path


def _write_atomically(folder: Path, path: Path, write: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    with contextlib.suppress(OSError):  # the rename itself survives a power cut (POSIX)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    """A contiguous CPU copy (a copy also keeps ``torch.save`` from writing a whole shared
    buffer for a view)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().clone()
    try:
        return torch.from_numpy(np.array(value, copy=True, order="C"))
    except TypeError as err:
        raise ResumeError(f"resume point: {where} is not an array torch can store: {err}") from err


def _encode(value: Any, tensors: dict[str, torch.Tensor] | None, where: str) -> Any:
    """``value`` as JSON: arrays go into ``tensors`` and leave ``{"$tensor": key, "$type":
    "numpy"|"torch"}`` behind; tuples and dicts with non-string (or ``$``) keys are tagged."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.void | np.object_):
        return _encode(value.item(), tensors, where)
    if isinstance(value, torch.Tensor | np.ndarray):
        if tensors is None:
            raise ResumeError(f"resume point: {where} is an array; only JSON values go there")
        key = f"state/{sum(k.startswith('state/') for k in tensors)}"
        tensors[key] = _as_tensor(value, where)
        return {"$tensor": key, "$type": "torch" if isinstance(value, torch.Tensor) else "numpy"}
    if isinstance(value, Mapping):
        items = [(k, _encode(v, tensors, f"{where}[{k!r}]")) for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("$") for k, _ in items):
            return dict(items)
        for k, _ in items:
            if not (k is None or isinstance(k, str | bool | int | float)):
                raise ResumeError(
                    f"resume point: {where} has a key of type {type(k).__name__} ({k!r}); "
                    "keys must be str, int, float, bool or None"
                )
        return {"$dict": [[k, v] for k, v in items]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    raise ResumeError(
        f"resume point: {where} is a {type(value).__name__}; expected a JSON value "
        "(str, int, float, bool, None, list, dict) or an array"
    )


# --------------------------------------------------------------------------- reading


def load_resume_point(path: str | Path) -> ResumePoint:
    """Read a resume point written by :func:`save_resume_point` (``path`` = its
    ``resume.json``). Its tensors are loaded with ``weights_only=True`` only.

    Raises:
        ResumeError: naming the file and what is wrong with it (missing, not a resume point,
            an old pickled ``resume.pt``, a tensors file that does not match or is not
            tensors-only).
    """
    path = Path(path)
    for attempt in range(3):
        document = _read_document(path)
        try:
            return _load(path, document)
        except _TensorsGone:
            if attempt == 2:
                raise ResumeError(
                    f"resume: the tensors file that {path} names keeps disappearing (another "
                    "process is writing this resume point); try again when the run has stopped"
                ) from None
            # A writer replaced resume.json and removed the file this one named: read again.
    raise AssertionError("unreachable")  # pragma: no cover


class _TensorsGone(Exception):
    pass


def _read_document(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise ResumeError(f"resume: no resume point at {path}") from err
    except OSError as err:
        raise ResumeError(f"resume: cannot read {path}: {err}") from err
    if raw[:4] == b"PK\x03\x04" or raw[:1] == b"\x80":  # torch.save's zip, or a bare pickle
        raise ResumeError(
            f"resume: {path} is a pickle (an old resume.pt or another torch.save file), not a "
            f"fedfusion resume point ({RESUME_FILE}): refusing to unpickle it (it could run "
            f"code); {_LEGACY_HINT}"
        )
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResumeError(
            f"resume: {path} is not a fedfusion resume point ({RESUME_FILE}, JSON): {err}"
        ) from err
    if not isinstance(document, dict) or document.get("kind") != _KIND:
        raise ResumeError(f"resume: {path} is JSON but not a fedfusion resume point")
    if document.get("format") != _FORMAT:
        raise ResumeError(
            f"resume: {path} is a resume point of format {document.get('format')!r}; this "
            f"fedfusion reads format {_FORMAT}"
        )
    return document


def _load(path: Path, document: dict[str, Any]) -> ResumePoint:
    try:
        entry = document["tensors"]
        name, digest = str(entry["file"]), str(entry["sha256"])
        model_keys = [str(k) for k in document["arrays"]]
        round_, run_id = int(document["round"]), document.get("run-id")
        strategy, config, extra = document["strategy"], document["config"], document["extra"]
    except (KeyError, TypeError, ValueError) as err:
        raise ResumeError(f"resume: {path} lacks or garbles {err}") from err
    if not _TENSORS_NAME.fullmatch(name):
        raise ResumeError(
            f"resume: {path} names the tensors file {name!r}; expected "
            f"{_TENSORS_PREFIX}<16 hex digits>.pt in the same folder"
        )
    tensors_path = path.parent / name
    try:
        f = open(tensors_path, "rb")  # noqa: SIM115 - kept open: hash and load the same bytes
    except FileNotFoundError:
        raise _TensorsGone from None
    except OSError as err:
        raise ResumeError(f"resume: cannot read {tensors_path}: {err}") from err
    with f:
        found = _sha256(f)
        if found != digest:
            raise ResumeError(
                f"resume: {tensors_path} does not match {path} (SHA-256 {found[:16]}..., "
                f"expected {digest[:16]}...): it was changed or belongs to another save"
            )
        f.seek(0)
        try:
            tensors = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever it is, the file is not usable
            raise ResumeError(
                f"resume: {tensors_path} is not a tensors-only file: refusing to unpickle it "
                f"(it could run code) ({type(err).__name__}: {_first_line(err)})"
            ) from err
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ResumeError(f"resume: {tensors_path} is not a flat dict of str to tensor")
    missing = [k for k in model_keys if f"model/{k}" not in tensors]
    if missing:
        raise ResumeError(
            f"resume: {tensors_path} lacks the model arrays {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    try:
        decoded_strategy = _decode(strategy, tensors, path)
        decoded_extra = _decode(extra, tensors, path)
        decoded_config = _decode(config, {}, path)
    except ResumeError:
        raise
    except (TypeError, ValueError) as err:
        raise ResumeError(f"resume: {path} holds a garbled value: {err}") from err
    for what, value in (("strategy", decoded_strategy), ("config", decoded_config),
                        ("extra", decoded_extra)):  # fmt: skip
        if not isinstance(value, dict):
            raise ResumeError(f"resume: {path}: {what} is a {type(value).__name__}, not a dict")
    return ResumePoint(
        round=round_,
        arrays={k: tensors[f"model/{k}"] for k in model_keys},
        strategy=decoded_strategy,
        config=decoded_config,
        run_id=None if run_id is None else int(run_id),
        extra=decoded_extra,
    )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor], path: Path) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        key = value["$tensor"]
        if key not in tensors:
            raise ResumeError(f"resume: {path} refers to a tensor {key!r} its tensors file lacks")
        tensor = tensors[key]
        return tensor.numpy() if value.get("$type") == "numpy" else tensor
    if "$tuple" in value:
        return tuple(_decode(v, tensors, path) for v in value["$tuple"])
    if "$dict" in value:
        return {k: _decode(v, tensors, path) for k, v in value["$dict"]}
    return {k: _decode(v, tensors, path) for k, v in value.items()}


def _sha256(f: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


# --------------------------------------------------------------------------- finding


def find_resume_point(resume_run: str, *, db_url: str = "") -> Path:
    """The ``resume.json`` that ``resume-run`` names.

    Args:
        resume_run: a run's out-dir (or checkpoint folder), a ``resume.json`` path, or the id
            of a run in the run store at ``db_url``.
        db_url: the run store (needed for a run id).

    Raises:
        ResumeError: listing where it looked (and saying so when it found only an old,
            pickled ``resume.pt``, which is never loaded).
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
    legacy = [folder / _LEGACY_FILE for folder in folders if (folder / _LEGACY_FILE).is_file()]
    if legacy:
        raise ResumeError(
            f"resume-run={text}: found only {legacy[0]}, an old pickled resume point: "
            f"refusing to unpickle it (it could run code); {_LEGACY_HINT}"
        )
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
