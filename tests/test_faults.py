"""The fault matrix: kill -9, full disks, I/O errors, held locks and bad input against every stage.

The default run takes a small seeded subset; ``pytest --faults`` (or ``VCF_FAULTS=full``) runs the whole
matrix. Every CLI run is a real subprocess; the table of results is printed at the end of the session.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faults import (
    RESULTS,
    Lab,
    Row,
    Run,
    Stage,
    clean_error,
    concurrent_scenario,
    disk_full_scenario,
    drop_file_permission_override,
    format_table,
    held_lock_scenario,
    io_error_scenario,
    kill_scenarios,
    reset,
    run_cli,
    seeded,
    snapshot,
    tmpfs_available,
    unit_files,
)
from typer.testing import CliRunner
from videos import fps_zero_mp4, write_index_video

from vcf.cli import app
from vcf.io.bigfile import BigFile, write_bigfile
from vcf.io.collection import Collection, write_id_list
from vcf.stages.check import check

pytestmark = pytest.mark.timeout(1800)
runner = CliRunner()

# (id, frames, fps, extension): about forty frames in all with the default two-per-second rule.
VIDEOS = (
    ("v00", 30, 10, ".avi"),
    ("v01", 25, 10, ".mp4"),
    ("v02", 40, 8, ".avi"),
    ("v03_x", 22, 6, ".mkv"),
    ("v04", 30, 10, ".mp4"),
    ("v05", 18, 12, ".avi"),
)
TINY = "test_tiny2d"
FEATURE_ARGS = ["--model", TINY, "--layer", "avgpool", "--layer", "fc", "--device", "cpu", "--precision", "fp32"]


def build_videos(root: Path) -> None:
    for video_id, count, fps, ext in VIDEOS:
        write_index_video(root / "VideoData" / f"{video_id}{ext}", count, fps=fps)


def build_frames(root: Path) -> None:
    from vcf.stages.frames import frames

    build_videos(root)
    frames(root, workers=1, relative_paths=True)


def write_frame_feature(root: Path, name: str, videos: int, per_video: int, dim: int, seed: int) -> None:
    ids = [f"vid{v:05d}_{f}" for v in range(videos) for f in range(per_video)]
    values = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    write_bigfile(Collection(root).feature_dir(name), ids, values, manifest={"level": "frame"})
    write_id_list(Collection(root).videoset_file, [f"vid{v:05d}" for v in range(videos)])


def build_pool_input(root: Path) -> None:
    write_frame_feature(root, "net,avgpool", videos=3000, per_video=6, dim=128, seed=1)


def build_concat_input(root: Path) -> None:
    rng = np.random.default_rng(2)
    ids = [f"vid{v:05d}" for v in range(3000)]
    for name, dim in (("mean_a", 96), ("mean_b", 64)):
        order = rng.permutation(len(ids))
        values = rng.standard_normal((len(ids), dim)).astype(np.float32)
        write_bigfile(Collection(root).feature_dir(name), [ids[i] for i in order], values, manifest={"level": "video"})


def build_h5_input(root: Path) -> None:
    write_frame_feature(root, "net,avgpool", videos=600, per_video=5, dim=64, seed=3)


def build_csv(root: Path) -> None:
    for video_id, count, fps, ext in VIDEOS:
        write_index_video(root / "videos" / f"{video_id}{ext}", count, fps=fps)
    rows = [f"videos/{video_id}{ext},out/{video_id}.npy" for video_id, _, _, ext in VIDEOS]
    (root / "in.csv").write_text("video_path,feature_path\n" + "\n".join(rows) + "\n")


# Model stages decode in their own process (--workers 0): a loader or decoder process doubles the start-up
# time on two cores. Killing a run whose loader processes are starting is a test of its own.
VIDEO_ARGS = ["--model", TINY, "--device", "cpu", "--precision", "fp32", "--workers", "0", "-q"]

FRAMES = Stage(
    name="frames",
    build=build_videos,
    args=lambda w: ["frames", str(w), "--workers", "1", "-q"],
    units=("ImageData/*",),
    fsyncs=5,
)
FEATURES = Stage(
    name="features",
    build=build_frames,
    args=lambda w: ["features", str(w), *FEATURE_ARGS, "--workers", "0", "--batch-size", "4", "-q"],
    units=("FeatureData/*",),
    knobs=(("chunk", 8),),
    fsyncs=14,
)
FROM_VIDEO = Stage(
    name="features --from-video",
    build=build_videos,
    args=lambda w: ["features", str(w), "--from-video", "--layer", "avgpool", "--layer", "fc", *VIDEO_ARGS],
    units=("FeatureData/*",),
    knobs=(("part_videos", 2),),
    fsyncs=12,
)
CSV = Stage(
    name="features --csv",
    build=build_csv,
    args=lambda w: ["features", "--csv", str(w / "in.csv"), *VIDEO_ARGS],
    units=("out/*.npy",),
    fsyncs=6,
    locked=False,
)
POOL = Stage(
    name="pool",
    build=build_pool_input,
    args=lambda w: ["pool", str(w), "net,avgpool", "-q"],
    units=("FeatureData/mean_net,avgpool",),
)
CONCAT = Stage(
    name="concat",
    build=build_concat_input,
    args=lambda w: ["concat", str(w), "mean_a+mean_b", "-q"],
    units=("FeatureData/mean_a+mean_b",),
)
TO_H5 = Stage(
    name="to-h5",
    build=build_h5_input,
    args=lambda w: ["to-h5", str(w), "net,avgpool", "-q"],
    units=("H5Data/*.h5",),
    fsyncs=1,
)
STAGES = (FRAMES, FEATURES, FROM_VIDEO, CSV, POOL, CONCAT, TO_H5)
STAGE_IDS = [s.name.replace("features --", "") for s in STAGES]
MODEL_STAGES = (FEATURES, FROM_VIDEO, CSV)


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--faults", default=False)) or os.environ.get("VCF_FAULTS") == "full"


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session", autouse=True)
def table_file() -> Iterator[None]:
    yield
    target = os.environ.get("VCF_FAULTS_TABLE")
    if target and RESULTS:
        Path(target).write_text(format_table() + "\n", encoding="utf-8")


def record(row: Row) -> None:
    """Adds a row to the table and fails with its details when a promise was broken."""
    RESULTS.append(row)
    assert row.ok, f"{row.fault} / {row.stage}:\n" + "\n".join(row.details[:20])


def full_only(full: bool, stage: Stage, *light: Stage) -> None:
    """Skips unless the full matrix runs or ``stage`` is one of the ``light`` ones of the default subset."""
    if not full and stage not in light:
        pytest.skip("part of the full matrix (pytest --faults)")


LIGHT = (FRAMES, POOL, CONCAT, TO_H5)


# kill -9 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_kill9_then_rerun_gives_the_same_bytes(stage: Stage, lab: Lab, full: bool) -> None:
    row = Row("kill -9 at a random moment, rerun", stage.name)
    kills = 20 if full else (2 if stage in MODEL_STAGES else 3)
    kill_scenarios(lab, stage, row, kills=kills, chain=5 if full else 3, rng=seeded("kill", stage.name))
    record(row)


def test_kill9_while_loader_processes_start(lab: Lab, full: bool) -> None:
    """Loader processes come from a fork server; a run killed while they start must not leave them behind."""
    ref = lab.reference(FEATURES)
    assert ref.lock_path is not None
    work = lab.base / "loader-kills"
    rng = seeded("loader")
    row = Row("kill -9 while loader workers start (--workers 2)", "features")
    args = ["features", str(work), *FEATURE_ARGS, "--workers", "2", "--batch-size", "4", "-q"]
    for _ in range(3 if full else 1):
        reset(lab.template(FEATURES), work)
        # The lock's name comes from the output paths, which differ from the reference run's: look for it.
        lock_dir = work / ref.lock_path.parent.relative_to(lab.work(FEATURES))
        run = run_cli(
            args,
            knobs=FEATURES.knob_dict,
            kill_after_lock=(lock_dir / "unknown.lock", rng.uniform(0.0, 1.5)),
            lock_dirs=[lock_dir],
        )
        row.scenarios += 1
        row.runs += 2
        row.injections += run.killed
        if not run.killed:
            row.details.append(f"the kill did not land: {run.describe()}")
        row.orphans += len(run.orphans)
        if run.orphans:
            row.details.append(f"processes {run.orphans} outlived the killed run")
        final = run_cli(FEATURES.args(work), knobs=FEATURES.knob_dict)
        snap = snapshot(work)
        outputs = [k for k in ref.snapshot if k.startswith("FeatureData/")]
        row.recovered += final.rc == 0 and check(work).ok and run.killed
        row.identical += all(snap.get(k) == ref.snapshot[k] for k in outputs)
    record(row)


def test_worker_start_up_is_not_counted_in_the_timeout() -> None:
    """A worker replacing a hung one may start slowly on a busy machine; its task's timeout starts with the task."""
    import functools
    import time

    from worker_tasks import behave

    from vcf.run.processes import TaskFailed, run_isolated

    slow_start = functools.partial(time.sleep, 2.0)
    results = dict(run_isolated(behave, ["hang", "a", "b"], workers=1, timeout=1.0, initializer=slow_start))
    assert isinstance(results["hang"], TaskFailed) and "timed out" in results["hang"].reason
    assert results["a"] == "A" and results["b"] == "B"


