"""The ``vcf`` command line: a thin Typer layer over the library's stage functions."""

from __future__ import annotations

from vcf.cli.app import app, main
from vcf.cli import commands_frames  # noqa: F401  (registers commands)

__all__ = ["app", "main"]
