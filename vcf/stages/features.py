"""The ``features`` stage: frames (or videos) to CNN features, written as resumable BigFiles."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vcf.errors import IndexFormatError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import (
    OutputLock,
    atomic_write_bytes,
    clean_stale_temps,
    die_with_parent,
    fsync_dir,
    manifest_text,
    remove_path,
    writing,
)
from vcf.io.bigfile import BigFileWriter, reusable_output
from vcf.io.collection import Collection
from vcf.io.preprocess import FrameTransform, ImageError
from vcf.models.inference import (
    Inference,
    Normalization,
    chunk_ranges,
    fixed_batches,
    resolve_device,
    resolve_precision,
)
from vcf.progress import ProgressCallback, Reporter
from vcf.run.shards import FeaturesJob, features_lock, parse_scale_out, run_features_job

DEFAULT_MODEL = "resnext101_32x48d_wsl"
DEFAULT_LAYER = "avgpool"
CHUNK_SIZE = 2048
WORK_PREFIX = ".vcf-work-"


@dataclass
class FeaturesResult:
    """What a ``features`` run did.

    Attributes:
        collection: The collection directory (None in CSV mode).
        feature_dirs: The BigFile directory written (or found up to date) for each layer.
        computed: Items computed in this run.
        reused: Items taken from an interrupted earlier run, or from an up-to-date output.
        shapes: (rows, dims) of each layer's output.
        failures: ``(item id, reason)`` of the items left out.
        failures_file: Where the failures are listed (None when there are none).
        up_to_date: True when every output already existed with the same settings.
    """

    collection: Path | None
    feature_dirs: dict[str, Path] = field(default_factory=dict)
    computed: int = 0
    reused: int = 0
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_file: Path | None = None
    up_to_date: bool = False


def feature_name(model: str, layer: str, oversample: bool) -> str:
    """The feature directory name: ``<model>,<layer>[,os]`` (``/`` in timm names becomes ``_``)."""
    return f"{model.replace('/', '_')},{layer}" + (",os" if oversample else "")


def output_dirs(coll: Collection, model: str, layers: Sequence[str], oversample: bool) -> dict[str, Path]:
    """The BigFile directory of each layer (``FeatureData`` is created)."""
    coll.feature_root.mkdir(parents=True, exist_ok=True)
    return {layer: coll.feature_dir(feature_name(model, layer, oversample)) for layer in layers}


def outputs_lock_key(outputs: dict[str, Path]) -> str:
    """One lock name per set of outputs, whichever input mode writes them."""
    return hashlib.sha1("+".join(sorted(str(p) for p in outputs.values())).encode()).hexdigest()[:12]


def pending_outputs(
    outputs: dict[str, Path], settings: dict[str, Any], oversample: bool, overwrite: bool, result: FeaturesResult
) -> dict[str, dict[str, Any]]:
    """The manifest of each layer still to compute; layers already up to date get their shape in ``result``.

    Raises:
        OutputExistsError: An output exists with other settings and ``overwrite`` is false.
    """
    pending = {}
    for layer, out_dir in outputs.items():
        manifest = {**settings, "layer": layer, "oversample": oversample, "level": "frame"}
        existing = reusable_output(out_dir, manifest, overwrite=overwrite)
        if existing is None:
            pending[layer] = manifest
        else:
            result.shapes[layer] = (existing.nr_of_images, existing.ndims)
    return pending


def _loader_context() -> Any:
    """The fork server the loader workers start from; it imports torch and OpenCV once for all of them.

    Python's default preload (``__main__``) does not take effect, so without naming the modules every
    worker imports torch anew: seconds per worker before the first batch.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "cv2", "vcf.stages.features"])
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


def _start_loader_server(workers: int | None, device: torch.device) -> None:
    """Starts the fork server now, when the run will use workers, so its imports overlap the model's loading."""
    if (default_workers(device) if workers is None else workers) > 0:
        _loader_context()
        multiprocessing.forkserver.ensure_running()


