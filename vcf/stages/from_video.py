"""Features of a collection's videos without frame files: units are videos, results BigFiles (or a shard's part)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import CollectionError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import OutputLock, clean_stale_temps, remove_path
from vcf.io.collection import Collection, videos_digest
from vcf.io.shotlist import CollectionShots, read_shots_index
from vcf.progress import ProgressCallback, Reporter
from vcf.run.engines import open_engine, parse_scale_out
from vcf.run.jobs import VideoRows
from vcf.run.loop import run_units
from vcf.run.partition import assign_videos
from vcf.run.store import WorkStore
from vcf.stages.frames import discover_videos
from vcf.stages.outputs import (
    FeaturesResult,
    RunOptions,
    digest,
    finished_part,
    output_dirs,
    outputs_lock_key,
    part_matches,
    pending_outputs,
    read_failures,
    resolve_model,
)
from vcf.stages.videofeatures import (
    VideoSelection,
    check_workers,
    decode_spec,
    video_job,
    video_preprocessing,
)

# Finished videos are saved in parts of about this many rows (or after PART_SECONDS), the unit of resumption.
PART_ROWS = 2048
PART_VIDEOS = 512
PART_SECONDS = 120.0


class VideoParts:
    """Finished videos of a run, buffered and committed to the work store a part at a time.

    A part holds the rows of each layer and the frame index of each row; its record lists the videos with
    their row ranges and the failed videos with their reasons.
    """

    def __init__(
        self, store: WorkStore, layers: Sequence[str], frame_id: Callable[[str, int], str] = Collection.frame_id
    ) -> None:
        self.store = store
        self.layers = list(layers)
        self.frame_id = frame_id  # row ids: ``<vid>_<n>``, or ``<shot_id>_<n>`` with shots
        self.rows: dict[str, tuple[str, int, int]] = {}
        self.failed: dict[str, str] = {}
        self.next_part = 0
        for name, record in store.records():
            for video, start, stop in record["videos"]:
                self.rows[video] = (name, start, stop)
            self.failed.update(record["failed"])
            self.next_part = max(self.next_part, int(name.split("-", 1)[1]) + 1)
        self._buffer: list[tuple[str, VideoRows]] = []
        self._buffer_failed: dict[str, str] = {}
        self._buffer_rows = 0
        self._last_flush = time.monotonic()
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def done(self, video: str) -> bool:
        return video in self.rows or video in self.failed

    def total_rows(self) -> int:
        return sum(stop - start for _, start, stop in self.rows.values())

    def add(self, video: str, rows: VideoRows | None, reason: str | None) -> None:
        if rows is None:
            self._buffer_failed[video] = reason or "failed"
        else:
            self._buffer.append((video, rows))
            self._buffer_rows += len(rows.frames)
        count = len(self._buffer) + len(self._buffer_failed)
        if (
            self._buffer_rows >= PART_ROWS
            or count >= PART_VIDEOS
            or time.monotonic() - self._last_flush >= PART_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Commits the buffered videos as one part."""
        if not self._buffer and not self._buffer_failed:
            return
        name = f"part-{self.next_part:06d}"
        videos = []
        offset = 0
        for video, rows in self._buffer:
            videos.append([video, offset, offset + len(rows.frames)])
            offset += len(rows.frames)
        arrays = {"frames": np.concatenate([r.frames for _, r in self._buffer]) if self._buffer else np.zeros(0)}
        for layer in self.layers:
            if self._buffer:
                arrays[f"layer:{layer}"] = np.concatenate([r.layers[layer] for _, r in self._buffer]).astype(np.float32)
        self.store.commit(name, arrays, {"videos": videos, "failed": self._buffer_failed})
        for video, start, stop in videos:
            self.rows[video] = (name, start, stop)
        self.failed.update(self._buffer_failed)
        self.next_part += 1
        self._buffer, self._buffer_failed, self._buffer_rows = [], {}, 0
        self._last_flush = time.monotonic()

    def _array(self, part: str, key: str) -> np.ndarray:
        if (part, key) not in self._arrays:
            self._arrays[(part, key)] = self.store.load(part)[0][key]
        return self._arrays[(part, key)]

    def layer_rows(self, layer: str, order: Sequence[str]) -> Iterable[tuple[list[str], np.ndarray]]:
        """The ids (``<vid>_<n>`` or ``<shot_id>_<n>``) and rows of ``layer`` of the videos in ``order``, by video."""
        for video in order:
            if video in self.rows:
                part, start, stop = self.rows[video]
                frames = self._array(part, "frames")[start:stop]
                ids = [self.frame_id(video, int(n)) for n in frames]
                yield ids, self._array(part, f"layer:{layer}")[start:stop]


