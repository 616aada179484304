"""Contract tests for the segmentation models (RUSP-Net, DFS), their losses and parameter counts."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402
from opacus import GradSampleModule  # noqa: E402
from opacus.validators import ModuleValidator  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

from models._registry import (  # noqa: E402
    MODEL_KINDS,
    ModelConfigError,
    create_model,
    kind_of,
    list_models,
    model_kind,
)
from models.backbones import dp_safety_problems  # noqa: E402
from models.factory import create_model_for_task  # noqa: E402
from models.losses import build_loss  # noqa: E402
from models.tasks import get_task  # noqa: E402

SIZE = 32
BATCH = 4
FEATURES = 25
SEG_MODELS = [m for m in list_models() if model_kind(m) != "classification"]
SMALL = {"channels": (8, 16, 32)}  # for the optimisation tests: quick and still 2 levels deep

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

# RUSP-Net (16, 32, 64, 128, 256), 1 input channel, 2 classes (docs/models.md reports it;
# benchmarks/unet_size.py measures it next to a classic U-Net).
RUSP_NET_PARAMS = 4_392_162


def _build(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    extra = {"in_features": FEATURES} if name == "dfs" else {}
    return create_model(name, num_classes=2, **extra, **kwargs)


def _batch(model: nn.Module, *, batch: int = BATCH) -> tuple[tuple, tuple]:
    """Inputs and targets: a bright disc per image is the foreground; risk follows its size."""
    gen = torch.Generator().manual_seed(0)
    inputs = model.example_inputs(batch=batch, image_size=SIZE, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    radii = torch.tensor([4, 9, 5, 10, 3, 8][:batch])
    mask = ((yy - SIZE // 2) ** 2 + (xx - SIZE // 2) ** 2 < radii.view(-1, 1, 1) ** 2).long()
    ct = inputs[0] * 0.1 + mask.unsqueeze(1).float()
    mask = mask.unsqueeze(1)
    risk = (radii > 6).long()
    inputs = (ct, *inputs[1:])
    targets = (mask,) if kind_of(model) == "segmentation" else (mask, risk)
    return inputs, targets


@pytest.mark.parametrize("name", SEG_MODELS)
def test_kind_and_interface(name: str) -> None:
    model = _build(name)
    assert kind_of(model) == model_kind(name) in MODEL_KINDS
    assert model.num_modalities == 1 and model.num_classes == 2
    assert isinstance(model.num_features, int) and model.num_features > 0
    assert model.training


@pytest.mark.parametrize("name", SEG_MODELS)
def test_forward_shapes(name: str) -> None:
    model = _build(name)
    inputs, _ = _batch(model)
    out = model(*inputs)
    if name == "dfs":
        mask_logits, risk = out
        assert risk.shape == (BATCH, 2)
        assert torch.equal(risk[:, 0], torch.zeros(BATCH))  # binary logits [0, z]
    else:
        mask_logits = out
    assert mask_logits.shape == (BATCH, 2, SIZE, SIZE)
    assert model.forward_features(*inputs).shape == (BATCH, model.num_features)


@pytest.mark.parametrize("name", SEG_MODELS)
def test_odd_image_sizes_keep_their_shape(name: str) -> None:
    model = _build(name, **SMALL).eval()
    inputs = model.example_inputs(batch=1, image_size=37)
    out = model(*inputs)
    mask_logits = out[0] if name == "dfs" else out
    assert mask_logits.shape == (1, 2, 37, 37)


@pytest.mark.parametrize("name", SEG_MODELS)
def test_wrong_number_of_inputs_is_explained(name: str) -> None:
    model = _build(name, **SMALL)
    inputs, _ = _batch(model, batch=2)
    with pytest.raises(ValueError, match="one \\(B, C, H, W\\) tensor per modality"):
        model(*inputs, inputs[0])


@pytest.mark.parametrize("name", SEG_MODELS)
def test_loss_goes_down_on_a_fixed_batch(name: str) -> None:
    model = _build(name, **SMALL)
    inputs, targets = _batch(model)
    criterion = build_loss(kind_of(model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = criterion(model(*inputs), *targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(criterion(model(*inputs), *targets).item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", SEG_MODELS)
def test_same_config_builds_identical_keys(name: str) -> None:
    a, b = _build(name).state_dict(), _build(name).state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert set(_build(name, dp_safe=True).state_dict()) == set(a)  # instance norm: no change
    plain = set(_build(name, norm="batch").state_dict())
    safe = set(_build(name, norm="batch", dp_safe=True).state_dict())
    stats = {k for k in plain if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert stats and safe == plain - stats  # GroupNorm has BatchNorm's affine keys


@pytest.mark.parametrize("name", SEG_MODELS)
def test_dp_safe_variant_passes_opacus(name: str) -> None:
    model = _build(name, dp_safe=True, **SMALL)
    assert ModuleValidator.validate(model, strict=False) == []
    assert dp_safety_problems(model) == []
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert any(isinstance(m, _BatchNorm) for m in _build(name, norm="batch").modules())
    batch_safe = _build(name, norm="batch", dp_safe=True, **SMALL)
    assert dp_safety_problems(batch_safe) == []  # BatchNorm became GroupNorm
    gsm = GradSampleModule(model)
    inputs, targets = _batch(model)
    build_loss(kind_of(gsm))(gsm(*inputs), *targets).backward()
    for pname, p in model.named_parameters():
        assert p.grad_sample is not None, pname
        assert p.grad_sample.shape == (BATCH, *p.shape), pname
    gsm._close()


def test_rusp_net_parameter_count() -> None:
    model = _build("rusp_net", in_chans=1)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == RUSP_NET_PARAMS


def test_rusp_net_has_the_dilated_pyramid_and_dilated_last_decoder_levels() -> None:
    model = _build("rusp_net")
    dilations = [branch.conv.dilation for branch in model.pyramid.branches]
    assert dilations == [(1, 1), (2, 2), (3, 3)]
    assert all(branch.conv.kernel_size == (3, 3) for branch in model.pyramid.branches)

    def decoder_dilation(unit: nn.Module) -> int:
        return unit.conv.unit0.conv.dilation[0]

    assert [decoder_dilation(u) for u in model.decoder] == [1, 1, 2, 2]
    assert [decoder_dilation(u) for u in _build("rusp_net", dilated_decoder_levels=1).decoder] == [
        1,
        1,
        1,
        2,
    ]


def test_dfs_uses_the_study_gru() -> None:
    model = _build("dfs")
    gru = sum(p.numel() for p in model.clinical.parameters())
    assert gru == 3_360  # the 3,393-parameter GRU without its dense-1 (the fusion head's job)
    assert model.fusion[0].in_features == 3 + 32  # mask features + GRU embedding
    wide = _build("dfs", fuse_bottleneck=True)
    assert wide.fusion[0].in_features == 3 + 256 + 32  # + the pooled bottleneck
    inputs, _ = _batch(wide, batch=2)
    assert wide(*inputs)[1].shape == (2, 2)
    with pytest.raises(ValueError, match="clinical feature"):
        model(torch.randn(2, 1, SIZE, SIZE))


def test_dfs_risk_follows_the_clinical_features() -> None:
    model = _build("dfs", **SMALL).eval()
    ct, feats = model.example_inputs(batch=2, image_size=SIZE)
    with torch.no_grad():
        a = model(ct, feats)
        b = model(ct, feats + 1.0)
    torch.testing.assert_close(a[0], b[0])  # the mask does not read the record
    assert not torch.allclose(a[1], b[1])


BAD_OPTIONS = [  # (model, kwargs, text)
    ("rusp_net", {"num_classes": 1}, "num_classes"),
    ("rusp_net", {"num_classes": 2, "channels": (16,)}, "channels"),
    ("rusp_net", {"num_classes": 2, "norm": "layer"}, "norm must be one of"),
    ("rusp_net", {"num_classes": 2, "dilated_decoder_levels": 9}, "dilated_decoder_levels"),
    ("dfs", {"num_classes": 2, "seg_classes": 1, "hidden_size": 0}, "hidden_size"),
]


@pytest.mark.parametrize(("name", "kwargs", "text"), BAD_OPTIONS)
def test_bad_options_are_explained(name: str, kwargs: dict, text: str) -> None:
    with pytest.raises(ModelConfigError, match=text):
        create_model(name, **kwargs)


def test_task_presets_build_their_models() -> None:
    dfs_task = get_task("kidney-tumour-dfs")
    model = create_model_for_task(dfs_task)
    assert kind_of(model) == "segmentation-risk" and model.in_features == len(dfs_task.features)
    seg = create_model_for_task(get_task("kidney-tumour-seg"))
    assert kind_of(seg) == "segmentation" and seg.num_classes == 2 and seg.in_chans == 1
