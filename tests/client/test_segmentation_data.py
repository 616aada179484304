"""Segmentation manifests: the mask column, NIfTI CT slices and masks, skipped rows, training."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch
from PIL import Image

from client.dataset import ManifestDataset, make_loader
from client.manifest import ManifestError, load_manifest, target_columns
from client.train import TrainConfig, evaluate, predict, train_local
from models import create_model_for_task, get_task
from tests.client._data import write_csv

SIZE = 24
SEG = get_task("kidney-tumour-seg").replace(image_size=SIZE)
DFS = get_task("kidney-tumour-dfs").replace(image_size=SIZE)
SPLITS = ("train", "train", "train", "train", "val", "test")


def _slice(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric slice (bright block in the top-left quadrant) and its 0/1 mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    top, left = 2 + seed % 3, 3 + seed % 4
    mask[top : top + 6, left : left + 9] = 1  # wider than tall: a transpose would show
    image = (0.2 + 0.1 * rng.random((SIZE, SIZE)) + 0.6 * mask).astype(np.float32)
    return image, mask


def _write(folder: Path, name: str, image: np.ndarray, mask: np.ndarray, fmt: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, array in (("ct", image), ("mask", mask)):
        if fmt == "png":
            path = folder / f"{name}_{kind}.png"
            scale = 255 if kind == "mask" else 255.0
            Image.fromarray((array * scale).astype(np.uint8), mode="L").save(path)
        else:
            path = folder / f"{name}_{kind}.{fmt}"
            nibabel.save(nibabel.Nifti1Image(array, affine=np.eye(4)), str(path))
        paths.append(path.relative_to(folder.parent).as_posix())
    return paths


def _site(root: Path, fmt: str, *, label: str = "tumour") -> tuple[Path, list[dict[str, str]]]:
    rows = []
    for i, split in enumerate(SPLITS):
        image, mask = _slice(i)
        ct, mask_path = _write(root / "img", f"p{i}", image, mask, fmt)
        rows.append(
            {"patient_id": f"P{i}", "label": label, "split": split, "ct": ct, "mask": mask_path}
        )
    return write_csv(root / "manifest.csv", rows), rows


def test_target_columns_follow_the_model_kind() -> None:
    assert target_columns(SEG) == ("mask",)
    assert target_columns(DFS) == ("mask", "label")
    assert target_columns(get_task("rcc-grading")) == ("label",)


@pytest.mark.parametrize("fmt", ["nii", "nii.gz", "png"])
def test_ct_and_mask_round_trip(tmp_path: Path, fmt: str) -> None:
    path, _ = _site(tmp_path, fmt)
    manifest = load_manifest(path, SEG, check_images=True)
    dataset = ManifestDataset(manifest, "train", train=False)
    assert dataset.skipped_rows == 0 and dataset.unreadable == []
    for index in range(len(dataset)):
        image, mask = dataset[index]
        _, want = _slice(index)
        assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
        assert mask.shape == (1, SIZE, SIZE) and mask.dtype == torch.int64
        assert torch.equal(mask[0], torch.from_numpy(want.astype(np.int64)))
        # the CT is bright exactly where the mask is, in the same orientation
        inside, outside = image[0][mask[0] == 1], image[0][mask[0] == 0]
        assert inside.min() > outside.max()


def test_training_flip_moves_image_and_mask_together(tmp_path: Path) -> None:
    path, _ = _site(tmp_path, "nii.gz")
    manifest = load_manifest(path, SEG)
    dataset = ManifestDataset(manifest, "train", train=True, seed=3)
    flipped = 0
    for _ in range(6):
        for index in range(len(dataset)):
            image, mask = dataset[index]
            inside, outside = image[0][mask[0] == 1], image[0][mask[0] == 0]
            assert inside.min() > outside.max()
            flipped += int(mask[0, :, SIZE // 2 :].sum() > mask[0, :, : SIZE // 2].sum())
    assert 0 < flipped < 24  # some items flipped left-right, some not


def test_dfs_items_end_with_mask_then_label(tmp_path: Path) -> None:
    path, rows = _site(tmp_path, "nii", label="ckd")
    features = {name: "1" for name in DFS.features if name not in DFS.categories}
    features |= {name: levels[0] for name, levels in DFS.categories.items()}
    write_csv(path, [{**row, **features} for row in rows])
    manifest = load_manifest(path, DFS)
    image, feats, mask, label = ManifestDataset(manifest, "train", train=False)[0]
    assert image.shape == (1, SIZE, SIZE) and feats.shape == (len(DFS.features),)
    assert mask.shape == (1, SIZE, SIZE) and label.item() == DFS.classes.index("ckd")


def test_mask_column_problems_are_listed(tmp_path: Path) -> None:
    path, rows = _site(tmp_path, "nii")
    rows[0]["mask"] = ""
    rows[1]["mask"] = "img/nowhere_mask.nii.gz"
    (tmp_path / "img" / "broken_mask.nii").write_bytes(b"not a nifti file at all" * 30)
    rows[2]["mask"] = "img/broken_mask.nii"
    with pytest.raises(ManifestError) as err:
        load_manifest(write_csv(path, rows), SEG)
    problems = {(p.row, p.column): p.message for p in err.value.problems}
    assert set(problems) == {(2, "mask"), (3, "mask"), (4, "mask")}
    assert "mask is empty" in problems[(2, "mask")]
    assert "file not found" in problems[(3, "mask")]
    assert "not a NIfTI file" in problems[(4, "mask")]
    without = [{k: v for k, v in row.items() if k != "mask"} for row in rows]
    with pytest.raises(ManifestError, match="label-map column 'mask' is missing"):
        load_manifest(write_csv(path, without), SEG)


def test_unreadable_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    path, rows = _site(tmp_path, "nii.gz")
    (tmp_path / "img" / "p1_mask.nii.gz").write_bytes(b"truncated")
    (tmp_path / "img" / "p2_ct.nii.gz").write_bytes(b"")
    manifest = load_manifest(path, SEG, check_images=False)  # existence only
    dataset = ManifestDataset(manifest, "train", train=False)
    assert len(dataset) == 2  # 4 training rows, 2 unreadable
    assert dataset.skipped_rows == 2 and dataset.skipped_files == 2
    assert sorted((p.row, p.column) for p in dataset.unreadable) == [(3, "mask"), (4, "ct")]


def test_segmentation_trains_and_evaluates_through_the_common_path(tmp_path: Path) -> None:
    path, _ = _site(tmp_path, "png")
    manifest = load_manifest(path, SEG)
    torch.manual_seed(0)
    task = SEG.replace(model_kwargs={"channels": (8, 16)})
    model = create_model_for_task(task)
    loader = make_loader(manifest, "train", batch_size=2, train=True)
    config = TrainConfig(epochs=4, learning_rate=0.05)
    result = train_local(model, loader, config=config, class_counts=manifest.class_counts("train"))
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    evaluation = evaluate(
        model, make_loader(manifest, "train", batch_size=4, train=False), num_classes=2
    )
    assert evaluation.num_examples == 4
    assert 0 <= evaluation.metrics["iou"] <= evaluation.metrics["dice"] <= 1
    assert evaluation.summary.segmentation is not None
    assert evaluation.summary.segmentation.n == 4
    labels, probs, _ = predict(model, make_loader(manifest, "train", batch_size=4, train=False))
    assert labels.tolist() == [1, 1, 1, 1]  # every slice shows tumour
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dfs_trains_under_dp_sgd(tmp_path: Path) -> None:
    from client.privacy import make_private

    path, rows = _site(tmp_path, "nii.gz", label="ckd")
    features = {name: "1" for name in DFS.features if name not in DFS.categories}
    features |= {name: levels[0] for name, levels in DFS.categories.items()}
    write_csv(path, [{**row, **features} for row in rows])
    manifest = load_manifest(path, DFS)
    torch.manual_seed(0)
    task = DFS.replace(model_kwargs={"channels": (8, 16)})
    model = create_model_for_task(task, dp_safe=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = make_loader(manifest, "train", batch_size=2, train=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    private, optimizer, loader, engine = make_private(
        model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    result = train_local(
        private,
        loader,
        config=TrainConfig(epochs=2),
        class_counts=manifest.class_counts("train"),
        optimizer=optimizer,
    )
    assert result.num_steps > 0 and np.isfinite(result.mean_loss)
    assert engine.accountant.get_epsilon(1e-5) > 0
    after = model.state_dict()
    assert set(after) == set(before)
    assert any(not torch.equal(after[k], before[k]) for k in before)
