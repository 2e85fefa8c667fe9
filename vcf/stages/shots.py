"""The ``shots`` stage: shot boundaries of every video, from TransNetV2 or from a master shot reference."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcf.errors import CollectionError, OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import (
    MANIFEST_HEADER,
    MANIFEST_NAME,
    OutputLock,
    atomic_write_text,
    clean_stale_temps,
    manifest_text,
    read_manifest,
    remove_path,
)
from vcf.io.collection import PART_RECORD, Collection
from vcf.io.shotlist import Shot, format_shots_index, read_msb, shots_of, write_msb
from vcf.io.video import VideoError
from vcf.progress import ProgressCallback, Reporter
from vcf.run.engines import open_engine, parse_scale_out
from vcf.run.loop import Outcome, as_outcomes, run_units
from vcf.run.partition import assign_videos
from vcf.stages.frame_files import discover_videos
from vcf.stages.shot_detect import STAGE, DetectTask, detect_one, detect_settings, init_worker, read_reference
from vcf.stages.shot_detect import small_frames as small_frames  # the public name it always had

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class ReferenceTask:
    """One video whose shots are read from a master shot reference."""

    video_id: str
    video_path: Path


@dataclass
class ShotsResult:
    """What a ``shots`` run did.

    Attributes:
        collection: The collection directory.
        videos: Number of videos found in VideoData.
        detected: Videos whose shots were found in this run (detected or read from ``--msb``).
        skipped: Videos whose shots were already complete.
        shots_total: Shots listed in id.shots.txt.
        source: ``transnetv2`` or ``msb``.
        precision: The precision the network ran in (empty for ``--msb``).
        failures: ``(video_id or file, reason)`` for each video that failed.
        failures_file: Where the failures are listed (absent when there are none).
    """

    collection: Path
    videos: int = 0
    detected: int = 0
    skipped: int = 0
    shots_total: int = 0
    source: str = "transnetv2"
    precision: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_file: Path | None = None


def shots(
    collection: str | os.PathLike[str],
    *,
    rootpath: str | os.PathLike[str] | None = None,
    threshold: float = 0.5,
    min_duration: float = 0.0,
    msb: str | os.PathLike[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    overwrite: bool = False,
    video_timeout: float | None = None,
    progress: ProgressCallback | None = None,
    shard: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> ShotsResult:
    """Finds the shots of every video of a collection.

    Detects shot boundaries with TransNetV2 (every frame decoded and resized to 48x27, windows of 100
    frames every 50, the middle 50 predictions kept), or reads them from a TRECVID master shot
    reference (``msb``: one ``<vid>.msb`` per video). Shots are contiguous and cover every frame: the
    frames of a gradual transition go to the shots on either side of it. Writes ``ShotData/<vid>.msb``,
    ``ShotData/manifest.json`` and ``id.shots.txt`` (``<shot_id> <vid> <first> <last>``, shot ids
    ``shot<vid>_<k>``). The unit of work is a video, run by the execution core like ``frames``: videos with
    complete shots are skipped; a video that fails is listed in ``shots.failures.txt`` and the others complete.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        rootpath: Where named collections live.
        threshold: A frame whose transition probability is above this is a transition frame.
        min_duration: Merge shots shorter than this many seconds into a neighbour (0 keeps all).
        msb: A directory of ``<vid>.msb`` files to read instead of detecting.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto`` (bf16 where it is fast), ``fp32`` or ``bf16``.
        workers: Videos processed in parallel (default: one per four cores, one on a GPU).
        overwrite: Redo every video.
        video_timeout: Seconds one video may take before it is reported as hung.
        progress: Receives progress events (``videos``).
        shard: ``K/N``: only shard K (from 0) of N; its ``.msb`` files go to ``ShotData/`` and its list to
            ``.vcf-shards/shots/``; :func:`vcf.merge` writes ``id.shots.txt`` once all N are done.
        engine: ``local`` (worker processes) or ``ray`` (a Ray task a video, on CPUs).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).

    Returns:
        A ShotsResult; ``failures`` is non-empty when some videos failed.

    Raises:
        VcfError: The collection is missing, an ``.msb`` file is malformed, or existing shots were
            found with other settings and ``overwrite`` is false.
    """
    if not 0 < threshold < 1:
        raise VcfError("--threshold must be between 0 and 1")
    if min_duration < 0:
        raise VcfError("--min-duration must be >= 0")
    coll = layout.resolve_collection(collection, rootpath)
    msb_dir = Path(msb).expanduser().resolve() if msb is not None else None
    if msb_dir is not None and not msb_dir.is_dir():
        raise CollectionError(f"--msb {msb}: no such directory")
    spec = parse_scale_out(shard, engine, ray_address)
    reporter = Reporter(progress)
    result = ShotsResult(collection=coll.root, source="msb" if msb_dir else "transnetv2")
    part_dir = None if spec is None else coll.stage_part_dir(STAGE, spec.name)
    lock = coll.shots_lock if spec is None else coll.stage_shard_lock(STAGE, spec.name)
    with open_engine(engine, ray_address) as runner, OutputLock(lock):
        videos, naming = discover_videos(coll)
        if spec is not None and part_dir is not None:
            remove_path(part_dir)  # a part appears only once its run completes
            mine = set(assign_videos(videos, spec.count)[spec.index])
            videos = {v: p for v, p in videos.items() if v in mine}
            naming = naming if spec.index == 0 else []  # the first shard reports unusable names, merge lists them
        result.videos = len(videos) + len(naming)
        if msb_dir is not None:
            manifest: dict[str, Any] = {"stage": STAGE, "detector": "msb", "source": str(msb_dir)}
            settings = None
        else:
            torch_device, chosen = runner.resolve_device(_engine_device(runner.on_this_machine, device), precision)
            settings, manifest = detect_settings(threshold, min_duration, torch_device, chosen)
            result.precision = settings.precision
        manifest["min_duration"] = min_duration
        owned = None if spec is None else set(videos)
        if msb_dir is None:
            done = _prepare_output(coll, manifest, overwrite, owned)
            done = {v: spans for v, spans in done.items() if v in videos}
        else:
            # Reading a reference is cheap: every video is read again (the directory may be ShotData itself).
            done = {}
            coll.shot_data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(coll.shot_data_dir / MANIFEST_NAME, manifest_text(manifest))
        result.skipped = len(done)
        reporter.total("videos", result.videos)
        reporter.advance("videos", result.skipped + len(naming))
        todo = {v: p for v, p in videos.items() if v not in done}
        failures: list[tuple[str, str]] = []
        if msb_dir is not None:
            outcomes: Iterator[Outcome] = _read_references(coll, todo, msb_dir, min_duration)
        else:
            assert settings is not None
            outcomes = _detections(runner, coll, todo, settings, workers, video_timeout)

        def commit(task: Any, spans: Spans | None, reason: str | None) -> None:
            if spans is None:
                failures.append((task.video_id, str(reason)))
                return
            done[task.video_id] = spans
            result.detected += 1

        run_units(outcomes, commit, reporter, "videos", describe=lambda task: task.video_id)
        if spec is None:
            clean_stale_temps(coll.shot_data_dir)
        result.failures = sorted(failures + naming)
        if part_dir is None:
            result.shots_total = write_shots_index(coll, videos, done)
            failures_path = coll.failures_file(STAGE)
        else:
            result.shots_total = sum(len(done[v]) for v in videos if v in done)
            failures_path = part_dir / f"{STAGE}.failures.txt"
        result.failures_file = layout.write_failures(failures_path, result.failures)
        if spec is not None and part_dir is not None:
            record = {
                "shard": [spec.index, spec.count],
                "manifest": manifest,
                "videos": sorted(videos),
                "done": {v: done[v] for v in sorted(videos) if v in done},
                "failures": sorted(failures),
            }
            atomic_write_text(part_dir / PART_RECORD, json.dumps(record, sort_keys=True, indent=1) + "\n")
    return result


def _engine_device(on_this_machine: bool, device: str) -> str:
    """The device to detect on: an engine of other machines runs a video's detection in a CPU task."""
    if on_this_machine:
        return device
    if device not in ("auto", "cpu"):
        raise VcfError(f"--device {device}: with --engine ray shots are detected on the CPUs of Ray tasks; use cpu")
    return "cpu"


