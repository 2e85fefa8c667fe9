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
from torchvision.transforms.v2 import functional as tvf

OVERSAMPLE_RESIZE = 256
OVERSAMPLE_CROP = 224
_INTERPOLATION = {
    "bilinear": tvf.InterpolationMode.BILINEAR,
    "bicubic": tvf.InterpolationMode.BICUBIC,
    "nearest": tvf.InterpolationMode.NEAREST,
}

_PIL_FILTERS = {
    tvf.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    tvf.InterpolationMode.NEAREST: Image.Resampling.NEAREST,
}


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
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError("image file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read image: {exc.strerror}") from None
    if data.size == 0:
        raise ImageError("empty image file (0 bytes)")
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
        resize: Target of the shorter side.
        crop: Side of the square crop.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        oversample: Produce the ten crops instead of one.
        fast_decode: Let :meth:`read` decode JPEGs at a reduced size (see :func:`read_rgb`) that still
            covers ``resize``: faster for frames much larger than the model input, slightly different pixels.
    """

    def __init__(
        self,
        resize: int,
        crop: int,
        interpolation: str = "bilinear",
        oversample: bool = False,
        fast_decode: bool = False,
    ) -> None:
        self.resize = OVERSAMPLE_RESIZE if oversample else resize
        self.crop = OVERSAMPLE_CROP if oversample else crop
        self.interpolation = _INTERPOLATION[interpolation]
        self.oversample = oversample
        self.fast_decode = fast_decode

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
            "antialias": True,
            "ten_crop": self.oversample,
            "decoder": "opencv-reduced-dct" if self.fast_decode else "opencv",
        }

    def read(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Reads an image for this transform: a full decode, or a reduced one with ``fast_decode``.

        Raises:
            ImageError: See :func:`read_rgb`.
        """
        if not self.fast_decode:
            return read_rgb(path)
        return read_rgb(path, self.resize if isinstance(self.resize, int) else min(self.resize))

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB to (views, 3, crop, crop) uint8."""
        if self.interpolation == tvf.InterpolationMode.BILINEAR:
            # torchvision's uint8 antialiased bilinear kernel follows PIL's and is several times faster.
            image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            image = tvf.resize(image, [self.resize], interpolation=self.interpolation, antialias=True)
        else:
            # Its bicubic kernel rounds differently from PIL's, which the published models were evaluated with.
            image = torch.from_numpy(np.array(self._pil_resize(rgb))).permute(2, 0, 1)
        if not self.oversample:
            return tvf.center_crop(image, [self.crop, self.crop]).unsqueeze(0).contiguous()
        crops = tvf.ten_crop(image, [self.crop, self.crop])
        return torch.stack(crops).contiguous()

    def _pil_resize(self, rgb: np.ndarray) -> Image.Image:
        height, width = _shorter_side_size(rgb.shape[0], rgb.shape[1], self.resize)
        return Image.fromarray(rgb).resize((width, height), _PIL_FILTERS[self.interpolation])


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
