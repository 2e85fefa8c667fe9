"""Shot-aware ``frames``: frames sampled inside each shot of ``id.shots.txt``, under ``ImageData/<shot_id>/``."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from vcf.errors import OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import (
    OutputLock,
    clean_stale_temps,
    fsync_dir,
    fsync_file,
    is_output_error,
    publish,
    remove_path,
    temp_sibling,
    writing,
)
from vcf.io.collection import Collection
from vcf.io.shotlist import Shot, ShotSampling
from vcf.io.video import VideoError, decode_selected, resize_shorter_side
from vcf.progress import ProgressCallback, Reporter
from vcf.run.processes import TaskFailed, run_isolated
from vcf.stages.frames import FRAME_META, LOCK_NAME, FrameSettings, FramesResult, VideoFrames, read_frame_meta
from vcf.stages.shots import read_shots


@dataclass(frozen=True)
class _ShotTask:
    video_id: str
    video_path: Path
    shots: tuple[Shot, ...]
    settings: FrameSettings
    keyframe: bool
    image_dir: Path


def shot_settings(settings: FrameSettings, keyframe: bool, shot: Shot) -> dict[str, Any]:
    """The settings recorded in a shot's frame directory: the frame settings, the rule, and the shot's span."""
    sampling = ShotSampling(settings.sampling, [(shot.first, shot.last)], keyframe)
    return {**settings.as_dict(), "sampling": sampling.as_dict(), "shot": [shot.first, shot.last]}


def _init_decoder_process() -> None:
    cv2.setNumThreads(1)


def _extract_shots(task: _ShotTask) -> list[VideoFrames]:
    """Decodes one video once and writes the frames of each of its shots into the shot's directory (in a worker)."""
    settings = task.settings
    spans = [(s.first, s.last) for s in task.shots]
    sampling = ShotSampling(settings.sampling, spans, task.keyframe)
    meta, frames = decode_selected(task.video_path, sampling, threads=1)
    owner = {n: i for i, kept in enumerate(sampling.frames(meta.fps)) for n in kept}
    tmps = [temp_sibling(task.image_dir / shot.shot_id) for shot in task.shots]
    kept: list[list[int]] = [[] for _ in task.shots]
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.quality]
    try:
        for tmp in tmps:
            remove_path(tmp)
            tmp.mkdir(parents=True)
        for index, frame in frames:
            i = owner[index]
            shot_id = task.shots[i].shot_id
            ok, encoded = cv2.imencode(".jpg", resize_shorter_side(frame, settings.size), params)
            if not ok:
                raise VcfError(f"cannot encode frame {index} as JPEG")
            target = tmps[i] / f"{Collection.frame_id(shot_id, index)}.jpg"
            with writing(target):
                target.write_bytes(encoded.tobytes())
                fsync_file(target)
            kept[i].append(index)
        results = []
        for shot, tmp, shot_frames in zip(task.shots, tmps, kept, strict=True):
            if not shot_frames:
                raise VideoError(f"shot {shot.shot_id} (frames {shot.first}-{shot.last}) has no decodable frame")
            record = VideoFrames(
                video_id=shot.shot_id,
                fps=meta.fps,
                frame_count=shot.length,
                width=meta.width,
                height=meta.height,
                frames=tuple(shot_frames),
                settings=shot_settings(settings, task.keyframe, shot),
            )
            meta_path = tmp / FRAME_META
            with writing(meta_path):
                meta_path.write_text(json.dumps({**record.__dict__, "frames": shot_frames}, sort_keys=True))
                fsync_file(meta_path)
                fsync_dir(tmp)
            results.append(record)
        for shot, tmp in zip(task.shots, tmps, strict=True):
            final = task.image_dir / shot.shot_id
            with writing(final):
                remove_path(final)
                publish(tmp, final)
        return results
    except BaseException:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def frames_by_shot(
    coll: Collection,
    settings: FrameSettings,
    *,
    keyframe: bool = False,
    workers: int | None = None,
    relative_paths: bool = False,
    overwrite: bool = False,
    video_timeout: float | None = None,
    progress: ProgressCallback | None = None,
) -> FramesResult:
    """Samples frames inside each shot of ``id.shots.txt`` (see :func:`vcf.frames` with ``shots=True``).

    The unit of work is a video, decoded once; its frames are grouped by shot: ``ImageData/<shot_id>/
    <shot_id>_<n>.jpg`` (``n`` = decoded frame index in the video). The index files list shots where
    they list videos: ``id.videopath.txt`` and ``id.videometa.txt`` have a line per shot (its video,
    its frame count), ``VideoSets`` holds the shot ids.
    """
    reporter = Reporter(progress)
    result = FramesResult(collection=coll.root)
    with OutputLock(coll.root / LOCK_NAME):
        shots = read_shots(coll)
        files = {layout.video_id_of(p): p for p in layout.list_video_files(coll)}
        failures = [(v, "video listed in id.shots.txt is not in VideoData") for v in shots if v not in files]
        failures += [(v, "no shots in id.shots.txt; run `vcf shots` again") for v in files if v not in shots]
        videos = {v: files[v] for v in sorted(shots) if v in files}
        result.videos = len(set(shots) | set(files))
        coll.image_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(coll.image_dir)
        done: dict[str, list[VideoFrames]] = {}
        tasks: list[_ShotTask] = []
        conflicts: list[str] = []
        for video_id, path in videos.items():
            records = [None if overwrite else read_frame_meta(coll.frame_dir(s.shot_id)) for s in shots[video_id]]
            expected = [shot_settings(settings, keyframe, s) for s in shots[video_id]]
            if all(r is not None and r.settings == e for r, e in zip(records, expected, strict=True)):
                done[video_id] = records  # type: ignore[assignment]
                continue
            if any(r is not None and r.settings != e for r, e in zip(records, expected, strict=True)):
                conflicts.append(shots[video_id][0].shot_id)
            tasks.append(_ShotTask(video_id, path, tuple(shots[video_id]), settings, keyframe, coll.image_dir))
        if conflicts:
            raise OutputExistsError(
                f"frames of {len(conflicts)} video(s) (e.g. {coll.frame_dir(conflicts[0])}) were extracted with other "
                "settings or other shots; use --overwrite to redo them"
            )
        result.skipped = len(done)
        reporter.total("videos", result.videos)
        reporter.advance("videos", result.skipped + len(failures))
        workers = workers or os.cpu_count() or 1
        for task, outcome in run_isolated(
            _extract_shots, tasks, workers=workers, timeout=video_timeout, initializer=_init_decoder_process
        ):
            if isinstance(outcome, TaskFailed):
                if is_output_error(outcome.reason):
                    raise VcfError(outcome.reason)
                failures.append((task.video_id, outcome.reason))
            else:
                done[task.video_id] = outcome
                result.extracted += 1
                written = sum(len(r.frames) for r in outcome)
                result.frames_written += written
                reporter.advance("frames", written)
            reporter.advance("videos", 1, description=task.video_id)
        clean_stale_temps(coll.image_dir)
        result.frames_total = _write_shot_indexes(coll, videos, shots, done, relative_paths)
        result.failures = sorted(failures)
        failures_path = coll.failures_file("frames")
        layout.write_failures(failures_path, result.failures)
        result.failures_file = failures_path if result.failures else None
    return result


