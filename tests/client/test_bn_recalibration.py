"""BatchNorm statistics are recomputed for the trained weights (recalibrate_batchnorm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client import site as site_module
from client.site import RoundSettings, SiteSettings, get_session
from client.train import recalibrate_batchnorm
from models import create_model
from server.config import RunConfig
from simulation.synthetic import generate_dual_center

torch.set_num_threads(1)


def _data(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.rand(n, 3, 32, 32, generator=g),
        torch.rand(n, 3, 32, 32, generator=g) + 2.0,  # far from BatchNorm's default mean 0
        torch.arange(n) % 2,
    )


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


def test_recalibrated_model_scores_as_with_the_rows_own_statistics() -> None:
    torch.manual_seed(0)
    model = create_model("mufnet", num_classes=2, backbone="test_efficientnet", in_chans=3)
    data = _data()
    everything = tuple(t for t in data.tensors[:2])
    model.train()
    with torch.no_grad():  # train mode: normalised by this batch's own statistics
        reference = model(*everything)
    for module in model.modules():  # stale statistics, as after fast SGD steps
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(5.0)
            module.running_var.fill_(0.01)
    model.eval()
    with torch.no_grad():
        stale = model(*everything)
    assert not torch.allclose(stale, reference, atol=1e-2)

    one_batch = DataLoader(data, batch_size=len(data))
    assert recalibrate_batchnorm(model, one_batch) is True
    assert not model.training  # left in the mode it was in
    with torch.no_grad():
        recalibrated = model(*everything)
    # Same statistics up to BatchNorm's unbiased (running) vs biased (batch) variance, which
    # differ by n/(n-1) where the late feature maps are 1x1.
    error = (recalibrated - reference).abs().max().item()
    print("max |logit error|: stale", (stale - reference).abs().max().item(), "recalibrated", error)
    assert error < 0.05
    assert error < 0.01 * (stale - reference).abs().max().item()
    for module in model.modules():  # momentum restored for later training
        if isinstance(module, nn.BatchNorm2d):
            assert module.momentum == pytest.approx(0.1)


def test_cumulative_average_over_batches() -> None:
    layer = nn.Sequential(nn.BatchNorm1d(3))
    rows = torch.randn(40, 3) * torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([4.0, -1.0, 0.5])
    loader = DataLoader(TensorDataset(rows, torch.zeros(40, dtype=torch.long)), batch_size=10)
    assert recalibrate_batchnorm(layer, loader)
    bn = layer[0]
    torch.testing.assert_close(bn.running_mean, rows.mean(0), atol=1e-5, rtol=0)
    per_batch_var = torch.stack([b.var(0, unbiased=True) for b in rows.split(10)]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch_var, atol=1e-5, rtol=1e-5)


def test_nothing_changes_without_batchnorm_or_usable_batches() -> None:
    plain = nn.Sequential(nn.Linear(3, 2))
    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)))
    assert recalibrate_batchnorm(plain, loader) is False

    with_bn = nn.Sequential(nn.BatchNorm1d(3))
    with_bn[0].running_mean.fill_(7.0)
    singles = DataLoader(TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)))
    assert recalibrate_batchnorm(with_bn, singles) is False  # batches of one row only
    assert torch.all(with_bn[0].running_mean == 7.0)  # not reset to 0 by update_bn


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dual_center(
        tmp_path_factory.mktemp("bn"),
        patients_per_site=(("a", 8), ("b", 6)),
        images_per_patient=(1, 1),
        image_size=32,
        high_grade_fraction=0.4,
        seed=5,
    )


def _rounds(recalibrate: bool) -> RoundSettings:
    config = RunConfig.from_mapping(
        {
            "backbone": "test_efficientnet",
            "image-size": 32,
            "batch-size": 4,
            "bn-recalibration": recalibrate,
        }
    ).client_config()
    assert config["bn-recalibration"] is recalibrate  # sent to the site with every message
    return RoundSettings.from_config({**config, "server-round": 1})


@pytest.mark.parametrize("recalibrate", [True, False])
def test_a_site_recalibrates_after_training_when_asked(manifest, recalibrate) -> None:
    site_module._SESSIONS.clear()
    rounds = _rounds(recalibrate)
    settings = SiteSettings.from_node_config({"data-path": str(manifest), "site-id": "a"})
    session = get_session(settings, rounds)
    torch.manual_seed(0)
    session.load_global({k: v.clone() for k, v in session.model.state_dict().items()})
    session.train(rounds)
    trained = _bn_buffers(session.model)
    assert session.recalibrate_batchnorm(rounds)  # what recalibration gives for these weights
    again = _bn_buffers(session.model)
    same = all(torch.allclose(trained[k], again[k], atol=1e-6) for k in trained)
    assert same is recalibrate