# Full disk and I/O errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_disk_full_then_rerun(stage: Stage, lab: Lab, full: bool) -> None:
    full_only(full, stage, *LIGHT)
    reason = tmpfs_available(lab.base)
    if reason is not None:
        pytest.skip(reason)
    rng = seeded("enospc", stage.name)
    row = Row("ENOSPC (small tmpfs), free space, rerun", stage.name)
    for _ in range(1 if not full or stage in MODEL_STAGES else 4):
        disk_full_scenario(lab, stage, row, rng.uniform(0.05, 0.95))
    record(row)


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_io_error_then_rerun(stage: Stage, lab: Lab, full: bool) -> None:
    full_only(full, stage, *LIGHT)
    rng = seeded("eio", stage.name)
    count = 1 if not full or stage in MODEL_STAGES else 4
    row = Row("EIO on fsync, rerun", stage.name)
    for nth in sorted(rng.sample(range(1, stage.fsyncs + 1), min(stage.fsyncs, count))):
        io_error_scenario(lab, stage, row, nth)
    record(row)


# Locks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_held_lock_is_refused_then_stale_lock_taken_over(stage: Stage, lab: Lab, full: bool) -> None:
    if not stage.locked:
        pytest.skip("--csv runs share their CSV: each output is checked just before it is computed")
    full_only(full, stage, *LIGHT)
    row = Row("lock held by a live process, then owner killed", stage.name)
    held_lock_scenario(lab, stage, row)
    record(row)


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_second_run_at_once(stage: Stage, lab: Lab, full: bool) -> None:
    full_only(full, stage, FRAMES, POOL)
    row = Row("same command twice at once", stage.name)
    concurrent_scenario(lab, stage, row, hold_seconds=20 if stage in MODEL_STAGES else 3)
    record(row)


