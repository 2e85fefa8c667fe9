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
Dtype = Enum("Dtype", {name: name for name in ("float32", "float16")}, type=str)

Collection = Annotated[str, typer.Argument(help="Collection directory, or its name under --rootpath.")]
Rootpath = Annotated[
    Optional[Path],  # noqa: UP045  (Typer reads the annotation at run time)
    typer.Option("--rootpath", envvar="VCF_ROOTPATH", help="Where named collections live [default: ~/VisualSearch]."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output made with other settings.")]
Workers = Annotated[Optional[int], typer.Option("--workers", help="Decoding processes [default: CPU count].")]  # noqa: UP045
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
PrecisionOption = Annotated[Precision, typer.Option("--precision", help="auto: bf16 on GPUs and bf16 CPUs, else fp32.")]
ModelTypeOption = Annotated[
    Optional[ModelType],  # noqa: UP045
    typer.Option("--type", help="Pick that kind's default model (checks --model's kind).", rich_help_panel=VIDEO),
]
DtypeOption = Annotated[
    Optional[Dtype],  # noqa: UP045
    typer.Option("--dtype", help="--csv: the .npy files' type [default: float32].", rich_help_panel=VIDEO),
]


def shard_note(shard: str | None, collection: str) -> None:
    """Reminds that a shard's part is merged once every shard is done."""
    if shard is not None:
        typer.echo(f"shard {shard} done; when all shards are, run: vcf merge {collection}", err=True)
