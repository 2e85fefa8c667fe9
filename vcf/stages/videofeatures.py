"""Videos as model inputs: frame and clip selection, preprocessing, decoding; the producer of every video unit."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from vcf.errors import VcfError
from vcf.io.preprocess import FrameTransform, resize_without_antialias
from vcf.io.shotlist import CollectionShots
from vcf.io.video import decode_selected
from vcf.model_kinds import KINDS, model_kind
from vcf.models.inference import Normalization
from vcf.run.jobs import VideoJob
from vcf.sampling import Sampling

DEFAULT_3D_MODEL = KINDS["3d"].default_model


def resolve_model_name(model: str | None, model_type: str | None) -> str:
    """The model to use from ``--model`` and ``--type`` (the type picks a default and must match the model).

    Raises:
        VcfError: Unknown type, or a model of the other kind.
    """
    if model is None:
        return model_kind(model_type).default_model
    model_kind(model_type)  # validates the type
    if model_type is not None:
        from vcf.models import get_model

        kind = get_model(model).kind
        if kind != model_type:
            raise VcfError(f"--model {model} is a {kind} model but --type {model_type} was given")
    return model


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClipSettings:
    """How a 3D model's clips are cut from the decoded frames.

    Attributes:
        clip_len: Frames per clip.
        clip_stride: Frames between the first frames of consecutive clips (``clip_len``: no overlap).
        clip_fps: Frame rate the frames are decoded at (time-based selection); None keeps every frame.
    """

    clip_len: int
    clip_stride: int
    clip_fps: float | None

    def sampling(self) -> Sampling:
        """The frame selection that feeds the clips."""
        return Sampling(fps=self.clip_fps) if self.clip_fps is not None else Sampling(every=1)

    def as_dict(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "clip_stride": self.clip_stride, "clip_fps": self.clip_fps}


def clip_settings(
    record: Any, clip_len: int | None = None, clip_stride: int | None = None, clip_fps: float | None = None
) -> ClipSettings | None:
    """The clip settings of a 3D model (model defaults for what is not given); None for a 2D model.

    Raises:
        VcfError: Clip options for a 2D model, or values out of range.
    """
    if not record.kind_info.reads_videos:  # clips are what models that read videos take
        options = (("--clip-len", clip_len), ("--clip-stride", clip_stride), ("--clip-fps", clip_fps))
        given = [flag for flag, value in options if value is not None]
        if given:
            raise VcfError(f"{given[0]} is for 3D models; {record.name} is a 2D model")
        return None
    length = int(clip_len) if clip_len is not None else int(record.clip_len)
    if length < 1:
        raise VcfError("--clip-len must be >= 1")
    if record.fixed_input_size and length != record.clip_len:
        raise VcfError(f"{record.name} only accepts clips of {record.clip_len} frames")
    stride = int(clip_stride) if clip_stride is not None else length
    if stride < 1:
        raise VcfError("--clip-stride must be >= 1")
    fps = float(clip_fps) if clip_fps is not None else record.clip_fps
    if fps is not None and not fps > 0:
        raise VcfError("--clip-fps must be > 0")
    return ClipSettings(length, stride, fps)


def video_sampling(
    record: Any,
    clips: ClipSettings | None,
    fps: float | None,
    every: int | None,
    num_frames: int | None,
    default_fps: float | None,
) -> Sampling:
    if clips is not None:
        given = [f for f, v in (("--fps", fps), ("--every", every), ("--num-frames", num_frames)) if v is not None]
        if given:
            raise VcfError(f"{given[0]} selects frames for 2D models; {record.name} is a 3D model, use --clip-fps")
        return clips.sampling()
    if fps is None and every is None and num_frames is None and default_fps is not None:
        return Sampling(fps=default_fps)
    return Sampling(fps=fps, every=every, num_frames=num_frames)


@dataclass(frozen=True)
class VideoSelection:
    """The options that choose what is computed of each video: frames (2D models) or clips (3D models)."""

    fps: float | None = None
    every: int | None = None
    num_frames: int | None = None
    clip_len: int | None = None
    clip_stride: int | None = None
    clip_fps: float | None = None

    def resolve(self, record: Any, default_fps: float | None) -> tuple[ClipSettings | None, Sampling]:
        """The clip settings (3D models) and the frame selection for ``record``'s model.

        Raises:
            VcfError: Options of the other kind of model, or values out of range.
        """
        clips = clip_settings(record, self.clip_len, self.clip_stride, self.clip_fps)
        return clips, video_sampling(record, clips, self.fps, self.every, self.num_frames, default_fps)


class ExactResizeCrop:
    """Resizes a frame to exactly (height, width), then takes the centre crop, like torchvision's video models.

    Their evaluation transform resizes without antialiasing, so this does too.
    """

    def __init__(self, size: tuple[int, int], crop: int, interpolation: str = "bilinear") -> None:
        self.size = (int(size[0]), int(size[1]))
        self.crop = crop
        # torchvision is imported here, not with the module: image runs of non-torchvision models never pay for it.
        from torchvision.transforms.v2 import functional as tvf

        self.interpolation = tvf.InterpolationMode(interpolation)
        self.views = 1

    def describe(self) -> dict[str, Any]:
        """The settings, for manifests."""
        return {
            "resize": list(self.size),
            "crop": self.crop,
            "interpolation": self.interpolation.value,
            "antialias": False,
            "ten_crop": False,
            "decoder": "opencv",
        }

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB to (1, 3, crop, crop) uint8."""
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        from torchvision.transforms.v2 import functional as tvf

        image = resize_without_antialias(image, self.size, self.interpolation)
        return tvf.center_crop(image, [self.crop, self.crop]).unsqueeze(0).contiguous()


