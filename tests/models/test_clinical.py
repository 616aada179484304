"""Clinical-only models (``models.clinical``), their input layout, and clinical task presets.

The registry contract (shapes, one SGD step, Opacus, reset_classifier) runs over these models in
``tests/models/test_registry.py``; this file checks what is particular to them.
"""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from models import (
    ModelConfigError,
    PretrainedWeightsError,
    TaskSpec,
    create_model,
    create_model_for_task,
    get_task,
    is_model,
)
from models.clinical import clinical_input_names, clinical_input_width

torch.set_num_threads(1)

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

# torch's GRU layout: per gate (reset, update, new) an input weight (32 x 1), a recurrent
# weight (32 x 32), an input bias and a recurrent bias (32 each); then dense 32 -> 1.
STUDY_GRU_PARAMETERS = 3 * (32 * 1 + 32 * 32 + 32 + 32) + (32 + 1)

GRU_COUNT_CASES = [  # (dp_safe, in_features): the count does not depend on the sequence length
    (False, 25),
    (True, 25),
    (False, 24),
    (True, 7),
]

CLINICAL_MODELS = ["clinical_logreg", "clinical_mlp", "clinical_gru"]

FACTORY_ERROR_CASES = [  # (task changes, text of the error)
    ({"model": "mufnet", "modalities": ("a", "b")}, "takes no clinical features"),
    ({"modalities": ("ct",)}, "takes no image but the task has modalities ct"),
    ({"features": (), "categories": {}}, "takes clinical features but the task has none"),
]

BAD_CATEGORY_CASES = [  # (categories, text of the error)
    ({"smoker": ("no", "yes")}, "not one of the features"),
    ({"sex": ("f",)}, ">= 2 distinct non-empty levels"),
    ({"sex": ("F", "f")}, ">= 2 distinct"),
    ({"sex": "fm"}, "list of level names"),
]


def _clinical_task(**changes: object) -> TaskSpec:
    base = TaskSpec(
        name="toy",
        model="clinical_gru",
        modalities=(),
        classes=("no", "yes"),
        image_size=0,
        backbone="",
        features=("age", "sex", "stage"),
        categories={"sex": ("f", "m"), "stage": ("I", "II", "III")},
    )
    return TaskSpec(**{**base.__dict__, **changes})


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_study_gru_formula() -> None:
    assert STUDY_GRU_PARAMETERS == 3393


@pytest.mark.parametrize(("dp_safe", "in_features"), GRU_COUNT_CASES)
def test_gru_has_the_studys_3393_parameters(dp_safe: bool, in_features: int) -> None:
    model = create_model("clinical_gru", num_classes=2, in_features=in_features, dp_safe=dp_safe)
    assert _trainable(model) == STUDY_GRU_PARAMETERS == 3393
    assert model.fc.out_features == 1  # "dense 1 with sigmoid"


def test_ckd_risk_preset_is_the_study_gru() -> None:
    task = get_task("ckd-risk")
    model = create_model_for_task(task)
    assert _trainable(model) == 3393
    assert task.modalities == () and len(task.features) == 24
    assert clinical_input_width(task) == model.in_features == 24
    assert model.drop_rate == 0.2


@pytest.mark.parametrize("name", CLINICAL_MODELS)
def test_binary_logits_are_the_sigmoid_of_one_output(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, in_features=6).eval()
    x = torch.randn(5, 6)
    logits = model(x)
    assert logits.shape == (5, 2) and torch.all(logits[:, 0] == 0)
    z = model.fc(model.forward_features(x))
    torch.testing.assert_close(logits.softmax(dim=1)[:, 1:], torch.sigmoid(z))


def test_input_layout_follows_the_declared_categories() -> None:
    task = _clinical_task()
    assert clinical_input_names(task) == ["age", "sex=m", "stage=I", "stage=II", "stage=III"]
    assert create_model_for_task(task).in_features == 5


