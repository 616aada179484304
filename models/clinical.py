"""Clinical-only models (logistic regression, MLP, the DFS study's GRU) and their input layout.

A clinical task lists feature columns (``TaskSpec.features``); the site turns each row into a
float vector ``(F,)`` with preprocessing learned from its own training rows (imputation,
0/1 or one-hot coding of categories, standardisation: ``client.features``). The *layout* of
that vector is fixed by the task alone, so the server and every site build models of the same
input width without seeing any data:

* a numeric feature gives one input (standardised, missing values imputed);
* a categorical feature with 2 declared levels gives one 0/1 input (1 = the second level);
* a categorical feature with K > 2 levels gives K one-hot inputs.

Models take that vector as their only input, ``forward(f)`` with ``f`` of shape ``(B, F)``
(``num_modalities = 0``: no image tensors), and return logits ``(B, num_classes)``. For a
binary task the head has ONE output ``z`` and the logits are ``[0, z]``, so that
``softmax(logits)[:, 1] = sigmoid(z)``: exactly the study's "dense 1 with sigmoid", while the
rest of fedfusion (focal loss, metrics) keeps working with two-class logits.

The DFS study's GRU reads the features as a sequence of scalars (one time step per input,
input size 1), has 32 units, dropout on the last hidden state and a dense layer with one
output: ``3 * (32 * 1 + 32 * 32 + 32 + 32) + (32 + 1) = 3,360 + 33 = 3,393`` trainable
parameters with torch's GRU layout (input and recurrent biases kept separately, as Keras'
``reset_after=True``), whatever the sequence length.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from opacus.layers import DPGRU
from torch import nn

from models._registry import ModelConfigError, PretrainedWeightsError, register_model
from models.tasks import TaskSpec

__all__ = [
    "ClinicalGRU",
    "ClinicalLogReg",
    "ClinicalMLP",
    "clinical_gru",
    "clinical_input_names",
    "clinical_input_width",
    "clinical_logreg",
    "clinical_mlp",
    "input_names_for",
]


def clinical_input_names(task: TaskSpec) -> list[str]:
    """Names of the model inputs, in order: ``age``, ``htn=yes``, ``stage=II``, ...

    Args:
        task: the task; its ``features`` give the order, its ``categories`` the levels.

    Returns:
        One name per input column ``(F,)``: a numeric feature's name, ``name=<level 2>`` for a
        two-level category, ``name=<level>`` for each level of a larger one.
    """
    return input_names_for(task.features, task.categories)


def input_names_for(features: Sequence[str], categories: Mapping[str, Sequence[str]]) -> list[str]:
    """:func:`clinical_input_names` from the feature list and category levels themselves."""
    names: list[str] = []
    for feature in features:
        levels = categories.get(feature)
        if levels is None:
            names.append(feature)
        elif len(levels) == 2:
            names.append(f"{feature}={levels[1]}")
        else:
            names.extend(f"{feature}={level}" for level in levels)
    return names


def clinical_input_width(task: TaskSpec) -> int:
    """``F``, the width of the ``(B, F)`` feature tensor of ``task`` (see the module docstring)."""
    return len(clinical_input_names(task))


def _head_width(num_classes: int) -> int:
    return 1 if num_classes == 2 else num_classes


def _head(num_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(num_features, _head_width(num_classes)) if num_classes > 0 else nn.Identity()


def _common_problems(num_classes: int, in_features: int, drop_rate: float) -> list[str]:
    problems = []
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        problems.append(
            f"num_classes must be an integer >= 0 (0 = no classifier), got {num_classes!r}"
        )
    elif num_classes == 1:
        problems.append("num_classes must be 0 or >= 2 (a binary task has 2 classes), got 1")
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        problems.append(f"in_features must be an integer >= 1, got {in_features!r}")
    if not isinstance(drop_rate, int | float) or not 0 <= drop_rate < 1:
        problems.append(f"drop_rate must be in [0, 1), got {drop_rate!r}")
    return problems


class _ClinicalNet(nn.Module):
    """Shared interface: one ``(B, F)`` input, timm-style head methods, binary ``[0, z]`` logits.

    Subclasses set ``self.num_features`` and implement :meth:`_features`.
    """

    num_modalities = 0
    model_name = "clinical"

    def __init__(self, *, num_classes: int, in_features: int, drop_rate: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_features = in_features
        self.drop_rate = float(drop_rate)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if len(xs) != 1:
            raise ValueError(
                f"{self.model_name} takes no image (0 modalities, i.e. no one (B, C, H, W) tensor "
                f"per modality) and one (B, {self.in_features}) feature tensor, got {len(xs)} "
                "tensors"
            )
        (x,) = xs
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{self.model_name} needs a (B, {self.in_features}) float feature tensor, "
                f"got shape {tuple(x.shape)}; the task's features and categories fix the width "
                "(models.clinical.clinical_input_width)"
            )
        return x

    def forward_features(self, *xs: torch.Tensor) -> torch.Tensor:
        """Pre-head features ``(B, num_features)`` from one ``(B, F)`` feature tensor."""
        return self._features(self._check(xs))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout + classifier on ``(B, num_features)``; binary tasks give ``[0, z]`` logits.

        Args:
            x: features ``(B, num_features)``.
            pre_logits: return the features after dropout instead of logits. Default False.
        """
        x = self.head_drop(x)
        if pre_logits or self.num_classes == 0:
            return x
        z = self.fc(x)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.num_classes == 2 else z

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from one ``(B, F)`` feature tensor."""
        return self.forward_head(self.forward_features(*xs))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` outputs (0 = none)."""
        problems = _common_problems(num_classes, self.in_features, 0.0)
        if problems:
            raise ModelConfigError(problems[0])
        self.num_classes = num_classes
        self.fc = _head(self.num_features, num_classes)


