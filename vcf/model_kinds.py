"""Kinds of models (2D image models, 3D clip models) and what each kind reads, as a table."""

from __future__ import annotations

from dataclasses import dataclass

from vcf.errors import ModelError


@dataclass(frozen=True)
class ModelKind:
    """What a kind of model reads and how it is run.

    Attributes:
        name: ``2d`` or ``3d``.
        item: What one input is and one output row describes: ``frames`` or ``clips`` (also the progress task).
        rank: Dimensions of a model input batch: 4 (B, 3, H, W) or 5 (B, 3, T, H, W).
        default_model: The model used when only the kind is given.
        reads_videos: Its inputs come from videos (clips), never from frame files.
        channels_last: Run with the channels-last memory format (a 4-d format 5-d weights do not accept).
    """

    name: str
    item: str
    rank: int
    default_model: str
    reads_videos: bool
    channels_last: bool


# r2plus1d_18 is the best of torchvision's Kinetics-400 ResNet-18 video models and downloads like any other
# model; Hara's resnext101_3d_kinetics (the older tools' 3D model) needs its checkpoint passed with --weights.
KINDS = {
    "2d": ModelKind("2d", "frames", 4, "resnext101_32x48d_wsl", reads_videos=False, channels_last=True),
    "3d": ModelKind("3d", "clips", 5, "r2plus1d_18", reads_videos=True, channels_last=False),
}


def model_kind(name: str | None) -> ModelKind:
    """The kind named ``name`` (None: 2d).

    Raises:
        VcfError: Not a kind of :data:`KINDS`.
    """
    if name is None:
        return KINDS["2d"]
    if name not in KINDS:
        raise ModelError(f"unknown --type {name!r}; use {' or '.join(KINDS)}")
    return KINDS[name]
