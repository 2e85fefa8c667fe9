"""Model weights: finding, downloading, hashing, reading and checking them against the model."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcf.errors import ModelError, VcfError
from vcf.io.atomic import atomic_write_text
from vcf.models.registry import ModelRecord

if TYPE_CHECKING:
    import torch
    from torch import nn

SHA_MEMO_NAME = ".vcf-sha256.json"
_MODULE_PREFIX = "module."
_SHOWN_KEYS = 3


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a model was given.

    Attributes:
        source: The weights file read (absolute path), ``builtin:<model>`` for test models' fixed-seed
            weights, or ``random`` for an untrained model.
        sha256: Hex sha256 of the file (of the tensors for builtin weights); empty for random weights.
    """

    source: str
    sha256: str


RANDOM_WEIGHTS = WeightsInfo(source="random", sha256="")


def cache_dir() -> Path:
    """The weights cache: torch hub's checkpoint directory, ``$TORCH_HOME/hub/checkpoints``."""
    torch = sys.modules.get("torch")
    if torch is not None:  # torch.hub.set_dir may have moved it
        return Path(torch.hub.get_dir()) / "checkpoints"
    # torch.hub.get_dir's default, without importing torch (seconds) just to read two variables.
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "torch"
    return Path(os.environ.get("TORCH_HOME", str(cache))).expanduser() / "hub" / "checkpoints"


def cached_path(record: ModelRecord) -> Path | None:
    """Where the record's weights file is (or would be) cached; None if it is never cached."""
    return cache_dir() / record.weights.filename if record.weights.filename else None


def weights_status(record: ModelRecord) -> str:
    """A short text telling where the record's weights would come from right now."""
    source = record.weights
    if source.builtin:
        return "builtin (fixed-seed test weights)"
    if source.packaged is not None:
        try:
            return f"packaged ({source.packaged()})"
        except ImportError:
            return "packaged (package not installed)"
    cached = cached_path(record)
    if cached is not None and cached.is_file():
        return f"cached at {cached}"
    if source.fetch is not None:
        return f"its library's cache (download from {source.url})"
    if source.url:
        return f"not cached (download from {source.url})"
    return "--weights only"


def file_sha256(path: Path) -> str:
    """The sha256 of a file, memoized by (path, size, mtime) in a small JSON file in the weights cache.

    Hashing a 3 GB checkpoint takes seconds; the memo makes every later run free.
    """
    path = path.resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    memo_path = cache_dir() / SHA_MEMO_NAME
    memo = _read_memo(memo_path)
    entry = memo.get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    memo = {key: value for key, value in memo.items() if Path(key).exists()}
    memo[str(path)] = {"stamp": stamp, "sha256": sha}
    # The memo only saves time: a read-only cache or a lost concurrent update costs a rehash, nothing else.
    with contextlib.suppress(OSError, VcfError):
        atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True) + "\n")
    return sha


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A sha256 over the names and values of a state dict (for weights that are not a file)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _download(record: ModelRecord, target: Path) -> None:
    """Downloads the record's weights to ``target`` with torch hub's downloader (the one behind
    ``torch.hub.load_state_dict_from_url``), which checks the hash prefix and writes via a temporary file."""
    import torch

    url = str(record.weights.url)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=record.weights.sha256, progress=False)
    except Exception as exc:  # every failure (offline, HTTP error, bad hash, disk) gets the same advice
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"cannot download the weights of {record.name} from {url} ({reason}); "
            f"place the file at {target} or pass --weights FILE"
        ) from exc


def weights_file(record: ModelRecord) -> Path:
    """The record's default weights file: packaged, else cached, else downloaded into the cache.

    Raises:
        ModelError: The weights cannot be had (offline, no URL, package missing, corrupt cached file).
    """
    source = record.weights
    if source.packaged is not None:
        try:
            path = Path(source.packaged())
        except ImportError as exc:
            raise ModelError(f"the package that ships the weights of {record.name} is not installed: {exc}") from exc
        if not path.is_file():
            raise ModelError(f"the packaged weights of {record.name} are missing: {path}")
        _check_hash(record, path)
        return path
    target = cached_path(record)
    if target is not None and target.is_file():
        _check_hash(record, target)
        return target
    if source.fetch is not None:  # the model library's own download code and cache
        return Path(source.fetch())
    if not source.url:
        where = f" or place it at {target}" if target is not None else ""
        raise ModelError(f"{record.name} has no download address; pass its weights file with --weights FILE{where}")
    if target is None:
        raise ModelError(f"{record.name} has a download address but no cache file name")
    _download(record, target)
    return target


def _check_hash(record: ModelRecord, path: Path) -> None:
    expected = record.weights.sha256
    if expected and not file_sha256(path).startswith(expected.lower()):
        raise ModelError(
            f"{path} does not have the sha256 of the {record.name} weights ({expected}...); "
            "delete it to download it again, or pass it with --weights to use it anyway"
        )