def resolve_run_device(engine: str, device: str, precision: str, ray_address: str | None) -> tuple[torch.device, str]:
    """Where the model runs and with which precision: on this machine, or on the Ray cluster's devices."""
    if engine == "ray":
        from vcf.run.ray_engine import resolve_cluster_device

        return resolve_cluster_device(device, precision, ray_address)
    torch_device = resolve_device(device)
    return torch_device, resolve_precision(precision, torch_device)


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

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(self.transform.read(self.paths[index])), None
        except ImageError as exc:
            return index, None, str(exc)
        except Exception as exc:  # any decoder surprise is one bad image, not a dead run
            return index, None, f"cannot preprocess image: {exc}"


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


def _resolve_model(model: str, layers: Sequence[str], weights: str | os.PathLike[str] | None) -> tuple[Any, Any, Any]:
    from vcf.models import build_extractor, get_model

    record = get_model(model)
    unknown = [layer for layer in layers if layer not in record.layers and layer not in ("fc", "logits")]
    if unknown:
        raise VcfError(f"model {record.name} has no layer {unknown[0]!r}; layers: {', '.join(record.layers)}")
    extractor, weights_info = build_extractor(record, list(layers), weights_path=weights)
    return record, extractor, weights_info


def features(
    collection: str | os.PathLike[str] | None = None,
    *,
    model: str | None = None,
    layers: Sequence[str] = (DEFAULT_LAYER,),
    oversample: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    shard: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    from_video: bool = False,
    csv: str | os.PathLike[str] | None = None,
    model_type: str | None = None,
    fps: float | None = None,
    every: int | None = None,
    num_frames: int | None = None,
    clip_len: int | None = None,
    clip_stride: int | None = None,
    clip_fps: float | None = None,
    l2_normalize: bool = False,
    dtype: str | None = None,
    video_timeout: float | None = None,
    fast_decode: bool = False,
    decode_on_device: bool = False,
    compile_model: bool = False,
    shots: bool = False,
    keyframe: bool = False,
    resize_backend: str = "default",
) -> FeaturesResult:
    """Computes CNN features of the frames listed in ``id.imagepath.txt``, or straight from videos.

    Writes ``FeatureData/<model>,<layer>[,os]/`` (BigFile, rows in id.imagepath.txt order) for each
    layer, with a ``manifest.json``. Work is saved in chunks as it goes: an interrupted run resumes
    where it stopped and ends with the same bytes an uninterrupted run writes. Images that cannot be
    read are left out and listed in ``features.failures.txt``.

    ``from_video`` decodes ``VideoData/`` instead, with the frame selection of ``vcf frames`` (3D models
    always read videos, as clips); ``csv`` turns the videos of a ``video_path,feature_path`` CSV into one
    ``.npy`` each. See :mod:`vcf.stages.videofeatures`.

    Args:
        collection: Collection directory, or its name under ``rootpath`` (None with ``csv``).
        model: A registry name (``vcf models`` lists them); None takes the default of ``model_type``.
        layers: Layers to write, e.g. ``avgpool`` (pooled penultimate vector) and ``fc``/``logits``.
        oversample: Average the outputs of ten crops (adds ``,os`` to the feature name).
        batch_size: Images per forward pass.
        workers: Image decoding processes; 0 decodes in this process (default: see :func:`default_workers`).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        weights: A local state_dict or checkpoint to use instead of the model's published weights.
        rootpath: Where named collections live.
        overwrite: Recompute and replace the outputs, even up-to-date ones or ones made with other settings
            (outputs whose inputs changed since are recomputed without it).
        progress: Receives ``images`` progress events.
        shard: ``K/N``: compute only shard K (from 0) of N, whole videos, into part BigFiles under
            ``FeatureData/.vcf-shards/``; :func:`vcf.merge` assembles them once all N are done.
        engine: ``local`` (this process and its loader workers) or ``ray`` (Ray tasks and model actors).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).
        from_video: Decode ``VideoData/`` instead of reading the frames of id.imagepath.txt.
        csv: A ``video_path,feature_path`` CSV to work on instead of a collection.
        model_type: ``2d`` or ``3d``: picks the default model and checks ``model``'s kind.
        fps: Videos: keep the first frame at or after each ``k/fps`` seconds (CSV default 1).
        every: Videos: keep every N-th decoded frame.
        num_frames: Videos: keep K frames spread over each video.
        clip_len: 3D models: frames per clip (default the model's).
        clip_stride: 3D models: frames between clip starts (default ``clip_len``).
        clip_fps: 3D models: frame rate the clips are decoded at (default the model's).
        l2_normalize: CSV: L2-normalise each row.
        dtype: CSV: ``float32`` (default) or ``float16``.
        video_timeout: Videos: seconds a decoder may go without output before its video fails.
        fast_decode: Frames: decode JPEGs much larger than the model input at 1/2, 1/4 or 1/8 size
            (reduced-size DCT decoding; faster, slightly different features, recorded in the manifest).
        decode_on_device: Frames, local engine: decode JPEGs with torchvision on the model's device
            (nvJPEG, batched, on CUDA), and resize and crop there; the loader workers only read files.
            Faster on GPUs; another decoder and float resizing give slightly different features
            (recorded in the manifest).
        compile_model: Frames, local engine: run the model through ``torch.compile`` (a one-time
            compilation per batch shape, then faster kernels, mostly on GPUs; recorded in the manifest).
        shots: With ``from_video``: sample inside each shot of ``id.shots.txt``, ids ``<shot_id>_<n>``.
        keyframe: With ``shots``: the middle frame of each shot only.
        resize_backend: ``default`` (torchvision's fast uint8 kernel for bilinear resizing) or ``pil``
            (the reference pipeline exactly: PIL's resize, as the published transforms do; recorded in the
            manifest). See :data:`vcf.io.preprocess.RESIZE_BACKENDS`.

    Returns:
        A FeaturesResult (in a shard run, ``feature_dirs`` are the part directories; in a CSV run a
        :class:`vcf.stages.videofeatures.CsvFeaturesResult`).

    Raises:
        VcfError: Missing index, malformed index line, unknown model or layer, weights that cannot be
            loaded, outputs made with other settings, a lock held by another run.

    Example:
        >>> vcf.features("toydata", model="efficientnet_lite0", layers=["avgpool", "fc"])  # doctest: +SKIP
    """
    from vcf.stages.videofeatures import dispatch_features

    if (fast_decode or decode_on_device) and (from_video or csv is not None):
        flag = "--fast-decode" if fast_decode else "--decode-on-device"
        raise VcfError(f"{flag} applies to JPEG frames, not to --from-video or --csv")
    if decode_on_device and (fast_decode or engine != "local"):
        raise VcfError("--decode-on-device works with the local engine and without --fast-decode")
    if compile_model and (from_video or csv is not None or engine != "local"):
        raise VcfError("--compile applies to JPEG frames with the local engine")

    shot_options = {"shots": shots, "keyframe": keyframe} if shots or keyframe else {}
    if shot_options and not from_video:
        raise VcfError("--shots applies to --from-video; frame files sampled by shot come from `vcf frames --shots`")
    # Video and CSV runs go to vcf.stages.videofeatures; a frames run gets its model name and checked options back.
    dispatched, model = dispatch_features(
        collection,
        csv=csv,
        from_video=from_video,
        model=model,
        model_type=model_type,
        layers=layers,
        oversample=oversample,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        weights=weights,
        rootpath=rootpath,
        overwrite=overwrite,
        progress=progress,
        scale_out=(shard, engine, ray_address),
        fps=fps,
        every=every,
        num_frames=num_frames,
        clip_len=clip_len,
        clip_stride=clip_stride,
        clip_fps=clip_fps,
        l2_normalize=l2_normalize,
        dtype=dtype,
        video_timeout=video_timeout,
        **shot_options,
        resize_backend=resize_backend,
    )
    if dispatched is not None:
        return dispatched
    if batch_size < 1:
        raise VcfError("--batch-size must be >= 1")
    layers = list(dict.fromkeys(layers))
    shard_spec = parse_scale_out(shard, engine, ray_address)
    coll = layout.resolve_collection(collection, rootpath)
    items = layout.read_imagepath(coll)
    if not items:
        raise VcfError(f"{coll.imagepath_file} lists no images")
    _refuse_whitespace_ids(coll.imagepath_file, [frame_id for frame_id, _ in items])
    torch_device, chosen_precision = resolve_run_device(engine, device, precision, ray_address)
    if engine == "local":
        _start_loader_server(workers, torch_device)
    record, extractor, weights_info = _resolve_model(model, layers, weights)
    pre = record.preprocess
    transform = FrameTransform(
        pre.resize,
        pre.crop,
        pre.interpolation,
        oversample,
        fast_decode=fast_decode,
        decode_device=str(torch_device) if decode_on_device else None,
        antialias=pre.antialias,
        resize_backend=resize_backend,
    )
    settings = {
        "model": record.name,
        "weights": {"source": weights_info.source, "sha256": weights_info.sha256},
        "preprocessing": {
            **transform.describe(),
            "mean": list(pre.mean),
            "std": list(pre.std),
            "value_scale": pre.value_scale,
        },
        "precision": chosen_precision,
        "batch_size": batch_size,
        "input": {
            "index": coll.imagepath_file.name,
            "sha256": hashlib.sha256(coll.imagepath_file.read_bytes()).hexdigest(),
            "count": len(items),
            "files_sha256": layout.files_digest(coll, [path for _, path in items]),  # the frames' sizes and mtimes
        },
    }
    if compile_model:  # absent otherwise, so that manifests of earlier runs still match
        settings["compiled"] = "torch.compile"
    result = FeaturesResult(collection=coll.root)
    outputs = output_dirs(coll, record.name, layers, oversample)
    result.feature_dirs = dict(outputs)
    with OutputLock(features_lock(coll, outputs_lock_key(outputs), shard_spec)):
        clean_stale_temps(coll.feature_root)
        pending = pending_outputs(outputs, settings, oversample, overwrite, result)
        if not pending:
            result.up_to_date = True
            result.reused = len(items)
            result.failures = _read_failures(coll)
            result.failures_file = coll.failures_file("features") if result.failures else None
            return result
        if shard_spec is not None or engine != "local":
            job = FeaturesJob(
                coll=coll,
                ids=[frame_id for frame_id, _ in items],
                paths=[path for _, path in items],
                settings=settings,
                layers=layers,
                oversample=oversample,
                manifests=pending,
                outputs=outputs,
                extractor=extractor,
                transform=transform,
                normalization=Normalization(tuple(pre.mean), tuple(pre.std)),
                device=torch_device,
                precision=chosen_precision,
                batch_size=batch_size,
                workers=workers,
                overwrite=overwrite,
                result=result,
                extra={"compile_model": compile_model},
            )
            return run_features_job(job, shard=shard_spec, engine=engine, ray_address=ray_address, progress=progress)

        run = ChunkedRun(
            coll.feature_root / (WORK_PREFIX + _digest({"settings": settings, "layers": layers, "os": oversample})),
            count=len(items),
            chunk_size=CHUNK_SIZE,
            settings={"settings": settings, "layers": layers, "oversample": oversample},
        )
        inference = Inference(
            extractor,
            # Registry means and stds are on the [0, 1] scale whatever the model's original value scale.
            Normalization(tuple(pre.mean), tuple(pre.std)),
            torch_device,
            chosen_precision,
            compile_model=compile_model,
        )
        dataset = ImageDataset([path for _, path in items], transform)
        ids = [frame_id for frame_id, _ in items]
        reporter = Reporter(progress)
        reporter.total("images", len(items))
        result.reused = run.done_count()
        reporter.advance("images", result.reused)
        result.computed = _run_chunks(run, dataset, ids, inference, transform, batch_size, workers, reporter)

        failures = run.failures(ids)
        for layer, manifest in pending.items():
            dims = run.write_bigfile(layer, ids, outputs[layer], {**manifest, "failures": len(failures)}, overwrite)
            result.shapes[layer] = (len(ids) - len(failures), dims)
        run.remove()
        result.failures = failures
        failures_path = coll.failures_file("features")
        layout.write_failures(failures_path, failures)
        result.failures_file = failures_path if failures else None
    return result


