"""The README's option lists stay in step with each command's --help: both parsed, compared both ways."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vcf.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
OPTION = r"--[a-z][a-z0-9-]*[a-z0-9]"
# README section (by the start of its heading) -> the commands whose options it describes.
SECTIONS = {
    "## `vcf frames": ("frames",),
    "## `vcf shots": ("shots", "frames", "features"),
    "## `vcf features": ("features",),
    "## `vcf pool`, `vcf concat`, `vcf to-h5`": ("pool", "concat", "to-h5"),
    "## Features straight from videos": ("features",),
    "## Many machines": ("frames", "features", "merge"),
    "## Search your videos": ("search", "index"),
    "## `vcf check": ("check",),
}
DOCUMENTED = ("frames", "shots", "features", "pool", "concat", "to-h5", "merge", "search", "index", "check")
# Options of other programs the README shows (ruff, sbatch, pip).
FOREIGN = {"--check", "--array", "--wrap", "--parsable", "--dependency"}


def help_options(command: str) -> set[str]:
    """The options listed in the Options part of ``vcf COMMAND --help``."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    options: set[str] = set()
    listing = result.output.split("\nOptions:", 1)[1]
    for line in listing.splitlines():
        row = re.match(rf"^\s{{2}}(?:-\w, )?({OPTION})(?: / ({OPTION}))?", line)
        if row:
            options.update(name for name in row.groups() if name)
    return options - {"--help"}


def readme_sections() -> tuple[set[str], dict[str, set[str]]]:
    """Options named in the README's introduction, and in each section of ``SECTIONS``."""
    text = README.read_text()
    parts = re.split(r"\n(?=## )", text)
    intro = set(re.findall(rf"(?<![\w-]){OPTION}", parts[0])) - FOREIGN
    sections: dict[str, set[str]] = {}
    for part in parts[1:]:
        for heading in SECTIONS:
            if part.startswith(heading):
                sections[heading] = set(re.findall(rf"(?<![\w-]){OPTION}", part)) - FOREIGN
    assert set(sections) == set(SECTIONS), "a README section was renamed; update SECTIONS"
    return intro, sections


def test_help_is_parsed() -> None:
    assert {"--quality", "--workers", "--relative-paths"} <= help_options("frames")
    assert {"--per-video", "--no-per-video", "--output"} <= help_options("to-h5")


def test_readme_names_only_real_options() -> None:
    intro, sections = readme_sections()
    real = set().union(*(help_options(command) for command in DOCUMENTED))
    for heading, named in sections.items():
        assert named - real == set(), f"README section {heading!r} names options no command has"
    assert intro - real == set()


@pytest.mark.parametrize("command", DOCUMENTED)
def test_every_option_is_in_the_readme(command: str) -> None:
    intro, sections = readme_sections()
    described = intro.union(*(sections[h] for h, commands in SECTIONS.items() if command in commands))
    assert help_options(command) - described == set(), f"`vcf {command}` options missing from the README"
