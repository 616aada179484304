"""Torch dataset and loaders over a checked manifest.

Items are FLAT tuples ``(x_1, ..., x_M, y)``: one float32 ``(in_chans, S, S)`` image per task
modality in task order, then the label as an int64 scalar tensor. When the task's model
handles missing modalities (``models.handles_missing_modalities``), the task has two or
more, and some row of the site's manifest misses one, a float32 ``(M,)`` modality mask
(1 = present, 0 = the cell was empty) follows the images: ``(x_1, ..., x_M, mask, y)``.
A task with clinical features adds their float32 ``(F,)`` vector after the images (and
mask): ``(x_1, ..., x_M, f, y)`` (``(f, y)`` for a clinical-only task); see
:mod:`client.features` for how it is made. Flat tuples of tensors are what Opacus'
``DPDataLoader`` collates without help.

A file that cannot be read at training time (corrupt, truncated, deleted after the check) is
skipped, counted and logged, never fatal: the modality counts as missing for that row (a zero
image; a bag loses that member), and a row left with no readable image is dropped from its
batch (its item carries label ``-1``, which :func:`collate_readable` filters out).
:attr:`ManifestDataset.skipped_files` gives the count; the site reports it as the
``skipped-files`` metric.

Segmentation tasks (``models.factory.task_kind``) end items with their targets in the same
way: ``(x, m)`` for a segmentation model, ``(x, f, m, y)`` for segmentation + risk (DFS), with
``m`` the label map from the ``mask`` column as an int64 ``(1, S, S)`` tensor (resized with
nearest neighbours; for a 2-class task any value > 0 is foreground). Their images get the
deterministic chain plus a random left-right flip shared by image and mask (train only), and
rows whose image or mask file cannot be read are left out when the dataset is built (counted
in ``skipped_rows`` and ``skipped_files``, listed in ``unreadable``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import MutableMapping, Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from client.features import FeatureTransform, site_feature_transform
from client.manifest import MASK_COLUMN, Manifest, ManifestError, ManifestProblem, image_problem
from client.sampler import ClassBalancedSampler
from client.transforms import eval_transforms, load_image, resize_mask, train_transforms
from models import handles_missing_modalities
from models.factory import task_kind
from models.tasks import TaskSpec

__all__ = [
    "DROPPED_LABEL",
    "ManifestDataset",
    "collate_bags",
    "collate_readable",
    "make_loader",
    "modality_mask",
    "uses_modality_mask",
]

#: label of an item whose row had no readable image (dropped by :func:`collate_readable`).
DROPPED_LABEL = -1

logger = logging.getLogger(__name__)


def uses_modality_mask(task: TaskSpec) -> bool:
    """Whether items (and model inputs) of ``task`` carry the ``(M,)`` modality mask: the task
    has two or more image modalities and its model handles missing ones."""
    return len(task.modalities) >= 2 and handles_missing_modalities(task.model)


def modality_mask(paths: tuple[str, ...]) -> torch.Tensor:
    """``(M,)`` float32: 1 where a modality cell holds a path, 0 where it is empty."""
    return torch.tensor([1.0 if path else 0.0 for path in paths], dtype=torch.float32)


class ManifestDataset(Dataset):
    """One split of a manifest as ``(x_1, ..., x_M, y)`` items.

    A missing modality (empty cell) gives a zero image, and, for models that handle missing
    modalities, a 0 in the item's modality mask (see :func:`uses_modality_mask`); how many rows
    miss each modality is logged once, when the dataset is built. A bag modality
    (``task.bags``) gives a ``(N_i, in_chans, S, S)`` stack of its images
    (``(0, in_chans, S, S)`` when missing); a bag cell in any other modality raises
    :class:`~client.manifest.ManifestError` naming its row and column. An unreadable file is
    skipped (see the module docstring) and counted in :attr:`skipped_files`, also across
    DataLoader workers.

    Args:
        manifest: a checked manifest (see :func:`client.manifest.load_manifest`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        train: apply the random training augmentation (else the deterministic eval chain).
        cache_decoded: keep each decoded, resized image in memory (``M * N * in_chans * S * S``
            floats; each DataLoader worker holds its own copy). Default False.
        seed: seed of the augmentation; ``None`` draws from NumPy's global state. Default None.
        feature_transform: preprocessing of the clinical features; default the one fitted on
            this manifest's training rows (:func:`client.features.site_feature_transform`).
        image_cache: a mapping to keep decoded images in instead of a new one, so that
            loaders over the same split of the same manifest share it (a site reuses it across
            rounds); implies ``cache_decoded``. Default None.
    """

    def __init__(
        self,
        manifest: Manifest,
        split: str,
        *,
        train: bool,
        cache_decoded: bool = False,
        seed: int | None = None,
        feature_transform: FeatureTransform | None = None,
        image_cache: MutableMapping[tuple[int, int, int], torch.Tensor] | None = None,
    ) -> None:
        task = manifest.task
        rows = manifest.rows(split)
        self.split = split
        self.train = train
        self._manifest_path = manifest.path
        self.modalities: tuple[str, ...] = tuple(task.modalities)
        self._task_classes = task.classes
        self._seg_classes_option = task.model_kwargs.get("seg_classes", 2)
        self.bag_positions: tuple[int, ...] = tuple(
            j for j, m in enumerate(self.modalities) if m in task.bags
        )
        self.image_size = task.image_size
        self.in_chans = task.in_chans
        self.kind = task_kind(task)
        #: rows left out because an image or mask file cannot be read (segmentation tasks)
        self.unreadable: list[ManifestProblem] = []
        if self.kind != "classification":
            rows = self._readable(rows)
        self._masks: list[str] = list(rows[MASK_COLUMN]) if self.kind != "classification" else []
        self._flip = np.random.RandomState(seed) if train and self._masks else None
        self._rows = rows["row"].to_numpy(dtype=np.int64)
        self._labels = rows["label_index"].to_numpy(dtype=np.int64)
        self._paths: list[tuple[str, ...]] = list(
            rows[list(self.modalities)].itertuples(index=False, name=None)
        )
        # the mask only when some row of the site misses a modality (an all-ones mask changes
        # nothing), so complete sites keep the plain (x_1, ..., x_M, y) items
        self._with_mask = uses_modality_mask(task) and bool(
            (manifest.frame[list(self.modalities)] == "").to_numpy().any()
        )
        self._features: torch.Tensor | None = None
        if task.features:
            transform = feature_transform or site_feature_transform(manifest)
            self._features = torch.from_numpy(transform.transform(rows))  # (N, F) float32
        self._check_no_bags()
        self._log_missing()
        images = bool(self.modalities)  # clinical-only tasks have no image to transform
        self._prepare = eval_transforms(self.image_size, in_chans=self.in_chans) if images else None
        self._cache: MutableMapping[tuple[int, int, int], torch.Tensor] | None = (
            image_cache if image_cache is not None else ({} if cache_decoded else None)
        )
        # cached images are already prepared: their augmentation skips the eval steps
        self._augment = (
            train_transforms(
                self.image_size,
                in_chans=self.in_chans,
                seed=seed,
                prepared=self._cache is not None,
            )
            if train and images and not self._masks  # segmentation: flip image and mask only
            else None
        )
        # (N, M, members) flags of files that could not be read; shared memory so that
        # DataLoader workers' skips are counted in the main process too.
        members = max([1, *(len(_members(c)) for p in self._paths for c in p)])
        self._failed = torch.zeros(
            (len(self._paths), len(self.modalities), members), dtype=torch.uint8
        )
        if self._failed.numel():
            self._failed.share_memory_()

    @property
    def labels(self) -> np.ndarray:
        """Label index per item, shape ``(N,)``, int64."""
        return self._labels

    @property
    def skipped_files(self) -> int:
        """Distinct image files that could not be read so far (each skipped)."""
        failed = {_members(self._paths[i][j])[k] for i, j, k in self._failed.nonzero().tolist()}
        return len(failed) + len(self.unreadable)

    @property
    def skipped_rows(self) -> int:
        """Rows dropped so far because none of their images could be read."""
        failed_rows = sorted(set(self._failed.nonzero()[:, 0].tolist()))
        left_out = len({p.row for p in self.unreadable})  # segmentation rows left out up front
        return left_out + sum(
            all(
                not cell or all(self._failed[i, j, k] for k in range(len(_members(cell))))
                for j, cell in enumerate(self._paths[i])
            )
            for i in failed_rows
        )

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        # MONAI's metadata tracking roughly doubles the transforms' cost, and every item ends
        # as a plain tensor anyway: switch it off while this item is made.
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            images = [self._image(index, j) for j in range(len(self.modalities))]
        finally:
            set_track_meta(tracking)
        mask = (modality_mask(self._paths[index]),) if self._with_mask else ()
        features = () if self._features is None else (self._features[index],)
        label = int(self._labels[index])
        if any(image is None for image in images) or self._failed[index].any():
            readable = [
                image is not None and bool(cell) and (j not in self.bag_positions or len(image))
                for j, (image, cell) in enumerate(zip(images, self._paths[index], strict=True))
            ]
            if not any(readable):
                label = DROPPED_LABEL  # nothing readable left in this row
            blank = torch.zeros(self.in_chans, self.image_size, self.image_size)
            images = [blank if image is None else image for image in images]
        if not self._masks:
            return (*images, *mask, *features, torch.tensor(label, dtype=torch.int64))
        label_map = self._label_map(index)
        if self._flip is not None and self._flip.rand() < 0.5:
            images = [x.flip(-1) for x in images]
            label_map = label_map.flip(-1)
        risk = torch.tensor(label, dtype=torch.int64)
        targets = (label_map,) if self.kind == "segmentation" else (label_map, risk)
        return (*images, *mask, *features, *targets)

    def _label_map(self, index: int) -> torch.Tensor:
        path = self._masks[index]
        try:
            raw = load_image(path)
        except Exception as err:
            raise ValueError(
                f"row {self._rows[index]}, column {MASK_COLUMN!r}: cannot load {path}: {err}"
            ) from err
        return resize_mask(raw, self.image_size, binary=self._seg_classes == 2)

    @property
    def _seg_classes(self) -> int:
        if self.kind == "segmentation":
            return len(self._task_classes)
        return int(self._seg_classes_option)

    def _readable(self, rows):  # type: ignore[no-untyped-def]
        """``rows`` without those whose image or mask file cannot be read (kept in
        ``unreadable`` with the reason, counted in ``skipped_rows``; logged once)."""
        keep = []
        for record in rows.to_dict("records"):
            problems = [
                ManifestProblem(int(record["row"]), column, f"cannot read {path!r}: {reason}")
                for column in (*self.modalities, MASK_COLUMN)
                for path in [record[column]]
                if path and (reason := image_problem(path)) is not None
            ]
            self.unreadable += problems
            keep.append(not problems)
        if self.unreadable:
            logger.warning(
                "split %s: %d row(s) left out, their files cannot be read: %s",
                self.split,
                len({p.row for p in self.unreadable}),
                "; ".join(str(p) for p in self.unreadable[:5]),
            )
        return rows[np.asarray(keep, dtype=bool)].reset_index(drop=True)

    def _image(self, index: int, modality: int) -> torch.Tensor | None:
        """The prepared image (a zero image when missing; None when unreadable), or a bag's
        ``(N_i, C, S, S)`` stack of its readable members."""
        cell = self._paths[index][modality]
        if modality in self.bag_positions:
            loaded = [self._one(index, modality, k, p) for k, p in enumerate(_members(cell))]
            kept = [image for image in loaded if image is not None]
            if not kept:
                return torch.zeros(0, self.in_chans, self.image_size, self.image_size)
            return torch.stack(kept)
        if not cell:
            return torch.zeros(self.in_chans, self.image_size, self.image_size)
        return self._one(index, modality, 0, cell)

    def _one(self, index: int, modality: int, member: int, path: str) -> torch.Tensor | None:
        if self._failed[index, modality, member]:
            return None  # skipped before: do not read it again
        if self._cache is None:
            image = self._load(index, modality, member, path)
            if image is None:
                return None
            # never `self._augment or ...`: bool(Compose) calls len() -> flatten(), which
            # builds a new Compose that re-seeds the shared random transforms.
            chain = self._augment if self._augment is not None else self._prepare
            return chain(image)
        key = (index, modality, member)
        if key not in self._cache:
            image = self._load(index, modality, member, path)
            if image is None:
                return None
            self._cache[key] = self._prepare(image)
        cached = self._cache[key]
        return self._augment(cached) if self._augment is not None else cached.clone()

    def _load(self, index: int, modality: int, member: int, path: str) -> torch.Tensor | None:
        """The decoded image, or None (logged, flagged) when the file cannot be read."""
        try:
            return load_image(path)
        except Exception as err:  # noqa: BLE001 - any reader failure: skip the file, go on
            self._failed[index, modality, member] = 1
            _log_skip(int(self._rows[index]), self.modalities[modality], path, err)
            return None

    def _check_no_bags(self) -> None:
        bags = [
            ManifestProblem(
                int(row),
                m,
                "the cell holds a bag (several paths or a folder) in a modality that takes "
                "one image per row (declare bag modalities in the task's `bags`)",
            )
            for row, paths in zip(self._rows, self._paths, strict=True)
            for j, (m, path) in enumerate(zip(self.modalities, paths, strict=True))
            if j not in self.bag_positions and (";" in path or (path and os.path.isdir(path)))
        ]
        if bags:
            raise ManifestError(self._manifest_path, bags)

    def _log_missing(self) -> None:
        for j, m in enumerate(self.modalities):
            missing = sum(1 for paths in self._paths if not paths[j])
            if missing:
                logger.info(
                    "split %s: modality %s is missing in %d of %d rows; they get a zero image "
                    "(masked out of the fusion)",
                    self.split,
                    m,
                    missing,
                    len(self._paths),
                )


def make_loader(
    manifest: Manifest,
    split: str,
    *,
    batch_size: int,
    train: bool,
    balanced: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    cache_decoded: bool = False,
    feature_transform: FeatureTransform | None = None,
    image_cache: MutableMapping[tuple[int, int, int], torch.Tensor] | None = None,
) -> DataLoader:
    """A DataLoader over one split.

    Train loaders shuffle (or, with ``balanced``, draw with :class:`ClassBalancedSampler`) and
    augment; eval loaders read in manifest order with the deterministic chain. The shuffle
    order, class draws and augmentation all follow ``seed``: pass a different seed per
    federated round (e.g. ``seed + server_round``) to vary them across rounds.

    Args:
        manifest: a checked manifest.
        split: ``"train"``, ``"val"`` or ``"test"``.
        batch_size: samples per batch (>= 1).
        train: training loader (shuffled, augmented) or evaluation loader (sequential).
        balanced: class-balanced sampling (train loaders only). Default False.
        seed: seed of order and augmentation. Default 0.
        num_workers: DataLoader worker processes. Default 0.
        cache_decoded: see :class:`ManifestDataset`. Default False.
        feature_transform: see :class:`ManifestDataset`. Default None (the site's own).
        image_cache: see :class:`ManifestDataset`. Default None.

    Returns:
        A ``torch.utils.data.DataLoader`` yielding ``(x_1, ..., x_M, y)`` batches with
        ``x_i`` of shape ``(B, in_chans, S, S)`` and ``y`` of shape ``(B,)``; a bag modality
        gives two tensors instead, see :func:`collate_bags`.
    """
    problems = []
    if not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        problems.append(f"num_workers must be an int >= 0, got {num_workers!r}")
    if not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative int, got {seed!r}")
    if problems:
        raise ValueError("make_loader: " + "; ".join(problems))
    if balanced and not train:
        logger.warning("balanced=True only applies to train loaders; reading %s in order", split)
    dataset = ManifestDataset(
        manifest,
        split,
        train=train,
        cache_decoded=cache_decoded,
        seed=seed if train else None,
        feature_transform=feature_transform,
        image_cache=image_cache,
    )
    if train and len(dataset) == 0:
        raise ValueError(f"the {split} split of {manifest.path} has no rows to train on")
    sampler = ClassBalancedSampler(dataset.labels, seed=seed) if train and balanced else None
    collate = functools.partial(collate_readable, bag_positions=dataset.bag_positions)
    return DataLoader(
        dataset,
        collate_fn=collate,
        batch_size=batch_size,
        shuffle=train and not balanced,
        sampler=sampler,
        # A last training batch of one sample breaks BatchNorm ("Expected more than 1 value
        # per channel"); drop it (a different row is left out each epoch).
        drop_last=train and len(dataset) > 1 and len(dataset) % batch_size == 1,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker if num_workers else None,
    )


def collate_bags(
    batch: Sequence[Sequence[torch.Tensor]], *, bag_positions: Sequence[int]
) -> tuple[torch.Tensor, ...]:
    """Collate flat items whose ``bag_positions`` hold variable-length ``(N_i, C, S, S)`` bags.

    Each bag position becomes two tensors: the bags zero-padded to ``(B, N_max, C, S, S)``
    (``N_max >= 1``) and a ``(B, N_max)`` bool mask, True where a real image is; every other
    position is collated by torch's ``default_collate``.

    Args:
        batch: items ``(x_1, ..., y)`` from :class:`ManifestDataset`.
        bag_positions: item positions that hold bags.

    Returns:
        The flat batch, e.g. ``(tem, tem_mask, om, im, y)`` for bags at position 0.
    """
    out: list[torch.Tensor] = []
    for position, values in enumerate(zip(*batch, strict=True)):
        if position not in bag_positions:
            out.append(default_collate(list(values)))
            continue
        lengths = [v.shape[0] for v in values]
        size = max([1, *lengths])
        padded = values[0].new_zeros((len(values), size, *values[0].shape[1:]))
        mask = torch.zeros(len(values), size, dtype=torch.bool)
        for i, (bag, n) in enumerate(zip(values, lengths, strict=True)):
            padded[i, :n] = bag
            mask[i, :n] = True
        out += [padded, mask]
    return tuple(out)


def collate_readable(
    batch: Sequence[Sequence[torch.Tensor]], *, bag_positions: Sequence[int] = ()
) -> Sequence[torch.Tensor]:
    """Collate (``default_collate``, or :func:`collate_bags` when there are bags), then drop
    the items of rows with no readable image (label ``-1``).

    A batch may come out empty (every tensor with first dimension 0); training and evaluation
    skip empty batches.
    """
    out = (
        collate_bags(batch, bag_positions=bag_positions)
        if bag_positions
        else default_collate(batch)
    )
    keep = out[-1] != DROPPED_LABEL
    if bool(keep.all()):
        return out
    return [tensor[keep] for tensor in out]


def _members(cell: str) -> list[str]:
    """The paths of a cell (one, several ``;``-separated, or none)."""
    return [p for p in cell.split(";") if p]


def _log_skip(row: int, column: str, path: str, err: Exception) -> None:
    logger.warning(
        "row %d, column %r: skipping unreadable file %s (%s: %s); "
        "run `fedfusion site check` to list every bad file",
        row,
        column,
        path,
        type(err).__name__,
        err,
    )


def _seed_worker(worker_id: int) -> None:
    """Give each worker its own augmentation stream (derived from the loader's seed)."""
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, ManifestDataset) and dataset._augment is not None:
        dataset._augment.set_random_state(seed=info.seed % 2**32)
