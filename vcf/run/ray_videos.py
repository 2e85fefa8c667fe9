"""The Ray engine for videos: decoding tasks stream each video's batches to model actors."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import VcfError
from vcf.run.ray_engine import MAX_RETRIES, cluster_resources, first_line, model_actors, require_ray

# Videos ------------------------------------------------------------------------------------------

# Batches a decoding task may hold ready before it waits for the run to take them (Ray's back-pressure).
DECODE_AHEAD = 2


class _VideoFailed(Exception):
    """One video's own decoding error, raised in its decoding task so that it fails that video alone."""


def _decode_batches(path: str, decode: Callable[..., Any], spec: Any) -> Iterator[tuple[list[int], np.ndarray]]:
    """A Ray generator task: one video's model inputs, ``spec.batch_size`` items at a time, in frame order.

    The batches are those of the local engine (items 0..B-1, B..2B-1, ...), so the model sees the same
    batches and writes the same bytes.
    """
    import cv2
    import torch

    from vcf.run.local import video_error_reason

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    numbers: list[int] = []
    items: list[np.ndarray] = []
    try:
        for number, item in decode(Path(path), spec):
            numbers.append(number)
            items.append(item.numpy())
            if len(numbers) == spec.batch_size:
                yield numbers, np.stack(items)
                numbers, items = [], []
    except Exception as exc:  # any decoder surprise fails one video, not the run
        raise _VideoFailed(video_error_reason(exc)) from None
    if numbers:
        yield numbers, np.stack(items)


@dataclass
class _Video:
    """A video being decoded and computed on the cluster."""

    task: int
    stream: Any  # the decoding task's ObjectRefGenerator; None once it has ended
    active: float  # when it last produced a batch (or started)
    submitted: int = 0
    results: dict[int, tuple[list[int], dict[str, np.ndarray]]] = field(default_factory=dict)
    failed: str | None = None