# Bad input ----------------------------------------------------------------------------------------------------


BAD_VIDEOS = {
    "corrupt": "cannot open",
    "truncated": "truncated",
    "empty": "0 bytes",
    "text": "cannot open",
    "locked": "permission denied",
    "fps0": "frame rate",
    "zero": "no frame",
    "gone": "cannot read",
    "hangs": "timed out",
    "crashes": "crashed",
    "VideoData/my\\ video.mp4": "whitespace",
    "VideoData/zz/v00.avi": "duplicate",
}
BAD_VIDEO_KNOBS = {"hang": "hangs", "crash": "crashes", "modules": ["frames", "videofeatures"]}


def add_bad_videos(videos: Path) -> None:
    """Adds one video of each kind of :data:`BAD_VIDEOS` (and a good one-frame video) to ``videos``."""
    import cv2

    rng = np.random.default_rng(5)
    (videos / "corrupt.mkv").write_bytes(rng.integers(0, 256, 30000, np.uint8).tobytes())
    write_index_video(videos / "long.mkv", 60)
    data = (videos / "long.mkv").read_bytes()
    (videos / "truncated.mkv").write_bytes(data[: len(data) // 2])
    (videos / "long.mkv").unlink()
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "text.avi").write_text("not a video\n" * 100)
    write_index_video(videos / "locked.mp4", 10)
    (videos / "locked.mp4").chmod(0)
    fps_zero_mp4(videos / "fps0.mp4")
    write_index_video(videos / "one.avi", 1)
    cv2.VideoWriter(str(videos / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48)).release()
    (videos / "gone.mp4").symlink_to(videos / "nowhere.mp4")
    write_index_video(videos / "hangs.avi", 10)
    write_index_video(videos / "crashes.avi", 10)
    write_index_video(videos / "my video.mp4", 5)
    write_index_video(videos / "zz" / "v00.avi", 5)  # sorts after VideoData/v00.avi, which keeps the id


def read_failures(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines() if path.is_file() else []
    # An item with a space in its name is written with the space escaped.
    return dict(re.match(r"((?:\\ |\S)+) (.*)", line).groups() for line in lines)  # type: ignore[union-attr]


def failure_problems(run: Run, reasons: dict[str, str], expected: dict[str, str]) -> list[str]:
    """What is wrong with a run that should have failed exactly the ``expected`` items, each for its reason."""
    problems = []
    if run.rc != 1 or "Traceback" in run.stderr or f"{len(expected)} " not in run.stderr:
        problems.append(run.describe())
    if set(reasons) != set(expected):
        problems.append(f"failures {sorted(reasons)} != {sorted(expected)}")
    problems += [f"{k}: {reasons[k]!r} lacks {v!r}" for k, v in expected.items() if v not in reasons.get(k, v).lower()]
    return problems


def test_bad_videos_fail_alone(lab: Lab) -> None:
    """Each bad video is one failure with a one-line reason; the good ones are complete and unchanged."""
    ref = lab.reference(FRAMES)
    root = lab.base / "bad-videos"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(lab.template(FRAMES), root)
    add_bad_videos(root / "VideoData")
    row = Row("bad videos (12 kinds, hang and segfault included)", "frames", scenarios=1, injections=len(BAD_VIDEOS))
    args = ["frames", str(root), "--workers", "1", "--video-timeout", "3", "-q"]
    # As root, permissions are not checked unless the capability that overrides them is dropped.
    run = run_cli(args, knobs=BAD_VIDEO_KNOBS, preexec=drop_file_permission_override)
    row.runs += 1
    row.orphans += len(run.orphans)
    problems = failure_problems(run, read_failures(root / "frames.failures.txt"), BAD_VIDEOS)
    report = check(root)
    if not report.ok:
        problems.append(f"vcf check: {[str(p) for p in report.problems[:5]]}")
    if [p.name for p in (root / "ImageData").iterdir() if p.name.startswith(".")]:
        problems.append("temporary directories left in ImageData")
    if sorted(p.name for p in (root / "ImageData" / "one").glob("*.jpg")) != ["one_0.jpg"]:
        problems.append("the one-frame video was not extracted")
    if not problems:
        row.recovered += 1
    snap = snapshot(root)
    good = [f"ImageData/{v}" for v, *_ in VIDEOS]
    if all(unit_files(snap, u) == unit_files(ref.snapshot, u) for u in good):
        row.identical += 1
    row.details += problems
    record(row)


def test_bad_videos_fail_alone_from_video(lab: Lab, full: bool) -> None:
    """The same bad videos read by ``features --from-video``: each fails alone, the others' rows are written."""
    full_only(full, FROM_VIDEO)
    ref = lab.reference(FROM_VIDEO)
    root = lab.base / "bad-videos-from-video"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(lab.template(FROM_VIDEO), root)
    add_bad_videos(root / "VideoData")
    row = Row("bad videos (12 kinds, hang and segfault included)", FROM_VIDEO.name, scenarios=1)
    row.injections = len(BAD_VIDEOS)
    args = [*FROM_VIDEO.args(root)[:-3], "--workers", "1", "--video-timeout", "3", "-q"]
    run = run_cli(args, knobs=BAD_VIDEO_KNOBS, preexec=drop_file_permission_override)
    row.runs += 1
    row.orphans += len(run.orphans)
    # Which words a reason uses is the decoder's business; which videos failed is not.
    expected = dict.fromkeys(BAD_VIDEOS, "")
    problems = failure_problems(run, read_failures(root / "features.failures.txt"), expected)
    identical = True
    for layer in ("avgpool", "fc"):
        ours = BigFile(root / "FeatureData" / f"{TINY},{layer}")
        theirs = BigFile(ref.tree / "FeatureData" / f"{TINY},{layer}")
        good = [name for name in ours.names if not name.startswith("one_")]
        if good != theirs.names or not np.array_equal(ours.read_array(good), theirs.matrix()):
            identical = False
            problems.append(f"{layer}: the good videos' rows differ from a clean run's")
    row.recovered += not problems
    row.identical += identical
    row.details += problems
    record(row)


def test_csv_with_bad_rows(lab: Lab) -> None:
    """Bad CSV rows and bad videos are listed by line; every other row's .npy is written and unchanged."""
    ref = lab.reference(CSV)
    root = lab.base / "bad-csv"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(lab.template(CSV), root)
    (root / "videos" / "corrupt.mkv").write_bytes(np.random.default_rng(7).integers(0, 256, 9000, np.uint8).tobytes())
    (root / "videos" / "empty.mp4").write_bytes(b"")
    csv = root / "in.csv"
    csv.write_text(
        csv.read_text()
        + ",out/novideo.npy\n"  # line 8
        + "videos/v01.mp4,out/v00.npy\n"  # line 9: an output already named on line 2
        + "videos/missing.avi,out/missing.npy\n"
        + "videos/corrupt.mkv,out/corrupt.npy\n"
        + "videos/empty.mp4,out/empty.npy\n"
    )
    expected = {
        "in.csv:8": "no video_path",
        "in.csv:9": "also on line 2",
        str(root / "videos" / "missing.avi"): "",
        str(root / "videos" / "corrupt.mkv"): "cannot open",
        str(root / "videos" / "empty.mp4"): "0 bytes",
    }
    row = Row("CSV with bad rows and bad videos", CSV.name, scenarios=1, injections=len(expected))
    run = run_cli(CSV.args(root))
    row.runs += 1
    row.orphans += len(run.orphans)
    problems = failure_problems(run, read_failures(root / "in.failures.txt"), expected)
    written = sorted(p.name for p in (root / "out").iterdir())
    if written != sorted([*(f"{v}.npy" for v, *_ in VIDEOS), "in.manifest.json"]):
        problems.append(f"outputs {written}")
    identical = all(
        (root / "out" / f"{v}.npy").read_bytes() == (ref.tree / "out" / f"{v}.npy").read_bytes() for v, *_ in VIDEOS
    )
    csv.write_text("video,feature\nvideos/v00.avi,out/v00.npy\n")
    headerless = run_cli(CSV.args(root))
    row.runs += 1
    problem = clean_error(headerless, "in.csv:1")
    if problem:
        problems.append(f"CSV without the header: {problem}: {headerless.describe()}")
    row.recovered += not problems
    row.identical += identical
    row.details += problems
    record(row)


def test_bad_images_fail_alone(lab: Lab, full: bool) -> None:
    """Missing, empty, corrupt, truncated and non-image frames are listed; every other row is computed."""
    ref = lab.reference(FEATURES)
    root = lab.base / "bad-images"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(lab.template(FEATURES), root)
    frames_dir = root / "ImageData"
    damaged = {
        "v00_5": lambda p: p.unlink(),
        "v01_0": lambda p: p.write_bytes(b""),
        "v02_8": lambda p: p.write_bytes(np.random.default_rng(6).integers(0, 256, 4000, np.uint8).tobytes()),
        "v03_x_3": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]),
        "v04_10": lambda p: p.write_text("not an image"),
    }
    for frame_id, damage in damaged.items():
        damage(frames_dir / frame_id.rsplit("_", 1)[0] / f"{frame_id}.jpg")
    row = Row("bad images (missing, empty, corrupt, truncated, text)", "features", scenarios=1)
    row.injections = len(damaged)
    run = run_cli(FEATURES.args(root), knobs=FEATURES.knob_dict)
    row.runs += 1
    row.orphans += len(run.orphans)
    problems = []
    failures_file = root / "features.failures.txt"
    lines = failures_file.read_text().splitlines() if failures_file.is_file() else []
    reasons = dict(line.split(" ", 1) for line in lines)
    if run.rc != 1 or "Traceback" in run.stderr:
        problems.append(run.describe())
    if set(reasons) != set(damaged):
        problems.append(f"failures {sorted(reasons)} != {sorted(damaged)}")
    report = check(root)
    flagged = " ".join(str(p) for p in report.problems)
    missed = [f for f in damaged if f"{f}.jpg" not in flagged]
    if missed:
        problems.append(f"vcf check did not report the damaged frames {missed}: {flagged[:500]}")
    identical = True
    for layer in ("avgpool", "fc"):
        name = f"{TINY},{layer}"
        try:
            ours = BigFile(root / "FeatureData" / name)
        except Exception as exc:  # any failure to read the output is a finding
            problems.append(f"{name}: {exc}")
            identical = False
            continue
        theirs = BigFile(ref.tree / "FeatureData" / name)
        expected_ids = [i for i in theirs.names if i not in damaged]
        if ours.names != expected_ids:
            problems.append(f"{name}: ids differ from the clean run's less the damaged ones")
            identical = False
        elif not np.array_equal(ours.matrix(), theirs.read_array(expected_ids)):
            # Other batch compositions may change the last bits of a row; more than that is a bug.
            if not np.allclose(ours.matrix(), theirs.read_array(expected_ids), rtol=1e-5, atol=1e-6):
                problems.append(f"{name}: rows differ from the clean run's")
            identical = False
    row.recovered += not problems
    row.identical += identical
    row.details += problems
    record(row)


