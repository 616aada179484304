"""The site path for a three-class task: manifest -> loader -> train -> evaluate -> summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.dataset import make_loader
from client.manifest import load_manifest
from client.train import TrainConfig, evaluate, train_local
from models import create_model_for_task, get_task
from models.metrics import ScoreSummary, summary_metrics
from simulation.synthetic_lymph import generate_lymph_node

torch.set_num_threads(1)

MULTICLASS_KEYS = ("auc", "auc_0", "auc_ci_2", "accuracy", "macro_f1", "macro_ppv", "sensitivity_1")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_lymph_node(
        tmp_path_factory.mktemp("lymph3"),
        patients_per_site={"a": 9, "b": 9},
        image_size=16,
        images_per_patient=(1, 1),
    )


def test_three_class_site_round_trip(data: Path) -> None:
    task = get_task("lymph-node").replace(backbone="test_resnet", image_size=16)
    torch.manual_seed(0)
    model = create_model_for_task(task)
    summaries = []
    for site in ("a", "b"):
        manifest = load_manifest(data, task, site=site)
        # one batch holding every row: a last batch of 1 would break BatchNorm at 1x1 maps
        loader = make_loader(manifest, "train", batch_size=64, train=True, balanced=True)
        result = train_local(
            model,
            loader,
            config=TrainConfig(learning_rate=0.01),
            class_counts=manifest.class_counts("train"),
        )
        assert result.num_steps > 0
        evaluation = evaluate(
            model, make_loader(manifest, "test", batch_size=8, train=False), num_classes=3
        )
        for key in MULTICLASS_KEYS:
            assert key in evaluation.metrics
        assert evaluation.summary.num_classes == 3
        # what the ClientApp sends and the strategy reads back
        summaries.append(ScoreSummary.from_record(evaluation.summary.to_record()))
    total = summaries[0] + summaries[1]
    merged = summary_metrics(total)
    assert merged["n"] == sum(s.n for s in summaries) > 0
    assert len(merged["confusion"]) == 3 and "macro_f1" in merged and "specificity" not in merged
