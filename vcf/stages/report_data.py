"""What a report shows, read and computed: videos, frames, shots, failures, feature health, PCA, neighbours."""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcf.errors import IndexFormatError
from vcf.io import collection as layout
from vcf.io.bigfile import BigFile
from vcf.io.collection import Collection
from vcf.io.shotlist import Shot, read_shots_index
from vcf.stages.search_index import build_exact, normalize_rows

# Lines of one failures file shown in the page; the file itself is linked for the rest.
FAILURE_LINES_SHOWN = 1000
NORM_BINS = 40


@dataclass(frozen=True)
class Frame:
    """One sampled frame of a video (or shot)."""

    index: int
    frame_id: str
    path: Path


@dataclass(frozen=True)
class VideoMetaLine:
    """One line of ``id.videometa.txt``."""

    fps: float
    nframes: int
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.nframes / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class FailuresFile:
    """A ``*.failures.txt`` file: its path, number of items and the first lines."""

    path: Path
    count: int
    lines: list[str]


@dataclass
class Overview:
    """The collection as the report sees it.

    Attributes:
        units: Ids given a film strip, in collection order: the videos (or shots) of VideoSets, else
            those of id.imagepath.txt, else the videos in VideoData.
        frames: The sampled frames of each unit, by frame number.
        video_paths: Video file of each video id (id.videopath.txt, else VideoData).
        meta: id.videometa.txt lines by video id.
        shots: id.shots.txt lines, in file order.
        failures: Every failures file of the collection.
    """

    units: list[str]
    frames: dict[str, list[Frame]]
    video_paths: dict[str, Path]
    meta: dict[str, VideoMetaLine]
    shots: list[Shot]
    failures: list[FailuresFile]

    @property
    def frame_count(self) -> int:
        return sum(len(frames) for frames in self.frames.values())

    def shots_by_video(self) -> dict[str, list[Shot]]:
        grouped: dict[str, list[Shot]] = {}
        for shot in self.shots:
            grouped.setdefault(shot.video_id, []).append(shot)
        for shots in grouped.values():
            shots.sort(key=lambda s: s.first)
        return grouped

    def stats(self) -> dict[str, object]:
        """Counts, durations, resolutions and frame rates shown on the first page."""
        durations = [m.duration for m in self.meta.values() if m.fps > 0]
        return {
            "videos": len(self.units),
            "frames": self.frame_count,
            "shots": len(self.shots),
            "with_meta": len(self.meta),
            "duration_total": sum(durations),
            "duration_min": min(durations, default=0.0),
            "duration_median": statistics.median(durations) if durations else 0.0,
            "duration_max": max(durations, default=0.0),
            "resolutions": Counter(f"{m.width}x{m.height}" for m in self.meta.values()).most_common(),
            "fps": Counter(f"{m.fps:g}" for m in self.meta.values()).most_common(),
        }


def split_frame_id(frame_id: str) -> tuple[str, int] | None:
    """``<unit>_<n>`` to ``(unit, n)``; None when the id does not end in ``_<number>``."""
    head, sep, tail = frame_id.rpartition("_")
    if not sep or not head or not tail.isdigit():
        return None
    return head, int(tail)


def _id_value_pairs(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return list(layout.parse_id_value_lines(path, handle))


def read_videometa(coll: Collection) -> dict[str, VideoMetaLine]:
    """Reads ``id.videometa.txt`` (``<vid> <fps> <nframes> <width> <height>``); empty when absent.

    Raises:
        IndexFormatError: A line does not have four numbers after the id.
    """
    meta = {}
    for number, (video_id, value) in enumerate(_id_value_pairs(coll.videometa_file), start=1):
        fields = value.split()
        try:
            fps, nframes, width, height = float(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])
        except (ValueError, IndexError):
            raise IndexFormatError(
                f"{coll.videometa_file}:{number}: expected '<vid> <fps> <nframes> <w> <h>'"
            ) from None
        meta[video_id] = VideoMetaLine(fps, nframes, width, height)
    return meta


def read_shots(coll: Collection) -> list[Shot]:
    """The shots of ``id.shots.txt`` in file order; empty when the collection has none.

    Raises:
        IndexFormatError: A malformed line, named by file and line.
    """
    if not coll.shots_file.is_file():
        return []
    return [shot for shots in read_shots_index(coll.shots_file).values() for shot in shots]