def _refuse_whitespace_ids(index: Path, ids: Sequence[str]) -> None:
    """Raises IndexFormatError naming the line of the first id that cannot be written to id.txt."""
    bad = next((frame_id for frame_id in ids if layout.has_whitespace(frame_id)), None)
    if bad is None:
        return
    with open(index, encoding="utf-8") as handle:
        number = next((n for n, line in enumerate(handle, start=1) if line.startswith(bad + " ")), 0)
    raise IndexFormatError(f"{index}:{number}: id {bad!r} contains whitespace; ids must be single words")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _read_failures(coll: Collection) -> list[tuple[str, str]]:
    path = coll.failures_file("features")
    if not path.is_file():
        return []
    return [tuple(line.split(" ", 1)) for line in path.read_text(encoding="utf-8").splitlines() if " " in line]  # type: ignore[misc]


# With no --workers on a small CPU, the first batches are decoded in this process and timed; when decoding
# takes more than this share of the model's time and the rest of the run is long enough to pay for
# starting the loader processes, the rest goes to loader processes (light models: decoding is the
# bottleneck; heavy ones: decoding between batches is the faster schedule).
PROBE_BATCHES = 3
LOADER_SWITCH_SHARE = 0.15
LOADER_SWITCH_MIN_SECONDS = 120.0


