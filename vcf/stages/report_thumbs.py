"""Report thumbnails: small webp/jpeg files made once from frame files, or decoded from the video."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vcf.errors import VcfError
from vcf.io.atomic import TMP_MARK, atomic_write_text, writing
from vcf.io.video import VideoError, decode_selected
from vcf.sampling import Sampling
from vcf.stages.report_data import Frame

THUMB_DIR = "thumbs"
# Written last in the thumbnail folder of a video decoded for the report: the frames it holds.
DECODED_RECORD = ".decoded.json"

# Format name: (file suffix, Pillow format, Pillow options). WebP method 2 encodes about twice as fast as
# the default 4 for 10% more bytes, on thumbnails 64 pixels high.
THUMB_FORMATS = {
    "webp": (".webp", "WEBP", {"method": 2}),
    "jpeg": (".jpg", "JPEG", {"optimize": True}),
}
# Fewer strips than this are made in this process: starting worker processes would cost more.
PROCESS_POOL_MIN_JOBS = 64


@dataclass(frozen=True)
class ThumbSettings:
    """How thumbnails look: height in pixels (never enlarged), format and quality."""

    height: int = 64
    format: str = "webp"
    quality: int = 50

    def __post_init__(self) -> None:
        if self.format not in THUMB_FORMATS:
            raise VcfError(f"unknown thumbnail format {self.format!r}; choose one of {', '.join(THUMB_FORMATS)}")
        if self.height < 8:
            raise VcfError("thumbnail height must be at least 8 pixels")

    @property
    def suffix(self) -> str:
        return THUMB_FORMATS[self.format][0]


@dataclass(frozen=True)
class Thumb:
    """One thumbnail of a film strip.

    Attributes:
        index: Frame number in the video.
        frame_id: Id of the frame.
        file: The thumbnail, relative to the report directory.
        source: The frame file, or the video file for decoded frames.
        decoded: True when the frame was decoded from the video (there is no frame file).
    """

    index: int
    frame_id: str
    file: str
    source: Path
    decoded: bool = False


@dataclass(frozen=True)
class StripJob:
    """The thumbnails one film strip needs: from frame files, or else decoded from the video file."""

    unit: str
    frames: tuple[Frame, ...]
    video: Path | None
    count: int


@dataclass
class StripResult:
    """The thumbnails of one strip and how many were made now (not reused)."""

    unit: str
    thumbs: list[Thumb]
    made: int = 0
    error: str | None = None


def pick_evenly(items: Sequence[Frame], count: int) -> list[Frame]:
    """At most ``count`` items spread evenly from first to last."""
    if len(items) <= count:
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in picks]


def thumb_file(unit: str, frame_id: str, settings: ThumbSettings) -> str:
    """The relative path of a thumbnail inside the report directory."""
    return f"{THUMB_DIR}/{unit}/{frame_id}{settings.suffix}"


def _fresh(target: Path, source: Path) -> bool:
    """True when ``target`` exists, is not empty and is not older than ``source``."""
    try:
        stat = target.stat()
        return stat.st_size > 0 and stat.st_mtime >= source.stat().st_mtime
    except OSError:
        return False


def _shrink(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h <= height:
        return image
    return cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def _write(image: np.ndarray, target: Path, settings: ThumbSettings) -> None:
    _, pillow_format, options = THUMB_FORMATS[settings.format]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[:, :, ::-1])).save(
        buffer, pillow_format, quality=settings.quality, **options
    )
    data = buffer.getbuffer()
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    # Temporary name, then rename: a thumbnail is whole or absent. No fsync: thumbnails are a cache that a
    # rerun checks (non-empty, newer than the source) and redoes, and an fsync per small file would dominate.
    tmp = target.with_name(f".{target.name}{TMP_MARK}-{os.getpid()}")
    with writing(target):
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _reduction(source_height: int, height: int) -> int:
    """The JPEG decoding reduction (1, 2, 4 or 8) that still gives at least ``height`` rows."""
    factor = 1
    while factor < 8 and source_height // (factor * 2) >= height:
        factor *= 2
    return factor


REDUCED_READ = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def strip_from_files(job: StripJob, out_dir: Path, settings: ThumbSettings) -> StripResult:
    """Thumbnails of frame files; a thumbnail newer than its frame is kept as it is."""
    result = StripResult(job.unit, [])
    reduction = 1  # the frames of a video share a size: the first decoded tells how much later ones can skip
    for frame in pick_evenly(job.frames, job.count):
        relative = thumb_file(job.unit, frame.frame_id, settings)
        target = out_dir / relative
        if not _fresh(target, frame.path):
            image = cv2.imread(str(frame.path), REDUCED_READ[reduction])
            if image is None:
                result.error = f"cannot read {frame.path}"
                continue
            if reduction == 1:
                reduction = _reduction(image.shape[0], settings.height)
            _write(_shrink(image, settings.height), target, settings)
            result.made += 1
        result.thumbs.append(Thumb(frame.index, frame.frame_id, relative, frame.path))
    return result


def strip_from_video(job: StripJob, out_dir: Path, settings: ThumbSettings) -> StripResult:
    """Thumbnails of ``job.count`` frames spread over the video, decoded once and recorded."""
    assert job.video is not None
    result = StripResult(job.unit, [])
    record = out_dir / THUMB_DIR / job.unit / DECODED_RECORD
    wanted = {"count": job.count, "height": settings.height, "format": settings.format}
    if _fresh(record, job.video):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(record.read_text(encoding="utf-8"))
            if saved["settings"] == wanted:
                result.thumbs = [Thumb(int(t[0]), t[1], t[2], job.video, decoded=True) for t in saved["thumbs"]]
                return result
    try:
        _, frames = decode_selected(job.video, Sampling(num_frames=job.count), threads=1)
        for index, image in frames:
            frame_id = f"{job.unit}_{index}"
            relative = thumb_file(job.unit, frame_id, settings)
            _write(_shrink(image, settings.height), out_dir / relative, settings)
            result.made += 1
            result.thumbs.append(Thumb(index, frame_id, relative, job.video, decoded=True))
    except VideoError as exc:
        result.error = str(exc)
        return result
    rows = [[t.index, t.frame_id, t.file] for t in result.thumbs]
    atomic_write_text(record, json.dumps({"settings": wanted, "thumbs": rows}))
    return result


def make_strip(job: StripJob, out_dir: Path, settings: ThumbSettings) -> StripResult:
    """Makes (or reuses) the thumbnails of one film strip: from its frame files, else from its video."""
    if job.frames:
        return strip_from_files(job, out_dir, settings)
    if job.video is not None:
        return strip_from_video(job, out_dir, settings)
    return StripResult(job.unit, [], error="no frames and no video file")


def make_strips(
    jobs: Sequence[StripJob],
    out_dir: Path,
    settings: ThumbSettings,
    workers: int = 0,
    done: Callable[[StripResult], None] | None = None,
) -> dict[str, StripResult]:
    """Makes (or reuses) the thumbnails of every strip, several strips at a time.

    Args:
        jobs: One job per film strip.
        out_dir: The report directory.
        settings: Thumbnail size and format.
        workers: Worker processes (encoding holds the GIL, so threads would not help); 0 means one per core.
        done: Called with each finished strip (progress).

    Returns:
        The strips by unit id. A strip with neither frame files nor a video has no thumbnails.
    """
    make = functools.partial(make_strip, out_dir=out_dir, settings=settings)
    workers = workers or os.cpu_count() or 1
    results: dict[str, StripResult] = {}
    if workers == 1 or len(jobs) < PROCESS_POOL_MIN_JOBS:
        strips: Iterable[StripResult] = map(make, jobs)
        pool = None
    else:
        # spawn: a fresh interpreter per worker, safe whatever threads this process runs.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        strips = pool.map(make, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))
    try:
        for strip in strips:
            results[strip.unit] = strip
            if done is not None:
                done(strip)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results
