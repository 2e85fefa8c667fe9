"""Sharded runs: a stable partition of the work by video, each shard's part, and ``merge`` into the normal outputs."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vcf.errors import OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import TMP_MARK, OutputLock, atomic_write_text, clean_stale_temps, remove_path
from vcf.io.collection import Collection
from vcf.progress import ProgressCallback, Reporter

if TYPE_CHECKING:  # torch is only loaded by the stages that need it
    import torch

    from vcf.io.preprocess import FrameTransform
    from vcf.models.inference import Normalization
    from vcf.stages.features import ChunkedRun, FeaturesResult
    from vcf.stages.frames import FrameSettings, FramesResult, VideoFrames

ENGINES = ("local", "ray")
SHARD_DIR = ".vcf-shards"
PART_RECORD = "part.json"
# Manifest fields that describe one file rather than the computation; they differ between a part and the whole.
_FILE_FIELDS = ("format", "shape", "vcf_version", "shard", "failures")
_PART_NAME = re.compile(r"^(\d+)-of-(\d+)$")

# One batch's result: indices of the rows computed, ``{layer: (rows, D)}`` (None when none could be read),
# and ``(index, reason)`` of the rows that could not be read.
BatchOutput = tuple[list[int], "dict[str, np.ndarray] | None", list[tuple[int, str]]]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; shards count from 0, like Slurm array and Kubernetes job indexes.

    Attributes:
        index: This shard, ``0 <= index < count``.
        count: The number of shards the work is split into.
    """

    index: int
    count: int

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        """Reads ``K/N`` (e.g. ``0/4`` ... ``3/4``).

        Raises:
            VcfError: Not of the form ``K/N`` with ``0 <= K < N``.
        """
        if isinstance(text, Shard):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not int(match[1]) < int(match[2]):
            raise VcfError(f"--shard must be K/N with 0 <= K < N (shards count from 0), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        """The part's directory name, ``<K>-of-<N>``."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_scale_out(shard: str | Shard | None, engine: str, ray_address: str | None) -> Shard | None:
    """Checks the ``--shard``, ``--engine`` and ``--ray-address`` options together.

    Returns:
        The shard, or None for the whole collection.

    Raises:
        VcfError: A malformed shard, an unknown engine, an address without ``--engine ray``, or
            ``--engine ray`` without Ray installed.
    """
    if engine not in ENGINES:
        raise VcfError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
    if ray_address and engine != "ray":
        raise VcfError("--ray-address needs --engine ray")
    if engine == "ray":
        from vcf.run.ray_engine import require_ray

        require_ray()
    return None if shard is None else Shard.parse(shard)


def split_balanced(weights: Sequence[float], count: int) -> list[range]:
    """Splits units, in their given order, into ``count`` contiguous ranges of about equal total weight.

    Unit ``i`` goes to the shard holding the midpoint of its weight on the cumulative scale, so the
    split depends on nothing but the weights: every machine computes the same one. Each range is
    off its ideal share by at most one unit.

    Args:
        weights: One non-negative weight per unit (e.g. a video's frames or bytes).
        count: Number of ranges.

    Returns:
        ``count`` ranges of unit positions, in order, covering every unit once (some may be empty).
    """
    weights = [max(0.0, float(w)) for w in weights]
    total = sum(weights)
    if total <= 0:  # no sizes known: balance the number of units
        weights, total = [1.0] * len(weights), float(len(weights))
    owner = []
    before = 0.0
    for weight in weights:
        owner.append(min(count - 1, int(count * (before + weight / 2) / total)) if total else 0)
        before += weight
    bounds = [0] * (count + 1)
    for k in range(count):
        bounds[k + 1] = bounds[k] + sum(1 for o in owner if o == k)
    return [range(bounds[k], bounds[k + 1]) for k in range(count)]


# Frames ------------------------------------------------------------------------------------------


def frames_part_dir(coll: Collection, shard: Shard) -> Path:
    """Where shard ``shard`` of ``vcf frames`` writes its part: ``.vcf-shards/frames/<K>-of-<N>/``."""
    return coll.shard_root / "frames" / shard.name


def assign_videos(videos: dict[str, Path], count: int) -> list[list[str]]:
    """The video ids of each of ``count`` frames shards: ids in sorted order, split by file size.

    File sizes are known before any frame is decoded and are the same seen from every node of a
    shared filesystem, so all shards of one job agree without talking to each other.
    """
    ids = sorted(videos)
    sizes = []
    for video_id in ids:
        try:
            sizes.append(float(os.path.getsize(videos[video_id])))
        except OSError:
            sizes.append(0.0)
    return [[ids[i] for i in part] for part in split_balanced(sizes, count)]


def _remove_temps_of(directory: Path, video_ids: Iterable[str]) -> None:
    # A shard cannot tell whether a pid on another node is alive; it owns its videos, so their temporaries are stale.
    wanted = set(video_ids)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name and entry.name[1:].split(TMP_MARK)[0] in wanted:
            remove_path(entry)


def run_frames_job(
    coll: Collection,
    settings: FrameSettings,
    *,
    shard: str | Shard | None,
    engine: str,
    ray_address: str | None,
    workers: int | None,
    relative_paths: bool,
    overwrite: bool,
    video_timeout: float | None,
    progress: ProgressCallback | None,
) -> FramesResult:
    """``vcf frames`` over one shard and/or on Ray (see :func:`vcf.stages.frames.frames` for the arguments).

    A shard decodes its videos into the usual frame directories, then writes its part
    (``part.json``: the frames of each of its videos, its failures); the index files are written
    by :func:`merge`. Without a shard, the index files are written at the end as usual.
    """
    from vcf.run.processes import TaskFailed, run_isolated
    from vcf.stages import frames as stage

    spec = parse_scale_out(shard, engine, ray_address)
    if engine == "ray":
        from vcf.run.ray_engine import connect

        connect(ray_address)  # before anything is shown or written: an unreachable cluster is a one-line error
    reporter = Reporter(progress)
    result = stage.FramesResult(collection=coll.root)
    part_dir = frames_part_dir(coll, spec) if spec is not None else None
    lock = part_dir.parent / f".{spec.name}.lock" if spec is not None and part_dir else coll.root / stage.LOCK_NAME
    with OutputLock(lock):
        videos, failures = stage._discover(coll)
        naming: list[tuple[str, str]] = []
        if spec is not None and part_dir is not None:
            remove_path(part_dir)  # a part appears only once its run completes
            mine = set(assign_videos(videos, spec.count)[spec.index])
            videos = {v: p for v, p in videos.items() if v in mine}
            # Unusable file names concern the whole collection: the first shard reports them, merge lists them.
            naming, failures = (failures if spec.index == 0 else []), []
        result.videos = len(videos) + len(failures) + len(naming)
        coll.image_dir.mkdir(parents=True, exist_ok=True)
        if spec is None:
            clean_stale_temps(coll.image_dir)
        else:
            _remove_temps_of(coll.image_dir, videos)

        done: dict[str, VideoFrames] = {}
        tasks = []
        conflicts: list[str] = []
        for video_id, video_path in videos.items():
            final = coll.frame_dir(video_id)
            existing = None if overwrite else stage.read_frame_meta(final)
            if existing is not None and existing.settings not in (None, settings.as_dict()):
                conflicts.append(video_id)
            elif existing is not None:
                done[video_id] = existing
            else:
                tasks.append(stage._Task(video_id, video_path, final, settings))
        if conflicts:
            raise OutputExistsError(
                f"frames of {len(conflicts)} video(s) (e.g. {coll.frame_dir(conflicts[0])}) were extracted with "
                f"other settings; use --overwrite to redo them with {settings.sampling.rule}"
            )
        result.skipped = len(done)
        reporter.total("videos", result.videos)
        reporter.advance("videos", result.skipped + len(failures) + len(naming))
        if engine == "ray":
            from vcf.run.ray_engine import run_video_tasks

            outcomes: Iterator[tuple[Any, Any]] = run_video_tasks(
                tasks, timeout=video_timeout, workers=workers, address=ray_address
            )
        else:
            outcomes = run_isolated(
                stage._extract_one,
                tasks,
                workers=workers or os.cpu_count() or 1,
                timeout=video_timeout,
                initializer=stage._init_decoder_process,
            )
        for task, outcome in outcomes:
            if isinstance(outcome, TaskFailed):
                failures.append((task.video_id, outcome.reason))
            else:
                done[task.video_id] = outcome
                result.extracted += 1
                result.frames_written += len(outcome.frames)
                reporter.advance("frames", len(outcome.frames))
            reporter.advance("videos", 1, description=task.video_id)

        if spec is None or part_dir is None:
            result.frames_total = stage._write_indexes(coll, videos, done, relative_paths)
            failures_path = coll.failures_file("frames")
        else:
            result.frames_total = sum(len(done[v].frames) for v in videos if v in done)
            failures_path = part_dir / "frames.failures.txt"
        result.failures = sorted(failures + naming)
        layout.write_failures(failures_path, result.failures)
        result.failures_file = failures_path if result.failures else None
        if spec is not None and part_dir is not None:
            record = {
                "shard": [spec.index, spec.count],
                "settings": settings.as_dict(),
                "relative_paths": relative_paths,
                "videos": sorted(videos),
                "done": {v: {**done[v].__dict__, "frames": list(done[v].frames)} for v in sorted(videos) if v in done},
                "failures": sorted(failures),
            }
            atomic_write_text(part_dir / PART_RECORD, json.dumps(record, sort_keys=True, indent=1) + "\n")
    return result


# Features ----------------------------------------------------------------------------------------


def feature_shard_root(coll: Collection) -> Path:
    """Where ``vcf features --shard`` keeps its parts and work: ``FeatureData/.vcf-shards/``."""
    return coll.feature_root / SHARD_DIR


def feature_part_dir(coll: Collection, feature: str, shard: Shard) -> Path:
    """The part BigFile of one feature written by one shard: ``FeatureData/.vcf-shards/<feature>/<K>-of-<N>/``."""
    coll.feature_dir(feature)  # validates the name
    return feature_shard_root(coll) / feature / shard.name


def features_lock(coll: Collection, lock_key: str, shard: Shard | None) -> Path:
    """The lock of a features run: one per output set, and one per shard so that shards run at once."""
    if shard is None:
        return coll.feature_root / f".vcf-features-{lock_key}.lock"
    return feature_shard_root(coll) / f".vcf-features-{lock_key}-{shard.name}.lock"


def video_key(item_id: str) -> str:
    """The video a frame id belongs to (``<vid>_<n>`` -> ``<vid>``); other ids are their own video."""
    head, _, tail = item_id.rpartition("_")
    return head if head and tail.isdigit() else item_id


def owned_rows(keys: Sequence[str], shard: Shard, weights: Sequence[float] | None = None) -> range:
    """The rows of an input list that one shard computes: whole videos, balanced by rows (or weights).

    Rows with the same key next to each other (the frames of one video) stay in one shard, and each
    shard gets one contiguous range of rows, so its batches are the single run's batches.

    Args:
        keys: One key per row, e.g. :func:`video_key` of each frame id, or each video's id.
        shard: The shard.
        weights: Cost of each row (default 1), e.g. a video's frame count when rows are videos.

    Returns:
        The shard's rows, a range of row numbers.
    """
    starts: list[int] = []
    unit_weights: list[float] = []
    for row, key in enumerate(keys):
        if row == 0 or key != keys[row - 1]:
            starts.append(row)
            unit_weights.append(0.0)
        unit_weights[-1] += 1.0 if weights is None else float(weights[row])
    units = split_balanced(unit_weights, shard.count)[shard.index]
    if not units:
        start = starts[units.start] if units.start < len(starts) else len(keys)
        return range(start, start)
    stop = starts[units.stop] if units.stop < len(starts) else len(keys)
    return range(starts[units.start], stop)


@dataclass(frozen=True)
class ChunkPlan:
    """One unit of saved work: rows kept, and the single run's batches that compute them.

    Attributes:
        rows: The rows this run keeps from the chunk.
        batches: Every batch of the single run that holds one of ``rows``, whole: on the CPU a row's
            result depends on the other rows of its batch, so only the same batches give the same bytes.
    """

    rows: range
    batches: list[list[int]]


def plan_chunks(count: int, owned: range, batch_size: int, chunk_size: int) -> list[ChunkPlan]:
    """The chunks and batches of the rows ``owned`` of a ``count``-row input (all rows: the single run's)."""
    from vcf.models.inference import chunk_ranges, fixed_batches

    by_chunk: dict[int, list[list[int]]] = {}
    for batch in fixed_batches(count, batch_size, chunk_size):
        if batch[-1] >= owned.start and batch[0] < owned.stop:
            by_chunk.setdefault(batch[0] // chunk_size, []).append(batch)
    plans = []
    for number, chunk in enumerate(chunk_ranges(count, chunk_size)):
        if number in by_chunk:
            rows = range(max(chunk.start, owned.start), min(chunk.stop, owned.stop))
            plans.append(ChunkPlan(rows, by_chunk[number]))
    return plans


@dataclass
class FeaturesJob:
    """What :func:`vcf.stages.features.features` has set up, handed to a sharded or Ray run.

    Attributes:
        coll: The collection.
        ids: Item ids, in input order.
        paths: Image paths, in input order.
        settings: The run's settings (the manifest's common part).
        layers: Layers written.
        oversample: Ten-crop averaging.
        manifests: Manifest of each layer still to compute.
        outputs: Final BigFile directory of each layer.
        extractor: The model (on the CPU).
        transform: The preprocessing.
        normalization: Applied on the device.
        device: Where the model runs (for Ray: the kind of device of the model actors).
        precision: Resolved precision.
        batch_size: Images per forward pass.
        workers: Image decoding processes of the local engine.
        overwrite: Replace outputs made with other settings.
        result: The result being filled.
    """

    coll: Collection
    ids: list[str]
    paths: list[Path]
    settings: dict[str, Any]
    layers: list[str]
    oversample: bool
    manifests: dict[str, dict[str, Any]]
    outputs: dict[str, Path]
    extractor: Any
    transform: FrameTransform
    normalization: Normalization
    device: torch.device
    precision: str
    batch_size: int
    workers: int | None
    overwrite: bool
    result: FeaturesResult
    extra: dict[str, Any] = field(default_factory=dict)


def run_features_job(
    job: FeaturesJob,
    *,
    shard: str | Shard | None,
    engine: str,
    ray_address: str | None,
    progress: ProgressCallback | None,
) -> FeaturesResult:
    """Computes the pending layers of ``job`` over one shard and/or on Ray; called with the run's lock held.

    Without a shard the final BigFiles are written as by the local engine (and the work directory is
    the local engine's, so either engine resumes the other's work). A shard writes a part BigFile per
    layer under ``FeatureData/.vcf-shards/<feature>/<K>-of-<N>/``; :func:`merge` assembles them.
    """
    from vcf.stages import features as stage

    spec = None if shard is None else Shard.parse(shard)
    coll, result, ids = job.coll, job.result, job.ids
    count = len(ids)
    owned = range(count) if spec is None else owned_rows([video_key(i) for i in ids], spec)
    plans = plan_chunks(count, owned, job.batch_size, stage.CHUNK_SIZE)
    run_settings: dict[str, Any] = {"settings": job.settings, "layers": job.layers, "oversample": job.oversample}
    digest = stage._digest({"settings": job.settings, "layers": job.layers, "os": job.oversample})
    if spec is None:
        work_dir = coll.feature_root / (stage.WORK_PREFIX + digest)
    else:
        work_dir = feature_shard_root(coll) / f".work-{digest}-{spec.name}"
        run_settings = {**run_settings, "shard": [spec.index, spec.count], "rows": [owned.start, owned.stop]}
        parts = {layer: feature_part_dir(coll, job.outputs[layer].name, spec) for layer in job.manifests}
        shard_info = _shard_info(spec, owned, count)
        if all(part_matches(parts[layer], manifest, shard_info) for layer, manifest in job.manifests.items()):
            result = finished_part(result, parts)
            result.reused = len(owned)
            return result
        for part in parts.values():
            remove_path(part)  # a part appears only once its shard completes
    run = stage.ChunkedRun(work_dir, count=count, chunk_size=stage.CHUNK_SIZE, settings=run_settings)
    run.chunks = [plan.rows for plan in plans]  # the same chunks as the single run when every row is owned

    reporter = Reporter(progress)
    reporter.total("images", len(owned))
    result.reused = run.done_count()
    reporter.advance("images", result.reused)
    todo = [number for number in range(len(plans)) if not run.is_done(number)]
    batches = [batch for number in todo for batch in plans[number].batches]
    if engine == "ray":
        from vcf.run.ray_engine import feature_batches

        outputs: Iterator[tuple[int, BatchOutput]] = feature_batches(
            [str(p) for p in job.paths],
            batches,
            transform=job.transform,
            extractor=job.extractor,
            normalization=job.normalization,
            device=job.device,
            precision=job.precision,
            address=ray_address,
        )
    else:
        outputs = _local_batches(job, batches)
    result.computed = _save_chunks(run, plans, todo, outputs, ids, reporter)

    failures = run.failures(ids)
    if spec is None:
        for layer, manifest in job.manifests.items():
            dims = run.write_bigfile(
                layer, ids, job.outputs[layer], {**manifest, "failures": len(failures)}, job.overwrite
            )
            result.shapes[layer] = (len(ids) - len(failures), dims)
        failures_path = coll.failures_file("features")
    else:
        info = {**_shard_info(spec, owned, count), "failures": [list(f) for f in failures]}
        for layer, manifest in job.manifests.items():
            part = parts[layer]
            dims = _write_part(run, layer, ids, part, {**manifest, "shard": info})
            result.shapes[layer] = (len(owned) - len(failures), dims)
        result.feature_dirs = dict(parts)
        failures_path = shard_failures_file(coll, spec)
    run.remove()
    result.failures = failures
    layout.write_failures(failures_path, failures)
    result.failures_file = failures_path if failures else None
    return result


def shard_failures_file(coll: Collection, shard: Shard) -> Path:
    """Where a features shard lists its failures: ``FeatureData/.vcf-shards/features.<K>-of-<N>.failures.txt``."""
    return feature_shard_root(coll) / f"features.{shard.name}.failures.txt"


def finished_part(result: FeaturesResult, parts: dict[str, Path]) -> FeaturesResult:
    """``result`` of a shard whose parts are complete already: their shapes and failures, from the manifests.

    ``reused`` is the rows of the parts; the caller may count otherwise.
    """
    result.feature_dirs = dict(parts)
    result.up_to_date = True
    for layer, part in parts.items():
        manifest = _read_part_manifest(part) or {}
        result.shapes[layer] = tuple(manifest.get("shape", (0, 0)))  # type: ignore[assignment]
        result.failures = [tuple(f) for f in manifest.get("shard", {}).get("failures", [])]  # type: ignore[misc]
    result.reused = next(iter(result.shapes.values()), (0, 0))[0]
    return result


def write_empty_part(part: Path, manifest: dict[str, Any]) -> int:
    """Writes the part of a shard none of whose items could be read; returns its width, 0."""
    from vcf.io.bigfile import BigFileWriter

    # Nothing to take the width from; merge skips empty parts, so any width does.
    with BigFileWriter(part, 1, overwrite=True, manifest=manifest):
        pass
    return 0


def _shard_info(spec: Shard, owned: range, count: int) -> dict[str, Any]:
    return {"index": spec.index, "count": spec.count, "rows": [owned.start, owned.stop], "input_rows": count}


def _read_part_manifest(part: Path) -> dict[str, Any] | None:
    from vcf.io.atomic import read_manifest

    return read_manifest(part) if part.is_dir() else None


def part_matches(part: Path, manifest: dict[str, Any], shard_info: dict[str, Any]) -> bool:
    """True when a complete part made with these settings and rows is already there."""
    previous = _read_part_manifest(part)
    if previous is None or not all(previous.get(k) == v for k, v in manifest.items()):
        return False
    info = previous.get("shard") or {}
    return all(info.get(k) == v for k, v in shard_info.items()) and _bigfile_ok(part)


def _bigfile_ok(directory: Path) -> bool:
    from vcf.errors import FeatureFileError
    from vcf.io.bigfile import BigFile

    try:
        BigFile(directory)
    except FeatureFileError:
        return False
    return True


def _write_part(run: ChunkedRun, layer: str, ids: Sequence[str], part: Path, manifest: dict[str, Any]) -> int:
    """Writes one shard's rows of ``layer`` as a BigFile; a shard with no readable row writes an empty one."""
    key = f"layer:{layer}"
    if any(key in run._load(number).files for number in range(len(run.chunks))):
        return run.write_bigfile(layer, ids, part, manifest, overwrite=True)
    return write_empty_part(part, manifest)


def _local_batches(job: FeaturesJob, batches: list[list[int]]) -> Iterator[tuple[int, BatchOutput]]:
    """Runs batches with the local engine's loader and model, in order."""
    from vcf.models.inference import Inference
    from vcf.stages import features as stage

    if not batches:
        return
    compile_model = bool(job.extra.get("compile_model"))
    inference = Inference(job.extractor, job.normalization, job.device, job.precision, compile_model=compile_model)
    workers = (os.cpu_count() or 1) if job.workers is None else job.workers
    loader = stage._make_loader(stage.ImageDataset(job.paths, job.transform), batches, workers, inference.device)
    for position, batch in enumerate(loader):
        yield position, stage.compute_batch(batch, inference, job.transform)


def _save_chunks(
    run: ChunkedRun,
    plans: Sequence[ChunkPlan],
    todo: Sequence[int],
    outputs: Iterable[tuple[int, BatchOutput]],
    ids: Sequence[str],
    reporter: Reporter,
) -> int:
    """Collects batch outputs (in any order) into chunks, keeps the owned rows, and saves each complete chunk."""
    from vcf.stages.features import ChunkBuffer

    where = [(number, slot) for number in todo for slot in range(len(plans[number].batches))]
    waiting: dict[int, dict[int, BatchOutput]] = {number: {} for number in todo}
    computed = 0
    for position, output in outputs:
        number, slot = where[position]
        rows = plans[number].rows
        waiting[number][slot] = output
        indices, _, failed = output
        kept = sum(1 for i in indices if i in rows) + sum(1 for i, _ in failed if i in rows)
        computed += kept
        reporter.advance("images", kept)
        if len(waiting[number]) < len(plans[number].batches):
            continue
        buffer = ChunkBuffer()
        # In batch order, as the single run concatenates them.
        for slot_number in range(len(plans[number].batches)):
            indices, values, failed = waiting[number][slot_number]
            mask = np.fromiter((i in rows for i in indices), dtype=bool, count=len(indices))
            if values is not None and mask.any():
                buffer.add(
                    [i for i, m in zip(indices, mask, strict=True) if m], {k: v[mask] for k, v in values.items()}
                )
            buffer.failed.extend((i, reason) for i, reason in failed if i in rows)
        run.save_chunk(number, buffer, ids)
        del waiting[number]
    if waiting:
        raise VcfError(f"{len(waiting)} chunk(s) of {run.directory} got no result; run the same command to resume")
    return computed


# Merge -------------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    """What :func:`merge` did.

    Attributes:
        collection: The collection directory.
        merged: For ``frames`` and each feature name merged: the number of shards.
        rows: Frames listed in id.imagepath.txt (``frames``), or rows of each merged feature.
        dims: Values per row of each merged feature.
        failures: Items listed as failed, per merged output.
        up_to_date: Features named that have no parts but whose output exists.
    """

    collection: Path
    merged: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    up_to_date: list[str] = field(default_factory=list)


def merge(
    collection: str | os.PathLike[str],
    feature: str | None = None,
    *,
    rootpath: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> MergeResult:
    """Assembles the parts of sharded runs into the normal outputs, as a single run writes them.

    Frames parts become id.imagepath.txt, id.videopath.txt, id.videometa.txt, VideoSets/,
    ImageSets/ and frames.failures.txt; the parts of a feature become its BigFile (rows in
    id.imagepath.txt order, the single run's manifest) and features.failures.txt. Each file
    appears atomically, and the parts are removed once everything is written. Nothing is written
    unless every shard of every output concerned is complete.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        feature: Merge only this feature (e.g. ``resnet50,avgpool``); default: the frames and every
            feature that has parts.
        rootpath: Where named collections live.
        progress: Receives ``rows`` events: the videos of the frames, then the rows of each feature.

    Returns:
        A MergeResult.

    Raises:
        VcfError: Nothing to merge, or shards missing, running, interrupted or made from other
            input (the message lists them and the command that completes them).

    Example:
        >>> vcf.merge("toydata", "resnet50,avgpool")  # doctest: +SKIP
    """
    coll = layout.resolve_collection(collection, rootpath)
    reporter = Reporter(progress)
    result = MergeResult(collection=coll.root)
    frames_root = coll.shard_root / "frames"
    do_frames = feature is None and _has_parts(frames_root)
    if feature is not None:
        coll.feature_dir(feature)
        names = [feature]
    else:
        root = feature_shard_root(coll)
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        names = [n for n in found if not n.startswith(".") and _has_parts(root / n)]
    if not do_frames and not names:
        raise VcfError(
            f"nothing to merge in {coll.root}: no shard parts; run `vcf frames` or `vcf features` with --shard first"
        )
    plans: list[tuple[int, Callable[[], None]]] = []
    if do_frames:
        plans.append(_prepare_frames(coll, result, reporter))
    for name in names:
        part_root = feature_shard_root(coll) / name
        if not _has_parts(part_root):
            if coll.feature_dir(name).is_dir():
                result.up_to_date.append(name)
                continue
            raise VcfError(
                f"nothing to merge for {name}: no parts under {part_root}; run `vcf features --shard K/N` first"
            )
        plans.append(_prepare_feature(coll, name, result, reporter))
    # Progress counts videos for the frames and rows for each feature.
    reporter.total("rows", sum(count for count, _ in plans))
    for _, write in plans:  # every output was checked before the first is written
        write()
    _tidy(feature_shard_root(coll))
    _tidy(coll.shard_root)
    return result


def _has_parts(root: Path) -> bool:
    return root.is_dir() and any(_PART_NAME.match(p.name) for p in root.iterdir() if p.is_dir())


def _shard_count(root: Path, what: str) -> int:
    counts = sorted({int(m[2]) for p in root.iterdir() if p.is_dir() and (m := _PART_NAME.match(p.name))})
    if len(counts) > 1:
        raise VcfError(
            f"cannot merge {what}: {root} holds parts of runs split {' and '.join(map(str, counts))} ways; "
            "remove the parts of the abandoned split"
        )
    return counts[0]


def _lock_state(locks: Iterable[Path]) -> str:
    """Why a shard has no part, from what its lock file says."""
    from vcf.stages.check import lock_owner

    state = "not run"
    for lock in locks:
        if lock_owner(lock) is not None:
            return "running"
        try:
            recorded = lock.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        state = f"interrupted (process {recorded} died)" if recorded else "failed or not finished"
    return state


def _missing_error(what: str, missing: list[str], command: str) -> VcfError:
    return VcfError(
        f"cannot merge {what}: {len(missing)} shard(s) not complete: {'; '.join(missing)}; "
        f"run `{command}` for each and merge again"
    )


def _prepare_frames(coll: Collection, result: MergeResult, reporter: Reporter) -> tuple[int, Callable[[], None]]:
    from vcf.stages import frames as stage

    root = coll.shard_root / "frames"
    count = _shard_count(root, "frames")
    videos, naming = stage._discover(coll)
    expected = assign_videos(videos, count)
    records: list[dict[str, Any]] = []
    missing: list[str] = []
    for index in range(count):
        spec = Shard(index, count)
        try:
            record = json.loads((root / spec.name / PART_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            missing.append(f"{spec} {_lock_state([root / f'.{spec.name}.lock'])}")
            continue
        if record.get("videos") != expected[index]:
            missing.append(f"{spec} was run over other videos (VideoData changed since); rerun it")
            continue
        records.append(record)
    if missing:
        raise _missing_error("frames", missing, f"vcf frames {coll.root} --shard K/{count}")
    for key in ("settings", "relative_paths"):
        if len({json.dumps(r[key], sort_keys=True) for r in records}) > 1:
            raise VcfError(f"cannot merge frames: the shards were run with different {key.replace('_', ' ')}")

    def write() -> None:
        with OutputLock(coll.root / stage.LOCK_NAME):
            done = {
                video_id: stage.VideoFrames(**{**data, "frames": tuple(data["frames"])})
                for record in records
                for video_id, data in record["done"].items()
            }
            total = stage._write_indexes(coll, videos, done, bool(records[0]["relative_paths"]))
            failures = sorted([*naming, *(tuple(f) for r in records for f in r["failures"])])
            layout.write_failures(coll.failures_file("frames"), failures)  # type: ignore[arg-type]
            reporter.advance("rows", len(videos), description="frames")
        remove_path(root)
        result.merged["frames"] = count
        result.rows["frames"] = total
        result.failures["frames"] = len(failures)

    return len(videos), write


def _prepare_feature(
    coll: Collection, name: str, result: MergeResult, reporter: Reporter
) -> tuple[int, Callable[[], None]]:
    import hashlib

    from vcf.io.bigfile import BigFile, BigFileWriter

    root = feature_shard_root(coll) / name
    count = _shard_count(root, name)
    manifests = [_read_part_manifest(root / Shard(index, count).name) for index in range(count)]
    from_videos = any(((m or {}).get("input") or {}).get("source") == "videos" for m in manifests)
    # What the parts must have been made from: the index's rows, or (--from-video) the videos of VideoData.
    if from_videos:
        from vcf.stages.frames import _discover
        from vcf.stages.videofeatures import _videos_digest

        videos, _ = _discover(coll)
        input_sha, source = _videos_digest(coll, videos), "other videos (VideoData changed since)"
        assigned = assign_videos(videos, count)
    else:
        index_bytes = coll.imagepath_file.read_bytes() if coll.imagepath_file.is_file() else b""
        lines = index_bytes.decode("utf-8").splitlines()
        ids = [i for i, _ in layout.parse_id_value_lines(coll.imagepath_file, lines)]
        input_sha, source = hashlib.sha256(index_bytes).hexdigest(), "another id.imagepath.txt"
    parts: list[tuple[BigFile, dict[str, Any]]] = []
    missing: list[str] = []
    locks = list(feature_shard_root(coll).glob(".vcf-features-*.lock"))
    for index, manifest in enumerate(manifests):
        spec = Shard(index, count)
        directory = root / spec.name
        if manifest is None or "shard" not in manifest or not _bigfile_ok(directory):
            mine = [lock for lock in locks if lock.name.endswith(f"-{spec.name}.lock")]
            missing.append(f"{spec} {_lock_state(mine)}")
            continue
        if (manifest.get("input") or {}).get("sha256") != input_sha or (
            from_videos and manifest["shard"].get("videos") != assigned[index]
        ):
            missing.append(f"{spec} was computed from {source}; rerun it")
            continue
        parts.append((BigFile(directory), manifest))
    if missing:
        raise _missing_error(name, missing, f"vcf features {coll.root} ... --shard K/{count}")
    common = [{k: v for k, v in m.items() if k not in _FILE_FIELDS} for _, m in parts]
    if any(c != common[0] for c in common):
        raise VcfError(f"cannot merge {name}: its shards were run with different settings; rerun them alike")
    failures = [tuple(f) for _, m in parts for f in m["shard"]["failures"]]
    merged_ids = [n for big, _ in parts for n in big.names]
    if from_videos:
        failures.sort()  # as a single run lists them
        failed = {f[0] for f in failures}
        order = {video: position for position, video in enumerate(videos)}
        runs = [key for key, _ in itertools.groupby(video_key(i) for i in merged_ids)]
        positions = [order.get(video, -1) for video in runs]
        if -1 in positions or positions != sorted(set(positions)) or failed & set(runs):
            raise VcfError(f"cannot merge {name}: the rows of its parts are not those of the videos; rerun them")
    else:
        ranges = [tuple(m["shard"]["rows"]) for _, m in parts]
        if ranges[0][0] != 0 or ranges[-1][1] != len(ids) or any(a[1] != b[0] for a, b in itertools.pairwise(ranges)):
            raise VcfError(f"cannot merge {name}: its shards do not cover id.imagepath.txt row by row; rerun them")
        failed = {f[0] for f in failures}
        if merged_ids != [i for i in ids if i not in failed]:
            raise VcfError(f"cannot merge {name}: the rows of its parts are not those of id.imagepath.txt; rerun them")
    filled = [big for big, _ in parts if big.nr_of_images]
    if not filled:
        raise VcfError(f"no image could be read, nothing to write to {coll.feature_dir(name)}; see the failures")
    dims = {big.ndims for big in filled}
    if len(dims) > 1:
        raise VcfError(f"cannot merge {name}: its parts have different widths {sorted(dims)}")

    def write() -> None:
        out_dir = coll.feature_dir(name)
        with BigFileWriter(out_dir, dims.pop(), overwrite=True, manifest={**common[0], "failures": len(failures)}) as w:
            for big in filled:
                for chunk_ids, array in big.iter_chunks():
                    w.append(chunk_ids, array)
                    reporter.advance("rows", len(chunk_ids), description=name)
        layout.write_failures(coll.failures_file("features"), failures)  # type: ignore[arg-type]
        remove_path(root)
        result.merged[name] = count
        result.rows[name] = len(merged_ids)
        result.dims[name] = w.dim
        result.failures[name] = len(failures)

    return len(merged_ids), write


def _tidy(root: Path) -> None:
    """Removes a shard directory once it holds only released locks and the shards' own failure lists."""
    from vcf.stages.check import lock_owner

    if not root.is_dir():
        return
    entries = list(root.iterdir())
    if any(not (e.is_file() and e.name.endswith((".lock", ".failures.txt"))) for e in entries):
        return
    if any(lock_owner(e) is not None for e in entries):
        return
    for entry in entries:
        remove_path(entry)
    with contextlib.suppress(OSError):
        root.rmdir()


__all__ = [
    "MergeResult",
    "Shard",
    "assign_videos",
    "merge",
    "owned_rows",
    "parse_scale_out",
    "plan_chunks",
    "split_balanced",
]