def features_cli(root: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["features", str(root), *FEATURE_ARGS, "--workers", "0", "-q", *extra])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("malformed", "id.imagepath.txt:"),
        ("duplicate", "duplicate id"),
        ("whitespace", "id.imagepath.txt:"),
    ],
)
def test_bad_index_lines_are_named(lab: Lab, case: str, needle: str) -> None:
    """A broken id.imagepath.txt stops the run before any work with one line naming the file and line."""
    root = lab.base / f"bad-index-{case}"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(lab.template(FEATURES), root)
    index = root / "id.imagepath.txt"
    lines = index.read_text().splitlines()
    if case == "malformed":
        lines.insert(3, "v00_99")
    elif case == "duplicate":
        lines.append(lines[2])
    else:
        frame_id, path = lines[4].split(" ", 1)
        lines[4] = f"{frame_id}\tx {path}"
    index.write_text("\n".join(lines) + "\n")
    code, output = features_cli(root)
    row = Row(f"id.imagepath.txt with a {case} line", "features", scenarios=1, injections=1, runs=1)
    lines_out = [line for line in output.splitlines() if line.strip()]
    if code == 1 and len(lines_out) == 1 and needle in lines_out[0] and "Traceback" not in output:
        row.recovered += 1
    else:
        row.details.append(f"exit {code}: {output[-1000:]}")
    feature_root = root / "FeatureData"
    if not feature_root.exists() or not [p for p in feature_root.iterdir() if not p.name.endswith(".lock")]:
        row.identical += 1
    else:
        row.details.append(f"outputs left: {sorted(p.name for p in (root / 'FeatureData').iterdir())}")
    record(row)


