"""Features of the frames listed in id.imagepath.txt: units are chunks of rows, results BigFiles (or a shard's part)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from vcf.errors import VcfError
from vcf.io import collection as layout
from vcf.io.atomic import OutputLock, clean_stale_temps, remove_path
from vcf.io.preprocess import FrameTransform
from vcf.models.compile_rule import choose_compile
from vcf.models.inference import Normalization, device_kind
from vcf.progress import ProgressCallback, Reporter
from vcf.run.engines import open_engine, parse_scale_out
from vcf.run.jobs import BatchOutput, ImageJob
from vcf.run.local import start_loader_server
from vcf.run.loop import run_units
from vcf.run.partition import ChunkPlan, owned_rows, plan_chunks, video_key
from vcf.run.store import WorkStore
from vcf.stages.outputs import (
    FeaturesResult,
    RunOptions,
    digest,
    finished_part,
    output_dirs,
    outputs_complete,
    outputs_lock_key,
    part_matches,
    pending_outputs,
    read_failures,
    refuse_whitespace_ids,
    resolve_model,
    shard_info,
)

CHUNK_SIZE = 2048
CHUNK_NAME = "chunk-{:06d}"


def features_from_images(
    collection: str | os.PathLike[str],
    run: RunOptions,
    *,
    rootpath: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    fast_decode: bool = False,
    decode_on_device: bool = False,
    compile_model: bool | None = None,
) -> FeaturesResult:
    """Computes features of the frames of ``id.imagepath.txt`` (see :func:`vcf.stages.features.features`)."""
    if run.batch_size < 1:
        raise VcfError("--batch-size must be >= 1")
    spec = parse_scale_out(run.shard, run.engine, run.ray_address)
    coll = layout.resolve_collection(collection, rootpath)
    items = layout.read_imagepath(coll)
    if not items:
        raise VcfError(f"{coll.imagepath_file} lists no images")
    refuse_whitespace_ids(coll.imagepath_file, [frame_id for frame_id, _ in items])
    with open_engine(run.engine, run.ray_address) as runner:
        torch_device, chosen_precision = runner.resolve_device(run.device, run.precision)
        if runner.on_this_machine:
            start_loader_server(run.workers, torch_device)
        record, extractor, weights_info = resolve_model(run.model, run.layers, run.weights)
        pre = record.preprocess
        transform = FrameTransform(
            pre.resize,
            pre.crop,
            pre.interpolation,
            run.oversample,
            fast_decode=fast_decode,
            decode_device=str(torch_device) if decode_on_device else None,
            antialias=pre.antialias,
            resize_backend=run.resize_backend,
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
            "batch_size": run.batch_size,
            "input": {
                "index": coll.imagepath_file.name,
                "sha256": hashlib.sha256(coll.imagepath_file.read_bytes()).hexdigest(),
                "count": len(items),
                "files_sha256": layout.files_digest(coll, [path for _, path in items]),  # the frames' sizes and mtimes
            },
        }
        # Complete eager outputs kept by an automatic choice to compile (it varies with the run's size). Eager
        # settings lack "compiled", so an eager run already finds complete compiled outputs up to date.
        eager_settings = None
        if compile_model is None:
            choice = choose_compile(
                record.name, chosen_precision, device_kind(torch_device), len(items), torch.get_num_threads()
            )
            compile_model, compiled_reason = choice.compile, choice.reason
            eager_settings = settings if compile_model else None
        else:
            compiled_reason = "compiled (--compile)" if compile_model else None
        if compile_model:
            settings = {**settings, "compiled": "torch.compile"}
        job = ImageJob(
            extractor=extractor,
            # Registry means and stds are on the [0, 1] scale whatever the model's original value scale.
            normalization=Normalization(tuple(pre.mean), tuple(pre.std)),
            device=torch_device,
            precision=chosen_precision,
            compile_model=compile_model,
            paths=[path for _, path in items],
            transform=transform,
            workers=run.workers,
        )
        ids = [frame_id for frame_id, _ in items]
        work = {"settings": settings, "layers": run.layers, "oversample": run.oversample}
        layers, oversample = work["layers"], work["oversample"]
        result = FeaturesResult(collection=coll.root, compiled=compiled_reason)
        outputs = output_dirs(coll, work["settings"]["model"], layers, oversample)
        result.feature_dirs = dict(outputs)
        count = len(ids)
        with OutputLock(coll.features_lock(outputs_lock_key(outputs), None if spec is None else spec.name)):
            clean_stale_temps(coll.feature_root)
            if eager_settings and not run.overwrite and outputs_complete(outputs, eager_settings, oversample):
                work["settings"] = eager_settings
                result.compiled = None
            manifests = pending_outputs(outputs, work["settings"], oversample, run.overwrite, result)
            if not manifests:
                result.up_to_date = True
                result.reused = count
                result.failures = read_failures(coll)
                result.failures_file = coll.failures_file("features") if result.failures else None
                return result
            owned = range(count) if spec is None else owned_rows([video_key(i) for i in ids], spec)
            plans = plan_chunks(count, owned, run.batch_size, CHUNK_SIZE)
            key = digest({"settings": work["settings"], "layers": layers, "os": oversample})
            store_settings = dict(work)
            parts: dict[str, Any] = {}
            if spec is not None:
                store_settings = {**work, "shard": [spec.index, spec.count], "rows": [owned.start, owned.stop]}
                parts = {layer: coll.feature_part_dir(outputs[layer].name, spec.name) for layer in manifests}
                info = shard_info(spec, owned, count)
                if all(part_matches(parts[layer], manifest, info) for layer, manifest in manifests.items()):
                    result = finished_part(result, parts)
                    result.reused = len(owned)
                    return result
                for part in parts.values():
                    remove_path(part)  # a part appears only once its shard completes
            store = WorkStore(coll.work_dir(key, None if spec is None else spec.name), store_settings)
            reporter = Reporter(progress)
            reporter.total("images", len(owned))
            result.reused = sum(
                len(plan.rows) for number, plan in enumerate(plans) if store.has(CHUNK_NAME.format(number))
            )
            reporter.advance("images", result.reused)
            todo = [number for number in range(len(plans)) if not store.has(CHUNK_NAME.format(number))]
            batches = [batch for number in todo for batch in plans[number].batches]
            outcomes = runner.image_batches(job, batches) if batches else iter(())
            result.computed = _commit_chunks(store, plans, todo, outcomes, reporter)
            result.decoding = "; ".join(choice.describe() for choice in job.decode_choices) or None

            failures = [(ids[i], reason) for number in range(len(plans)) for i, reason in _chunk(store, number)[1]]
            for layer, manifest in manifests.items():
                rows = _layer_rows(store, len(plans), layer, ids)
                if spec is None:
                    out, manifest = outputs[layer], {**manifest, "failures": len(failures)}
                    empty: str | None = f"no image could be read, nothing to write to {out}; see features.failures.txt"
                else:
                    info = {**shard_info(spec, owned, count), "failures": [list(f) for f in failures]}
                    out, manifest, empty = parts[layer], {**manifest, "shard": info}, None
                dims = store.write_bigfile(rows, out, manifest, run.overwrite or spec is not None, empty)
                result.shapes[layer] = (len(owned) - len(failures), dims)
            if spec is None:
                failures_path = coll.failures_file("features")
            else:
                result.feature_dirs = dict(parts)
                failures_path = coll.shard_failures_file(spec.name)
            store.remove()
            result.failures = failures
            result.failures_file = layout.write_failures(failures_path, failures)
        return result


def _chunk(store: WorkStore, number: int) -> tuple[Any, list[tuple[int, str]]]:
    data, record = store.load(CHUNK_NAME.format(number))
    return data, [(int(i), str(r)) for i, r in record["failed"]]


def _layer_rows(store: WorkStore, chunks: int, layer: str, ids: Sequence[str]) -> Iterable[tuple[list[str], Any]]:
    for number in range(chunks):
        data, _ = _chunk(store, number)
        if f"layer:{layer}" in data.files:
            yield [ids[int(i)] for i in data["indices"]], data[f"layer:{layer}"]


def save_chunk(store: WorkStore, number: int, outputs: Sequence[BatchOutput], rows: range) -> None:
    """Commits one chunk: the rows of ``rows`` of its batches' outputs, in batch order, and their failures."""
    indices: list[int] = []
    values: dict[str, list[np.ndarray]] = {}
    failed: list[tuple[int, str]] = []
    for batch_indices, batch_values, batch_failed in outputs:
        mask = np.fromiter((i in rows for i in batch_indices), dtype=bool, count=len(batch_indices))
        if batch_values is not None and mask.any():
            indices.extend(i for i, m in zip(batch_indices, mask, strict=True) if m)
            for layer, array in batch_values.items():
                values.setdefault(layer, []).append(array[mask])
        failed.extend((i, reason) for i, reason in batch_failed if i in rows)
    arrays = {f"layer:{k}": np.concatenate(v).astype(np.float32, copy=False) for k, v in values.items()}
    arrays["indices"] = np.asarray(indices, dtype=np.int64)
    store.commit(CHUNK_NAME.format(number), arrays, {"failed": failed})


