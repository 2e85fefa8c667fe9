"""``vcf search`` and ``vcf index``: rank features against text, image, video or id queries."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vcf.cli import options as opt
from vcf.cli.app import app, fail, out_console, run_stage, vcf_errors


class Aggregation(str, Enum):
    """How frame scores become shot or video scores."""

    max = "max"
    mean = "mean"


class IndexKind(str, Enum):
    """Index kinds offered on the command line."""

    auto = "auto"
    exact = "exact"
    ivf = "ivf"
    hnsw = "hnsw"


@app.command("search")
def search_command(
    collection: opt.Collection,
    feature: str = typer.Argument(..., help="Feature to search (a directory in FeatureData)."),
    queries: list[str] = typer.Argument(None, help="Queries: an image or video file, an id, or text."),
    more_features: list[str] = typer.Option(
        None, "--feature", "-f", help="Another feature to fuse with (reciprocal-rank fusion); repeatable."
    ),
    top: int = typer.Option(10, "--top", "-k", help="Results per query."),
    aggregate: Aggregation = typer.Option(
        Aggregation.max, "--aggregate", help="Frame scores to shot/video scores (frame-level features)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    topics: Path = typer.Option(None, "--topics", help="A file of '<topic id> <query text>' lines to run."),
    trec_run: Path = typer.Option(None, "--trec-run", help="Write a TREC run file of the --topics results."),
    run_name: str = typer.Option("vcf", "--run-name", help="Run name in the TREC run file."),
    no_index: bool = typer.Option(False, "--no-index", help="Search exactly even when an index is up to date."),
    weights: Path = typer.Option(None, "--weights", help="Weights for encoding queries (default: the feature's)."),
    device: Annotated[opt.Device, typer.Option("--device", help="Where query models run.")] = "cpu",  # type: ignore[assignment]
    rootpath: opt.Rootpath = None,
) -> None:
    """Rank the shots, videos or frames of a feature against each query.

    A query naming an existing file is an image or a video (encoded with the feature's model and
    preprocessing); one equal to an id of the feature is that row (or that video/shot); anything else is
    text, for CLIP features (clip/<arch>:<tag>). Frame-level features are aggregated to their video or shot.

    \b
    Example:
        vcf search toydata "efficientnet_lite0,avgpool" shot00001_1_12 --top 5
        vcf search toydata "efficientnet_lite0,avgpool" frame.jpg --json
        vcf search toydata "clip_ViT-B-32:openai,embed" "a dog running on a beach"
        vcf search toydata A --feature B --topics topics.txt --trec-run run.txt
    """
    with vcf_errors():
        from vcf.stages.search import read_topics, search, write_trec_run

        topic_ids: list[str] = []
        texts = list(queries or [])
        if topics is not None:
            pairs = read_topics(topics)
            topic_ids = [topic for topic, _ in pairs]
            texts = [text for _, text in pairs]
        elif trec_run is not None:
            raise fail("--trec-run needs --topics")
        if not texts:
            raise fail("give at least one query, or --topics FILE")
        results = search(
            collection,
            texts,
            features=[feature, *(more_features or [])],
            top=max(top, 1000) if trec_run is not None else top,
            aggregate=aggregate.value,
            use_index=not no_index,
            weights=str(weights) if weights else None,
            device=device,
            rootpath=rootpath,
        )
        if trec_run is not None:
            lines = write_trec_run(trec_run, topic_ids, results, run_name)
            typer.echo(f"wrote {lines} lines for {len(topic_ids)} topic(s) to {trec_run}", err=True)
            results = [type(r)(r.query, r.kind, r.results[:top]) for r in results]
        if as_json:
            typer.echo(json.dumps([result.as_dict() for result in results], indent=1))
            return
        for result in results:
            table = Table(title=f"{result.kind} query: {result.query}", title_justify="left")
            for column in ("rank", "id", "score", "frame file"):
                table.add_column(column, overflow="fold")
            for rank, hit in enumerate(result.results, start=1):
                table.add_row(str(rank), hit.id, f"{hit.score:.4f}", hit.path or hit.frame or "")
            out_console.print(table)


@app.command("index")
def index_command(
    collection: opt.Collection,
    feature: str = typer.Argument(..., help="Feature to index (a directory in FeatureData)."),
    kind: IndexKind = typer.Option(IndexKind.auto, "--kind", help="exact, ivf, hnsw, or auto (by size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild even when the index is up to date."),
    quiet: opt.Quiet = False,
    rootpath: opt.Rootpath = None,
) -> None:
    """Build a nearest-neighbour index of a feature under IndexData/<feature>/ for `vcf search`.

    Exact inner product up to 200,000 rows; above, an IVF index whose probe count is tuned to reach
    recall@10 >= 0.95 against exact search on sample rows. The manifest records the choice.

    \b
    Example:
        vcf index toydata "efficientnet_lite0,avgpool"
    """
    from vcf.stages.search_index import index

    result = run_stage(
        index, quiet, collection=collection, feature=feature, kind=kind.value, rootpath=rootpath, overwrite=overwrite
    )
    state = "up to date" if result.up_to_date else f"built in {result.seconds:.1f} s"
    typer.echo(f"{result.kind} index of {result.rows} rows {state}: {result.index_dir} {result.settings}")
