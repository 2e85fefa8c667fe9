"""The models vcf extracts features with: registry, weights and feature extractor."""

from __future__ import annotations

from vcf.models import (
    catalog,  # noqa: F401  (registers the shipped models)
    openclip,  # noqa: F401  (registers the clip/<arch>:<tag> family)
)
from vcf.models.extractor import FeatureExtractor, build_extractor
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
