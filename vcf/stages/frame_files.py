"""Frame files of one video: settings, extraction into a directory renamed into place, completion records, indexes.

The ``frames`` stage runs units through the execution core; a kind of unit (a video's frames, or its frames
grouped by shot) is declared by a :class:`FrameUnits` object, so that one loop runs both.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2

from vcf.errors import VcfError
from vcf.io import collection as layout
from vcf.io.atomic import TMP_MARK, fsync_dir, fsync_file, publish, remove_path, temp_sibling, writing
from vcf.io.collection import FRAME_META, Collection
from vcf.io.video import VideoError, decode_selected, resize_shorter_side
from vcf.sampling import Sampling


@dataclass(frozen=True)
class FrameSettings:
    """Everything that decides the bytes of the written frames."""

    sampling: Sampling
    size: int = 0
    quality: int = 95

    def as_dict(self) -> dict[str, Any]:
        return {"sampling": self.sampling.as_dict(), "size": self.size, "quality": self.quality}


@dataclass(frozen=True)
class VideoFrames:
    """The frames written for one video (the content of its FRAME_META file)."""

    video_id: str
    fps: float
    frame_count: int
    width: int
    height: int
    frames: tuple[int, ...]
    settings: dict[str, Any] | None

    @property
    def int_fps(self) -> int:
        return int(self.fps)


@dataclass
class FramesResult:
    """What a ``frames`` run did.

    Attributes:
        collection: The collection directory.
        videos: Number of videos found in VideoData.
        extracted: Videos decoded in this run.
        skipped: Videos whose frames were already complete.
        frames_written: Frames written in this run.
        frames_total: Frames listed in id.imagepath.txt.
        failures: ``(video_id or file, reason)`` for each video that failed.
        failures_file: Where the failures are listed (absent when there are none).
    """

    collection: Path
    videos: int = 0
    extracted: int = 0
    skipped: int = 0
    frames_written: int = 0
    frames_total: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_file: Path | None = None


@dataclass(frozen=True)
class FrameTask:
    video_id: str
    video_path: Path
    final_dir: Path
    settings: FrameSettings
    decoder_threads: int = 0


def read_frame_meta(frame_dir: Path) -> VideoFrames | None:
    """Reads the completion record of a frame directory; None if the directory is not complete."""
    try:
        data = json.loads((frame_dir / FRAME_META).read_text(encoding="utf-8"))
        return VideoFrames(
            video_id=data["video_id"],
            fps=float(data["fps"]),
            frame_count=int(data["frame_count"]),
            width=int(data["width"]),
            height=int(data["height"]),
            frames=tuple(int(n) for n in data["frames"]),
            settings=data.get("settings"),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def decoder_threads(workers: int, videos: int) -> int:
    """FFmpeg threads per video when ``workers`` processes decode ``videos`` videos: 0 (FFmpeg's choice,
    about one per core) for a single video at a time, else the cores shared among the parallel decoders."""
    parallel = max(1, min(workers, videos))
    return 0 if parallel == 1 else max(1, (os.cpu_count() or 1) // parallel)


def init_decoder_process() -> None:
    # One OpenCV thread per process: parallelism comes from decoding several videos at once.
    cv2.setNumThreads(1)


def extract_one(task: FrameTask) -> VideoFrames:
    """Decodes one video into a temporary directory, then renames it into place (in a worker)."""
    settings = task.settings
    tmp = temp_sibling(task.final_dir)
    remove_path(tmp)
    tmp.mkdir(parents=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.quality]
    kept: list[int] = []
    # fsync waits on the disk, not the CPU: each frame is synced in the background while decoding goes on.
    syncer = ThreadPoolExecutor(max_workers=1)
    synced: list[tuple[Path, Future[None]]] = []
    try:
        meta, frames = decode_selected(task.video_path, settings.sampling, threads=task.decoder_threads)
        for index, frame in frames:
            frame = resize_shorter_side(frame, settings.size)
            target = tmp / f"{Collection.frame_id(task.video_id, index)}.jpg"
            # Encoded here and written by Python (same bytes as cv2.imwrite), so that a full disk is an
            # OSError with its errno rather than a bare False.
            ok, encoded = cv2.imencode(".jpg", frame, params)
            if not ok:
                raise VcfError(f"cannot encode frame {index} as JPEG")
            with writing(target):
                target.write_bytes(encoded.tobytes())
            synced.append((target, syncer.submit(fsync_file, target)))
            kept.append(index)
        for target, future in synced:
            with writing(target):
                future.result()
        if not kept:
            raise VideoError("no frame selected (video shorter than the sampling interval)")
        result = VideoFrames(
            video_id=task.video_id,
            fps=meta.fps,
            frame_count=_decoded_count(meta.frame_count, kept),
            width=meta.width,
            height=meta.height,
            frames=tuple(kept),
            settings=settings.as_dict(),
        )
        record = json.dumps({**result.__dict__, "frames": kept}, sort_keys=True)
        meta_path = tmp / FRAME_META
        with writing(meta_path):
            meta_path.write_text(record, encoding="utf-8")
            fsync_file(meta_path)
            fsync_dir(tmp)
            if task.final_dir.exists():
                remove_path(task.final_dir)
            publish(tmp, task.final_dir)
        return result
    except BaseException:
        syncer.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        syncer.shutdown(wait=False)


def _decoded_count(container_count: int, kept: list[int]) -> int:
    return container_count if container_count > 0 else kept[-1] + 1


def remove_temps_of(directory: Path, video_ids: Iterable[str]) -> None:
    """Removes the temporary frame directories of these videos."""
    wanted = set(video_ids)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name and entry.name[1:].split(TMP_MARK)[0] in wanted:
            remove_path(entry)


def extract_owned(task: FrameTask) -> VideoFrames:
    """:func:`extract_one` for a video this shard owns: a killed earlier attempt's temporary directory goes first."""
    remove_temps_of(task.final_dir.parent, [task.video_id])
    return extract_one(task)


