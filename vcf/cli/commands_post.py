"""``vcf pool``, ``vcf concat`` and ``vcf to-h5``: steps after feature extraction."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from vcf.cli.app import app, report_failures, run_stage
from vcf.cli.options import Collection, Quiet, Rootpath

OVERWRITE_HELP = "Recompute and replace the output, even one that is up to date or made with other settings."


class PoolMethod(str, Enum):
    """Pooling methods offered on the command line."""

    mean = "mean"
    max = "max"


class Compression(str, Enum):
    """HDF5 compression filters offered on the command line."""

    gzip = "gzip"
    lzf = "lzf"


@app.command("pool")
def pool_command(
    collection: Collection,
    feature: str = typer.Argument(..., help="Frame-level feature name (a directory in FeatureData)."),
    method: PoolMethod = typer.Option(PoolMethod.mean, "--method", "-m", help="How frames are pooled."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    quiet: Quiet = False,
    rootpath: Rootpath = None,
) -> None:
    """Pool frame-level features into one vector per video.

    Reads FeatureData/FEATURE (rows <video>_<n>) and writes FeatureData/METHOD_FEATURE.

    Videos follow VideoSets/<collection>.txt. A rerun with unchanged input does nothing.

    \b
    Example:
        vcf pool toydata resnext101_32x48d_wsl,avgpool
        vcf pool ~/VisualSearch/tgif resnet152,avgpool --method max
    """
    from vcf.stages.pool import pool

    result = run_stage(
        pool, quiet, collection=collection, feature=feature, method=method.value, rootpath=rootpath, overwrite=overwrite
    )
    state = "up to date" if result.skipped else "wrote"
    typer.echo(f"{state}: {result.output} ({result.videos} x {result.dim})")


@app.command("concat")
def concat_command(
    collection: Collection,
    features: str = typer.Argument(..., help="Feature names joined by '+', e.g. A+B."),
    intersect: bool = typer.Option(False, "--intersect", help="Keep only the ids all features share."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    quiet: Quiet = False,
    rootpath: Rootpath = None,
) -> None:
    """Concatenate features of the same ids into FeatureData/A+B.

    Each row is A's vector followed by B's, in A's id order (dims add up).

    Features with different ids are refused unless --intersect is given.

    \b
    Example:
        vcf concat toydata mean_resnext101_32x48d_wsl,avgpool+mean_resnet152,avgpool
    """
    from vcf.stages.concat import concat

    result = run_stage(
        concat,
        quiet,
        collection=collection,
        features=features,
        intersect=intersect,
        rootpath=rootpath,
        overwrite=overwrite,
    )
    state = "up to date" if result.skipped else "wrote"
    dropped = f", {result.dropped} ids not in every feature left out" if result.dropped else ""
    typer.echo(f"{state}: {result.output} ({result.rows} x {result.dim}{dropped})")


@app.command("to-h5")
def to_h5_command(
    collection: str = typer.Argument(None, help="Collection directory, or its name under --rootpath."),
    feature: str = typer.Argument(None, help="Feature name (a directory in FeatureData)."),
    output: Path = typer.Option(
        None, "--output", "-o", help="The .h5 file (default: COLLECTION/H5Data/FEATURE.h5, or DIR.h5)."
    ),
    per_video: bool = typer.Option(
        None, "--per-video/--no-per-video", help="One dataset per video, or ids + features (default: by the ids)."
    ),
    compression: Compression = typer.Option(None, "--compression", help="Compress the datasets."),
    numpy_dir: Path = typer.Option(None, "--numpy-dir", help="Convert every .npy file of this directory instead."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    quiet: Quiet = False,
    rootpath: Rootpath = None,
) -> None:
    """Write a feature, or a directory of .npy files, to one HDF5 file.

    Video-level features become datasets 'ids' and 'features' (N x D).

    Frame-level features become one dataset per video, named by the video id, of shape (frames, D).

    With --numpy-dir each .npy file becomes one dataset named after it; unreadable files make the exit code 1.

    \b
    Example:
        vcf to-h5 toydata mean_resnext101_32x48d_wsl,avgpool
        vcf to-h5 toydata resnext101_32x48d_wsl,avgpool --per-video --compression gzip
        vcf to-h5 --numpy-dir NumpyResult -o result.h5
    """
    from vcf.stages.h5 import to_h5

    result = run_stage(
        to_h5,
        quiet,
        collection=collection,
        feature=feature,
        output=output,
        per_video=per_video,
        numpy_dir=numpy_dir,
        compression=compression.value if compression else None,
        rootpath=rootpath,
        overwrite=overwrite,
    )
    if result.layout == "per_video":
        shape = f"{result.datasets} videos, {result.rows} frames x {result.dim}"
    elif result.layout == "matrix":
        shape = f"{result.rows} x {result.dim}"
    else:
        shape = f"{result.datasets} arrays"
    typer.echo(f"{'up to date' if result.skipped else 'wrote'}: {result.output} ({shape})")
    report_failures(result.failures, result.failures_file, quiet, what="file")
    if result.failures:
        raise typer.Exit(1)