def video_rows(
    job: Any,
    paths: Sequence[Path],
    *,
    wanted: Callable[[int], bool] | None = None,
    on_items: Callable[[int], None] | None = None,
    actors: int | None = None,
) -> Iterator[tuple[int, Any, str | None]]:
    """Computes the videos of a :class:`~vcf.run.jobs.VideoJob` on Ray: decoding tasks stream each video's
    batches to the model actors.

    Yields, as videos finish, ``(index in paths, VideoRows, None)`` for a computed video,
    ``(index, None, reason)`` for one that failed and ``(index, None, None)`` for one ``wanted`` declined
    just before it started. At most ``workers`` (default: the cluster's CPUs) videos decode at once, each
    holding at most :data:`DECODE_AHEAD` batches ahead, and a few batches per actor are in flight: memory
    stays bounded however long the videos are. A decoding task whose worker dies is retried
    :data:`MAX_RETRIES` times (then its video fails); a video that produces nothing for ``timeout``
    seconds fails; a model actor is restarted :data:`MAX_RETRIES` times, then the run stops.

    Raises:
        VcfError: A model actor still fails after its restarts; the videos yielded so far are the caller's.
    """
    from vcf.run.jobs import VideoRows

    spec, timeout, workers = job.spec, job.timeout, job.workers
    ray = require_ray()
    pool: list[Any] = []
    videos: dict[int, _Video] = {}
    inflight: dict[Any, tuple[int, int, int]] = {}  # infer ref -> (video, batch number, actor)
    try:
        if not paths:
            return
        resources = cluster_resources()
        pool = model_actors(job.device, actors, job.normalization, job.precision, job.channels_last)
        model = ray.put(job.extractor)
        decode = ray.remote(_decode_batches).options(
            num_cpus=1, max_retries=MAX_RETRIES, _generator_backpressure_num_objects=DECODE_AHEAD
        )
        window = workers or max(1, int(resources.get("CPU", 1)))
        infer_window = 2 * len(pool) + window
        load = [0] * len(pool)
        views, clips = job.views, job.clips
        queue = list(reversed(range(len(paths))))

        def settle(video: _Video) -> Iterator[tuple[int, Any, str | None]]:
            if video.stream is not None or len(video.results) < video.submitted:
                return
            del videos[video.task]
            if video.failed is not None:
                yield video.task, None, video.failed
            elif not video.submitted:
                yield video.task, None, "no frame selected (video shorter than the sampling interval)"
            else:
                batches = [video.results[n] for n in range(video.submitted)]
                frames = np.asarray([n for numbers, _ in batches for n in numbers], dtype=np.int64)
                layers = {
                    layer: np.concatenate([outputs[layer] for _, outputs in batches]).astype(np.float32, copy=False)
                    for layer in batches[0][1]
                }
                yield video.task, VideoRows(frames, layers), None

        def fail(video: _Video, reason: str) -> None:
            if video.failed is None:
                video.failed = reason
            if video.stream is not None:
                with contextlib.suppress(Exception):
                    ray.cancel(video.stream, force=True)
                video.stream = None

        while queue or videos:
            while queue and len(videos) < window:
                task = queue.pop()
                if wanted is not None and not wanted(task):
                    yield task, None, None
                    continue
                videos[task] = _Video(task, decode.remote(str(paths[task]), job.decode, spec), time.monotonic())
            now = time.monotonic()
            streams = [v.stream for v in videos.values() if v.stream is not None]
            if len(inflight) >= infer_window:
                for video in videos.values():  # not read meanwhile: its silence is the run's, not the decoder's
                    video.active = now
                streams = []
            wait_for = None
            if timeout is not None and streams:
                oldest = min(v.active for v in videos.values() if v.stream is not None)
                wait_for = max(0.0, oldest + timeout - now)
            waitables = streams + list(inflight)
            # The batches go from the decoding tasks to the actors: this process needs none of them.
            ready = ray.wait(waitables, num_returns=1, timeout=wait_for, fetch_local=False)[0] if waitables else []
            by_stream = {id(v.stream): v for v in videos.values() if v.stream is not None}
            for item in ready:
                video = by_stream.get(id(item))
                if video is not None:
                    video.active = time.monotonic()
                    try:
                        batch = next(video.stream)
                    except StopIteration:
                        video.stream = None
                        yield from settle(video)
                        continue
                    actor = min(range(len(pool)), key=load.__getitem__)
                    ref = pool[actor].infer_items.remote(batch, views, clips, [model])
                    inflight[ref] = (video.task, video.submitted, actor)
                    load[actor] += 1
                    video.submitted += 1
                    continue
                task, number, actor = inflight.pop(item)
                load[actor] -= 1
                video = videos[task]
                try:
                    numbers, outputs = ray.get(item)
                except _VideoFailed as exc:
                    fail(video, str(exc.args[0]) if exc.args else str(exc))
                    video.results[number] = ([], {})
                except ray.exceptions.RayActorError as exc:
                    raise VcfError(
                        f"Ray: a model actor failed after {MAX_RETRIES} restarts ({first_line(exc)}); "
                        "the finished videos are saved, run the same command to resume"
                    ) from None
                except ray.exceptions.RayError as exc:
                    fail(video, f"decoder process died {MAX_RETRIES + 1} times ({type(exc).__name__})")
                    video.results[number] = ([], {})
                else:
                    video.results[number] = (numbers, outputs)
                    if video.failed is None and on_items is not None:
                        on_items(len(numbers))
                yield from settle(video)
            if timeout is not None:
                now = time.monotonic()
                for video in list(videos.values()):
                    if video.stream is not None and now - video.active > timeout:
                        fail(video, f"timed out: nothing decoded for {timeout:g} s (decoder hung)")
                        yield from settle(video)
    finally:
        for video in videos.values():
            if video.stream is not None:
                with contextlib.suppress(Exception):
                    ray.cancel(video.stream, force=True)
        for actor_handle in pool:  # kills their pending calls too
            ray.kill(actor_handle)
