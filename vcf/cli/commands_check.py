"""``vcf check``: verify a collection and its features, list what is wrong."""

from __future__ import annotations

import typer

from vcf.cli.app import app, run_stage
from vcf.cli.options import Collection, Rootpath


@app.command("check")
def check_command(
    collection: Collection,
    feature: str = typer.Argument(None, help="Check only this feature directory [default: all of them]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, notes or summary; problems only."),
    rootpath: Rootpath = None,
) -> None:
    """Verify COLLECTION: frames, index files, features and what killed runs left behind.

    Checks that each frame directory holds the whole frames its record lists, that the index
    files agree with each other and with the files on disk, that every feature directory is a
    consistent BigFile (shape.txt, id.txt and feature.bin size agree) without NaN or inf rows,
    that manifests match their files and current inputs, and reports leftover temporary outputs,
    unfinished `vcf features` work and stale locks. Prints one line per problem ("where: what")
    and exits with 1 when there is any, 0 when all is well.

    \b
    Example:
        vcf check toydata
        vcf check ~/VisualSearch/tgif resnext101_32x48d_wsl,avgpool
    """
    from vcf.stages.check import check

    result = run_stage(check, quiet, collection=collection, feature=feature, rootpath=rootpath)
    for problem in result.problems:
        typer.echo(str(problem))
    if not quiet:
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        checked = f"{result.videos} frame directories, {result.frames} frames, {result.features} features checked"
        if result.ok:
            typer.echo(f"OK: {result.collection} ({checked})", err=True)
        else:
            typer.echo(f"{len(result.problems)} problem(s) in {result.collection} ({checked})", err=True)
    if not result.ok:
        raise typer.Exit(1)
