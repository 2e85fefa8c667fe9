"""The rule that compiles a model by default: where a measurement says a run of that size is 15 % faster."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vcf.models import get_model
from vcf.models.compile_rule import MEASURED, SAME_ARCHITECTURE, WIN, CompileGain, choose_compile


def first_run_speedup(gain: CompileGain, images: int, cores: int) -> float:
    """Eager seconds over compiled seconds (compile included) for a first run of ``images`` on ``cores``."""
    scale = gain.cores / cores
    eager = images * gain.eager_ms * scale / 1000
    compiled = gain.compile_seconds + images * gain.compiled_ms * scale / 1000
    return eager / compiled


@pytest.mark.parametrize("key", sorted(MEASURED))
@pytest.mark.parametrize("cores", [2, 8])
def test_break_even_is_where_a_first_run_wins_by_the_margin(key: tuple[str, str, str], cores: int) -> None:
    gain = MEASURED[key]
    needed = gain.break_even(cores)
    if math.isinf(needed):
        assert all(first_run_speedup(gain, n, cores) < WIN for n in (10, 10_000, 10_000_000))
        return
    assert first_run_speedup(gain, math.ceil(needed), cores) >= WIN
    assert first_run_speedup(gain, math.floor(needed) - 1, cores) < WIN


@pytest.mark.parametrize("model", sorted({m for m, _, _ in MEASURED} | set(SAME_ARCHITECTURE)))
def test_measured_models_are_registry_models(model: str) -> None:
    assert get_model(model).name == model


# A gain that pays: eager 30 ms an image, compiled 20, a 40 s compile (break-even 8,000 images on 2 cores).
PAYING = CompileGain(30.0, 20.0, 40.0, 2, "test")
PAYING_KEY = ("resnet50", "bf16", "test-cpu")


def test_choice_follows_the_measurement_and_the_run_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MEASURED, PAYING_KEY, PAYING)
    needed = math.ceil(PAYING.break_even(2))
    assert needed == math.ceil(WIN * 40_000 / (30 - WIN * 20))
    assert choose_compile(*PAYING_KEY, needed, 2).compile
    below = choose_compile(*PAYING_KEY, needed - 1, 2)
    assert not below.compile and f"pays from {needed:,} images" in below.reason
    # More cores make eager faster and the same compile a larger share: a larger run is needed.
    assert not choose_compile(*PAYING_KEY, needed, 8).compile
    assert choose_compile(*PAYING_KEY, 4 * needed, 8).compile
    unmeasured = choose_compile("resnet50", "bf16", "cuda", 10**9, 2)
    assert not unmeasured.compile and "no measured compile gain" in unmeasured.reason


def test_no_compile_without_a_cxx_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(MEASURED, PAYING_KEY, PAYING)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no compiler to find
    choice = choose_compile(*PAYING_KEY, 10**7, 2)
    assert not choice.compile and "no C++ compiler" in choice.reason
    compiler = tmp_path / "my-cxx"
    compiler.write_text("#!/bin/sh\n", encoding="utf-8")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", "my-cxx")
    assert choose_compile(*PAYING_KEY, 10**7, 2).compile


def test_equal_architectures_share_a_measurement() -> None:
    for alias, measured in SAME_ARCHITECTURE.items():
        alias_model, measured_model = get_model(alias).build(), get_model(measured).build()
        shapes = [tuple(p.shape) for p in alias_model.state_dict().values()]
        assert shapes == [tuple(p.shape) for p in measured_model.state_dict().values()]
        for model, precision, kind in MEASURED:
            if model == measured:
                assert "no measured" not in choose_compile(alias, precision, kind, 10**7, 2).reason
