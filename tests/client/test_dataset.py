from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.dataset import ManifestDataset, make_loader
from client.manifest import Manifest, load_manifest
from client.transforms import eval_transforms, load_image, train_transforms
from tests.client._data import make_site, small_task, write_csv, write_png

S = 16


def _manifest(root: Path, *, mode: str = "L", in_chans: int = 3, **kwargs: object) -> Manifest:
    rows = make_site(root, mode=mode, height=12, width=24, **kwargs)  # non-square on purpose
    splits = ["train", "train", "train", "train", "test", "test"]
    for row, split in zip(rows, splits, strict=False):
        row["split"] = split
    path = write_csv(root / "m.csv", rows[: len(splits)])
    return load_manifest(path, small_task(S, in_chans))


@pytest.mark.parametrize(
    ("mode", "channels"), [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)], ids=str
)
def test_load_image_keeps_rows_as_rows(tmp_path: Path, mode: str, channels: int) -> None:
    path = write_png(tmp_path / "a.png", height=10, width=20, mode=mode)
    image = load_image(path)
    assert type(image) is torch.Tensor and image.dtype == torch.float32
    assert tuple(image.shape) == (channels, 10, 20)  # (C, H, W), not MONAI's default (C, W, H)
    assert torch.all(image[0, 0] == 255)  # the bright top row stays on top


def test_load_image_npy_layouts(tmp_path: Path) -> None:
    hw = np.arange(10 * 20, dtype=np.float32).reshape(10, 20)
    for name, array in {
        "hw": hw,
        "chw": np.stack([hw] * 3),
        "hwc": np.stack([hw] * 3, axis=-1),
    }.items():
        np.save(tmp_path / f"{name}.npy", array)
        image = load_image(tmp_path / f"{name}.npy")
        assert tuple(image.shape[1:]) == (10, 20), name
        assert torch.equal(image[0], torch.from_numpy(hw)), name


@pytest.mark.parametrize(
    ("channels", "in_chans"), [(1, 3), (3, 3), (4, 3), (3, 1), (2, 1), (1, 1)], ids=str
)
def test_eval_transforms_shape_range_orientation(channels: int, in_chans: int) -> None:
    image = torch.zeros(channels, 12, 24)
    image[:, :3] = 200.0  # bright top quarter
    out = eval_transforms(S, in_chans=in_chans)(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    assert tuple(out.shape) == (in_chans, S, S)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert out[:, :3].mean() > 0.9 and out[:, -4:].max() == 0.0


def test_eval_deterministic_train_random_and_seeded() -> None:
    image = torch.rand(1, 20, 28, generator=torch.Generator().manual_seed(0))
    chain = eval_transforms(S)
    assert torch.equal(chain(image), chain(image))
    strong = {"affine_prob": 1.0, "elastic_prob": 1.0, "noise_prob": 1.0}
    a = train_transforms(S, seed=5, **strong)
    b = train_transforms(S, seed=5, **strong)
    first = a(image)
    assert tuple(first.shape) == (3, S, S) and 0.0 <= first.min() and first.max() <= 1.0
    assert not torch.equal(first, a(image))  # random draw to draw
    assert torch.equal(first, b(image))  # same seed, same draws
    with pytest.raises(
        ValueError, match=r"flip_prob must be in \[0, 1\], got 2.0; noise_std must be >= 0"
    ):
        train_transforms(S, flip_prob=2.0, noise_std=-1.0)


@pytest.mark.parametrize(("mode", "in_chans"), [("L", 3), ("RGB", 3), ("RGB", 1)], ids=str)
def test_dataset_items(tmp_path: Path, mode: str, in_chans: int) -> None:
    manifest = _manifest(tmp_path, mode=mode, in_chans=in_chans)
    for train in (False, True):
        dataset = ManifestDataset(manifest, "train", train=train, seed=0)
        assert len(dataset) == 4
        assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [0, 1, 0, 1]
        item = dataset[1]
        assert isinstance(item, tuple) and len(item) == 3  # bmode, ceus, y
        for x in item[:2]:
            assert type(x) is torch.Tensor
            assert x.dtype == torch.float32 and tuple(x.shape) == (in_chans, S, S)
        assert item[2].dtype == torch.int64 and item[2].ndim == 0 and item[2].item() == 1
    top = ManifestDataset(manifest, "test", train=False)[0][0]
    assert top[:, 0].mean() > top[:, 4:].mean()  # bright top row of a 12x24 image stays on top


def test_missing_modality_is_zero_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = make_site(tmp_path, labels=("low", "high"))
    rows[0]["ceus"] = ""
    for row in rows:
        row["split"] = "train"
    manifest = load_manifest(write_csv(tmp_path / "m.csv", rows), small_task(S))
    with caplog.at_level("INFO", logger="client.dataset"):
        dataset = ManifestDataset(manifest, "train", train=False)
    assert "modality ceus is missing in 1 of 2 rows" in caplog.text
    bmode, ceus, mask, _ = dataset[0]  # mufnet handles missing modalities: a mask follows
    assert torch.count_nonzero(ceus) == 0 and torch.count_nonzero(bmode) > 0
    assert mask.tolist() == [1.0, 0.0] and dataset[1][2].tolist() == [1.0, 1.0]


def test_cache_and_bags(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    plain = ManifestDataset(manifest, "test", train=False)
    cached = ManifestDataset(manifest, "test", train=False, cache_decoded=True)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(plain[0], cached[0], strict=True))
    frame = manifest.frame.copy()
    frame.loc[0, "bmode"] = frame.loc[0, "bmode"] + ";" + frame.loc[1, "bmode"]
    bagged = Manifest(manifest.path, manifest.root, manifest.task, frame)
    with pytest.raises(ValueError, match="row 2, column 'bmode'"):
        ManifestDataset(bagged, "train", train=True)


def test_make_loader(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    loader = make_loader(manifest, "test", batch_size=4, train=False)
    batches = list(loader)
    assert len(batches) == 1
    bmode, ceus, y = batches[0]
    assert bmode.shape == ceus.shape == (2, 3, S, S) and y.tolist() == [0, 1]
    balanced = make_loader(manifest, "train", batch_size=2, train=True, balanced=True, seed=1)
    assert type(balanced.sampler).__name__ == "ClassBalancedSampler"
    again = make_loader(manifest, "train", batch_size=2, train=True, balanced=True, seed=1)
    assert all(
        torch.equal(a, b)
        for batch_a, batch_b in zip(balanced, again, strict=True)
        for a, b in zip(batch_a, batch_b, strict=True)
    )
    shuffled = make_loader(manifest, "train", batch_size=4, train=True)
    assert sum(len(b[-1]) for b in shuffled) == 4
    with pytest.raises(ValueError, match="batch_size must be a positive int.*num_workers"):
        make_loader(manifest, "train", batch_size=0, train=True, num_workers=-1)
    with pytest.raises(ValueError, match="the val split .* has no rows"):
        make_loader(manifest, "val", batch_size=2, train=True)