def _commit_chunks(
    store: WorkStore,
    plans: Sequence[ChunkPlan],
    todo: Sequence[int],
    outcomes: Iterable[tuple[int, BatchOutput]],
    reporter: Reporter,
) -> int:
    """Runs the chunks through the loop, each committed in the background once its batches are in."""
    computed = [0]
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: list[Future[None]] = []

        def commit(number: int, outputs: list[BatchOutput], _: str | None) -> None:
            if pending:
                pending.pop().result()
            pending.append(writer.submit(save_chunk, store, number, outputs, plans[number].rows))

        run_units(_chunks(plans, todo, outcomes, reporter, computed), commit, reporter, None)
        if pending:
            pending.pop().result()
    return computed[0]


def _chunks(
    plans: Sequence[ChunkPlan],
    todo: Sequence[int],
    outcomes: Iterable[tuple[int, BatchOutput]],
    reporter: Reporter,
    computed: list[int],
) -> Iterator[tuple[int, list[BatchOutput], None]]:
    """Collects batch outputs (in any order) into chunks; yields each chunk once all its batches are in."""
    where = [(number, slot) for number in todo for slot in range(len(plans[number].batches))]
    waiting: dict[int, dict[int, BatchOutput]] = {number: {} for number in todo}
    for position, output in outcomes:
        number, slot = where[position]
        rows = plans[number].rows
        waiting[number][slot] = output
        indices, _, failed = output
        kept = sum(1 for i in indices if i in rows) + sum(1 for i, _ in failed if i in rows)
        computed[0] += kept
        reporter.advance("images", kept)
        if len(waiting[number]) == len(plans[number].batches):
            done = waiting.pop(number)
            yield number, [done[slot] for slot in range(len(plans[number].batches))], None
    if waiting:
        raise VcfError(f"{len(waiting)} chunk(s) got no result; run the same command to resume")