def test_weights_that_do_not_fit(lab: Lab, tmp_path: Path) -> None:
    """A weights file for another model, or not a weights file at all: one line, nothing written."""
    import torch

    root = tmp_path / "c"
    shutil.copytree(lab.template(FEATURES), root)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(7)}, wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    row = Row("weights that do not fit the model", "features", scenarios=2, injections=2)
    for weights in (wrong, garbage):
        code, output = features_cli(root, "--weights", str(weights))
        row.runs += 1
        lines_out = [line for line in output.splitlines() if line.strip()]
        if code == 1 and len(lines_out) == 1 and lines_out[0].startswith("Error:") and "Traceback" not in output:
            row.recovered += 1
        else:
            row.details.append(f"{weights.name}: exit {code}: {output[-1000:]}")
        left = sorted(p.name for p in (root / "FeatureData").iterdir()) if (root / "FeatureData").exists() else []
        if not [name for name in left if not name.endswith(".lock")]:
            row.identical += 1
        else:
            row.details.append(f"{weights.name}: left {left}")
    record(row)


def damage_bigfile(directory: Path, how: str) -> None:
    if how == "shape":
        n, d = (directory / "shape.txt").read_text().split()
        (directory / "shape.txt").write_text(f"{int(n) + 1} {d}")
    elif how == "truncated":
        data = (directory / "feature.bin").read_bytes()
        (directory / "feature.bin").write_bytes(data[: len(data) - 100])
    elif how == "ids":
        ids = (directory / "id.txt").read_text().split()
        (directory / "id.txt").write_text(" ".join(ids[:-1]))


