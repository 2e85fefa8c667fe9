"""The model registry: one record per model name with its builder, weights source and preprocessing."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vcf.errors import ModelError
from vcf.model_kinds import KINDS, ModelKind

if TYPE_CHECKING:  # torch is imported where a model is built: listing models must not pay for it
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's Kinetics-400 video models (VideoClassification transform defaults).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Hara et al.'s 0-255 means (mean.py of 3D-ResNets-PyTorch, CVPR 2018 branch); std is 1 on that scale.
ACTIVITYNET_MEAN_255 = (114.7748, 107.7354, 99.4750)
KINETICS_MEAN_255 = (110.63666788, 103.16065604, 96.29023126)

LAYER_ALIASES = {"logits": "fc"}
TIMM_PREFIX = "timm/"
CLIP_PREFIX = "clip/"  # open_clip image towers, resolved by vcf.models.openclip
MODULES_ENV = "VCF_MODEL_MODULES"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """How frames must be prepared for a model.

    The model input is ``(x * value_scale - mean * value_scale) / (std * value_scale)`` for RGB pixels ``x``
    in [0, 1], i.e. ``(x - mean) / std``: ``mean`` and ``std`` are always on the [0, 1] scale, so one formula
    serves every model. :meth:`normalize` applies it.

    Attributes:
        resize: An int resizes the shorter side to that length (aspect kept); a (height, width) pair resizes
            to exactly that size, as torchvision's video transforms do.
        crop: Side of the square center crop taken after resizing.
        mean: Per-channel RGB mean on the [0, 1] scale.
        std: Per-channel RGB standard deviation on the [0, 1] scale.
        interpolation: Resize filter: "bilinear", "bicubic" or "nearest".
        value_scale: The pixel scale the original code normalized in: 1.0 for [0, 1] inputs, 255.0 for
            models trained on 0-255 values minus a mean (Hara's 3D ResNeXt, whose std is 1/255 here).
        antialias: False when the reference resizes tensors without antialiasing (torchvision's video models).
        reference: The preprocessing the weights were published with, and its source; tests compare vcf's
            input tensor with it. Any known gap with ``--resize-backend pil`` is stated here.
    """

    resize: int | tuple[int, int]
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    value_scale: float = 1.0
    antialias: bool = True
    reference: str = ""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ModelError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")

    def normalize(self, x: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
        """Normalizes float RGB values in [0, 1] whose channels lie along ``channel_dim``.

        Args:
            x: Float tensor, e.g. (B, 3, H, W) images or (B, 3, T, H, W) clips (use ``channel_dim=1``).
            channel_dim: The dimension holding the 3 color channels.

        Returns:
            The normalized tensor, same shape and dtype.
        """
        import torch

        shape = [1] * x.dim()
        shape[channel_dim] = 3
        scale = self.value_scale
        mean = torch.tensor([m * scale for m in self.mean], dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor([s * scale for s in self.std], dtype=x.dtype, device=x.device).view(shape)
        return (x * scale - mean) / std


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's pretrained weights come from.

    Attributes:
        url: Download address, or None when the weights are only available from ``--weights``.
        filename: File name in the weights cache ``$TORCH_HOME/hub/checkpoints/`` (None: never cached).
        sha256: The file's sha256 or a prefix of it (torch hub names files ``<name>-<sha256[:8]>.pth``);
            checked on download and on cached files.
        license: License of the weights, as a short note.
        packaged: Returns the path of weights shipped inside an installed Python package.
        arch: The ``arch`` entry a checkpoint dict must carry if it has one (Hara's checkpoints do).
        positional: Map the file's tensors onto the model's parameters by order, checking every shape,
            for checkpoints written by another implementation with other parameter names.
        builtin: The builder's own fixed-seed initialization is the weights (test models).
        fetch: Returns the weights file through the model library's own download code and cache (open_clip);
            raises ModelError naming what is missing and where to put it.
        convert: Maps a checkpoint's state dict onto the model's (the library's own key conversions).
    """

    url: str | None = None
    filename: str | None = None
    sha256: str | None = None
    license: str = ""
    packaged: Callable[[], str] | None = None
    arch: str | None = None
    positional: bool = False
    builtin: bool = False
    fetch: Callable[[], str] | None = None
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True, eq=False)
class ModelRecord:
    """Everything vcf knows about one model.

    Attributes:
        name: Registry name, used in feature names (e.g. ``resnet50``).
        kind: "2d" (one image in, input (B, 3, H, W)) or "3d" (one clip in, input (B, 3, T, H, W)).
        builder: Returns the model with random weights; never downloads.
        weights: Where the pretrained weights come from.
        preprocess: How frames must be resized, cropped and normalized.
        layers: Output layers in order with their feature dimension, e.g. ``{"avgpool": 2048, "fc": 1000}``.
            ``avgpool`` is the pooled vector the classifier reads, ``fc`` the classifier output.
        default_layer: The layer used when none is asked for.
        feature_module: Dotted path of the classifier module whose input is the ``avgpool`` vector.
        fixed_input_size: The model only accepts ``crop`` x ``crop`` inputs (and ``clip_len`` frames for 3D).
        clip_len: Frames per clip (3D models).
        clip_fps: Frame rate the clips were sampled at in training (3D models); None means the video's own rate.
        description: One line about the architecture and the training data of the weights.
        output_layer: The layer that is the model's output; every other layer is the input of
            ``feature_module``, captured by a hook.
    """

    name: str
    kind: str
    builder: Callable[[], nn.Module]
    weights: WeightsSource
    preprocess: Preprocess
    layers: Mapping[str, int]
    default_layer: str = "avgpool"
    feature_module: str = "fc"
    fixed_input_size: bool = False
    clip_len: int | None = None
    clip_fps: float | None = None
    description: str = ""
    output_layer: str = "fc"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"model {self.name}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        object.__setattr__(self, "layers", dict(self.layers))
        if self.default_layer not in self.layers:
            raise ModelError(f"model {self.name}: default layer {self.default_layer} is not one of its layers")
        if self.kind_info.reads_videos and not self.clip_len:
            raise ModelError(f"model {self.name}: a {self.kind} model needs clip_len")

    @property
    def kind_info(self) -> ModelKind:
        """The properties of this model's kind."""
        return KINDS[self.kind]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample: (3, crop, crop) or (3, clip_len, crop, crop)."""
        crop = self.preprocess.crop
        frames = (int(self.clip_len or 0),) if self.kind_info.rank == 5 else ()
        return (3, *frames, crop, crop)

    def resolve_layer(self, layer: str) -> str:
        """The canonical name of ``layer`` (``logits`` is ``fc``).

        Raises:
            ModelError: The model has no such layer.
        """
        canonical = LAYER_ALIASES.get(layer, layer)
        if canonical not in self.layers:
            raise ModelError(f"model {self.name} has no layer {layer!r}; choose from {', '.join(self.layers)}")
        return canonical

    def build(self, meta: bool = False) -> nn.Module:
        """Builds the model in eval mode with random weights.

        Args:
            meta: Put parameters and buffers on the meta device: no memory, no initialization cost; for
                checking shapes and for loading weights with ``load_state_dict(..., assign=True)``.
        """
        if not meta:
            return self.builder().eval()
        with _params_on_meta():
            return self.builder().eval()


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Moves every parameter and buffer to the meta device as modules register them.

    ``with torch.device("meta")`` is not enough: some builders (torchvision's RegNet) compute their layer
    widths with tensors and need real values for that. The patch is process-wide while it lasts, so
    modules built by other threads in that moment would land on the meta device too. The random
    initialisations of the meta tensors are skipped (see :func:`_meta_init_skipped`).
    """
    from torch import nn

    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def meta_parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(self, name, param)
        if param is not None and not param.is_meta:
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    def meta_buffer(self: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if tensor is not None and not tensor.is_meta:
            self._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter = meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = meta_buffer  # type: ignore[method-assign]
    try:
        with _meta_init_skipped():
            yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


# In-place random fills (and the clamp of a truncated normal) that torch runs on meta tensors through its
# Python reference kernels, which import torch._dynamo (1 to 3 s) on their first call.
_META_FILLS = ("normal_", "erfinv_", "clamp_", "exponential_", "log_normal_", "cauchy_", "geometric_")


def _meta_init_skipped() -> contextlib.AbstractContextManager[None]:
    """A torch function mode (this thread's) in which the random fills of :data:`_META_FILLS` leave meta tensors
    as they are: they hold no values to fill, and the weights are assigned afterwards."""
    import torch
    from torch.overrides import TorchFunctionMode

    skipped = {getattr(torch.Tensor, name) for name in _META_FILLS}

    class SkipMetaFills(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in skipped and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
                return args[0]
            return func(*args, **(kwargs or {}))

    return SkipMetaFills()


_REGISTRY: dict[str, ModelRecord] = {}
_DYNAMIC: dict[str, ModelRecord] = {}
# Name prefix -> resolver turning a full name into a record, for model families resolved on demand.
_FAMILIES: dict[str, Callable[[str], ModelRecord]] = {}


def register_family(prefix: str, resolver: Callable[[str], ModelRecord]) -> None:
    """Resolves every name starting with ``prefix`` (e.g. ``timm/``) on demand through ``resolver``.

    Raises:
        ModelError: The prefix is taken.
    """
    if prefix in _FAMILIES:
        raise ModelError(f"model name prefix {prefix!r} is already registered")
    _FAMILIES[prefix] = resolver


def register(record: ModelRecord) -> ModelRecord:
    """Adds a model to the registry.

    Raises:
        ModelError: A model of that name is already registered.
    """
    if record.name in _REGISTRY:
        raise ModelError(f"model {record.name} is already registered")
    reserved = next((prefix for prefix in _FAMILIES if record.name.startswith(prefix)), None)
    if reserved is not None:
        raise ModelError(f"names starting with {reserved} are reserved for a model family")
    _REGISTRY[record.name] = record
    return record


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names in registration order, optionally filtered by a shell-style ``pattern``.

    Family names (``timm/<name>``, ``clip/<arch>:<tag>``) are resolved on demand and not listed.
    """
    names = list(_REGISTRY)
    if pattern:
        names = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    return names


def get_model(name: str) -> ModelRecord:
    """The record of a registered model, or of a family name such as ``timm/<timm model name>``.

    Raises:
        ModelError: The name is unknown; the message suggests close names.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix = next((prefix for prefix in _FAMILIES if name.startswith(prefix)), None)
    if prefix is not None:
        if name not in _DYNAMIC:
            _DYNAMIC[name] = _FAMILIES[prefix](name)
        return _DYNAMIC[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (`vcf models` lists them; timm models as timm/<name>)")


# ----------------------------------------------------------------------------------------------- timm


def _timm_record(name: str) -> ModelRecord:
    """Builds a record for ``timm/<arch>[.<tag>]`` from timm's pretrained config."""
    try:
        import timm
        from timm.data import resolve_model_data_config
    except ImportError as exc:
        raise ModelError(f"{name} needs the timm package, which is not installed") from exc
    arch = name[len(TIMM_PREFIX) :]
    if not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(f"unknown timm model {arch!r}{hint}")
    builder = functools.partial(timm.create_model, arch, pretrained=False)
    try:
        with _params_on_meta():
            model = builder()
    except RuntimeError as exc:  # an unknown pretrained tag, for one
        raise ModelError(f"cannot create timm model {arch!r}: {str(exc).splitlines()[0]}") from exc
    cfg = model.pretrained_cfg or {}
    data = resolve_model_data_config(model)
    crop = int(data["input_size"][-1])
    crop_pct = float(data.get("crop_pct") or 1.0)
    interpolation = data.get("interpolation", "bicubic")
    preprocess = Preprocess(
        resize=math.floor(crop / crop_pct),
        crop=crop,
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
        reference=f"timm {arch} pretrained_cfg: resolve_data_config + create_transform (PIL)",
    )
    classifier = model.get_classifier()
    feature_module = next((path for path, module in model.named_modules() if module is classifier), "")
    from torch import nn

    if not feature_module or isinstance(classifier, nn.Identity) or not int(model.num_classes or 0):
        # No classifier (DINOv2, SigLIP towers): the output is forward_head(pre_logits=True).
        layers, output_layer, feature_module = {"avgpool": int(model.num_features)}, "avgpool", ""
    else:
        in_dim = getattr(classifier, "in_features", None) or getattr(classifier, "in_channels", None)
        dim = int(in_dim or getattr(model, "head_hidden_size", None) or model.num_features)
        layers, output_layer = {"avgpool": dim, "fc": int(model.num_classes)}, "fc"
    # Like timm, prefer the Hugging Face hub copy: it is in timm's own format, while some legacy URLs point
    # at files that need converting (JAX .npz).
    url = cfg.get("url") or None
    filename = url.rsplit("/", 1)[-1] if url else None
    hub_id = cfg.get("hf_hub_id")
    fetch = None
    if hub_id:
        hub_file = cfg.get("hf_hub_filename") or "model.safetensors"
        url = f"https://huggingface.co/{hub_id}/resolve/main/{hub_file}"
        filename = f"{hub_id.replace('/', '--')}--{hub_file}"
        fetch = functools.partial(_hf_hub_file, name, hub_id, hub_file)
    return ModelRecord(
        name=name,
        kind="2d",
        builder=builder,
        weights=WeightsSource(url=url, filename=filename, license=str(cfg.get("license") or "see timm"), fetch=fetch),
        preprocess=preprocess,
        layers=layers,
        feature_module=feature_module,
        fixed_input_size=bool(cfg.get("fixed_input_size", False)),
        description=f"timm {arch}",
        output_layer=output_layer,
    )


def _hf_hub_file(name: str, repo_id: str, filename: str) -> str:
    """A timm model's weights file in the Hugging Face cache, where timm itself downloads them."""
    try:
        from huggingface_hub import hf_hub_download

        return str(hf_hub_download(repo_id, filename))
    except Exception as exc:  # offline, HTTP error, package missing: the same advice
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        try:
            from huggingface_hub.constants import HF_HUB_CACHE
        except ImportError:
            HF_HUB_CACHE = "~/.cache/huggingface/hub"
        raise ModelError(
            f"cannot get the weights of {name} ({reason}); timm keeps them in the Hugging Face cache "
            f"({HF_HUB_CACHE}/models--{repo_id.replace('/', '--')}, file {filename}): run "
            f"`python -c \"import timm; timm.create_model('{name[len(TIMM_PREFIX) :]}', pretrained=True)\"` where "
            "there is internet and copy that cache here, or pass the file with --weights FILE"
        ) from exc


def register_modules(names: str | None = None) -> None:
    """Imports modules that register more models, e.g. ``vcf.models.testing`` (tests' tiny networks).

    Args:
        names: Comma-separated module names; default ``$VCF_MODEL_MODULES``. The variable reaches every
            process a run starts (loader workers, shards, Ray actors), so they all know the same models.
    """
    import importlib
    import os

    for name in (names if names is not None else os.environ.get(MODULES_ENV, "")).split(","):
        if name.strip():
            importlib.import_module(name.strip())


register_family(TIMM_PREFIX, _timm_record)
