"""The local engine: loader processes and isolated decoder processes feed the model in this process."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vcf.io.atomic import die_with_parent
from vcf.io.preprocess import FrameTransform, ImageError
from vcf.models.inference import Inference
from vcf.run.idle_threads import decoded_ahead
from vcf.run.jobs import BatchOutput, ImageJob, VideoJob, VideoRows
from vcf.run.processes import stream_isolated
from vcf.run.schedule import DecodeChoice, ProbeCosts, choose_decoding

# Images ------------------------------------------------------------------------------------------


def _loader_context() -> Any:
    """The fork server the loader workers start from; it imports torch and OpenCV once for all of them.

    Python's default preload (``__main__``) does not take effect, so without naming the modules every
    worker imports torch anew: seconds per worker before the first batch.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "cv2", __name__])
    return context


def default_workers(device: torch.device) -> int:
    """Loader workers when none are asked for.

    With a GPU the CPU is free for decoding: one process per core. On the CPU the model's threads
    already keep every core busy, and a decoder preempting one of them stalls the others at their next
    synchronisation: on 2 cores decoding in this process between batches measured fastest. With more
    cores a single-threaded decode between batches would leave the others idle, so a worker per 4
    cores decodes beside the model. Light models, whose decoding costs a good share of their inference,
    do better with loader processes: a run that starts with 0 switches when it measures that (see
    :func:`_timed_batches`).
    """
    cores = os.cpu_count() or 1
    if device.type != "cpu":
        return cores
    return 0 if cores <= 2 else max(1, cores // 4)


def start_loader_server(workers: int | None, device: torch.device) -> None:
    """Starts the fork server now, when the run will use workers, so its imports overlap the model's loading."""
    if (default_workers(device) if workers is None else workers) > 0:
        _loader_context()
        multiprocessing.forkserver.ensure_running()


def _worker_init(_: int) -> None:
    die_with_parent()
    # Each loader process decodes one image at a time; the cores belong to the model and the other workers.
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)


class ImageDataset(Dataset):
    """Reads and preprocesses one image per index; a bad image yields its reason instead of a tensor."""

    def __init__(self, paths: Sequence[Path], transform: FrameTransform) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        # Per image decoded in this process, its thread's CPU time (the latest ones: enough for the probe batches).
        self.cpu_seconds: deque[float] = deque(maxlen=4096)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        started = time.thread_time()
        try:
            return index, self.transform(self.transform.read(self.paths[index])), None
        except ImageError as exc:
            return index, None, str(exc)
        except Exception as exc:  # any decoder surprise is one bad image, not a dead run
            return index, None, f"cannot preprocess image: {exc}"
        finally:
            self.cpu_seconds.append(time.thread_time() - started)


@dataclass
class Batch:
    """Preprocessed images of one batch and the indices that failed.

    With on-device decoding, ``pixels`` is None and ``items`` holds each good image as its encoded
    JPEG or its crops (see :meth:`vcf.io.preprocess.FrameTransform.decode_batch`).
    """

    indices: list[int]
    pixels: torch.Tensor | None
    failed: list[tuple[int, str]]
    items: list[torch.Tensor] | None = None

    def pin_memory(self) -> Batch:
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    good = [(i, t) for i, t, _ in samples if t is not None]
    failed = [(i, reason) for i, t, reason in samples if t is None and reason is not None]
    if any(t.dim() == 1 for _, t in good):  # encoded JPEGs, decoded on the device in one call per batch
        return Batch([i for i, _ in good], None, failed, items=[t for _, t in good])
    return Batch([i for i, _ in good], torch.cat([t for _, t in good]) if good else None, failed)


def compute_batch(
    batch: Batch, inference: Inference, transform: FrameTransform
) -> tuple[list[int], dict[str, np.ndarray] | None, list[tuple[int, str]]]:
    """Runs one loader batch: ``(indices computed, {layer: rows} or None, (index, reason) of failures)``."""
    indices, pixels, failed = batch.indices, batch.pixels, list(batch.failed)
    if batch.items is not None:
        pixels, bad = transform.decode_batch(batch.items)
        if bad:
            positions = {n for n, _ in bad}
            failed += [(indices[n], reason) for n, reason in bad]
            indices = [index for n, index in enumerate(indices) if n not in positions]
    if pixels is None:
        return indices, None, failed
    return indices, inference(pixels, transform.views), failed


# With no --workers on a small CPU, the first batches are decoded in this process and timed against the model;
# vcf.run.schedule decides from that where the rest is decoded.
PROBE_BATCHES = 3