def features_from_videos(
    collection: str | os.PathLike[str],
    run: RunOptions,
    *,
    selection: VideoSelection = VideoSelection(),
    rootpath: str | os.PathLike[str] | None = None,
    video_timeout: float | None = None,
    progress: ProgressCallback | None = None,
    shots: bool = False,
    keyframe: bool = False,
) -> FeaturesResult:
    """Computes features of the videos in ``VideoData/`` without writing frame files.

    2D models: the frames ``vcf frames`` would keep with the same options (two a second by default), ids
    ``<vid>_<n>``, videos sorted by id and frames by ``n``: the same BigFile ids in the same order as
    ``frames`` then ``features`` give, so ``pool`` and ``concat`` work unchanged. 3D models: clips of
    ``clip_len`` frames decoded at ``clip_fps``, one every ``clip_stride`` frames, id ``<vid>_<n>`` with ``n``
    the clip's first frame. Decoder processes feed the model; videos are never held whole in memory.
    Finished videos are saved as the run goes, so an interrupted run resumes after them. Videos that
    cannot be decoded are left out and listed in ``features.failures.txt``.

    Args:
        run: The options every input mode shares.
        collection: Collection directory, or its name under ``rootpath``.
        selection: Which frames (2D) or clips (3D) of each video are computed.
        rootpath: Where named collections live.
        video_timeout: Seconds a decoder may go without producing anything before its video is failed.
        progress: Receives ``videos`` and ``frames`` (or ``clips``) events.
        shots: 2D: sample inside each shot of ``id.shots.txt`` as ``vcf frames --shots`` does; ids
            ``<shot_id>_<n>``, so that ``pool`` gives one row per shot.
        keyframe: With ``shots``, the middle frame of each shot only.
    """
    if run.batch_size < 1:
        raise VcfError("--batch-size must be >= 1")
    check_workers(run.workers, video_timeout)
    from vcf.models import get_model

    record = get_model(run.model)
    clips, sampling = selection.resolve(record, default_fps=None)
    spec = decode_spec(record, sampling, clips, run.oversample, run.batch_size, run.resize_backend)
    coll = layout.resolve_collection(collection, rootpath)
    frame_id = Collection.frame_id
    if shots or keyframe:
        if not shots or clips is not None:
            raise VcfError("--keyframe needs --shots, and --shots samples frames for 2D models")
        if not coll.shots_file.is_file():
            raise CollectionError(f"{coll.shots_file} not found: run `vcf shots {coll.root}` first")
        sampling = CollectionShots(sampling, read_shots_index(coll.shots_file), keyframe)  # type: ignore[assignment]
        spec = replace(spec, sampling=sampling)
        frame_id = sampling.frame_id
    videos, failures = discover_videos(coll)
    if not videos and not failures:
        raise VcfError(f"no video files in {coll.video_dir}")
    shard_spec = parse_scale_out(run.shard, run.engine, run.ray_address)
    with open_engine(run.engine, run.ray_address) as runner:
        torch_device, chosen_precision = runner.resolve_device(run.device, run.precision)
        record, extractor, weights_info = resolve_model(record.name, run.layers, run.weights)
        settings = {
            "model": record.name,
            "weights": {"source": weights_info.source, "sha256": weights_info.sha256},
            "preprocessing": video_preprocessing(record, spec),
            "precision": chosen_precision,
            "input": {
                "source": "videos",
                "directory": coll.video_dir.name,
                "count": len(videos),
                "sha256": videos_digest(coll, videos),
            },
            "sampling": sampling.as_dict(),
            "clips": clips.as_dict() if clips is not None else None,
        }
        job = video_job(record, extractor, spec, torch_device, chosen_precision, run.workers, video_timeout)
        work = {"settings": settings, "layers": run.layers, "oversample": run.oversample}
        layers, oversample, settings = work["layers"], work["oversample"], work["settings"]
        result = FeaturesResult(collection=coll.root)
        outputs = output_dirs(coll, settings["model"], layers, oversample)
        result.feature_dirs = dict(outputs)
        failures_path = coll.failures_file("features")
        # The same lock as a frames-mode run writing these outputs.
        with OutputLock(coll.features_lock(outputs_lock_key(outputs), None if shard_spec is None else shard_spec.name)):
            if shard_spec is None:  # a shard cannot tell whether another node's pid is alive
                clean_stale_temps(coll.feature_root)
            pending = pending_outputs(outputs, settings, oversample, run.overwrite, result)
            if not pending:
                result.up_to_date = True
                result.reused = result.shapes[layers[0]][0]
                result.failures = read_failures(coll)
                result.failures_file = failures_path if result.failures else None
                return result

            parts: dict[str, Path] = {}
            shard_info: dict[str, Any] = {}
            if shard_spec is not None:
                mine = assign_videos(videos, shard_spec.count)[shard_spec.index]
                videos = {video: videos[video] for video in mine}
                # Unusable file names concern the whole collection: the first shard lists them, as in frames.
                failures = failures if shard_spec.index == 0 else []
                shard_info = {"index": shard_spec.index, "count": shard_spec.count, "videos": mine}
                parts = {layer: coll.feature_part_dir(outputs[layer].name, shard_spec.name) for layer in pending}
                if all(part_matches(parts[layer], manifest, shard_info) for layer, manifest in pending.items()):
                    return finished_part(result, parts)
                for part in parts.values():
                    remove_path(part)  # a part appears only once its shard completes
                failures_path = coll.shard_failures_file(shard_spec.name)
            store = WorkStore(coll.work_dir(digest(work), None if shard_spec is None else shard_spec.name), work)
            done = VideoParts(store, layers, frame_id)
            ids = list(videos)
            todo = [video for video in ids if not done.done(video)]
            reporter = Reporter(progress)
            reporter.total("videos", len(ids) + len(failures))
            reporter.advance("videos", len(ids) - len(todo) + len(failures))
            result.reused = done.total_rows()

            def on_items(count: int) -> None:
                result.computed += count
                reporter.advance(job.item_task, count)

            outcomes = runner.video_rows(job, [videos[v] for v in todo], None, on_items)
            commit = lambda task, rows, reason: done.add(todo[task], rows, reason)  # noqa: E731
            run_units(outcomes, commit, reporter, "videos", describe=lambda task: todo[task])
            done.flush()

            failures = sorted([*failures, *done.failed.items()])
            result.failures = failures
            result.failures_file = layout.write_failures(failures_path, failures)
            for layer, manifest in pending.items():
                if shard_spec is None:
                    manifest, out = {**manifest, "failures": len(failures)}, outputs[layer]
                    empty: str | None = (
                        f"no video could be decoded, nothing to write to {out}; see features.failures.txt"
                    )
                else:
                    manifest = {**manifest, "shard": {**shard_info, "failures": [list(f) for f in failures]}}
                    out, empty = parts[layer], None
                dims = store.write_bigfile(
                    done.layer_rows(layer, ids), out, manifest, run.overwrite or shard_spec is not None, empty
                )
                result.shapes[layer] = (done.total_rows(), dims)
            if parts:
                result.feature_dirs = dict(parts)
            store.remove()
        return result
