"""OpenCLIP and OpenAI CLIP models (``clip/<arch>:<tag>``): image towers for features, text towers for search."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vcf.errors import ModelError
from vcf.models.registry import CLIP_PREFIX, INTERPOLATIONS, ModelRecord, Preprocess, WeightsSource, get_model

TAG_SEPARATOR = ":"
EMBED_LAYER = "embed"
POOL_LAYER = "pool"
_WRAPPED = "clip."


class ParameterProjection(nn.Module):
    """``pooled @ proj``: open_clip's ViT keeps its projection as a bare parameter; this module makes its input
    (the ``pool`` layer) visible to a forward hook without adding parameters."""

    def forward(self, pooled: torch.Tensor, proj: torch.Tensor | None) -> torch.Tensor:
        """Projects ``pooled`` (B, width) to the joint embedding space, or passes it when there is no projection."""
        return pooled if proj is None else pooled @ proj


def _vit_forward(model: ClipImageModel, x: torch.Tensor) -> torch.Tensor:
    # The steps of open_clip's VisionTransformer.forward, with the projection done by a module.
    visual = model.clip.visual
    tokens = visual.transformer(visual._embeds(x))
    pooled, _ = visual._pool(tokens)
    return model.projection(pooled, visual.proj)


def _tower_forward(model: ClipImageModel, x: torch.Tensor) -> torch.Tensor:
    return model.clip.visual(x)


# open_clip image tower class -> (forward, module whose input is the ``pool`` layer, or None: no such layer).
# TimmModel runs trunk then head (the projection); ModifiedResNet projects inside its attention pool.
_TOWERS: dict[str, tuple[Callable[[Any, torch.Tensor], torch.Tensor], str | None]] = {
    "VisionTransformer": (_vit_forward, "projection"),
    "TimmModel": (_tower_forward, "clip.visual.head"),
}
_OTHER_TOWER: tuple[Callable[[Any, torch.Tensor], torch.Tensor], str | None] = (_tower_forward, None)


class ClipImageModel(nn.Module):
    """A whole open_clip model whose forward is the image embedding (``encode_image``, unnormalized).

    The text tower stays inside (``clip``) so one checkpoint loads strictly and :func:`encode_texts` can use
    the same weights; state dict keys are open_clip's prefixed with ``clip.``.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.projection = ParameterProjection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) normalized images to (B, embed_dim) image embeddings."""
        forward, _ = _TOWERS.get(type(self.clip.visual).__name__, _OTHER_TOWER)
        return forward(self, x)


def split_name(name: str) -> tuple[str, str | None]:
    """``clip/<arch>[:<tag>]`` -> ``(arch, tag or None)``."""
    body = name[len(CLIP_PREFIX) :]
    arch, _, tag = body.partition(TAG_SEPARATOR)
    return arch, (tag or None)


def has_text_tower(model_name: str) -> bool:
    """Whether features of ``model_name`` can be queried with text (its family has a text tower)."""
    return model_name.startswith(CLIP_PREFIX)


