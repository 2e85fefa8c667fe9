"""Features straight from videos: a CSV of videos to .npy files, or a collection's VideoData to BigFiles; 2D and 3D."""

from __future__ import annotations

import contextlib
import csv as csvlib
import hashlib
import io
import json
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

from vcf.errors import IndexFormatError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import (
    OutputLock,
    atomic_write_bytes,
    atomic_write_text,
    clean_stale_temps,
    die_with_parent,
    is_output_error,
    remove_path,
    write_manifests_beside,
    writing,
)
from vcf.io.bigfile import BigFileWriter
from vcf.io.collection import Collection
from vcf.io.preprocess import FrameTransform, resize_without_antialias
from vcf.io.shotlist import CollectionShots
from vcf.io.video import VideoError, decode_selected
from vcf.models.inference import Inference, Normalization
from vcf.progress import ProgressCallback, Reporter
from vcf.run.shards import (
    Shard,
    assign_videos,
    feature_part_dir,
    feature_shard_root,
    features_lock,
    finished_part,
    owned_rows,
    parse_scale_out,
    part_matches,
    shard_failures_file,
    write_empty_part,
)
from vcf.sampling import Sampling
from vcf.stages.features import (
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    WORK_PREFIX,
    FeaturesResult,
    _digest,
    _read_failures,
    _resolve_model,
    output_dirs,
    outputs_lock_key,
    pending_outputs,
    resolve_run_device,
)
from vcf.stages.frames import _discover

# r2plus1d_18 is the best of torchvision's Kinetics-400 ResNet-18 video models and downloads like any other
# model; Hara's resnext101_3d_kinetics (the older tools' 3D model) needs its checkpoint passed with --weights.
DEFAULT_3D_MODEL = "r2plus1d_18"
DEFAULT_CSV_FPS = 1.0
DTYPES = ("float32", "float16")
CSV_COLUMNS = ("video_path", "feature_path")
# Finished videos are saved in parts of about this many rows (or after PART_SECONDS), the unit of resumption.
PART_ROWS = 2048
PART_VIDEOS = 512
PART_SECONDS = 120.0
# A decoder sends its items in messages of at most a batch or this many bytes, whichever comes first.
MESSAGE_BYTES = 16 << 20


def default_model(model_type: str | None) -> str:
    """The model used when only ``--type`` is given: ``2d`` the features default, ``3d`` r2plus1d_18."""
    if model_type in (None, "2d"):
        return DEFAULT_MODEL
    if model_type == "3d":
        return DEFAULT_3D_MODEL
    raise VcfError(f"unknown --type {model_type!r}; use 2d or 3d")


def resolve_model_name(model: str | None, model_type: str | None) -> str:
    """The model to use from ``--model`` and ``--type`` (the type picks a default and must match the model).

    Raises:
        VcfError: Unknown type, or a model of the other kind.
    """
    if model is None:
        return default_model(model_type)
    default_model(model_type)  # validates the type
    if model_type is not None:
        from vcf.models import get_model

        kind = get_model(model).kind
        if kind != model_type:
            raise VcfError(f"--model {model} is a {kind} model but --type {model_type} was given")
    return model


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClipSettings:
    """How a 3D model's clips are cut from the decoded frames.

    Attributes:
        clip_len: Frames per clip.
        clip_stride: Frames between the first frames of consecutive clips (``clip_len``: no overlap).
        clip_fps: Frame rate the frames are decoded at (time-based selection); None keeps every frame.
    """

    clip_len: int
    clip_stride: int
    clip_fps: float | None

    def sampling(self) -> Sampling:
        """The frame selection that feeds the clips."""
        return Sampling(fps=self.clip_fps) if self.clip_fps is not None else Sampling(every=1)

    def as_dict(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "clip_stride": self.clip_stride, "clip_fps": self.clip_fps}


def clip_settings(
    record: Any, clip_len: int | None = None, clip_stride: int | None = None, clip_fps: float | None = None
) -> ClipSettings | None:
    """The clip settings of a 3D model (model defaults for what is not given); None for a 2D model.

    Raises:
        VcfError: Clip options for a 2D model, or values out of range.
    """
    if record.kind != "3d":
        options = (("--clip-len", clip_len), ("--clip-stride", clip_stride), ("--clip-fps", clip_fps))
        given = [flag for flag, value in options if value is not None]
        if given:
            raise VcfError(f"{given[0]} is for 3D models; {record.name} is a 2D model")
        return None
    length = int(clip_len) if clip_len is not None else int(record.clip_len)
    if length < 1:
        raise VcfError("--clip-len must be >= 1")
    if record.fixed_input_size and length != record.clip_len:
        raise VcfError(f"{record.name} only accepts clips of {record.clip_len} frames")
    stride = int(clip_stride) if clip_stride is not None else length
    if stride < 1:
        raise VcfError("--clip-stride must be >= 1")
    fps = float(clip_fps) if clip_fps is not None else record.clip_fps
    if fps is not None and not fps > 0:
        raise VcfError("--clip-fps must be > 0")
    return ClipSettings(length, stride, fps)


def _sampling(
    record: Any,
    clips: ClipSettings | None,
    fps: float | None,
    every: int | None,
    num_frames: int | None,
    default_fps: float | None,
) -> Sampling:
    if clips is not None:
        given = [f for f, v in (("--fps", fps), ("--every", every), ("--num-frames", num_frames)) if v is not None]
        if given:
            raise VcfError(f"{given[0]} selects frames for 2D models; {record.name} is a 3D model, use --clip-fps")
        return clips.sampling()
    if fps is None and every is None and num_frames is None and default_fps is not None:
        return Sampling(fps=default_fps)
    return Sampling(fps=fps, every=every, num_frames=num_frames)