@pytest.mark.parametrize("how", ["shape", "truncated", "ids"])
def test_damaged_feature_inputs_are_detected(lab: Lab, tmp_path: Path, how: str) -> None:
    """A damaged BigFile is never read as garbage: pool, concat and to-h5 refuse it in one line; check reports it."""
    root = tmp_path / "c"
    build_pool_input(root)
    video_ids = [f"vid{v:05d}" for v in range(3000)]
    write_bigfile(Collection(root).feature_dir("mean_a"), video_ids, np.zeros((3000, 8)))
    write_bigfile(Collection(root).feature_dir("mean_b"), video_ids, np.ones((3000, 4)))
    damage_bigfile(root / "FeatureData" / "net,avgpool", how)
    damage_bigfile(root / "FeatureData" / "mean_a", how)
    row = Row(f"damaged input BigFile ({how})", "pool, concat, to-h5, check", scenarios=1)
    commands = (["pool", str(root), "net,avgpool"], ["concat", str(root), "mean_a+mean_b"])
    for args in (*commands, ["to-h5", str(root), "net,avgpool"]):
        result = runner.invoke(app, [*args, "-q"])
        row.runs += 1
        row.injections += 1
        lines_out = [line for line in result.output.splitlines() if line.strip()]
        if not (result.exit_code == 1 and len(lines_out) == 1 and "FeatureData/" in lines_out[0]):
            row.details.append(f"{args[0]}: exit {result.exit_code}: {result.output[-800:]}")
    left = sorted(p.name for p in (root / "FeatureData").iterdir() if not p.name.startswith("."))
    h5_files = list((root / "H5Data").glob("*.h5")) if (root / "H5Data").exists() else []
    if left != ["mean_a", "mean_b", "net,avgpool"] or h5_files:
        row.details.append(f"outputs written from a damaged input: {left}")
    else:
        row.identical += 1
    report = check(root)
    flagged = {p.where for p in report.problems}
    if not {"FeatureData/net,avgpool", "FeatureData/mean_a"} <= flagged:
        row.details.append(f"vcf check: {[str(p) for p in report.problems]}")
    row.recovered += not row.details
    record(row)


