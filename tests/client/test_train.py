from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from client.train import TrainConfig, evaluate, learning_rate_at, train_local
from models import create_model, summary_metrics

torch.set_num_threads(1)

SCHEDULE = [(0, 0.05), (9, 0.05), (10, 0.025), (19, 0.025), (20, 0.0125)]


@pytest.mark.parametrize(("epoch", "rate"), SCHEDULE)
def test_step_schedule_halves_every_ten_epochs(epoch: int, rate: float) -> None:
    assert learning_rate_at(epoch, base=0.05, step_epochs=10, gamma=0.5) == pytest.approx(rate)


BAD_CONFIGS = [
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"lr_gamma": 2.0}, r"lr_gamma must be in \(0, 1\]"),
    ({"grad_clip_norm": -1.0}, "grad_clip_norm must be > 0, got -1.0"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_CONFIGS)
def test_bad_train_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def _bright_vs_dark(n: int = 48, seed: int = 0) -> TensorDataset:
    """Two-modality toy data: class 1 images are brighter in the second modality."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    a = torch.rand(n, 3, 32, 32, generator=g)
    b = torch.rand(n, 3, 32, 32, generator=g) * 0.5 + 0.5 * y.view(-1, 1, 1, 1)
    return TensorDataset(a, b, y)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mufnet", num_classes=2, backbone="test_efficientnet", in_chans=3)


def test_training_lowers_loss_and_continues_the_schedule() -> None:
    data = _bright_vs_dark()
    model = _model()
    loader = DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    eval_loader = DataLoader(data, batch_size=16)
    before = evaluate(model, eval_loader, num_classes=2).loss
    result = train_local(
        model,
        loader,
        config=TrainConfig(
            epochs=6, learning_rate=0.05, lr_step_epochs=4, start_epoch=2, focal_gamma=0
        ),
        class_counts=[24, 24],
    )
    after = evaluate(model, eval_loader, num_classes=2).loss
    assert after < before
    assert result.num_examples == 48 and result.num_steps == 6 * 6
    # start_epoch=2 with a step every 4 epochs: epochs 2,3 at 0.05, 4..7 at 0.025
    assert result.learning_rates == pytest.approx((0.05, 0.05, 0.025, 0.025, 0.025, 0.025))


def test_evaluation_exact_and_shareable_metrics_agree() -> None:
    data = _bright_vs_dark(n=40, seed=1)
    model = _model()
    # a trained model spreads its scores; an untrained one puts them all near 0.5, where
    # binned AUC (ties within a bin) loses resolution (documented in docs/architecture.md)
    train_local(
        model,
        DataLoader(data, batch_size=8, shuffle=False),
        config=TrainConfig(epochs=4, focal_gamma=0),
        class_counts=[20, 20],
    )
    result = evaluate(model, DataLoader(data, batch_size=16), num_classes=2, n_bins=1000)
    shared = summary_metrics(result.summary)
    assert result.num_examples == 40 == result.summary.n
    assert shared["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert shared["loss"] == pytest.approx(result.metrics["loss"])
    assert shared["auc"] == pytest.approx(result.metrics["auc"], abs=0.02)


def test_non_finite_loss_stops_with_advice() -> None:
    data = _bright_vs_dark(n=8)
    model = _model()
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_local(
            model, DataLoader(data, batch_size=8), config=TrainConfig(), class_counts=[4, 4]
        )


def test_a_last_batch_of_one_is_dropped_not_fatal(tmp_path) -> None:
    from client.dataset import make_loader
    from client.manifest import load_manifest
    from models import create_model_for_task, get_task
    from simulation.synthetic import generate_dual_center

    manifest_path = generate_dual_center(
        tmp_path, patients_per_site=(("a", 12),), images_per_patient=(1, 1), image_size=32, seed=0
    )
    task = get_task("rcc-grading").replace(backbone="test_efficientnet", image_size=32)
    manifest = load_manifest(manifest_path, task)
    n_train = len(manifest.rows("train"))
    batch = n_train - 1  # leaves a last batch of exactly one row
    loader = make_loader(manifest, "train", batch_size=batch, train=True)
    model = create_model_for_task(task)
    result = train_local(
        model, loader, config=TrainConfig(), class_counts=manifest.class_counts("train")
    )
    assert result.num_steps == 1 and result.num_examples == batch
