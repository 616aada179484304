"""Image reading and MONAI transform chains for one modality image.

Every chain takes a ``(C, H, W)`` float tensor (what :func:`load_image` returns) and gives a
plain ``torch.Tensor`` of shape ``(in_chans, image_size, image_size)``, float32, in [0, 1]:

1. channel fit: RGBA / grey+alpha drop the alpha channel; grey is repeated to ``in_chans``;
   RGB becomes grey (ITU-R 601 luma) when ``in_chans == 1``;
2. resize to ``(image_size, image_size)`` (bilinear, anti-aliased; the aspect ratio is not kept);
3. min-max intensity scaling to [0, 1] (a constant image becomes zeros);
4. train only: random affine (rotate, scale, translate), left-right flip, elastic deformation
   (``Rand2DElastic``), Gaussian noise, then clipping back to [0, 1].

Steps 1-3 are idempotent, so a chain may be applied to an image the eval chain has already
prepared (the dataset's decoded-image cache relies on this).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    Compose,
    LoadImage,
    Rand2DElastic,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    Resize,
    ScaleIntensity,
    ScaleIntensityRange,
    Transform,
)
from PIL import Image

from client.manifest import image_format

__all__ = ["load_image", "resize_mask", "train_transforms", "eval_transforms"]

logger = logging.getLogger(__name__)

_LUMA = (0.299, 0.587, 0.114)


def load_image(path: str | Path) -> torch.Tensor:
    """Read one image file as a float32 ``(C, H, W)`` tensor (values as stored).

    PNG/JPEG/TIFF/BMP go through MONAI's PIL reader with ``reverse_indexing=False`` so rows
    stay rows (MONAI's default returns ``(W, H)``); palette / 1-bit / CMYK images are converted
    to RGB or grey first. NumPy arrays may be ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` with
    ``C <= 4``. NIfTI / DICOM use MONAI's default readers (nibabel / pydicom / itk) and keep
    the reader's voxel order; a volume with one slice is squeezed, a thicker volume gives its
    middle slice along the last axis (with a warning).

    Args:
        path: image file.

    Returns:
        ``(C, H, W)`` float32 tensor.
    """
    path = Path(path)
    loader = _pil_loader() if image_format(path) == "pil" else _default_loader()
    image = loader(str(path))
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    return _to_chw(image.float(), path)


def resize_mask(mask: torch.Tensor, image_size: int, *, binary: bool = True) -> torch.Tensor:
    """A loaded label map ``(C, H, W)`` (first channel used) as int64 ``(1, S, S)``.

    Resized with nearest neighbours (labels are never blended). ``binary``: any value > 0 is
    foreground 1 (PNG masks often store 255); else values are rounded to class indices.

    Args:
        mask: what :func:`load_image` returns for the mask file.
        image_size: output side S.
        binary: two-class task. Default True.
    """
    _check_sizes(image_size, 1)
    resized = Resize(spatial_size=(image_size, image_size), mode="nearest")(mask[:1].float())
    values = resized.as_tensor() if isinstance(resized, MetaTensor) else torch.as_tensor(resized)
    labels = (values > 0) if binary else values.round().clamp(min=0)
    return labels.to(torch.int64).contiguous()


def eval_transforms(image_size: int, *, in_chans: int = 3) -> Compose:
    """The deterministic chain: channel fit, resize, scale to [0, 1].

    Args:
        image_size: output side S (square).
        in_chans: output channels. Default 3.

    Returns:
        A MONAI ``Compose``: ``(C, H, W)`` -> ``(in_chans, S, S)`` float32 tensor.
    """
    _check_sizes(image_size, in_chans)
    return Compose([*_prepare(image_size, in_chans), _ToTensor()])


def train_transforms(
    image_size: int,
    *,
    in_chans: int = 3,
    seed: int | None = None,
    rotate_degrees: float = 15.0,
    scale: float = 0.1,
    translate: float = 0.05,
    affine_prob: float = 0.5,
    flip_prob: float = 0.5,
    elastic_prob: float = 0.2,
    noise_prob: float = 0.2,
    noise_std: float = 0.02,
    prepared: bool = False,
) -> Compose:
    """The training chain: the eval chain plus random augmentation.

    Args:
        image_size: output side S (square).
        in_chans: output channels. Default 3.
        seed: seed of the chain's random state; ``None`` draws from NumPy's global state.
        rotate_degrees: max rotation either way. Default 15.
        scale: max relative zoom either way. Default 0.1.
        translate: max shift as a fraction of S. Default 0.05.
        affine_prob: chance of the affine step. Default 0.5.
        flip_prob: chance of a left-right flip. Default 0.5.
        elastic_prob: chance of elastic deformation. Default 0.2.
        noise_prob: chance of Gaussian noise. Default 0.2.
        noise_std: noise standard deviation (image scale [0, 1]). Default 0.02.
        prepared: the input already went through :func:`eval_transforms` (a decoded-image
            cache holds such images): leave out its steps. Default False.

    Returns:
        A MONAI ``Compose``: ``(C, H, W)`` -> ``(in_chans, S, S)`` float32 tensor in [0, 1].
    """
    _check_sizes(image_size, in_chans)
    problems = [
        f"{name} must be in [0, 1], got {value}"
        for name, value in (
            ("affine_prob", affine_prob),
            ("flip_prob", flip_prob),
            ("elastic_prob", elastic_prob),
            ("noise_prob", noise_prob),
        )
        if not 0 <= value <= 1
    ]
    problems += [
        f"{name} must be >= 0, got {value}"
        for name, value in (
            ("rotate_degrees", rotate_degrees),
            ("scale", scale),
            ("translate", translate),
            ("noise_std", noise_std),
        )
        if value < 0
    ]
    if problems:
        raise ValueError("bad train_transforms arguments: " + "; ".join(problems))
    shift = translate * image_size
    spacing = max(4, image_size // 6)
    chain = Compose(
        [
            *([] if prepared else _prepare(image_size, in_chans)),
            RandAffine(
                prob=affine_prob,
                rotate_range=(math.radians(rotate_degrees),),
                scale_range=(scale, scale),
                translate_range=(shift, shift),
                padding_mode="zeros",
            ),
            RandFlip(prob=flip_prob, spatial_axis=1),
            Rand2DElastic(
                spacing=(spacing, spacing),
                magnitude_range=(1.0, 2.0),
                prob=elastic_prob,
                padding_mode="zeros",
            ),
            RandGaussianNoise(prob=noise_prob, mean=0.0, std=noise_std),
            ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
            _ToTensor(),
        ]
    )
    if seed is not None:
        chain.set_random_state(seed=seed)
    return chain


def _check_sizes(image_size: int, in_chans: int) -> None:
    problems = []
    if not isinstance(image_size, int) or image_size < 1:
        problems.append(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        problems.append(f"in_chans must be a positive int, got {in_chans!r}")
    if problems:
        raise ValueError("; ".join(problems))


def _prepare(image_size: int, in_chans: int) -> list[Callable]:
    return [
        _FitChannels(in_chans),
        Resize(spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
        ScaleIntensity(minv=0.0, maxv=1.0),
    ]


class _FitChannels(Transform):
    """``(C, H, W)`` -> ``(in_chans, H, W)``: drop alpha, grey -> repeat, RGB -> grey."""

    def __init__(self, in_chans: int) -> None:
        self.in_chans = in_chans

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(img)
        if x.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {tuple(x.shape)}")
        if x.shape[0] == self.in_chans:
            return x
        if x.shape[0] in (2, 4):  # grey + alpha, RGBA
            x = x[:-1]
        channels = x.shape[0]
        if channels == self.in_chans:
            return x
        if channels == 1:
            return x.repeat(self.in_chans, 1, 1)
        if channels == 3 and self.in_chans == 1:
            weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
            return (x * weights).sum(dim=0, keepdim=True)
        raise ValueError(
            f"cannot fit an image with {img.shape[0]} channels to in_chans={self.in_chans} "
            "(supported: grey, grey+alpha, RGB, RGBA, or exactly in_chans channels)"
        )


class _ToTensor(Transform):
    """MetaTensor / array -> contiguous float32 ``torch.Tensor`` (no metadata)."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if isinstance(img, MetaTensor):
            img = img.as_tensor()
        return torch.as_tensor(img, dtype=torch.float32).contiguous()


def _pil_convert(image: Image.Image) -> Image.Image:
    """Palette / 1-bit / CMYK / YCbCr... -> RGB(A) or L; grey, RGB(A) and 16-bit stay."""
    if image.mode in ("L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    return image.convert("RGB")


@functools.cache
def _pil_loader() -> LoadImage:
    reader = PILReader(converter=_pil_convert, reverse_indexing=False)
    return LoadImage(reader=reader, image_only=True, ensure_channel_first=True)


@functools.cache
def _default_loader() -> LoadImage:
    return LoadImage(image_only=True, ensure_channel_first=True)


def _to_chw(image: torch.Tensor, path: Path) -> torch.Tensor:
    """Bring a channel-first load to ``(C, H, W)`` (see :func:`load_image`)."""
    if image.ndim == 3:
        return image
    if image.ndim == 4 and image.shape[0] == 1:
        first, _, last = image.shape[1:]
        if image_format(path) == "npy":
            if first <= 4 and first < min(image.shape[2:]):
                return image[0]  # (C, H, W)
            if last <= 4:
                return image[0].permute(2, 0, 1).contiguous()  # (H, W, C)
        if last == 1:
            return image[..., 0]
        _warn_once(
            "%s is a volume of shape %s; using its middle slice along the last axis "
            "(further volumes are not reported)",
            path,
            tuple(image.shape[1:]),
        )
        return image[..., last // 2]
    raise ValueError(f"{path}: cannot use an array of shape {tuple(image.shape)} as a 2D image")


_warned: set[str] = set()


def _warn_once(message: str, *args: object) -> None:
    level = logging.DEBUG if message in _warned else logging.WARNING
    _warned.add(message)
    logger.log(level, message, *args)