def read_failures(coll: Collection) -> list[FailuresFile]:
    """Every failures file of the collection with its item count and first lines."""
    found = []
    for path in coll.list_failures_files():
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        found.append(FailuresFile(path, len(lines), lines[:FAILURE_LINES_SHOWN]))
    return found


def read_overview(coll: Collection) -> Overview:
    """Reads every index file a report needs; missing files give empty parts."""
    frames: dict[str, list[Frame]] = {}
    if coll.imagepath_file.is_file():
        for frame_id, path in layout.read_imagepath(coll):
            split = split_frame_id(frame_id)
            unit, index = split if split else (path.parent.name, 0)
            frames.setdefault(unit, []).append(Frame(index, frame_id, path))
        for unit_frames in frames.values():
            unit_frames.sort(key=lambda f: f.index)
    video_paths = {
        video_id: layout.resolve_index_path(coll, value) for video_id, value in _id_value_pairs(coll.videopath_file)
    }
    if coll.video_dir.is_dir():
        for path in layout.list_video_files(coll):
            video_paths.setdefault(layout.video_id_of(path), path)
    if coll.videoset_file.is_file():
        units = layout.read_id_list(coll.videoset_file)
    elif frames:
        units = list(frames)
    else:
        units = sorted(video_paths)
    return Overview(units, frames, video_paths, read_videometa(coll), read_shots(coll), read_failures(coll))


# Feature health ----------------------------------------------------------------------------------


@dataclass
class FeatureHealth:
    """What is wrong, or suspicious, in the rows of one feature.

    Attributes:
        rows: Number of rows.
        dim: Values per row.
        nonfinite_ids: Ids of rows holding a NaN or an infinity.
        zero_ids: Ids of rows that are all zeros.
        duplicate_groups: Ids of byte-identical rows, one list per group (finite, non-zero rows only;
            zero rows are listed apart).
        norm_counts: Histogram counts of the L2 norms of the finite rows.
        norm_edges: The histogram's bin edges (``len(norm_counts) + 1`` values).
        zero_variance_dims: Dimensions whose value is the same in every finite row.
    """

    rows: int
    dim: int
    nonfinite_ids: list[str] = field(default_factory=list)
    zero_ids: list[str] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    norm_counts: list[int] = field(default_factory=list)
    norm_edges: list[float] = field(default_factory=list)
    zero_variance_dims: list[int] = field(default_factory=list)

    @property
    def duplicate_rows(self) -> int:
        return sum(len(group) for group in self.duplicate_groups)

    @property
    def problems(self) -> int:
        """Rows with a problem plus dims without variance."""
        return len(self.nonfinite_ids) + len(self.zero_ids) + self.duplicate_rows + len(self.zero_variance_dims)


def feature_health(bigfile: BigFile, rows: int | None = None) -> FeatureHealth:
    """Scans a BigFile once, block by block, and collects its health figures.

    Args:
        bigfile: The feature.
        rows: Rows per block (default: about 64 MiB).
    """
    health = FeatureHealth(rows=bigfile.nr_of_images, dim=bigfile.ndims)
    first_row_of: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    norms = np.full(bigfile.nr_of_images, np.nan)
    low = np.full(bigfile.ndims, np.inf)
    high = np.full(bigfile.ndims, -np.inf)
    start = 0
    for ids, block in bigfile.iter_chunks(rows):
        finite = np.isfinite(block).all(axis=1)
        zero = finite & ~block.any(axis=1)
        health.nonfinite_ids += [ids[i] for i in np.flatnonzero(~finite)]
        health.zero_ids += [ids[i] for i in np.flatnonzero(zero)]
        good = block[finite]
        norms[start : start + len(ids)][finite] = np.linalg.norm(good.astype(np.float64), axis=1)
        if len(good):
            low = np.minimum(low, good.min(axis=0))
            high = np.maximum(high, good.max(axis=0))
        for i in np.flatnonzero(finite & ~zero):
            # A 16-byte digest stands for the row: memory stays small, and a collision is out of reach.
            key = hashlib.blake2b(block[i].tobytes(), digest_size=16).digest()
            first = first_row_of.setdefault(key, start + i)
            if first != start + i:
                groups.setdefault(first, [first]).append(start + i)
        start += len(ids)
    health.duplicate_groups = [[bigfile.names[i] for i in members] for _, members in sorted(groups.items())]
    finite_norms = norms[np.isfinite(norms)]
    if len(finite_norms):
        counts, edges = np.histogram(finite_norms, bins=NORM_BINS)
        health.norm_counts, health.norm_edges = counts.tolist(), edges.tolist()
    if np.isfinite(low).all() and len(finite_norms) > 1:
        health.zero_variance_dims = np.flatnonzero(low == high).tolist()
    return health


