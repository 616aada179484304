"""CMUS-Net: sparse top-k MIL over the TEM bag, cross-modal scale attention, weighted multi-loss."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402
from opacus import GradSampleModule  # noqa: E402
from torch import nn  # noqa: E402

from models._registry import ModelConfigError, create_model  # noqa: E402
from models.cmusnet import SparseMILPooling  # noqa: E402
from models.factory import create_model_for_task  # noqa: E402
from models.losses import model_loss  # noqa: E402
from models.tasks import get_task  # noqa: E402

TINY = "test_efficientnet"
SIZE = 32

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def _build(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    options = {"num_classes": 3, "backbone": TINY, **kwargs}
    return create_model("cmusnet", **options)


def _batch(model: nn.Module, batch: int = 4) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    xs = model.example_inputs(
        batch=batch, image_size=SIZE, generator=torch.Generator().manual_seed(1)
    )
    return xs, torch.arange(batch) % 3


TOP_K_CASES = [  # (top_k, bag lengths)
    (1, [6, 4, 1]),
    (2, [6, 2, 1]),
    (3, [5, 6, 3]),
]


@pytest.mark.parametrize(("top_k", "lengths"), TOP_K_CASES)
def test_only_the_top_k_instances_carry_weight(top_k: int, lengths: list[int]) -> None:
    torch.manual_seed(0)
    pool = SparseMILPooling(8, hidden=4, top_k=top_k)
    feats = torch.randn(len(lengths), 6, 8)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    scores = pool.scores(feats)
    weights = pool.weights(scores, mask)
    for i, n in enumerate(lengths):
        kept = scores[i, :n].topk(min(top_k, n)).indices.tolist()
        outside = [j for j in range(6) if j not in kept]
        assert (weights[i, outside] == 0).all()  # exactly zero, padding included
        assert (weights[i, kept] > 0).all()
        torch.testing.assert_close(weights[i].sum(), torch.tensor(1.0))


def test_top_k_weights_from_known_scores() -> None:
    pool = SparseMILPooling(4, top_k=2)
    scores = torch.tensor([[0.1, 3.0, 2.0, 5.0], [4.0, 1.0, 9.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    weights = pool.weights(scores, mask)  # row 0: 5.0 is padding, so 3.0 and 2.0 are kept
    want0 = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    torch.testing.assert_close(weights[0], torch.tensor([0.0, *want0.tolist(), 0.0]))
    want1 = torch.softmax(torch.tensor([4.0, 9.0]), 0)
    torch.testing.assert_close(weights[1], torch.tensor([want1[0], 0.0, want1[1], 0.0]))


def test_an_empty_bag_gets_zero_weights_and_no_nan() -> None:
    pool = SparseMILPooling(4, top_k=2)
    weights = pool.weights(torch.randn(2, 3), torch.tensor([[False] * 3, [True, True, False]]))
    assert torch.equal(weights[0], torch.zeros(3)) and torch.isfinite(weights).all()


def test_model_top_k_and_padding() -> None:
    model = _build(top_k=2).eval()
    xs, _ = _batch(model)
    bag, mask, *images = xs
    with torch.no_grad():
        weights = model.bag_attention(bag, mask)
        assert ((weights > 0).sum(dim=1) == torch.clamp(mask.sum(dim=1), max=2)).all()
        assert (weights[~mask] == 0).all()
        # more padding (an extra all-masked slot with junk pixels) changes nothing
        padded = torch.cat([bag, torch.randn(4, 1, *bag.shape[2:])], dim=1)
        wider = torch.cat([mask, torch.zeros(4, 1, dtype=torch.bool)], dim=1)
        torch.testing.assert_close(model(padded, wider, *images), model(*xs))


def test_multi_loss_uses_every_head_with_its_weight() -> None:
    model = _build(loss_weights="0,0,0,1").eval()
    xs, y = _batch(model)
    ce = nn.CrossEntropyLoss()
    with torch.no_grad():
        torch.testing.assert_close(model_loss(model, xs, y, ce), ce(model(*xs), y))
        fused, aux = model.forward_all(*xs)
        assert len(aux) == 3 and all(a.shape == (4, 3) for a in aux)
        model.loss_weights = (0.5, 0.25, 2.0, 1.5)
        want = 1.5 * ce(fused, y) + 0.5 * ce(aux[0], y) + 0.25 * ce(aux[1], y) + 2 * ce(aux[2], y)
        torch.testing.assert_close(model_loss(model, xs, y, ce), want)


def test_multi_loss_goes_down_on_a_fixed_batch() -> None:
    model = _build()
    xs, y = _batch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = model_loss(model, xs, y, nn.CrossEntropyLoss())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_dp_safe_per_sample_gradients_are_exact_with_bags() -> None:
    model = _build(backbone="test_resnet", dp_safe=True)
    xs, y = _batch(model, batch=3)
    ce = nn.CrossEntropyLoss()
    expected = []
    for i in range(3):
        model.zero_grad()
        model_loss(model, tuple(x[i : i + 1] for x in xs), y[i : i + 1], ce).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    gsm = GradSampleModule(model)
    model_loss(gsm, xs, y, ce).backward()
    for name, p in model.named_parameters():
        want = torch.stack([e[name] for e in expected])
        torch.testing.assert_close(p.grad_sample, want, rtol=1e-3, atol=1e-4, msg=name)
    gsm._close()


def test_dp_safe_and_plain_builds_share_keys_but_batch_statistics() -> None:
    plain = set(_build().state_dict())
    safe = set(_build(dp_safe=True).state_dict())
    assert safe <= plain
    assert all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in plain - safe
    )


BAD_OPTIONS = [  # (kwargs, text)
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"embed_dim": 30, "num_heads": 4}, "divisible by num_heads"),
    ({"loss_weights": "1,1"}, "loss_weights must be 4 numbers"),
    ({"loss_weights": "a,b,c,d"}, "numbers separated by ','"),
    ({"loss_weights": (0, 0, 0, 0)}, "must not all be 0"),
    ({"num_modalities": 1}, "num_modalities must be >= 2"),
]


@pytest.mark.parametrize(("kwargs", "text"), BAD_OPTIONS)
def test_bad_options_are_named(kwargs: dict, text: str) -> None:
    with pytest.raises(ModelConfigError, match=text):
        _build(**kwargs)


def test_wrong_inputs_are_explained() -> None:
    model = _build()
    bag, mask, om, im = _batch(model)[0]
    with pytest.raises(ValueError, match="bool mask"):
        model(bag, mask.float(), om, im)
    with pytest.raises(ValueError, match=r"the bag \(B, N, C, H, W\), its mask"):
        model(om, im)


def test_glomerular_task_builds_cmusnet_with_model_options() -> None:
    task = get_task("glomerular-disease").replace(backbone=TINY)
    assert task.bags == ("tem",) and task.classes == ("IgAN", "MN", "LN")
    model = create_model_for_task(task.with_model_options("top_k=2 loss_weights=0.5,0.5,0.5,1"))
    assert model.top_k == 2 and model.loss_weights == (0.5, 0.5, 0.5, 1.0)
    assert model.num_modalities == 3 and model.num_classes == 3
    with pytest.raises(ValueError, match="expected key=value"):
        task.with_model_options("top_k")
    with pytest.raises(ModelConfigError, match="did you mean 'top_k'"):
        create_model_for_task(task.with_model_options("topk=2"))
