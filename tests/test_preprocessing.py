"""Every registry entry's input tensor against its model family's own reference transform, on the same images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models as tv_models
from torchvision import transforms
from videos import REFERENCE

from vcf.io.preprocess import FrameTransform, normalize
from vcf.models import get_model, list_models
from vcf.sampling import Sampling
from vcf.stages.videofeatures import DecodeSpec

FRAMES = sorted((REFERENCE / "ImageData" / "shot00001_1").glob("*.jpg"))[:4]  # 1280x720 JPEGs of the original
PRODUCTION = [name for name in list_models() if not get_model(name).weights.builtin]
# Bound after normalisation with --resize-backend pil: float rounding of (x / 255 - mean) / std only. On the
# 0-255 scale (Hara's models) the same rounding is 255 times larger.
PIL_BOUND = 1e-5
# Measured gap of the default backend (torchvision's uint8 antialiased bilinear kernel against PIL's) on these
# frames: one uint8 level at most, at about 0.05 % of the values.
DEFAULT_MAX_LEVELS = 1
DEFAULT_MAX_SHARE = 0.002
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def torchvision_reference(name: str) -> Callable[[Image.Image], torch.Tensor]:
    return tv_models.get_model_weights(name).DEFAULT.transforms()


def timm_reference(arch: str, **override: tuple[float, ...]) -> Callable[[Image.Image], torch.Tensor]:
    import timm
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=timm.create_model(arch, pretrained=False))
    return create_transform(**{**config, **override}, is_training=False)


def wsl_reference(name: str) -> Callable[[Image.Image], torch.Tensor]:
    # facebookresearch/WSL-Images, README: the transform of its torch.hub example.
    return transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def hara_reference(name: str) -> Callable[[Image.Image], torch.Tensor]:
    # kenshohara/video-classification-3d-cnn-pytorch: Scale(112) (PIL bilinear), CenterCrop(112),
    # ToTensor(norm_value=1) (0-255), Normalize(mean, [1, 1, 1]); mean.py's ActivityNet or Kinetics mean.
    activitynet, kinetics = [114.7748, 107.7354, 99.4750], [110.63666788, 103.16065604, 96.29023126]
    mean = kinetics if name.endswith("_kmean") else activitynet
    return transforms.Compose(
        [
            transforms.Resize(112, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(112),
            transforms.PILToTensor(),
            transforms.Lambda(lambda x: x.float()),
            transforms.Normalize(mean=mean, std=[1, 1, 1]),
        ]
    )


def reference_for(name: str) -> Callable[[Image.Image], torch.Tensor]:
    """The family's own transform, chosen by the source the record names."""
    record = get_model(name)
    source = record.preprocess.reference
    families: dict[str, Callable[[], Callable[[Image.Image], torch.Tensor]]] = {
        "torchvision ": lambda: torchvision_reference(name),
        # TensorFlow EfficientNet-Lite's (x - 127) / 128 (see the record) with timm's resize and crop.
        "timm tf_efficientnet_lite0": lambda: timm_reference("tf_efficientnet_lite0", mean=LITE_MEAN, std=LITE_STD),
        "timm ": lambda: timm_reference(name.removeprefix("timm/")),
        "facebookresearch/WSL-Images": lambda: wsl_reference(name),
        "kenshohara/": lambda: hara_reference(name),
    }
    for prefix, build in families.items():
        if source.startswith(prefix):
            return build()
    raise AssertionError(f"{name}: no reference transform for {source!r}")