def _write_shot_indexes(
    coll: Collection,
    videos: dict[str, Path],
    shots: dict[str, list[Shot]],
    done: dict[str, list[VideoFrames]],
    relative: bool,
) -> int:
    """Writes the index files with a line per shot where the video-level files have a line per video."""
    image_lines, video_lines, meta_lines, shot_ids = [], [], [], []
    for video_id in (v for v in videos if v in done):
        video_path = layout.format_index_path(coll, videos[video_id], relative)
        for shot, record in zip(shots[video_id], done[video_id], strict=True):
            for index in record.frames:
                path = layout.format_index_path(coll, coll.frame_path(shot.shot_id, index), relative)
                image_lines.append((Collection.frame_id(shot.shot_id, index), path))
            video_lines.append((shot.shot_id, video_path))
            meta_lines.append((shot.shot_id, f"{record.int_fps} {shot.length} {record.width} {record.height}"))
            shot_ids.append(shot.shot_id)
    layout.write_id_value_file(coll.imagepath_file, image_lines)
    layout.write_id_value_file(coll.videopath_file, video_lines)
    layout.write_id_value_file(coll.videometa_file, meta_lines)
    layout.write_id_list(coll.videoset_file, shot_ids)
    layout.write_id_list(coll.imageset_file, [frame_id for frame_id, _ in image_lines])
    return len(image_lines)