def read_weights_file(path: Path) -> Any:
    """Reads a ``.pth``/``.pt`` (tensors only, never arbitrary pickled objects) or ``.safetensors`` file.

    Raises:
        ModelError: The file is missing or cannot be read as weights.
    """
    import torch

    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"cannot read weights file {path}: {_first_line(exc)}") from exc
    try:
        # mmap avoids a second in-memory copy of multi-GB checkpoints; files in the pre-1.6 format lack
        # the zip layout it needs and are read normally.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"cannot read weights file {path}: it is not a plain tensor checkpoint") from exc
    except RuntimeError:
        pass
    except Exception as exc:
        raise ModelError(f"cannot read weights file {path}: {_first_line(exc)}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"cannot read weights file {path}: it is not a plain tensor checkpoint") from exc
    except Exception as exc:
        raise ModelError(f"cannot read weights file {path}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def extract_state(obj: Any, record: ModelRecord, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint, with ``module.`` prefixes removed.

    Accepts a raw state dict or a dict holding one under ``state_dict`` or ``model``; a checkpoint with
    an ``arch`` entry (Hara's ``{'arch': 'resnext-101', 'state_dict': ...}``) must name the record's arch.

    Raises:
        ModelError: The object holds no state dict or names another architecture.
    """
    import torch

    if not isinstance(obj, Mapping):
        raise ModelError(f"{source} holds a {type(obj).__name__}, not a state dict")
    arch = obj.get("arch")
    expected_arch = record.weights.arch
    if isinstance(arch, str) and expected_arch and arch != expected_arch:
        raise ModelError(f"{source} is a {arch!r} checkpoint; {record.name} needs {expected_arch!r}")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{source} holds a non-tensor entry {key!r}; it is not a state dict")
        # nn.DataParallel prefixes every name with "module." (Hara's checkpoints were saved that way).
        name = str(key)
        while name.startswith(_MODULE_PREFIX):
            name = name[len(_MODULE_PREFIX) :]
        state[name] = value
    if not state:
        raise ModelError(f"{source} holds no tensors")
    return state


def fit_state(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], record: ModelRecord, source: str
) -> dict[str, torch.Tensor]:
    """Checks ``state`` against the model's ``expected`` state dict (names and shapes) before loading.

    Missing BatchNorm ``num_batches_tracked`` counters (absent from checkpoints of PyTorch < 0.4.1) are
    filled in; records with positional weights get the model's names by order.

    Raises:
        ModelError: Names or shapes differ; the message lists a few of each kind.
    """
    import torch

    if record.weights.positional and set(state) != set(expected):
        state = _map_by_position(state, expected, record, source)
    state = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=value.dtype)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                more = ", ..." if len(items) > _SHOWN_KEYS else ""
                parts.append(f"{len(items)} {label} ({', '.join(items[:_SHOWN_KEYS])}{more})")
        raise ModelError(f"{source} does not fit {record.name}: {'; '.join(parts)}")
    return state


def _map_by_position(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], record: ModelRecord, source: str
) -> dict[str, torch.Tensor]:
    if len(state) != len(expected):
        raise ModelError(f"{source} has {len(state)} tensors; {record.name} has {len(expected)}")
    for index, ((src, value), (dst, target)) in enumerate(zip(state.items(), expected.items(), strict=True)):
        if value.shape != target.shape:
            raise ModelError(
                f"{source} does not fit {record.name}: tensor {index} {src} {tuple(value.shape)} "
                f"vs {dst} {tuple(target.shape)}"
            )
    return dict(zip(expected.keys(), state.values(), strict=True))


def load_state(
    record: ModelRecord, weights_path: str | Path | None = None, *, model: nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Reads and checks a model's pretrained weights.

    Args:
        record: The model.
        weights_path: A local weights file; None takes the record's packaged, cached or downloaded file.
        model: The model the weights are meant for; by default a parameter-free (meta) build of the record.

    Returns:
        A state dict that ``model.load_state_dict(state, strict=True)`` accepts, and where it came from.

    Raises:
        ModelError: The weights cannot be found, downloaded or read, or do not fit the model.
    """
    if weights_path is None and record.weights.builtin:
        state = record.build().state_dict()
        return dict(state), WeightsInfo(source=f"builtin:{record.name}", sha256=tensors_sha256(state))
    expected = (model if model is not None else record.build(meta=True)).state_dict()
    path = Path(weights_path).expanduser() if weights_path is not None else weights_file(record)
    path = path.resolve()
    state = extract_state(read_weights_file(path), record, str(path))
    if record.weights.convert is not None:
        state = record.weights.convert(state, model if model is not None else record.build(meta=True))
    state = fit_state(state, expected, record, str(path))
    return state, WeightsInfo(source=str(path), sha256=file_sha256(path))


def load_weights(model: nn.Module, record: ModelRecord, weights_path: str | Path | None = None) -> WeightsInfo:
    """Loads the record's pretrained weights into ``model``; on any error the model is left unchanged.

    Raises:
        ModelError: See :func:`load_state`.
    """
    state, info = load_state(record, weights_path, model=model)
    model.load_state_dict(state, strict=True)
    return info