@pytest.mark.parametrize("name", CLINICAL_MODELS)
def test_dp_safe_and_plain_builds_have_the_same_keys(name: str) -> None:
    torch.manual_seed(0)
    plain = create_model(name, num_classes=2, in_features=9)
    safe = create_model(name, num_classes=2, in_features=9, dp_safe=True)
    assert set(plain.state_dict()) == set(safe.state_dict())
    safe.load_state_dict(plain.state_dict())
    x = torch.randn(4, 9)
    torch.testing.assert_close(safe.eval()(x), plain.eval()(x))
    plain.load_state_dict(safe.state_dict())


def test_dp_gru_per_sample_gradients_are_exact() -> None:
    torch.manual_seed(0)
    model = create_model("clinical_gru", num_classes=2, in_features=6, dp_safe=True)
    x, y = torch.randn(3, 6), torch.tensor([0, 1, 1])
    expected = []
    for i in range(3):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    gsm = GradSampleModule(model)
    nn.functional.cross_entropy(gsm(x), y).backward()
    for pname, p in model.named_parameters():
        want = torch.stack([e[pname] for e in expected])
        torch.testing.assert_close(p.grad_sample, want, rtol=1e-3, atol=1e-5, msg=pname)
    gsm._close()


def test_hyphenated_registry_names_are_accepted() -> None:
    assert is_model("clinical-gru") and is_model("clinical_gru")
    assert type(create_model("clinical-logreg", num_classes=2)).__name__ == "ClinicalLogReg"
    with pytest.raises(ValueError, match="clinical_mlp"):
        create_model("clinical-mpl", num_classes=2)


@pytest.mark.parametrize(("changes", "text"), FACTORY_ERROR_CASES)
def test_factory_refuses_tasks_the_model_cannot_take(changes: dict, text: str) -> None:
    with pytest.raises(ModelConfigError, match=text):
        create_model_for_task(_clinical_task(**changes))


@pytest.mark.parametrize(("categories", "text"), BAD_CATEGORY_CASES)
def test_bad_categories_are_explained(categories: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        _clinical_task(categories=categories)


def test_task_to_dict_lists_the_categories() -> None:
    out = _clinical_task().to_dict()
    assert out["categories"] == {"sex": ["f", "m"], "stage": ["I", "II", "III"]}
    assert out["modalities"] == [] and out["features"] == ["age", "sex", "stage"]


INPUT_ERROR_CASES = [  # (inputs, text)
    (lambda: (torch.randn(2, 4),), r"\(B, 5\) float feature tensor, got shape \(2, 4\)"),
    (lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 5)), "takes no image"),
]


@pytest.mark.parametrize(("inputs", "text"), INPUT_ERROR_CASES)
def test_wrong_inputs_are_explained(inputs, text: str) -> None:  # type: ignore[no-untyped-def]
    model = create_model("clinical_mlp", num_classes=3, in_features=5)
    with pytest.raises(ValueError, match=text):
        model(*inputs())


def test_bad_options_are_reported_together() -> None:
    with pytest.raises(ModelConfigError) as err:
        create_model("clinical_gru", num_classes=1, in_features=0, drop_rate=2, hidden_size=0)
    for text in ("num_classes", "in_features", "drop_rate", "hidden_size"):
        assert text in str(err.value)


def test_pretrained_path_is_a_whole_model_state_dict(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    source = create_model("clinical_mlp", num_classes=2, in_features=5)
    torch.save(source.state_dict(), tmp_path / "mlp.pt")
    loaded = create_model(
        "clinical_mlp", num_classes=2, in_features=5, pretrained_path=str(tmp_path / "mlp.pt")
    )
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(PretrainedWeightsError, match="mlp.pt"):
        create_model(
            "clinical_mlp", num_classes=2, in_features=6, pretrained_path=tmp_path / "mlp.pt"
        )
    with pytest.raises(PretrainedWeightsError, match="not found"):
        create_model("clinical_gru", num_classes=2, pretrained_path=tmp_path / "none.pt")
