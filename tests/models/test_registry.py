"""Contract tests over every registered model, plus backbones, pretrained loading and tasks."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402
import timm  # noqa: E402
import timm.models._builder as timm_builder  # noqa: E402
from opacus import GradSampleModule  # noqa: E402
from opacus.validators import ModuleValidator  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

from models._options import UnknownOptionError  # noqa: E402
from models._registry import (  # noqa: E402
    ModelConfigError,
    PretrainedWeightsError,
    create_model,
    is_model,
    list_models,
    model_kind,
    register_model,
)
from models.backbones import create_backbone, dp_safety_problems, make_dp_safe  # noqa: E402
from models.factory import create_model_for_task, model_kwargs_for_task  # noqa: E402
from models.losses import model_loss  # noqa: E402
from models.tasks import get_task  # noqa: E402

TINY = "test_efficientnet"  # ~0.1 M parameters, fine at 32 px
SIZE = 32
BATCH = 4
NUM_CLASSES = 3
# The classification contract; segmentation models have theirs in test_rusp_net.py.
MODELS = [m for m in list_models() if model_kind(m) == "classification"]
DP_BACKBONES = ["test_efficientnet", "test_resnet"]  # one per family with a different norm path
REAL_BACKBONES = ["efficientnet_b0", "efficientnet_b3", "resnet18"]

# Opacus hooks the first conv, whose input needs no gradient; torch says so once per call.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

UNKNOWN_NAME_CASES = [  # (what, builder call, text the message must contain)
    ("model", lambda: create_model("mufnett", num_classes=2, backbone=TINY), "'mufnet'"),
    (
        "model",
        lambda: create_model("single_modalty", num_classes=2, backbone=TINY),
        "single_modality",
    ),
    (
        "option",
        lambda: create_model("mufnet", num_classes=2, backbone=TINY, attn_reductoin=4),
        "attn_reduction",
    ),
    ("backbone", lambda: create_backbone("efficientnet_b33"), "efficientnet_b3"),
    ("backbone", lambda: create_model("mufnet", num_classes=2, backbone="resnet181"), "resnet18"),
]

BAD_OPTION_CASES = [  # (kwargs for mufnet, texts that must all appear)
    (
        {"num_classes": -1, "num_modalities": 1},
        ["num_classes", "num_modalities", "single_modality"],
    ),
    ({"num_classes": 2, "drop_rate": 1.5, "attn_reduction": 0}, ["drop_rate", "attn_reduction"]),
    ({"num_classes": 2, "in_chans": 0}, ["in_chans"]),
    ({}, ["missing required option 'num_classes'"]),
]


def _inputs(model: nn.Module, *, batch: int = BATCH, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One image per modality, then a ``(B, F)`` feature tensor for models that take features."""
    gen = torch.Generator().manual_seed(seed)
    if hasattr(model, "example_inputs"):  # bags, masks, ...: the model says what it takes
        return tuple(model.example_inputs(batch=batch, image_size=SIZE, generator=gen))
    images = tuple(
        torch.randn(batch, 3, SIZE, SIZE, generator=gen) for _ in range(model.num_modalities)
    )
    width = getattr(model, "in_features", 0)
    return images + ((torch.randn(batch, width, generator=gen),) if width else ())


def _build(name: str, *, backbone: str = TINY, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, backbone=backbone, **kwargs)


def _targets(batch: int = BATCH) -> torch.Tensor:
    return torch.arange(batch) % NUM_CLASSES


# ---------------------------------------------------------------- registry contract, every model


def test_registry_has_the_seed_models() -> None:
    assert {"mufnet", "single_modality", "cmusnet"} <= set(MODELS)
    assert MODELS == sorted(MODELS)
    assert is_model("mufnet") and not is_model("mufnett")


def test_register_model_refuses_a_second_builder_with_the_same_name() -> None:
    def mufnet(**kwargs: object) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(mufnet)


