"""The Ray engine: decoding and preprocessing in Ray tasks, inference in model actors, on any Ray cluster."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from vcf.errors import VcfError

# A killed or preempted worker is replaced this many times per task (and per model actor) before the run fails.
MAX_RETRIES = 3
# Seconds to wait for a Ray head's port to answer.
CONNECT_TIMEOUT = 10.0
INSTALL_HINT = "--engine ray needs Ray: pip install 'vcf[ray]'"

_started_here = False


def require_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        VcfError: Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError:
        raise VcfError(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None) -> ModuleType:
    """Connects to the Ray cluster at ``address``, or Ray's default: ``$RAY_ADDRESS``, a cluster started on
    this machine with ``ray start``, else a new local instance. A connection the caller made is kept as is.

    Raises:
        VcfError: Ray is missing or the cluster cannot be reached.
    """
    global _started_here
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address:
        _probe(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,  # the library does not print; worker logs stay in Ray's session directory
            logging_level=logging.ERROR,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "(no address given: started or found a local one)"
        raise VcfError(f"cannot connect to the Ray cluster {where}: {first_line(exc)}") from None
    _started_here = True
    return ray


def _probe(address: str) -> None:
    """Fails fast on a ``host:port`` nobody listens on (Ray itself would wait for it indefinitely)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, auto and the like: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise VcfError(f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc}") from None


def release() -> None:
    """Disconnects from Ray, or stops the local instance, if this module started the connection."""
    global _started_here
    if _started_here:
        _started_here = False
        require_ray().shutdown()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cluster_resources() -> dict[str, float]:
    return dict(require_ray().cluster_resources())


def _alive_nodes() -> int:
    return max(1, sum(1 for node in require_ray().nodes() if node.get("Alive")))


# Frames ------------------------------------------------------------------------------------------


def _run_task(function: Callable[[Any], Any], initializer: Callable[[], None] | None, task: Any) -> Any:
    """One task in a Ray worker; the task's own error is returned, not raised."""
    from vcf.run.processes import TaskFailed

    if initializer is not None:
        initializer()
    try:
        return function(task)
    except Exception as exc:  # as in the local pool: one bad unit is data, not a dead run
        return TaskFailed(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))