def test_concat_of_mismatched_ids(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_bigfile(Collection(root).feature_dir("a"), ["x", "y", "z"], np.ones((3, 2)))
    write_bigfile(Collection(root).feature_dir("b"), ["x", "y"], np.ones((2, 5)))
    row = Row("concat of features with other ids or dims", "concat", scenarios=1, injections=1, runs=2)
    result = runner.invoke(app, ["concat", str(root), "a+b", "-q"])
    lines_out = [line for line in result.output.splitlines() if line.strip()]
    if result.exit_code == 1 and len(lines_out) == 1 and "different ids" in lines_out[0]:
        row.recovered += 1
    else:
        row.details.append(result.output)
    result = runner.invoke(app, ["concat", str(root), "a+b", "--intersect", "-q"])
    if result.exit_code == 0 and BigFile(root / "FeatureData" / "a+b").shape() == [2, 7]:
        row.identical += 1
    else:
        row.details.append(result.output)
    record(row)


def test_damaged_output_is_not_taken_as_up_to_date(lab: Lab) -> None:
    """An output damaged after it was written is reported, and recomputed byte for byte with --overwrite."""
    ref = lab.reference(POOL)
    work = lab.fresh(POOL)
    row = Row("output damaged after it was written, rerun", "pool", scenarios=1, injections=1)
    assert run_cli(POOL.args(work)).rc == 0
    damage_bigfile(work / "FeatureData" / "mean_net,avgpool", "truncated")
    if check(work).ok:
        row.details.append("vcf check did not notice the truncated feature.bin")
    second = run_cli(POOL.args(work))
    lines_out = second.error_lines
    if second.rc != 1 or len(lines_out) != 1 or "damaged" not in lines_out[0] or "--overwrite" not in lines_out[0]:
        row.details.append(f"rerun on a damaged output: {second.describe()}")
    third = run_cli([*POOL.args(work), "--overwrite"])
    row.runs += 3
    if third.rc == 0 and check(work).ok:
        row.recovered += not row.details
    if snapshot(work) == ref.snapshot:
        row.identical += 1
    record(row)


def test_check_reports_what_a_kill_left(lab: Lab) -> None:
    """After a kill inside the work, vcf check exits 1 naming the leftovers; after the rerun it exits 0."""
    ref = lab.reference(FRAMES)
    assert ref.lock_path is not None
    work = lab.fresh(FRAMES)
    run = run_cli(FRAMES.args(work), kill_after_lock=(ref.lock_path, 0.2))
    assert run.killed
    result = runner.invoke(app, ["check", str(work), "-q"])
    assert result.exit_code == 1
    assert "stale lock" in result.output
    assert run_cli(FRAMES.args(work)).rc == 0
    result = runner.invoke(app, ["check", str(work)])
    assert result.exit_code == 0, result.output
    assert snapshot(work) == ref.snapshot