def discover_videos(coll: Collection) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Video ids and files; ids that cannot be used (whitespace, duplicates) become failures."""
    videos: dict[str, Path] = {}
    failures: list[tuple[str, str]] = []
    for path in layout.list_video_files(coll):
        video_id = layout.video_id_of(path)
        relative = path.relative_to(coll.root)
        if layout.has_whitespace(video_id):
            # Ids live in space-separated index files: a space would corrupt every one of them.
            failures.append((str(relative).replace(" ", "\\ "), "video id contains whitespace; rename the file"))
        elif video_id in videos:
            failures.append(
                (str(relative), f"duplicate video id {video_id!r} (also {videos[video_id].relative_to(coll.root)})")
            )
        else:
            videos[video_id] = path
    return dict(sorted(videos.items())), failures


def write_indexes(coll: Collection, videos: dict[str, Path], done: dict[str, VideoFrames], relative: bool) -> int:
    """Writes the index files from every complete video; returns the number of frames listed."""
    video_ids = [v for v in videos if v in done]
    image_lines = []
    for video_id in video_ids:
        for index in done[video_id].frames:
            path = layout.format_index_path(coll, coll.frame_path(video_id, index), relative)
            image_lines.append((Collection.frame_id(video_id, index), path))
    layout.write_id_value_file(coll.imagepath_file, image_lines)
    layout.write_id_value_file(
        coll.videopath_file, [(v, layout.format_index_path(coll, videos[v], relative)) for v in video_ids]
    )
    layout.write_id_value_file(
        coll.videometa_file,
        [(v, f"{done[v].int_fps} {done[v].frame_count} {done[v].width} {done[v].height}") for v in video_ids],
    )
    layout.write_id_list(coll.videoset_file, video_ids)
    layout.write_imageset(coll, [frame_id for frame_id, _ in image_lines])
    return len(image_lines)


class FrameUnits(Protocol):
    """A kind of ``frames`` unit: a video, decoded once, whose frames go into one or more directories.

    ``discover`` gives the videos to decode and the ones that cannot be (failures); ``plan`` says of one video
    whether its frames are complete (its record), to be extracted (a task for ``extract``), or were made with
    other settings (a directory name); ``write_indexes`` writes the index files from the complete records.
    Records travel through shard parts as JSON (``to_json``/``from_json``).
    """

    name: str
    extract: Callable[[Any], Any]  # module-level: runs in worker processes or Ray tasks
    extract_owned: Callable[[Any], Any]  # the same for units whose temporaries may be a killed attempt's
    conflict_note: str

    def settings_record(self) -> dict[str, Any]: ...
    def discover(self, coll: Collection) -> tuple[dict[str, Path], list[tuple[str, str]]]: ...
    def plan(self, coll: Collection, video_id: str, path: Path, overwrite: bool) -> tuple[Any, Any, str | None]: ...
    def frame_count(self, record: Any) -> int: ...
    def dir_names(self, video_ids: Iterable[str]) -> list[str]: ...
    def to_json(self, record: Any) -> Any: ...
    def from_json(self, data: Any) -> Any: ...
    def write_indexes(self, coll: Collection, videos: dict[str, Path], done: dict[str, Any], relative: bool) -> int: ...


def frames_json(record: VideoFrames) -> dict[str, Any]:
    return {**record.__dict__, "frames": list(record.frames)}


def frames_from_json(data: dict[str, Any]) -> VideoFrames:
    return VideoFrames(**{**data, "frames": tuple(data["frames"])})


@dataclass
class VideoUnits:
    """One directory of frames per video: ``ImageData/<vid>/``."""

    settings: FrameSettings
    name: str = "videos"
    extract: Callable[[Any], Any] = extract_one
    extract_owned: Callable[[Any], Any] = extract_owned
    conflict_note: str = ""

    def settings_record(self) -> dict[str, Any]:
        return self.settings.as_dict()

    def discover(self, coll: Collection) -> tuple[dict[str, Path], list[tuple[str, str]]]:
        return discover_videos(coll)

    def plan(self, coll: Collection, video_id: str, path: Path, overwrite: bool) -> tuple[Any, Any, str | None]:
        final = coll.frame_dir(video_id)
        existing = None if overwrite else read_frame_meta(final)
        if existing is not None and existing.settings not in (None, self.settings.as_dict()):
            return None, None, video_id
        if existing is not None:
            return existing, None, None
        return None, FrameTask(video_id, path, final, self.settings), None

    def frame_count(self, record: VideoFrames) -> int:
        return len(record.frames)

    def dir_names(self, video_ids: Iterable[str]) -> list[str]:
        return list(video_ids)

    def to_json(self, record: VideoFrames) -> Any:
        return frames_json(record)

    def from_json(self, data: Any) -> VideoFrames:
        return frames_from_json(data)

    def write_indexes(self, coll: Collection, videos: dict[str, Path], done: dict[str, Any], relative: bool) -> int:
        return write_indexes(coll, videos, done, relative)
