"""Shot-aware ``frames``: frames sampled inside each shot of ``id.shots.txt``, under ``ImageData/<shot_id>/``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from vcf.errors import VcfError
from vcf.io import collection as layout
from vcf.io.atomic import fsync_dir, fsync_file, publish, remove_path, temp_sibling, writing
from vcf.io.collection import FRAME_META, Collection
from vcf.io.shotlist import Shot, ShotSampling
from vcf.io.video import VideoError, decode_selected, resize_shorter_side
from vcf.stages.frame_files import (
    FrameSettings,
    VideoFrames,
    discover_videos,
    frames_from_json,
    frames_json,
    read_frame_meta,
    remove_temps_of,
)
from vcf.stages.shots import read_shots


@dataclass(frozen=True)
class _ShotTask:
    video_id: str
    video_path: Path
    shots: tuple[Shot, ...]
    settings: FrameSettings
    keyframe: bool
    image_dir: Path
    decoder_threads: int = 0


def shot_settings(settings: FrameSettings, keyframe: bool, shot: Shot) -> dict[str, Any]:
    """The settings recorded in a shot's frame directory: the frame settings, the rule, and the shot's span."""
    sampling = ShotSampling(settings.sampling, [(shot.first, shot.last)], keyframe)
    return {**settings.as_dict(), "sampling": sampling.as_dict(), "shot": [shot.first, shot.last]}


def extract_shots(task: _ShotTask) -> list[VideoFrames]:
    """Decodes one video once and writes the frames of each of its shots into the shot's directory (in a worker)."""
    settings = task.settings
    spans = [(s.first, s.last) for s in task.shots]
    sampling = ShotSampling(settings.sampling, spans, task.keyframe)
    meta, frames = decode_selected(task.video_path, sampling, threads=task.decoder_threads)
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


def write_shot_indexes(
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


def extract_shots_owned(task: _ShotTask) -> list[VideoFrames]:
    """:func:`extract_shots` for a video this shard owns: a killed earlier attempt's temporaries go first."""
    remove_temps_of(task.image_dir, [shot.shot_id for shot in task.shots])
    return extract_shots(task)


@dataclass
class ShotUnits:
    """``frames --shots``: a video decoded once, its frames written per shot (``ImageData/<shot_id>/``).

    The index files list shots where they list videos: ``id.videopath.txt`` and ``id.videometa.txt`` have a
    line per shot (its video, its frame count), ``VideoSets`` holds the shot ids.
    """

    settings: FrameSettings
    shots: dict[str, list[Shot]]
    keyframe: bool = False
    name: str = "shots"
    extract: Callable[[Any], Any] = extract_shots
    extract_owned: Callable[[Any], Any] = extract_shots_owned
    conflict_note: str = " or other shots"

    @classmethod
    def of(cls, settings: FrameSettings, coll: Collection, keyframe: bool) -> ShotUnits:
        """The units of a collection's ``id.shots.txt``.

        Raises:
            CollectionError: There is no ``id.shots.txt``.
        """
        return cls(settings, read_shots(coll), keyframe)

    def settings_record(self) -> dict[str, Any]:
        return {**self.settings.as_dict(), "keyframe": self.keyframe}

    def discover(self, coll: Collection) -> tuple[dict[str, Path], list[tuple[str, str]]]:
        files, failures = discover_videos(coll)
        failures += [(v, "video listed in id.shots.txt is not in VideoData") for v in self.shots if v not in files]
        failures += [(v, "no shots in id.shots.txt; run `vcf shots` again") for v in files if v not in self.shots]
        return {v: p for v, p in files.items() if v in self.shots}, sorted(failures)

    def plan(self, coll: Collection, video_id: str, path: Path, overwrite: bool) -> tuple[Any, Any, str | None]:
        shots = self.shots[video_id]
        records = [None if overwrite else read_frame_meta(coll.frame_dir(s.shot_id)) for s in shots]
        expected = [shot_settings(self.settings, self.keyframe, s) for s in shots]
        if all(r is not None and r.settings == e for r, e in zip(records, expected, strict=True)):
            return records, None, None
        if any(r is not None and r.settings != e for r, e in zip(records, expected, strict=True)):
            return None, None, shots[0].shot_id
        return None, _ShotTask(video_id, path, tuple(shots), self.settings, self.keyframe, coll.image_dir), None

    def frame_count(self, record: list[VideoFrames]) -> int:
        return sum(len(r.frames) for r in record)

    def dir_names(self, video_ids: Iterable[str]) -> list[str]:
        return [shot.shot_id for video_id in video_ids for shot in self.shots.get(video_id, [])]

    def to_json(self, record: list[VideoFrames]) -> Any:
        return [frames_json(r) for r in record]

    def from_json(self, data: Any) -> list[VideoFrames]:
        return [frames_from_json(r) for r in data]

    def write_indexes(self, coll: Collection, videos: dict[str, Path], done: dict[str, Any], relative: bool) -> int:
        return write_shot_indexes(coll, videos, self.shots, done, relative)