def vcf_input(name: str, path: Path, backend: str, oversample: bool = False) -> torch.Tensor:
    """vcf's normalised input for one image: its own decoder, resize and crop, normalisation."""
    record = get_model(name)
    pre = record.preprocess
    if record.kind == "3d":  # the per-frame transform of the video path
        resize = tuple(pre.resize) if isinstance(pre.resize, (tuple, list)) else int(pre.resize)
        spec = DecodeSpec(Sampling(), resize, pre.crop, pre.interpolation, False, None, 1, pre.antialias, backend)
        transform = spec.transform()
        crops = transform(np.array(Image.open(path).convert("RGB")))  # video frames are decoded elsewhere
    else:
        transform = FrameTransform(
            pre.resize, pre.crop, pre.interpolation, oversample, antialias=pre.antialias, resize_backend=backend
        )
        crops = transform(transform.read(path))
    return normalize(crops, pre.mean, pre.std)


def reference_input(name: str, path: Path) -> torch.Tensor:
    record = get_model(name)
    image = Image.open(path).convert("RGB")
    reference = reference_for(name)
    if record.kind == "3d" and record.preprocess.reference.startswith("torchvision "):
        clip = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # a one-frame (T, C, H, W) clip
        return reference(clip)[:, 0][None]  # (C, T, H, W) -> (1, C, H, W)
    return reference(image)[None]


def test_every_production_record_names_its_reference() -> None:
    assert PRODUCTION and "test_tiny2d" not in PRODUCTION
    for name in PRODUCTION:
        assert get_model(name).preprocess.reference, name
        reference_for(name)


# timm models are resolved on demand, not listed: two of other families stand for them.
@pytest.mark.parametrize("name", [*PRODUCTION, "timm/resnet18", "timm/convnext_atto"])
def test_pil_backend_equals_the_reference_transform(name: str) -> None:
    scale = get_model(name).preprocess.value_scale
    for path in FRAMES[:2]:
        ours, expected = vcf_input(name, path, "pil"), reference_input(name, path)
        assert ours.shape == expected.shape, path.name
        gap = (ours - expected).abs().max().item()
        assert gap <= PIL_BOUND * scale, f"{path.name}: max abs difference {gap}"


@pytest.mark.parametrize("name", PRODUCTION)
def test_default_backend_gap_is_the_measured_one(name: str) -> None:
    """The default backend differs from the reference only by the bilinear kernel's rounding: at most one uint8
    level, at a small share of the values (none for bicubic models, PIL either way, nor for video models)."""
    pre = get_model(name).preprocess
    level = 1 / 255 / min(pre.std)  # one uint8 level after normalisation
    differing = total = 0
    for path in FRAMES:
        ours, expected = vcf_input(name, path, "default"), reference_input(name, path)
        gap = (ours - expected).abs()
        limit = DEFAULT_MAX_LEVELS * level * 1.001 + PIL_BOUND * pre.value_scale
        assert gap.max().item() <= limit, path.name
        differing += int((gap > PIL_BOUND * pre.value_scale).sum())
        total += gap.numel()
    share = differing / total
    if pre.interpolation == "bilinear" and pre.antialias:
        assert 0 < share <= DEFAULT_MAX_SHARE  # a real, small gap: the default is not the reference
    else:
        assert share == 0


@pytest.mark.parametrize("backend", ["pil", "default"])
def test_ten_crops_equal_torchvision_tencrop(backend: str) -> None:
    """``,os``: Resize(256) then TenCrop(224), each crop normalised, for a bilinear and a bicubic model."""
    for name in ("resnet50", "efficientnet_lite0"):
        pre = get_model(name).preprocess
        for path in FRAMES[:2]:
            image = Image.open(path).convert("RGB")
            resized = transforms.Resize(256, interpolation=transforms.InterpolationMode(pre.interpolation))(image)
            crops = transforms.TenCrop(224)(resized)
            prepare = transforms.Compose([transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
            expected = torch.stack([prepare(crop) for crop in crops])
            ours = vcf_input(name, path, backend, oversample=True)
            gap = (ours - expected).abs().max().item()
            if backend == "pil" or pre.interpolation != "bilinear":
                assert gap <= PIL_BOUND, (name, path.name, gap)
            else:
                assert gap <= 1.01 / 255 / min(pre.std), (name, path.name, gap)
