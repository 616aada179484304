"""Checks of a run configuration that go beyond one value's range (no Flower import).

:meth:`server.config.RunConfig.validate` calls :func:`option_problems`; :meth:`~server.config.
RunConfig.from_mapping` calls :func:`misspelt_keys`. Each returns readable problems (empty when
all is well) so that the config can list every problem at once.

- names: an unknown strategy or backbone gets "did you mean" (task names are checked by
  :func:`models.tasks.get_task`);
- combinations refused before the run starts: FedProx with local DP (DP-SGD clips per-sample
  gradients; the proximal term is not per-sample), FedBN with central DP (in ``config.py``),
  secure aggregation with a strategy that needs each site's own update (in
  :mod:`server.secagg_config`);
- run-config keys that look like a misspelt setting (``num-server-round``) are refused rather
  than silently ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from models._options import UnknownOptionError, look_up_option

if TYPE_CHECKING:
    from server.config import RunConfig

__all__ = ["federation_size_problems", "misspelt_keys", "option_problems"]

# Keys other parts of the app read from the run config (not RunConfig fields).
_OTHER_PREFIXES = ("sim-", "num-workers", "poison-")  # poison-*: simulation.faults


def option_problems(config: RunConfig, *, strategies: Collection[str]) -> list[str]:
    """Unknown names and refused combinations in ``config``.

    Args:
        config: the run configuration.
        strategies: the strategy names the server knows.
    """
    problems: list[str] = []
    try:
        look_up_option("strategy", config.strategy, strategies)
    except UnknownOptionError as err:
        problems.append(f"strategy: {err}")
    if config.backbone:
        problem = _backbone_problem(config.backbone)
        if problem:
            problems.append(f"backbone: {problem}")
    if config.strategy == "fedprox" and config.dp_epsilon > 0:
        problems.append(
            "strategy fedprox cannot run with local DP (dp-epsilon > 0): DP-SGD clips "
            "per-sample gradients and FedProx' proximal term is not per-sample, so it would "
            "bypass the clipping; use fedavg, fedadam or fedyogi for DP runs"
        )
    return problems


def federation_size_problems(config: RunConfig, sites: Collection[str]) -> list[str]:
    """Node minimums a federation of exactly ``sites`` can never meet (the server would wait
    for more sites forever), e.g. in a simulation whose sites are known in advance."""
    problems = []
    names = ", ".join(sorted(sites)) or "none"
    for key, value in (
        ("min-train-nodes", config.min_train_nodes),
        ("min-available-nodes", config.min_available_nodes),
    ):
        if value > len(sites):
            problems.append(
                f"{key} is {value} but the federation has {len(sites)} site(s) ({names}): the "
                f"server would wait forever; use at most {len(sites)}"
            )
    return problems


def misspelt_keys(keys: Iterable[str], fields: Collection[str]) -> list[str]:
    """Run-config keys that are not settings but close to one (kebab-case ``fields``)."""
    problems = []
    for key in keys:
        if key in fields or key.startswith(_OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(key, sorted(fields), n=3, cutoff=0.8)
        if close:
            problems.append(
                f"unknown run config key {key!r}. Did you mean {', '.join(repr(c) for c in close)}?"
            )
    return problems


def _backbone_problem(name: str) -> str | None:
    """Why ``name`` is not a timm model (with "did you mean"), or None."""
    import timm

    arch = name.split(".", 1)[0]  # "resnet18.a1_in1k": architecture + pretrained tag
    if timm.is_model(arch):
        return None
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown backbone {name!r}: not a timm model.{hint} "
        f"List candidates with timm.list_models('*{arch[:6]}*')"
    )
