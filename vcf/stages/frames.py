"""The ``frames`` stage: decode the videos of a collection and write sampled JPEG frames and the index files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import replace

from vcf.errors import OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import OutputLock, atomic_write_text, clean_stale_temps, remove_path
from vcf.io.collection import PART_RECORD, Collection
from vcf.progress import ProgressCallback, Reporter
from vcf.run.engines import open_engine, parse_scale_out
from vcf.run.loop import as_outcomes, run_units
from vcf.run.partition import Shard, assign_videos
from vcf.sampling import Sampling
from vcf.stages.frame_files import (
    FrameSettings,
    FramesResult,
    FrameUnits,
    VideoFrames,
    VideoUnits,
    decoder_threads,
    discover_videos,
    init_decoder_process,
    read_frame_meta,
    remove_temps_of,
    write_indexes,
)
from vcf.stages.shotframes import ShotUnits

# The kinds of units a frames run decodes, by the name its shard parts record.
FRAME_UNITS: dict[str, Callable[[FrameSettings, Collection, bool], FrameUnits]] = {
    "videos": lambda settings, coll, keyframe: VideoUnits(settings),
    "shots": ShotUnits.of,
}

__all__ = [
    "FRAME_UNITS",
    "FrameSettings",
    "FramesResult",
    "VideoFrames",
    "decoder_threads",
    "discover_videos",
    "frames",
    "read_frame_meta",
    "write_indexes",
]


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
            ``ImageData/<shot_id>/<shot_id>_<n>.jpg``, index files listing shots where they list videos
            (the unit is still a video, decoded once; ``shard`` and ``engine`` work the same way).
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
    if keyframe and not shots:
        raise VcfError("--keyframe needs --shots")
    settings = FrameSettings(Sampling(fps=fps, every=every, num_frames=num_frames), size=size, quality=quality)
    coll = layout.resolve_collection(collection, rootpath)
    spec = parse_scale_out(shard, engine, ray_address)
    units = FRAME_UNITS["shots" if shots else "videos"](settings, coll, keyframe)
    reporter = Reporter(progress)
    result = FramesResult(collection=coll.root)
    part_dir = None if spec is None else coll.frames_part_dir(spec.name)
    lock = coll.frames_lock if spec is None else coll.frames_shard_lock(spec.name)
    with open_engine(engine, ray_address) as runner, OutputLock(lock):
        videos, failures = units.discover(coll)
        naming: list[tuple[str, str]] = []
        if spec is not None and part_dir is not None:
            remove_path(part_dir)  # a part appears only once its run completes
            mine = set(assign_videos(videos, spec.count)[spec.index])
            videos = {v: p for v, p in videos.items() if v in mine}
            # Unusable file names concern the whole collection: the first shard reports them, merge lists them.
            naming, failures = (failures if spec.index == 0 else []), []
        result.videos = len(videos) + len(failures) + len(naming)
        coll.image_dir.mkdir(parents=True, exist_ok=True)
        _clean_temps(coll, spec, units.dir_names(videos))

        done: dict[str, object] = {}
        tasks: list = []
        conflicts: list[str] = []
        for video_id, video_path in videos.items():
            record, task, conflict = units.plan(coll, video_id, video_path, overwrite)
            if conflict is not None:
                conflicts.append(conflict)
            elif record is not None:
                done[video_id] = record
            else:
                tasks.append(task)
        if conflicts:
            raise OutputExistsError(
                f"frames of {len(conflicts)} video(s) (e.g. {coll.frame_dir(conflicts[0])}) were extracted with "
                f"other settings{units.conflict_note}; use --overwrite to redo them with {settings.sampling.rule}"
            )
        result.skipped = len(done)
        reporter.total("videos", result.videos)
        reporter.advance("videos", result.skipped + len(failures) + len(naming))
        threads = decoder_threads(workers or os.cpu_count() or 1, len(tasks))
        tasks = [replace(task, decoder_threads=threads) for task in tasks]
        # A shard, or a Ray worker on another node, cannot tell whether a temporary's owner is alive.
        extract = units.extract if spec is None and runner.on_this_machine else units.extract_owned
        outcomes = runner.map(extract, tasks, workers=workers, timeout=video_timeout, initializer=init_decoder_process)

        def commit(task, outcome, reason: str | None) -> None:  # type: ignore[no-untyped-def]
            if outcome is None:
                failures.append((task.video_id, str(reason)))
                return
            done[task.video_id] = outcome
            result.extracted += 1
            written = units.frame_count(outcome)
            result.frames_written += written
            reporter.advance("frames", written)

        run_units(as_outcomes(outcomes), commit, reporter, "videos", describe=lambda task: task.video_id)

        # Workers killed for hanging or crashing could not remove their temporary directories.
        _clean_temps(coll, spec, units.dir_names(videos))
        if part_dir is None:
            result.frames_total = units.write_indexes(coll, videos, done, relative_paths)
            failures_path = coll.failures_file("frames")
        else:
            result.frames_total = sum(units.frame_count(done[v]) for v in videos if v in done)
            failures_path = part_dir / "frames.failures.txt"
        result.failures = sorted(failures + naming)
        result.failures_file = layout.write_failures(failures_path, result.failures)
        if spec is not None and part_dir is not None:
            record = {
                "shard": [spec.index, spec.count],
                "units": units.name,
                "keyframe": keyframe,
                "settings": units.settings_record(),
                "relative_paths": relative_paths,
                "videos": sorted(videos),
                "done": {v: units.to_json(done[v]) for v in sorted(videos) if v in done},
                "failures": sorted(failures),
            }
            atomic_write_text(part_dir / PART_RECORD, json.dumps(record, sort_keys=True, indent=1) + "\n")
    return result


def _clean_temps(coll: Collection, spec: Shard | None, dir_names: Iterable[str]) -> None:
    if spec is None:
        clean_stale_temps(coll.image_dir)
        for index_dir in {coll.root, coll.videoset_file.parent, coll.imageset_file.parent}:
            clean_stale_temps(index_dir)  # index files a killed run was writing
    else:
        # A shard cannot tell whether a pid on another node is alive; it owns its videos, so their temporaries
        # are stale.
        remove_temps_of(coll.image_dir, dir_names)
