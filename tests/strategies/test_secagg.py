"""Secure aggregation (Flower's SecAgg+): the server learns only the sum of the sites' updates.

Fast tests cover the config checks, the site adapter and the strategy. The slow test runs
one 3-site, 2-round simulation through ``simulation.runner.simulate`` with ``secagg=true``,
observing both sides without touching Flower's internals: simulated sites are a
:class:`SiteNumPyClient` subclass that also writes each true update to disk, and the server's
grid is wrapped to keep every reply it receives. Then:

- (a) each round's secure aggregate (the change of the global model) equals plain FedAvg of
  the true updates within :func:`quantisation_error_bound`, also in round 2, where one site
  drops out after the key exchange and SecAgg+ rebuilds its masks from the others' shares;
- (b) no reply the server received holds a site's arrays, and the masked vectors it did
  receive are uncorrelated with every site's true update.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, RecordDict
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid

from client.secagg_app import SecAggSiteError, SiteNumPyClient
from models import create_model_for_task, get_task
from models.flat_record import FlatRecordError, flatten_record, unflatten_record
from models.metrics import ScoreSummary
from server.app import run_federation
from server.config import RunConfig, RunConfigError
from simulation import runner
from simulation.scenario import load_scenario
from simulation.secagg import simulated_secagg_client
from simulation.synthetic import generate_dual_center
from strategies.audit import AuditTrail
from strategies.secagg import SecureFedAvg, quantisation_error_bound

IMAGE_SIZE = 32
MAX_WEIGHT = 16.0  # above every tiny site's number of training examples: finer weights
CLIPPING = 8.0
LEVELS = 2**22

REFUSED = [
    ({"strategy": "fedprox"}, "only with strategy fedavg"),
    ({"strategy": "fedbn"}, "FedBN keeps normalisation layers local"),
    ({"strategy": "fedadam"}, "only with strategy fedavg"),
    ({"central-dp-noise-multiplier": 1.0}, "cannot run with central DP"),
    ({"secagg-num-shares": 4}, "odd number >= 3"),
    ({"secagg-reconstruction-threshold": 0.5}, "in (0.5, 1]"),
    ({"secagg-reconstruction-threshold": 2.5}, "an integer below"),
    ({"secagg-num-shares": 3, "secagg-reconstruction-threshold": 3}, "an integer below"),
    ({"secagg-quantization-range": 2**31}, "[2, 2**31)"),
    ({"secagg-clipping-range": 0.0}, "secagg-clipping-range must be > 0"),
    ({"secagg-max-weight": 0.5}, "secagg-max-weight must be >= 1"),
    ({"min-train-nodes": 1}, "at least 2 sites"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED)
def test_config_refuses_what_secure_aggregation_cannot_do(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(RunConfigError) as err:
        RunConfig.from_mapping({"secagg": True, **overrides})
    assert message in str(err.value)


def test_config_accepts_local_dp_and_explicit_shares() -> None:
    config = RunConfig.from_mapping(
        {
            "secagg": True,
            "dp-epsilon": 4.0,
            "secagg-num-shares": 5,
            "secagg-reconstruction-threshold": 3,
        }
    )
    assert config.secagg and config.uses_dp_model
    assert not RunConfig.from_mapping({"strategy": "fedbn"}).secagg  # off by default


def test_plain_server_refuses_to_run_a_secure_config() -> None:
    with pytest.raises(RunConfigError, match="secure-aggregation apps"):
        run_federation(None, {"secagg": True})  # type: ignore[arg-type]  # fails first


def test_flat_record_round_trips_a_score_summary() -> None:
    summary = ScoreSummary.from_scores(
        [0, 1, 1, 0, 1],
        np.array([[0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.6, 0.4], [0.5, 0.5]]),
        n_bins=5,
        loss_sum=1.5,
    )
    flat = flatten_record({"site-id": "a", **summary.to_record()})
    assert all(isinstance(v, bool | bytes | float | int | str) for v in flat.values())
    assert ScoreSummary.from_record(unflatten_record(flat)) == summary
    assert unflatten_record(flatten_record({"empty": []})) == {"empty": []}
    del flat["summary-hist[3]"]
    with pytest.raises(FlatRecordError, match="summary-hist"):
        unflatten_record(flat)


# --------------------------------------------------------------------------- the site adapter


@pytest.fixture(scope="module")
def site_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dual_center(
        tmp_path_factory.mktemp("secagg-site"),
        patients_per_site=(("a", 8), ("b", 6)),
        images_per_patient=(1, 2),
        image_size=IMAGE_SIZE,
        high_grade_fraction=0.4,
        seed=1,
    )


def _site(manifest: Path) -> SiteNumPyClient:
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(manifest), "site-id": "a"},
        state=RecordDict(),
        run_config={},
    )
    return SiteNumPyClient(context)


def _round_config(**extra: Any) -> dict[str, Any]:
    config = RunConfig.from_mapping(
        {
            "backbone": "test_efficientnet",
            "image-size": IMAGE_SIZE,
            "batch-size": 4,
            "score-bins": 10,
            "learning-rate": 0.01,
        }
    ).client_config()
    return {**config, "server-round": 1, "secagg-max-weight": MAX_WEIGHT, **extra}


def _global_state() -> dict[str, torch.Tensor]:
    task = get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    return create_model_for_task(task).state_dict()


def test_site_sends_its_update_in_state_dict_order(site_manifest: Path) -> None:
    state = _global_state()
    site = _site(site_manifest)
    shapes = [tuple(a.shape) for a in site.get_parameters(_round_config())]
    assert shapes == [tuple(t.shape) for t in state.values()]
    params = [t.numpy() for t in state.values()]
    update, num_examples, metrics = site.fit(params, _round_config())
    assert len(update) == len(state) and 0 < num_examples <= MAX_WEIGHT
    for (key, ref), array in zip(state.items(), update, strict=True):
        assert array.size == ref.numel(), key
        assert array.shape == (tuple(ref.shape) or (1,)), key  # 0-d arrays travel as (1,)
    trained = site.get_parameters(_round_config())
    for before, after, sent in zip(params, trained, update, strict=True):
        np.testing.assert_array_equal(np.atleast_1d(after - before), sent)
    assert any(np.abs(u).max() > 0 for u in update)
    assert metrics["site-id"] == "a" and metrics["secagg-clipped-values"] == 0
    assert all(isinstance(v, int | float | str) for v in metrics.values())


def test_site_evaluates_into_scalar_metrics(site_manifest: Path) -> None:
    site = _site(site_manifest)
    params = [t.numpy() for t in _global_state().values()]
    loss, num_examples, metrics = site.evaluate(params, _round_config())
    assert all(isinstance(v, bool | bytes | float | int | str) for v in metrics.values())
    summary = ScoreSummary.from_record(unflatten_record(metrics))
    assert summary.n == num_examples > 0
    assert loss == pytest.approx(summary.loss_sum / summary.n)


def test_site_with_local_dp_sends_its_update_and_spent_epsilon(site_manifest: Path) -> None:
    task = get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    state = create_model_for_task(task, dp_safe=True).state_dict()  # what the server builds
    site = _site(site_manifest)
    config = _round_config(**{"dp-epsilon": 8.0, "dp-delta": 1e-4, "dp-safe-model": True})
    update, _, metrics = site.fit([t.numpy() for t in state.values()], config)
    assert len(update) == len(state)
    assert 0 < float(metrics["dp-epsilon-spent"]) <= 8.0 * 1.01
    assert "dp-ledger" in site.context.state.config_records  # the budget carries over rounds


def test_site_refuses_what_it_cannot_send_safely(site_manifest: Path) -> None:
    site = _site(site_manifest)
    params = [t.numpy() for t in _global_state().values()]
    with pytest.raises(SecAggSiteError, match="FedBN"):
        site.fit(params, _round_config(**{"keep-local-norm": True}))
    with pytest.raises(SecAggSiteError, match="secagg-max-weight"):
        site.fit(params, _round_config(**{"secagg-max-weight": 1.0}))
    with pytest.raises(SecAggSiteError, match="same model"):
        site.fit(params[:-1], _round_config())


# --------------------------------------------------------------------------- the strategy


class _Proxy:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


def _fit_res(parameters: Parameters, num_examples: int, site: str) -> FitRes:
    return FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=parameters,
        num_examples=num_examples,
        metrics={"site-id": site, "train-loss": 0.5},
    )


def test_strategy_adds_the_mean_update_and_audits_without_norms(tmp_path: Path) -> None:
    initial = {"w": np.ones((2, 2), np.float32), "steps": np.array(3, np.int64)}
    audit = AuditTrail(path=tmp_path / "audit.jsonl", settings={"secagg": True})
    strategy = SecureFedAvg(
        initial_state=initial,
        train_config={},
        evaluate_config={},
        quantization_range=LEVELS,
        audit=audit,
    )
    # What SecAggPlusWorkflow hands the strategy: every result carries the same unmasked mean.
    mean = ndarrays_to_parameters([np.full((2, 2), 0.25), np.array([2.0000001])])
    results = [(_Proxy(1), _fit_res(mean, 10, "a")), (_Proxy(2), _fit_res(mean, 30, "b"))]
    parameters, _ = strategy.aggregate_fit(1, results, [])  # type: ignore[arg-type]
    assert parameters is not None
    new_w, new_steps = parameters_to_ndarrays(parameters)
    np.testing.assert_allclose(new_w, np.full((2, 2), 1.25))
    assert new_w.dtype == np.float32 and new_steps.shape == () and int(new_steps) == 5
    assert set(strategy.history.round(1).train) == {"a", "b"}
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["sites"]["b"] == {
        "dp": {},
        "node-id": 2,
        "num-examples": 30,
        "update-l2-norm": None,
        "skipped-files": None,
    }


def test_strategy_records_a_failed_site_once_by_its_code() -> None:
    strategy = SecureFedAvg(
        initial_state={"w": np.zeros(2, np.float32)},
        train_config={},
        evaluate_config={},
        quantization_range=LEVELS,
    )
    error = Error(
        code=3,
        reason="<class 'RayTaskError'>:<'\x1b[36mray::run()\x1b[39m\n  File x\n"
        "SecAggSiteError: east declines\n\nException ClientAppException occurred. "
        "Message: east declines'>",
    )
    mean = ndarrays_to_parameters([np.ones(2)])
    # SecAggPlusWorkflow reports a site's error twice (two loops over the same replies)
    strategy.aggregate_fit(  # type: ignore[arg-type]
        1, [(_Proxy(1), _fit_res(mean, 5, "a"))], [Exception(error), Exception(error)]
    )
    (failure,) = strategy.history.round(1).failures
    # The code only: "east declines" is not a fixed sentence (strategies.screening).
    assert failure.reason == "error code 3" and failure.stage == "train"


def test_quantisation_bound_shrinks_with_finer_levels_and_weights() -> None:
    coarse = quantisation_error_bound(
        [10, 20], clipping_range=8, quantization_range=2**16, max_weight=1000
    )
    fine = quantisation_error_bound(
        [10, 20], clipping_range=8, quantization_range=2**22, max_weight=1000
    )
    tight = quantisation_error_bound(
        [10, 20], clipping_range=8, quantization_range=2**22, max_weight=20
    )
    assert tight < fine < coarse
    assert math.isinf(
        quantisation_error_bound([], clipping_range=8, quantization_range=2, max_weight=1)
    )


# --------------------------------------------------------------------------- one secure run

SCENARIO = """
description = "three tiny hospitals for secure aggregation"
task = "rcc-grading"