@pytest.mark.parametrize("name", MODELS)
def test_model_has_timm_interface(name: str) -> None:
    model = _build(name)
    assert model.training
    assert model.num_classes == NUM_CLASSES
    assert isinstance(model.num_features, int) and model.num_features > 0
    assert isinstance(model.num_modalities, int) and model.num_modalities >= 0
    assert model.num_modalities >= 1 or getattr(model, "in_features", 0) >= 1  # takes an input
    for method in ("forward_features", "forward_head", "reset_classifier", "get_classifier"):
        assert callable(getattr(model, method))


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name: str) -> None:
    model = _build(name)
    xs = _inputs(model)
    assert model(*xs).shape == (BATCH, NUM_CLASSES)
    feats = model.forward_features(*xs)
    assert feats.shape == (BATCH, model.num_features)
    assert model.forward_head(feats).shape == (BATCH, NUM_CLASSES)
    assert model.forward_head(feats, pre_logits=True).shape == (BATCH, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_two_builds_have_identical_state_dict_keys(name: str) -> None:
    first, second = _build(name), _build(name)
    assert list(first.state_dict()) == list(second.state_dict())
    for key, value in first.state_dict().items():
        assert second.state_dict()[key].shape == value.shape, key


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name: str) -> None:
    model = _build(name)
    xs = _inputs(model, batch=2)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(*xs).shape == (2, 5)
    model.reset_classifier(0)
    assert model(*xs).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-2)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_number_of_inputs_is_explained(name: str) -> None:
    model = _build(name)
    xs = _inputs(model, batch=2)
    with pytest.raises(ValueError, match="one \\(B, C, H, W\\) tensor per modality"):
        model(*xs, xs[0])


@pytest.mark.parametrize("name", MODELS)
def test_one_sgd_step_lowers_the_loss(name: str) -> None:
    model = _build(name)  # training mode throughout; drop rates are 0, so it is deterministic
    xs, y = _inputs(model), _targets()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(*xs), y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = nn.functional.cross_entropy(model(*xs), y)
    assert after < loss.detach() - 1e-4


@pytest.mark.parametrize("backbone", DP_BACKBONES)
@pytest.mark.parametrize("name", MODELS)
def test_dp_safe_variant_passes_opacus(name: str, backbone: str) -> None:
    model = _build(name, backbone=backbone, dp_safe=True)
    assert ModuleValidator.validate(model, strict=False) == []
    assert dp_safety_problems(model) == []
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    gsm = GradSampleModule(model)
    xs = _inputs(model)
    # the model's own training loss where it has one (auxiliary heads are used there only)
    model_loss(gsm, xs, _targets(), nn.CrossEntropyLoss()).backward()
    for pname, p in model.named_parameters():
        assert p.grad_sample is not None, pname
        assert p.grad_sample.shape == (BATCH, *p.shape), pname
    gsm._close()


@pytest.mark.parametrize("backbone", DP_BACKBONES)
def test_dp_mufnet_per_sample_gradients_are_exact_with_shared_weights(backbone: str) -> None:
    model = _build("mufnet", backbone=backbone, dp_safe=True)
    xs, y = _inputs(model, batch=3), _targets(3)
    expected = []
    for i in range(3):
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(*(x[i : i + 1] for x in xs)), y[i : i + 1])
        loss.backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    gsm = GradSampleModule(model)
    nn.functional.cross_entropy(gsm(*xs), y).backward()
    for pname, p in model.named_parameters():
        want = torch.stack([e[pname] for e in expected])
        torch.testing.assert_close(p.grad_sample, want, rtol=1e-3, atol=1e-4, msg=pname)
    gsm._close()