class ClinicalLogReg(_ClinicalNet):
    """Logistic regression: one linear layer on the ``(B, F)`` features (multinomial for K > 2).

    Args:
        num_classes: logits (2 gives one weight vector and a sigmoid, see the module docstring).
        in_features: ``F``.
        drop_rate: dropout on the inputs. Default 0.0.
    """

    model_name = "clinical_logreg"

    def __init__(self, *, num_classes: int, in_features: int, drop_rate: float = 0.0) -> None:
        super().__init__(num_classes=num_classes, in_features=in_features, drop_rate=drop_rate)
        self.num_features = in_features
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = _head(in_features, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ClinicalMLP(_ClinicalNet):
    """Multilayer perceptron: ``Linear -> ReLU -> Dropout`` per hidden layer, then the head.

    Args:
        num_classes: logits.
        in_features: ``F``.
        hidden: widths of the hidden layers. Default (64, 32).
        drop_rate: dropout after each hidden layer. Default 0.0.
    """

    model_name = "clinical_mlp"

    def __init__(
        self,
        *,
        num_classes: int,
        in_features: int,
        hidden: tuple[int, ...] = (64, 32),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_features=in_features, drop_rate=drop_rate)
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(drop_rate)]
            width = size
        self.body = nn.Sequential(*layers[:-1])  # the last dropout is the head's
        self.num_features = width
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = _head(width, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _gru_aliases(module: nn.Module) -> dict[str, str]:
    """``DPGRU``'s second names of its parameters (``l0.ih.weight``) -> ``nn.GRU`` names."""
    return dict(getattr(module.gru, "old_to_new", {}))  # type: ignore[union-attr]


def _drop_gru_aliases(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, local_metadata: object
) -> None:
    for old in _gru_aliases(module):
        state_dict.pop(f"{prefix}gru.{old}", None)


def _fill_gru_aliases(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: object
) -> None:
    for old, new in _gru_aliases(module).items():
        if f"{prefix}gru.{new}" in state_dict:
            state_dict.setdefault(f"{prefix}gru.{old}", state_dict[f"{prefix}gru.{new}"])


class ClinicalGRU(_ClinicalNet):
    """The DFS study's clinical GRU: features as a sequence of scalars, last hidden state, head.

    ``(B, F) -> (B, F, 1)`` (one time step per input) ``-> GRU -> h_F (B, hidden_size) ->
    dropout -> dense``; 3,393 trainable parameters for ``hidden_size = 32`` and a binary task.

    Args:
        num_classes: logits (2: one dense output with sigmoid).
        in_features: ``F``, the sequence length (25 in the study; any length works).
        hidden_size: GRU units. Default 32.
        drop_rate: dropout on the last hidden state. Default 0.0.
        dp_safe: use Opacus' ``DPGRU`` (same parameters, same state_dict keys) so that
            per-sample gradients can be computed. Default False.
    """

    model_name = "clinical_gru"

    def __init__(
        self,
        *,
        num_classes: int,
        in_features: int,
        hidden_size: int = 32,
        drop_rate: float = 0.0,
        dp_safe: bool = False,
    ) -> None:
        super().__init__(num_classes=num_classes, in_features=in_features, drop_rate=drop_rate)
        self.gru = (DPGRU if dp_safe else nn.GRU)(1, hidden_size, batch_first=True)
        if dp_safe:
            # DPGRU holds each parameter under two names (weight_ih_l0 and l0.ih.weight) and
            # drops the second from its state_dict only when it is the root module. Dropping
            # them here (and restoring them on load) gives DP-safe and plain builds exactly
            # nn.GRU's keys, which is what the server aggregates. (A DPGRU subclass would be
            # simpler but Opacus' per-sample gradient hooks recognise DPGRU by exact type.)
            self.register_state_dict_post_hook(_drop_gru_aliases)
            self.register_load_state_dict_pre_hook(_fill_gru_aliases)
        self.num_features = hidden_size
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = _head(hidden_size, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x.unsqueeze(-1))  # h: (num_layers, B, hidden_size)
        return h[-1]


def _load_whole_model(model: nn.Module, path: str | os.PathLike[str] | None) -> None:
    """Load a whole-model state_dict saved from the same clinical model (strict)."""
    if path in (None, ""):
        return
    file = Path(path)  # type: ignore[arg-type]
    if not file.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights file {str(file)!r} not found; for a clinical model it is the "
            "torch.save(model.state_dict()) of the same model"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, KeyError, ValueError, AttributeError) as err:
        raise PretrainedWeightsError(
            f"could not load {str(file)!r} into {type(model).__name__}: {err}"
        ) from err


