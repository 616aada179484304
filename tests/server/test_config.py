from __future__ import annotations

import pytest

from server.config import CLIENT_KEYS, RunConfig, RunConfigError

BAD_VALUES = [
    ({"num-server-rounds": 0}, "num-server-rounds must be >= 1, got 0"),
    ({"learning-rate": -1.0}, "learning-rate must be > 0, got -1.0"),
    ({"lr-gamma": 1.5}, "lr-gamma must be in (0, 1]"),
    ({"eval-split": "train"}, "eval-split must be 'val' or 'test'"),
    ({"task": "rcc-gradin"}, "Did you mean 'rcc-grading'"),
    ({"batch-size": "many"}, "batch-size: expected int, got 'many'"),
    ({"image-size": 8}, "image-size must be 0 (task default) or >= 16"),
    ({"grad-clip-norm": -1.0}, "grad-clip-norm must be >= 0"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_VALUES)
def test_bad_values_are_named(raw, message):
    with pytest.raises(RunConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_mapping(raw)


def test_all_problems_reported_at_once():
    with pytest.raises(RunConfigError) as info:
        RunConfig.from_mapping({"num-server-rounds": 0, "batch-size": 0})
    assert "num-server-rounds" in str(info.value) and "batch-size" in str(info.value)


def test_defaults_and_overrides():
    config = RunConfig.from_mapping(
        {
            "num-server-rounds": 4,
            "backbone": "efficientnet_b0",
            "image-size": 96,
            "learning-rate": 1,
            "class-balanced-sampling": "false",
        }
    )
    assert config.num_server_rounds == 4
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.class_balanced_sampling is False
    task = config.task_spec()
    assert (task.backbone, task.image_size, task.model) == ("efficientnet_b0", 96, "mufnet")


def test_client_config_has_only_flower_scalars():
    sent = RunConfig().client_config()
    assert set(sent) == set(CLIENT_KEYS)
    assert all(isinstance(v, bool | int | float | str) for v in sent.values())


def test_pyproject_defaults_are_valid_run_config():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    config = RunConfig.from_mapping(defaults)
    assert config.task == defaults["task"]


def test_model_options_reach_the_task_and_bad_ones_are_named():
    config = RunConfig.from_mapping({"task": "glomerular-disease", "model-options": "top_k=2"})
    assert config.task_spec().model_kwargs["top_k"] == 2
    assert config.client_config()["model-options"] == "top_k=2"
    with pytest.raises(RunConfigError, match="expected key=value"):
        RunConfig.from_mapping({"task": "glomerular-disease", "model-options": "top_k"})