@pytest.mark.parametrize("backbone", REAL_BACKBONES)
def test_real_backbones_build_dp_safe(backbone: str) -> None:
    net = create_backbone(backbone, dp_safe=True)
    assert dp_safety_problems(net) == []
    assert ModuleValidator.validate(net, strict=False) == []
    assert net.num_features == timm.create_model(backbone, num_classes=0).num_features


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_real_backbones_take_an_opacus_step(backbone: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(create_backbone(backbone, dp_safe=True), nn.LazyLinear(2))
    model(torch.randn(2, 3, SIZE, SIZE))  # materialise the lazy layer
    gsm = GradSampleModule(model)
    gsm(torch.randn(2, 3, SIZE, SIZE)).sum().backward()
    assert all(p.grad_sample.shape[0] == 2 for p in model.parameters())
    gsm._close()


def test_opacus_validator_alone_misses_timm_batchnorm() -> None:
    plain = create_backbone(TINY)
    assert ModuleValidator.validate(plain, strict=False) == []  # BatchNormAct2d slips through
    problems = dp_safety_problems(plain)
    assert any("BatchNormAct2d" in p for p in problems)
    assert any("inplace" in p for p in problems)
    assert dp_safety_problems(make_dp_safe(plain)) == []


def test_dp_safe_keys_are_the_batchnorm_keys_minus_statistics() -> None:
    plain = set(create_backbone(TINY).state_dict())
    safe = set(create_backbone(TINY, dp_safe=True).state_dict())
    stats = {k for k in plain if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert safe == plain - stats


# ------------------------------------------------------------------------------- MUF-Net itself


def test_mufnet_branches_share_one_backbone() -> None:
    model = _build("mufnet")
    backbone_params = {id(p) for p in model.backbone.parameters()}
    others = [n for n, p in model.named_parameters() if id(p) not in backbone_params]
    assert all(n.startswith(("attention.", "fc.")) for n in others)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert convs == sum(isinstance(m, nn.Conv2d) for m in model.backbone.modules())
    before = [id(p) for p in model.parameters()]
    x1, x2 = _inputs(model, batch=2)
    model(x1, x2)
    model(x1, torch.randn_like(x2))
    assert [id(p) for p in model.parameters()] == before


def test_mufnet_fusion_weights_sum_to_one_and_follow_the_inputs() -> None:
    model = _build("mufnet").eval()
    x1, x2 = _inputs(model)
    with torch.no_grad():
        w = model.fusion_weights(x1, x2)
        assert w.shape == (BATCH, 2)
        torch.testing.assert_close(w.sum(dim=1), torch.ones(BATCH))
        assert (w > 0).all()
        # shared weights make the network symmetric in its modalities
        torch.testing.assert_close(model.fusion_weights(x2, x1), w.flip(1))
        torch.testing.assert_close(model.forward_features(x2, x1), model.forward_features(x1, x2))
        assert not torch.allclose(model(x1, x2), model(x1, torch.randn_like(x2)))


def test_mufnet_generalises_to_three_modalities() -> None:
    model = _build("mufnet", num_modalities=3)
    xs = _inputs(model, batch=2)
    assert len(xs) == 3 and model(*xs).shape == (2, NUM_CLASSES)
    with torch.no_grad():
        w = model.fusion_weights(*xs)
    assert w.shape == (2, 3)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2))


# ------------------------------------------------------------------------------ errors, options


@pytest.mark.parametrize(("what", "call", "text"), UNKNOWN_NAME_CASES)
def test_unknown_names_suggest_close_ones(what: str, call, text: str) -> None:
    with pytest.raises(ValueError, match=what) as err:
        call()
    assert text in str(err.value)
    if what != "option":
        assert isinstance(err.value, UnknownOptionError)


@pytest.mark.parametrize(("kwargs", "texts"), BAD_OPTION_CASES)
def test_bad_options_are_all_reported_at_once(kwargs: dict, texts: list[str]) -> None:
    with pytest.raises(ModelConfigError) as err:
        create_model("mufnet", backbone=TINY, **kwargs)
    for text in texts:
        assert text in str(err.value)


# --------------------------------------------------------------------------- pretrained weights


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_path_round_trip(tmp_path, suffix: str) -> None:
    torch.manual_seed(1)
    source = create_backbone(TINY).state_dict()
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".pth":
        torch.save(source, path)
    else:
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    loaded = create_backbone(TINY, pretrained_path=path).state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())
    model = create_model("mufnet", num_classes=2, backbone=TINY, pretrained_path=str(path))
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in source.items())


