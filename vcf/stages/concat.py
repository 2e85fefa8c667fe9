"""Concatenation: several features of the same ids side by side, ``FeatureData/A+B``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcf.errors import VcfError
from vcf.io.atomic import OutputLock, clean_stale_temps
from vcf.io.bigfile import BigFile, BigFileWriter, chunk_rows, open_feature, reusable_output
from vcf.io.collection import resolve_collection
from vcf.progress import ProgressCallback, Reporter
from vcf.stages.pool import RowReader

# Example ids shown in a mismatch message, per side.
EXAMPLES = 3


@dataclass(frozen=True)
class ConcatResult:
    """What :func:`concat` did.

    Attributes:
        output: The BigFile directory ``FeatureData/A+B``.
        feature: Its feature name (the input names joined by ``+``).
        inputs: The input feature names, in order.
        rows: Rows (ids) in the output.
        dim: Values per row: the sum of the inputs' dims.
        dropped: Ids of the first feature left out by ``intersect`` (0 without it).
        skipped: True when the output was already up to date and nothing was computed.
    """

    output: Path
    feature: str
    inputs: list[str]
    rows: int
    dim: int
    dropped: int = 0
    skipped: bool = False


def split_features(features: str | Sequence[str]) -> list[str]:
    """The feature names of ``A+B+C`` (split on ``+`` only: names contain commas) or of a list.

    Raises:
        VcfError: Fewer than two names, or an empty name.
    """
    names = features.split("+") if isinstance(features, str) else [str(f) for f in features]
    if len(names) < 2 or any(not name.strip() for name in names):
        raise VcfError(f"expected two or more feature names joined by '+', got {'+'.join(names)!r}")
    return names


def _examples(ids: list[str]) -> str:
    shown = ", ".join(ids[:EXAMPLES])
    return f"{shown}, ..." if len(ids) > EXAMPLES else shown


def _check_ids(first: BigFile, other: BigFile, first_name: str, other_name: str) -> None:
    """Raises a VcfError describing how the id sets of two features differ, if they do."""
    if first.nr_of_images == other.nr_of_images and all(name in other.name2index for name in first.names):
        return
    only_first = [name for name in first.names if name not in other.name2index]
    only_other = [name for name in other.names if name not in first.name2index]
    raise VcfError(
        f"{first_name} and {other_name} have different ids: {len(only_first)} only in {first_name}"
        f" (e.g. {_examples(only_first) or '-'}), {len(only_other)} only in {other_name}"
        f" (e.g. {_examples(only_other) or '-'}); use --intersect to keep the common ids"
    )


def concat(
    collection: str | os.PathLike[str],
    features: str | Sequence[str],
    *,
    intersect: bool = False,
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> ConcatResult:
    """Writes ``FeatureData/A+B``: for each id of A, A's row followed by B's row (and so on).

    Rows follow the id order of the first feature. Every feature must have the same ids, unless
    ``intersect`` is set, which keeps the ids all features share (still in the first one's order).
    Rows are copied in chunks, so memory stays bounded; the output appears only when complete.

    Args:
        collection: Collection directory, or its name under ``rootpath``.
        features: ``"A+B"`` or a list of two or more feature names.
        intersect: Keep only the ids common to all features instead of failing on a difference.
        rootpath: Where named collections live.
        overwrite: Recompute and replace the output, even an up-to-date one or one made with other settings
            (an output whose input values changed since is recomputed without it).
        progress: Receives ``rows`` events.

    Returns:
        The output and its shape; ``skipped`` when it was already up to date.

    Raises:
        VcfError: Fewer than two features, different id sets without ``intersect``, or no common id.
        CollectionError: The collection or a feature does not exist.
        FeatureFileError: An input is inconsistent.
        OutputExistsError: The output exists, was made from something else, and ``overwrite`` is false.
        LockedError: Another run is writing the same output.
    """
    names = split_features(features)
    coll = resolve_collection(collection, rootpath)
    sources = [open_feature(coll, name) for name in names]
    first = sources[0]
    if intersect:
        kept = [name for name in first.names if all(name in other.name2index for other in sources[1:])]
        if not kept:
            raise VcfError(f"{' and '.join(names)} have no id in common")
    else:
        for name, other in zip(names[1:], sources[1:], strict=True):
            _check_ids(first, other, names[0], name)
        kept = first.names
    out_name = "+".join(names)
    out_dir = coll.feature_dir(out_name)
    dim = sum(source.ndims for source in sources)
    levels = {(source.manifest or {}).get("level") for source in sources}
    manifest = {
        "stage": "concat",
        "inputs": [{"feature": name, **source.describe()} for name, source in zip(names, sources, strict=True)],
        "intersect": intersect,
    }
    if len(levels) == 1 and None not in levels:
        manifest["level"] = levels.pop()
    reporter = Reporter(progress)

    with OutputLock(coll.feature_root / f".{out_name}.lock"):
        clean_stale_temps(coll.feature_root)
        done = reusable_output(out_dir, manifest, overwrite=overwrite)
        if done is not None:
            return ConcatResult(
                output=out_dir,
                feature=out_name,
                inputs=names,
                rows=done.nr_of_images,
                dim=done.ndims,
                dropped=first.nr_of_images - done.nr_of_images,
                skipped=True,
            )
        rows = [source.indices(kept) for source in sources]
        step = chunk_rows(dim)
        reporter.total("rows", len(kept))
        with contextlib.ExitStack() as stack:
            readers = [stack.enter_context(RowReader(source)) for source in sources]
            writer = stack.enter_context(BigFileWriter(out_dir, dim, overwrite=overwrite, manifest=manifest))
            for start in range(0, len(kept), step):
                stop = min(start + step, len(kept))
                block = np.hstack([m.take(r[start:stop]) for m, r in zip(readers, rows, strict=True)])
                writer.append(kept[start:stop], block)
                reporter.advance("rows", stop - start)
    return ConcatResult(
        output=out_dir, feature=out_name, inputs=names, rows=len(kept), dim=dim, dropped=first.nr_of_images - len(kept)
    )


# `vcf.concat(...)` stays a call of the stage function once this module is imported.
