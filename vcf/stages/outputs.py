"""What every features mode shares: output names, the result, settings checks, the model, shard part records."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcf.errors import FeatureFileError, IndexFormatError, OutputExistsError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import read_manifest
from vcf.io.bigfile import BigFile, reusable_output
from vcf.io.collection import Collection
from vcf.run.partition import Shard

DEFAULT_LAYER = "avgpool"


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
        decoding: Where the images were decoded and why (image runs of the local engine; never in the
            manifest: it does not change the output).
        compiled: Whether the model ran compiled and why (image runs; the manifest records ``compiled``).
    """

    collection: Path | None
    feature_dirs: dict[str, Path] = field(default_factory=dict)
    computed: int = 0
    reused: int = 0
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_file: Path | None = None
    up_to_date: bool = False
    decoding: str | None = None
    compiled: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """The options every input mode of ``features`` shares (see :func:`vcf.stages.features.features`).

    Attributes:
        model: A registry name.
        layers: Layers to write (repeats dropped).
        oversample: Average the outputs of ten crops (2D).
        batch_size: Images, frames or clips per forward pass.
        workers: Loader or decoder processes (None: the engine's default; 0 decodes in this process).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        weights: A local weights file instead of the model's published weights.
        overwrite: Recompute and replace outputs, even up-to-date ones or ones made with other settings.
        shard: ``K/N``: compute only shard K (from 0) of N, whole videos. Collections: part BigFiles under
            ``FeatureData/.vcf-shards/`` that :func:`vcf.merge` assembles; CSV: disjoint .npy files, failures
            in ``<csv stem>.<K>-of-<N>.failures.txt``.
        engine: ``local`` or ``ray`` (see :data:`vcf.run.engines.ENGINES`).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).
        resize_backend: ``default`` (torchvision's fast uint8 kernel for bilinear resizing) or ``pil`` (the
            reference pipeline exactly; see :data:`vcf.io.preprocess.RESIZE_BACKENDS`).
    """

    model: str
    layers: Sequence[str] = (DEFAULT_LAYER,)
    oversample: bool = False
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    weights: str | os.PathLike[str] | None = None
    overwrite: bool = False
    shard: str | Shard | None = None
    engine: str = "local"
    ray_address: str | None = None
    resize_backend: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", list(dict.fromkeys(self.layers)))


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


def outputs_complete(outputs: dict[str, Path], settings: dict[str, Any], oversample: bool) -> bool:
    """True when every output exists, complete, made with ``settings``."""
    try:
        return not pending_outputs(outputs, settings, oversample, False, FeaturesResult(collection=None))
    except OutputExistsError:
        return False


def resolve_model(model: str, layers: Sequence[str], weights: str | os.PathLike[str] | None) -> tuple[Any, Any, Any]:
    from vcf.models import build_extractor, get_model

    record = get_model(model)
    unknown = [layer for layer in layers if layer not in record.layers and layer not in ("fc", "logits")]
    if unknown:
        raise VcfError(f"model {record.name} has no layer {unknown[0]!r}; layers: {', '.join(record.layers)}")
    extractor, weights_info = build_extractor(record, list(layers), weights_path=weights)
    return record, extractor, weights_info


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def read_failures(coll: Collection) -> list[tuple[str, str]]:
    path = coll.failures_file("features")
    if not path.is_file():
        return []
    return [tuple(line.split(" ", 1)) for line in path.read_text(encoding="utf-8").splitlines() if " " in line]  # type: ignore[misc]


def finished_part(result: FeaturesResult, parts: dict[str, Path]) -> FeaturesResult:
    """``result`` of a shard whose parts are complete already: their shapes and failures, from the manifests.

    ``reused`` is the rows of the parts; the caller may count otherwise.
    """
    result.feature_dirs = dict(parts)
    result.up_to_date = True
    for layer, part in parts.items():
        manifest = read_part_manifest(part) or {}
        result.shapes[layer] = tuple(manifest.get("shape", (0, 0)))  # type: ignore[assignment]
        result.failures = [tuple(f) for f in manifest.get("shard", {}).get("failures", [])]  # type: ignore[misc]
    result.reused = next(iter(result.shapes.values()), (0, 0))[0]
    return result


def shard_info(spec: Shard, owned: range, count: int) -> dict[str, Any]:
    return {"index": spec.index, "count": spec.count, "rows": [owned.start, owned.stop], "input_rows": count}


def read_part_manifest(part: Path) -> dict[str, Any] | None:
    return read_manifest(part) if part.is_dir() else None


def part_matches(part: Path, manifest: dict[str, Any], shard_info: dict[str, Any]) -> bool:
    """True when a complete part made with these settings and rows is already there."""
    previous = read_part_manifest(part)
    if previous is None or not all(previous.get(k) == v for k, v in manifest.items()):
        return False
    info = previous.get("shard") or {}
    return all(info.get(k) == v for k, v in shard_info.items()) and bigfile_ok(part)


def bigfile_ok(directory: Path) -> bool:
    try:
        BigFile(directory)
    except FeatureFileError:
        return False
    return True


def refuse_whitespace_ids(index: Path, ids: Sequence[str]) -> None:
    """Raises IndexFormatError naming the line of the first id that cannot be written to id.txt."""
    bad = next((frame_id for frame_id in ids if layout.has_whitespace(frame_id)), None)
    if bad is None:
        return
    with open(index, encoding="utf-8") as handle:
        number = next((n for n, line in enumerate(handle, start=1) if line.startswith(bad + " ")), 0)
    raise IndexFormatError(f"{index}:{number}: id {bad!r} contains whitespace; ids must be single words")
