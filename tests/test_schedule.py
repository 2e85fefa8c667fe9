"""Where images are decoded: the choice made from the first batches' timings, for every run length."""

from __future__ import annotations

import pytest

from vcf.run.schedule import LOADER_START_SECONDS, LOADER_SWITCH_SHARE, choose_decoding


def saving(decode_ms: float, remaining: int, cores: int) -> float:
    """Seconds loaders save over the rest: each image's decoding spread over all cores instead of one."""
    return remaining * decode_ms / 1000 * (cores - 1) / cores


def test_light_model_switches_even_for_a_short_run() -> None:
    # 8 ms decoding vs 25 ms of model per image (a light model in bf16): a few hundred images repay the start.
    remaining = 1 + int(LOADER_START_SECONDS / saving(8.0, 1, 2))
    choice = choose_decoding(
        decode_seconds=0.008 * 48, model_seconds=0.025 * 48, probed=48, remaining=remaining, cores=2
    )
    assert choice.workers == 2
    assert choice.decode_ms == pytest.approx(8.0) and choice.model_ms == pytest.approx(25.0)
    assert remaining * 0.025 < 120  # well under the two minutes a run once had to last before switching
    assert "2 loader process(es)" in choice.describe() and "8.0 ms/img" in choice.describe()


def test_too_short_a_rest_stays_in_process() -> None:
    remaining = int(LOADER_START_SECONDS / saving(8.0, 1, 2)) - 1
    choice = choose_decoding(0.008 * 48, 0.025 * 48, 48, remaining, 2)
    assert choice.workers == 0
    assert "in the model's process" in choice.describe()


def test_heavy_model_decodes_between_batches() -> None:
    decode = 0.9 * LOADER_SWITCH_SHARE * 0.150  # just under the share of a 150 ms/img model
    assert choose_decoding(decode * 32, 0.150 * 32, 32, 10**6, 2).workers == 0


def test_one_core_never_switches() -> None:
    assert choose_decoding(0.050 * 32, 0.010 * 32, 32, 10**6, 1).workers == 0


def test_a_run_within_the_probe_batches_reports_its_costs() -> None:
    choice = choose_decoding(0.050 * 8, 0.010 * 8, 8, 0, 2)
    assert choice.workers == 0 and choice.decode_ms == pytest.approx(50.0)
