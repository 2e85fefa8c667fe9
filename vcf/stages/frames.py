"""The ``frames`` stage: decode the videos of a collection and write sampled JPEG frames and the index files."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2

from vcf.errors import OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import (
    TMP_MARK,
    OutputLock,
    atomic_write_text,
    clean_stale_temps,
    fsync_dir,
    fsync_file,
    publish,
    remove_path,
    temp_sibling,
    writing,
)
from vcf.io.collection import FRAME_META, PART_RECORD, Collection
from vcf.io.video import VideoError, decode_selected, resize_shorter_side
from vcf.progress import ProgressCallback, Reporter
from vcf.run.engines import open_engine, parse_scale_out
from vcf.run.loop import as_outcomes, run_units
from vcf.run.partition import Shard, assign_videos
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


def frames(
    collection: str | os.PathLike[str],
    *,
    rootpath: str | os.PathLike[str] | None = None,
    fps: float | None = None,
    every: int | None = None,
    num_frames: int | None = None,
    size: int = 0,
    quality: int = 95,
    workers: int | None = None,
    relative_paths: bool = False,
    overwrite: bool = False,
    video_timeout: float | None = None,
    progress: ProgressCallback | None = None,
    shard: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    shots: bool = False,
    keyframe: bool = False,
) -> FramesResult:
    """Extracts sampled frames of every video of a collection and writes the index files.

    Writes ``ImageData/<vid>/<vid>_<n>.jpg`` (``n`` = 0-based decoded frame index), then
    ``id.imagepath.txt``, ``id.videopath.txt``, ``id.videometa.txt``, ``VideoSets/<c>.txt`` and
    ``ImageSets/<c>.txt``. Videos whose frame directory is complete are skipped; a video that
    fails is listed in ``frames.failures.txt`` and the others complete.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        rootpath: Where named collections live.
        fps: Keep the first frame at or after each ``k/fps`` seconds.
        every: Keep every N-th decoded frame.
        num_frames: Keep K frames spread uniformly over each video.
        size: Resize saved frames so the shorter side is ``size`` (0 keeps the original size).
        quality: JPEG quality (OpenCV's default 95 reproduces the original tool's files).
        workers: Videos decoded in parallel (default: CPU count).
        relative_paths: Write image paths relative to the collection instead of absolute.
        overwrite: Redo every video.
        video_timeout: Seconds one video may take before it is reported as hung.
        progress: Receives progress events (``videos`` and ``frames``).
        shard: ``K/N``: decode only shard K (from 0) of N and write its part of the index files
            under ``.vcf-shards/``; :func:`vcf.merge` writes the index files once all N are done.
        engine: ``local`` (worker processes) or ``ray`` (Ray tasks on a cluster).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).
        shots: Sample inside each shot of ``id.shots.txt`` (from ``vcf.shots``): frames
            ``ImageData/<shot_id>/<shot_id>_<n>.jpg``, index files listing shots where they list videos.
        keyframe: With ``shots``, keep the middle frame of each shot only.

    Returns:
        A FramesResult; ``failures`` is non-empty when some videos failed.

    Raises:
        VcfError: The collection or its VideoData is missing, the output is locked by another run,
            or existing frames were made with other settings and ``overwrite`` is false.

    Example:
        >>> vcf.frames("toydata", fps=1, size=256)  # doctest: +SKIP
    """
    if not 1 <= quality <= 100:
        raise VcfError("--quality must be between 1 and 100")
    if size < 0:
        raise VcfError("--size must be >= 0")
    settings = FrameSettings(Sampling(fps=fps, every=every, num_frames=num_frames), size=size, quality=quality)
    coll = layout.resolve_collection(collection, rootpath)
    if shots or keyframe:
        from vcf.stages.shotframes import frames_by_shot

        if not shots or shard is not None or engine != "local" or ray_address is not None:
            raise VcfError("--keyframe needs --shots, and --shots runs with the local engine without --shard")
        return frames_by_shot(
            coll,
            settings,
            keyframe=keyframe,
            workers=workers,
            relative_paths=relative_paths,
            overwrite=overwrite,
            video_timeout=video_timeout,
            progress=progress,
        )
    spec = parse_scale_out(shard, engine, ray_address)
    reporter = Reporter(progress)
    result = FramesResult(collection=coll.root)
    part_dir = None if spec is None else coll.frames_part_dir(spec.name)
    lock = coll.frames_lock if spec is None else coll.frames_shard_lock(spec.name)
    with open_engine(engine, ray_address) as runner, OutputLock(lock):
        videos, failures = discover_videos(coll)
        naming: list[tuple[str, str]] = []
        if spec is not None and part_dir is not None:
            remove_path(part_dir)  # a part appears only once its run completes
            mine = set(assign_videos(videos, spec.count)[spec.index])
            videos = {v: p for v, p in videos.items() if v in mine}
            # Unusable file names concern the whole collection: the first shard reports them, merge lists them.
            naming, failures = (failures if spec.index == 0 else []), []
        result.videos = len(videos) + len(failures) + len(naming)
        coll.image_dir.mkdir(parents=True, exist_ok=True)
        _clean_temps(coll, spec, videos)

        done: dict[str, VideoFrames] = {}
        tasks: list[FrameTask] = []
        conflicts: list[str] = []
        for video_id, video_path in videos.items():
            final = coll.frame_dir(video_id)
            existing = None if overwrite else read_frame_meta(final)
            if existing is not None and existing.settings not in (None, settings.as_dict()):
                conflicts.append(video_id)
            elif existing is not None:
                done[video_id] = existing
            else:
                tasks.append(FrameTask(video_id, video_path, final, settings))
        if conflicts:
            raise OutputExistsError(
                f"frames of {len(conflicts)} video(s) (e.g. {coll.frame_dir(conflicts[0])}) were extracted with "
                f"other settings; use --overwrite to redo them with {settings.sampling.rule}"
            )
        result.skipped = len(done)
        reporter.total("videos", result.videos)
        reporter.advance("videos", result.skipped + len(failures) + len(naming))
        threads = decoder_threads(workers or os.cpu_count() or 1, len(tasks))
        tasks = [replace(task, decoder_threads=threads) for task in tasks]
        # A shard, or a Ray worker on another node, cannot tell whether a temporary's owner is alive.
        extract = extract_one if spec is None and runner.on_this_machine else extract_owned
        outcomes = runner.map(extract, tasks, workers=workers, timeout=video_timeout, initializer=init_decoder_process)

        def commit(task: FrameTask, outcome: VideoFrames | None, reason: str | None) -> None:
            if outcome is None:
                failures.append((task.video_id, str(reason)))
                return
            done[task.video_id] = outcome
            result.extracted += 1
            result.frames_written += len(outcome.frames)
            reporter.advance("frames", len(outcome.frames))

        run_units(as_outcomes(outcomes), commit, reporter, "videos", describe=lambda task: task.video_id)

        # Workers killed for hanging or crashing could not remove their temporary directories.
        _clean_temps(coll, spec, videos)
        if part_dir is None:
            result.frames_total = write_indexes(coll, videos, done, relative_paths)
            failures_path = coll.failures_file("frames")
        else:
            result.frames_total = sum(len(done[v].frames) for v in videos if v in done)
            failures_path = part_dir / "frames.failures.txt"
        result.failures = sorted(failures + naming)
        result.failures_file = layout.write_failures(failures_path, result.failures)
        if spec is not None and part_dir is not None:
            record = {
                "shard": [spec.index, spec.count],
                "settings": settings.as_dict(),
                "relative_paths": relative_paths,
                "videos": sorted(videos),
                "done": {v: {**done[v].__dict__, "frames": list(done[v].frames)} for v in sorted(videos) if v in done},
                "failures": sorted(failures),
            }
            atomic_write_text(part_dir / PART_RECORD, json.dumps(record, sort_keys=True, indent=1) + "\n")
    return result


def _clean_temps(coll: Collection, spec: Shard | None, videos: Iterable[str]) -> None:
    if spec is None:
        clean_stale_temps(coll.image_dir)
    else:
        # A shard cannot tell whether a pid on another node is alive; it owns its videos, so their temporaries
        # are stale.
        remove_temps_of(coll.image_dir, videos)


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


# `vcf.frames(...)` stays a call of the stage function once this module is imported.