class ExactResizeCrop:
    """Resizes a frame to exactly (height, width), then takes the centre crop, like torchvision's video models.

    Their evaluation transform resizes without antialiasing, so this does too.
    """

    def __init__(self, size: tuple[int, int], crop: int, interpolation: str = "bilinear") -> None:
        self.size = (int(size[0]), int(size[1]))
        self.crop = crop
        self.interpolation = tvf.InterpolationMode(interpolation)
        self.views = 1

    def describe(self) -> dict[str, Any]:
        """The settings, for manifests."""
        return {
            "resize": list(self.size),
            "crop": self.crop,
            "interpolation": self.interpolation.value,
            "antialias": False,
            "ten_crop": False,
            "decoder": "opencv",
        }

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB to (1, 3, crop, crop) uint8."""
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        image = resize_without_antialias(image, self.size, self.interpolation)
        return tvf.center_crop(image, [self.crop, self.crop]).unsqueeze(0).contiguous()


@dataclass(frozen=True)
class DecodeSpec:
    """What a decoder needs to turn a video into model inputs (picklable, sent to decoder processes).

    Attributes:
        sampling: Which decoded frames are used.
        resize: Shorter side (int) or exact (height, width).
        crop: Side of the centre crop.
        interpolation: Resize filter.
        oversample: Ten crops per frame (2D only).
        clips: Clip settings (3D models), None for per-frame items.
        batch_size: Most items per message.
        antialias: False when the model's reference resizes without antialiasing.
        resize_backend: See :data:`vcf.io.preprocess.RESIZE_BACKENDS`.
    """

    sampling: Sampling
    resize: int | tuple[int, int]
    crop: int
    interpolation: str
    oversample: bool
    clips: ClipSettings | None
    batch_size: int
    antialias: bool = True
    resize_backend: str = "default"

    def transform(self) -> FrameTransform | ExactResizeCrop:
        """The per-frame transform: RGB uint8 (H, W, 3) to (views, 3, crop, crop) uint8."""
        if isinstance(self.resize, (tuple, list)):
            if self.oversample:
                raise VcfError("ten-crop oversampling needs a model resized by its shorter side")
            return ExactResizeCrop(tuple(self.resize), self.crop, self.interpolation)  # type: ignore[arg-type]
        return FrameTransform(
            self.resize,
            self.crop,
            self.interpolation,
            self.oversample,
            antialias=self.antialias,
            resize_backend=self.resize_backend,
        )


def _decode_spec(
    record: Any, sampling: Sampling, clips: ClipSettings | None, oversample: bool, batch: int, backend: str = "default"
) -> DecodeSpec:
    if clips is not None and oversample:
        raise VcfError("--oversample is for 2D models")
    pre = record.preprocess
    resize = tuple(pre.resize) if isinstance(pre.resize, (tuple, list)) else int(pre.resize)
    spec = DecodeSpec(
        sampling, resize, int(pre.crop), pre.interpolation, oversample, clips, batch, pre.antialias, backend
    )  # type: ignore[arg-type]
    spec.transform()  # refuses an unknown backend before any work starts
    return spec


def _preprocessing(record: Any, spec: DecodeSpec) -> dict[str, Any]:
    pre = record.preprocess
    return {**spec.transform().describe(), "mean": list(pre.mean), "std": list(pre.std), "value_scale": pre.value_scale}


# ------------------------------------------------------------------------------------------- decoding


def group_clips(
    frames: Iterable[tuple[int, torch.Tensor]], clip_len: int, clip_stride: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Groups consecutive (frame index, (3, H, W)) frames into (first frame index, (3, T, H, W)) clips.

    A clip starts every ``clip_stride`` frames; trailing frames that do not fill a clip are dropped, except
    that a video too short for one clip gives one, padded by repeating its last frame. Only one clip's
    frames are held at a time.
    """
    window: deque[tuple[int, int, torch.Tensor]] = deque()
    start = 0
    emitted = False
    for position, (index, frame) in enumerate(frames):
        if position < start:
            continue  # between clips, when the stride is longer than a clip
        window.append((position, index, frame))
        if len(window) == clip_len:
            yield window[0][1], torch.stack([f for _, _, f in window], dim=1)
            emitted = True
            start += clip_stride
            while window and window[0][0] < start:
                window.popleft()
    if not emitted and window:
        padded = [f for _, _, f in window] + [window[-1][2]] * (clip_len - len(window))
        yield window[0][1], torch.stack(padded, dim=1)


def decode_items(path: Path, spec: DecodeSpec) -> Iterator[tuple[int, torch.Tensor]]:
    """The model inputs of one video: ``(frame index, (views, 3, H, W))`` frames, or ``(first frame index,
    (3, T, H, W))`` clips, preprocessed uint8.

    Raises:
        VideoError: The video cannot be decoded.
    """
    sampling = spec.sampling
    if isinstance(sampling, CollectionShots):
        sampling = sampling.for_video(path.stem)  # type: ignore[assignment]
    _, frames = decode_selected(path, sampling)
    transform = spec.transform()
    pixels = ((n, transform(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))) for n, frame in frames)
    if spec.clips is None:
        yield from pixels
    else:
        yield from group_clips(((n, x[0]) for n, x in pixels), spec.clips.clip_len, spec.clips.clip_stride)


# A message from a decoder: ("items", task, (frame indices, uint8 array with one row per item)),
# ("done", task, item count), ("failed", task, reason) or ("skipped", task, None).
Message = tuple[str, int, Any]