# Rows to videos, map, neighbours -----------------------------------------------------------------


def unit_index(ids: Sequence[str], units: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Which unit (video or shot) each row belongs to.

    A row whose id is a unit is that unit; ``<unit>_<n>`` belongs to ``<unit>``; any other id is a unit
    of its own (shown without thumbnails).

    Returns:
        The units that have rows (in order of first row) and, per row, its position in that list.
    """
    known = set(units)
    order: dict[str, int] = {}
    positions = np.empty(len(ids), dtype=np.int64)
    for row, row_id in enumerate(ids):
        unit = row_id
        if row_id not in known:
            split = split_frame_id(row_id)
            if split and split[0] in known:
                unit = split[0]
        positions[row] = order.setdefault(unit, len(order))
    return list(order), positions


def pool_by_unit(bigfile: BigFile, units: Sequence[str], rows: int | None = None) -> tuple[list[str], np.ndarray]:
    """The mean of each unit's finite rows (a video-level feature stays as it is).

    Returns:
        The units with at least one finite row, and their (U, D) float32 mean vectors.
    """
    names, positions = unit_index(bigfile.names, units)
    sums = np.zeros((len(names), bigfile.ndims))
    counts = np.zeros(len(names), dtype=np.int64)
    start = 0
    for ids, block in bigfile.iter_chunks(rows):
        finite = np.isfinite(block).all(axis=1)
        where = positions[start : start + len(ids)][finite]
        np.add.at(sums, where, block[finite])
        counts += np.bincount(where, minlength=len(names))
        start += len(ids)
    keep = np.flatnonzero(counts)
    return [names[i] for i in keep], (sums[keep] / counts[keep, None]).astype(np.float32)


def pca_2d(matrix: np.ndarray, seed: int = 0) -> np.ndarray:
    """Coordinates of the rows on the first two principal axes (randomised subspace iteration).

    Each axis is signed so that its largest component is positive, so the map does not flip between runs.

    Returns:
        An (N, 2) float64 array (zeros where there is not enough data for an axis).
    """
    x = np.asarray(matrix, dtype=np.float64)
    n, d = x.shape
    coords = np.zeros((n, 2))
    if n < 2:
        return coords
    x = x - x.mean(axis=0)
    width = min(d, n, 12)
    basis = np.random.default_rng(seed).standard_normal((d, width))
    for _ in range(6):
        basis, _ = np.linalg.qr(x.T @ (x @ basis))
    _, _, vt = np.linalg.svd(x @ basis, full_matrices=False)
    axes = basis @ vt.T[:, : min(2, width)]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    coords[:, : axes.shape[1]] = x @ axes
    return coords


def nearest_neighbours(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of every row, by cosine similarity (exact, faiss).

    Args:
        matrix: (N, D) vectors; zero rows have similarity 0 to everything.
        k: Neighbours per row (at most N - 1 are returned).

    Returns:
        ``(indices, scores)``, each (N, min(k, N - 1)), best first; a row is never its own neighbour.
    """
    vectors = np.ascontiguousarray(normalize_rows(matrix))
    n, d = vectors.shape
    k = max(0, min(k, n - 1))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    scores, found = build_exact(d, iter([vectors])).search(vectors, k + 1)  # the search core's exact index
    # Drop each row's own entry; when ties pushed it out of the list, drop the last one instead.
    is_self = found == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(found, keep, axis=1).astype(np.int64), np.take_along_axis(scores, keep, axis=1)
