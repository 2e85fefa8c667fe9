"""Pooling: frame-level features to one vector per video (mean or max over its frames)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcf.errors import FeatureFileError, VcfError
from vcf.io.atomic import OutputLock, clean_stale_temps
from vcf.io.bigfile import DTYPE, BigFile, BigFileWriter, chunk_rows, open_feature, reusable_output
from vcf.io.collection import read_id_list, resolve_collection
from vcf.progress import ProgressCallback, Reporter

METHODS = ("mean", "max")
FRAME_ID = re.compile(r"^(.+)_([0-9]+)$")

# Pooled rows are buffered and written this many videos at a time.
WRITE_BATCH = 1024


@dataclass(frozen=True)
class PoolResult:
    """What :func:`pool` did.

    Attributes:
        output: The video-level BigFile directory, ``FeatureData/<method>_<feature>``.
        feature: Its feature name.
        videos: Rows (videos) in the output.
        frames: Frame rows that were pooled.
        dim: Values per row.
        skipped: True when the output was already up to date and nothing was computed.
        missing_videos: Videos listed in ``VideoSets/<collection>.txt`` without any frame feature (left out).
        unlisted_videos: Videos with frames but absent from ``VideoSets`` (written after the listed ones).
    """

    output: Path
    feature: str
    videos: int
    frames: int
    dim: int
    skipped: bool = False
    missing_videos: int = 0
    unlisted_videos: int = 0


class RowReader:
    """Reads rows of a BigFile's feature.bin with plain file reads, into new arrays.

    Every page of a memory map that was touched counts in the process's resident memory for as long as
    the map lives, so going through a whole feature.bin via :meth:`BigFile.matrix` grows RSS to the
    file's size; reads keep memory to the blocks in use, whatever the file's size.
    """

    def __init__(self, bigfile: BigFile) -> None:
        self.dim = bigfile.ndims
        self._row_bytes = bigfile.ndims * DTYPE.itemsize
        self._file = open(bigfile.binary_file, "rb", buffering=0)  # noqa: SIM115  (closed by close())
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start`` to ``stop`` (excluded) as a new (stop - start, D) float32 array."""
        out = np.empty((stop - start, self.dim), dtype=DTYPE)
        self._read_into(out, start)
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows, in the given order, as a new (len(rows), D) float32 array.

        Runs of consecutive row numbers are read at once; scattered rows within a small span are read
        as that span and picked from it.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=DTYPE)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        if len(breaks) == 0:
            return self.block(int(rows[0]), int(rows[-1]) + 1)
        low, high = int(rows.min()), int(rows.max()) + 1
        if len(breaks) > 8 and high - low <= 2 * len(rows):
            return self.block(low, high)[rows - low]
        out = np.empty((len(rows), self.dim), dtype=DTYPE)
        starts = [0, *breaks.tolist()]
        ends = [*breaks.tolist(), len(rows)]
        for begin, end in zip(starts, ends, strict=True):
            self._read_into(out[begin:end], int(rows[begin]))
        return out

    def _read_into(self, out: np.ndarray, start_row: int) -> None:
        view = memoryview(out).cast("B")
        self._file.seek(start_row * self._row_bytes, io.SEEK_SET)
        done = 0
        while done < len(view):
            count = self._file.readinto(view[done:])
            if not count:
                raise FeatureFileError(f"{self._file.name}: ends before row {start_row + len(out)}")
            done += count


def split_frame_id(frame_id: str) -> tuple[str, int] | None:
    """``(video_id, frame_index)`` of a frame id ``<video>_<int>``, or None when it is not one."""
    match = FRAME_ID.match(frame_id)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def group_frames(bigfile: BigFile) -> dict[str, np.ndarray]:
    """Row numbers of each video's frames, ordered by frame index; videos in order of first appearance.

    Raises:
        FeatureFileError: An id is not a frame id ``<video>_<int>``.
    """
    groups: dict[str, list[tuple[int, int]]] = {}
    for row, frame_id in enumerate(bigfile.names):
        parsed = split_frame_id(frame_id)
        if parsed is None:
            raise FeatureFileError(
                f"{bigfile.datadir}: id {frame_id!r} is not a frame id <video>_<number>; is it a video-level feature?"
            )
        groups.setdefault(parsed[0], []).append((parsed[1], row))
    return {video: np.asarray([row for _, row in sorted(frames)], dtype=np.int64) for video, frames in groups.items()}


def pool_rows(block: np.ndarray, method: str) -> np.ndarray:
    """Pools the (T, D) frame rows of one video into one float32 row (mean computed in float64)."""
    if method == "mean":
        return block.astype(np.float64).mean(axis=0).astype(np.float32)
    return block.max(axis=0).astype(np.float32)