def _video_messages(index: int, path: Path, spec: DecodeSpec) -> Iterator[Message]:
    sent = 0
    try:
        numbers: list[int] = []
        items: list[np.ndarray] = []
        size = 0
        for number, item in decode_items(path, spec):
            numbers.append(number)
            items.append(item.numpy())
            size += item.numel()
            if len(numbers) >= spec.batch_size or size >= MESSAGE_BYTES:
                yield ("items", index, (numbers, np.stack(items)))
                sent += len(numbers)
                numbers, items, size = [], [], 0
        if numbers:
            yield ("items", index, (numbers, np.stack(items)))
            sent += len(numbers)
    except VideoError as exc:
        yield ("failed", index, str(exc))
        return
    except Exception as exc:  # any decoder surprise fails one video, not the run
        yield ("failed", index, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return
    if sent == 0:
        yield ("failed", index, "no frame selected (video shorter than the sampling interval)")
        return
    yield ("done", index, sent)


def _local_messages(
    paths: Sequence[Path], spec: DecodeSpec, wanted: Callable[[int], bool] | None
) -> Generator[Message | None, None, None]:
    """Decodes in this process, one video after the other (``workers=0``)."""
    for index, path in enumerate(paths):
        if wanted is not None and not wanted(index):
            yield ("skipped", index, None)
        else:
            yield from _video_messages(index, path, spec)


def _decoder_main(connection: Connection, spec: DecodeSpec) -> None:
    """A decoder process: videos in, preprocessed items out, until told to stop."""
    die_with_parent()
    # Ctrl-C is the main process's to handle: it stops the decoders, which would otherwise each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from several decoders; the cores belong to the model and the other decoders.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, path = task
        try:
            for message in _video_messages(index, Path(path), spec):
                connection.send(message)
        except (BrokenPipeError, OSError):
            return


class _Decoder:
    def __init__(self, context: Any, spec: DecodeSpec) -> None:
        parent_end, child_end = context.Pipe()
        self.connection = parent_end
        self.process = context.Process(target=_decoder_main, args=(child_end, spec), daemon=True)
        self.process.start()
        child_end.close()
        self.task: int | None = None
        self.active = 0.0

    def submit(self, index: int, path: Path) -> None:
        self.task = index
        self.active = time.monotonic()
        self.connection.send((index, str(path)))

    def receive(self) -> Message | None:
        """The next message, or None when the process died."""
        try:
            if self.connection.poll():
                return self.connection.recv()
        except (EOFError, OSError):
            pass
        return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def _pool_messages(
    paths: Sequence[Path],
    spec: DecodeSpec,
    workers: int,
    timeout: float | None,
    wanted: Callable[[int], bool] | None,
) -> Generator[Message | None, None, None]:
    """Decodes videos in ``workers`` processes, each video in one process, handed out as decoders free up.

    Yields messages as they arrive, and None when none is ready right now (the caller may compute
    meanwhile). A decoder that dies fails its video and is replaced; one silent for ``timeout`` seconds is
    killed. Each decoder sends one message ahead at most (a pipe send blocks until it is read), so memory
    stays bounded however long the videos are.
    """
    # Not fork: a forked child inherits OpenCV's and OpenMP's thread pools in whatever state this process
    # left them. The fork server starts clean, and once it has imported this module (torch, OpenCV: seconds)
    # each decoder forks from it at once. The preload only applies if the server is not running yet.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    queue = deque(range(len(paths)))
    decoders = [_Decoder(context, spec) for _ in range(max(1, min(workers, len(paths))))]
    try:
        while True:
            for decoder in decoders:
                while decoder.task is None and queue:
                    index = queue.popleft()
                    if wanted is not None and not wanted(index):
                        yield ("skipped", index, None)
                    else:
                        decoder.submit(index, paths[index])
            busy = [d for d in decoders if d.task is not None]
            if not busy:
                return
            handles = [d.connection for d in busy] + [d.process.sentinel for d in busy]
            ready = wait(handles, timeout=0)
            if not ready:
                yield None
                left = None if timeout is None else max(0.0, min(d.active for d in busy) + timeout - time.monotonic())
                ready = wait(handles, timeout=left)
            for slot, decoder in enumerate(decoders):
                task = decoder.task
                if task is None:
                    continue
                if decoder.connection in ready or decoder.process.sentinel in ready:
                    message = decoder.receive()
                    if message is None:
                        code = decoder.process.exitcode
                        decoder.stop(kill=True)
                        decoders[slot] = _Decoder(context, spec)
                        yield ("failed", task, f"decoder process crashed (exit code {code})")
                        continue
                    decoder.active = time.monotonic()
                    if message[0] != "items":
                        decoder.task = None
                    yield message
                elif timeout is not None and time.monotonic() - decoder.active > timeout:
                    decoder.stop(kill=True)
                    decoders[slot] = _Decoder(context, spec)
                    yield ("failed", task, f"timed out: nothing decoded for {timeout:g} s (decoder hung)")
    finally:
        for decoder in decoders:
            decoder.stop(kill=decoder.task is not None)


# ------------------------------------------------------------------------------------------ inference


@dataclass
class VideoRows:
    """The features of one video: one row per frame or clip.

    Attributes:
        frames: Decoded frame index of each row (a clip's first frame).
        layers: ``{layer: float32 (rows, dims)}``.
    """

    frames: np.ndarray
    layers: dict[str, np.ndarray]


@dataclass
class _VideoState:
    received: int = 0
    computed: int = 0
    done: bool = False
    frames: list[int] = field(default_factory=list)
    layers: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def rows(self) -> VideoRows:
        return VideoRows(
            np.asarray(self.frames, dtype=np.int64),
            {layer: np.concatenate(parts).astype(np.float32, copy=False) for layer, parts in self.layers.items()},
        )


class _Pending:
    """Received items waiting for a batch, per video, in frame order."""

    def __init__(self) -> None:
        self.chunks: dict[int, deque[tuple[list[int], np.ndarray]]] = {}
        self.counts: dict[int, int] = {}

    def add(self, task: int, numbers: list[int], array: np.ndarray) -> None:
        self.chunks.setdefault(task, deque()).append((numbers, array))
        self.counts[task] = self.counts.get(task, 0) + len(numbers)

    def count(self, task: int) -> int:
        return self.counts.get(task, 0)

    def take(self, task: int, limit: int) -> tuple[list[int], np.ndarray]:
        chunks = self.chunks[task]
        numbers_taken: list[int] = []
        arrays = []
        while limit > 0 and chunks:
            numbers, array = chunks[0]
            k = min(limit, len(numbers))
            numbers_taken.extend(numbers[:k])
            arrays.append(array[:k])
            if k == len(numbers):
                chunks.popleft()
            else:
                chunks[0] = (numbers[k:], array[k:])
            limit -= k
        self.counts[task] -= len(numbers_taken)
        if not self.counts[task]:
            self.drop(task)
        return numbers_taken, arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def drop(self, task: int) -> None:
        self.chunks.pop(task, None)
        self.counts.pop(task, None)

    def tasks(self) -> list[int]:
        return list(self.chunks)


def _extract(
    messages: Generator[Message | None, None, None],
    inference: Inference,
    spec: DecodeSpec,
    reporter: Reporter,
    finish: Callable[[int, VideoRows | None, str | None], None],
) -> int:
    """Runs the model over the decoders' items; calls ``finish`` once per video.

    Batches never mix videos and always cover the same items of a video (items 0..B-1, B..2B-1, ...):
    some kernels give slightly different values for a row depending on the batch it is in, and fixed
    batches make every run, a resumed one included, write the same bytes.

    ``finish(task, rows, None)`` for a computed video, ``(task, None, reason)`` for a failed one and
    ``(task, None, None)`` for a skipped one. Returns the number of items computed.
    """
    pending = _Pending()
    states: dict[int, _VideoState] = {}
    views = 1 if spec.clips is not None else spec.transform().views
    item_task = "clips" if spec.clips is not None else "frames"
    computed = 0

    def settle(task: int) -> None:
        state = states.get(task)
        if state is not None and state.done and state.computed == state.received:
            del states[task]
            finish(task, state.rows(), None)

    def run(task: int, limit: int) -> None:
        nonlocal computed
        numbers, array = pending.take(task, limit)
        batch = torch.from_numpy(array)
        if spec.clips is None:
            batch = batch.flatten(0, 1)  # (items, views, 3, H, W) to (items * views, 3, H, W)
        outputs = inference(batch, views)
        state = states[task]
        for layer, values in outputs.items():
            state.layers.setdefault(layer, []).append(values)
        state.frames.extend(numbers)
        state.computed += len(numbers)
        computed += len(numbers)
        reporter.advance(item_task, len(numbers))

    with contextlib.closing(messages):  # stops the decoders however this ends
        for message in messages:
            if message is None:
                continue
            kind, task, payload = message
            if kind == "items":
                numbers, array = payload
                states.setdefault(task, _VideoState()).received += len(numbers)
                pending.add(task, numbers, array)
                while pending.count(task) >= spec.batch_size:
                    run(task, spec.batch_size)
            elif kind == "done":
                states.setdefault(task, _VideoState()).done = True
                if pending.count(task):
                    run(task, pending.count(task))
                settle(task)
            elif kind == "failed":
                states.pop(task, None)
                pending.drop(task)
                finish(task, None, str(payload))
            else:
                finish(task, None, None)
        for task in pending.tasks():  # only reached when a decoder ended without its "done"
            run(task, pending.count(task))
            settle(task)
    return computed


def _check_workers(workers: int | None, timeout: float | None) -> None:
    if workers is not None and workers < 0:
        raise VcfError("--workers must be >= 0")
    if timeout is not None and not timeout > 0:
        raise VcfError("--video-timeout must be > 0")


def _messages(
    paths: Sequence[Path],
    spec: DecodeSpec,
    workers: int | None,
    timeout: float | None,
    wanted: Callable[[int], bool] | None = None,
) -> Generator[Message | None, None, None]:
    _check_workers(workers, timeout)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers == 0 or not paths:
        return _local_messages(paths, spec, wanted)
    return _pool_messages(paths, spec, workers, timeout, wanted)


def _inference(record: Any, extractor: Any, device: Any, precision: str) -> Inference:
    pre = record.preprocess
    # Registry means and stds are on the [0, 1] scale whatever the model's original value scale. Inference
    # converts the model to channels_last, a 4-d memory format that 3D models' 5-d weights do not accept.
    return Inference(
        extractor, Normalization(tuple(pre.mean), tuple(pre.std)), device, precision, channels_last=record.kind == "2d"
    )


@dataclass(frozen=True)
class _Runner:
    """Where and how a video or CSV run computes: the model, its device and precision, the engine."""

    record: Any
    extractor: Any
    device: torch.device
    precision: str
    workers: int | None
    timeout: float | None
    engine: str
    ray_address: str | None

    def run(
        self,
        paths: Sequence[Path],
        spec: DecodeSpec,
        reporter: Reporter,
        finish: Callable[[int, VideoRows | None, str | None], None],
        wanted: Callable[[int], bool] | None = None,
    ) -> int:
        """Decodes and computes ``paths``; ``finish`` as for :func:`_extract`. Returns the items computed."""
        if self.engine != "ray":
            inference = _inference(self.record, self.extractor, self.device, self.precision)
            messages = _messages(paths, spec, self.workers, self.timeout, wanted)
            return _extract(messages, inference, spec, reporter, finish)
        from vcf.run.ray_engine import video_rows

        computed = 0
        item_task = "clips" if spec.clips is not None else "frames"

        def on_items(count: int) -> None:
            nonlocal computed
            computed += count
            reporter.advance(item_task, count)

        pre = self.record.preprocess
        for task, rows, reason in video_rows(
            paths,
            spec,
            extractor=self.extractor,
            normalization=Normalization(tuple(pre.mean), tuple(pre.std)),
            device=self.device,
            precision=self.precision,
            channels_last=self.record.kind == "2d",
            timeout=self.timeout,
            workers=self.workers,
            address=self.ray_address,
            wanted=wanted,
            on_items=on_items,
        ):
            finish(task, rows, reason)
        return computed


# ------------------------------------------------------------------------------------- collection mode


class _PartStore:
    """The work directory of a ``--from-video`` run: finished videos saved in parts, so a rerun skips them.

    A part is ``part-<k>.<layer>.npy`` (rows of each layer) and ``part-<k>.frames.npy`` (frame index of each
    row), committed by ``part-<k>.json`` (videos with their row ranges, failed videos), written last.
    """

    def __init__(self, directory: Path, settings: dict[str, Any], layers: Sequence[str]) -> None:
        self.directory = directory
        self.layers = list(layers)
        settings_file = directory / "settings.json"
        text = json.dumps(settings, sort_keys=True, indent=1)
        if directory.is_dir() and (not settings_file.is_file() or settings_file.read_text() != text):
            remove_path(directory)  # made by another version or settings: not resumable
        directory.mkdir(parents=True, exist_ok=True)
        if not settings_file.is_file():
            atomic_write_bytes(settings_file, text.encode())
        self.rows: dict[str, tuple[int, int, int]] = {}
        self.failed: dict[str, str] = {}
        self.next_part = 0
        for path in sorted(directory.glob("part-*.json")):
            try:
                part = int(path.stem.split("-", 1)[1])
                record = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                continue
            for video, start, stop in record["videos"]:
                self.rows[video] = (part, start, stop)
            self.failed.update(record["failed"])
            self.next_part = max(self.next_part, part + 1)
        self._buffer: list[tuple[str, VideoRows]] = []
        self._buffer_failed: dict[str, str] = {}
        self._buffer_rows = 0
        self._last_flush = time.monotonic()
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        # Row ids: ``<vid>_<n>``, or ``<shot_id>_<n>`` with --shots.
        self.frame_id: Callable[[str, int], str] = Collection.frame_id

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
        """Saves the buffered videos as one part."""
        if not self._buffer and not self._buffer_failed:
            return
        part = self.next_part
        prefix = self.directory / f"part-{part:06d}"
        videos = []
        offset = 0
        for video, rows in self._buffer:
            videos.append([video, offset, offset + len(rows.frames)])
            offset += len(rows.frames)
        arrays = {"frames": np.concatenate([r.frames for _, r in self._buffer]) if self._buffer else np.zeros(0)}
        for layer in self.layers:
            if self._buffer:
                arrays[layer] = np.concatenate([r.layers[layer] for _, r in self._buffer]).astype(np.float32)
        for name, array in arrays.items():
            handle = io.BytesIO()
            np.save(handle, array)
            atomic_write_bytes(Path(f"{prefix}.{name}.npy"), handle.getvalue())
        atomic_write_text(Path(f"{prefix}.json"), json.dumps({"videos": videos, "failed": self._buffer_failed}))
        for video, start, stop in videos:
            self.rows[video] = (part, start, stop)
        self.failed.update(self._buffer_failed)
        self.next_part += 1
        self._buffer, self._buffer_failed, self._buffer_rows = [], {}, 0
        self._last_flush = time.monotonic()

    def _array(self, part: int, name: str) -> np.ndarray:
        key = (part, name)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.directory / f"part-{part:06d}.{name}.npy", mmap_mode="r")
        return self._arrays[key]

    def write_bigfile(self, layer: str, order: Sequence[str], out_dir: Path, manifest: dict, overwrite: bool) -> int:
        """Writes the rows of ``layer`` of the videos in ``order`` (ids ``<vid>_<n>``) to a BigFile; returns dims."""
        writer: BigFileWriter | None = None
        try:
            for video in order:
                if video not in self.rows:
                    continue
                part, start, stop = self.rows[video]
                values = self._array(part, layer)[start:stop]
                frames = self._array(part, "frames")[start:stop]
                if writer is None:
                    writer = BigFileWriter(out_dir, values.shape[1], overwrite=overwrite, manifest=manifest)
                writer.append([self.frame_id(video, int(n)) for n in frames], values)
            if writer is None:
                raise VcfError(f"no video could be decoded, nothing to write to {out_dir}; see features.failures.txt")
            writer.close()
            return writer.dim
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    def write_part(self, layer: str, order: Sequence[str], part: Path, manifest: dict) -> int:
        """Writes a shard's part BigFile (see :meth:`write_bigfile`); an empty one when no video was decoded."""
        if any(video in self.rows for video in order):
            return self.write_bigfile(layer, order, part, manifest, overwrite=True)
        return write_empty_part(part, manifest)

    def remove(self) -> None:
        self._arrays.clear()
        remove_path(self.directory)


