"""Local training and evaluation as plain functions (no Flower here).

A site calls :func:`train_local` with the global weights loaded into ``model`` and sends back
the new weights; :func:`evaluate` returns exact metrics for the site's own report plus a
:class:`~models.metrics.ScoreSummary` (histograms and counts) that is safe to share.

The model's kind (``models._registry.kind_of``) says how many targets end each batch and
which loss trains it (``models.losses.build_loss``). Segmentation models are evaluated with
per-image Dice and IoU (shared as sums) next to a classification summary: for ``segmentation``
whether the slice shows foreground (ground truth: a non-empty mask; score: the peak foreground
probability), for ``segmentation-risk`` the risk output against the ``label``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from models._registry import MODEL_KINDS, kind_of
from models.losses import build_loss, model_loss
from models.metrics import ScoreSummary, classification_metrics
from models.seg_metrics import SegmentationSums, segmentation_scores

__all__ = [
    "TrainConfig",
    "TrainResult",
    "EvalResult",
    "train_local",
    "evaluate",
    "predict",
    "recalibrate_batchnorm",
    "learning_rate_at",
]

_log = logging.getLogger(__name__)

# Called after each batch with (epoch index within this call, batches done, batches per epoch).
ProgressFn = Callable[[int, int, int], None]


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings (defaults follow the MUF-Net study).

    Args:
        epochs: local epochs in this call. Default 1.
        learning_rate: initial SGD learning rate. Default 0.05.
        lr_step_epochs: the rate is multiplied by ``lr_gamma`` every this many epochs. Default 10.
        lr_gamma: step factor. Default 0.5 (halved).
        momentum: SGD momentum. Default 0.9.
        weight_decay: L2 penalty. Default 1e-4.
        focal_gamma: focal loss focusing parameter; 0 gives class-weighted cross-entropy.
        start_epoch: epochs already trained before this call (in federation: rounds done x
            local epochs), so the schedule continues across rounds.
        grad_clip_norm: clip the global gradient norm to this value; None disables.
        proximal_mu: FedProx' proximal term ``mu/2 ||w - w_start||^2`` (w_start = the weights
            at the start of this call, i.e. the global model); 0 disables. Default 0.
    """

    epochs: int = 1
    learning_rate: float = 0.05
    lr_step_epochs: int = 10
    lr_gamma: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0
    start_epoch: int = 0
    grad_clip_norm: float | None = None
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_step_epochs < 1:
            problems.append(f"lr_step_epochs must be >= 1, got {self.lr_step_epochs}")
        if not 0 < self.lr_gamma <= 1:
            problems.append(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.start_epoch < 0:
            problems.append(f"start_epoch must be >= 0, got {self.start_epoch}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            problems.append(f"grad_clip_norm must be > 0, got {self.grad_clip_norm}")
        if self.proximal_mu < 0:
            problems.append(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train_local` did."""

    num_examples: int
    num_steps: int
    epoch_losses: tuple[float, ...]
    learning_rates: tuple[float, ...]
    seconds: float
    skipped_files: int = 0  # unreadable image files skipped (see client.dataset)

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.epoch_losses)) if self.epoch_losses else math.nan


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation; ``summary`` is the shareable part."""

    num_examples: int
    loss: float
    metrics: dict[str, float | list[float] | list[list[int]]]
    summary: ScoreSummary
    seconds: float
    skipped_files: int = 0  # unreadable image files skipped (see client.dataset)


def learning_rate_at(epoch: int, *, base: float, step_epochs: int, gamma: float) -> float:
    """Step schedule: ``base * gamma ** (epoch // step_epochs)`` (epoch counted from 0)."""
    return base * gamma ** (epoch // step_epochs)


def _skipped_files(loader: DataLoader) -> int:
    """Unreadable files the loader's dataset skipped (0 for datasets that do not count)."""
    return int(getattr(loader.dataset, "skipped_files", 0))


def _split_batch(
    batch: Sequence[torch.Tensor], n_targets: int = 1
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``(inputs, targets)``: the last ``n_targets`` tensors of a batch are its targets."""
    batch = tuple(batch)
    return batch[:-n_targets], batch[-n_targets:]


def train_local(
    model: nn.Module,
    loader: DataLoader,
    *,
    config: TrainConfig,
    class_counts: Sequence[int],
    device: str | torch.device = "cpu",
    optimizer: torch.optim.Optimizer | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD and the class-balanced focal loss.

    A model with its own ``training_loss`` (CMUS-Net: auxiliary heads plus the fused head)
    gets the focal loss as its per-head criterion (see :func:`models.losses.model_loss`).

    Args:
        model: takes one (B, C, H, W) tensor per modality, returns logits (B, K).
        loader: yields flat tuples ``(x_1, ..., x_M, y)``.
        config: optimisation settings.
        class_counts: training rows per class, for the focal loss' balancing weights.
        device: where to train. Default "cpu".
        optimizer: a ready optimizer (e.g. Opacus' DPOptimizer); default SGD from ``config``.
        progress: optional callback after each batch.
    """
    model.to(device).train()
    kind = kind_of(model)
    n_targets = MODEL_KINDS[kind]
    criterion = build_loss(kind, focal_gamma=config.focal_gamma, class_counts=list(class_counts))
    criterion.to(device)
    if optimizer is None:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else None
    started = time.perf_counter()
    epoch_losses: list[float] = []
    rates: list[float] = []
    steps = 0
    seen = 0
    for local_epoch in range(config.epochs):
        lr = learning_rate_at(
            config.start_epoch + local_epoch,
            base=config.learning_rate,
            step_epochs=config.lr_step_epochs,
            gamma=config.lr_gamma,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(config.start_epoch + local_epoch)
        total, count = 0.0, 0
        n_batches = len(loader)
        for index, batch in enumerate(loader):
            inputs, targets = _split_batch(batch, n_targets)
            if targets[0].numel() == 0:  # Opacus' Poisson sampling can draw an empty batch
                continue
            inputs = tuple(x.to(device) for x in inputs)
            targets = tuple(t.to(device) for t in targets)
            optimizer.zero_grad(set_to_none=True)
            if n_targets == 1:  # the model's own loss, if it has one (e.g. CMUS-Net)
                loss = model_loss(model, inputs, targets[0], criterion)
            else:
                loss = criterion(model(*inputs), *targets)
            if anchor is not None:
                drift = sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * config.proximal_mu * drift
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {local_epoch}, batch {index}; "
                    "lower the learning rate"
                )
            loss.backward()
            if config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            total += loss.item() * targets[0].shape[0]
            count += targets[0].shape[0]
            steps += 1
            if progress is not None:
                progress(local_epoch, index + 1, n_batches)
        seen += count
        epoch_losses.append(total / max(count, 1))
        rates.append(lr)
        _log.debug(
            "epoch %d: loss %.4f lr %.4g", config.start_epoch + local_epoch, epoch_losses[-1], lr
        )
    return TrainResult(
        num_examples=seen // max(config.epochs, 1),
        num_steps=steps,
        epoch_losses=tuple(epoch_losses),
        learning_rates=tuple(rates),
        seconds=time.perf_counter() - started,
        skipped_files=_skipped_files(loader),
    )


class _CallWithInputs(nn.Module):
    """Lets ``update_bn`` (one input per batch) drive a model that takes one tensor per modality."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.model(*inputs)


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, loader: DataLoader, *, device: str | torch.device = "cpu"
) -> bool:
    """Recompute every BatchNorm layer's running statistics over ``loader``.

    BatchNorm's running averages (momentum 0.1) trail the weights, which move fast under SGD
    with momentum; after a few local epochs they can be far from what the final weights
    produce, and an eval-mode model then scores every row alike (seen on the dual-center
    scenario: pooled AUC 0.40 with the trailing statistics, 0.97 after recalibration). One
    no-grad pass in train mode with a cumulative average (``torch.optim.swa_utils.update_bn``)
    gives the statistics of the final weights. Batches of one row are skipped (BatchNorm
    cannot normalise them).

    Returns:
        True when the statistics were recomputed; False when the model has no BatchNorm
        layer or the loader had no batch of two rows or more (statistics left as they were).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    n_targets = MODEL_KINDS[kind_of(model)]
    used = 0

    def batches() -> Iterator[list[tuple[torch.Tensor, ...]]]:
        nonlocal used  # update_bn takes batch[0] of a list: wrap each batch's inputs in one
        for batch in loader:
            inputs, targets = _split_batch(batch, n_targets)
            if targets[0].shape[0] > 1:
                used += 1
                yield [tuple(x.to(device) for x in inputs)]

    model.to(device)
    before = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    was_training = model.training
    update_bn(batches(), _CallWithInputs(model))
    model.train(was_training)  # update_bn restores the wrapper's mode, not the model's
    if not used:  # update_bn reset the statistics and saw nothing: keep the old ones
        for module, buffers in zip(norms, before, strict=True):
            for name, value in module.named_buffers(recurse=False):
                value.copy_(buffers[name])
        return False
    return True


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader, *, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels (N,), softmax probabilities (N, K) and the summed cross-entropy over ``loader``.

    Segmentation models give their classification view (see the module docstring): the risk
    for DFS, "the slice shows foreground" for a segmentation model; the loss is theirs.
    """
    if kind_of(model) != "classification":
        labels, probs, loss_sum, _, _ = _predict_segmentation(model, loader, device=device)
        return labels, probs, loss_sum
    was_training = model.training
    model.to(device).eval()
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    loss_sum = 0.0
    try:
        for batch in loader:
            inputs, (target,) = _split_batch(batch)
            if target.numel() == 0:  # every row of the batch had unreadable images
                continue
            logits = model(*(x.to(device) for x in inputs)).float()
            target = target.to(device)
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
            labels.append(target.cpu().numpy())
    finally:
        model.train(was_training)
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), 0.0
    return np.concatenate(labels).astype(np.int64), np.concatenate(probs), loss_sum


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    n_bins: int = 50,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Evaluate on ``loader``: exact metrics plus the shareable :class:`ScoreSummary`.

    ``loss`` is the mean cross-entropy (the focal loss is a training device only).
    """
    started = time.perf_counter()
    if kind_of(model) != "classification":
        return _evaluate_segmentation(
            model, loader, num_classes=num_classes, n_bins=n_bins, device=device, started=started
        )
    labels, probs, loss_sum = predict(model, loader, device=device)
    if labels.size == 0:
        summary = ScoreSummary.empty(num_classes, n_bins)
        return EvalResult(
            0, math.nan, {}, summary, time.perf_counter() - started, _skipped_files(loader)
        )
    summary = ScoreSummary.from_scores(labels, probs, n_bins=n_bins, loss_sum=loss_sum)
    metrics = classification_metrics(labels, probs)
    metrics["loss"] = loss_sum / labels.size
    return EvalResult(
        num_examples=int(labels.size),
        loss=loss_sum / labels.size,
        metrics=metrics,
        summary=summary,
        seconds=time.perf_counter() - started,
        skipped_files=_skipped_files(loader),
    )


@torch.no_grad()
def _predict_segmentation(
    model: nn.Module, loader: DataLoader, *, device: str | torch.device
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """Labels (N,), probabilities (N, K), summed loss, per-image Dice (N,) and IoU (N,)."""
    kind = kind_of(model)
    criterion = build_loss(kind).to(device)
    was_training = model.training
    model.to(device).eval()
    labels, probs, dice, iou = [], [], [], []
    loss_sum = 0.0
    try:
        for batch in loader:
            inputs, targets = _split_batch(batch, MODEL_KINDS[kind])
            targets = tuple(t.to(device) for t in targets)
            outputs = model(*(x.to(device) for x in inputs))
            mask = targets[0]
            loss_sum += criterion(outputs, *targets).item() * mask.shape[0]
            mask_logits = outputs[0] if kind == "segmentation-risk" else outputs
            d, i = segmentation_scores(mask_logits.float(), mask)
            dice.append(d)
            iou.append(i)
            if kind == "segmentation-risk":
                probs.append(torch.softmax(outputs[1].float(), dim=1).cpu().numpy())
                labels.append(targets[1].cpu().numpy())
            else:  # does the slice show foreground, scored by the peak foreground probability
                fg = torch.softmax(mask_logits.float(), dim=1)[:, 1:].sum(dim=1)
                peak = fg.flatten(1).amax(dim=1).clamp(0.0, 1.0).cpu().numpy()
                probs.append(np.stack([1.0 - peak, peak], axis=1))
                labels.append((mask.flatten(1) > 0).any(dim=1).long().cpu().numpy())
    finally:
        model.train(was_training)
    if not labels:
        empty = np.zeros(0)
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), 0.0, empty, empty
    return (
        np.concatenate(labels).astype(np.int64),
        np.concatenate(probs),
        loss_sum,
        np.concatenate(dice),
        np.concatenate(iou),
    )


def _evaluate_segmentation(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    n_bins: int,
    device: str | torch.device,
    started: float,
) -> EvalResult:
    labels, probs, loss_sum, dice, iou = _predict_segmentation(model, loader, device=device)
    k = 2 if kind_of(model) == "segmentation" else num_classes
    if labels.size == 0:
        summary = dataclasses.replace(
            ScoreSummary.empty(k, n_bins), segmentation=SegmentationSums()
        )
        return EvalResult(0, math.nan, {}, summary, time.perf_counter() - started)
    sums = SegmentationSums.from_scores(dice, iou)
    summary = dataclasses.replace(
        ScoreSummary.from_scores(labels, probs, n_bins=n_bins, loss_sum=loss_sum),
        segmentation=sums,
    )
    metrics = classification_metrics(labels, probs)
    metrics.update(sums.metrics())
    metrics["loss"] = loss_sum / labels.size
    return EvalResult(
        num_examples=int(labels.size),
        loss=loss_sum / labels.size,
        metrics=metrics,
        summary=summary,
        seconds=time.perf_counter() - started,
    )
