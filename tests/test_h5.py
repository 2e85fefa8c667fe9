"""HDF5 export: both BigFile layouts, the per-video rule, numpy directories, overwrite, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import vcf.stages.h5 as h5_module
from vcf.cli.app import app
from vcf.errors import OutputExistsError, VcfError
from vcf.io.bigfile import BigFile, write_bigfile
from vcf.io.collection import Collection
from vcf.stages.h5 import is_frame_level, to_h5
from vcf.stages.pool import pool

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FRAME_FEATURE = "net,avgpool"


@pytest.fixture
def frames_collection(tmp_path: Path) -> tuple[Path, list[str], np.ndarray]:
    """Frame-level features of three videos (ids out of frame order)."""
    root = tmp_path / "coll"
    ids = ["vid_a_10", "b_0", "vid_a_2", "b_1", "single_4", "vid_a_0", "b_2"]
    values = np.random.default_rng(5).standard_normal((len(ids), 8)).astype(np.float32)
    write_bigfile(Collection(root).feature_dir(FRAME_FEATURE), ids, values)
    return root, ids, values


def frames_of(ids: list[str], values: np.ndarray, video: str) -> tuple[list[int], np.ndarray]:
    rows = sorted((int(i.rsplit("_", 1)[1]), n) for n, i in enumerate(ids) if i.rsplit("_", 1)[0] == video)
    return [k for k, _ in rows], values[[n for _, n in rows]]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_per_video_layout(frames_collection: tuple[Path, list[str], np.ndarray], compression: str | None) -> None:
    root, ids, values = frames_collection
    result = to_h5(root, FRAME_FEATURE, compression=compression)
    assert result.output == root.resolve() / "H5Data" / f"{FRAME_FEATURE}.h5"
    assert (result.layout, result.datasets, result.rows, result.dim) == ("per_video", 3, 7, 8)
    with h5py.File(result.output, "r") as h5:
        assert sorted(h5) == ["b", "single", "vid_a"]
        for video in ("b", "single", "vid_a"):
            indices, rows = frames_of(ids, values, video)
            assert h5[video].dtype == np.float32
            assert np.array_equal(h5[video][()], rows)
            assert h5[video].attrs["frame_index"].tolist() == indices
            assert h5[video].compression == compression
        assert h5.attrs["layout"] == "per_video" and h5.attrs["feature"] == FRAME_FEATURE and h5.attrs["dims"] == 8
        assert json.loads(h5.attrs["source_manifest"])["shape"] == [7, 8]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_matrix_layout(frames_collection: tuple[Path, list[str], np.ndarray], compression: str | None) -> None:
    root, _, _ = frames_collection
    pooled = pool(root, FRAME_FEATURE)
    source = BigFile(pooled.output)
    out = root / "pooled.h5"
    result = to_h5(root, pooled.feature, output=out, compression=compression)
    assert (result.output, result.layout, result.datasets, result.rows, result.dim) == (out, "matrix", 1, 3, 8)
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["features", "ids"]
        assert [x.decode("utf-8") for x in h5["ids"][()]] == source.names
        assert h5["features"].dtype == np.float32
        assert np.array_equal(h5["features"][()], source.matrix())
        assert h5["features"].compression == compression
        assert h5.attrs["layout"] == "matrix" and h5.attrs["feature"] == pooled.feature
        assert json.loads(h5.attrs["source_manifest"])["method"] == "mean"


def test_layout_can_be_forced(frames_collection: tuple[Path, list[str], np.ndarray], monkeypatch) -> None:
    root, ids, values = frames_collection
    monkeypatch.setattr(h5_module, "H5_CHUNK_BYTES", 64)  # several chunks even for this small matrix
    result = to_h5(root, FRAME_FEATURE, per_video=False, output=root / "flat.h5", compression="gzip")
    assert result.layout == "matrix"
    with h5py.File(result.output, "r") as h5:
        assert [x.decode() for x in h5["ids"][()]] == ids
        assert np.array_equal(h5["features"][()], values)
        assert h5["features"].chunks == (2, 8)
    video_level = pool(root, FRAME_FEATURE).feature
    with pytest.raises(VcfError, match="per-video layout needs frame ids"):
        to_h5(root, video_level, per_video=True, output=root / "x.h5")
    write_bigfile(Collection(root).feature_dir("plain"), ["a", "b"], np.ones((2, 2)))
    with pytest.raises(VcfError, match="'a' is not one"):
        to_h5(root, "plain", per_video=True)
    assert not (root / "x.h5").exists() and not (root / "H5Data" / "plain.h5").exists()


def test_per_video_rule(tmp_path: Path) -> None:
    def bigfile(name: str, ids: list[str], manifest: dict | None = None) -> BigFile:
        return BigFile(write_bigfile(tmp_path / name, ids, np.zeros((len(ids), 1)), manifest=manifest))

    assert is_frame_level(bigfile("f1", ["v_1", "v_2", "w_1"]), "f1")
    # Every video has one row: video ids that happen to end in _<n> (TRECVID shots).
    assert not is_frame_level(bigfile("f2", ["shot1_1", "shot2_1"]), "f2")
    assert not is_frame_level(bigfile("f3", ["v_1", "v_2", "plain"]), "f3")
    # Pooled names and manifests win over the ids.
    assert not is_frame_level(bigfile("mean_x", ["shot1_1", "shot1_2"]), "mean_x")
    assert not is_frame_level(bigfile("f4", ["shot1_1", "shot1_2"]), "mean_a+max_b")
    assert not is_frame_level(bigfile("f5", ["shot1_1", "shot1_2"], {"level": "video"}), "f5")
    assert is_frame_level(bigfile("mean_y", ["v_1", "w_1"], {"level": "frame"}), "mean_y")


def test_existing_output_needs_overwrite(frames_collection: tuple[Path, list[str], np.ndarray]) -> None:
    root, _, _ = frames_collection
    out = root / "f.h5"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="exists; use --overwrite"):
        to_h5(root, FRAME_FEATURE, output=out)
    assert out.read_bytes() == b"old"
    to_h5(root, FRAME_FEATURE, output=out, overwrite=True)
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["b", "single", "vid_a"]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".f.h5")) == [".f.h5.lock"]


def test_bad_arguments(frames_collection: tuple[Path, list[str], np.ndarray], tmp_path: Path) -> None:
    root, _, _ = frames_collection
    with pytest.raises(VcfError, match="unknown compression 'zstd'"):
        to_h5(root, FRAME_FEATURE, compression="zstd")
    with pytest.raises(VcfError, match="give COLLECTION and FEATURE"):
        to_h5(root)
    with pytest.raises(VcfError, match="not both"):
        to_h5(root, FRAME_FEATURE, numpy_dir=tmp_path)
    with pytest.raises(VcfError, match=r"no \.npy files"):
        to_h5(numpy_dir=root)


# numpy directories -------------------------------------------------------------------------------


@pytest.fixture
def numpy_dir(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    directory = tmp_path / "NumpyResult"
    directory.mkdir()
    arrays = {
        "SampleVideo": np.random.default_rng(0).standard_normal((325, 16)).astype(np.float16),
        "clip.2": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        "a_scalar": np.array(3.5),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array)
    (directory / "notes.txt").write_text("not an array")
    good = np.ones((100, 10), dtype=np.float64)
    np.save(directory / "broken.npy", good)
    data = (directory / "broken.npy").read_bytes()
    (directory / "broken.npy").write_bytes(data[: len(data) // 2])
    (directory / "garbage.npy").write_bytes(b"this is not numpy")
    return directory, arrays


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_numpy_dir(numpy_dir: tuple[Path, dict[str, np.ndarray]], compression: str | None) -> None:
    directory, arrays = numpy_dir
    out = directory.parent / "result.h5"
    result = to_h5(numpy_dir=directory, output=out, compression=compression)
    assert (result.layout, result.datasets, result.dim) == ("numpy", 4, None)
    assert [name for name, _ in result.failures] == ["broken.npy", "garbage.npy"]
    reasons = dict(result.failures)
    assert "Expected (100, 10)" in reasons["broken.npy"]
    assert reasons["garbage.npy"] == "not a .npy file (no NUMPY header)"
    assert result.failures_file == directory.parent / "result.failures.txt"
    assert result.failures_file.read_text().splitlines()[0].startswith("broken.npy ")
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == sorted(arrays)
        for name, array in arrays.items():
            assert h5[name].dtype == array.dtype and h5[name].shape == array.shape
            assert np.array_equal(h5[name][()], array)
        assert h5["SampleVideo"].compression == compression


def test_numpy_dir_default_output_and_all_failing(tmp_path: Path) -> None:
    directory = tmp_path / "arrays"
    directory.mkdir()
    np.save(directory / "x.npy", np.arange(3))
    result = to_h5(numpy_dir=directory)
    assert result.output == tmp_path / "arrays.h5" and result.failures == [] and result.failures_file is None
    (directory / "x.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(VcfError, match=r"none of the 1 \.npy files .* could be read \(x\.npy: "):
        to_h5(numpy_dir=directory, output=tmp_path / "none.h5")
    assert not (tmp_path / "none.h5").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["arrays", "arrays.h5"]


# CLI and script ----------------------------------------------------------------------------------


def test_cli_to_h5(frames_collection: tuple[Path, list[str], np.ndarray]) -> None:
    root, _, _ = frames_collection
    result = runner.invoke(app, ["to-h5", str(root), FRAME_FEATURE, "-q", "--compression", "gzip"])
    assert result.exit_code == 0, result.output
    written = root.resolve() / "H5Data" / f"{FRAME_FEATURE}.h5"
    assert result.stdout.strip() == f"wrote: {written} (3 videos, 7 frames x 8)"
    again = runner.invoke(app, ["to-h5", str(root), FRAME_FEATURE, "-q"])
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [f"Error: {written} exists; use --overwrite to replace it"]
    flat = runner.invoke(app, ["to-h5", str(root), FRAME_FEATURE, "--no-per-video", "-o", str(root / "m.h5"), "-q"])
    assert flat.exit_code == 0 and flat.stdout.strip().endswith("(7 x 8)")


def test_cli_to_h5_numpy_failures(numpy_dir: tuple[Path, dict[str, np.ndarray]]) -> None:
    directory, _ = numpy_dir
    out = directory.parent / "r.h5"
    result = runner.invoke(app, ["to-h5", "--numpy-dir", str(directory), "-o", str(out)])
    assert result.exit_code == 1
    assert result.stdout.strip() == f"wrote: {out} (4 arrays)"
    assert f"2 file(s) failed; see {directory.parent / 'r.failures.txt'}" in result.stderr
    with h5py.File(out, "r") as h5:
        assert len(h5) == 4


def test_to_h5_script(frames_collection: tuple[Path, list[str], np.ndarray], tmp_path: Path) -> None:
    _, ids, values = frames_collection
    env = {**os.environ, "VCF": f"{sys.executable} -m vcf"}
    out = tmp_path / "script.h5"
    done = subprocess.run(
        [str(ROOT / "scripts" / "do_to_h5.sh"), "coll", FRAME_FEATURE, str(out), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with h5py.File(out, "r") as h5:
        assert np.array_equal(h5["vid_a"][()], frames_of(ids, values, "vid_a")[1])
