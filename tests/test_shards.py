"""Sharded runs: the partition, byte-identical merges, missing and interrupted shards, the CLI."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner
from videos import write_index_video

import vcf.stages.image_features as feature_stage
from vcf.cli import app
from vcf.errors import VcfError
from vcf.run.partition import Shard, fixed_batches, owned_rows, plan_chunks, split_balanced, video_key
from vcf.run.store import WorkStore
from vcf.stages.features import features
from vcf.stages.frames import frames
from vcf.stages.merge import merge

runner = CliRunner()
TINY = "test_tiny2d"
INDEX_FILES = [
    "id.imagepath.txt",
    "id.videopath.txt",
    "id.videometa.txt",
    "VideoSets/multi.txt",
    "ImageSets/multi.txt",
    "frames.failures.txt",
]
BIGFILE_FILES = ["feature.bin", "id.txt", "shape.txt", "manifest.json"]
LAYERS = ["avgpool", "fc"]


def snapshot(root: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in names if (root / name).is_file()}


def frame_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "ImageData").rglob("*")) if p.is_file()}


def feature_files(root: Path) -> dict[str, bytes]:
    found = {
        f"{TINY},{layer}/{name}": root / "FeatureData" / f"{TINY},{layer}" / name
        for layer in LAYERS
        for name in BIGFILE_FILES
    }
    found["features.failures.txt"] = root / "features.failures.txt"
    return {name: path.read_bytes() for name, path in found.items() if path.is_file()}


@pytest.fixture
def multi(tmp_path: Path) -> Path:
    """Five videos of different lengths, an empty file and a name with a space."""
    root = tmp_path / "multi"
    for number, (count, fps) in enumerate([(25, 10), (13, 6), (40, 10), (7, 5), (31, 10)]):
        write_index_video(root / "VideoData" / f"v{number}.avi", count, fps=fps)
    (root / "VideoData" / "empty.mp4").write_bytes(b"")
    write_index_video(root / "VideoData" / "my video.avi", 5)
    return root


def run_features(root: Path, **options: object):  # type: ignore[no-untyped-def]
    return features(root, model=TINY, layers=LAYERS, precision="fp32", batch_size=3, workers=0, **options)


# Partition -------------------------------------------------------------------------------------


def test_split_is_contiguous_complete_and_balanced() -> None:
    weights = [5, 1, 1, 8, 2, 2, 3, 9, 1, 4]
    for count in (1, 2, 3, 4, 7, 12):
        parts = split_balanced(weights, count)
        assert len(parts) == count
        assert [i for part in parts for i in part] == list(range(len(weights)))
        ideal = sum(weights) / count
        for part in parts:
            assert abs(sum(weights[i] for i in part) - ideal) <= max(weights)
    assert split_balanced([], 3) == [range(0, 0)] * 3
    assert [len(p) for p in split_balanced([0, 0, 0, 0], 2)] == [2, 2]  # no sizes: by count


def test_shard_spec() -> None:
    assert Shard.parse("2/5") == Shard(2, 5) and Shard(2, 5).name == "2-of-5" and str(Shard(2, 5)) == "2/5"
    for bad in ("5/5", "a/b", "-1/3", "1", "1/0"):
        with pytest.raises(VcfError, match="K/N"):
            Shard.parse(bad)


def test_feature_shards_keep_videos_whole_and_reuse_the_single_runs_batches() -> None:
    ids = [f"a_{n}" for n in range(7)] + [f"b_{n}" for n in range(2)] + [f"c_{n}" for n in range(11)] + ["odd"]
    keys = [video_key(i) for i in ids]
    assert keys[:8] == ["a"] * 7 + ["b"] and keys[-1] == "odd"
    single = list(fixed_batches(len(ids), 3, 8))
    for count in (1, 2, 3, 5):
        rows = [owned_rows(keys, Shard(k, count)) for k in range(count)]
        assert [r for part in rows for r in part] == list(range(len(ids)))
        for part in rows:
            if part:  # whole videos only
                assert part.start == 0 or keys[part.start] != keys[part.start - 1]
            plans = plan_chunks(len(ids), part, 3, 8)
            assert [r for plan in plans for r in plan.rows] == list(part)
            assert all(batch in single for plan in plans for batch in plan.batches)


# Frames ----------------------------------------------------------------------------------------


def test_frame_shards_merge_to_the_single_runs_bytes(multi: Path) -> None:
    single = frames(multi, workers=1)
    assert len(single.failures) == 2
    reference, reference_frames = snapshot(multi, INDEX_FILES), frame_files(multi)
    for count in (1, 2, 3):
        for name in INDEX_FILES:
            (multi / name).unlink(missing_ok=True)
        shutil.rmtree(multi / "ImageData")
        extracted = 0
        for index in range(count):
            result = frames(multi, workers=1, shard=f"{index}/{count}")
            extracted += result.extracted
            assert not (multi / "id.imagepath.txt").exists()  # a shard writes only its part
            # The names that cannot be used are the collection's: the first shard reports them.
            assert any(item.startswith("VideoData/my") for item, _ in result.failures) == (index == 0)
        assert extracted == 5
        merged = merge(multi)
        assert merged.merged == {"frames": count} and merged.rows["frames"] == single.frames_total
        assert snapshot(multi, INDEX_FILES) == reference
        assert frame_files(multi) == reference_frames
        assert not (multi / ".vcf-shards").exists()


def test_missing_frame_shard_is_reported_and_nothing_is_written(multi: Path) -> None:
    frames(multi, workers=1, shard="0/3")
    frames(multi, workers=1, shard="2/3")
    with pytest.raises(VcfError, match=r"1 shard\(s\) not complete: 1/3 not run") as caught:
        merge(multi)
    assert "--shard K/3" in str(caught.value) and "\n" not in str(caught.value)
    assert not (multi / "id.imagepath.txt").exists()
    # Rerunning a done shard only rewrites its part; the missing one completes the set.
    assert frames(multi, workers=1, shard="0/3").extracted == 0
    frames(multi, workers=1, shard="1/3")
    assert merge(multi).merged == {"frames": 3}


def test_interrupted_frame_shard_resumes(multi: Path) -> None:
    frames(multi, workers=1, shard="0/2")
    part = multi / ".vcf-shards" / "frames" / "0-of-2"
    # As if killed before the end: no part record, one video's frames not renamed into place yet.
    (part / "part.json").unlink()
    shutil.rmtree(multi / "ImageData" / "v0")
    (multi / ".vcf-shards" / "frames" / ".0-of-2.lock").write_text("999999\n")
    frames(multi, workers=1, shard="1/2")
    with pytest.raises(VcfError, match=r"0/2 interrupted \(process 999999 died\)"):
        merge(multi)
    again = frames(multi, workers=1, shard="0/2")
    assert again.extracted == 1 and again.skipped >= 1
    merge(multi)
    assert (multi / "ImageData" / "v0").is_dir() and "v0_0" in (multi / "id.imagepath.txt").read_text()


# Features --------------------------------------------------------------------------------------


@pytest.fixture
def framed(multi: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The collection with its frames, one of them unreadable, and small chunks so that shards span several."""
    frames(multi, workers=1)
    (multi / "ImageData" / "v2" / "v2_5.jpg").write_bytes(b"not a jpeg")
    monkeypatch.setattr(feature_stage, "CHUNK_SIZE", 8)
    return multi


