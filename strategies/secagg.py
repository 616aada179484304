"""FedAvg behind Flower's SecAgg+ workflow: the server only ever holds the sites' summed update.

Flower 1.41 runs SecAgg+ in its legacy API only (``flwr.server.workflow.SecAggPlusWorkflow``
driving a legacy ``flwr.server.strategy`` strategy). The workflow collects each site's masked,
quantised vector, removes the masks of the sum only, and hands the strategy results whose
parameters are all that one unmasked, example-weighted mean. :class:`SecureFedAvg` is the
legacy FedAvg over those results, plus what the rest of fedfusion expects from a strategy:

- sites send *updates* (``client.secagg_app``), so the weighted mean is the mean update and
  the strategy adds it to its global model (FedAvg exactly, within the quantisation error);
- per-round history (:class:`~strategies.history.RunHistory`): the sites' training scalars,
  per-site and global clinical metrics from the summed ScoreSummary counts (the evaluation
  round is not masked: it carries counts, never arrays);
- the audit trail (:mod:`strategies.audit`) with ``update-l2-norm`` null: the server cannot
  know a single site's update.

The error against plain FedAvg is bounded by :func:`quantisation_error_bound`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from models.flat_record import unflatten_record
from models.metrics import ScoreSummary, summary_metrics
from strategies.audit import AuditTrail, RoundAudit, SiteUpdate
from strategies.history import RoundRecord, RunHistory, SiteFailure
from strategies.screening import error_reason, site_name_problem, summary_problem

__all__ = ["SecureFedAvg", "SecAggOverflowError", "quantisation_error_bound"]

_log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord], None]
GlobalCallback = Callable[[int, Mapping[str, np.ndarray]], None]
Failure = tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException

_UNKNOWN_NODE = -1  # SecAgg+ reports a failed site's error without its node id
_MAX_REASON = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLIENT_MESSAGE = "Message: "  # flwr's ClientAppException: "... occurred. Message: <text>"
_ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


class SecAggOverflowError(RuntimeError):
    """More sites were sampled than the quantisation range leaves room for in the modulus."""


def quantisation_error_bound(
    num_examples: Sequence[int],
    *,
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
    max_abs_update: float = 0.0,
) -> float:
    """Largest per-value difference between SecAgg+'s mean and exact FedAvg of the same updates.

    Each site sends ``q_i = round(n_i / max_weight * T)`` and its update times ``q_i / T``,
    stochastically rounded to one of ``T`` levels over ``[-c, c]``: every site adds less than
    one level, ``2c / T``, to the unmasked sum, which is divided by ``W = sum(q_i) / T``. The
    weights ``q_i / T`` differ from ``n_i / max_weight`` by at most ``1 / 2T`` each, which moves
    the mean by at most ``max_abs_update * k / (T * W)``. So, for ``k`` sites::

        |secure - fedavg| <= k * (2c + max_abs_update) / (T * W)

    (values inside the clipping range; clipped values are not bounded).

    Args:
        num_examples: each site's number of training examples (its FedAvg weight).
        clipping_range: ``c``, SecAgg+'s clipping range.
        quantization_range: ``T``, SecAgg+'s quantisation range.
        max_weight: SecAgg+'s ``max_weight``.
        max_abs_update: the largest absolute value of any site's update; default 0.
    """
    sites = len(num_examples)
    total = sum(round(n / max_weight * quantization_range) for n in num_examples)
    if sites == 0 or total == 0:
        return math.inf
    weight = total / quantization_range
    return sites * (2 * clipping_range + max_abs_update) / (quantization_range * weight)


class SecureFedAvg(FedAvg):
    """Legacy FedAvg of site updates for ``SecAggPlusWorkflow``, with fedfusion's records.

    Args:
        initial_state: the global model's arrays by ``state_dict`` key, in ``state_dict``
            order (the sites send their updates in the same order).
        train_config: sent with every train message (``server-round`` is added).
        evaluate_config: sent with every evaluate message (``server-round`` is added).
        quantization_range: SecAgg+'s ``quantization_range``, to refuse a round whose sum
            could overflow ``modulus``.
        modulus: SecAgg+'s ``modulus_range``. Default 2**32.
        on_round_end: called with each finished :class:`RoundRecord` (after evaluation).
        on_global: called with ``(round, global arrays)`` after each aggregation.
        audit: the audit trail to extend after each training round; None keeps none.
        **kwargs: passed to Flower's legacy FedAvg (``fraction_fit``, ``min_fit_clients``,
            ``min_available_clients``, ...).
    """

    def __init__(
        self,
        *,
        initial_state: Mapping[str, np.ndarray],
        train_config: Mapping[str, Scalar],
        evaluate_config: Mapping[str, Scalar],
        quantization_range: int,
        modulus: int = 2**32,
        on_round_end: RoundCallback | None = None,
        on_global: GlobalCallback | None = None,
        audit: AuditTrail | None = None,
        **kwargs: object,
    ) -> None:
        self.keys = list(initial_state)
        self.global_arrays: NDArrays = [np.asarray(a) for a in initial_state.values()]
        super().__init__(
            initial_parameters=ndarrays_to_parameters(self.global_arrays),
            on_fit_config_fn=lambda r: {**train_config, "server-round": r},
            on_evaluate_config_fn=lambda r: {**evaluate_config, "server-round": r},
            **kwargs,  # type: ignore[arg-type]
        )
        self.quantization_range = quantization_range
        self.modulus = modulus
        self.history = RunHistory()
        self.on_round_end = on_round_end
        self.on_global = on_global
        self.audit = audit
        #: The securely aggregated mean update of the last round (what the server learnt).
        self.last_update: NDArrays | None = None
        self._asked: dict[int, list[int]] = {}
        self._aggregated: set[int] = set()
        self._round_started = time.perf_counter()

    def __repr__(self) -> str:
        return f"SecureFedAvg(accept_failures={self.accept_failures})"

    @property
    def global_state(self) -> dict[str, np.ndarray]:
        """The current global model's arrays by ``state_dict`` key."""
        return dict(zip(self.keys, self.global_arrays, strict=True))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._round_started = time.perf_counter()
        instructions = super().configure_fit(server_round, parameters, client_manager)
        sites = len(instructions)
        if sites * self.quantization_range >= self.modulus:
            raise SecAggOverflowError(
                f"round {server_round} sampled {sites} sites: their quantised sum can reach "
                f"{sites} x secagg-quantization-range {self.quantization_range}, beyond the "
                f"SecAgg+ modulus {self.modulus}; lower secagg-quantization-range below "
                f"{self.modulus // sites}"
            )
        if sites == 2 and server_round == 1:
            _log.warning(
                "secure aggregation with 2 sites: each site can compute the other's update "
                "from the change of the global model, and the server faces a single pairwise "
                "mask drawn from a 32-bit seed (Flower's pseudo_rand_gen): use 3 or more sites"
            )
        self._asked[server_round] = [int(proxy.node_id) for proxy, _ in instructions]
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Add the securely averaged update to the global model; record who took part."""
        record = self.history.round(server_round)
        for proxy, fit_res in results:
            metrics = dict(fit_res.metrics)
            site = _site(metrics.pop("site-id", None), proxy.node_id)
            record.train[site] = {"num-examples": fit_res.num_examples, **metrics}
        failures = _unique(failures)  # type: ignore[arg-type]
        for failure in failures:
            node_id, _, reason = _failure(failure)
            record.failures.append(SiteFailure(server_round, "train", node_id, reason))
        self._audit(server_round, results, failures)
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is None:
            return None, metrics
        update = parameters_to_ndarrays(parameters)
        if len(update) != len(self.global_arrays):
            raise ValueError(
                f"round {server_round}: the aggregate has {len(update)} arrays, the global "
                f"model {len(self.global_arrays)}: every site must build the same model"
            )
        self.global_arrays = [_apply(g, u) for g, u in zip(self.global_arrays, update, strict=True)]
        self.last_update = update
        self._aggregated.add(server_round)
        _log.info(
            "round %d: secure aggregate of %d site(s), %d example(s)",
            server_round,
            len(results),
            sum(r.num_examples for _, r in results),
        )
        if self.on_global is not None:
            self.on_global(server_round, self.global_state)
        return ndarrays_to_parameters(self.global_arrays), metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round not in self._aggregated:
            reason = (
                "secure aggregation did not complete (too few sites answered for the "
                "reconstruction threshold): the global model was not updated this round"
            )
            _log.error("round %d: %s", server_round, reason)
            self.history.round(server_round).failures.append(
                SiteFailure(server_round, "train", _UNKNOWN_NODE, reason)
            )
        return super().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Global metrics from the sum of the sites' ScoreSummary counts."""
        record = self.history.round(server_round)
        for failure in _unique(failures):  # type: ignore[arg-type]
            node_id, _, reason = _failure(failure)
            record.failures.append(SiteFailure(server_round, "evaluate", node_id, reason))
        total: ScoreSummary | None = None
        for proxy, eval_res in results:
            site = _site(eval_res.metrics.get("site-id"), proxy.node_id)
            try:
                summary, reason = summary_problem(
                    unflatten_record(eval_res.metrics),
                    num_classes=None if total is None else total.num_classes,
                    score_bins=None if total is None else total.n_bins,
                    num_examples=int(eval_res.num_examples),
                )
            except Exception as err:  # a malformed flattened record
                summary, reason = None, f"invalid ScoreSummary record ({type(err).__name__})"
            if summary is None:
                record.failures.append(
                    SiteFailure(server_round, "evaluate", int(proxy.node_id), str(reason))
                )
                continue
            record.sites[site] = {**summary_metrics(summary), "n": summary.n}
            total = summary if total is None else total + summary
        if total is not None:
            record.global_metrics = {**summary_metrics(total), "n": total.n}
            record.global_summary = total.to_record()
        record.seconds = time.perf_counter() - self._round_started
        _log.info(
            "round %d: global auc %s, n %s (%d site(s))",
            server_round,
            record.global_metrics.get("auc"),
            record.global_metrics.get("n"),
            len(record.sites),
        )
        if self.on_round_end is not None:
            self.on_round_end(record)
        if not record.global_metrics:
            return None, {}
        scalars: dict[str, Scalar] = {
            k: float(v) for k, v in record.global_metrics.items() if isinstance(v, int | float)
        }
        return float(record.global_metrics["loss"]), scalars  # type: ignore[arg-type]

    def _audit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> None:
        """One audit line: who was asked and answered, with how many examples; no norms."""
        if self.audit is None:
            return
        updates = [
            SiteUpdate(
                node_id=int(proxy.node_id),
                site=_site(fit_res.metrics.get("site-id"), proxy.node_id),
                num_examples=fit_res.num_examples,
                update_norm=None,  # hidden by secure aggregation
                dp={
                    k: float(v)
                    for k, v in fit_res.metrics.items()
                    if k.startswith("dp-") and isinstance(v, int | float)
                },
                skipped_files=_int_or_none(fit_res.metrics.get("skipped-files")),
            )
            for proxy, fit_res in results
        ]
        for failure in failures:
            node_id, code, reason = _failure(failure)
            updates.append(
                SiteUpdate(node_id=node_id, site=str(node_id), error_code=code, reason=reason)
            )
        entry = RoundAudit(
            round=server_round,
            time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            asked=self._asked.get(server_round, []),
            updates=updates,
            dp=dict(self.audit.settings),
        )
        self.audit.rounds.append(entry)
        if self.audit.path is not None:
            with self.audit.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry.to_json(), sort_keys=True) + "\n")


