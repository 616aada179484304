"""Torch dataset and loaders over a checked manifest.

Items are FLAT tuples ``(x_1, ..., x_M, y)``: one float32 ``(in_chans, S, S)`` image per task
modality in task order, then the label as an int64 scalar tensor. A task with clinical
features adds their float32 ``(F,)`` vector after the images: ``(x_1, ..., x_M, f, y)``
(``(f, y)`` for a clinical-only task); see :mod:`client.features` for how it is made. Flat
tuples of tensors are what Opacus' ``DPDataLoader`` collates without help.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from client.features import FeatureTransform, site_feature_transform
from client.manifest import Manifest
from client.sampler import ClassBalancedSampler
from client.transforms import eval_transforms, load_image, train_transforms

__all__ = ["ManifestDataset", "collate_bags", "make_loader"]

logger = logging.getLogger(__name__)


class ManifestDataset(Dataset):
    """One split of a manifest as ``(x_1, ..., x_M, y)`` items.

    A missing modality (empty cell) gives a zero image; how many rows miss each modality is
    logged once, when the dataset is built. A bag modality (``task.bags``) gives a
    ``(N_i, in_chans, S, S)`` stack of its images (``(0, in_chans, S, S)`` when missing); a
    bag cell in any other modality raises ``ValueError`` naming its row and column.

    Args:
        manifest: a checked manifest (see :func:`client.manifest.load_manifest`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        train: apply the random training augmentation (else the deterministic eval chain).
        cache_decoded: keep each decoded, resized image in memory (``M * N * in_chans * S * S``
            floats; each DataLoader worker holds its own copy). Default False.
        seed: seed of the augmentation; ``None`` draws from NumPy's global state. Default None.
        feature_transform: preprocessing of the clinical features; default the one fitted on
            this manifest's training rows (:func:`client.features.site_feature_transform`).
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
    ) -> None:
        task = manifest.task
        rows = manifest.rows(split)
        self.split = split
        self.train = train
        self.modalities: tuple[str, ...] = tuple(task.modalities)
        self.bag_positions: tuple[int, ...] = tuple(
            j for j, m in enumerate(self.modalities) if m in task.bags
        )
        self.image_size = task.image_size
        self.in_chans = task.in_chans
        self._rows = rows["row"].to_numpy(dtype=np.int64)
        self._labels = rows["label_index"].to_numpy(dtype=np.int64)
        self._paths: list[tuple[str, ...]] = list(
            rows[list(self.modalities)].itertuples(index=False, name=None)
        )
        self._features: torch.Tensor | None = None
        if task.features:
            transform = feature_transform or site_feature_transform(manifest)
            self._features = torch.from_numpy(transform.transform(rows))  # (N, F) float32
        self._check_no_bags()
        self._log_missing()
        images = bool(self.modalities)  # clinical-only tasks have no image to transform
        self._prepare = eval_transforms(self.image_size, in_chans=self.in_chans) if images else None
        self._augment = (
            train_transforms(self.image_size, in_chans=self.in_chans, seed=seed)
            if train and images
            else None
        )
        self._cache: dict[tuple[int, int, int], torch.Tensor] | None = {} if cache_decoded else None

    @property
    def labels(self) -> np.ndarray:
        """Label index per item, shape ``(N,)``, int64."""
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        images = [self._image(index, j) for j in range(len(self.modalities))]
        features = () if self._features is None else (self._features[index],)
        return (*images, *features, torch.tensor(self._labels[index], dtype=torch.int64))

    def _image(self, index: int, modality: int) -> torch.Tensor:
        cell = self._paths[index][modality]
        if modality in self.bag_positions:
            paths = [p for p in cell.split(";") if p]
            if not paths:
                return torch.zeros(0, self.in_chans, self.image_size, self.image_size)
            return torch.stack([self._one(index, modality, k, p) for k, p in enumerate(paths)])
        if not cell:
            return torch.zeros(self.in_chans, self.image_size, self.image_size)
        return self._one(index, modality, 0, cell)

    def _one(self, index: int, modality: int, member: int, path: str) -> torch.Tensor:
        if self._cache is None:
            image = self._load(index, modality, path)
            # never `self._augment or ...`: bool(Compose) calls len() -> flatten(), which
            # builds a new Compose that re-seeds the shared random transforms.
            chain = self._augment if self._augment is not None else self._prepare
            return chain(image)
        key = (index, modality, member)
        if key not in self._cache:
            self._cache[key] = self._prepare(self._load(index, modality, path))
        cached = self._cache[key]
        return self._augment(cached) if self._augment is not None else cached.clone()

    def _load(self, index: int, modality: int, path: str) -> torch.Tensor:
        try:
            return load_image(path)
        except Exception as err:
            raise ValueError(
                f"row {self._rows[index]}, column {self.modalities[modality]!r}: "
                f"cannot load {path}: {err}"
            ) from err

    def _check_no_bags(self) -> None:
        bags = [
            f"row {row}, column {m!r}"
            for row, paths in zip(self._rows, self._paths, strict=True)
            for j, (m, path) in enumerate(zip(self.modalities, paths, strict=True))
            if j not in self.bag_positions and (";" in path or (path and os.path.isdir(path)))
        ]
        if bags:
            shown = "; ".join(bags[:5]) + (f"; ... ({len(bags)} in all)" if len(bags) > 5 else "")
            raise ValueError(
                "these cells hold a bag (several paths or a folder) in a modality that takes "
                f"one image per row (declare bag modalities in the task's `bags`): {shown}"
            )

    def _log_missing(self) -> None:
        for j, m in enumerate(self.modalities):
            missing = sum(1 for paths in self._paths if not paths[j])
            if missing:
                logger.info(
                    "split %s: modality %s is missing in %d of %d rows; they get a zero image",
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
    )
    if train and len(dataset) == 0:
        raise ValueError(f"the {split} split of {manifest.path} has no rows to train on")
    sampler = ClassBalancedSampler(dataset.labels, seed=seed) if train and balanced else None
    collate = (
        functools.partial(collate_bags, bag_positions=dataset.bag_positions)
        if dataset.bag_positions
        else None  # torch's default_collate: tasks without bags keep the plain path
    )
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


def _seed_worker(worker_id: int) -> None:
    """Give each worker its own augmentation stream (derived from the loader's seed)."""
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, ManifestDataset) and dataset._augment is not None:
        dataset._augment.set_random_state(seed=info.seed % 2**32)
