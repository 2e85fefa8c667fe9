"""Running a feature extractor on batches: device and precision choice, normalisation on the device."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vcf.errors import VcfError
from vcf.io.preprocess import normalize
from vcf.models.allocator import keep_freed_memory

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU.

    Raises:
        VcfError: A CUDA device was asked for and none is usable.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise VcfError(f"unknown device {device!r}; use auto, cpu or cuda[:i]") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise VcfError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise VcfError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def _cpu_probe(name: str) -> bool:
    """One of torch's CPU feature probes (``torch.cpu`` since 2.3; older releases only in ``torch._C._cpu``)."""
    for module in (torch.cpu, torch._C._cpu):
        probe = getattr(module, name, None)
        if probe is not None:
            try:
                return bool(probe())
            except RuntimeError:
                return False
    return False


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles, where bf16 matrix work is several times faster than fp32."""
    return _cpu_probe("_is_amx_tile_supported")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bf16 convolutions natively: AMX tiles, or AVX-512 BF16 (AMD Zen 4 and later,
    Intel Cooper Lake), where ResNet-50 measured 1.8x its fp32 rate (docs/PERFORMANCE.md)."""
    return cpu_kind() != "other"


def cpu_kind() -> str:
    """What decides this CPU's bf16 speed: ``amx``, ``avx512_bf16`` (native, without AMX) or ``other``."""
    if cpu_has_amx():
        return "amx"
    return "avx512_bf16" if _cpu_probe("_is_avx512_bf16_supported") else "other"


def device_kind(device: torch.device) -> str:
    """``cuda``, or the CPU's kind (:func:`cpu_kind`): what measured speeds are keyed by."""
    return "cuda" if device.type == "cuda" else cpu_kind()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA devices that support it and on CPUs with native bf16, fp16 on older GPUs, else fp32."""
    if precision not in PRECISIONS:
        raise VcfError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise VcfError("--precision fp16 is for CUDA devices; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def inductor_cache_dir() -> Path:
    """Where ``torch.compile`` keeps its compiled graphs between runs, unless $TORCHINDUCTOR_CACHE_DIR says."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "vcf" / "inductor"


@dataclass(frozen=True)
class Normalization:
    """How uint8 inputs become the model's float inputs."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    value_scale: float = 1.0


class Inference:
    """A feature extractor placed on a device, run under inference mode with the chosen precision.

    Args:
        extractor: Module mapping a float batch to ``{layer: (N, D)}``.
        normalization: Applied on the device to the uint8 batches.
        device: Where to run.
        precision: ``fp32``, ``bf16`` or ``fp16`` (resolved, not ``auto``).
        channels_last: Use the channels-last memory format (faster convolutions on CPU and GPU).
        compile_model: Run the model through ``torch.compile`` (compiled on the first batch of each
            shape; fused kernels give slightly different values, so the manifest records it).
    """

    def __init__(
        self,
        extractor: torch.nn.Module,
        normalization: Normalization,
        device: torch.device,
        precision: str,
        channels_last: bool = True,
        compile_model: bool = False,
    ) -> None:
        self.device = device
        self.precision = precision
        self.normalization = normalization
        if device.type == "cpu":
            keep_freed_memory()  # a third of ResNet-50's bf16 time went to page faults of fresh activations
        self.channels_last = channels_last
        self.model = extractor.eval().to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile_model:
            # Inductor's caches (FX graphs, kernels) in vcf's cache: only the first run of a model pays the compile.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
            self.model = torch.compile(self.model)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def __call__(self, batch: torch.Tensor, views: int = 1) -> dict[str, np.ndarray]:
        """Runs one uint8 batch; ``views`` consecutive rows per item are averaged (ten-crop).

        Returns:
            ``{layer: float32 array (N / views, D)}`` on the host.
        """
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            # The layout changes on the uint8 batch, a quarter of the bytes of the float one; normalising
            # keeps it.
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            elif self.channels_last and x.dim() == 5:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            x = normalize(x, self.normalization.mean, self.normalization.std, self.normalization.value_scale)
            with self._autocast():
                outputs = self.model(x)
            result = {}
            for layer, value in outputs.items():
                value = value.float().flatten(1)
                if views > 1:
                    value = value.view(-1, views, value.shape[1]).mean(1)
                result[layer] = value.cpu().numpy()
            return result
