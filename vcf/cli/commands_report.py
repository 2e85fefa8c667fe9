"""``vcf report``: static HTML pages to look at a collection and its features in a browser."""

from __future__ import annotations

from pathlib import Path

import typer

from vcf.cli import options as opt
from vcf.cli.app import app, run_stage


@app.command("report")
def report_command(
    collection: opt.Collection,
    features: list[str] = typer.Argument(None, help="Features to show [default: every feature in FeatureData]."),
    output: Path = typer.Option(None, "--output", "-o", help="Report directory [default: COLLECTION/Report]."),
    page_size: int = typer.Option(100, "--page-size", help="Film strips (and neighbour rows) per page."),
    neighbours: int = typer.Option(5, "--neighbours", "-k", help="Nearest neighbours shown per video."),
    strip_frames: int = typer.Option(12, "--strip-frames", help="At most this many thumbnails per film strip."),
    thumb_height: int = typer.Option(64, "--thumb-height", help="Thumbnail height in pixels."),
    thumb_format: str = typer.Option("webp", "--thumb-format", help="Thumbnail format: webp or jpeg."),
    workers: int = typer.Option(0, "--workers", help="Threads making thumbnails [default: one per core]."),
    quiet: opt.Quiet = False,
    rootpath: opt.Rootpath = None,
) -> None:
    """Write a static HTML report of COLLECTION: open its index.html in any browser, offline.

    The first page gives counts, durations, resolutions, frame rates and every failures file; the
    video pages show a film strip of thumbnails per video with the shots of id.shots.txt marked; each
    FEATURE gets its manifest, its health (NaN/inf rows, all-zero rows, duplicate rows, row norms, dims
    without variance), a PCA map of the videos and the nearest neighbours of every video. Thumbnails
    are made once; a rerun only redoes what changed.

    \b
    Example:
        vcf report toydata
        vcf report ~/VisualSearch/tgif mean_resnext101_32x48d_wsl,avgpool -o /tmp/tgif-report
    """
    from vcf.stages.report import report

    result = run_stage(
        report,
        quiet,
        collection=collection,
        features=features or None,
        output=output,
        rootpath=rootpath,
        page_size=page_size,
        neighbours=neighbours,
        strip_frames=strip_frames,
        thumb_height=thumb_height,
        thumb_format=thumb_format,
        workers=workers,
    )
    if not quiet:
        made = f"{result.thumbnails} thumbnails ({result.thumbnails_made} new)"
        typer.echo(f"{result.strips} film strips, {made}, {len(result.features)} features", err=True)
        for name, health in result.features.items():
            if health.problems:
                typer.echo(f"note: {name}: {health.problems} suspicious rows or dims; see the report", err=True)
    typer.echo(f"open {result.index}")
