"""The site side: manifest and data, local training/evaluation, the Flower ClientApp and the
`fedfusion site` commands. Never imports server code; only client/app.py imports Flower."""

from client.dataset import ManifestDataset, make_loader
from client.features import FeatureTransform, site_feature_transform
from client.manifest import Manifest, ManifestError, ManifestProblem, load_manifest
from client.sampler import ClassBalancedSampler
from client.splits import SplitError, assign_splits
from client.train import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    learning_rate_at,
    predict,
    train_local,
)
from client.transforms import eval_transforms, load_image, train_transforms

__all__ = [
    "FeatureTransform",
    "site_feature_transform",
    "ClassBalancedSampler",
    "EvalResult",
    "Manifest",
    "ManifestDataset",
    "ManifestError",
    "ManifestProblem",
    "SplitError",
    "TrainConfig",
    "TrainResult",
    "assign_splits",
    "eval_transforms",
    "evaluate",
    "learning_rate_at",
    "load_image",
    "load_manifest",
    "make_loader",
    "predict",
    "train_local",
    "train_transforms",
]
