"""Site-local Grad-CAM (``client.gradcam``): maps per modality, lesion localisation, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from client.gradcam import gradcam_maps, overlay
from models import create_model, get_task
from models.mufnet import MUFNet, SingleModalityNet
from models.resnet_fusion import ResNetFusionNet
from simulation.cli import main
from simulation.synthetic_lymph import generate_lymph_node

torch.set_num_threads(1)

SIZE = 32

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
LESIONS = [(4, 6), (20, 22), (12, 3)]  # top-left corners of an 8x8 bright square per modality


class _BrightnessNet(nn.Module):
    """A backbone whose features are the mean local brightness: Grad-CAM must find the lesion."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27.0)
            self.conv.bias.zero_()
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x))).flatten(1)


def _lesion_image(corner: tuple[int, int]) -> torch.Tensor:
    image = torch.zeros(1, 3, SIZE, SIZE)
    r, c = corner
    image[..., r : r + 8, c : c + 8] = 1.0
    return image


def _positive_head(model: nn.Module, explained: int) -> nn.Module:
    with torch.no_grad():
        model.fc.weight.fill_(-1.0)
        model.fc.weight[explained].fill_(1.0)
        model.fc.bias.zero_()
        attention = getattr(model, "attention", None)
        if attention is not None:  # MUF-Net: equal modality weights
            attention[-1].weight.zero_()
    return model


MODEL_CASES = [  # (builder of a model with brightness backbones, number of modalities)
    (lambda: SingleModalityNet(_BrightnessNet(), num_classes=2), 1),
    (lambda: MUFNet(_BrightnessNet(), num_classes=2, num_modalities=2), 2),
    (lambda: MUFNet(_BrightnessNet(), num_classes=2, num_modalities=3, joint_batch=False), 3),
    (lambda: ResNetFusionNet([_BrightnessNet() for _ in range(3)], num_classes=3), 3),
]


@pytest.mark.parametrize(("build", "m"), MODEL_CASES)
def test_heat_map_finds_each_modalitys_lesion(build, m: int) -> None:  # type: ignore[no-untyped-def]
    model = _positive_head(build(), explained=1)
    inputs = [_lesion_image(LESIONS[j]) for j in range(m)]
    result = gradcam_maps(model, inputs, class_index=1)
    assert result.maps.shape == (m, SIZE, SIZE) and result.class_index == 1
    for j in range(m):
        peak = np.unravel_index(np.argmax(result.maps[j]), result.maps[j].shape)
        r, c = LESIONS[j]
        assert r <= peak[0] < r + 8 and c <= peak[1] < c + 8, (j, peak)
        inside = result.maps[j][r : r + 8, c : c + 8].mean()
        assert inside > 5 * result.maps[j].mean() / 2 > 0


def test_real_model_maps_and_the_model_is_left_untouched() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_fusion", num_classes=3, backbone="test_resnet")
    model.train()
    inputs = [torch.rand(1, 3, SIZE, SIZE) for _ in range(3)]
    result = gradcam_maps(model, inputs)
    assert result.maps.shape == (3, SIZE, SIZE)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert result.probs.shape == (3,) and result.class_index == int(result.probs.argmax())
    assert model.training
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


GRADCAM_ERROR_CASES = [  # (model, inputs, text)
    (
        lambda: create_model("clinical_gru", num_classes=2, in_features=4),
        lambda: [torch.rand(1, 4)],
        "takes no image modality",
    ),
    (
        lambda: create_model("single_modality", num_classes=2, backbone="test_resnet"),
        lambda: [torch.rand(2, 3, SIZE, SIZE)],
        "explains one sample",
    ),
]


@pytest.mark.parametrize(("model", "inputs", "text"), GRADCAM_ERROR_CASES)
def test_bad_requests_are_explained(model, inputs, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=text):
        gradcam_maps(model(), inputs())


def test_overlay_colours_only_where_the_map_is_high() -> None:
    image = np.full((1, 8, 8), 0.5)
    heat = np.zeros((8, 8))
    heat[2, 3] = 1.0
    out = overlay(image, heat)
    assert out.shape == (8, 8, 3)
    assert (out[0, 0] == 128).all() and not (out[2, 3] == 128).all()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gradcam")
    manifest = generate_lymph_node(
        root / "data", patients_per_site={"a": 6}, image_size=SIZE, images_per_patient=(1, 1)
    )
    torch.manual_seed(0)
    model = create_model("resnet_fusion", num_classes=3, backbone="test_resnet")
    torch.save(model.state_dict(), root / "global_model.pt")
    return manifest, root / "global_model.pt"


