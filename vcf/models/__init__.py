"""The models vcf extracts features with: registry, weights and feature extractor."""

from __future__ import annotations

import importlib
from typing import Any

from vcf.models import catalog  # noqa: F401  (registers the shipped models and the timm/, clip/ families)
from vcf.models.registry import (
    LAYER_ALIASES,
    ModelRecord,
    Preprocess,
    WeightsSource,
    get_model,
    list_models,
    register,
    register_modules,
)
from vcf.models.weights import (
    WeightsInfo,
    cache_dir,
    cached_path,
    file_sha256,
    load_state,
    load_weights,
    weights_file,
    weights_status,
)

register_modules()  # after the shipped models: $VCF_MODEL_MODULES may build on them

# The extractor imports torch; the registry and the weights cache do not, so listing models stays light.
_LAZY = {"FeatureExtractor": "vcf.models.extractor", "build_extractor": "vcf.models.extractor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LAYER_ALIASES",
    "FeatureExtractor",
    "ModelRecord",
    "Preprocess",
    "WeightsInfo",
    "WeightsSource",
    "build_extractor",
    "cache_dir",
    "cached_path",
    "file_sha256",
    "get_model",
    "list_models",
    "load_state",
    "load_weights",
    "register",
    "weights_file",
    "weights_status",
]
