"""Bag modalities: many images per row (a folder or ';'-separated paths), padded with a mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.dataset import ManifestDataset, collate_bags, make_loader
from client.manifest import ManifestError, load_manifest
from tests.client._data import make_site, small_task, write_csv, write_png

S = 16
TASK = small_task(S).replace(bags=("bmode",))  # bmode: a bag; ceus: one image per row


def _bag_site(root: Path) -> list[dict[str, str]]:
    """Four rows: a folder bag of 3, a ';' bag of 2, a single-path bag, a folder bag of 1."""
    rows = make_site(root, labels=("low", "high", "low", "high"))
    for k in range(3):
        write_png(root / "tem" / "p00" / f"field{k}.png", seed=100 + k)
    write_png(root / "tem" / "p03" / "only.png", seed=200)
    (root / "tem" / "p00" / "notes.txt").write_text("not an image: skipped")
    rows[0]["bmode"] = "tem/p00"
    rows[1]["bmode"] = "img/p01_bmode.png; img/p02_bmode.png"
    rows[3]["bmode"] = "tem/p03/"
    for row in rows:
        row["split"] = "train"
    return rows


def test_folder_and_semicolon_bags_are_expanded(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "m.csv", _bag_site(tmp_path)), TASK)
    cells = manifest.frame["bmode"].tolist()
    assert cells[0].split(";") == [str(tmp_path / f"tem/p00/field{k}.png") for k in range(3)]
    assert cells[1].split(";") == [
        str(tmp_path / "img/p01_bmode.png"),
        str(tmp_path / "img/p02_bmode.png"),
    ]
    assert cells[2] == str(tmp_path / "img/p02_bmode.png")
    assert cells[3] == str(tmp_path / "tem/p03/only.png")


BAG_PROBLEM_CASES = [  # (row index, column, cell, spreadsheet row, text in the message)
    (1, "bmode", "img/p01_bmode.png;tem/gone.png", 3, "file not found: 'tem/gone.png'"),
    (2, "bmode", " ; ;", 4, "empty bag"),
    (0, "bmode", "tem/empty", 2, "empty bag: folder 'tem/empty' holds no images"),
    (1, "ceus", "img/p01_ceus.png;img/p02_ceus.png", 3, "takes one image per row"),
    (0, "ceus", "tem/p00", 2, "only 'bmode' take bags"),
]


@pytest.mark.parametrize(("index", "column", "cell", "row", "text"), BAG_PROBLEM_CASES)
def test_bag_problems_name_row_column_and_file(
    tmp_path: Path, index: int, column: str, cell: str, row: int, text: str
) -> None:
    rows = _bag_site(tmp_path)
    (tmp_path / "tem" / "empty").mkdir()
    rows[index][column] = cell
    with pytest.raises(ManifestError) as err:
        load_manifest(write_csv(tmp_path / "m.csv", rows), TASK)
    found = [p.message for p in err.value.problems if (p.row, p.column) == (row, column)]
    assert any(text in message for message in found), str(err.value)


def test_broken_bag_member_is_named(tmp_path: Path) -> None:
    rows = _bag_site(tmp_path)
    (tmp_path / "tem" / "p00" / "field9.png").write_bytes(b"not a png")
    with pytest.raises(ManifestError) as err:
        load_manifest(write_csv(tmp_path / "m.csv", rows), TASK)
    (problem,) = err.value.problems
    assert (problem.row, problem.column) == (2, "bmode")
    assert "tem/p00/field9.png" in problem.message


def test_dataset_gives_bag_stacks_and_loader_pads_with_a_mask(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "m.csv", _bag_site(tmp_path)), TASK)
    dataset = ManifestDataset(manifest, "train", train=False)
    assert dataset.bag_positions == (0,)
    bag, ceus, y = dataset[0]
    assert bag.shape == (3, 3, S, S) and ceus.shape == (3, S, S) and y.dtype == torch.int64
    assert [dataset[i][0].shape[0] for i in range(4)] == [3, 2, 1, 1]
    # the second member of row 3's bag is row 4's bmode image: same pixels in both places
    assert torch.equal(dataset[1][0][1], dataset[2][0][0])

    loader = make_loader(manifest, "train", batch_size=4, train=False)
    tem, mask, ceus_batch, labels = next(iter(loader))
    assert tem.shape == (4, 3, 3, S, S) and mask.dtype == torch.bool
    assert mask.tolist() == [
        [True, True, True],
        [True, True, False],
        [True, False, False],
        [True, False, False],
    ]
    assert torch.count_nonzero(tem[1, 2]) == 0 and torch.count_nonzero(tem[3, 1:]) == 0
    assert torch.equal(tem[0], dataset[0][0]) and ceus_batch.shape == (4, 3, S, S)
    assert labels.tolist() == [0, 1, 0, 1]


def test_collate_bags_handles_missing_bags() -> None:
    image = torch.ones(1, 4, 4)
    batch = [(torch.zeros(0, 1, 4, 4), image, torch.tensor(0))] * 2
    bags, mask, images, labels = collate_bags(batch, bag_positions=(0,))
    assert bags.shape == (2, 1, 1, 4, 4) and not mask.any()  # padded to one empty slot
    assert images.shape == (2, 1, 4, 4) and labels.tolist() == [0, 0]


def test_cached_bags_match_uncached(tmp_path: Path) -> None:
    manifest = load_manifest(write_csv(tmp_path / "m.csv", _bag_site(tmp_path)), TASK)
    plain = ManifestDataset(manifest, "train", train=False)
    cached = ManifestDataset(manifest, "train", train=False, cache_decoded=True)
    for _ in range(2):
        assert torch.equal(plain[0][0], cached[0][0])


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning")
def test_dp_sgd_trains_cmusnet_on_bags(tmp_path: Path) -> None:
    from client.privacy import make_private
    from client.train import TrainConfig, train_local
    from models.factory import create_model_for_task
    from models.tasks import get_task

    task = get_task("glomerular-disease").replace(
        modalities=("tem", "om", "im"), backbone="test_resnet", image_size=S
    )
    rows = _bag_site(tmp_path)
    for row in rows:
        row["tem"], row["om"], row["im"] = row["bmode"], row["ceus"], row["ceus"]
        row["label"] = {"low": "IgAN", "high": "MN"}[row["label"]]
    manifest = load_manifest(write_csv(tmp_path / "g.csv", rows), task)
    torch.manual_seed(0)
    model = create_model_for_task(task, dp_safe=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = make_loader(manifest, "train", batch_size=2, train=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    private, optimizer, loader, _ = make_private(
        model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    result = train_local(
        private,
        loader,
        config=TrainConfig(epochs=2, learning_rate=0.01),
        class_counts=manifest.class_counts("train"),
        optimizer=optimizer,
    )
    assert result.num_steps >= 1
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the aux heads too:
    assert not torch.equal(before["aux_heads.0.weight"], after["aux_heads.0.weight"])