def _make_loader(dataset: Dataset, batches: list[list[int]], workers: int, device: torch.device) -> DataLoader:
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
    dataset: Dataset,
    batches: list[list[int]],
    workers: int | None,
    device: torch.device,
    model_seconds: list[float],
) -> Iterator[Batch]:
    """The batches, from the loader the run should use; ``model_seconds`` receives the model's time per batch.

    With ``workers`` given (or a device that gets loader processes by default) this is one loader. Else
    the first :data:`PROBE_BATCHES` are decoded here and timed against the model, and the rest is handed
    to one loader process per core when decoding is the larger cost (see :data:`LOADER_SWITCH_SHARE`).
    The batches are the same either way, so the features are too.
    """
    chosen = default_workers(device) if workers is None else workers
    if workers is not None or chosen > 0 or len(batches) <= PROBE_BATCHES:
        yield from _make_loader(dataset, batches, chosen, device)
        return
    decode_seconds = 0.0
    probe = iter(_make_loader(dataset, batches[:PROBE_BATCHES], 0, device))
    while True:
        started = time.perf_counter()
        batch = next(probe, None)
        decode_seconds += time.perf_counter() - started
        if batch is None:
            break
        yield batch
    model = sum(model_seconds)
    per_batch = (decode_seconds + model) / PROBE_BATCHES
    rest = batches[PROBE_BATCHES:]
    cores = os.cpu_count() or 1
    light = model > 0 and decode_seconds > LOADER_SWITCH_SHARE * model
    yield from _make_loader(
        dataset, rest, cores if light and per_batch * len(rest) >= LOADER_SWITCH_MIN_SECONDS else 0, device
    )


