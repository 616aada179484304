"""The ML core shared by sites and server: model registry, seed-study networks, task presets,
losses and metrics. Imports none of the other fedfusion packages."""

from models._options import UnknownOptionError, look_up_option
from models._registry import (
    ModelConfigError,
    PretrainedWeightsError,
    create_model,
    handles_missing_modalities,
    is_model,
    list_models,
    model_entrypoint,
    register_model,
)
from models.backbones import (
    backbone_out_features,
    create_backbone,
    dp_safety_problems,
    make_dp_safe,
    norm_state_keys,
)
from models.clinical import (
    ClinicalGRU,
    ClinicalLogReg,
    ClinicalMLP,
    clinical_input_names,
    clinical_input_width,
)
from models.cmusnet import CMUSNet
from models.factory import create_model_for_task, model_kwargs_for_task
from models.losses import SoftmaxFocalLoss, build_focal_loss, class_balance_weights, model_loss
from models.metrics import (
    MetricsInputError,
    ScoreSummary,
    classification_metrics,
    delong_ci,
    delong_test,
    roc_curve_from_summary,
    summary_metrics,
)
from models.mufnet import MUFNet, SingleModalityNet
from models.resnet_fusion import ResNetFusionNet
from models.tasks import TaskSpec, get_task, list_tasks, register_task

__all__ = [
    "CMUSNet",
    "ClinicalGRU",
    "ClinicalLogReg",
    "ClinicalMLP",
    "ResNetFusionNet",
    "clinical_input_names",
    "clinical_input_width",
    "MUFNet",
    "MetricsInputError",
    "ModelConfigError",
    "PretrainedWeightsError",
    "ScoreSummary",
    "SingleModalityNet",
    "SoftmaxFocalLoss",
    "TaskSpec",
    "UnknownOptionError",
    "backbone_out_features",
    "build_focal_loss",
    "class_balance_weights",
    "classification_metrics",
    "create_backbone",
    "create_model",
    "create_model_for_task",
    "delong_ci",
    "delong_test",
    "dp_safety_problems",
    "get_task",
    "handles_missing_modalities",
    "is_model",
    "list_models",
    "list_tasks",
    "look_up_option",
    "make_dp_safe",
    "model_entrypoint",
    "model_loss",
    "model_kwargs_for_task",
    "norm_state_keys",
    "register_model",
    "register_task",
    "roc_curve_from_summary",
    "summary_metrics",
]
