"""Simulated faults: a poisoned site whose updates are scaled, sign-flipped or NaN.

Selected with run-config keys in a simulation (the server ignores them)::

    fedfusion simulate ckd-clinical --run-config 'poison-site=1 poison-kind=scale'

- ``poison-site``: the poisoned site, by index in the sorted site list (its partition id) or
  by name; unset = no poisoning.
- ``poison-kind``: ``scale`` (the update ``w - w_global`` times ``poison-scale``), ``sign``
  (the update times ``-poison-scale``) or ``nan`` (every floating-point weight NaN).
- ``poison-scale``: default 50.
- ``poison-from-round``: first poisoned round. Default 1.

The site trains honestly and the reply is rewritten on its way back, as a compromised site
or a broken client would send it; the server's update checks (``strategies.validation``) and
robust strategies (``fedmedian``, ``fedtrimmedavg``, ``krum``) are what stand against it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message

__all__ = ["POISON_KINDS", "Poison", "poison_reply"]

_log = logging.getLogger(__name__)

POISON_KINDS = ("scale", "sign", "nan")


@dataclass(frozen=True)
class Poison:
    """One poisoned site.

    Args:
        site: the poisoned site's name.
        kind: one of :data:`POISON_KINDS`.
        scale: the factor of ``scale``/``sign``. Default 50.
        from_round: the first poisoned round. Default 1.
    """

    site: str
    kind: str = "scale"
    scale: float = 50.0
    from_round: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in POISON_KINDS:
            problems.append(
                f"poison-kind must be one of {', '.join(POISON_KINDS)}, got {self.kind!r}"
            )
        if self.scale <= 0:
            problems.append(f"poison-scale must be > 0, got {self.scale}")
        if self.from_round < 1:
            problems.append(f"poison-from-round must be >= 1, got {self.from_round}")
        if problems:
            raise ValueError("invalid poisoning: " + "; ".join(problems))

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, object], sites: Sequence[str]
    ) -> Poison | None:
        """The ``poison-*`` keys of a run config (None when ``poison-site`` is unset).

        Raises:
            ValueError: for an unknown site or kind, naming the allowed values.
        """
        raw = run_config.get("poison-site", "")
        if raw in ("", None):
            return None
        text = str(raw)
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(sites):
                raise ValueError(
                    f"poison-site={index} is not a site index: the {len(sites)} sites are "
                    + ", ".join(f"{i}={s}" for i, s in enumerate(sites))
                )
            site = sites[index]
        elif text in sites:
            site = text
        else:
            raise ValueError(f"poison-site={text!r} is not a site: {', '.join(sites)}")
        if str(run_config.get("update-dtype", "float32")) != "float32":
            raise ValueError(
                "poison-site needs update-dtype float32 (the poisoned site rewrites weights, "
                "not float16 differences)"
            )
        return cls(
            site=site,
            kind=str(run_config.get("poison-kind", "scale")),
            scale=float(run_config.get("poison-scale", 50.0)),  # type: ignore[arg-type]
            from_round=int(run_config.get("poison-from-round", 1)),  # type: ignore[call-overload]
        )


def poison_reply(reply: Message, sent: ArrayRecord, poison: Poison, server_round: int) -> Message:
    """Rewrite a train reply as the poisoned site would send it (others pass unchanged).

    Args:
        reply: the site's honest train reply.
        sent: the global arrays the server sent this round.
        poison: the fault.
        server_round: the round.
    """
    if reply.has_error() or server_round < poison.from_round:
        return reply
    name, arrays = next(iter(reply.content.array_records.items()))
    out = ArrayRecord()
    for key, array in arrays.items():
        value = array.numpy()
        if np.issubdtype(value.dtype, np.floating) and key in sent:
            base = sent[key].numpy().astype(value.dtype)
            if poison.kind == "nan":
                value = np.full_like(value, np.nan)
            else:
                factor = poison.scale if poison.kind == "scale" else -poison.scale
                value = base + factor * (value - base)
        out[key] = Array(np.ascontiguousarray(value))
    reply.content[name] = out
    _log.info(
        "round %d: site %s sends a %s-poisoned update", server_round, poison.site, poison.kind
    )
    return reply
