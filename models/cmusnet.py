"""CMUS-Net: glomerular disease (IgAN / MN / LN) from a TEM bag, light (OM) and
immunofluorescence (IM) microscopy.

One renal biopsy gives several transmission electron microscopy (TEM) fields, one light
microscopy (OM) image and one immunofluorescence (IM) image. The network::

    TEM bag (B, N, C, H, W) ─> backbone_0 per instance ─> (B, N, D) ─> proj ─> (B, N, E)
        + mask (B, N)            ─> sparse MIL attention: only the top-k instances get weight
                                 ─> f_0 (B, E) ──────────────────────────┐
    OM (B, C, H, W) ──> backbone_1 ─> proj ─> f_1 (B, E) ────────────────┼─> cross-modal scale
    IM (B, C, H, W) ──> backbone_2 ─> proj ─> f_2 (B, E) ────────────────┘   attention
                                                                             (each f_m attends
      aux head_m(f_m) ─> logits_m (B, K), one per modality                    to the others,
                                                                              then a learned
      concat(s_m * g_m) (B, M*E) ─> dropout ─> FC ─> fused logits (B, K)       scale s_m each)

Training minimises ``w_fused * L(fused) + sum_m w_m * L(logits_m)`` (:meth:`CMUSNet.training_loss`;
``L`` is the training path's criterion, the class-balanced focal loss); ``forward`` returns the
fused logits only. See ``docs/models.md`` for what is simplified against the paper.

The first modality is the bag; every other modality is one image per row. A bag is given as
the padded ``(B, N, C, H, W)`` tensor followed by its ``(B, N)`` bool mask (True = a real image),
which is what :func:`client.dataset.collate_bags` produces.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from models._heads import ClassifierHead, check_drop_rate, check_num_classes, classifier, finish
from models._registry import ModelConfigError, register_model
from models.backbones import backbone_out_features, create_backbone

__all__ = ["CMUSNet", "SparseMILPooling", "CrossModalScaleAttention", "cmusnet"]

_NEG_INF = float("-inf")


class SparseMILPooling(nn.Module):
    """Gated attention multi-instance pooling (Ilse et al., 2018) where only the ``top_k``
    highest-scoring instances of each bag carry weight.

    Args:
        dim: instance feature width ``E``.
        hidden: width of the attention MLP. Default 64.
        top_k: instances kept per bag (fewer when a bag is smaller). Default 3.
    """

    def __init__(self, dim: int, *, hidden: int = 64, top_k: int = 3) -> None:
        super().__init__()
        self.top_k = top_k
        self.attn_v = nn.Linear(dim, hidden)
        self.attn_u = nn.Linear(dim, hidden)
        self.attn_w = nn.Linear(hidden, 1)

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Attention scores ``(B, N)`` from instance features ``(B, N, E)``."""
        gate = torch.tanh(self.attn_v(feats)) * torch.sigmoid(self.attn_u(feats))
        return self.attn_w(gate).squeeze(-1)

    def weights(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Instance weights ``(B, N)``: softmax over the top-k real instances of each bag,
        exactly 0 for every other instance and for padding; a bag with no real instance gets
        all-zero weights."""
        masked = scores.masked_fill(~mask, _NEG_INF)
        k = min(self.top_k, scores.shape[1])
        top = masked.topk(k, dim=1).indices
        keep = torch.zeros_like(mask).scatter(1, top, True) & mask
        present = keep.any(dim=1, keepdim=True)
        safe = keep | ~present  # an empty bag: softmax over anything, then zeroed (no NaN)
        weights = torch.softmax(scores.masked_fill(~safe, _NEG_INF), dim=1)
        return weights * present

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled bag features ``(B, E)`` and the instance weights ``(B, N)``."""
        weights = self.weights(self.scores(feats), mask)
        return torch.einsum("bn,bne->be", weights, feats), weights


class CrossModalScaleAttention(nn.Module):
    """Each modality's feature attends to the other modalities' features (multi-head scaled
    dot-product attention, self excluded), is added back residually and layer-normed, then
    rescaled by a learned per-modality scale in (0, 1).

    Written with plain ``nn.Linear`` projections on batch-first ``(B, M, E)`` tensors rather
    than ``nn.MultiheadAttention``: Opacus refuses the latter, and its replacement
    (``opacus.layers.DPMultiheadAttention``) mis-checks attention masks when batch-first.
    Ordinary and DP-safe builds therefore share every state-dict key.

    Args:
        dim: feature width ``E`` (divisible by ``num_heads``).
        num_modalities: ``M >= 2``.
        num_heads: attention heads. Default 4.
    """

    def __init__(self, dim: int, *, num_modalities: int, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.scale = nn.Linear(dim, 1)
        eye = torch.eye(num_modalities, dtype=torch.bool)
        self.register_buffer("_self_mask", eye, persistent=False)  # True = may not attend

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, heads, M, M)``; row ``m`` is over the other modalities."""
        b, m, e = tokens.shape
        q = self.query(tokens).view(b, m, self.num_heads, -1).transpose(1, 2)
        k = self.key(tokens).view(b, m, self.num_heads, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / (e // self.num_heads) ** 0.5
        return torch.softmax(logits.masked_fill(self._self_mask, _NEG_INF), dim=-1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From ``(B, M, E)`` modality features: attended, scaled features ``(B, M, E)`` and
        the scales ``(B, M)``."""
        b, m, e = tokens.shape
        v = self.value(tokens).view(b, m, self.num_heads, -1).transpose(1, 2)
        attended = (self.attention(tokens) @ v).transpose(1, 2).reshape(b, m, e)
        mixed = self.norm(tokens + self.out(attended))
        scales = torch.sigmoid(self.scale(mixed)).squeeze(-1)
        return mixed * scales.unsqueeze(-1), scales


def _parse_weights(value: Sequence[float] | str, count: int) -> tuple[list[float], list[str]]:
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            return [], [f"loss_weights must be numbers separated by ',', got {value!r}"]
    weights = list(value)
    if len(weights) != count or not all(
        isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights
    ):
        return [], [
            f"loss_weights must be {count} numbers >= 0 (one per modality, then the fused "
            f"head), got {value!r}"
        ]
    if sum(weights) <= 0:
        return [], [f"loss_weights must not all be 0, got {value!r}"]
    return [float(w) for w in weights], []


def _cmus_problems(
    num_classes: int, drop_rate: float, num_modalities: int, top_k: int, embed_dim: int, heads: int
) -> list[str]:
    problems = check_num_classes(num_classes) + check_drop_rate(drop_rate)
    if isinstance(num_modalities, bool) or not isinstance(num_modalities, int):
        problems.append(f"num_modalities must be an integer >= 2, got {num_modalities!r}")
    elif num_modalities < 2:
        problems.append(
            f"num_modalities must be >= 2 (a TEM bag plus at least one image), got {num_modalities}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        problems.append(f"top_k must be an integer >= 1, got {top_k!r}")
    for key, value in (("embed_dim", embed_dim), ("num_heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{key} must be an integer >= 1, got {value!r}")
    if not problems and embed_dim % heads:
        problems.append(f"embed_dim ({embed_dim}) must be divisible by num_heads ({heads})")
    return problems


class CMUSNet(ClassifierHead):
    """A bag branch with sparse MIL pooling, image branches, cross-modal scale attention,
    an auxiliary head per modality and a fused head.

    Args:
        backbones: ``M`` feature extractors ``(B, C, H, W) -> (B, D)``; the first reads the
            bag's instances, the others one image each.
        num_classes: output logits ``K``; 0 leaves out every classifier.
        embed_dim: width ``E`` each branch is projected to. Default 128.
        num_heads: heads of the cross-modal attention. Default 4.
        top_k: bag instances that carry weight. Default 3.
        attn_hidden: width of the MIL attention MLP. Default 64.
        loss_weights: ``M + 1`` weights, one per modality's auxiliary head then the fused head.
        drop_rate: dropout before the fused FC. Default 0.0.
        per_instance_loop: run the bag backbone once per instance position on ``(B, C, H, W)``
            (what Opacus' per-sample gradients need) instead of once on the real instances
            only. Default False.
        in_chans: channels of every image (for :meth:`example_inputs`). Default 3.

    Attributes:
        num_modalities: ``M``; ``forward`` takes ``M + 1`` tensors (the bag's mask after it).
        num_features: ``M * E``, the width of the fused features.
    """

    def __init__(
        self,
        backbones: Sequence[nn.Module],
        *,
        num_classes: int,
        embed_dim: int = 128,
        num_heads: int = 4,
        top_k: int = 3,
        attn_hidden: int = 64,
        loss_weights: Sequence[float] | str = (),
        drop_rate: float = 0.0,
        per_instance_loop: bool = False,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        count = len(backbones)
        problems = _cmus_problems(num_classes, drop_rate, count, top_k, embed_dim, num_heads)
        weights, weight_problems = _parse_weights(loss_weights or (*[0.3] * count, 1.0), count + 1)
        problems += weight_problems
        widths = []
        for index, backbone in enumerate(backbones):
            try:
                widths.append(backbone_out_features(backbone))
            except ModelConfigError as err:
                problems.append(f"backbone {index}: {err}")
        if problems:
            raise ModelConfigError("cannot build CMUSNet: " + "; ".join(problems))
        self.num_classes = num_classes
        self.num_modalities = count
        self.embed_dim = embed_dim
        self.top_k = top_k
        self.loss_weights = tuple(weights)
        self.per_instance_loop = per_instance_loop
        self.in_chans = in_chans
        self.num_features = count * embed_dim
        self.pretrained_cfg = dict(getattr(backbones[0], "pretrained_cfg", {}) or {})
        self.backbones = nn.ModuleList(backbones)
        self.projections = nn.ModuleList(nn.Linear(w, embed_dim) for w in widths)
        self.mil = SparseMILPooling(embed_dim, hidden=attn_hidden, top_k=top_k)
        self.fusion = CrossModalScaleAttention(embed_dim, num_modalities=count, num_heads=num_heads)
        self.aux_heads = nn.ModuleList(classifier(embed_dim, num_classes) for _ in range(count))
        self._init_head(num_classes=num_classes, drop_rate=drop_rate)

    # -- inputs --------------------------------------------------------------------------

    def _check(self, xs: tuple[torch.Tensor, ...]) -> None:
        expected = self.num_modalities + 1
        shapes = [tuple(x.shape) for x in xs]
        if len(xs) != expected:
            raise ValueError(
                f"cmusnet takes {expected} tensors: the bag (B, N, C, H, W), its mask (B, N), "
                f"then one (B, C, H, W) tensor per modality for the other "
                f"{self.num_modalities - 1}; got {len(xs)} with shapes {shapes}"
            )
        bag, mask, *images = xs
        ok = bag.dim() == 5 and mask.dim() == 2 and mask.shape == bag.shape[:2]
        ok = ok and mask.dtype == torch.bool and all(x.dim() == 4 for x in images)
        if not ok or len({s[0] for s in shapes}) != 1:
            raise ValueError(
                "cmusnet needs a bag (B, N, C, H, W), a bool mask (B, N) and (B, C, H, W) "
                f"images with one batch size B, got {shapes} (mask dtype {mask.dtype})"
            )

    def example_inputs(
        self, *, batch: int, image_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random inputs for tests: a bag of up to 3 instances (lengths 3, 2, 1, 3, ...)."""
        chans = self.in_chans
        bag = torch.randn(batch, 3, chans, image_size, image_size, generator=generator)
        lengths = torch.tensor([3 - (i % 3) for i in range(batch)])
        mask = torch.arange(3).unsqueeze(0) < lengths.unsqueeze(1)
        bag = bag * mask[:, :, None, None, None]
        images = [
            torch.randn(batch, chans, image_size, image_size, generator=generator)
            for _ in range(self.num_modalities - 1)
        ]
        return (bag, mask, *images)

    # -- features ------------------------------------------------------------------------

    def instance_features(self, bag: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Projected instance features ``(B, N, E)`` (zeros at padded positions)."""
        backbone, proj = self.backbones[0], self.projections[0]
        if self.per_instance_loop:
            feats = torch.stack([proj(backbone(bag[:, n])) for n in range(bag.shape[1])], dim=1)
            return feats * mask.unsqueeze(-1)
        out = bag.new_zeros(*mask.shape, self.embed_dim)
        if mask.any():  # only the real instances: padding never reaches BatchNorm statistics
            out = out.masked_scatter(mask.unsqueeze(-1), proj(backbone(bag[mask])))
        return out

    def bag_attention(self, bag: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The MIL weights ``(B, N)`` of each bag's instances (0 outside the top k)."""
        return self.mil.weights(self.mil.scores(self.instance_features(bag, mask)), mask)

    def modality_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Per-modality features before fusion ``(B, M, E)``."""
        self._check(xs)
        bag, mask, *images = xs
        pooled, _ = self.mil(self.instance_features(bag, mask), mask)
        rest = [
            proj(net(x))
            for net, proj, x in zip(self.backbones[1:], self.projections[1:], images, strict=True)
        ]
        return torch.stack([pooled, *rest], dim=1)

    def _features_and_aux(self, *xs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = self.modality_features(*xs)
        fused, _ = self.fusion(tokens)
        aux = [head(tokens[:, m]) for m, head in enumerate(self.aux_heads)]
        return fused.flatten(1), aux

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Fused features ``(B, M * E)`` from ``(bag, mask, x_2, ..., x_M)``."""
        return self.fusion(self.modality_features(*xs))[0].flatten(1)

    def forward_all(self, *xs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused logits ``(B, K)`` and the auxiliary logits of each modality ``[(B, K)] * M``."""
        feats, aux = self._features_and_aux(*xs)
        return self.forward_head(feats), aux

    def training_loss(
        self, *xs: torch.Tensor, target: torch.Tensor, criterion: nn.Module
    ) -> torch.Tensor:
        """``w_fused * criterion(fused) + sum_m w_m * criterion(aux_m)`` on one batch.

        Args:
            *xs: ``(bag, mask, x_2, ..., x_M)``.
            target: class indices ``(B,)``.
            criterion: the per-head loss, e.g. the training path's focal loss.
        """
        fused, aux = self.forward_all(*xs)
        *aux_weights, fused_weight = self.loss_weights
        loss = fused_weight * criterion(fused, target)
        for weight, logits in zip(aux_weights, aux, strict=True):
            if weight:
                loss = loss + weight * criterion(logits, target)
        return loss

    def reset_classifier(self, num_classes: int) -> None:
        """New fused and auxiliary classifiers for ``num_classes`` outputs (0 = none)."""
        super().reset_classifier(num_classes)
        self.aux_heads = nn.ModuleList(
            classifier(self.embed_dim, num_classes) for _ in range(self.num_modalities)
        )


@register_model
def cmusnet(
    *,
    num_classes: int,
    backbone: str,
    in_chans: int = 3,
    num_modalities: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    embed_dim: int = 128,
    num_heads: int = 4,
    top_k: int = 3,
    attn_hidden: int = 64,
    loss_weights: Sequence[float] | str = (),
) -> CMUSNet:
    """CMUS-Net for glomerular disease: TEM bag + OM + IM (see :class:`CMUSNet`).

    Args:
        num_classes: output logits (3: IgAN, MN, LN).
        backbone: timm model name for every branch (the ``glomerular-disease`` preset uses
            ``"resnet18"``; the CPU scenario a smaller one).
        in_chans: channels of every image. Default 3.
        num_modalities: ``M``: the bag plus ``M - 1`` single images. Default 3 (TEM, OM, IM).
        dp_safe: GroupNorm, no in-place ops, per-instance bag loop, for Opacus. Default False.
        pretrained_path: local weights file loaded into every branch; never downloads.
        drop_rate: dropout before the fused FC. Default 0.0.
        drop_path_rate: backbone stochastic depth. Default 0.0.
        embed_dim: common width ``E`` of the branches. Default 128.
        num_heads: heads of the cross-modal attention. Default 4.
        top_k: TEM instances that carry weight per bag. Default 3.
        attn_hidden: width of the MIL attention MLP. Default 64.
        loss_weights: ``M + 1`` weights (each modality's auxiliary head, then the fused head),
            a sequence or a ``"0.3,0.3,0.3,1"`` string. Default 0.3 per modality, 1.0 fused.
    """
    problems = _cmus_problems(num_classes, drop_rate, num_modalities, top_k, embed_dim, num_heads)
    if problems:  # before the (possibly slow) backbone builds
        raise ModelConfigError("cannot build cmusnet: " + "; ".join(problems))
    branches = [
        create_backbone(
            backbone,
            in_chans=in_chans,
            dp_safe=dp_safe,
            pretrained_path=pretrained_path,
            drop_path_rate=drop_path_rate,
        )
        for _ in range(num_modalities)
    ]
    model = CMUSNet(
        branches,
        num_classes=num_classes,
        embed_dim=embed_dim,
        num_heads=num_heads,
        top_k=top_k,
        attn_hidden=attn_hidden,
        loss_weights=loss_weights,
        drop_rate=drop_rate,
        per_instance_loop=dp_safe,
        in_chans=in_chans,
    )
    return finish(model, dp_safe=dp_safe)