def _build(
    name: str, problems: list[str], make: type[_ClinicalNet], options: dict[str, object]
) -> nn.Module:
    if problems:
        raise ModelConfigError(f"cannot build {name}: " + "; ".join(problems))
    return make(**options)  # type: ignore[arg-type]


# Every builder takes the registry's common options. ``backbone`` and ``in_chans`` describe an
# image branch, which clinical models do not have: they are accepted (the factory passes them
# for every task) and ignored. ``pretrained_path`` is a whole-model state_dict.


@register_model
def clinical_logreg(
    *,
    num_classes: int,
    in_features: int = 25,
    backbone: str = "",
    in_chans: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Logistic regression on ``(B, in_features)`` clinical features.

    Args:
        num_classes: logits (2: one weight vector + sigmoid).
        in_features: ``F`` (``create_model_for_task`` sets it from the task). Default 25.
        backbone: ignored (no image branch).
        in_chans: ignored (no image branch).
        dp_safe: nothing to change (linear only); accepted for the common signature.
        pretrained_path: whole-model state_dict file of the same model. Default None.
        drop_rate: dropout on the inputs. Default 0.0.
    """
    problems = _common_problems(num_classes, in_features, drop_rate)
    model = _build(
        "clinical_logreg",
        problems,
        ClinicalLogReg,
        {"num_classes": num_classes, "in_features": in_features, "drop_rate": drop_rate},
    )
    _load_whole_model(model, pretrained_path)
    return model


@register_model
def clinical_mlp(
    *,
    num_classes: int,
    in_features: int = 25,
    backbone: str = "",
    in_chans: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    hidden: tuple[int, ...] | list[int] = (64, 32),
) -> nn.Module:
    """A small MLP on ``(B, in_features)`` clinical features.

    Args:
        num_classes: logits.
        in_features: ``F`` (set from the task by ``create_model_for_task``). Default 25.
        backbone: ignored (no image branch).
        in_chans: ignored (no image branch).
        dp_safe: nothing to change (no normalisation layers, no in-place ops).
        pretrained_path: whole-model state_dict file of the same model. Default None.
        drop_rate: dropout after each hidden layer. Default 0.0.
        hidden: hidden layer widths. Default (64, 32).
    """
    problems = _common_problems(num_classes, in_features, drop_rate)
    sizes = tuple(hidden) if isinstance(hidden, tuple | list) else ()
    if not sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in sizes):
        problems.append(f"hidden must be one or more integer widths >= 1, got {hidden!r}")
    model = _build(
        "clinical_mlp",
        problems,
        ClinicalMLP,
        {
            "num_classes": num_classes,
            "in_features": in_features,
            "hidden": sizes,
            "drop_rate": drop_rate,
        },
    )
    _load_whole_model(model, pretrained_path)
    return model


@register_model
def clinical_gru(
    *,
    num_classes: int,
    in_features: int = 25,
    backbone: str = "",
    in_chans: int = 3,
    dp_safe: bool = False,
    pretrained_path: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
    hidden_size: int = 32,
) -> nn.Module:
    """The DFS study's GRU over ``(B, in_features)`` features read as a sequence of scalars.

    Args:
        num_classes: logits (2: one dense output + sigmoid, 3,393 parameters in all).
        in_features: sequence length ``F`` (set from the task). Default 25, as in the study.
        backbone: ignored (no image branch).
        in_chans: ignored (no image branch).
        dp_safe: Opacus' ``DPGRU`` instead of ``nn.GRU`` (same parameters and keys).
            Default False.
        pretrained_path: whole-model state_dict file of the same model. Default None.
        drop_rate: dropout on the last hidden state (the ``ckd-risk`` preset uses 0.2).
            Default 0.0.
        hidden_size: GRU units. Default 32.
    """
    problems = _common_problems(num_classes, in_features, drop_rate)
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        problems.append(f"hidden_size must be an integer >= 1, got {hidden_size!r}")
    model = _build(
        "clinical_gru",
        problems,
        ClinicalGRU,
        {
            "num_classes": num_classes,
            "in_features": in_features,
            "hidden_size": hidden_size,
            "drop_rate": drop_rate,
            "dp_safe": dp_safe,
        },
    )
    _load_whole_model(model, pretrained_path)
    return model
