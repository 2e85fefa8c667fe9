"""``vcf features``: frames (or videos) to CNN features."""

from __future__ import annotations

from pathlib import Path

import typer

from vcf.cli import options as opt
from vcf.cli.app import app, report_failures, run_stage
from vcf.cli.options import VIDEO


@app.command("features")
def features_command(
    collection: str = typer.Argument(
        None, help="Collection directory, or its name under --rootpath (none with --csv).", show_default=False
    ),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Model name (see `vcf models`) (default: resnext101_32x48d_wsl; --type 3d: r2plus1d_18).",
        show_default=False,
    ),
    layer: list[str] = typer.Option(["avgpool"], "--layer", "-l", help="Layer to write; repeat for several."),
    oversample: bool = typer.Option(False, "--oversample", help="Average 10 crops (adds ',os' to the name)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    workers: opt.Workers = None,
    device: opt.DeviceOption = "auto",  # type: ignore[assignment]
    precision: opt.PrecisionOption = "auto",  # type: ignore[assignment]
    weights: Path = typer.Option(None, "--weights", help="Local state_dict or checkpoint to load."),
    overwrite: opt.Overwrite = False,
    fast_decode: bool = typer.Option(
        False, "--fast-decode", help="Decode large JPEGs at 1/2-1/8 size in the DCT: faster, near-equal features."
    ),
    decode_on_device: bool = typer.Option(
        False, "--decode-on-device", help="Decode JPEGs and resize on the model's device (nvJPEG on CUDA)."
    ),
    compile_model: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="Run the model through torch.compile (compiles first, then faster kernels) [default: only where a "
        "measurement of the model, precision and CPU says a run of this size is 15% faster compiled, compile "
        "included; frames, local engine].",
        show_default=False,
    ),
    resize_backend: opt.ResizeBackendOption = "default",  # type: ignore[assignment]
    quiet: opt.Quiet = False,
    rootpath: opt.Rootpath = None,
    shard: opt.ShardSpec = None,
    engine: opt.Engine = opt.EngineName.local,  # type: ignore[attr-defined]
    ray_address: opt.RayAddress = None,
    from_video: bool = typer.Option(
        False, "--from-video", help="Decode COLLECTION/VideoData directly; no frame files.", rich_help_panel=VIDEO
    ),
    csv: Path = typer.Option(
        None,
        "--csv",
        help="CSV with header video_path,feature_path: one .npy (T x D) a video.",
        rich_help_panel=VIDEO,
    ),
    model_type: opt.ModelTypeOption = None,
    fps: float = typer.Option(
        None, "--fps", help="2D: keep a frame every 1/R s (default: two a second; --csv: 1).", rich_help_panel=VIDEO
    ),
    every: int = typer.Option(None, "--every", help="2D: keep every N-th decoded frame.", rich_help_panel=VIDEO),
    num_frames: int = typer.Option(
        None, "--num-frames", help="2D: keep K frames spread over each video.", rich_help_panel=VIDEO
    ),
    clip_len: int = typer.Option(
        None, "--clip-len", help="3D: frames per clip (default: the model's, e.g. 16).", rich_help_panel=VIDEO
    ),
    clip_stride: int = typer.Option(
        None, "--clip-stride", help="3D: frames between clip starts (default: --clip-len).", rich_help_panel=VIDEO
    ),
    clip_fps: float = typer.Option(
        None,
        "--clip-fps",
        help="3D: frame rate clips are decoded at (default: the model's).",
        rich_help_panel=VIDEO,
    ),
    l2_normalize: bool = typer.Option(
        False, "--l2-normalize", help="--csv: divide each row by its L2 norm.", rich_help_panel=VIDEO
    ),
    dtype: opt.DtypeOption = None,
    video_timeout: opt.VideoTimeout = None,
    shots: opt.Shots = False,
    keyframe: opt.Keyframe = False,
) -> None:
    """Compute CNN features of the frames in COLLECTION/id.imagepath.txt, or straight from videos.

    Writes FeatureData/<model>,<layer>[,os]/ in BigFile format (feature.bin, id.txt, shape.txt)
    plus manifest.json, rows in id.imagepath.txt order. An interrupted run resumes where it
    stopped. Unreadable images are left out, listed in features.failures.txt, and make the exit
    code 1. `--precision auto` uses bf16 on GPUs that support it (fp16 on older GPUs) and on CPUs
    with AMX or AVX-512 BF16, else fp32.

    --from-video decodes VideoData/ instead (frames chosen as `vcf frames` would: same ids, same
    order, so pool and concat work unchanged); 3D models (--type 3d) always do, one row per clip
    <vid>_<n>, n = the clip's first frame. --csv writes one .npy per row of a video_path,feature_path
    CSV, skips outputs that are complete, and lists failures in <csv stem>.failures.txt.

    \b
    Example:
        vcf features toydata --model efficientnet_lite0 --layer avgpool --layer fc
        vcf features ~/VisualSearch/tgif --model resnext101_32x48d_wsl --oversample --device cuda
        vcf features tgif --model resnet50 --device cuda --precision bf16 --decode-on-device --compile
        vcf features tgif --shard $SLURM_ARRAY_TASK_ID/8   (then: vcf merge tgif)
        vcf features tgif --engine ray --ray-address head-node:6379
        vcf features toydata --from-video --model efficientnet_lite0 --fps 1
        vcf features toydata --from-video --type 3d --clip-len 16 --clip-fps 15
        vcf features v3c --from-video --shots --keyframe   (after `vcf shots v3c`)
        vcf features --csv input.csv --l2-normalize --dtype float16
        vcf features --csv in.csv -m resnext101_3d_kinetics --weights hara.pth
    """
    from vcf.stages.features import features

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
        shard=shard,
        engine=engine,
        ray_address=ray_address,
        from_video=from_video,
        csv=csv,
        model_type=model_type,
        fps=fps,
        every=every,
        num_frames=num_frames,
        clip_len=clip_len,
        clip_stride=clip_stride,
        clip_fps=clip_fps,
        l2_normalize=l2_normalize,
        dtype=dtype,
        video_timeout=video_timeout,
        fast_decode=fast_decode,
        decode_on_device=decode_on_device,
        compile_model=compile_model,
        shots=shots,
        keyframe=keyframe,
        resize_backend=resize_backend,
    )
    if csv is not None:
        if not quiet:
            rows, dims = next(iter(result.shapes.values()), (0, 0))
            typer.echo(
                f"{rows} .npy files of {dims} dims, {result.dtype} ({result.computed} computed, "  # type: ignore[attr-defined]
                f"{result.reused} already complete)",
                err=True,
            )
        report_failures(result.failures, result.failures_file, quiet, what="video")
        if result.failures:
            raise typer.Exit(1)
        return
    if not quiet:
        state = "up to date" if result.up_to_date else f"{result.computed} computed, {result.reused} resumed"
        for layer, directory in result.feature_dirs.items():
            rows, dims = result.shapes.get(layer, (0, 0))
            typer.echo(f"{directory}  {rows} x {dims}  ({state})", err=True)
        for note in (result.decoding, result.compiled if result.computed else None):
            if note:
                typer.echo(note, err=True)
    if not quiet:
        opt.shard_note(shard, collection)
    report_failures(result.failures, result.failures_file, quiet, what="video" if from_video else "image")
    if result.failures:
        raise typer.Exit(1)
