"""Pooling frame-level features to video level: values against numpy, order, errors, reruns, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vcf.stages.pool as pool_module
from vcf.cli.app import app
from vcf.errors import CollectionError, FeatureFileError, VcfError
from vcf.io.bigfile import BigFile, write_bigfile
from vcf.io.bigfile_text import txt_to_bigfile
from vcf.io.collection import Collection
from vcf.stages.pool import pool

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FEATURE = "net,avgpool"

# Frame ids of three videos, deliberately out of frame order; video ids contain underscores.
FRAMES = {
    "shot01_1": [25, 0, 112, 12],
    "single": [7],
    "v_a_b": [3, 1, 2, 10, 0],
}


def frame_ids_shuffled(seed: int = 0) -> list[str]:
    ids = [f"{video}_{index}" for video, indices in FRAMES.items() for index in indices]
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in order]


def make_collection(tmp_path: Path, ids: list[str], dim: int = 6, seed: int = 0) -> tuple[Path, np.ndarray]:
    root = tmp_path / "coll"
    values = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    write_bigfile(Collection(root).feature_dir(FEATURE), ids, values)
    return root, values


def expected_pool(ids: list[str], values: np.ndarray, video: str, method: str = "mean") -> np.ndarray:
    """Pooled row of one video computed directly: frames in index order, mean in float64."""
    rows = sorted((int(i.rsplit("_", 1)[1]), n) for n, i in enumerate(ids) if i.rsplit("_", 1)[0] == video)
    block = values[[n for _, n in rows]].astype(np.float64)
    return (block.mean(axis=0) if method == "mean" else block.max(axis=0)).astype(np.float32)


def first_appearance(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(i.rsplit("_", 1)[0] for i in ids))


@pytest.mark.parametrize("method", ["mean", "max"])
def test_pooling_matches_numpy(tmp_path: Path, method: str) -> None:
    ids = frame_ids_shuffled()
    root, values = make_collection(tmp_path, ids)
    result = pool(root, FEATURE, method=method)
    assert result.output == root / "FeatureData" / f"{method}_{FEATURE}"
    assert (result.videos, result.frames, result.dim, result.skipped) == (3, 10, 6, False)
    out = BigFile(result.output)
    assert out.names == first_appearance(ids)
    for video in FRAMES:
        assert np.array_equal(out.read_array([video])[0], expected_pool(ids, values, video, method)), video
    assert out.matrix().dtype == np.float32
    assert np.array_equal(out.read_array(["single"])[0], values[ids.index("single_7")])
    manifest = out.manifest
    assert manifest is not None
    assert (manifest["input_feature"], manifest["method"], manifest["input"]["shape"]) == (FEATURE, method, [10, 6])


def test_long_videos_are_pooled_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = frame_ids_shuffled(3)
    root, values = make_collection(tmp_path, ids, seed=3)
    monkeypatch.setattr(pool_module, "chunk_rows", lambda dim: 2)
    for method in ("mean", "max"):
        result = pool(root, FEATURE, method=method)
        assert result.videos == 3
        out = BigFile(result.output)
        for video in FRAMES:
            got, want = out.read_array([video])[0], expected_pool(ids, values, video, method)
            # Block sums add in another order than numpy's mean, so only the last bit may differ.
            assert np.array_equal(got, want) if method == "max" else np.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_videoset_order_missing_and_unlisted_videos(tmp_path: Path) -> None:
    ids = frame_ids_shuffled()
    root, values = make_collection(tmp_path, ids)
    videoset = Collection(root).videoset_file
    videoset.parent.mkdir(parents=True)
    videoset.write_text("v_a_b\nno_frames\nshot01_1\n")
    result = pool(root, FEATURE)
    assert (result.missing_videos, result.unlisted_videos, result.videos) == (1, 1, 3)
    out = BigFile(result.output)
    assert out.names == ["v_a_b", "shot01_1", "single"]
    assert np.array_equal(out.matrix()[0], expected_pool(ids, values, "v_a_b"))


def test_reference_features_pooled_equal_their_mean(tmp_path: Path, reference_dir: Path) -> None:
    text = reference_dir / "FeatureData" / "resnext101_32x48d_wsl,avgpool" / "id.feature.txt"
    root = tmp_path / "toydata"
    txt_to_bigfile(text, Collection(root).feature_dir("resnext101_32x48d_wsl,avgpool"))
    result = pool(root, "resnext101_32x48d_wsl,avgpool")
    assert result.output.name == "mean_resnext101_32x48d_wsl,avgpool"
    out = BigFile(result.output)
    assert out.names == ["shot00001_1"] and out.shape() == [1, 2048]

    rows = {}
    for line in text.read_text().splitlines():
        name, *numbers = line.split()
        rows[int(name.rsplit("_", 1)[1])] = np.array([float(v) for v in numbers]).astype(np.float32)
    direct = np.stack([rows[k] for k in sorted(rows)]).astype(np.float64).mean(axis=0).astype(np.float32)
    assert np.array_equal(out.matrix()[0], direct)
    assert (result.output / "shape.txt").read_text() == "1 2048"


@pytest.mark.parametrize("bad", ["noindex", "video_", "video_1a", "_5"])
def test_frame_id_without_index_is_an_error(tmp_path: Path, bad: str) -> None:
    root, _ = make_collection(tmp_path, ["good_1", bad, "good_2"])
    with pytest.raises(FeatureFileError, match=f"id '{bad}' is not a frame id"):
        pool(root, FEATURE)
    assert Collection(root).list_features() == [FEATURE]
    assert [p.name for p in Collection(root).feature_root.iterdir() if ".vcf-tmp" in p.name] == []


def test_rerun_skips_changed_input_is_recomputed(tmp_path: Path) -> None:
    ids = frame_ids_shuffled()
    root, values = make_collection(tmp_path, ids)
    first = pool(root, FEATURE)
    inode = (first.output / "feature.bin").stat().st_ino
    again = pool(root, FEATURE)
    assert again.skipped and again.videos == 3
    assert (first.output / "feature.bin").stat().st_ino == inode

    write_bigfile(Collection(root).feature_dir(FEATURE), ids[:-1], values[:-1], overwrite=True)
    redone = pool(root, FEATURE)  # the input changed: the output is stale, not current
    assert not redone.skipped and redone.frames == 9
    assert not pool(root, FEATURE, overwrite=True).skipped


def test_unknown_method_and_missing_feature(tmp_path: Path) -> None:
    root, _ = make_collection(tmp_path, ["a_1"])
    with pytest.raises(VcfError, match="unknown pooling method 'median'"):
        pool(root, FEATURE, method="median")
    with pytest.raises(CollectionError, match="feature 'other' not found"):
        pool(root, "other")


def test_progress_events(tmp_path: Path) -> None:
    root, _ = make_collection(tmp_path, frame_ids_shuffled())
    events = []
    pool(root, FEATURE, progress=events.append)
    assert events[0].task == "videos" and events[0].total == 3
    assert sum(e.advance for e in events) == 3


# CLI and script ------------------------------------------------------------------------------------


def test_cli_pool(tmp_path: Path) -> None:
    root, _ = make_collection(tmp_path, frame_ids_shuffled())
    result = runner.invoke(app, ["pool", str(root), FEATURE, "--method", "max", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"FeatureData/max_{FEATURE} (3 x 6)" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    again = runner.invoke(app, ["pool", str(root), FEATURE, "--method", "max", "--quiet"])
    assert again.exit_code == 0 and again.stdout.startswith("up to date:")


def test_cli_pool_errors(tmp_path: Path) -> None:
    root, _ = make_collection(tmp_path, ["a_1", "oops"])
    result = runner.invoke(app, ["pool", "coll", FEATURE, "--rootpath", str(tmp_path), "-q"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {root.resolve() / 'FeatureData' / FEATURE}: id 'oops' is not a frame id <video>_<number>;"
        " is it a video-level feature?"
    ]
    missing = runner.invoke(app, ["pool", "nowhere", FEATURE, "--rootpath", str(tmp_path)])
    assert missing.exit_code == 1 and "collection 'nowhere' not found" in missing.stderr
    assert runner.invoke(app, ["pool", str(root), FEATURE, "--method", "median"]).exit_code == 2


def test_pooling_script(tmp_path: Path) -> None:
    ids = frame_ids_shuffled()
    make_collection(tmp_path, ids)
    env = {**os.environ, "VCF": f"{sys.executable} -m vcf"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "do_feature_pooling.sh"), "coll", FEATURE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert BigFile(tmp_path / "coll" / "FeatureData" / f"mean_{FEATURE}").names == first_appearance(ids)
    usage = subprocess.run(
        [str(ROOT / "scripts" / "do_feature_pooling.sh"), "coll"], env=env, capture_output=True, text=True, check=False
    )
    assert usage.returncode == 1 and "Usage:" in usage.stderr