def _run_chunks(
    run: ChunkedRun,
    dataset: Dataset,
    ids: Sequence[str],
    inference: Inference,
    transform: FrameTransform,
    batch_size: int,
    workers: int | None,
    reporter: Reporter,
) -> int:
    """Computes every chunk not saved yet; returns the number of items computed."""
    todo = [c for c in range(len(run.chunks)) if not run.is_done(c)]
    if not todo:
        return 0
    batches = [b for b in fixed_batches(run.count, batch_size, run.chunk_size) if b[0] // run.chunk_size in todo]
    model_seconds: list[float] = []
    computed = 0
    buffer = ChunkBuffer()
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending_write: Future[None] | None = None
        for batch in _timed_batches(dataset, batches, workers, inference.device, model_seconds):
            started = time.perf_counter()
            indices, outputs, failed = compute_batch(batch, inference, transform)
            model_seconds.append(time.perf_counter() - started)
            if outputs is not None:
                buffer.add(indices, outputs)
            buffer.failed.extend(failed)
            size = len(indices) + len(failed)
            computed += size
            reporter.advance("images", size)
            last = indices + [i for i, _ in failed]
            chunk = max(last) // run.chunk_size
            if max(last) + 1 == run.chunks[chunk].stop:
                if pending_write is not None:
                    pending_write.result()
                pending_write = writer.submit(run.save_chunk, chunk, buffer, ids)
                buffer = ChunkBuffer()
        if pending_write is not None:
            pending_write.result()
    return computed


@dataclass
class ChunkBuffer:
    """Outputs of one chunk while it is being computed."""

    indices: list[int] = field(default_factory=list)
    layers: dict[str, list[np.ndarray]] = field(default_factory=dict)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def add(self, indices: list[int], outputs: dict[str, np.ndarray]) -> None:
        self.indices.extend(indices)
        for layer, value in outputs.items():
            self.layers.setdefault(layer, []).append(value)


class ChunkedRun:
    """The work directory of one run: finished chunks saved as files, so a rerun continues after them.

    A chunk is a fixed range of input rows. Its file ``chunk-<k>.npz`` (ids, failures, one array per
    layer) appears, by rename, only once complete; the work directory is removed after the final
    BigFiles are written.
    """

    def __init__(self, directory: Path, *, count: int, chunk_size: int, settings: dict[str, Any]) -> None:
        self.directory = directory
        self.count = count
        self.chunk_size = chunk_size
        self.chunks = chunk_ranges(count, chunk_size)
        settings_file = directory / "settings.json"
        text = json.dumps(settings, sort_keys=True, indent=1)
        if directory.is_dir() and (not settings_file.is_file() or settings_file.read_text() != text):
            remove_path(directory)  # made by another version or settings: not resumable
        directory.mkdir(parents=True, exist_ok=True)
        if not settings_file.is_file():
            atomic_write_bytes(settings_file, text.encode())

    def _path(self, chunk: int) -> Path:
        return self.directory / f"chunk-{chunk:06d}.npz"

    def is_done(self, chunk: int) -> bool:
        return self._path(chunk).is_file()

    def done_count(self) -> int:
        return sum(len(r) for c, r in enumerate(self.chunks) if self.is_done(c))

    def save_chunk(self, chunk: int, buffer: ChunkBuffer, ids: Sequence[str]) -> None:
        arrays = {f"layer:{k}": np.concatenate(v).astype(np.float32, copy=False) for k, v in buffer.layers.items()}
        arrays["indices"] = np.asarray(buffer.indices, dtype=np.int64)
        arrays["failed_indices"] = np.asarray([i for i, _ in buffer.failed], dtype=np.int64)
        arrays["failed_reasons"] = np.asarray([r for _, r in buffer.failed], dtype=np.str_)
        tmp = self.directory / f".chunk-{chunk:06d}.tmp"
        with writing(self._path(chunk)):
            try:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **arrays)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self._path(chunk))
            except BaseException:
                remove_path(tmp)  # a partial chunk only takes space a full disk needs
                raise
        fsync_dir(self.directory)

    def _load(self, chunk: int) -> Any:
        return np.load(self._path(chunk), allow_pickle=False)

    def failures(self, ids: Sequence[str]) -> list[tuple[str, str]]:
        found = []
        for chunk in range(len(self.chunks)):
            data = self._load(chunk)
            pairs = zip(data["failed_indices"], data["failed_reasons"], strict=True)
            found.extend((ids[int(i)], str(r)) for i, r in pairs)
        return found

    def write_bigfile(self, layer: str, ids: Sequence[str], out_dir: Path, manifest: dict, overwrite: bool) -> int:
        """Assembles the chunks' rows of ``layer`` into a BigFile; returns its dims."""
        writer: BigFileWriter | None = None
        try:
            for chunk in range(len(self.chunks)):
                data = self._load(chunk)
                key = f"layer:{layer}"
                if key not in data.files:
                    continue
                array = data[key]
                if writer is None:
                    writer = BigFileWriter(out_dir, array.shape[1], overwrite=overwrite, manifest=manifest)
                writer.append([ids[int(i)] for i in data["indices"]], array)
            if writer is None:
                raise VcfError(f"no image could be read, nothing to write to {out_dir}; see features.failures.txt")
            writer.close()
            return writer.dim
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def iter_feature_names(model: str, layers: Sequence[str], oversample: bool) -> Iterator[str]:
    """The feature directory names a run writes."""
    for layer in layers:
        yield feature_name(model, layer, oversample)


__all__ = ["FeaturesResult", "feature_name", "features", "manifest_text"]


# `vcf.features(...)` stays a call of the stage function once this module is imported.
