"""``vcf models``: the registered models, their layers, input sizes and where their weights are."""

from __future__ import annotations

import typer
from rich.table import Table

from vcf.cli.app import app, fail, out_console, vcf_errors
from vcf.model_kinds import KINDS


@app.command("models")
def models_command(
    pattern: str = typer.Argument(None, help="Shell-style filter on the name, e.g. 'resnet*' or '*3d*'."),
    kind: str = typer.Option(None, "--kind", help="Only '2d' (image) or '3d' (clip) models."),
) -> None:
    """List the models vcf can extract features with.

    Shows each model's layers with their dimensions, its input shape (channels x height x width;
    clip models add frames after channels) and where its weights come from: packaged with a Python
    package, cached in $TORCH_HOME/hub/checkpoints, downloaded on first use, or only from --weights.
    Any timm model is also available as timm/<name>, and OpenCLIP/OpenAI CLIP image towers as
    clip/<arch>:<pretrained tag> (open_clip's names, e.g. clip/ViT-B-32:openai).

    \b
    Example:
        vcf models
        vcf models 'resnext*'
        vcf models --kind 3d
    """
    with vcf_errors():
        from vcf.models import get_model, list_models, weights_status

        if kind not in (None, *KINDS):
            raise typer.BadParameter(f"must be one of {', '.join(KINDS)}", param_hint="--kind")
        records = [get_model(name) for name in list_models(pattern)]
        records = [record for record in records if kind is None or record.kind == kind]
        if not records:
            raise fail(f"no model matches {pattern!r}; `vcf models` lists them all")
        table = Table(title=f"{len(records)} model(s)", title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("kind")
        table.add_column("layers (dim)")
        table.add_column("input")
        table.add_column("weights", overflow="fold")
        for record in records:
            layers = ", ".join(f"{name} {dim}" for name, dim in record.layers.items())
            table.add_row(
                record.name,
                record.kind,
                layers,
                "x".join(str(size) for size in record.input_shape),
                weights_status(record),
            )
        out_console.print(table)
