"""Makes ``vcf.<stage>(...)`` call the stage function even after the module of that name is imported."""

from __future__ import annotations

import sys
import types
from typing import Any


class StageModule(types.ModuleType):
    """A stage module that is also its stage function: ``vcf.pool(...)`` runs ``vcf.pool.pool(...)``.

    Python binds ``vcf.pool`` to the submodule whenever ``vcf.pool`` is imported, which would shadow the
    function of the same name that ``vcf`` exports; calling the module keeps both spellings working.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def callable_stage(module_name: str) -> None:
    """Turns the named (already imported) module into a :class:`StageModule`."""
    sys.modules[module_name].__class__ = StageModule