def test_pretrained_path_never_downloads(tmp_path, monkeypatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download weights")

    for fn in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(timm_builder, fn, no_network)
    full = timm.create_model(TINY)  # with its classifier, like a downloaded timm checkpoint
    torch.save(full.state_dict(), tmp_path / "w.pth")
    net = create_backbone(TINY, pretrained_path=tmp_path / "w.pth")
    assert torch.equal(net.conv_stem.weight, full.conv_stem.weight)


def test_pretrained_adapts_in_chans(tmp_path) -> None:
    source = create_backbone(TINY)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    grey = create_backbone(TINY, in_chans=1, pretrained_path=tmp_path / "w.pth")
    assert grey.conv_stem.weight.shape[1] == 1
    torch.testing.assert_close(grey.conv_stem.weight, source.conv_stem.weight.sum(1, keepdim=True))


def test_pretrained_dp_safe(tmp_path) -> None:
    plain = create_backbone(TINY)
    torch.save(plain.state_dict(), tmp_path / "bn.pth")
    safe = create_backbone(TINY, dp_safe=True, pretrained_path=tmp_path / "bn.pth")
    assert torch.equal(safe.bn1.weight, plain.bn1.weight)  # affine weights carried over
    torch.save(safe.state_dict(), tmp_path / "gn.pth")
    again = create_backbone(TINY, dp_safe=True, pretrained_path=tmp_path / "gn.pth")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in safe.state_dict().items())
    with pytest.raises(PretrainedWeightsError, match="dp_safe=True"):
        create_backbone(TINY, pretrained_path=tmp_path / "gn.pth")


def test_pretrained_missing_file_is_named(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "effnet.pth"
    with pytest.raises(PretrainedWeightsError, match="effnet.pth.*not found"):
        create_model("mufnet", num_classes=2, backbone=TINY, pretrained_path=missing)


PRETRAINED_MISMATCH_CASES = [  # (what is saved, text of the error)
    ("test_resnet", "size mismatch"),
    ("whole-model", "model.backbone.state_dict()"),
]


@pytest.mark.parametrize(("saved", "text"), PRETRAINED_MISMATCH_CASES)
def test_pretrained_from_another_network_is_refused(tmp_path, saved: str, text: str) -> None:
    if saved == "whole-model":
        state = create_model("mufnet", num_classes=2, backbone=TINY).state_dict()
    else:
        state = create_backbone(saved).state_dict()
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(PretrainedWeightsError, match="w.pth") as err:
        create_backbone(TINY, pretrained_path=tmp_path / "w.pth")
    assert text in str(err.value)


# ------------------------------------------------------------------------------------- tasks


def test_create_model_for_task_rcc_grading() -> None:
    task = get_task("rcc-grading").replace(backbone=TINY)
    model = create_model_for_task(task)
    assert type(model).__name__ == "MUFNet"
    assert model.num_modalities == len(task.modalities) == 2
    assert model.num_classes == task.num_classes == 2
    assert model(*_inputs(model, batch=2)).shape == (2, 2)


def test_task_model_kwargs_are_passed_and_guarded() -> None:
    base = get_task("rcc-grading").replace(backbone=TINY)
    kwargs = model_kwargs_for_task(base.replace(model_kwargs={"attn_reduction": 4}), dp_safe=True)
    assert kwargs["attn_reduction"] == 4 and kwargs["dp_safe"] is True
    assert kwargs["num_modalities"] == 2 and kwargs["in_chans"] == 3
    with pytest.raises(ModelConfigError, match="num_classes"):
        model_kwargs_for_task(base.replace(model_kwargs={"num_classes": 5}))


def test_single_modality_task_must_have_one_modality() -> None:
    task = get_task("rcc-grading").replace(model="single_modality", backbone=TINY)
    with pytest.raises(ModelConfigError, match="one image modality.*bmode, ceus"):
        create_model_for_task(task)
    model = create_model_for_task(task.replace(modalities=("ceus",)))
    assert model.num_modalities == 1


def test_backbone_width_follows_the_pooled_output() -> None:
    # MobileNetV3 has a conv after pooling: its features are head_hidden_size wide, not num_features
    model = create_model("single_modality", num_classes=2, backbone="mobilenetv3_small_050")
    assert model.num_features == model.backbone.head_hidden_size != model.backbone.num_features
    assert model.forward_features(torch.randn(2, 3, SIZE, SIZE)).shape == (2, model.num_features)


def test_dp_safe_warns_for_families_outside_the_tests(caplog) -> None:
    with caplog.at_level("WARNING", logger="models.backbones"):
        net = create_backbone("test_convnext", dp_safe=True)
    assert dp_safety_problems(net) == []
    assert "not covered by fedfusion's tests" in caplog.text
