"""Focal loss and class-balance weights."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

import pytest  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from models.losses import SoftmaxFocalLoss, build_focal_loss, class_balance_weights  # noqa: E402

SHAPES = [(4, 2), (6, 3), (1, 5), (16, 2)]  # (B, C)

BALANCE_CASES = [  # (counts, expected weights)
    ([10, 10], [1.0, 1.0]),
    ([70, 30], [0.6, 1.4]),
    ([1, 2, 4], [12 / 7, 6 / 7, 3 / 7]),
    ([10, 0, 5], [0.6, 1.2, 1.2]),  # empty class takes the rarest present class's weight
    ([0, 8], [1.0, 1.0]),
]

BAD_COUNTS = [  # (counts, text of the error)
    ([], "empty"),
    ([0, 0], "at least one sample"),
    ([5, -1], "class 1: -1"),
    ([2.5, 3], "class 0: 2.5"),
    ([True, 3], "class 0: True"),
]

BAD_OPTIONS = [  # (kwargs, text of the error)
    ({"gamma": -1.0}, "gamma must be >= 0, got -1.0"),
    ({"gamma": float("nan")}, "finite"),
    ({"gamma": 0.5}, "NaN gradients"),
    ({"class_weights": [1.0]}, "class_weights"),
    ({"class_weights": [1.0, -0.5]}, "class_weights"),
    ({"reduction": "avg"}, "reduction must be one of"),
]

BAD_INPUTS = [  # (logits shape, target, text of the error)
    ((4,), torch.tensor([0, 1, 0, 1]), "logits must be (B, C)"),
    ((4, 1), torch.tensor([0, 0, 0, 0]), "C >= 2"),
    ((4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0]), "integer class indices"),
    ((4, 2), torch.tensor([[0], [1], [0], [1]]), "integer class indices"),
    ((4, 2), torch.tensor([0, 1, 2, 1]), "in [0, 2), got 0..2"),
    ((4, 2), torch.tensor([0, 1, 1]), "batch sizes differ"),
]


def _batch(b: int, c: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=gen) * 2, torch.randint(0, c, (b,), generator=gen)


@pytest.mark.parametrize(("b", "c"), SHAPES)
def test_gamma_zero_without_weights_is_cross_entropy(b: int, c: int) -> None:
    logits, target = _batch(b, c)
    loss = SoftmaxFocalLoss(gamma=0.0)
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(logits, target))
    per_sample = SoftmaxFocalLoss(gamma=0.0, reduction="none")(logits, target)
    torch.testing.assert_close(per_sample, F.cross_entropy(logits, target, reduction="none"))


@pytest.mark.parametrize(("b", "c"), SHAPES)
def test_gradient_matches_cross_entropy_at_gamma_zero(b: int, c: int) -> None:
    logits, target = _batch(b, c)
    mine, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    SoftmaxFocalLoss(gamma=0.0)(mine, target).backward()
    F.cross_entropy(ref, target).backward()
    torch.testing.assert_close(mine.grad, ref.grad)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 5.0])
def test_focusing_down_weights_easy_examples(gamma: float) -> None:
    # sample 0 is easy (confidently right), sample 1 is hard (confidently wrong)
    logits = torch.tensor([[4.0, -4.0], [2.0, -2.0]])
    target = torch.tensor([0, 1])
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = SoftmaxFocalLoss(gamma=gamma, reduction="none")(logits, target)
    assert (focal <= ce).all()
    assert focal[0] / ce[0] < 1e-3 < focal[1] / ce[1]
    p_t = torch.softmax(logits, dim=1)[torch.arange(2), target]
    torch.testing.assert_close(focal, (1 - p_t) ** gamma * ce)


def test_higher_gamma_focuses_more() -> None:
    logits, target = _batch(32, 3, seed=3)
    values = [SoftmaxFocalLoss(gamma=g)(logits, target).item() for g in (0.0, 1.0, 2.0, 4.0)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize(("b", "c"), SHAPES)
def test_class_weights_scale_each_sample_by_its_class(b: int, c: int) -> None:
    logits, target = _batch(b, c, seed=1)
    weights = [0.5 + i for i in range(c)]
    loss = SoftmaxFocalLoss(gamma=0.0, class_weights=weights, reduction="none")
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), reduction="none")
    torch.testing.assert_close(loss(logits, target), expected)
    mean = SoftmaxFocalLoss(gamma=0.0, class_weights=weights)(logits, target)
    torch.testing.assert_close(mean, expected.mean())  # plain mean over samples (Opacus-style)


def test_class_weight_zero_ignores_that_class() -> None:
    logits, _ = _batch(4, 2)
    only_class_0 = SoftmaxFocalLoss(class_weights=[1.0, 0.0], reduction="none")
    assert only_class_0(logits, torch.tensor([1, 1, 1, 1])).abs().sum() == 0
    assert (only_class_0(logits, torch.tensor([0, 0, 0, 0])) > 0).all()


def test_confident_predictions_keep_finite_gradients() -> None:
    logits = torch.tensor([[300.0, 0.0], [0.0, 300.0], [0.2, 0.1]], requires_grad=True)
    build_focal_loss(gamma=2.0)(logits, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(("counts", "expected"), BALANCE_CASES)
def test_class_balance_weights(counts: list[int], expected: list[float]) -> None:
    weights = class_balance_weights(counts)
    assert weights == pytest.approx(expected)
    assert sum(weights) / len(weights) == pytest.approx(1.0)


@pytest.mark.parametrize(("counts", "text"), BAD_COUNTS)
def test_class_balance_weights_rejects_bad_counts(counts: list, text: str) -> None:
    with pytest.raises(ValueError, match="class counts") as err:
        class_balance_weights(counts)
    assert text in str(err.value)


def test_build_focal_loss_balances_the_rare_class() -> None:
    loss = build_focal_loss(gamma=2.0, class_counts=[70, 30])
    assert loss.gamma == 2.0
    logits = torch.zeros(2, 2)  # same confidence for both samples
    per_class = SoftmaxFocalLoss(gamma=2.0, class_weights=[0.6, 1.4], reduction="none")
    values = per_class(logits, torch.tensor([0, 1]))
    assert values[1] / values[0] == pytest.approx(1.4 / 0.6)
    torch.testing.assert_close(loss(logits, torch.tensor([0, 1])), values.mean())


@pytest.mark.parametrize(("kwargs", "text"), BAD_OPTIONS)
def test_bad_options_are_refused(kwargs: dict, text: str) -> None:
    with pytest.raises(ValueError) as err:
        SoftmaxFocalLoss(**kwargs)
    assert text in str(err.value)


@pytest.mark.parametrize(("shape", "target", "text"), BAD_INPUTS)
def test_bad_inputs_are_explained(shape: tuple[int, ...], target: torch.Tensor, text: str) -> None:
    with pytest.raises(ValueError) as err:
        SoftmaxFocalLoss()(torch.zeros(shape), target)
    assert text in str(err.value)


def test_class_weights_must_match_the_logits() -> None:
    with pytest.raises(ValueError, match="3 classes but class_weights has 2"):
        build_focal_loss(class_counts=[3, 4])(torch.zeros(2, 3), torch.tensor([0, 2]))