def _detections(
    runner: Any,
    coll: Collection,
    todo: dict[str, Path],
    settings: Any,
    workers: int | None,
    video_timeout: float | None,
) -> Iterator[Outcome]:
    """The engine's outcomes of detecting each video (a worker writes the video's ``.msb`` file)."""
    cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if settings.device.startswith("cuda") else max(1, cores // 4)
    workers = max(1, min(workers, len(todo) or 1))
    threads = max(1, cores // workers) if runner.on_this_machine else 1
    tasks = [DetectTask(v, p, coll.msb_file(v), settings, threads) for v, p in todo.items()]
    return as_outcomes(runner.map(detect_one, tasks, workers=workers, timeout=video_timeout, initializer=init_worker))


def _read_references(coll: Collection, todo: dict[str, Path], msb_dir: Path, min_duration: float) -> Iterator[Outcome]:
    """The outcomes of reading each video's shots from ``msb_dir`` (checked, then written to ``ShotData/``)."""
    for video_id, path in todo.items():
        task = ReferenceTask(video_id, path)
        try:
            spans = read_reference(coll, video_id, path, msb_dir, min_duration)
        except VideoError as exc:
            yield task, None, str(exc)
        else:
            write_msb(coll.msb_file(video_id), spans)
            yield task, spans, None


def write_shots_index(coll: Collection, videos: dict[str, Path], done: dict[str, Spans]) -> int:
    """Writes ``id.shots.txt`` from the shots of every complete video; returns the number of shots listed."""
    listed = [shot for video_id in videos if video_id in done for shot in shots_of(video_id, done[video_id])]
    atomic_write_text(coll.shots_file, format_shots_index(listed))
    return len(listed)


def _prepare_output(
    coll: Collection, manifest: dict[str, Any], overwrite: bool, owned: set[str] | None
) -> dict[str, Spans]:
    """Checks ``ShotData/`` against the manifest; returns the shots already complete there.

    With ``overwrite`` the old ``.msb`` files are removed first (a shard's only: ``owned``), so that an
    interrupted run never mixes them with new ones.

    Raises:
        OutputExistsError: ShotData was made with other settings and ``overwrite`` is false.
    """
    directory = coll.shot_data_dir
    directory.mkdir(parents=True, exist_ok=True)
    if owned is None:
        clean_stale_temps(directory)
    existing = read_manifest(directory)
    comparable = {k: v for k, v in (existing or {}).items() if k not in MANIFEST_HEADER}
    same = existing is not None and comparable == manifest
    if existing is not None and not same and not overwrite:
        raise OutputExistsError(
            f"{directory} holds shots found with other settings; use --overwrite to redo them with these"
        )
    if overwrite or not same:
        for path in directory.glob("*.msb"):
            if owned is None or path.stem in owned:
                remove_path(path)
        atomic_write_text(directory / MANIFEST_NAME, manifest_text(manifest))
        return {}
    done = {}
    for path in directory.glob("*.msb"):
        try:
            done[path.stem] = read_msb(path)
        except VcfError:
            remove_path(path)  # a damaged file is redone
    return done


def read_shots(coll: Collection) -> dict[str, list[Shot]]:
    """The shots of each video from ``id.shots.txt``.

    Raises:
        CollectionError: The file does not exist.
    """
    from vcf.io.shotlist import read_shots_index

    if not coll.shots_file.is_file():
        raise CollectionError(f"{coll.shots_file} not found: run `vcf shots {coll.root}` first")
    return read_shots_index(coll.shots_file)
