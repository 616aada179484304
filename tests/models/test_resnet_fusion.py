"""The lymph-node fusion model (``models.resnet_fusion``) and the lymph-node task presets.

The registry contract (shapes, one SGD step, Opacus, reset_classifier) runs over every model in
``tests/models/test_registry.py``; this file checks what is particular to ``resnet_fusion``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ModelConfigError, create_model, create_model_for_task, get_task
from models.resnet_fusion import ResNetFusionNet

torch.set_num_threads(1)

TINY = "test_resnet"
SIZE = 32

BAD_OPTION_CASES = [  # (kwargs, texts that must all appear in one error)
    ({"num_modalities": 1}, ["num_modalities must be >= 2", "single_modality"]),
    ({"num_modalities": 3, "drop_rate": 1.0, "num_classes": -1}, ["drop_rate", "num_classes"]),
]

PRESET_CASES = [  # (task, model class name, modalities)
    ("lymph-node", "ResNetFusionNet", ("us2d", "cdfi", "elasto")),
    ("lymph-node-us2d", "SingleModalityNet", ("us2d",)),
    ("lymph-node-cdfi", "SingleModalityNet", ("cdfi",)),
    ("lymph-node-elasto", "SingleModalityNet", ("elasto",)),
]


def _images(m: int, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIZE, SIZE, generator=gen) for _ in range(m)]


def _build(**kwargs: object) -> ResNetFusionNet:
    torch.manual_seed(0)
    options: dict[str, object] = {"num_classes": 3, "backbone": TINY, **kwargs}
    return create_model("resnet_fusion", **options)  # type: ignore[return-value]


def test_each_modality_has_its_own_backbone() -> None:
    model = _build()
    assert model.num_modalities == 3 and len(model.backbones) == 3
    ids = [{id(p) for p in net.parameters()} for net in model.backbones]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    assert model.num_features == 3 * model.branch_features
    xs = _images(3)
    assert model.modality_features(*xs).shape == (2, 3, model.branch_features)


def test_modality_order_matters() -> None:
    model = _build().eval()
    xs = _images(3)
    with torch.no_grad():
        assert not torch.allclose(model(*xs), model(xs[1], xs[0], xs[2]))


@pytest.mark.parametrize(("kwargs", "texts"), BAD_OPTION_CASES)
def test_bad_options_are_reported_together(kwargs: dict, texts: list[str]) -> None:
    with pytest.raises(ModelConfigError) as err:
        _build(**kwargs)
    for text in texts:
        assert text in str(err.value)


def test_mismatched_backbones_are_refused() -> None:
    from models.backbones import create_backbone

    with pytest.raises(ModelConfigError, match="one width"):
        ResNetFusionNet(
            [create_backbone("test_resnet"), create_backbone("test_efficientnet")], num_classes=3
        )


@pytest.mark.parametrize(("name", "cls", "modalities"), PRESET_CASES)
def test_lymph_node_presets_build(name: str, cls: str, modalities: tuple[str, ...]) -> None:
    task = get_task(name)
    assert task.classes == ("metastatic", "lymphoma", "benign")
    assert task.modalities == modalities
    assert task.backbone == "resnet18" and task.image_size == 224
    model = create_model_for_task(task.replace(backbone=TINY))
    assert type(model).__name__ == cls
    assert model(*_images(len(modalities))).shape == (2, 3)


def test_fused_model_learns_a_modality_specific_rule() -> None:
    # the class is written into the mean of the third modality only
    torch.manual_seed(0)
    model = _build()
    y = torch.arange(12) % 3
    xs = [x.repeat(6, 1, 1, 1)[:12] for x in _images(3, batch=2)]
    xs[2] = xs[2] + y.view(-1, 1, 1, 1).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(*xs), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
