"""The shard partition: a stable split of the work by video, the same on every machine of one job."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vcf.errors import VcfError


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; shards count from 0, like Slurm array and Kubernetes job indexes.

    Attributes:
        index: This shard, ``0 <= index < count``.
        count: The number of shards the work is split into.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        """Reads ``K/N`` (e.g. ``0/4`` ... ``3/4``).

        Raises:
            VcfError: Not of the form ``K/N`` with ``0 <= K < N``.
        """
        if isinstance(text, Shard):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not int(match[1]) < int(match[2]):
            raise VcfError(f"--shard must be K/N with 0 <= K < N (shards count from 0), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        """The part's directory name, ``<K>-of-<N>``."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def split_balanced(weights: Sequence[float], count: int) -> list[range]:
    """Splits units, in their given order, into ``count`` contiguous ranges of about equal total weight.

    Unit ``i`` goes to the shard holding the midpoint of its weight on the cumulative scale, so the
    split depends on nothing but the weights: every machine computes the same one. Each range is
    off its ideal share by at most one unit.

    Args:
        weights: One non-negative weight per unit (e.g. a video's frames or bytes).
        count: Number of ranges.

    Returns:
        ``count`` ranges of unit positions, in order, covering every unit once (some may be empty).
    """
    weights = [max(0.0, float(w)) for w in weights]
    total = sum(weights)
    if total <= 0:  # no sizes known: balance the number of units
        weights, total = [1.0] * len(weights), float(len(weights))
    owner = []
    before = 0.0
    for weight in weights:
        owner.append(min(count - 1, int(count * (before + weight / 2) / total)) if total else 0)
        before += weight
    bounds = [0] * (count + 1)
    for k in range(count):
        bounds[k + 1] = bounds[k] + sum(1 for o in owner if o == k)
    return [range(bounds[k], bounds[k + 1]) for k in range(count)]


def assign_videos(videos: dict[str, Path], count: int) -> list[list[str]]:
    """The video ids of each of ``count`` frames shards: ids in sorted order, split by file size.

    File sizes are known before any frame is decoded and are the same seen from every node of a
    shared filesystem, so all shards of one job agree without talking to each other.
    """
    ids = sorted(videos)
    sizes = []
    for video_id in ids:
        try:
            sizes.append(float(os.path.getsize(videos[video_id])))
        except OSError:
            sizes.append(0.0)
    return [[ids[i] for i in part] for part in split_balanced(sizes, count)]


def video_key(item_id: str) -> str:
    """The video a frame id belongs to (``<vid>_<n>`` -> ``<vid>``); other ids are their own video."""
    head, _, tail = item_id.rpartition("_")
    return head if head and tail.isdigit() else item_id


def owned_rows(keys: Sequence[str], shard: Shard, weights: Sequence[float] | None = None) -> range:
    """The rows of an input list that one shard computes: whole videos, balanced by rows (or weights).

    Rows with the same key next to each other (the frames of one video) stay in one shard, and each
    shard gets one contiguous range of rows, so its batches are the single run's batches.

    Args:
        keys: One key per row, e.g. :func:`video_key` of each frame id, or each video's id.
        shard: The shard.
        weights: Cost of each row (default 1), e.g. a video's frame count when rows are videos.

    Returns:
        The shard's rows, a range of row numbers.
    """
    starts: list[int] = []
    unit_weights: list[float] = []
    for row, key in enumerate(keys):
        if row == 0 or key != keys[row - 1]:
            starts.append(row)
            unit_weights.append(0.0)
        unit_weights[-1] += 1.0 if weights is None else float(weights[row])
    units = split_balanced(unit_weights, shard.count)[shard.index]
    if not units:
        start = starts[units.start] if units.start < len(starts) else len(keys)
        return range(start, start)
    stop = starts[units.stop] if units.stop < len(starts) else len(keys)
    return range(starts[units.start], stop)


@dataclass(frozen=True)
class ChunkPlan:
    """One unit of saved work: rows kept, and the single run's batches that compute them.

    Attributes:
        rows: The rows this run keeps from the chunk.
        batches: Every batch of the single run that holds one of ``rows``, whole: on the CPU a row's
            result depends on the other rows of its batch, so only the same batches give the same bytes.
    """

    rows: range
    batches: list[list[int]]


def plan_chunks(count: int, owned: range, batch_size: int, chunk_size: int) -> list[ChunkPlan]:
    """The chunks and batches of the rows ``owned`` of a ``count``-row input (all rows: the single run's)."""
    by_chunk: dict[int, list[list[int]]] = {}
    for batch in fixed_batches(count, batch_size, chunk_size):
        if batch[-1] >= owned.start and batch[0] < owned.stop:
            by_chunk.setdefault(batch[0] // chunk_size, []).append(batch)
    plans = []
    for number, chunk in enumerate(chunk_ranges(count, chunk_size)):
        if number in by_chunk:
            rows = range(max(chunk.start, owned.start), min(chunk.stop, owned.stop))
            plans.append(ChunkPlan(rows, by_chunk[number]))
    return plans


def fixed_batches(count: int, batch_size: int, chunk_size: int) -> Iterator[list[int]]:
    """Index lists of the batches: fixed ranges inside fixed chunks, so a resumed run computes the same batches."""
    for chunk_start in range(0, count, chunk_size):
        chunk_end = min(count, chunk_start + chunk_size)
        for start in range(chunk_start, chunk_end, batch_size):
            yield list(range(start, min(chunk_end, start + batch_size)))


def chunk_ranges(count: int, chunk_size: int) -> Sequence[range]:
    """The chunks of ``count`` inputs: the unit of resumption."""
    return [range(s, min(count, s + chunk_size)) for s in range(0, count, chunk_size)]
