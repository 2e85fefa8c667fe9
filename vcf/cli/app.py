"""The Typer app, rich progress display, and the one-line error handling every command shares."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vcf.errors import VcfError
from vcf.progress import ProgressEvent
from vcf.version import __version__

app = typer.Typer(
    name="vcf",
    help="Video collections to CNN features: frames, features, pool, concat, HDF5.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain text help: rich markup would eat "[default: ...]" and other bracketed text.
    rich_markup_mode=None,
)

# soft_wrap keeps long paths on one line when stderr is a file or a pipe (rich would wrap at 80).
err_console = Console(stderr=True, soft_wrap=True)
# Tables printed to a pipe or file get a wide fixed width instead of rich's 80-column fallback.
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)

T = TypeVar("T")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vcf {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Video collections to CNN features: frames, features, pool, concat, HDF5.

    A COLLECTION is a directory holding VideoData/ (and, later, ImageData/, FeatureData/ ...),
    or the name of one under --rootpath (default $VCF_ROOTPATH or ~/VisualSearch).
    """


class RichProgress:
    """Shows the library's progress events as rich progress bars (one bar per task)."""

    def __init__(self, quiet: bool) -> None:
        self._progress = (
            None
            if quiet
            else Progress(
                TextColumn("{task.fields[label]:>8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=False,
            )
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Callable[[ProgressEvent], None]:
        return self.callback

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None and self._tasks:
            self._progress.stop()

    def callback(self, event: ProgressEvent) -> None:
        if self._progress is None:
            return
        if not self._tasks:
            self._progress.start()  # lazily, so that an early error prints nothing else
        if event.task not in self._tasks:
            self._tasks[event.task] = self._progress.add_task("", total=event.total, label=event.task)
        task_id = self._tasks[event.task]
        update: dict[str, Any] = {"advance": event.advance}
        if event.total is not None:
            update["total"] = event.total
        if event.description is not None:
            update["description"] = event.description[-40:]
        self._progress.update(task_id, **update)


def fail(message: str) -> typer.Exit:
    """Prints a one-line error and returns the exit to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(1)


@contextlib.contextmanager
def vcf_errors() -> Iterator[None]:
    """Turns a VcfError into a one-line message and exit code 1."""
    try:
        yield
    except VcfError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted: finished work is kept; run the same command again to resume.", err=True)
        raise typer.Exit(130) from None


def run_stage(function: Callable[..., T], quiet: bool, **kwargs: Any) -> T:
    """Calls a stage function with a progress callback, handling VcfError."""
    # Choices arrive as enumerations; the library takes their values.
    plain = {key: value.value if isinstance(value, Enum) else value for key, value in kwargs.items()}
    with vcf_errors(), RichProgress(quiet) as callback:
        return function(progress=callback, **plain)


def report_failures(failures: Sequence[tuple[str, str]], failures_file: Any, quiet: bool, what: str = "item") -> None:
    """Prints a summary table of failed items (unless quiet) and a one-line pointer to the file."""
    if not failures:
        return
    if not quiet:
        table = Table(title=f"{len(failures)} {what}(s) failed", title_justify="left")
        table.add_column(what)
        table.add_column("reason")
        for item, reason in failures[:50]:
            table.add_row(item, reason)
        if len(failures) > 50:
            table.add_row("...", f"{len(failures) - 50} more")
        err_console.print(table)
    typer.echo(f"{len(failures)} {what}(s) failed; see {failures_file}", err=True)


def finish_videos(result: Any, summary: str, quiet: bool, shard: str | None, collection: str) -> None:
    """Ends a command whose units are videos: the summary line and the shard's merge reminder (unless quiet),
    the failed videos, and exit code 1 when some failed."""
    if not quiet:
        typer.echo(summary, err=True)
        if shard is not None:
            typer.echo(f"shard {shard} done; when all shards are, run: vcf merge {collection}", err=True)
    report_failures(result.failures, result.failures_file, quiet, what="video")
    if result.failures:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Runs the CLI (the ``vcf`` console script)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="vcf")
