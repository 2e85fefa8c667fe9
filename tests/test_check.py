"""``vcf check``: a sound collection passes; each kind of damage is reported where it is."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from videos import write_index_video

from vcf.cli import app
from vcf.io.bigfile import write_bigfile
from vcf.io.collection import Collection
from vcf.stages.check import check
from vcf.stages.frames import frames
from vcf.stages.pool import pool

runner = CliRunner()
FEATURE = "net,avgpool"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection with frames (relative paths, so it can be copied), a frame-level feature and its pooling."""
    root = tmp_path_factory.mktemp("check") / "coll"
    write_index_video(root / "VideoData" / "alpha.avi", 25, fps=10)
    write_index_video(root / "VideoData" / "beta_2.mp4", 13, fps=6)
    frames(root, workers=1, relative_paths=True)
    index = root / "id.imagepath.txt"
    ids = [line.split(" ", 1)[0] for line in index.read_text().splitlines()]
    manifest = {
        "model": "net",
        "layer": "avgpool",
        "level": "frame",
        "failures": 0,
        "input": {"index": index.name, "sha256": hashlib.sha256(index.read_bytes()).hexdigest(), "count": len(ids)},
    }
    values = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32)
    write_bigfile(Collection(root).feature_dir(FEATURE), ids, values, manifest=manifest)
    pool(root, FEATURE)
    return root


@pytest.fixture
def coll(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "coll"
    shutil.copytree(built, root)
    return root


def problems(root: Path, feature: str | None = None) -> list[str]:
    return [str(p) for p in check(root, feature).problems]


def test_sound_collection_passes(coll: Path) -> None:
    result = check(coll)
    assert result.ok, result.problems
    assert (result.videos, result.frames, result.features) == (2, 10, 2)
    cli = runner.invoke(app, ["check", str(coll)])
    assert cli.exit_code == 0 and "OK:" in cli.output


def test_missing_and_truncated_frames(coll: Path) -> None:
    (coll / "ImageData" / "alpha" / "alpha_5.jpg").unlink()
    frame = coll / "ImageData" / "beta_2" / "beta_2_3.jpg"
    frame.write_bytes(frame.read_bytes()[:300])
    found = problems(coll)
    assert any(p.startswith("ImageData/alpha:") and "alpha_5.jpg missing" in p for p in found)
    assert any(p.startswith("ImageData/beta_2:") and "truncated JPEG" in p for p in found)


def test_extra_frame_and_unreadable_record(coll: Path) -> None:
    shutil.copy(coll / "ImageData" / "alpha" / "alpha_0.jpg", coll / "ImageData" / "alpha" / "alpha_1.jpg")
    (coll / "ImageData" / "beta_2" / ".vcf-frames.json").write_text("{broken")
    found = problems(coll)
    assert any("alpha: 1 frame file(s) not in its record" in p for p in found)
    assert any(p.startswith("ImageData/beta_2:") and "unreadable completion record" in p for p in found)


def test_index_problems_name_file_and_line(coll: Path) -> None:
    index = coll / "id.imagepath.txt"
    lines = index.read_text().splitlines()
    lines.insert(1, "broken_line")
    lines.append(lines[2])
    lines.append("ghost_0 ImageData/ghost/ghost_0.jpg")
    index.write_text("\n".join(lines) + "\n")
    found = problems(coll)
    assert any(p.startswith("id.imagepath.txt:2:") and "malformed" in p for p in found)
    assert any(p.startswith(f"id.imagepath.txt:{len(lines) - 1}:") and "duplicate id" in p for p in found)
    assert any("ghost_0" in p and "does not exist" in p for p in found)
    # The feature was made from the index before it changed.
    assert any(p.startswith(f"FeatureData/{FEATURE}:") and "another version of id.imagepath.txt" in p for p in found)


def test_complete_frames_missing_from_the_index(coll: Path) -> None:
    index = coll / "id.imagepath.txt"
    index.write_text("".join(line + "\n" for line in index.read_text().splitlines() if not line.startswith("beta")))
    found = problems(coll)
    assert any(p.startswith("ImageData/beta_2:") and "not in id.imagepath.txt" in p for p in found)


def test_video_not_processed_yet(coll: Path) -> None:
    write_index_video(coll / "VideoData" / "gamma.avi", 5)
    found = problems(coll)
    assert any(p.startswith("VideoData:") and "gamma" in p for p in found)
    (coll / "frames.failures.txt").write_text("gamma cannot open\n")
    result = check(coll)
    assert result.ok and any("frames.failures.txt" in str(n) for n in result.notes)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("shape", "shape.txt says 11 rows but id.txt has 10"),
        ("truncated", "truncated"),
        ("long", "too long"),
        ("nan", "contain NaN or inf"),
        ("manifest", "manifest.json says shape"),
    ],
)
def test_damaged_feature(coll: Path, damage: str, message: str) -> None:
    directory = coll / "FeatureData" / FEATURE
    if damage == "shape":
        (directory / "shape.txt").write_text("11 8")
    elif damage == "truncated":
        with open(directory / "feature.bin", "r+b") as handle:
            handle.truncate(100)
    elif damage == "long":
        with open(directory / "feature.bin", "ab") as handle:
            handle.write(b"\0" * 32)
    elif damage == "nan":
        with open(directory / "feature.bin", "r+b") as handle:
            handle.seek(4 * 8 * 3)
            handle.write(np.array([np.nan, np.inf], dtype="<f4").tobytes())
    else:
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["shape"] = [3, 8]
        (directory / "manifest.json").write_text(json.dumps(manifest))
    found = problems(coll, FEATURE)
    assert any(p.startswith(f"FeatureData/{FEATURE}:") and message in p for p in found), found