def run_tasks(
    function: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    timeout: float | None,
    workers: int | None,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Runs ``function`` over ``tasks`` as Ray tasks; yields ``(task, result | TaskFailed)`` as they finish.

    At most ``workers`` (default: the cluster's CPUs) videos are in flight, so a task starts about
    when it is submitted and ``timeout`` counts from then. A task whose worker dies is retried
    :data:`MAX_RETRIES` times; a task over ``timeout`` seconds is cancelled and reported.
    """
    from vcf.run.processes import TaskFailed

    ray = require_ray()
    inflight: dict[Any, tuple[Any, float]] = {}
    try:
        pending = list(reversed(tasks))
        if not pending:
            return
        window = workers or max(1, int(cluster_resources().get("CPU", 1)))
        remote = ray.remote(_run_task).options(num_cpus=1, max_retries=MAX_RETRIES)
        while pending or inflight:
            while pending and len(inflight) < window:
                task = pending.pop()
                inflight[remote.remote(function, initializer, task)] = (task, time.monotonic())
            wait_for = None
            if timeout is not None:
                oldest = min(started for _, started in inflight.values())
                wait_for = max(0.0, oldest + timeout - time.monotonic())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_for)
            for ref in ready:
                task, _ = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    outcome = TaskFailed(
                        f"decoder process died {MAX_RETRIES + 1} times ({type(exc).__name__}: {first_line(exc)})"
                    )
                yield task, outcome
            if timeout is not None:
                now = time.monotonic()
                for ref, (task, started) in list(inflight.items()):
                    if now - started > timeout:
                        del inflight[ref]
                        ray.cancel(ref, force=True)
                        yield task, TaskFailed(f"timed out after {timeout:g} s (decoder hung)")
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)


# Features ----------------------------------------------------------------------------------------


def resolve_cluster_device(device: str, precision: str, address: str | None) -> tuple[Any, str]:
    """Where the model actors run and with which precision, decided by the cluster rather than this machine.

    ``auto`` means GPUs when the cluster has any, else CPUs; the precision is resolved on a node of
    that kind (``auto``: bf16 on GPUs that support it, fp16 on older ones, as locally).

    Returns:
        ``(torch.device("cuda" or "cpu"), precision)``.

    Raises:
        VcfError: A device index was given (Ray assigns the GPUs), or ``cuda`` on a cluster without GPU.
    """
    import torch

    from vcf.models.inference import resolve_precision

    if device not in ("auto", "cpu", "cuda"):
        raise VcfError(f"--device {device}: with --engine ray use auto, cpu or cuda; Ray gives each model actor a GPU")
    ray = connect(address)
    gpus = cluster_resources().get("GPU", 0)
    if device == "cpu" or (device == "auto" and not gpus):
        cpu = torch.device("cpu")
        return cpu, resolve_precision(precision, cpu)
    if not gpus:
        raise VcfError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    probe = ray.remote(_gpu_precision).options(num_gpus=1, num_cpus=0, max_retries=MAX_RETRIES)
    try:
        return torch.device("cuda"), ray.get(probe.remote(precision))
    except ray.exceptions.RayError as exc:
        raise VcfError(f"cannot resolve --precision {precision} on a GPU node: {first_line(exc)}") from None


def _gpu_precision(precision: str) -> str:
    import torch

    from vcf.models.inference import resolve_precision

    return resolve_precision(precision, torch.device("cuda"))


def _preprocess_batch(paths: list[str], indices: list[int], transform: Any) -> tuple[list[int], Any, list]:
    """Reads and preprocesses one batch in a Ray task: (kept indices, uint8 array or None, failures)."""
    import cv2
    import torch

    from vcf.run.local import ImageDataset, collate

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    dataset = ImageDataset(paths, transform)
    batch = collate([dataset[j] for j in range(len(paths))])
    pixels = None if batch.pixels is None else batch.pixels.numpy()
    return [indices[j] for j in batch.indices], pixels, [(indices[j], reason) for j, reason in batch.failed]


def model_actors(device: Any, actors: int | None, normalization: Any, precision: str, channels_last: bool) -> list:
    """Starts the model actors: ``actors``, else one per GPU of the cluster, or one per node on CPUs."""
    import torch

    ray = require_ray()
    gpu = getattr(device, "type", str(device)) == "cuda"
    count = actors or (int(cluster_resources().get("GPU", 0)) if gpu else _alive_nodes()) or 1
    threads = None if gpu else torch.get_num_threads()
    actor_class = ray.remote(_ModelActor)
    return [
        actor_class.options(
            num_cpus=1,
            num_gpus=1 if gpu else 0,
            max_restarts=MAX_RETRIES,
            max_task_retries=MAX_RETRIES,
            scheduling_strategy="SPREAD",
        ).remote(normalization, "cuda" if gpu else "cpu", precision, threads, channels_last)
        for _ in range(count)
    ]


class _ModelActor:
    """Holds one model on one device (the GPU Ray gave it, or the CPU) and runs batches through it."""

    def __init__(
        self, normalization: Any, device: str, precision: str, threads: int | None, channels_last: bool = True
    ) -> None:
        self.settings = (normalization, device, precision, channels_last)
        self.threads = threads
        self.inference: Any = None

    def _load(self, model: list[Any]) -> Any:
        import ray
        import torch

        if self.inference is None:
            from vcf.models.inference import Inference

            if self.threads:
                # On the CPU a row's result depends on the number of threads: use the local engine's.
                torch.set_num_threads(self.threads)
            normalization, device, precision, channels_last = self.settings
            self.inference = Inference(
                ray.get(model[0]), normalization, torch.device(device), precision, channels_last=channels_last
            )
        return self.inference

    def infer(self, batch: tuple[list[int], Any, list], views: int, model: list[Any]) -> tuple[list[int], Any, list]:
        """Runs one preprocessed batch; ``model`` is ``[reference to the extractor]``, loaded on first use.

        The model travels by reference with every call rather than to the constructor, so that an actor
        restarted after a crash simply loads it again from the call it retries.
        """
        import torch

        inference = self._load(model)
        indices, pixels, failed = batch
        if pixels is None:
            return indices, None, failed
        # Arrays from the object store are read-only; torch wants its own copy.
        return indices, inference(torch.from_numpy(np.array(pixels)), views), failed

    def infer_items(self, batch: tuple[list[int], Any], views: int, clips: bool, model: list[Any]) -> Any:
        """Runs one batch of a video's items (see :func:`video_rows`): ``(numbers, {layer: array})``."""
        import torch

        inference = self._load(model)
        numbers, items = batch
        pixels = torch.from_numpy(np.array(items))
        if not clips:
            pixels = pixels.flatten(0, 1)  # (items, views, 3, H, W) to (items * views, 3, H, W)
        return numbers, inference(pixels, views)


def feature_batches(job: Any, batches: Sequence[list[int]], actors: int | None = None) -> Iterator[tuple[int, Any]]:
    """Computes batches of an :class:`~vcf.run.jobs.ImageJob` on Ray; yields ``(position in batches, (indices,
    {layer: array} or None, failures))``.

    Each batch is read and preprocessed by a Ray task on any CPU, then run by one of the model
    actors (one per GPU of the cluster, or one per node on CPUs). At most a few batches per actor
    are in flight, so memory stays bounded whatever the input size. Preprocessing tasks and actors
    that die are retried and restarted :data:`MAX_RETRIES` times; batches finish in any order.

    Raises:
        VcfError: A batch still fails after the retries; the chunks saved so far are kept.
    """
    paths = [str(p) for p in job.paths]
    transform = job.transform
    ray = require_ray()
    inflight: dict[Any, tuple[int, int]] = {}
    pool: list[Any] = []
    try:
        if not batches:
            return
        resources = cluster_resources()
        pool = model_actors(job.device, actors, job.normalization, job.precision, channels_last=True)
        count = len(pool)
        model = ray.put(job.extractor)
        preprocess = ray.remote(_preprocess_batch).options(num_cpus=1, max_retries=MAX_RETRIES)
        window = 2 * count + max(1, int(resources.get("CPU", 1)))
        load = [0] * count
        views = transform.views
        submitted = 0
        while submitted < len(batches) or inflight:
            while submitted < len(batches) and len(inflight) < window:
                batch = list(batches[submitted])
                pixels = preprocess.remote([paths[i] for i in batch], batch, transform)
                actor = min(range(count), key=load.__getitem__)
                inflight[pool[actor].infer.remote(pixels, views, [model])] = (submitted, actor)
                load[actor] += 1
                submitted += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                position, actor = inflight.pop(ref)
                load[actor] -= 1
                try:
                    output = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise VcfError(
                        f"Ray: batch {position} failed after {MAX_RETRIES} retries ({first_line(exc)}); "
                        "the finished chunks are saved, run the same command to resume"
                    ) from None
                yield position, output
    finally:
        for actor_handle in pool:  # kills their pending calls too
            ray.kill(actor_handle)