[data]
generator = "dual-center"
sites = { north = 8, south = 6, east = 6 }
images-per-patient = [1, 2]
image-size = 32
high-grade-fraction = 0.4

[run]
backbone = "test_efficientnet"
image-size = 32
num-server-rounds = 2
batch-size = 8
learning-rate = 0.05
"""


SITES = {"north", "south", "east"}
TRAIN_SCALARS = {
    "site-id",
    "train-loss",
    "train-seconds",
    "train-steps",
    "secagg-clipped-values",
    "skipped-files",  # unreadable images the site skipped (a count)
    "eval-seconds",
}
DROPOUT, DROPOUT_ROUND = "east", 2


class _RecordingGrid(Grid):
    """The server's grid, keeping every reply the server receives."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner
        self.replies: list[Any] = []

    def set_run(self, run: Any) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Any:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Any) -> Any:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        replies = list(self._inner.pull_messages(message_ids))
        self.replies += replies
        return replies

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(self._inner.send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies


def _recording_client_type(dump_dir: Path) -> type[SiteNumPyClient]:
    """A site that also writes its true update (defined here: Ray pickles it by value).

    ``DROPOUT`` declines to train in ``DROPOUT_ROUND``, after the key exchange: SecAgg+
    must then rebuild its pairwise masks from the other sites' shares.
    """

    class _RecordingSite(SiteNumPyClient):
        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            site = self.context.node_config["site-id"]
            if (site, config["server-round"]) == (DROPOUT, DROPOUT_ROUND):
                raise SecAggSiteError(f"{site} drops out of round {DROPOUT_ROUND} (test)")
            update, num_examples, metrics = super().fit(parameters, config)
            name = f"{metrics['site-id']}-round{config['server-round']}.npz"
            arrays = {f"u{i}": a for i, a in enumerate(update)}
            arrays.update({f"g{i}": np.asarray(a) for i, a in enumerate(parameters)})
            np.savez(dump_dir / name, n=num_examples, **arrays)
            return update, num_examples, metrics

    return _RecordingSite


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("secagg-run")
    dumps = root / "updates"
    dumps.mkdir()
    (root / "tiny.toml").write_text(SCENARIO)
    grids: list[_RecordingGrid] = []
    real_server = runner.run_secure_federation

    def _server(grid: Grid, context: Context, **kwargs: Any) -> Any:
        grids.append(_RecordingGrid(grid))
        return real_server(grids[-1], context, **kwargs)

    client = functools.partial(simulated_secagg_client, client_type=_recording_client_type(dumps))
    options = runner.SimulationOptions(
        out_dir=root / "out",
        seed=3,
        cpus=2,
        overrides={
            "secagg": True,
            "secagg-max-weight": MAX_WEIGHT,
            "secagg-clipping-range": CLIPPING,
            "secagg-quantization-range": LEVELS,
        },
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "run_secure_federation", _server)
        patch.setattr(runner, "simulated_secagg_client", client)
        results = runner.simulate(load_scenario(str(root / "tiny.toml")), options)
    (grid,) = grids
    return {"results": results, "out": root / "out", "dumps": dumps, "replies": grid.replies}


def _trained(server_round: int) -> set[str]:
    return SITES - {DROPOUT} if server_round == DROPOUT_ROUND else SITES


def _site_updates(dumps: Path, server_round: int) -> dict[str, tuple[list[np.ndarray], int]]:
    out = {}
    for path in sorted(dumps.glob(f"*-round{server_round}.npz")):
        data = np.load(path)
        count = sum(1 for k in data.files if k.startswith("u"))
        out[path.name.split("-round")[0]] = ([data[f"u{i}"] for i in range(count)], int(data["n"]))
    return out


def _global_received(dumps: Path, server_round: int) -> list[np.ndarray]:
    data = np.load(next(dumps.glob(f"*-round{server_round}.npz")))
    return [data[f"g{i}"] for i in range(sum(1 for k in data.files if k.startswith("g")))]


@pytest.mark.slow
def test_secure_run_writes_the_usual_results(secure_run: dict[str, Any]) -> None:
    results = secure_run["results"]
    (run,) = results["runs"]
    assert results["config"]["secagg"] is True
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for record in run["rounds"]:
        assert set(record["sites"]) == SITES  # every site evaluates
        assert set(record["train"]) == _trained(record["round"])
        assert all(m["secagg-clipped-values"] == 0 for m in record["train"].values())
    assert not run["rounds"][0]["failures"]
    (failure,) = run["rounds"][1]["failures"]
    assert failure["stage"] == "train" and failure["reason"].startswith("error code")
    assert "drops out" not in failure["reason"]  # the site's own text is not kept
    final = run["final"]
    assert final["global"]["n"] == sum(m["n"] for m in final["sites"].values()) > 0
    audit = [json.loads(x) for x in (secure_run["out"] / "fedavg" / "audit.jsonl").open()]
    assert [a["round"] for a in audit] == [1, 2]
    assert [set(a["answered"]) for a in audit] == [_trained(1), _trained(2)]
    assert all(s["update-l2-norm"] is None for a in audit for s in a["sites"].values())


@pytest.mark.slow
def test_secure_aggregate_equals_fedavg_within_quantisation_error(
    secure_run: dict[str, Any],
) -> None:
    dumps = secure_run["dumps"]
    final = torch.load(secure_run["out"] / "fedavg" / "global_model.pt")
    after = {1: _global_received(dumps, 2), 2: [t.numpy() for t in final.values()]}
    for server_round in (1, 2):
        sites = _site_updates(dumps, server_round)
        assert set(sites) == _trained(server_round)
        counts = [n for _, n in sites.values()]
        before = _global_received(dumps, server_round)
        largest = max(float(np.abs(u).max()) for updates, _ in sites.values() for u in updates)
        bound = quantisation_error_bound(
            counts,
            clipping_range=CLIPPING,
            quantization_range=LEVELS,
            max_weight=MAX_WEIGHT,
            max_abs_update=largest,
        )
        worst, squares, values = 0.0, 0.0, 0
        for i, (old, new) in enumerate(zip(before, after[server_round], strict=True)):
            fedavg = sum(n * updates[i].astype(np.float64) for updates, n in sites.values()) / sum(
                counts
            )
            secure = new.astype(np.float64) - old.astype(np.float64)
            if np.issubdtype(old.dtype, np.integer):  # step counters: exact after rounding
                np.testing.assert_array_equal(secure.ravel(), np.rint(fedavg).ravel())
                continue
            error = np.abs(secure.ravel() - fedavg.ravel())
            ulp = np.spacing(np.abs(new).astype(old.dtype)).ravel()  # float32 global model
            assert np.all(error <= bound + ulp), (server_round, i, float(error.max()), bound)
            worst = max(worst, float(error.max()))
            squares, values = squares + float((fedavg**2).sum()), values + fedavg.size
        assert 0 < worst <= 2 * bound
        assert bound < 0.01 * math.sqrt(squares / values)  # far below the mean update's size


@pytest.mark.slow
def test_server_never_receives_a_site_update(secure_run: dict[str, Any]) -> None:
    replies = [m for m in secure_run["replies"] if not m.has_error()]
    assert replies
    masked: dict[tuple[int, str], np.ndarray] = {}
    for msg in replies:
        content = msg.content
        if msg.metadata.message_type == "train":
            # the mod clears every array record before the reply leaves the site
            assert all(len(record) == 0 for record in content.array_records.values())
        for name in ("fitres.metrics", "evaluateres.metrics"):  # in clear: scalars only
            for key, value in content.config_records.get(name, {}).items():
                assert key in TRAIN_SCALARS or key.startswith(("summary-", "dp-")), key
                assert isinstance(value, int | float | str), key
        configs = content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in configs:
            vector = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
            site = str(content.config_records["fitres.metrics"]["site-id"])
            group = int(msg.metadata.group_id)
            masked[(group, site)] = np.concatenate([v.ravel() for v in vector[1:]])
    assert set(masked) == {(r, site) for r in (1, 2) for site in _trained(r)}
    for (server_round, site), vector in masked.items():
        # masks are uniform over [0, 2**32): the values do not sit in the narrow band around
        # LEVELS / 2 where an unmasked quantised update would be
        band = np.abs(vector.astype(np.float64) - LEVELS / 2) < LEVELS / 4
        assert band.mean() < 0.01, (server_round, site)
        for other, (updates, _) in _site_updates(secure_run["dumps"], server_round).items():
            truth = np.concatenate([u.ravel() for u in updates]).astype(np.float64)
            corr = np.corrcoef(vector.astype(np.float64), truth)[0, 1]
            assert abs(corr) < 0.05, (server_round, site, other, corr)
