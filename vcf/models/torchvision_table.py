"""torchvision's published weights facts, as data: what ``vcf models`` and a run need without importing torchvision.

The rows are in ``torchvision_weights.json`` beside this module.

Each entry is what ``torchvision.models.get_model_weights(name).DEFAULT`` says (its name, URL, eval transforms and
class count); importing torchvision costs seconds, so the catalog reads this table instead and only the builder
of the model a run uses imports torchvision. tests/test_models.py checks the table against torchvision itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple


class TorchvisionWeights(NamedTuple):
    """The DEFAULT weights entry of one torchvision model."""

    weights: str
    url: str
    resize: int | tuple[int, int]
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    categories: int


def _load(path: Path) -> dict[str, TorchvisionWeights]:
    def row(facts: dict[str, Any]) -> TorchvisionWeights:
        # JSON has lists where the table has tuples (an exact (height, width) resize, mean, std).
        return TorchvisionWeights(**{key: tuple(v) if isinstance(v, list) else v for key, v in facts.items()})

    return {name: row(facts) for name, facts in json.loads(path.read_text(encoding="utf-8")).items()}


TORCHVISION_WEIGHTS: dict[str, TorchvisionWeights] = _load(Path(__file__).with_name("torchvision_weights.json"))
