"""The ``vcf`` command line: a thin Typer layer over the library's stage functions."""

from __future__ import annotations

from vcf.cli.app import app, main
from vcf.cli import commands_features, commands_frames  # noqa: F401  (registers commands)
from vcf.cli import commands_post  # noqa: F401

__all__ = ["app", "main"]
