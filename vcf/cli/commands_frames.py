"""``vcf frames``: videos to sampled JPEG frames."""

from __future__ import annotations

import typer

from vcf.cli import options as opt
from vcf.cli.app import app, finish_videos, run_stage


@app.command("frames")
def frames_command(
    collection: opt.Collection,
    fps: float = typer.Option(None, "--fps", help="Keep the first frame at or after each 1/R seconds."),
    every: int = typer.Option(None, "--every", help="Keep every N-th decoded frame."),
    num_frames: int = typer.Option(None, "--num-frames", help="Keep K frames spread uniformly over each video."),
    size: int = typer.Option(0, "--size", help="Resize saved frames so the shorter side is S (0 keeps the size)."),
    quality: int = typer.Option(95, "--quality", help="JPEG quality."),
    workers: opt.Workers = None,
    relative_paths: bool = typer.Option(
        False, "--relative-paths", help="Write image paths relative to the collection."
    ),
    video_timeout: opt.VideoTimeout = None,
    overwrite: opt.RedoVideos = False,
    quiet: opt.Quiet = False,
    rootpath: opt.Rootpath = None,
    shard: opt.ShardSpec = None,
    engine: opt.Engine = opt.EngineName.local,  # type: ignore[attr-defined]
    ray_address: opt.RayAddress = None,
    shots: opt.Shots = False,
    keyframe: opt.Keyframe = False,
) -> None:
    """Decode every video in COLLECTION/VideoData into sampled JPEG frames.

    Writes ImageData/<vid>/<vid>_<n>.jpg (n = decoded frame index), id.imagepath.txt,
    id.videopath.txt, id.videometa.txt, VideoSets/ and ImageSets/. By default two frames a second
    are kept, exactly as the original video-cnn-feat did. A rerun skips videos that are complete;
    videos that fail are listed in frames.failures.txt and make the exit code 1.

    \b
    Example:
        vcf frames toydata
        vcf frames ~/VisualSearch/tgif --fps 1 --size 256 --workers 8
        vcf frames tgif --shard 0/4   (... 3/4 on other machines, then: vcf merge tgif)
        vcf frames tgif --engine ray --ray-address head-node:6379
        vcf frames v3c --shots --keyframe   (after `vcf shots v3c`)
    """
    from vcf.stages.frames import frames

    result = run_stage(
        frames,
        quiet,
        collection=collection,
        rootpath=rootpath,
        fps=fps,
        every=every,
        num_frames=num_frames,
        size=size,
        quality=quality,
        workers=workers,
        relative_paths=relative_paths,
        overwrite=overwrite,
        video_timeout=video_timeout,
        **opt.scale_out(shard, engine, ray_address),
        shots=shots,
        keyframe=keyframe,
    )
    summary = (
        f"{result.frames_total} frames of {result.videos - len(result.failures)} videos in {result.collection} "
        f"({result.extracted} extracted, {result.skipped} already complete)"
    )
    finish_videos(result, summary, quiet, shard, collection)
