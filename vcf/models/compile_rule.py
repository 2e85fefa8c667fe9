"""When ``torch.compile`` pays for itself: measured gains by model, precision and CPU, and the rule by run size."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

# Compiling is chosen when the whole run, the first compile included, is at least this much faster.
WIN = 1.15
# Inductor builds its CPU kernels with a C++ compiler; without one torch.compile fails on the first batch.
CXX_NAMES = ("c++", "g++", "clang++")


@dataclass(frozen=True)
class CompileGain:
    """Eager against compiled on one machine.

    Attributes:
        eager_ms: Eager milliseconds per image.
        compiled_ms: Compiled milliseconds per image, once compiled.
        compile_seconds: The compile of a first run (empty inductor cache).
        cores: Cores of the machine it was measured on (per-image times scale with them, the compile not).
        measured: The command and the machine.
    """

    eager_ms: float
    compiled_ms: float
    compile_seconds: float
    cores: int
    measured: str

    def break_even(self, cores: int) -> float:
        """Images from which a first compiled run is ``WIN`` times faster than eager on ``cores`` cores."""
        scale = self.cores / max(1, cores)
        saving_ms = (self.eager_ms - WIN * self.compiled_ms) * scale
        return math.inf if saving_ms <= 0 else WIN * self.compile_seconds * 1000 / saving_ms


_EPYC = "AMD EPYC, 2 cores, AVX-512 BF16, no AMX"
_RUNS = f"whole vcf features runs, batch 32, 720p JPEGs, mean of 2 (bench/compile_runs.py); {_EPYC}"
_MODEL_ALONE = f"the model alone, batch 16 (bench/compile.py; a run's gain is smaller); {_EPYC}"
# (registry model, precision, CPU kind of vcf.models.inference.cpu_kind). Pairs not listed never compile
# unless asked: a gain measured on one kind of CPU says nothing of another.
MEASURED: dict[tuple[str, str, str], CompileGain] = {
    ("resnet50", "bf16", "avx512_bf16"): CompileGain(27.2, 26.7, 33.0, 2, _RUNS),
    ("resnet50", "fp32", "avx512_bf16"): CompileGain(57.1, 52.6, 28.0, 2, _MODEL_ALONE),
    ("resnext101_32x8d", "bf16", "avx512_bf16"): CompileGain(101.3, 105.9, 52.0, 2, _MODEL_ALONE),
    ("resnext101_32x8d", "fp32", "avx512_bf16"): CompileGain(217.4, 225.7, 32.0, 2, _MODEL_ALONE),
}
# Models of one architecture run at one speed whatever their weights.
SAME_ARCHITECTURE = {"resnext101_32x8d_wsl": "resnext101_32x8d"}


def has_cxx_compiler() -> bool:
    """True when a C++ compiler is on PATH ($CXX first), as inductor's CPU backend needs."""
    names = (os.environ["CXX"],) if os.environ.get("CXX") else CXX_NAMES
    return any(shutil.which(name) for name in names)


@dataclass(frozen=True)
class CompileChoice:
    """Whether to compile, and why, for the run's summary."""

    compile: bool
    reason: str


def choose_compile(model: str, precision: str, device_kind: str, images: int, cores: int) -> CompileChoice:
    """Compiles where a measurement says a first run of ``images`` images is ``WIN`` times faster compiled.

    Args:
        model: Registry name.
        precision: Resolved precision.
        device_kind: ``cuda``, or the CPU kind (``amx``, ``avx512_bf16``, ``other``).
        images: Images of the whole run (not only those left after a resume, so that a resumed run
            decides as the first one did).
        cores: CPU cores the model runs on.
    """
    gain = MEASURED.get((SAME_ARCHITECTURE.get(model, model), precision, device_kind))
    if gain is None:
        return CompileChoice(False, f"eager (no measured compile gain for {model} {precision} on {device_kind})")
    needed = gain.break_even(cores)
    if images < needed:
        verdict = "never pays" if math.isinf(needed) else f"pays from {math.ceil(needed):,} images"
        return CompileChoice(False, f"eager (compiling {model} {precision} {verdict} here; this run has {images:,})")
    if not has_cxx_compiler():
        return CompileChoice(False, "eager (torch.compile would pay here, but no C++ compiler is on PATH)")
    speedup = gain.eager_ms / gain.compiled_ms
    return CompileChoice(
        True,
        f"compiled ({speedup:.2f}x eager once compiled; pays from {math.ceil(needed):,} images; this run: {images:,})",
    )