def _apply(global_array: np.ndarray, update: np.ndarray) -> np.ndarray:
    """``global + update`` in the global array's dtype (integer buffers are rounded)."""
    total = global_array.astype(np.float64) + np.asarray(update, dtype=np.float64)
    if np.issubdtype(global_array.dtype, np.integer):
        total = np.rint(total)
    return total.astype(global_array.dtype).reshape(global_array.shape)


def _unique(failures: list[Failure]) -> list[Failure]:
    """Each failure once: Flower 1.41's collect-masked-vectors stage records an error twice."""
    seen: set[int] = set()
    out = []
    for failure in failures:
        key = (
            id(failure.args[0])
            if isinstance(failure, BaseException) and failure.args
            else id(failure)
        )
        if key not in seen:
            seen.add(key)
            out.append(failure)
    return out


def _failure(failure: Failure) -> tuple[int, int, str]:
    """(node id, error code, reason) of a legacy failure; SecAgg+ failures carry no node id.
    The reason is the code and at most a fixed sentence (:func:`error_reason`), never the
    site's own text."""
    if isinstance(failure, BaseException):
        error = failure.args[0] if failure.args else failure
        code = getattr(error, "code", 0)
        code = code if isinstance(code, int) and not isinstance(code, bool) else 0
        reason = getattr(error, "reason", None) or str(error)
        return _UNKNOWN_NODE, code, error_reason(code, _short(str(reason)))
    proxy, res = failure
    code = int(res.status.code.value)
    return int(proxy.node_id), code, error_reason(code, _short(str(res.status.message)))


def _site(name: object, node_id: object) -> str:
    """The site name a result carries when it is a plain name (else the node id)."""
    return str(name) if site_name_problem(name) is None else str(node_id)


def _short(reason: str) -> str:
    """The site's own message out of a ClientApp exception report (Ray adds tracebacks)."""
    reason = _ANSI.sub("", reason)
    marker = reason.rfind(_CLIENT_MESSAGE)
    if marker >= 0:
        reason = reason[marker + len(_CLIENT_MESSAGE) :].strip().removesuffix("'>").strip()
    else:
        errors = [line for line in reason.splitlines() if _ERROR_LINE.match(line)]
        reason = errors[-1] if errors else reason
    return reason[:_MAX_REASON]


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