def _model_config(arch: str) -> dict[str, Any]:
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(CLIP_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(f"unknown open_clip architecture {arch!r}{hint}")
    if "multimodal_cfg" in config:
        raise ModelError(f"open_clip architecture {arch!r} is a captioning model (CoCa); vcf takes CLIP-style models")
    return copy.deepcopy(config)


def build_clip(arch: str, quick_gelu: bool) -> ClipImageModel:
    """The open_clip model ``arch`` with random weights, as ``open_clip.create_model`` makes it (no download)."""
    from open_clip.model import CLIP, CustomTextCLIP

    config = _model_config(arch)
    if quick_gelu:
        config["quick_gelu"] = True
    vision, text = config["vision_cfg"], config["text_cfg"]
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    custom_text = config.pop("custom_text", False) or "hf_model_name" in text
    model_class = CustomTextCLIP if custom_text else CLIP
    return ClipImageModel(model_class(**config))


def _pretrained_cfg(arch: str, tag: str | None) -> dict[str, Any]:
    import open_clip

    if tag is None:
        return {}
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = f"; its tags: {', '.join(tags)}" if tags else "; open_clip knows no pretrained weights for it"
        raise ModelError(f"open_clip has no pretrained tag {tag!r} for {arch}{known}")
    return dict(cfg)


def clip_preprocess(arch: str, tag: str | None) -> Preprocess:
    """The eval preprocessing open_clip uses for ``arch`` with weights ``tag``, from its own configs."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    config = _model_config(arch)
    merged = merge_preprocess_dict(PreprocessCfg(), _pretrained_cfg(arch, tag))
    size = config["vision_cfg"].get("image_size", merged["size"])
    side = int(size if isinstance(size, int) else size[-1])
    resize: int | tuple[int, int]
    mode = merged["resize_mode"]
    if mode == "shortest":  # resize the shorter side, then centre crop
        resize = side
    elif mode == "squash":  # resize to the square, no crop
        resize = (side, side)
    else:
        raise ModelError(f"{CLIP_PREFIX}{arch}: open_clip resize mode {mode!r} (padding) is not supported by vcf")
    interpolation = merged["interpolation"]
    return Preprocess(
        resize=resize,
        crop=side,
        mean=tuple(float(v) for v in merged["mean"]),
        std=tuple(float(v) for v in merged["std"]),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
    )


def _cache_hint(cfg: dict[str, Any]) -> str:
    """Where open_clip keeps the weights of a pretrained tag."""
    hub = cfg.get("hf_hub") or ""
    if hub:
        repo = hub.rstrip("/").split("/")
        repo_id = "/".join(repo[:2])
        try:
            from huggingface_hub.constants import HF_HUB_CACHE as cache
        except ImportError:
            cache = "~/.cache/huggingface/hub"

        return f"the Hugging Face cache {cache}/models--{repo_id.replace('/', '--')} (repository {repo_id})"
    url = cfg.get("url") or ""
    return f"~/.cache/clip/{url.rsplit('/', 1)[-1]} (from {url})"


def fetch_weights(arch: str, tag: str | None) -> str:
    """The weights file of ``arch``/``tag`` through open_clip's own download code and cache.

    Raises:
        ModelError: No tag, or the file is neither cached nor downloadable; the message says where it goes.
    """
    from open_clip.pretrained import download_pretrained

    name = f"{CLIP_PREFIX}{arch}"
    if tag is None:
        raise ModelError(f"{name} names no pretrained tag ({name}:<tag>); pass its weights with --weights FILE")
    cfg = _pretrained_cfg(arch, tag)
    try:
        path = download_pretrained(cfg)
    except Exception as exc:  # offline, HTTP error, missing huggingface_hub: the same advice
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(
            f"cannot get the weights of {name}:{tag} ({reason}); open_clip keeps them in {_cache_hint(cfg)}: "
            f"run `python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{tag}')\"` where "
            "there is internet and copy that cache here, or pass the file with --weights FILE"
        ) from exc
    if not path or not Path(path).is_file():
        raise ModelError(f"open_clip returned no weights file for {name}:{tag}; pass one with --weights FILE")
    return str(path)


def convert_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An open_clip checkpoint's state dict mapped onto :class:`ClipImageModel`, with open_clip's conversions."""
    if all(key.startswith(_WRAPPED) for key in state):
        return state
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    clip = model.get_submodule("clip")
    state = convert_state_dict(clip, dict(state))
    if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(clip, key, None)
        if key in state and target is not None and state[key].ndim != target.ndim:
            state[key] = state[key].reshape(target.shape)
    if "logit_bias" not in state and getattr(clip, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros(clip.logit_bias.shape)
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    return {_WRAPPED + key: value for key, value in state.items()}


def _layer_dims(builder: Callable[[], nn.Module], crop: int) -> tuple[dict[str, int], str]:
    """The dims of ``embed`` (and ``pool`` where the tower has it), from a parameter-free forward pass."""
    probe = ModelRecord(
        name="probe",
        kind="2d",
        builder=builder,
        weights=WeightsSource(),
        preprocess=Preprocess(resize=crop, crop=crop),
        layers={EMBED_LAYER: 1},
        default_layer=EMBED_LAYER,
    )
    model = probe.build(meta=True)
    _, pool_module = _TOWERS.get(type(model.clip.visual).__name__, _OTHER_TOWER)
    captured: list[torch.Tensor] = []
    handle = None
    if pool_module is not None:
        handle = model.get_submodule(pool_module).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            embed = model(torch.empty(1, 3, crop, crop, device="meta"))
    finally:
        if handle is not None:
            handle.remove()
    dims = {EMBED_LAYER: int(embed.shape[-1])}
    if captured:
        dims[POOL_LAYER] = int(captured[-1].shape[-1])
    return dims, pool_module or ""


def clip_record(name: str) -> ModelRecord:
    """The record of ``clip/<arch>[:<pretrained tag>]``, everything taken from open_clip's configs.

    Raises:
        ModelError: Unknown architecture or tag, open_clip not installed, or an unsupported model.
    """
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"{name} needs the open-clip-torch package, which is not installed") from exc
    arch, tag = split_name(name)
    _model_config(arch)  # an unknown architecture is named before its tag
    cfg = _pretrained_cfg(arch, tag)
    preprocess = clip_preprocess(arch, tag)
    builder = functools.partial(build_clip, arch, bool(cfg.get("quick_gelu", False)))
    try:
        layers, pool_module = _layer_dims(builder, preprocess.crop)
    except Exception as exc:  # e.g. a Hugging Face text tower whose config is not cached
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ModelError(f"cannot build open_clip model {arch}: {reason}") from exc
    source = (cfg.get("hf_hub") and f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}") or cfg.get("url") or None
    return ModelRecord(
        name=name,
        kind="2d",
        builder=builder,
        weights=WeightsSource(
            url=source,
            license=f"see the open_clip model card of {arch}:{tag}" if tag else "weights given with --weights",
            fetch=functools.partial(fetch_weights, arch, tag),
            convert=convert_state,
        ),
        preprocess=preprocess,
        layers=layers,
        default_layer=EMBED_LAYER,
        feature_module=pool_module,
        fixed_input_size=True,
        description=f"open_clip {arch}" + (f", pretrained {tag}" if tag else ""),
        output_layer=EMBED_LAYER,
    )


class TextEncoder:
    """The text tower of a ``clip/...`` model with the same weights its image features were made with.

    Args:
        model_name: ``clip/<arch>:<tag>``.
        weights: The weights file (a feature's manifest names it); None takes open_clip's cached file.
        device: Where to run.
    """

    def __init__(self, model_name: str, weights: str | os.PathLike[str] | None = None, device: str = "cpu") -> None:
        if not has_text_tower(model_name):
            raise ModelError(f"model {model_name} has no text tower; query its features with an image, video or id")
        import open_clip

        from vcf.models.extractor import build_extractor

        record = get_model(model_name)
        extractor, self.weights = build_extractor(record, [EMBED_LAYER], weights_path=weights)
        arch, _ = split_name(model_name)
        self.clip = extractor.model.get_submodule("clip").to(device)
        self.device = torch.device(device)
        try:
            self.tokenizer = open_clip.get_tokenizer(arch)
        except Exception as exc:  # a Hugging Face tokenizer that is not cached
            raise ModelError(f"cannot load the tokenizer of {model_name}: {str(exc).splitlines()[0][:160]}") from exc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, embed_dim) float32 text embeddings (``encode_text``, unnormalized)."""
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.clip.encode_text(tokens).float().cpu().numpy()


def encode_texts(
    model_name: str, texts: Sequence[str], weights: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> np.ndarray:
    """Encodes ``texts`` with the text tower of ``model_name``; see :class:`TextEncoder`."""
    return TextEncoder(model_name, weights, device).encode(texts)