def test_site_gradcam_command_writes_pngs_per_modality(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, checkpoint = site
    out = tmp_path / "cams"
    args = ["site", "gradcam", "--checkpoint", str(checkpoint), "--manifest", str(manifest)]
    args += ["--task", "lymph-node", "--backbone", "test_resnet", "--image-size", str(SIZE)]
    args += ["--out", str(out), "--rows", "2,4"]
    assert main(args) == 0
    for row in (2, 4):
        for modality in ("us2d", "cdfi", "elasto"):
            png = np.asarray(Image.open(out / f"row{row}_{modality}.png"))
            assert png.shape[:2] == (256, 256)
        grid = Image.open(out / f"row{row}.png")
        assert grid.size[0] * 2 == grid.size[1] * 3 and grid.size[1] >= 2 * SIZE
        top, bottom = np.split(np.asarray(grid, dtype=np.int16), 2, axis=0)
        assert np.abs(top - bottom).max() > 0  # the heat map is not blank
    with open(out / "gradcam.csv", newline="") as handle:
        index = list(csv.DictReader(handle))
    assert [r["row"] for r in index] == ["2", "4"]
    assert all(r["explained"] == r["predicted"] for r in index)


COMMAND_ERROR_CASES = [  # (extra arguments, text printed)
    (["--rows", "999"], "rows [999] are not in"),
    (["--class", "cancer"], "unknown class 'cancer'"),
    (["--backbone", "test_efficientnet"], "cannot load"),
]


@pytest.mark.parametrize(("extra", "text"), COMMAND_ERROR_CASES)
def test_site_gradcam_command_errors(
    site: tuple[Path, Path],
    tmp_path: Path,
    capsys,
    extra: list[str],
    text: str,  # type: ignore[no-untyped-def]
) -> None:
    manifest, checkpoint = site
    args = ["site", "gradcam", "--checkpoint", str(checkpoint), "--manifest", str(manifest)]
    args += ["--task", "lymph-node", "--image-size", str(SIZE), "--out", str(tmp_path)]
    if "--backbone" not in extra:
        args += ["--backbone", "test_resnet"]
    assert main(args + extra) == 2
    assert text in capsys.readouterr().out
    assert get_task("lymph-node").backbone == "resnet18"  # presets untouched


# ------------------------------------------- a trained model: the map follows the lesion

CAM_SIZE = 64  # timm's test_resnet ends at 1/32 scale: a 2x2 map, one cell per quadrant
QUADRANTS = [(0, 0), (0, 1), (1, 0), (1, 1)]  # (row, column) of the lesion's quadrant


def _lesion_batch(
    n: int, gen: torch.Generator, quadrant: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy dark images; label 1 has a bright 12x12 square (anywhere, or in ``quadrant``)."""
    x = torch.rand(n, 3, CAM_SIZE, CAM_SIZE, generator=gen) * 0.4
    y = torch.ones(n, dtype=torch.int64) if quadrant else torch.randint(0, 2, (n,), generator=gen)
    for i in range(n):
        if y[i] == 1:
            if quadrant is None:
                r, c = torch.randint(2, CAM_SIZE - 14, (2,), generator=gen).tolist()
            else:
                r, c = 10 + 32 * quadrant[0], 10 + 32 * quadrant[1]
            x[i, :, r : r + 12, c : c + 12] = 1.0
    return x, y


def _quadrant_shares(heat: np.ndarray) -> np.ndarray:
    """Share of the map's mass in each quadrant, in QUADRANTS order."""
    h = heat.shape[0] // 2
    mass = np.array([heat[r * h : (r + 1) * h, c * h : (c + 1) * h].sum() for r, c in QUADRANTS])
    return mass / max(mass.sum(), 1e-12)


@pytest.fixture(scope="module")
def lesion_model() -> tuple[nn.Module, object]:
    """``image_classifier`` (test_resnet) trained 20 SGD steps to tell lesion from no lesion,
    the lesion anywhere in the image."""
    from models import TaskSpec, create_model_for_task

    task = TaskSpec(
        name="lesion", model="image_classifier", modalities=("us",), classes=("clear", "lesion"),
        image_size=CAM_SIZE, backbone="test_resnet",
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model_for_task(task)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = _lesion_batch(16, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), task


@pytest.mark.slow
@pytest.mark.parametrize("quadrant", QUADRANTS)
def test_trained_models_heat_map_follows_the_lesion(lesion_model, quadrant) -> None:  # type: ignore[no-untyped-def]
    model, _ = lesion_model
    x, _ = _lesion_batch(1, torch.Generator().manual_seed(1), quadrant)
    result = gradcam_maps(model, [x], class_index=1)
    assert result.probs[1] > 0.5  # the model sees the lesion
    shares = _quadrant_shares(result.maps[0])
    assert QUADRANTS[int(np.argmax(shares))] == quadrant and shares.max() > 0.5, shares


@pytest.mark.slow
def test_site_gradcam_pngs_show_the_heat_where_the_lesion_is(lesion_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, task = lesion_model
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "task.json").write_text(task.to_json())
    gen = torch.Generator().manual_seed(2)
    lines = ["patient_id,label,split,us"]
    for i, quadrant in enumerate(QUADRANTS):
        x, _ = _lesion_batch(1, gen, quadrant)
        pixels = (x[0, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(tmp_path / f"us{i}.png")
        lines.append(f"P{i},lesion,test,us{i}.png")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "cams"
    args = ["site", "gradcam", "--checkpoint", str(tmp_path / "model.pt")]
    args += ["--manifest", str(tmp_path / "manifest.csv")]
    args += ["--task-json", str(tmp_path / "task.json")]
    assert main([*args, "--out", str(out), "--rows", "2,3,4,5"]) == 0
    for row, quadrant in zip((2, 3, 4, 5), QUADRANTS, strict=True):
        png = np.asarray(Image.open(out / f"row{row}_us.png").convert("RGB"), dtype=np.float64)
        colour = np.abs(png[..., 0] - png[..., 1]) + np.abs(png[..., 1] - png[..., 2])
        assert colour.max() > 0  # the grey image carries a heat map: not blank
        shares = _quadrant_shares(colour)
        assert QUADRANTS[int(np.argmax(shares))] == quadrant, (row, shares)