def _decoded_here(dataset: Dataset, batches: list[list[int]], threads: int) -> Iterator[Batch]:
    """The batches decoded by idle-priority threads of this process, each while the model runs the one before."""
    for samples in decoded_ahead(dataset.__getitem__, batches, threads):
        yield collate(samples)


def _make_loader(
    dataset: Dataset, batches: list[list[int]], workers: int, device: torch.device
) -> DataLoader | Iterator[Batch]:
    cores = os.cpu_count() or 1
    if workers == 0 and device.type == "cpu" and cores > 1:
        return _decoded_here(dataset, batches, cores)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        # Not fork: a forked child inherits OpenCV's and OpenMP's thread pools in whatever state the
        # parent left them, and touching them deadlocks. The fork server starts clean and forks cheaply.
        multiprocessing_context=_loader_context() if workers > 0 else None,
    )


def _timed_batches(
    dataset: ImageDataset,
    batches: list[list[int]],
    workers: int | None,
    device: torch.device,
    model_seconds: list[float],
    chosen: list[DecodeChoice],
) -> Iterator[Batch]:
    """The batches, from the loader the run should use; ``model_seconds`` receives the model's time per batch.

    With ``workers`` given (or a device that gets loader processes by default) this is one loader. Else
    the first :data:`PROBE_BATCHES` are decoded here and timed against the model, and
    :func:`vcf.run.schedule.choose_decoding` says where the rest is decoded. The batches are the same
    either way, so the features are too. ``chosen`` receives the choice.
    """
    cores = os.cpu_count() or 1
    default = default_workers(device)
    if workers is not None or default > 0:
        reason = "--workers given" if workers is not None else f"the default on {device.type} with {cores} cores"
        count = default if workers is None else workers
        chosen.append(DecodeChoice(count, reason, cores=cores))
        yield from _make_loader(dataset, batches, count, device)
        return
    wait_seconds = 0.0
    probe = iter(_make_loader(dataset, batches[:PROBE_BATCHES], 0, device))
    while True:
        started = time.perf_counter()
        batch = next(probe, None)
        wait_seconds += time.perf_counter() - started
        if batch is None:
            break
        yield batch
    probed = sum(len(b) for b in batches[:PROBE_BATCHES])
    rest = batches[PROBE_BATCHES:]
    decode_cpu = probed * sum(dataset.cpu_seconds) / max(len(dataset.cpu_seconds), 1)
    costs = ProbeCosts(decode_cpu, wait_seconds, sum(model_seconds), probed)
    choice = choose_decoding(costs, sum(len(b) for b in rest), cores)
    chosen.append(choice)
    if rest:
        yield from _make_loader(dataset, rest, choice.workers, device)


def image_batches(job: ImageJob, batches: list[list[int]]) -> Iterator[tuple[int, BatchOutput]]:
    """Computes ``batches`` of ``job`` with loader processes (or none) and the model here, in order.

    Where the images were decoded is appended to ``job.decode_choices`` (a :class:`vcf.run.schedule.DecodeChoice`).
    """
    if not batches:
        return
    inference = job.inference()
    dataset = ImageDataset(job.paths, job.transform)
    model_seconds: list[float] = []
    timed = _timed_batches(dataset, batches, job.workers, inference.device, model_seconds, job.decode_choices)
    for position, batch in enumerate(timed):
        started = time.perf_counter()
        output = compute_batch(batch, inference, job.transform)
        model_seconds.append(time.perf_counter() - started)
        yield position, output


