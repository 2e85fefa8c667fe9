"""Shot lists: ids, TRECVID master shot reference files, boundaries from predictions, and sampling inside shots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import IndexFormatError
from vcf.io.atomic import atomic_write_text
from vcf.sampling import Sampling


@dataclass(frozen=True)
class Shot:
    """One shot of a video: decoded frames ``first`` to ``last``, both inclusive, 0-based.

    Attributes:
        video_id: The video holding the shot.
        number: The shot's number in its video, from 1.
        first: First frame index.
        last: Last frame index (inclusive).
    """

    video_id: str
    number: int
    first: int
    last: int

    @property
    def shot_id(self) -> str:
        """``shot<vid>_<k>``: the TRECVID shot id."""
        return shot_id(self.video_id, self.number)

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def shot_id(video_id: str, number: int) -> str:
    """The TRECVID id of shot ``number`` (from 1) of a video: ``shot<vid>_<k>``."""
    return f"shot{video_id}_{number}"


def shots_of(video_id: str, spans: Iterable[tuple[int, int]]) -> list[Shot]:
    """Numbers ``(first, last)`` spans of one video as its shots, from 1."""
    return [Shot(video_id, k, first, last) for k, (first, last) in enumerate(spans, start=1)]


# Boundaries ----------------------------------------------------------------------------------------


def spans_from_predictions(probabilities: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """Contiguous shots covering every frame, from per-frame transition probabilities.

    Each run of frames above ``threshold`` is one transition. A one-frame run (a hard cut) ends the
    shot before it, as in TransNetV2's own scene list; the frames of a longer run (a gradual
    transition), which that list leaves out, are split between the shots on either side of it.
    Runs touching the first or the last frame are no boundary.

    Args:
        probabilities: Per-frame transition probabilities, one per decoded frame.
        threshold: A frame is a transition frame when its probability is above this.

    Returns:
        ``(first, last)`` spans, inclusive, in time order; one span for a video without transitions.
    """
    count = len(probabilities)
    if count == 0:
        return []
    above = np.asarray(probabilities) > threshold
    # Starts and ends of runs of transition frames, from the edges of the padded boolean signal.
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    spans, first = [], 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if start == 0 or end == count - 1:
            continue
        last = start + (end - start) // 2
        spans.append((first, last))
        first = last + 1
    spans.append((first, count - 1))
    return spans


def merge_short_spans(spans: Sequence[tuple[int, int]], min_frames: int) -> list[tuple[int, int]]:
    """Merges shots shorter than ``min_frames`` into a neighbour until none is left (or one shot remains).

    The shortest shot goes first, into its shorter neighbour (the earlier one on a tie), as the
    TRECVID master shot reference merges shots under two seconds.
    """
    merged = [list(span) for span in spans]
    while len(merged) > 1:
        lengths = [last - first + 1 for first, last in merged]
        shortest = min(range(len(merged)), key=lambda i: (lengths[i], i))
        if lengths[shortest] >= min_frames:
            break
        if shortest == 0:
            other = 1
        elif shortest == len(merged) - 1:
            other = shortest - 1
        else:
            other = shortest - 1 if lengths[shortest - 1] <= lengths[shortest + 1] else shortest + 1
        low, high = sorted((shortest, other))
        merged[low] = [merged[low][0], merged[high][1]]
        del merged[high]
    return [(first, last) for first, last in merged]


# Master shot reference files ------------------------------------------------------------------------


def format_msb(spans: Iterable[tuple[int, int]]) -> str:
    """The TRECVID master shot reference text: ``<first frame> <last frame>`` a line."""
    return "".join(f"{first} {last}\n" for first, last in spans)


def write_msb(path: Path, spans: Iterable[tuple[int, int]]) -> None:
    """Atomically writes a ``.msb`` file."""
    atomic_write_text(path, format_msb(spans))


def read_msb(path: Path, frame_count: int | None = None) -> list[tuple[int, int]]:
    """Reads and checks a ``.msb`` file: shots contiguous from frame 0, no gap, no overlap, inside the video.

    Blank lines and lines starting with ``#`` are ignored.

    Args:
        path: The file.
        frame_count: The video's decoded frame count; None skips the end check.

    Raises:
        IndexFormatError: A one-line message naming the file and the line.
    """
    spans: list[tuple[int, int]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            parts = line.split()
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise IndexFormatError(f"{where}: expected '<first frame> <last frame>', got {line[:80]!r}")
            first, last = int(parts[0]), int(parts[1])
            if last < first:
                raise IndexFormatError(f"{where}: shot ends ({last}) before it starts ({first})")
            expected = spans[-1][1] + 1 if spans else 0
            if first > expected:
                raise IndexFormatError(f"{where}: gap: shot starts at frame {first}, expected {expected}")
            if first < expected:
                raise IndexFormatError(f"{where}: overlap: shot starts at frame {first}, expected {expected}")
            if frame_count is not None and last >= frame_count:
                raise IndexFormatError(f"{where}: shot ends at frame {last}, beyond the video's {frame_count} frames")
            spans.append((first, last))
    if not spans:
        raise IndexFormatError(f"{path}:1: no shot in the file")
    return spans


# id.shots.txt ----------------------------------------------------------------------------------------


def format_shots_index(shots: Iterable[Shot]) -> str:
    """``<shot_id> <vid> <first frame> <last frame>`` a line."""
    return "".join(f"{s.shot_id} {s.video_id} {s.first} {s.last}\n" for s in shots)


def read_shots_index(path: Path) -> dict[str, list[Shot]]:
    """Reads ``id.shots.txt`` into the shots of each video, in file order.

    Raises:
        IndexFormatError: A malformed line, named by file and line.
    """
    videos: dict[str, list[Shot]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            parts = raw.split()
            if not parts:
                continue
            if len(parts) != 4 or not (parts[2].isdigit() and parts[3].isdigit()):
                raise IndexFormatError(f"{path}:{number}: expected '<shot_id> <vid> <first> <last>'")
            shots = videos.setdefault(parts[1], [])
            shot = Shot(parts[1], len(shots) + 1, int(parts[2]), int(parts[3]))
            if shot.shot_id != parts[0]:
                raise IndexFormatError(f"{path}:{number}: shot id {parts[0]!r} should be {shot.shot_id!r}")
            shots.append(shot)
    return videos


# Sampling inside shots ---------------------------------------------------------------------------------


def frames_in_shot(sampling: Sampling, first: int, last: int, fps: float, keyframe: bool = False) -> list[int]:
    """The frames kept from one shot: the rule applied to the shot's frames as if the shot were a video.

    The rule counts from the shot's first frame (as when each shot is its own file); ``num_frames``
    is per shot; ``keyframe`` keeps the middle frame. A shot shorter than one selection step keeps
    its middle frame, so that no shot is left without a frame.

    Args:
        sampling: The frame selection rule.
        first: First frame of the shot.
        last: Last frame of the shot (inclusive).
        fps: The video's frame rate.
        keyframe: Keep only the middle frame.

    Returns:
        Decoded frame indices of the video, ascending, at least one.
    """
    length = last - first + 1
    middle = first + (length - 1) // 2
    if keyframe or length < selection_step(sampling, fps):
        return [middle]
    selector = sampling.selector(fps, length)
    return [first + i for i in range(length) if selector.keep(i)]


def selection_step(sampling: Sampling, fps: float) -> float:
    """Frames between two kept frames under the rule (1 for ``num_frames``, which always keeps one)."""
    if sampling.every is not None:
        return sampling.every
    if sampling.fps is not None:
        return fps / sampling.fps
    if sampling.num_frames is not None:
        return 1
    return max(1, int(fps) // 2)


class ShotSampling:
    """A frame selection over the shots of one video, usable wherever a :class:`Sampling` selects frames.

    Args:
        sampling: The rule applied inside each shot.
        spans: The video's shots, ``(first, last)`` inclusive.
        keyframe: Keep the middle frame of each shot only.
    """

    needs_frame_count = False

    def __init__(self, sampling: Sampling, spans: Sequence[tuple[int, int]], keyframe: bool = False) -> None:
        self.sampling = sampling
        self.spans = list(spans)
        self.keyframe = keyframe

    @property
    def rule(self) -> str:
        return "keyframe" if self.keyframe else self.sampling.rule

    def as_dict(self) -> dict[str, Any]:
        return {**self.sampling.as_dict(), "rule": self.rule, "per_shot": True}

    def frames(self, fps: float) -> list[list[int]]:
        """The kept frames of each shot."""
        return [frames_in_shot(self.sampling, first, last, fps, self.keyframe) for first, last in self.spans]

    def selector(self, fps: float, frame_count: int) -> _KeptSet:
        return _KeptSet([n for shot in self.frames(fps) for n in shot])


class _KeptSet:
    """A frame selector over a known set of frames."""

    def __init__(self, kept: Sequence[int]) -> None:
        self._kept = set(kept)
        self.last_needed = max(kept) if kept else -1

    def keep(self, n: int) -> bool:
        return n in self._kept


class CollectionShots:
    """Shot-aware frame selection over a whole collection (``--from-video --shots``).

    Each video is sampled with its own :class:`ShotSampling`; each kept frame ``n`` gets the id
    ``<shot_id>_<n>`` of the shot holding it.

    Args:
        sampling: The rule applied inside each shot.
        shots: The shots of each video (from ``id.shots.txt``).
        keyframe: Keep the middle frame of each shot only.
    """

    needs_frame_count = False

    def __init__(self, sampling: Sampling, shots: dict[str, list[Shot]], keyframe: bool = False) -> None:
        self.sampling = sampling
        self.shots = shots
        self.keyframe = keyframe
        self._starts = {video: [s.first for s in video_shots] for video, video_shots in shots.items()}

    @property
    def rule(self) -> str:
        return "keyframe" if self.keyframe else self.sampling.rule

    def as_dict(self) -> dict[str, Any]:
        import hashlib

        digest = hashlib.sha256(format_shots_index(s for v in sorted(self.shots) for s in self.shots[v]).encode())
        return {**self.sampling.as_dict(), "rule": self.rule, "per_shot": True, "shots_sha256": digest.hexdigest()}

    def for_video(self, video_id: str) -> ShotSampling:
        """The selection of one video.

        Raises:
            VideoError: The video has no shots in the list.
        """
        from vcf.io.video import VideoError

        if video_id not in self.shots:
            raise VideoError("no shots for this video in id.shots.txt; run `vcf shots` again")
        spans = [(s.first, s.last) for s in self.shots[video_id]]
        return ShotSampling(self.sampling, spans, self.keyframe)

    def frame_id(self, video_id: str, index: int) -> str:
        """``<shot_id>_<n>`` of frame ``index`` of a video."""
        import bisect

        position = bisect.bisect_right(self._starts[video_id], index) - 1
        return f"{self.shots[video_id][position].shot_id}_{index}"