def _videos_digest(coll: Collection, videos: dict[str, Path]) -> str:
    """Identifies the videos read: ids, paths, sizes and modification times."""
    digest = hashlib.sha256()
    for video, path in videos.items():
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # e.g. a broken link: the video fails when decoded, the run goes on
            size = mtime = -1
        digest.update(f"{video}\t{path.relative_to(coll.root)}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


def features_from_videos(
    collection: str | os.PathLike[str],
    *,
    model: str | None = None,
    model_type: str | None = None,
    layers: Sequence[str] = (DEFAULT_LAYER,),
    oversample: bool = False,
    fps: float | None = None,
    every: int | None = None,
    num_frames: int | None = None,
    clip_len: int | None = None,
    clip_stride: int | None = None,
    clip_fps: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    video_timeout: float | None = None,
    shard: str | Shard | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    shots: bool = False,
    keyframe: bool = False,
    resize_backend: str = "default",
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
        collection: Collection directory, or its name under ``rootpath``.
        model: A registry name; None takes the default of ``model_type``.
        model_type: ``2d`` or ``3d``: picks the default model and checks ``model``'s kind.
        layers: Layers to write, one BigFile each.
        oversample: Average ten crops per frame (2D; adds ``,os`` to the feature name).
        fps: Keep the first frame at or after each ``k/fps`` seconds (2D).
        every: Keep every N-th decoded frame (2D).
        num_frames: Keep K frames spread over each video (2D).
        clip_len: Frames per clip (3D; default the model's).
        clip_stride: Frames between clip starts (3D; default ``clip_len``).
        clip_fps: Frame rate the clips are decoded at (3D; default the model's training rate).
        batch_size: Frames or clips per forward pass.
        workers: Decoder processes (default: CPU count; 0 decodes in this process).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        weights: A local weights file instead of the model's published weights.
        rootpath: Where named collections live.
        overwrite: Replace outputs made with other settings.
        video_timeout: Seconds a decoder may go without producing anything before its video is failed.
        shard: ``K/N``: compute only shard K (from 0) of N, whole videos balanced by file size, into part
            BigFiles under ``FeatureData/.vcf-shards/``; :func:`vcf.merge` assembles them.
        engine: ``local`` (decoder processes feed this process's model) or ``ray`` (decoding tasks feed
            model actors on a Ray cluster).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).
        progress: Receives ``videos`` and ``frames`` (or ``clips``) events.
        shots: 2D: sample inside each shot of ``id.shots.txt`` as ``vcf frames --shots`` does; ids
            ``<shot_id>_<n>``, so that ``pool`` gives one row per shot.
        keyframe: With ``shots``, the middle frame of each shot only.
        resize_backend: ``default`` or ``pil`` (see :data:`vcf.io.preprocess.RESIZE_BACKENDS`).

    Returns:
        A FeaturesResult; ``computed`` and ``reused`` count rows (in a shard run, ``feature_dirs`` are the
        part directories).

    Raises:
        VcfError: No VideoData, unknown model or layer, bad options, outputs made with other settings, a
            lock held by another run, or no video that could be decoded.

    Example:
        >>> vcf.features("toydata", from_video=True, model="efficientnet_lite0")  # doctest: +SKIP
    """
    if batch_size < 1:
        raise VcfError("--batch-size must be >= 1")
    _check_workers(workers, video_timeout)
    from vcf.models import get_model

    layers = list(dict.fromkeys(layers))
    record = get_model(resolve_model_name(model, model_type))
    clips = clip_settings(record, clip_len, clip_stride, clip_fps)
    sampling = _sampling(record, clips, fps, every, num_frames, default_fps=None)
    spec = _decode_spec(record, sampling, clips, oversample, batch_size, resize_backend)
    coll = layout.resolve_collection(collection, rootpath)
    if shots or keyframe:
        if not shots or clips is not None:
            raise VcfError("--keyframe needs --shots, and --shots samples frames for 2D models")
        from vcf.stages.shots import read_shots

        sampling = CollectionShots(sampling, read_shots(coll), keyframe)  # type: ignore[assignment]
        spec = replace(spec, sampling=sampling)
    videos, failures = _discover(coll)
    if not videos and not failures:
        raise VcfError(f"no video files in {coll.video_dir}")
    shard_spec = parse_scale_out(shard, engine, ray_address)
    torch_device, chosen_precision = resolve_run_device(engine, device, precision, ray_address)
    record, extractor, weights_info = _resolve_model(record.name, layers, weights)
    settings = {
        "model": record.name,
        "weights": {"source": weights_info.source, "sha256": weights_info.sha256},
        "preprocessing": _preprocessing(record, spec),
        "precision": chosen_precision,
        "input": {
            "source": "videos",
            "directory": coll.video_dir.name,
            "count": len(videos),
            "sha256": _videos_digest(coll, videos),
        },
        "sampling": sampling.as_dict(),
        "clips": clips.as_dict() if clips is not None else None,
    }
    result = FeaturesResult(collection=coll.root)
    outputs = output_dirs(coll, record.name, layers, oversample)
    result.feature_dirs = dict(outputs)
    failures_path = coll.failures_file("features")
    # The same lock as a frames-mode run writing these outputs.
    with OutputLock(features_lock(coll, outputs_lock_key(outputs), shard_spec)):
        if shard_spec is None:  # a shard cannot tell whether another node's pid is alive
            clean_stale_temps(coll.feature_root)
        pending = pending_outputs(outputs, settings, oversample, overwrite, result)
        if not pending:
            result.up_to_date = True
            result.reused = result.shapes[layers[0]][0]
            result.failures = _read_failures(coll)
            result.failures_file = failures_path if result.failures else None
            return result

        work = {"settings": settings, "layers": layers, "oversample": oversample}
        work_dir = coll.feature_root / (WORK_PREFIX + _digest(work))
        parts: dict[str, Path] = {}
        shard_info: dict[str, Any] = {}
        if shard_spec is not None:
            mine = assign_videos(videos, shard_spec.count)[shard_spec.index]
            videos = {video: videos[video] for video in mine}
            # Unusable file names concern the whole collection: the first shard lists them, as in frames.
            failures = failures if shard_spec.index == 0 else []
            shard_info = {"index": shard_spec.index, "count": shard_spec.count, "videos": mine}
            parts = {layer: feature_part_dir(coll, outputs[layer].name, shard_spec) for layer in pending}
            if all(part_matches(parts[layer], manifest, shard_info) for layer, manifest in pending.items()):
                return finished_part(result, parts)
            for part in parts.values():
                remove_path(part)  # a part appears only once its shard completes
            work_dir = feature_shard_root(coll) / f".work-{_digest(work)}-{shard_spec.name}"
            failures_path = shard_failures_file(coll, shard_spec)
        store = _PartStore(work_dir, work, layers)
        if isinstance(sampling, CollectionShots):
            store.frame_id = sampling.frame_id
        ids = list(videos)
        todo = [video for video in ids if not store.done(video)]
        reporter = Reporter(progress)
        reporter.total("videos", len(ids) + len(failures))
        reporter.advance("videos", len(ids) - len(todo) + len(failures))
        result.reused = store.total_rows()

        def finish(task: int, rows: VideoRows | None, reason: str | None) -> None:
            store.add(todo[task], rows, reason)
            reporter.advance("videos", 1, description=todo[task])

        runner = _Runner(record, extractor, torch_device, chosen_precision, workers, video_timeout, engine, ray_address)
        result.computed = runner.run([videos[v] for v in todo], spec, reporter, finish)
        store.flush()

        failures = sorted([*failures, *store.failed.items()])
        layout.write_failures(failures_path, failures)
        result.failures = failures
        result.failures_file = failures_path if failures else None
        for layer, manifest in pending.items():
            if shard_spec is None:
                manifest = {**manifest, "failures": len(failures)}
                dims = store.write_bigfile(layer, ids, outputs[layer], manifest, overwrite)
            else:
                manifest = {**manifest, "shard": {**shard_info, "failures": [list(f) for f in failures]}}
                dims = store.write_part(layer, ids, parts[layer], manifest)
            result.shapes[layer] = (store.total_rows(), dims)
        if parts:
            result.feature_dirs = dict(parts)
        store.remove()
    return result


# -------------------------------------------------------------------------------------------- CSV mode


@dataclass(frozen=True)
class CsvRow:
    """One video of a features CSV.

    Attributes:
        line: Line number in the CSV (1 is the header).
        video: The video file: as written when absolute, else joined to the CSV's folder (so relative to the
            current directory when the CSV's own path was relative).
        output: The .npy file to write.
    """

    line: int
    video: Path
    output: Path


@dataclass
class CsvFeaturesResult(FeaturesResult):
    """What a CSV run did; ``computed`` and ``reused`` count videos.

    Attributes:
        csv: The CSV file.
        videos: Rows of the CSV (videos), bad rows included.
        outputs: The .npy files written or found complete.
        dtype: The dtype of the .npy files.
    """

    csv: Path | None = None
    videos: int = 0
    outputs: list[Path] = field(default_factory=list)
    dtype: str = "float32"


def _item(text: str) -> str:
    """A failures-file item: no bare spaces, which separate the item from the reason."""
    return text.replace(" ", "\\ ")


def read_feature_csv(path: str | os.PathLike[str]) -> tuple[list[CsvRow], list[tuple[str, str]]]:
    """Reads a ``video_path,feature_path`` CSV.

    Blanks around fields, extra columns and blank lines are tolerated; relative paths are taken relative to
    the CSV's folder; a ``feature_path`` without the ``.npy`` suffix gets it (as ``np.save`` does).

    Returns:
        The usable rows, and ``(<csv name>:<line>, reason)`` for each bad row (an empty or missing field,
        or an output already named on an earlier line).

    Raises:
        VcfError: The file cannot be read.
        IndexFormatError: The header does not name both columns.
    """
    csv_path = Path(path).expanduser()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VcfError(f"CSV file {csv_path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VcfError(f"cannot read CSV file {csv_path}: {exc}") from None
    base = csv_path.parent
    rows: list[CsvRow] = []
    bad: list[tuple[str, str]] = []
    columns: dict[str, int] | None = None
    seen: dict[Path, int] = {}
    reader = csvlib.reader(io.StringIO(text, newline=""))
    for fields in reader:
        line = reader.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if columns is None:
            columns = {name: i for i, name in reversed(list(enumerate(fields)))}
            missing = [name for name in CSV_COLUMNS if name not in columns]
            if missing:
                raise IndexFormatError(
                    f"{csv_path}:{line}: the header must name the columns video_path and feature_path, "
                    f"got {','.join(fields)[:80]!r}"
                )
            continue
        values = {name: fields[i] if i < len(fields) else "" for name, i in columns.items() if name in CSV_COLUMNS}
        empty = [name for name in CSV_COLUMNS if not values[name]]
        if empty:
            bad.append((f"{_item(csv_path.name)}:{line}", f"no {empty[0]} on line {line}"))
            continue
        video = Path(values["video_path"]).expanduser()
        output = Path(values["feature_path"]).expanduser()
        if output.suffix != ".npy":
            output = output.with_name(output.name + ".npy")
        video, output = base / video, base / output  # an absolute right-hand side wins
        if output in seen:
            bad.append((f"{_item(csv_path.name)}:{line}", f"feature_path {output} is also on line {seen[output]}"))
            continue
        seen[output] = line
        rows.append(CsvRow(line, video, output))
    if columns is None:
        raise IndexFormatError(f"{csv_path}: empty CSV; expected the header video_path,feature_path")
    return rows, bad


def csv_failures_path(csv: str | os.PathLike[str], shard: Shard | None = None) -> Path:
    """Where a CSV run lists its failures: ``<csv stem>.failures.txt`` next to the CSV.

    Shard K of N uses ``<csv stem>.<K>-of-<N>.failures.txt``, so that shards never write the same file.
    """
    path = Path(csv).expanduser()
    if shard is not None:
        return path.with_name(f"{path.stem}.{shard.name}.failures.txt")
    return path.with_name(f"{path.stem}.failures.txt")


def _file_size(path: Path) -> float:
    try:
        return float(path.stat().st_size)
    except OSError:  # a missing video fails when decoded; it weighs nothing in the split
        return 0.0


def _bounds(rows: range) -> tuple[int, int]:
    return rows.start, rows.stop


def complete_npy(path: Path, dims: int) -> bool:
    """True when ``path`` loads as a (T, dims) array with T >= 1."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return array.ndim == 2 and array.shape[0] >= 1 and array.shape[1] == dims


def l2_normalize_rows(array: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (zero rows stay zero), in float32."""
    array = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, np.float32(1e-12))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Writes a .npy file under a temporary name then renames it (parent folders created)."""
    handle = io.BytesIO()
    np.save(handle, array, allow_pickle=False)
    with writing(path):  # creating the parent folders can fail too
        atomic_write_bytes(path, handle.getvalue())


def features_from_csv(
    csv: str | os.PathLike[str],
    *,
    model: str | None = None,
    model_type: str | None = None,
    layers: Sequence[str] = (DEFAULT_LAYER,),
    oversample: bool = False,
    fps: float | None = None,
    every: int | None = None,
    num_frames: int | None = None,
    clip_len: int | None = None,
    clip_stride: int | None = None,
    clip_fps: float | None = None,
    l2_normalize: bool = False,
    dtype: str = "float32",
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    video_timeout: float | None = None,
    shard: str | Shard | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    resize_backend: str = "default",
) -> CsvFeaturesResult:
    """Computes one ``.npy`` of shape (T, D) per video of a ``video_path,feature_path`` CSV.

    2D models: T frames, by default one a second (``fps=1``). 3D models: T clips (see
    :func:`features_from_videos`). Videos whose output already loads with D columns are skipped (checked
    again just before each video, so several runs may share one CSV); each file is written under a
    temporary name and renamed. Bad rows and videos that cannot be decoded are listed in
    ``<csv stem>.failures.txt`` next to the CSV; the other videos complete.

    Args:
        csv: The CSV file.
        model: A registry name; None takes the default of ``model_type``.
        model_type: ``2d`` or ``3d``: picks the default model and checks ``model``'s kind.
        layers: The one layer to write.
        oversample: Average ten crops per frame (2D).
        fps: Frames per second for 2D models (default 1).
        every: Keep every N-th decoded frame instead (2D).
        num_frames: Keep K frames spread over each video instead (2D).
        clip_len: Frames per clip (3D; default the model's).
        clip_stride: Frames between clip starts (3D; default ``clip_len``).
        clip_fps: Frame rate the clips are decoded at (3D; default the model's training rate).
        l2_normalize: Divide each row by its L2 norm (the older tool's default).
        dtype: ``float32`` or ``float16`` (the older tool wrote float16).
        batch_size: Frames or clips per forward pass.
        workers: Decoder processes (default: CPU count; 0 decodes in this process).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        weights: A local weights file instead of the model's published weights.
        overwrite: Recompute outputs that already exist.
        video_timeout: Seconds a decoder may go without producing anything before its video is failed.
        shard: ``K/N``: compute only shard K (from 0) of N, contiguous rows balanced by video file size. The
            shards write disjoint .npy files, so nothing needs merging; each lists its failures in
            ``<csv stem>.<K>-of-<N>.failures.txt`` (bad rows in shard 0's).
        engine: ``local`` or ``ray`` (decoding tasks feed model actors on a Ray cluster).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).
        progress: Receives ``videos`` and ``frames`` (or ``clips``) events.
        resize_backend: ``default`` or ``pil`` (see :data:`vcf.io.preprocess.RESIZE_BACKENDS`).

    Returns:
        A CsvFeaturesResult; ``computed`` and ``reused`` count videos.

    Raises:
        VcfError: Unreadable CSV or bad header, unknown model or layer, bad options.

    Example:
        >>> vcf.features(csv="input.csv", model="efficientnet_lite0", l2_normalize=True)  # doctest: +SKIP
    """
    from vcf.models import get_model

    if batch_size < 1:
        raise VcfError("--batch-size must be >= 1")
    _check_workers(workers, video_timeout)
    if dtype not in DTYPES:
        raise VcfError(f"unknown --dtype {dtype!r}; use {' or '.join(DTYPES)}")
    layers = list(dict.fromkeys(layers))
    if len(layers) != 1:
        raise VcfError(f"--csv writes one .npy per video: give one --layer, not {len(layers)}")
    record = get_model(resolve_model_name(model, model_type))
    layer = layers[0]
    dims = record.layers[record.resolve_layer(layer)]
    clips = clip_settings(record, clip_len, clip_stride, clip_fps)
    sampling = _sampling(record, clips, fps, every, num_frames, default_fps=DEFAULT_CSV_FPS)
    spec = _decode_spec(record, sampling, clips, oversample, batch_size, resize_backend)
    shard_spec = parse_scale_out(shard, engine, ray_address)
    csv_path = Path(csv).expanduser()
    rows, failures = read_feature_csv(csv_path)
    if shard_spec is not None:
        sizes = [_file_size(row.video) for row in rows]
        rows = rows[slice(*_bounds(owned_rows([str(row.output) for row in rows], shard_spec, sizes)))]
        failures = failures if shard_spec.index == 0 else []
    result = CsvFeaturesResult(collection=None, csv=csv_path, videos=len(rows) + len(failures), dtype=dtype)

    def wanted(index: int) -> bool:
        return overwrite or not complete_npy(rows[index].output, dims)

    todo = [row for index, row in enumerate(rows) if wanted(index)]
    if todo:  # the model is loaded only when there is work, and before any progress is shown
        torch_device, chosen_precision = resolve_run_device(engine, device, precision, ray_address)
        record, extractor, weights_info = _resolve_model(record.name, layers, weights)
        # What the .npy files are computed with, beside them, written first so that a killed run leaves it too.
        weights_used = {"source": weights_info.source, "sha256": weights_info.sha256}
        settings = {"model": record.name, "layer": layer, "weights": weights_used}
        extra = {"precision": chosen_precision, "dtype": dtype, "l2_normalize": l2_normalize, "csv": csv_path.name}
        sampled = {"sampling": sampling.as_dict(), "clips": clips.as_dict() if clips is not None else None}
        manifest = {**settings, "preprocessing": _preprocessing(record, spec), **extra, **sampled}
        name = csv_failures_path(csv_path, shard_spec).name.replace(".failures.txt", ".manifest.json")
        write_manifests_beside([row.output for row in rows], name, manifest)
        for folder in {row.output.parent for row in todo}:  # .npy files a killed run left half written
            clean_stale_temps(folder)
    reporter = Reporter(progress)
    reporter.total("videos", result.videos)
    reporter.advance("videos", len(rows) - len(todo) + len(failures))
    result.reused = len(rows) - len(todo)
    failed_outputs: set[Path] = set()
    if todo:

        def finish(task: int, video: VideoRows | None, reason: str | None) -> None:
            row = todo[task]
            if video is not None:
                values = video.layers[layer]
                if l2_normalize:
                    values = l2_normalize_rows(values)
                try:
                    write_npy(row.output, values.astype(dtype))
                    result.computed += 1
                except VcfError as exc:  # e.g. an output folder without write permission: this video only
                    if is_output_error(str(exc)):
                        raise  # a full or failing disk would fail every other video too; finished files stay
                    reason = str(exc)
            if reason is not None:
                failures.append((_item(str(row.video)), reason))
                failed_outputs.add(row.output)
            elif video is None:  # completed by another run meanwhile
                result.reused += 1
            reporter.advance("videos", 1, description=row.video.name)

        paths = [row.video for row in todo]
        todo_wanted = None if overwrite else (lambda index: not complete_npy(todo[index].output, dims))
        runner = _Runner(record, extractor, torch_device, chosen_precision, workers, video_timeout, engine, ray_address)
        runner.run(paths, spec, reporter, finish, todo_wanted)
    result.up_to_date = not todo and not failures
    result.outputs = [row.output for row in rows if row.output not in failed_outputs and row.output.is_file()]
    result.shapes[layer] = (len(result.outputs), dims)
    result.failures = failures
    failures_path = csv_failures_path(csv_path, shard_spec)
    layout.write_failures(failures_path, failures)
    result.failures_file = failures_path if failures else None
    return result


def dispatch_features(
    collection: str | os.PathLike[str] | None,
    *,
    csv: str | os.PathLike[str] | None,
    from_video: bool,
    model: str | None,
    model_type: str | None,
    scale_out: tuple[str | None, str, str | None],
    rootpath: str | os.PathLike[str] | None,
    l2_normalize: bool,
    dtype: str | None,
    **options: Any,
) -> tuple[FeaturesResult | None, str]:
    """Routes a :func:`vcf.stages.features.features` call: runs CSV and video runs, checks the options of a frames run.

    Args:
        collection: The collection (None with ``csv``).
        csv: The CSV of a CSV run.
        from_video: Decode the collection's videos.
        model: ``--model``, or None.
        model_type: ``--type``, or None.
        scale_out: ``(shard, engine, ray_address)`` of the call.
        rootpath: Where named collections live.
        l2_normalize: CSV runs only.
        dtype: CSV runs only.
        **options: The other keyword arguments of :func:`features_from_videos` / :func:`features_from_csv`.

    Returns:
        The result of a CSV or video run, or None for a frames run; and the model name to use.

    Raises:
        VcfError: Options that do not fit together.
    """
    video_options = ("fps", "every", "num_frames", "clip_len", "clip_stride", "clip_fps", "video_timeout")
    shard, engine, ray_address = scale_out
    if csv is not None or from_video:
        options = {**options, "shard": shard, "engine": engine, "ray_address": ray_address}
    if csv is not None:
        if collection is not None or from_video:
            raise VcfError("give a COLLECTION or --csv FILE, not both")
        result = features_from_csv(
            csv, model=model, model_type=model_type, l2_normalize=l2_normalize, dtype=dtype or "float32", **options
        )
        return result, resolve_model_name(model, model_type)
    if collection is None:
        raise VcfError("give a COLLECTION, or --csv FILE")
    csv_only = [flag for flag, value in (("--l2-normalize", l2_normalize), ("--dtype", dtype)) if value]
    if csv_only:
        raise VcfError(f"{csv_only[0]} applies to --csv runs (BigFiles hold float32)")
    name = resolve_model_name(model, model_type)
    if from_video:
        return features_from_videos(collection, model=name, rootpath=rootpath, **options), name
    from vcf.models import get_model

    if get_model(name).kind == "3d":
        raise VcfError(f"{name} is a 3D model: it reads clips from the videos; add --from-video")
    given = [key for key in video_options if options.get(key) is not None]
    if given:
        raise VcfError(f"--{given[0].replace('_', '-')} applies when decoding videos; add --from-video")
    return None, name


__all__ = [
    "DEFAULT_3D_MODEL",
    "ClipSettings",
    "CsvFeaturesResult",
    "CsvRow",
    "DecodeSpec",
    "ExactResizeCrop",
    "VideoRows",
    "clip_settings",
    "csv_failures_path",
    "decode_items",
    "default_model",
    "dispatch_features",
    "features_from_csv",
    "features_from_videos",
    "group_clips",
    "l2_normalize_rows",
    "read_feature_csv",
    "resolve_model_name",
]
