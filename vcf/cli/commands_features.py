"""``vcf features``: frames (or videos) to CNN features."""

from __future__ import annotations

from pathlib import Path

import typer

from vcf.cli.app import app, report_failures, run_stage

ROOTPATH_OPTION = typer.Option(
    None, "--rootpath", envvar="VCF_ROOTPATH", help="Where named collections live [default: ~/VisualSearch]."
)


@app.command("features")
def features_command(
    collection: str = typer.Argument(..., help="Collection directory, or its name under --rootpath."),
    model: str = typer.Option("resnext101_32x48d_wsl", "--model", "-m", help="Model name (see `vcf models`)."),
    layer: list[str] = typer.Option(["avgpool"], "--layer", "-l", help="Layer to write; repeat for several."),
    oversample: bool = typer.Option(False, "--oversample", help="Average 10 crops (adds ',os' to the name)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    workers: int = typer.Option(None, "--workers", help="Image decoding processes [default: CPU count]."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:i]."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16."),
    weights: Path = typer.Option(None, "--weights", help="Local state_dict or checkpoint to load."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs made with other settings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary table."),
    rootpath: Path = ROOTPATH_OPTION,
) -> None:
    """Compute CNN features of the frames in COLLECTION/id.imagepath.txt.

    Writes FeatureData/<model>,<layer>[,os]/ in BigFile format (feature.bin, id.txt, shape.txt)
    plus manifest.json, rows in id.imagepath.txt order. An interrupted run resumes where it
    stopped. Unreadable images are left out, listed in features.failures.txt, and make the exit
    code 1. `--precision auto` uses bf16 on GPUs and on CPUs with AMX, else fp32.

    \b
    Example:
        vcf features toydata --model efficientnet_lite0 --layer avgpool --layer fc
        vcf features ~/VisualSearch/tgif --model resnext101_32x48d_wsl --oversample --device cuda
    """
    from vcf.features import features

    result = run_stage(
        features,
        quiet,
        collection=collection,
        model=model,
        layers=layer,
        oversample=oversample,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        weights=weights,
        rootpath=rootpath,
        overwrite=overwrite,
    )
    if not quiet:
        state = "up to date" if result.up_to_date else f"{result.computed} computed, {result.reused} resumed"
        for layer, directory in result.feature_dirs.items():
            rows, dims = result.shapes.get(layer, (0, 0))
            typer.echo(f"{directory}  {rows} x {dims}  ({state})", err=True)
    report_failures(result.failures, result.failures_file, quiet, what="image")
    if result.failures:
        raise typer.Exit(1)
