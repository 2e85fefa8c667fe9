"""vcf: video collections to CNN features (shots, frames, features, pool, concat, HDF5)."""

from __future__ import annotations

from typing import Any

from vcf.version import __version__

# Stage functions are imported lazily so that `import vcf` stays light (no torch until needed).
_API = {
    "frames": "vcf.stages.frames",
    "shots": "vcf.stages.shots",
    "features": "vcf.stages.features",
    "pool": "vcf.stages.pool",
    "concat": "vcf.stages.concat",
    "to_h5": "vcf.stages.h5",
    "check": "vcf.stages.check",
    "merge": "vcf.stages.merge",
    "search": "vcf.stages.search",
    "index": "vcf.stages.search_index",
    "report": "vcf.stages.report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)  # the function, not the module
    raise AttributeError(f"module 'vcf' has no attribute {name!r}")