# Videos ------------------------------------------------------------------------------------------


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
    messages: Iterable[Message],
    inference: Inference,
    job: VideoJob,
    on_items: Callable[[int], None],
    finish: Callable[[int, VideoRows | None, str | None], None],
) -> Iterator[None]:
    """Runs the model over the decoders' items; calls ``finish`` once per video, yields after each message.

    Batches never mix videos and always cover the same items of a video (items 0..B-1, B..2B-1, ...):
    some kernels give slightly different values for a row depending on the batch it is in, and fixed
    batches make every run, a resumed one included, write the same bytes.

    ``finish(task, rows, None)`` for a computed video, ``(task, None, reason)`` for a failed one and
    ``(task, None, None)`` for a skipped one.
    """
    pending = _Pending()
    states: dict[int, _VideoState] = {}
    batch_size = job.spec.batch_size

    def settle(task: int) -> None:
        state = states.get(task)
        if state is not None and state.done and state.computed == state.received:
            del states[task]
            finish(task, state.rows(), None)

    def run(task: int, limit: int) -> None:
        numbers, array = pending.take(task, limit)
        batch = torch.from_numpy(array)
        if not job.clips:
            batch = batch.flatten(0, 1)  # (items, views, 3, H, W) to (items * views, 3, H, W)
        outputs = inference(batch, job.views)
        state = states[task]
        for layer, values in outputs.items():
            state.layers.setdefault(layer, []).append(values)
        state.frames.extend(numbers)
        state.computed += len(numbers)
        on_items(len(numbers))

    for kind, task, payload in messages:
        if kind == "items":
            numbers, array = payload
            states.setdefault(task, _VideoState()).received += len(numbers)
            pending.add(task, numbers, array)
            while pending.count(task) >= batch_size:
                run(task, batch_size)
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
        yield
    for task in pending.tasks():  # only reached when a decoder ended without its "done"
        run(task, pending.count(task))
        settle(task)
    yield


# A decoder sends its items in messages of at most a batch or this many bytes, whichever comes first.
MESSAGE_BYTES = 16 << 20
# A message from a decoder: ("items", task, (frame indices, uint8 array with one row per item)),
# ("done", task, item count), ("failed", task, reason) or ("skipped", task, None).
Message = tuple[str, int, Any]


def _video_messages(task: tuple[int, Path, Callable[..., Any], Any]) -> Iterator[Message]:
    """One video's model inputs, in messages; its own decoding error fails it alone."""
    index, path, decode, spec = task
    sent = 0
    try:
        numbers: list[int] = []
        items: list[np.ndarray] = []
        size = 0
        for number, item in decode(Path(path), spec):
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
    except Exception as exc:  # any decoder surprise fails one video, not the run
        yield ("failed", index, video_error_reason(exc))
        return
    if sent == 0:
        yield ("failed", index, "no frame selected (video shorter than the sampling interval)")
        return
    yield ("done", index, sent)


def video_error_reason(exc: Exception) -> str:
    """The failure reason of a video whose decoder raised ``exc``."""
    from vcf.io.video import VideoError

    if isinstance(exc, VideoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _init_decoder() -> None:
    # Ctrl-C is the main process's to handle: it stops the decoders, which would otherwise each print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from several decoders; the cores belong to the model and the other decoders.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _messages(job: VideoJob, paths: Sequence[Path], wanted: Callable[[int], bool] | None) -> Iterator[Message]:
    """The decoders' messages: in this process (``workers=0``), else from isolated decoder processes."""
    tasks = [(index, path, job.decode, job.spec) for index, path in enumerate(paths)]
    workers = (os.cpu_count() or 1) if job.workers is None else job.workers
    if workers == 0 or not paths:
        for task in tasks:
            if wanted is not None and not wanted(task[0]):
                yield ("skipped", task[0], None)
            else:
                yield from _video_messages(task)
        return
    # Not fork: a forked child inherits OpenCV's and OpenMP's thread pools in whatever state this process
    # left them. The fork server starts clean, and once it has imported the decoding modules (torch, OpenCV:
    # seconds) each decoder forks from it at once. The preload only applies if the server is not running yet.
    for task, kind, payload in stream_isolated(
        _video_messages,
        tasks,
        workers=workers,
        timeout=job.timeout,
        initializer=_init_decoder,
        context="forkserver",
        preload=["__main__", __name__, getattr(job.decode, "__module__", __name__)],
        wanted=None if wanted is None else (lambda task: wanted(task[0])),
    ):
        if kind == "item":
            yield payload
        elif kind in ("failed", "skipped"):
            yield (kind, task[0], payload)


def video_rows(
    job: VideoJob, paths: Sequence[Path], wanted: Callable[[int], bool] | None, on_items: Callable[[int], None]
) -> Iterator[tuple[int, VideoRows | None, str | None]]:
    """Decodes and computes videos here; yields ``(index, rows, None)``, ``(index, None, reason)`` for a failed
    video and ``(index, None, None)`` for one ``wanted`` declined."""
    inference = job.inference()
    finished: deque[tuple[int, VideoRows | None, str | None]] = deque()
    messages = _messages(job, paths, wanted)
    with contextlib.closing(messages):  # stops the decoders however this ends
        for _ in _extract(messages, inference, job, on_items, lambda *outcome: finished.append(outcome)):
            while finished:
                yield finished.popleft()
    while finished:
        yield finished.popleft()
