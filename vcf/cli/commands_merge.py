"""``vcf merge``: assemble the parts of a sharded run into the normal outputs."""

from __future__ import annotations

import typer

from vcf.cli.app import app, run_stage
from vcf.cli.options import Collection, Quiet, Rootpath


@app.command("merge")
def merge_command(
    collection: Collection,
    feature: str = typer.Argument(None, help="Merge only this feature [default: frames and every feature]."),
    quiet: Quiet = False,
    rootpath: Rootpath = None,
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
