"""Missing modalities: fusion models mask an absent branch out; other models refuse such rows.

Covers the registry flag (``handles_missing_modalities``), the fusion models' mask input, the
dataset's modality mask and the manifest check that refuses rows a model cannot use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from client.dataset import make_loader, uses_modality_mask
from client.gradcam import gradcam_maps
from client.manifest import ManifestError, load_manifest
from client.train import TrainConfig, train_local
from models import (
    _registry,
    create_model,
    create_model_for_task,
    handles_missing_modalities,
    list_models,
)
from models.resnet_fusion import ResNetFusionNet
from tests.client._data import make_site, small_task, write_csv

torch.set_num_threads(1)

TINY = "test_efficientnet"
SIZE = 32
MASKED_MODELS = [name for name in list_models() if handles_missing_modalities(name)]

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def _build(name: str, *, dp_safe: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=2, backbone=TINY, num_modalities=3, dp_safe=dp_safe)


def _images(seed: int, batch: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 3, SIZE, SIZE, generator=gen) for _ in range(3)]


def test_the_fusion_models_declare_the_flag_and_the_others_do_not() -> None:
    assert {"mufnet", "resnet_fusion"} <= set(MASKED_MODELS)
    for name in ("single_modality", "image_classifier", "clinical_gru", "clinical_logreg"):
        assert not handles_missing_modalities(name)
    assert handles_missing_modalities("resnet-fusion")  # "-" stands for "_"
    with pytest.raises(ValueError, match="Did you mean .mufnet."):
        handles_missing_modalities("mufnett")


@pytest.mark.parametrize("name", MASKED_MODELS)
def test_a_masked_modality_does_not_reach_the_output(name: str) -> None:
    model = _build(name).eval()
    xs = _images(0)
    all_present = torch.ones(4, 3)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.float32)
    with torch.no_grad():
        plain = model(*xs)
        torch.testing.assert_close(model(*xs, all_present), plain)
        masked = model(*xs, mask)
        other = [x.clone() for x in xs]
        for row, column in ((0, 1), (2, 0), (3, 2)):  # change only what the mask hides
            other[column][row] = torch.rand(3, SIZE, SIZE)
        torch.testing.assert_close(model(*other, mask), masked)
        changed = model(*[x.flip(-1) for x in xs], mask)  # visible images do count
    assert not torch.allclose(masked[[0, 2, 3]], plain[[0, 2, 3]])
    torch.testing.assert_close(masked[1], plain[1])  # row 1 has every modality
    assert not torch.allclose(changed, masked)


def test_mufnet_renormalises_the_fusion_weights_over_present_modalities() -> None:
    model = _build("mufnet").eval()
    xs = _images(1, batch=2)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        weights = model.fusion_weights(*xs, mask)
        full = model.fusion_weights(*xs)
    assert weights[0, 1] == 0 and weights[1, 0] == 0 and weights[1, 1] == 0
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(weights[1, 2], torch.tensor(1.0))
    expected = full[0, [0, 2]] / full[0, [0, 2]].sum()  # the same scores, renormalised
    torch.testing.assert_close(weights[0, [0, 2]], expected)


def test_a_bad_mask_is_explained() -> None:
    model = _build("resnet_fusion")
    with pytest.raises(ValueError, match=r"mask must have shape \(B, 3\)"):
        model(*_images(0), torch.ones(4, 2))


@pytest.mark.parametrize("name", MASKED_MODELS)
def test_dp_safe_fusion_with_a_mask_gives_per_sample_gradients(name: str) -> None:
    model = _build(name, dp_safe=True)
    gsm = GradSampleModule(model)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=torch.float32)
    nn.functional.cross_entropy(gsm(*_images(2), mask), torch.tensor([0, 1, 0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad_sample is not None and torch.isfinite(p.grad_sample).all(), pname
    gsm._close()


# ------------------------------------------------------------------ manifest and dataset


def _site_with_gaps(root: Path) -> Path:
    rows = make_site(root, labels=("low", "high") * 4)
    rows[1]["ceus"] = ""  # spreadsheet row 3
    rows[4]["bmode"] = ""  # spreadsheet row 6
    return write_csv(root / "manifest.csv", rows)


def test_rows_with_a_missing_modality_train_a_fusion_model(tmp_path: Path) -> None:
    task = small_task(image_size=SIZE).replace(backbone=TINY)
    assert uses_modality_mask(task)
    manifest = load_manifest(_site_with_gaps(tmp_path), task, val_fraction=0, test_fraction=0)
    loader = make_loader(manifest, "train", batch_size=8, train=False)
    *images, mask, labels = next(iter(loader))
    assert len(images) == 2 and mask.shape == (8, 2) and labels.shape == (8,)
    rows = manifest.rows("train")["row"].tolist()
    assert mask[rows.index(3)].tolist() == [1.0, 0.0] and mask[rows.index(6)].tolist() == [0, 1]
    assert mask.sum() == 14
    complete = load_manifest(
        write_csv(tmp_path / "full.csv", make_site(tmp_path, labels=("low", "high"))), task
    )
    assert len(next(iter(make_loader(complete, "train", batch_size=2, train=False)))) == 3
    assert images[1][rows.index(3)].abs().sum() == 0  # the missing image is a zero image
    model = create_model_for_task(task)
    result = train_local(
        model, loader, config=TrainConfig(epochs=2), class_counts=manifest.class_counts("train")
    )
    assert result.num_steps == 2 and all(torch.isfinite(torch.tensor(result.epoch_losses)))


def test_a_model_without_the_flag_refuses_rows_with_a_missing_modality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_MISSING_OK", set())  # as if mufnet could not mask
    task = small_task(image_size=SIZE)
    assert not uses_modality_mask(task)
    with pytest.raises(ManifestError) as caught:
        load_manifest(_site_with_gaps(tmp_path), task)
    problems = {(p.row, p.column) for p in caught.value.problems}
    assert problems == {(3, "ceus"), (6, "bmode")}
    assert "model 'mufnet' cannot handle a missing modality" in str(caught.value)


class _Brightness(nn.Module):
    """A backbone whose 4 features are the mean local brightness (Grad-CAM finds bright spots)."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 27)
        nn.init.zeros_(self.conv.bias)
        self.pool = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def test_grad_cam_of_a_masked_modality_is_blank() -> None:
    model = ResNetFusionNet([_Brightness() for _ in range(3)], num_classes=2)
    with torch.no_grad():  # class 1 = brighter images
        model.fc.weight.copy_(torch.tensor([[-1.0] * 12, [1.0] * 12]))
        model.fc.bias.zero_()
    images = []
    for j in range(3):
        image = torch.zeros(1, 3, SIZE, SIZE)
        image[..., 4 * j : 4 * j + 8, 10:18] = 1.0  # a bright square per modality
        images.append(image)
    result = gradcam_maps(model, [*images, torch.tensor([[1.0, 0.0, 1.0]])], class_index=1)
    assert result.maps.shape == (3, SIZE, SIZE)
    assert result.maps[1].max() == 0  # the hidden branch does not explain the score
    for j in (0, 2):
        inside = result.maps[j][4 * j : 4 * j + 8, 10:18].mean()
        assert inside > 2 * result.maps[j].mean() > 0
    unmasked = gradcam_maps(model, images, class_index=1)
    assert unmasked.maps[1].max() > 0  # the same image counts when it is not masked
