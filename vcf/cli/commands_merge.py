"""``vcf merge``: assemble the parts of a sharded run; also the scale-out options of ``frames`` and ``features``."""

from __future__ import annotations

from pathlib import Path

import typer

from vcf.cli.app import app, run_stage

ROOTPATH_OPTION = typer.Option(
    None, "--rootpath", envvar="VCF_ROOTPATH", help="Where named collections live [default: ~/VisualSearch]."
)
SHARD_OPTION = typer.Option(
    None,
    "--shard",
    help="K/N: do only shard K (from 0) of N, e.g. $SLURM_ARRAY_TASK_ID/N; then `vcf merge` (--csv: no merge).",
)
ENGINE_OPTION = typer.Option("local", "--engine", help="local, or ray (a Ray cluster: pip install 'vcf[ray]').")
RAY_ADDRESS_OPTION = typer.Option(
    None, "--ray-address", help="Ray cluster address (host:port) [default: $RAY_ADDRESS or a local Ray]."
)


def shard_note(shard: str | None, collection: str) -> None:
    """Reminds that a shard's part is merged once every shard is done."""
    if shard is not None:
        typer.echo(f"shard {shard} done; when all shards are, run: vcf merge {collection}", err=True)


@app.command("merge")
def merge_command(
    collection: str = typer.Argument(..., help="Collection directory, or its name under --rootpath."),
    feature: str = typer.Argument(None, help="Merge only this feature [default: frames and every feature]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    rootpath: Path = ROOTPATH_OPTION,
) -> None:
    """Assemble the parts written by `vcf frames/features --shard K/N` into the normal outputs.

    Frames parts become id.imagepath.txt and the other index files; the parts of a feature
    become FeatureData/<feature>/ with rows in id.imagepath.txt order: the same bytes a single
    run writes. Nothing is written unless every shard is complete; the message lists the shards
    that are missing, running or interrupted. The parts are removed once merged.

    \b
    Example:
        vcf frames toydata --shard 0/2 && vcf frames toydata --shard 1/2
        vcf merge toydata
        vcf merge toydata resnext101_32x48d_wsl,avgpool
    """
    from vcf.stages.merge import merge

    result = run_stage(merge, quiet, collection=collection, feature=feature, rootpath=rootpath)
    if quiet:
        return
    for name, shards in result.merged.items():
        if name == "frames":
            what = f"{result.rows[name]} frames in {result.collection / 'id.imagepath.txt'}"
        else:
            what = f"{result.collection / 'FeatureData' / name}  {result.rows[name]} x {result.dims[name]}"
        failed = f", {result.failures[name]} failed" if result.failures.get(name) else ""
        typer.echo(f"{what}  ({shards} shards merged{failed})", err=True)
    for name in result.up_to_date:
        typer.echo(f"{result.collection / 'FeatureData' / name}  (no parts: already merged)", err=True)
