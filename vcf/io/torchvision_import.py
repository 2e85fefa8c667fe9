"""torchvision imported without importing torch._dynamo, which nothing needs until something is compiled."""

from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

import torch

_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type: Any) -> Any:
    """torch._dynamo's own function, imported on its first call (torchvision calls it only inside roi_align)."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def _disable_on_first_call(fn: Callable[..., Any] | None = None, recursive: bool = True, **options: Any) -> Any:
    """``torch._dynamo.disable`` applied when the function is first called rather than when it is decorated."""
    if fn is None:
        return functools.partial(_disable_on_first_call, recursive=recursive, **options)
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if disabled is None:
            from torch._dynamo import disable

            disabled = disable(fn, recursive, **options)
        return disabled(*args, **kwargs)

    return call


class _StandIn(types.ModuleType):
    """A module serving a few names of torch._dynamo; any other name imports the real module and is taken from it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # the import system's probes (``__file__``...) are not a use of dynamo
        _remove_stand_ins()
        return getattr(importlib.import_module(self.__name__), name)


def _remove_stand_ins() -> None:
    """Takes the stand-ins out of ``sys.modules`` and ``torch``: the next use of torch._dynamo imports the real one
    (torch's module ``__getattr__`` imports it on first attribute access)."""
    for name in (_DYNAMO_UTILS, _DYNAMO):
        if isinstance(sys.modules.get(name), _StandIn):
            del sys.modules[name]
    if isinstance(torch.__dict__.get("_dynamo"), _StandIn):
        delattr(torch, "_dynamo")


def import_torchvision(module: str = "torchvision") -> types.ModuleType:
    """Imports ``module`` (torchvision or one of its submodules), keeping torch._dynamo out of the import.

    Importing torchvision reaches ``torchvision.ops.roi_align``, whose first lines take one function from
    ``torch._dynamo.utils``, and ``torchvision.tv_tensors``, which decorates one function with
    ``torch.compiler.disable``: each imports all of torch._dynamo (sympy, triton's bindings, parts of
    torch.distributed), 1 to 3 s on 2 cores, more than the rest of torchvision and of vcf's own start-up
    together. While the modules are imported, those two names are served by stand-ins that import the real
    ones when first called; any other name of torch._dynamo asked for meanwhile imports the real module. The
    stand-ins are removed afterwards, so the first real use (``torch.compile``) imports torch._dynamo as usual.

    Args:
        module: The dotted name to import, e.g. ``torchvision.transforms.v2.functional``.

    Returns:
        The imported module.
    """
    if module in sys.modules or _DYNAMO in sys.modules:
        return importlib.import_module(module)
    dynamo, utils = _StandIn(_DYNAMO), _StandIn(_DYNAMO_UTILS)
    dynamo.__path__ = []  # a package, so that ``utils`` is importable from it
    dynamo.disable = _disable_on_first_call  # type: ignore[attr-defined]
    dynamo.utils = utils  # type: ignore[attr-defined]
    utils.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    sys.modules[_DYNAMO], sys.modules[_DYNAMO_UTILS] = dynamo, utils
    try:
        return importlib.import_module(module)
    finally:
        _remove_stand_ins()
