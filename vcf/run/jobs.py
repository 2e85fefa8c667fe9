"""What a stage hands an engine: the model and how a unit's batches are produced (picklable, sent to workers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ModelJob:
    """The model side of a job, shared by every kind of work.

    Attributes:
        extractor: The model (on the CPU); engines move it to ``device``.
        normalization: Applied on the device.
        device: Where the model runs (for Ray: the kind of device of the model actors).
        precision: Resolved precision.
        channels_last: Convert the model to channels_last (2D models only).
        compile_model: Run the model through ``torch.compile`` (local engine).
    """

    extractor: Any
    normalization: Any
    device: Any
    precision: str
    channels_last: bool = True
    compile_model: bool = False

    def inference(self) -> Any:
        from vcf.models.inference import Inference

        return Inference(
            self.extractor,
            self.normalization,
            self.device,
            self.precision,
            channels_last=self.channels_last,
            compile_model=self.compile_model,
        )


@dataclass
class ImageJob(ModelJob):
    """Images to features: each batch is read and preprocessed from files, then run through the model.

    Attributes:
        paths: Image path of every input row.
        transform: The preprocessing (``read`` then call; ``views`` crops per image).
        workers: Loader processes (None: the engine's default).
        decode_choices: Where the local engine decoded the images, and why (``vcf.run.schedule.DecodeChoice``
            records it appends; other engines leave it empty). Never part of the output's settings.
    """

    paths: Sequence[Path] = ()
    transform: Any = None
    workers: int | None = None
    decode_choices: list[Any] = field(default_factory=list)


@dataclass
class VideoJob(ModelJob):
    """Videos to features: a producer turns one video into model inputs, streamed in batches.

    Attributes:
        decode: Module-level function ``(path, spec) -> iterator of (frame index, uint8 tensor)``.
        spec: The decoder's settings (picklable); ``spec.batch_size`` items per forward pass.
        views: Model inputs per item (ten crops: 10).
        clips: Items are clips (3D models), else frames.
        workers: Decoder processes (None: one per core; 0 decodes in this process).
        timeout: Seconds a decoder may go without output before its video fails.
    """

    decode: Callable[[Path, Any], Iterator[tuple[int, Any]]] | None = None
    spec: Any = None
    views: int = 1
    clips: bool = False
    workers: int | None = None
    timeout: float | None = None

    @property
    def item_task(self) -> str:
        """The progress task items are counted in."""
        return "clips" if self.clips else "frames"


@dataclass
class VideoRows:
    """The features of one video: one row per frame or clip.

    Attributes:
        frames: Decoded frame index of each row (a clip's first frame).
        layers: ``{layer: float32 (rows, dims)}``.
    """

    frames: np.ndarray
    layers: dict[str, np.ndarray]


# One batch's result: indices of the rows computed, ``{layer: (rows, D)}`` (None when none could be read),
# and ``(index, reason)`` of the rows that could not be read.
BatchOutput = tuple[list[int], "dict[str, np.ndarray] | None", list[tuple[int, str]]]
