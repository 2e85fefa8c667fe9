"""The ``vcf`` command line: a thin Typer layer over the library's stage functions."""

from __future__ import annotations

from vcf.cli import (  # noqa: F401  (registers commands)
    commands_check,
    commands_features,
    commands_frames,
    commands_merge,
    commands_models,
    commands_post,
    commands_report,
    commands_search,
    commands_shots,
)
from vcf.cli.app import app, main

__all__ = ["app", "main"]