@dataclass(frozen=True)
class DecodeSpec:
    """What a decoder needs to turn a video into model inputs (picklable, sent to decoder processes).

    Attributes:
        sampling: Which decoded frames are used.
        resize: Shorter side (int) or exact (height, width).
        crop: Side of the centre crop.
        interpolation: Resize filter.
        oversample: Ten crops per frame (2D only).
        clips: Clip settings (3D models), None for per-frame items.
        batch_size: Most items per message.
        antialias: False when the model's reference resizes without antialiasing.
        resize_backend: See :data:`vcf.io.preprocess.RESIZE_BACKENDS`.
    """

    sampling: Sampling
    resize: int | tuple[int, int]
    crop: int
    interpolation: str
    oversample: bool
    clips: ClipSettings | None
    batch_size: int
    antialias: bool = True
    resize_backend: str = "default"

    def transform(self) -> FrameTransform | ExactResizeCrop:
        """The per-frame transform: RGB uint8 (H, W, 3) to (views, 3, crop, crop) uint8."""
        if isinstance(self.resize, (tuple, list)):
            if self.oversample:
                raise VcfError("ten-crop oversampling needs a model resized by its shorter side")
            return ExactResizeCrop(tuple(self.resize), self.crop, self.interpolation)  # type: ignore[arg-type]
        return FrameTransform(
            self.resize,
            self.crop,
            self.interpolation,
            self.oversample,
            antialias=self.antialias,
            resize_backend=self.resize_backend,
        )


def decode_spec(
    record: Any,
    sampling: Sampling,
    clips: ClipSettings | None,
    oversample: bool,
    batch: int,
    resize_backend: str = "default",
) -> DecodeSpec:
    if clips is not None and oversample:
        raise VcfError("--oversample is for 2D models")
    pre = record.preprocess
    resize = tuple(pre.resize) if isinstance(pre.resize, (tuple, list)) else int(pre.resize)
    spec = DecodeSpec(
        sampling, resize, int(pre.crop), pre.interpolation, oversample, clips, batch, pre.antialias, resize_backend
    )  # type: ignore[arg-type]
    spec.transform()  # refuses an unknown backend before any work starts
    return spec


def video_preprocessing(record: Any, spec: DecodeSpec) -> dict[str, Any]:
    pre = record.preprocess
    return {**spec.transform().describe(), "mean": list(pre.mean), "std": list(pre.std), "value_scale": pre.value_scale}


# ------------------------------------------------------------------------------------------- decoding


def group_clips(
    frames: Iterable[tuple[int, torch.Tensor]], clip_len: int, clip_stride: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Groups consecutive (frame index, (3, H, W)) frames into (first frame index, (3, T, H, W)) clips.

    A clip starts every ``clip_stride`` frames; trailing frames that do not fill a clip are dropped, except
    that a video too short for one clip gives one, padded by repeating its last frame. Only one clip's
    frames are held at a time.
    """
    window: deque[tuple[int, int, torch.Tensor]] = deque()
    start = 0
    emitted = False
    for position, (index, frame) in enumerate(frames):
        if position < start:
            continue  # between clips, when the stride is longer than a clip
        window.append((position, index, frame))
        if len(window) == clip_len:
            yield window[0][1], torch.stack([f for _, _, f in window], dim=1)
            emitted = True
            start += clip_stride
            while window and window[0][0] < start:
                window.popleft()
    if not emitted and window:
        padded = [f for _, _, f in window] + [window[-1][2]] * (clip_len - len(window))
        yield window[0][1], torch.stack(padded, dim=1)


def decode_items(path: Path, spec: DecodeSpec) -> Iterator[tuple[int, torch.Tensor]]:
    """The model inputs of one video: ``(frame index, (views, 3, H, W))`` frames, or ``(first frame index,
    (3, T, H, W))`` clips, preprocessed uint8.

    Raises:
        VideoError: The video cannot be decoded.
    """
    sampling = spec.sampling
    if isinstance(sampling, CollectionShots):
        sampling = sampling.for_video(path.stem)  # type: ignore[assignment]
    _, frames = decode_selected(path, sampling)
    transform = spec.transform()
    pixels = ((n, transform(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))) for n, frame in frames)
    if spec.clips is None:
        yield from pixels
    else:
        yield from group_clips(((n, x[0]) for n, x in pixels), spec.clips.clip_len, spec.clips.clip_stride)


def check_workers(workers: int | None, timeout: float | None) -> None:
    if workers is not None and workers < 0:
        raise VcfError("--workers must be >= 0")
    if timeout is not None and not timeout > 0:
        raise VcfError("--video-timeout must be > 0")


def video_job(
    record: Any,
    extractor: Any,
    spec: DecodeSpec,
    device: Any,
    precision: str,
    workers: int | None,
    timeout: float | None,
) -> VideoJob:
    """What an engine needs to decode videos with ``spec`` and run ``record``'s model on them."""
    pre = record.preprocess
    kind = record.kind_info
    return VideoJob(
        extractor=extractor,
        # Registry means and stds are on the [0, 1] scale whatever the model's original value scale.
        normalization=Normalization(tuple(pre.mean), tuple(pre.std)),
        device=device,
        precision=precision,
        channels_last=kind.channels_last,
        decode=decode_items,
        spec=spec,
        views=1 if spec.clips is not None else spec.transform().views,
        clips=spec.clips is not None,
        workers=workers,
        timeout=timeout,
    )
