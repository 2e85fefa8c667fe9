"""Image preprocessing: decode, resize, crop (or ten-crop) to uint8 tensors; normalisation happens on the device."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from vcf.errors import VcfError
from vcf.io.torchvision_import import import_torchvision

tvf = import_torchvision("torchvision.transforms.v2.functional")

OVERSAMPLE_RESIZE = 256
OVERSAMPLE_CROP = 224
_INTERPOLATION = {
    "bilinear": tvf.InterpolationMode.BILINEAR,
    "bicubic": tvf.InterpolationMode.BICUBIC,
    "nearest": tvf.InterpolationMode.NEAREST,
}

_PIL_FILTERS = {
    tvf.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    tvf.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    tvf.InterpolationMode.NEAREST: Image.Resampling.NEAREST,
}

# How images are resized. ``pil``: as the reference pipelines do (PIL's resize of a PIL image; a model whose
# reference resizes tensors without antialiasing, torchvision's video models, gets exactly that). ``default``:
# the same, except that bilinear resizing uses torchvision's uint8 antialiased kernel, several times faster
# and one level away from PIL's at a few pixels in ten thousand.
RESIZE_BACKENDS = ("default", "pil")


class ImageError(Exception):
    """An image that cannot be read or decoded; the message is the reason shown to the user."""


# JPEG decoders can scale by 1/2, 1/4 or 1/8 inside the inverse DCT, skipping most of the decoding work.
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def _jpeg_reduction(data: np.ndarray, min_side: int) -> int:
    """The OpenCV flag decoding a JPEG at the smallest DCT scale whose shorter side is still >= ``min_side``."""
    if min_side <= 0 or data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return cv2.IMREAD_COLOR
    try:
        with Image.open(io.BytesIO(data)) as header:  # parses the header only
            width, height = header.size
    except Exception:  # let the decoder report whatever is wrong with the file
        return cv2.IMREAD_COLOR
    for factor, flag in _REDUCED_FLAGS:
        if -(-min(width, height) // factor) >= min_side:
            return flag
    return cv2.IMREAD_COLOR


def read_bytes(path: str | os.PathLike[str]) -> np.ndarray:
    """The bytes of an image file as a 1-D uint8 array.

    Raises:
        ImageError: Missing, unreadable or empty file.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError("image file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read image: {exc.strerror}") from None
    if data.size == 0:
        raise ImageError("empty image file (0 bytes)")
    return data


def is_jpeg(data: np.ndarray) -> bool:
    """True when ``data`` starts with the JPEG start-of-image marker."""
    return data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8