def test_derived_feature_goes_stale_when_its_input_changes(coll: Path) -> None:
    directory = coll / "FeatureData" / FEATURE
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["model"] = "another"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    found = problems(coll)
    assert any(p.startswith(f"FeatureData/mean_{FEATURE}:") and "changed since" in p for p in found)


def test_one_feature_only(coll: Path) -> None:
    (coll / "FeatureData" / f"mean_{FEATURE}" / "shape.txt").write_text("x")
    assert problems(coll, FEATURE) == []
    assert problems(coll, "nope") and "not found" in problems(coll, "nope")[0]


def test_leftovers_of_killed_runs(coll: Path) -> None:
    dead = 999_999_999
    (coll / "ImageData" / f".alpha.vcf-tmp-{dead}").mkdir()
    (coll / "FeatureData" / f".{FEATURE}.vcf-tmp-{dead}").mkdir()
    (coll / f".id.imagepath.txt.vcf-tmp-{dead}").write_text("half")
    work = coll / "FeatureData" / ".vcf-work-0123456789abcdef"
    work.mkdir()
    (work / "chunk-000000.npz").write_bytes(b"")
    (work / "settings.json").write_text(json.dumps({"settings": {"input": {"count": 10}}}))
    (coll / ".vcf-frames.lock").write_text(f"{dead}\n")
    found = problems(coll)
    for where in (
        f"ImageData/.alpha.vcf-tmp-{dead}",
        f"FeatureData/.{FEATURE}.vcf-tmp-{dead}",
        f".id.imagepath.txt.vcf-tmp-{dead}",
    ):
        assert any(p.startswith(where + ":") and "temporary output" in p for p in found), where
    assert any("unfinished features run (1 part(s) saved of a run over 10 inputs)" in p for p in found)
    assert any(p.startswith(".vcf-frames.lock:") and f"stale lock of process {dead}" in p for p in found)
    cli = runner.invoke(app, ["check", str(coll), "-q"])
    assert cli.exit_code == 1 and len(cli.output.splitlines()) == len(found)


def test_live_lock_and_temporary_output_are_notes(coll: Path) -> None:
    (coll / "ImageData" / f".alpha.vcf-tmp-{os.getpid()}").mkdir()
    lock = coll / ".vcf-frames.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib; from vcf.io.atomic import OutputLock; "
            "OutputLock(pathlib.Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = check(coll)
    finally:
        holder.kill()
        holder.wait()
    assert result.ok, result.problems
    notes = [str(n) for n in result.notes]
    assert any(f"held by running process {holder.pid}" in n for n in notes)
    assert any(f"being written by running process {os.getpid()}" in n for n in notes)
    # Its owner was killed: the lock is stale now.
    assert any("stale lock" in p for p in problems(coll))


def test_damaged_h5(coll: Path) -> None:
    from vcf.stages.h5 import to_h5

    out = to_h5(coll, f"mean_{FEATURE}").output
    assert check(coll).ok
    out.write_bytes(out.read_bytes()[:500])
    assert any(p.startswith(f"H5Data/mean_{FEATURE}.h5:") and "cannot be read as HDF5" in p for p in problems(coll))


def test_many_problems_are_summarised(coll: Path) -> None:
    index = coll / "id.imagepath.txt"
    index.write_text(index.read_text() + "".join(f"x{n}_0 ImageData/x/x{n}_0.jpg\n" for n in range(30)))
    found = [p for p in problems(coll) if "does not exist" in p or "more like" in p]
    assert len(found) == 21 and "... and 10 more like" in found[-1]


def test_cli_help_has_an_example() -> None:
    output = runner.invoke(app, ["check", "--help"]).output
    assert "Example:" in output and "vcf check toydata" in output


def test_h5_goes_stale_when_its_feature_changes(coll: Path) -> None:
    from vcf.stages.h5 import to_h5

    to_h5(coll, f"mean_{FEATURE}")
    assert check(coll).ok
    directory = coll / "FeatureData" / f"mean_{FEATURE}"
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["method"] = "changed"
    (directory / "manifest.json").write_text(json.dumps(manifest))
    found = problems(coll)
    assert any(p.startswith(f"H5Data/mean_{FEATURE}.h5:") and "changed since" in p for p in found), found
