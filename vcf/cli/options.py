"""Command-line options shared by several commands, declared once; choices are enumerations Typer checks."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vcf.model_kinds import KINDS
from vcf.run.engines import ENGINES

VIDEO = "Videos (--from-video, --csv, 3D)"

# The choices Typer lists in --help and checks; each is the table the library chooses from.
Device = Enum("Device", {name: name for name in ["auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(8))]}, type=str)
Precision = Enum("Precision", {name: name for name in ("auto", "fp32", "bf16", "fp16")}, type=str)
EngineName = Enum("EngineName", {name: name for name in ENGINES}, type=str)
ModelType = Enum("ModelType", {name: name for name in KINDS}, type=str)
# Resize kernels of vcf.io.preprocess.RESIZE_BACKENDS (spelled here: that module imports torch).
ResizeBackend = Enum("ResizeBackend", {name: name for name in ("default", "pil")}, type=str)
Dtype = Enum("Dtype", {name: name for name in ("float32", "float16")}, type=str)

Collection = Annotated[str, typer.Argument(help="Collection directory, or its name under --rootpath.")]
Rootpath = Annotated[
    Optional[Path],  # noqa: UP045  (Typer reads the annotation at run time)
    typer.Option("--rootpath", envvar="VCF_ROOTPATH", help="Where named collections live [default: ~/VisualSearch]."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Recompute and replace outputs, even up-to-date ones or ones made with other settings."
    ),
]
RedoVideos = Annotated[bool, typer.Option("--overwrite", help="Redo every video, even complete ones.")]
Workers = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        "--workers",
        help="Decoding processes; 0 decodes in this process (images: by idle-priority threads, a batch ahead of "
        "the model) [default: frames, one a core; features, one a core with a GPU, on a CPU of up to 2 cores this "
        "process unless its first batches show loader processes would pay, else a quarter of the cores].",
    ),
]
VideoTimeout = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--video-timeout", help="Fail a video whose decoder is silent this many seconds."),
]
ShardSpec = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--shard",
        help="K/N: do only shard K (from 0) of N, e.g. $SLURM_ARRAY_TASK_ID/N; then `vcf merge` (--csv: no merge).",
    ),
]
Engine = Annotated[EngineName, typer.Option("--engine", help="local, or ray (a Ray cluster: pip install 'vcf[ray]').")]
RayAddress = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--ray-address", help="Ray cluster address (host:port) [default: $RAY_ADDRESS or a local Ray]."),
]
DeviceOption = Annotated[Device, typer.Option("--device", help="Where the model runs (cuda:i: GPU i).")]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision", help="auto: bf16 on GPUs that support it (fp16 on older ones) and bf16 CPUs, else fp32."
    ),
]
ModelTypeOption = Annotated[
    Optional[ModelType],  # noqa: UP045
    typer.Option("--type", help="Pick that kind's default model (checks --model's kind).", rich_help_panel=VIDEO),
]
DtypeOption = Annotated[
    Optional[Dtype],  # noqa: UP045
    typer.Option("--dtype", help="--csv: the .npy files' type [default: float32].", rich_help_panel=VIDEO),
]

ResizeBackendOption = Annotated[
    ResizeBackend,
    typer.Option(
        "--resize-backend",
        help="default (fast uint8 bilinear kernel) or pil (the reference pipeline's PIL resize, exactly).",
    ),
]
Shots = Annotated[
    bool,
    typer.Option("--shots", help="Sample inside each shot of id.shots.txt (run `vcf shots` first); ids <shot_id>_<n>."),
]
Keyframe = Annotated[bool, typer.Option("--keyframe", help="With --shots: the middle frame of each shot only.")]


def scale_out(shard: str | None, engine: str, ray_address: str | None) -> dict[str, str | None]:
    """The ``--shard``, ``--engine`` and ``--ray-address`` options as the stage functions' keyword arguments."""
    return {"shard": shard, "engine": engine, "ray_address": ray_address}


def shard_note(shard: str | None, collection: str) -> None:
    """Reminds that a shard's part is merged once every shard is done."""
    if shard is not None:
        typer.echo(f"shard {shard} done; when all shards are, run: vcf merge {collection}", err=True)
