"""Video decoding with OpenCV: metadata probing and frame-by-frame selected decoding."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vcf.sampling import Sampling

# A decoded count this far below the container's frame count means the file is truncated or corrupt;
# container counts are estimates (webm derives them from the duration), hence the slack.
TRUNCATION_TOLERANCE = 0.9


class VideoError(Exception):
    """A video that cannot be decoded; the message is the reason shown to the user."""


@dataclass(frozen=True)
class VideoMeta:
    """What the container says about a video.

    Attributes:
        fps: Container frame rate (float).
        frame_count: Container frame count (an estimate for some formats; 0 when unknown).
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    fps: float
    frame_count: int
    width: int
    height: int


def _capture(path: Path, threads: int) -> cv2.VideoCapture:
    if threads > 0:
        capture = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, threads])
        if capture.isOpened():
            return capture
    return cv2.VideoCapture(str(path))


def open_video(path: Path, threads: int = 0) -> tuple[cv2.VideoCapture, VideoMeta]:
    """Opens a video for decoding.

    Args:
        path: The video file.
        threads: Decoder threads; 0 lets FFmpeg choose (about one per core). Decoding several videos
            at once, one thread each is cheaper: FFmpeg's frame threads cost about half as much CPU again
            for the same frames (the decoded frames are the same).

    Raises:
        VideoError: The file is empty, cannot be opened, or has no usable frame rate.
    """
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise VideoError(f"cannot read file: {exc.strerror}") from exc
    if size == 0:
        raise VideoError("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError("cannot read file: permission denied")
    capture = _capture(path, threads)
    if not capture.isOpened():
        raise VideoError("cannot open: not a video, or a corrupt or unsupported file")
    fps = capture.get(cv2.CAP_PROP_FPS)
    meta = VideoMeta(
        fps=fps if math.isfinite(fps) else 0.0,
        frame_count=max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
    )
    if meta.fps <= 0 or int(meta.fps) < 1:
        capture.release()
        raise VideoError(f"frame rate is 0 or unknown ({fps!r}); cannot select frames by time")
    return capture, meta


@dataclass
class DecodeStats:
    """Counts of one decoding pass, filled while the frames are consumed."""

    decoded: int = 0
    stopped_early: bool = False


def decode_selected(
    path: Path, sampling: Sampling, stats: DecodeStats | None = None, threads: int = 0
) -> tuple[VideoMeta, Iterator[tuple[int, np.ndarray]]]:
    """Decodes a video frame by frame and yields only the selected frames.

    Skipped frames are grabbed but never retrieved, so they pay no colour conversion.

    Args:
        path: The video file.
        sampling: The frame selection rule.
        stats: Filled with the number of decoded frames as the iterator is consumed.
        threads: Decoder threads (see :func:`open_video`).

    Returns:
        The container metadata, and an iterator of ``(frame_index, bgr_uint8_frame)``.

    Raises:
        VideoError: When opening fails (immediately), or from the iterator when no frame decodes
            or the file ends well before its announced length.
    """
    capture, meta = open_video(path, threads)
    stats = stats if stats is not None else DecodeStats()
    frame_count = meta.frame_count
    if sampling.needs_frame_count and frame_count <= 0:
        frame_count = count_frames(path, threads)
    selector = sampling.selector(meta.fps, frame_count)

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        try:
            last = selector.last_needed
            index = 0
            while True:
                if last is not None and index > last:
                    stats.stopped_early = True
                    break
                if not capture.grab():
                    break
                if selector.keep(index):
                    ok, frame = capture.retrieve()
                    if not ok or frame is None:
                        raise VideoError(f"frame {index} cannot be decoded (corrupt stream)")
                    yield index, frame
                index += 1
                stats.decoded = index
        finally:
            capture.release()
        if stats.decoded == 0:
            raise VideoError("no frame could be decoded (zero-frame, corrupt or truncated video)")
        if not stats.stopped_early and meta.frame_count > 0 and stats.decoded < TRUNCATION_TOLERANCE * meta.frame_count:
            raise VideoError(f"truncated or corrupt: decoded {stats.decoded} of {meta.frame_count} frames")

    return meta, frames()


def count_frames(path: Path, threads: int = 0) -> int:
    """Counts the decodable frames of a video by grabbing them all."""
    capture = _capture(path, threads)
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


def resize_shorter_side(frame: np.ndarray, size: int) -> np.ndarray:
    """Resizes so the shorter side is ``size`` (aspect kept); 0 keeps the frame as it is."""
    if size <= 0:
        return frame
    height, width = frame.shape[:2]
    short = min(height, width)
    if short == size:
        return frame
    scale = size / short
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