def pool(
    collection: str | os.PathLike[str],
    feature: str,
    *,
    method: str = "mean",
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> PoolResult:
    """Pools the frame-level feature ``FeatureData/<feature>`` into ``FeatureData/<method>_<feature>``.

    A frame id is ``<video>_<index>``: the video id is everything before the last underscore. A
    video's frames are taken in index order. Videos follow ``VideoSets/<collection>.txt`` when it
    exists (listed videos without frames are left out and counted; videos missing from the list
    come last), else their first appearance in id.txt. Only one video's frames are in memory at a time.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        feature: The frame-level feature name.
        method: ``mean`` or ``max``.
        rootpath: Where named collections live.
        overwrite: Recompute and replace the output, even an up-to-date one or one made with other settings
            (an output whose input values changed since is recomputed without it).
        progress: Receives ``videos`` events.

    Returns:
        The output and its counts; ``skipped`` when it was already up to date.

    Raises:
        VcfError: Unknown method.
        CollectionError: The collection or the feature does not exist.
        FeatureFileError: The input is inconsistent or has an id that is not a frame id.
        OutputExistsError: The output exists, was made from something else, and ``overwrite`` is false.
        LockedError: Another run is writing the same output.
    """
    if method not in METHODS:
        raise VcfError(f"unknown pooling method {method!r}; use one of: {', '.join(METHODS)}")
    coll = resolve_collection(collection, rootpath)
    source = open_feature(coll, feature)
    out_name = f"{method}_{feature}"
    out_dir = coll.feature_dir(out_name)
    manifest = {
        "stage": "pool",
        "level": "video",
        "method": method,
        "input_feature": feature,
        "input": source.describe(),
    }
    reporter = Reporter(progress)

    with OutputLock(coll.feature_root / f".{out_name}.lock"):
        clean_stale_temps(coll.feature_root)
        done = reusable_output(out_dir, manifest, overwrite=overwrite)
        if done is not None:
            return PoolResult(
                output=out_dir,
                feature=out_name,
                videos=done.nr_of_images,
                frames=source.nr_of_images,
                dim=done.ndims,
                skipped=True,
            )

        groups = group_frames(source)
        order = list(groups)
        missing = unlisted = 0
        if coll.videoset_file.is_file():
            listed = read_id_list(coll.videoset_file)
            listed_set = set(listed)
            missing = sum(1 for v in dict.fromkeys(listed) if v not in groups)
            order = [v for v in dict.fromkeys(listed) if v in groups]
            rest = [v for v in groups if v not in listed_set]
            unlisted = len(rest)
            order += rest

        reporter.total("videos", len(order))
        # Rows are read in blocks so that a video with very many frames still needs bounded memory for max.
        block_rows = chunk_rows(source.ndims)
        with (
            RowReader(source) as matrix,
            BigFileWriter(out_dir, source.ndims, overwrite=overwrite, manifest=manifest) as writer,
        ):
            batch_ids: list[str] = []
            batch_rows: list[np.ndarray] = []
            for video in order:
                rows = groups[video]
                if len(rows) <= block_rows:
                    pooled = pool_rows(matrix.take(rows), method)
                else:
                    pooled = _pool_long(matrix, rows, method, block_rows)
                batch_ids.append(video)
                batch_rows.append(pooled)
                if len(batch_ids) >= WRITE_BATCH:
                    writer.append(batch_ids, np.stack(batch_rows))
                    reporter.advance("videos", len(batch_ids))
                    batch_ids, batch_rows = [], []
            if batch_ids:
                writer.append(batch_ids, np.stack(batch_rows))
                reporter.advance("videos", len(batch_ids))
    return PoolResult(
        output=out_dir,
        feature=out_name,
        videos=len(order),
        frames=source.nr_of_images,
        dim=source.ndims,
        missing_videos=missing,
        unlisted_videos=unlisted,
    )


def _pool_long(matrix: RowReader, rows: np.ndarray, method: str, block_rows: int) -> np.ndarray:
    """Pools a video whose frames do not fit in one block, one block at a time."""
    if method == "mean":
        total = np.zeros(matrix.dim, dtype=np.float64)
        for start in range(0, len(rows), block_rows):
            total += np.asarray(matrix.take(rows[start : start + block_rows]), dtype=np.float64).sum(axis=0)
        return (total / len(rows)).astype(np.float32)
    best = np.full(matrix.dim, -np.inf, dtype=np.float32)
    for start in range(0, len(rows), block_rows):
        best = np.maximum(best, matrix.take(rows[start : start + block_rows]).max(axis=0))
    return best.astype(np.float32)


# `vcf.pool(...)` stays a call of the stage function once this module is imported.