def read_rgb(path: str | os.PathLike[str], min_side: int = 0) -> np.ndarray:
    """Reads an image file as an RGB uint8 array (H, W, 3).

    Args:
        path: The image file.
        min_side: When > 0, a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (reduced-size DCT
            decoding, several times faster) as long as its shorter side stays >= ``min_side``. The
            pixels then differ slightly from a full decode followed by a resize.

    Raises:
        ImageError: Missing, unreadable, empty or undecodable file.
    """
    data = read_bytes(path)
    image = cv2.imdecode(data, _jpeg_reduction(data, min_side))
    if image is None:
        raise ImageError("cannot decode image (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FrameTransform:
    """Turns an RGB uint8 frame into the model's input crop(s), still uint8 (normalised later, on the device).

    Single view: resize the shorter side to ``resize`` (antialiased, like PIL), centre crop ``crop``.
    Oversampling: resize the shorter side to 256 and take torchvision's TenCrop(224) order: the four
    corners and the centre, then the same five of the horizontally flipped image.

    Args:
        resize: Target of the shorter side, or the exact (height, width) to resize to (aspect not kept).
        crop: Side of the square crop.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        oversample: Produce the ten crops instead of one.
        fast_decode: Let :meth:`read` decode JPEGs at a reduced size (see :func:`read_rgb`) that still
            covers ``resize``: faster for frames much larger than the model input, slightly different pixels.
        decode_device: Leave JPEGs encoded in :meth:`read` (other images are decoded as usual) for
            :meth:`decode_batch` to decode, resize and crop on this device: nvJPEG, batched, on CUDA;
            libjpeg-turbo on the CPU. Slightly different pixels (another decoder, float resizing).
        antialias: False for models whose reference transform resizes tensors without antialiasing.
        resize_backend: ``default`` or ``pil`` (see ``RESIZE_BACKENDS``).

    Raises:
        VcfError: An unknown backend, or ``pil`` with a decoder other than the full one.
    """

    def __init__(
        self,
        resize: int | tuple[int, int],
        crop: int,
        interpolation: str = "bilinear",
        oversample: bool = False,
        fast_decode: bool = False,
        decode_device: str | None = None,
        antialias: bool = True,
        resize_backend: str = "default",
    ) -> None:
        if resize_backend not in RESIZE_BACKENDS:
            raise VcfError(f"--resize-backend must be one of {', '.join(RESIZE_BACKENDS)}, not {resize_backend!r}")
        if resize_backend == "pil" and (fast_decode or decode_device is not None):
            raise VcfError("--resize-backend pil reproduces the reference pipeline: it needs the full JPEG decoder")
        self.antialias = antialias
        self.resize_backend = resize_backend
        self.resize = OVERSAMPLE_RESIZE if oversample else resize
        self.crop = OVERSAMPLE_CROP if oversample else crop
        self.interpolation = _INTERPOLATION[interpolation]
        self.oversample = oversample
        self.fast_decode = fast_decode
        self.decode_device = decode_device

    @property
    def views(self) -> int:
        """Crops per image."""
        return 10 if self.oversample else 1

    def describe(self) -> dict[str, Any]:
        """The settings, for manifests."""
        return {
            "resize_shorter_side": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation.value,
            "antialias": self.antialias,
            "ten_crop": self.oversample,
            "decoder": self._decoder_name(),
            "resize_backend": self.resize_backend,
        }

    def _decoder_name(self) -> str:
        if self.decode_device is not None:
            return "torchvision-nvjpeg" if torch.device(self.decode_device).type == "cuda" else "torchvision-libjpeg"
        return "opencv-reduced-dct" if self.fast_decode else "opencv"

    def read(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Reads an image for this transform: a full decode, or a reduced one with ``fast_decode``.

        Raises:
            ImageError: See :func:`read_rgb`.
        """
        if self.decode_device is not None:
            data = read_bytes(path)
            return data if is_jpeg(data) else read_rgb(path)
        if not self.fast_decode:
            return read_rgb(path)
        return read_rgb(path, self.resize if isinstance(self.resize, int) else min(self.resize))

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB to (views, 3, crop, crop) uint8; an encoded JPEG (1-D) passes through unchanged."""
        if rgb.ndim == 1:
            return torch.from_numpy(rgb)
        bilinear = self.interpolation == tvf.InterpolationMode.BILINEAR
        if not self.antialias:
            image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            image = resize_without_antialias(image, [self.resize], self.interpolation)
        elif bilinear and self.resize_backend != "pil":
            # torchvision's uint8 antialiased bilinear kernel follows PIL's and is several times faster.
            image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            image = tvf.resize(image, self._size, interpolation=self.interpolation, antialias=True)
        else:
            # PIL, which the published models were evaluated with (torchvision's bicubic kernel rounds otherwise).
            image = torch.from_numpy(np.array(self._pil_resize(rgb))).permute(2, 0, 1)
        return self._crops(image)

    @property
    def _size(self) -> list[int]:
        """torchvision's size argument: ``[shorter side]``, or ``[height, width]`` for an exact (squashing) resize."""
        return [self.resize] if isinstance(self.resize, int) else list(self.resize)

    def _crops(self, image: torch.Tensor) -> torch.Tensor:
        if not self.oversample:
            return tvf.center_crop(image, [self.crop, self.crop]).unsqueeze(0).contiguous()
        crops = tvf.ten_crop(image, [self.crop, self.crop])
        return torch.stack(crops).contiguous()

    def decode_batch(self, items: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, list[tuple[int, str]]]:
        """Decodes, resizes and crops a batch on ``decode_device``.

        Args:
            items: Per image, its encoded JPEG (1-D uint8) or its crops already made (4-D, see ``__call__``).

        Returns:
            ``(crops of the good images in order, (views * good, 3, crop, crop) uint8 on the device, or None;
            (position in items, reason) of the JPEGs that could not be decoded)``.
        """
        device = torch.device(self.decode_device or "cpu")
        encoded = [n for n, item in enumerate(items) if item.dim() == 1]
        decoded: dict[int, torch.Tensor] = {}
        failed: list[tuple[int, str]] = []
        if encoded:
            decoded, failed = _decode_jpegs({n: items[n] for n in encoded}, device)
        crops = []
        for n, item in enumerate(items):
            if item.dim() == 1:
                if n in decoded:
                    image = tvf.resize(decoded[n], self._size, interpolation=self.interpolation, antialias=True)
                    crops.append(self._crops(image))
            else:
                crops.append(item.to(device, non_blocking=True))
        return (torch.cat(crops) if crops else None), failed

    def _pil_resize(self, rgb: np.ndarray) -> Image.Image:
        if isinstance(self.resize, int):
            height, width = _shorter_side_size(rgb.shape[0], rgb.shape[1], self.resize)
        else:
            height, width = self.resize
        return Image.fromarray(rgb).resize((width, height), _PIL_FILTERS[self.interpolation])


def resize_without_antialias(
    image: torch.Tensor, size: Sequence[int], interpolation: tvf.InterpolationMode | str = "bilinear"
) -> torch.Tensor:
    """Resizes a (3, H, W) uint8 tensor as torchvision's video transforms do (``VideoClassification``).

    Their ``transforms.functional.resize`` interpolates in float and rounds; the uint8 kernel of
    ``transforms.v2`` rounds otherwise (one level apart at about a tenth of the values).
    """
    from torchvision.transforms import functional as reference_functional

    mode = tvf.InterpolationMode(interpolation)
    return reference_functional.resize(image, list(size), interpolation=mode, antialias=False)


def _decode_jpegs(
    encoded: dict[int, torch.Tensor], device: torch.device
) -> tuple[dict[int, torch.Tensor], list[tuple[int, str]]]:
    """Decodes JPEGs to RGB (3, H, W) uint8 on ``device``; returns them by key, and (key, reason) of bad ones."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    decoded: dict[int, torch.Tensor] = {}
    failed: list[tuple[int, str]] = []
    with warnings.catch_warnings():  # torchvision 0.29 warns on every call that TorchCodec will take over
        warnings.simplefilter("ignore", DeprecationWarning)
        try:  # one call decodes the whole batch (nvJPEG's batched decoder on CUDA)
            images = decode_jpeg(list(encoded.values()), mode=ImageReadMode.RGB, device=device)
            return dict(zip(encoded, images, strict=True)), failed
        except RuntimeError:  # one bad file fails the call: decode one by one to find it
            pass
        for key, data in encoded.items():
            try:
                decoded[key] = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as exc:
                failed.append((key, f"cannot decode image (corrupt JPEG): {' '.join(str(exc).split())[:80]}"))
    return decoded, failed


def _shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size``, rounded as torchvision does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], value_scale: float = 1.0
) -> torch.Tensor:
    """uint8 (N, 3, H, W) or (N, 3, T, H, W) to float32, ``(x / 255 * value_scale - mean) / std``.

    ``mean`` and ``std`` are in the model's value scale (``value_scale`` 255 for models trained on
    0-255 inputs, whose mean is then given in 0-255 units too).
    """
    shape = (1, 3) + (1,) * (batch.dim() - 2)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=batch.device).view(shape)
    scale = value_scale / 255.0
    # In place on the one float copy (same operations, same values); it keeps the input's memory format.
    return batch.float().mul_(scale).sub_(mean_t).div_(std_t)
