"""The site's ClientApp for secure aggregation: Flower's SecAgg+ over the normal site code.

Flower 1.41 has SecAgg+ only in its legacy API: the server runs
``flwr.server.workflow.SecAggPlusWorkflow`` and each site a ``NumPyClient`` wrapped by
``flwr.client.mod.secaggplus_mod``. :class:`SiteNumPyClient` adapts that API to the same
:mod:`client.site` functions the message-API ClientApp (:mod:`client.app`) calls.

What a site sends (the mod replaces the arrays before anything leaves the site):

- train: its *update* (trained weights minus the global weights it received, one NumPy array
  per ``state_dict`` entry, in ``state_dict`` order, 0-d entries as shape ``(1,)``, see
  :meth:`SiteNumPyClient.fit`), which ``secaggplus_mod`` scales by
  ``num-examples / secagg-max-weight``, clips to ``+-secagg-clipping-range``, quantises and
  masks; the server only ever receives the masked integers. Alongside, in clear: the number
  of examples (the FedAvg weight), the site's name and training scalars (loss, seconds,
  steps, DP accounting);
- evaluate (not masked; no arrays): the site's :class:`~models.metrics.ScoreSummary` counts,
  flattened into scalar keys (:mod:`models.flat_record`) because legacy metrics refuse lists.

Updates rather than weights are sent because the clipping applies to
``value * num-examples / max-weight``: a weight such as a BatchNorm running variance can exceed
the range and would be clipped silently, an update of one round practically never does. The
server adds the securely averaged update to its global model, which is FedAvg exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import NDArrays, Scalar

from client.privacy import PrivacyLedger
from client.site import RoundSettings, SiteSession, SiteSettings, get_session
from models.flat_record import flatten_record

__all__ = ["SiteNumPyClient", "SecAggSiteError", "client_fn", "app"]

_log = logging.getLogger(__name__)

_LEDGER_KEY = "dp-ledger"  # context.state record: the site's DP-SGD history (as client.app)


class SecAggSiteError(ValueError):
    """The round asks for something the secure-aggregation path cannot do safely."""


class SiteNumPyClient(NumPyClient):
    """A site as a legacy ``NumPyClient``: fit sends the update, evaluate the summary counts.

    Args:
        context: the node's Flower context (node config: ``data-path``, ``site-id``, DP
            budget; state: the DP ledger across rounds).
    """

    def __init__(self, context: Context) -> None:
        self.context = context

    def _session(self, config: Mapping[str, Scalar]) -> tuple[SiteSession, RoundSettings]:
        settings = SiteSettings.from_node_config(self.context.node_config)
        rounds = RoundSettings.from_config(config)
        if rounds.keep_local_norm:
            raise SecAggSiteError(
                "the server asks to keep normalisation layers local (FedBN), which secure "
                "aggregation does not support: every array is part of the masked sum"
            )
        return get_session(settings, rounds), rounds

    def get_parameters(self, config: Mapping[str, Scalar]) -> NDArrays:
        """The site model's weights, one array per ``state_dict`` entry in its order."""
        session, _ = self._session(config)
        return [t.detach().cpu().numpy() for t in session.model.state_dict().values()]

    def fit(
        self, parameters: NDArrays, config: Mapping[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Load the global weights, train, return ``(update, num-examples, scalars)``."""
        session, rounds = self._session(config)
        budget = session.privacy_budget(rounds)
        _check_weight(len(session.manifest.rows("train")), config, site=session.site_id)
        global_state = _to_state_dict(session, parameters)
        session.load_global(global_state)
        metrics: dict[str, Scalar] = {}
        if budget is None:
            result = session.train(rounds)
        else:
            ledger = PrivacyLedger.from_record(self.context.state.config_records.get(_LEDGER_KEY))
            result, report, ledger = session.train_private(rounds, budget, ledger)
            self.context.state[_LEDGER_KEY] = ConfigRecord(ledger.to_record())
            metrics.update(
                {
                    "dp-epsilon-spent": report.epsilon_spent,
                    "dp-epsilon-budget": report.epsilon_budget,
                    "dp-delta": report.delta,
                    "dp-noise-multiplier": report.noise_multiplier,
                    "dp-max-grad-norm": report.max_grad_norm,
                }
            )
        sent, _ = session.shareable_state(keep_local_norm=False)
        # 0-d arrays (BatchNorm's num_batches_tracked) go as shape (1,): Flower 1.41's
        # SecAggPlusWorkflow.unmask_stage shifts and rescales the unmasked sum with in-place
        # ops on each array, which are no-ops on the NumPy scalars its dequantize returns for
        # 0-d arrays (the server restores the shape).
        update = [
            np.atleast_1d((sent[key].detach().cpu() - global_state[key]).numpy())
            for key in global_state
        ]
        num_examples = int(result.num_examples)
        clipped = _check_range(update, num_examples, config, site=session.site_id)
        metrics.update(
            {
                "site-id": session.site_id,
                "train-loss": result.mean_loss,
                "train-seconds": result.seconds,
                "train-steps": result.num_steps,
                "skipped-files": result.skipped_files,
                "secagg-clipped-values": clipped,
            }
        )
        return update, num_examples, metrics

    def evaluate(
        self, parameters: NDArrays, config: Mapping[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        """Evaluate the global weights; reply with the flattened ScoreSummary counts."""
        session, rounds = self._session(config)
        session.load_global(_to_state_dict(session, parameters))
        result = session.evaluate(rounds)
        summary = result.summary
        loss = summary.loss_sum / summary.n if summary.n else math.nan
        metrics: dict[str, Scalar] = {
            "site-id": session.site_id,
            "eval-seconds": result.seconds,
            "skipped-files": result.skipped_files,
            **flatten_record(summary.to_record()),
        }
        return float(loss), int(result.num_examples), metrics


def _to_state_dict(session: SiteSession, parameters: NDArrays) -> dict[str, torch.Tensor]:
    """The global arrays as the site model's state dict (same order, shapes and dtypes)."""
    reference = session.model.state_dict()
    if len(parameters) != len(reference):
        raise SecAggSiteError(
            f"site {session.site_id}: the server sent {len(parameters)} arrays, the model "
            f"({session.task.model}, {session.task.backbone}) has {len(reference)}: the server "
            "and the site must build the same model (task, backbone, dp-safe-model)"
        )
    out: dict[str, torch.Tensor] = {}
    for (key, ref), array in zip(reference.items(), parameters, strict=True):
        if tuple(array.shape) != tuple(ref.shape):
            raise SecAggSiteError(
                f"site {session.site_id}: array {key!r} has shape {tuple(array.shape)} from "
                f"the server, expected {tuple(ref.shape)}"
            )
        out[key] = torch.from_numpy(np.array(array, copy=True)).to(ref.dtype)
    return out


def _check_weight(num_examples: int, config: Mapping[str, Scalar], *, site: str) -> float:
    """Refuse more examples than ``secagg-max-weight`` (checked before and after training)."""
    max_weight = float(config.get("secagg-max-weight", math.inf))  # type: ignore[arg-type]
    if num_examples > max_weight:
        raise SecAggSiteError(
            f"site {site} has {num_examples} training examples, more than secagg-max-weight "
            f"{max_weight:g}: SecAgg+ would overflow its weight; the coordinator must raise "
            "secagg-max-weight to at least the largest site's number of training examples"
        )
    return max_weight


def _check_range(
    update: NDArrays, num_examples: int, config: Mapping[str, Scalar], *, site: str
) -> int:
    """Refuse a weight above ``secagg-max-weight``; count values SecAgg+ will clip."""
    if "secagg-max-weight" not in config:
        return 0
    max_weight = _check_weight(num_examples, config, site=site)
    clipping = float(config.get("secagg-clipping-range", 8.0))  # type: ignore[arg-type]
    limit = clipping * max_weight / max(num_examples, 1)
    clipped = int(sum(int(np.count_nonzero(np.abs(a) > limit)) for a in update))
    if clipped:
        _log.warning(
            "site %s: %d update values exceed +-%.3g and will be clipped by SecAgg+ "
            "(secagg-clipping-range %g x secagg-max-weight %g / %d examples); the aggregate "
            "is no longer exact FedAvg: raise secagg-clipping-range",
            site,
            clipped,
            limit,
            clipping,
            max_weight,
            num_examples,
        )
    return clipped


def client_fn(context: Context) -> Client:
    """The site's legacy client (the node config is read at each message)."""
    return SiteNumPyClient(context).to_client()


# secaggplus_mod handles the four SecAgg+ stages of each train message and passes evaluate
# messages through; only the "collect masked vectors" stage calls SiteNumPyClient.fit.
app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