def test_feature_shards_merge_to_the_single_runs_bytes(framed: Path) -> None:
    single = run_features(framed)
    assert [item for item, _ in single.failures] == ["v2_5"]
    reference = feature_files(framed)
    assert len(reference) == 9
    for count in (1, 2, 3):
        shutil.rmtree(framed / "FeatureData")
        (framed / "features.failures.txt").unlink()
        rows = 0
        for index in range(count):
            result = run_features(framed, shard=f"{index}/{count}")
            assert result.feature_dirs["avgpool"].parent.parent.name == ".vcf-shards"
            rows += result.computed
        assert rows == single.computed  # whole batches are shared at shard edges, rows are not
        merged = merge(framed)
        assert merged.merged == {f"{TINY},{layer}": count for layer in LAYERS}
        assert feature_files(framed) == reference
        assert run_features(framed).up_to_date  # the merged manifest is the single run's
        assert not (framed / "FeatureData" / ".vcf-shards").exists()


def test_killed_feature_shard_resumes_and_missing_shards_are_listed(
    framed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_features(framed)
    reference = feature_files(framed)
    shutil.rmtree(framed / "FeatureData")
    run_features(framed, shard="0/3")
    calls = {"n": 0}
    original = WorkStore.commit

    def save_then_die(self, *args):  # type: ignore[no-untyped-def]
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(WorkStore, "commit", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_features(framed, shard="1/3")
    monkeypatch.setattr(WorkStore, "commit", original)
    with pytest.raises(VcfError, match=r"2 shard\(s\) not complete: 1/3 .*; 2/3 not run"):
        merge(framed, f"{TINY},avgpool")
    assert not (framed / "FeatureData" / f"{TINY},avgpool").exists()
    resumed = run_features(framed, shard="1/3")
    assert resumed.reused > 0 and resumed.computed > 0
    run_features(framed, shard="2/3")
    assert run_features(framed, shard="2/3").up_to_date  # a complete part is kept
    merged = merge(framed, f"{TINY},avgpool")
    assert list(merged.merged) == [f"{TINY},avgpool"]
    merge(framed)
    assert feature_files(framed) == reference
    assert not (framed / "FeatureData" / ".vcf-shards").exists()


def test_parts_from_another_index_are_refused(framed: Path) -> None:
    run_features(framed, shard="0/2")
    run_features(framed, shard="1/2")
    lines = (framed / "id.imagepath.txt").read_text().splitlines()
    (framed / "id.imagepath.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(VcfError, match=r"another id\.imagepath\.txt; rerun it"):
        merge(framed)


# Options and CLI -------------------------------------------------------------------------------


def test_engine_options_are_checked(multi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VcfError, match="unknown engine"):
        frames(multi, engine="spark")
    with pytest.raises(VcfError, match="--ray-address needs --engine ray"):
        frames(multi, ray_address="127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(VcfError, match=r"pip install 'vcf\[ray\]'"):
        frames(multi, engine="ray")


def test_cli_shards_and_merge(multi: Path) -> None:
    for index in range(2):
        result = runner.invoke(app, ["frames", str(multi), "--shard", f"{index}/2", "--workers", "1"])
        assert result.exit_code == (1 if index == 0 else 0), result.output  # shard 0 lists the bad names
        assert "vcf merge" in result.output
    result = runner.invoke(app, ["merge", str(multi)])
    assert result.exit_code == 0, result.output
    assert "2 shards merged" in result.output and "2 failed" in result.output
    result = runner.invoke(app, ["merge", str(multi), "--quiet"])
    assert result.exit_code == 1 and result.output.startswith("Error: nothing to merge")
    assert result.output.count("\n") == 1
    result = runner.invoke(app, ["features", str(multi), "--shard", "2/2", "--quiet"])
    assert result.exit_code == 1 and "K/N" in result.output and result.output.count("\n") == 1
    help_text = runner.invoke(app, ["merge", "--help"]).output
    assert "Example:" in help_text and "vcf merge toydata" in help_text
    assert "--shard" in runner.invoke(app, ["features", "--help"]).output


# Direct video and CSV --------------------------------------------------------------------------


def run_from_video(root: Path, **options: object):  # type: ignore[no-untyped-def]
    return features(
        root, from_video=True, model=TINY, layers=LAYERS, precision="fp32", batch_size=3, workers=0, every=3, **options
    )


def test_from_video_shards_merge_to_the_single_runs_bytes(multi: Path) -> None:
    single = run_from_video(multi)
    assert sorted(item for item, _ in single.failures) == ["VideoData/my\\ video.avi", "empty"]
    reference = feature_files(multi)
    assert len(reference) == 9
    for count in (2, 3, 7):  # 7: more shards than videos, some shards get none
        shutil.rmtree(multi / "FeatureData")
        (multi / "features.failures.txt").unlink()
        rows = 0
        for index in range(count):
            result = run_from_video(multi, shard=f"{index}/{count}")
            assert result.feature_dirs["avgpool"].parent.parent.name == ".vcf-shards"
            assert not (multi / "FeatureData" / f"{TINY},avgpool").exists()
            rows += result.computed
        assert rows == single.computed
        merged = merge(multi)
        assert merged.merged == {f"{TINY},{layer}": count for layer in LAYERS}
        assert feature_files(multi) == reference
        assert run_from_video(multi).up_to_date  # the merged manifest is the single run's
        assert not (multi / "FeatureData" / ".vcf-shards").exists()


def test_from_video_shard_resumes_and_merge_checks_the_videos(multi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vcf.stages.from_video as video_stage

    run_from_video(multi)
    reference = feature_files(multi)
    shutil.rmtree(multi / "FeatureData")
    monkeypatch.setattr(video_stage, "PART_VIDEOS", 1)  # a part per finished video
    original = video_stage.VideoParts.flush
    calls = {"n": 0}

    def flush_then_die(self):  # type: ignore[no-untyped-def]
        original(self)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(video_stage.VideoParts, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_from_video(multi, shard="0/2")
    monkeypatch.setattr(video_stage.VideoParts, "flush", original)
    assert not (multi / "FeatureData" / ".vcf-shards" / f"{TINY},avgpool" / "0-of-2").exists()
    resumed = run_from_video(multi, shard="0/2")
    assert resumed.reused > 0 and resumed.computed > 0
    assert run_from_video(multi, shard="0/2").up_to_date  # a complete part is kept
    with pytest.raises(VcfError, match=r"1 shard\(s\) not complete: 1/2 not run"):
        merge(multi)
    run_from_video(multi, shard="1/2")
    write_index_video(multi / "VideoData" / "v9.avi", 12)  # VideoData changed after the shards ran
    with pytest.raises(VcfError, match=r"other videos \(VideoData changed since\); rerun it"):
        merge(multi)
    (multi / "VideoData" / "v9.avi").unlink()
    merge(multi)
    assert feature_files(multi) == reference


def write_csv(root: Path, multi: Path) -> Path:
    videos = sorted(p.name for p in (multi / "VideoData").iterdir())
    lines = ["video_path,feature_path"] + [f"{multi / 'VideoData' / v},npy/{Path(v).stem}" for v in videos]
    lines.append(",npy/no_video")  # a bad row: no video
    csv = root / "videos.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def npy_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "npy").glob("*.npy"))}


def test_csv_shards_write_the_single_runs_files(multi: Path, tmp_path: Path) -> None:
    options = {"model": TINY, "layers": ["avgpool"], "precision": "fp32", "batch_size": 2, "workers": 0}
    single_dir, shard_dir = tmp_path / "single", tmp_path / "sharded"
    single_dir.mkdir()
    shard_dir.mkdir()
    single = features(csv=write_csv(single_dir, multi), **options)
    reference = npy_files(single_dir)
    assert len(reference) == 6 and len(single.failures) == 2  # the empty video, the row without one
    csv = write_csv(shard_dir, multi)
    failures = []
    for index in range(3):
        result = features(csv=csv, shard=f"{index}/3", **options)
        failures += result.failures
        assert result.failures_file in (None, shard_dir / f"videos.{index}-of-3.failures.txt")
    assert npy_files(shard_dir) == reference
    assert sorted(failures) == sorted(single.failures)  # the bad row once, in shard 0
    assert not (shard_dir / "videos.failures.txt").exists()
    again = features(csv=csv, shard="1/3", **options)
    assert again.computed == 0 and again.reused > 0


def test_check_lists_unmerged_shards(multi: Path) -> None:
    from vcf.stages.check import check

    run_from_video(multi, shard="0/2")
    found = [f"{p.where}: {p.what}" for p in check(multi).problems]
    assert any("shard parts not merged" in p and "1/2 not run" in p for p in found), found
    run_from_video(multi, shard="1/2")
    found = [f"{p.where}: {p.what}" for p in check(multi).problems]
    assert any(f"complete but not merged; run `vcf merge {multi} {TINY},avgpool`" in p for p in found), found
    merge(multi)
    assert not any("merge" in p.what for p in check(multi).problems)
