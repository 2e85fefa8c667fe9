"""Search queries: what a query is (file, id or text) and its vector in a feature's space."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import VcfError
from vcf.io.atomic import read_manifest
from vcf.io.bigfile import BigFile
from vcf.io.collection import VIDEO_EXTENSIONS, Collection
from vcf.sampling import Sampling

QUERY_KINDS = ("image", "video", "id", "text")
# Frames a second taken from a video query (the default of `vcf frames` keeps two).
VIDEO_QUERY_FPS = 2.0
MAX_ORIGIN_DEPTH = 8


@dataclass(frozen=True)
class FeatureOrigin:
    """How a feature was made, read from its manifest (and those of the features it was pooled from).

    Attributes:
        model: Registry name of the model.
        layer: The model layer.
        weights: The weights file recorded, when it is still there (None for builtin or moved weights).
        sha256: The sha256 of the weights the feature was made with ("" when not recorded).
        pooling: ``mean``/``max`` when the feature pools frames into videos, else None.
        oversample: Ten-crop averaging.
    """

    model: str
    layer: str
    weights: str | None
    sha256: str
    pooling: str | None
    oversample: bool


def feature_origin(coll: Collection, feature: str) -> FeatureOrigin | None:
    """The model behind a feature, following pooled features back to their frame feature; None if unknown."""
    pooling = None
    name = feature
    for _ in range(MAX_ORIGIN_DEPTH):
        manifest = read_manifest(coll.feature_dir(name)) or {}
        if "input_feature" in manifest:
            pooling = pooling or manifest.get("method")
            name = str(manifest["input_feature"])
            continue
        model = manifest.get("model")
        if not model:
            return None
        layer = manifest.get("layer") or name.split(",")[1]
        recorded = manifest.get("weights") or {}
        source = str(recorded.get("source") or "")
        weights = source if source and Path(source).is_file() else None
        sha256 = str(recorded.get("sha256") or "")
        return FeatureOrigin(str(model), str(layer), weights, sha256, pooling, bool(manifest.get("oversample")))
    return None


def query_kind(query: str, ids: set[str]) -> str:
    """``image`` or ``video`` for an existing file, ``id`` for an id of the feature, else ``text``."""
    path = Path(query).expanduser()
    if path.is_file():
        return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
    if query in ids:
        return "id"
    return "text"


class QueryEncoder:
    """Encodes image, video and text queries with the model and preprocessing a feature was made with.

    Args:
        coll: The collection.
        feature: The feature's name.
        device: Where to run the model.
        weights: A weights file overriding the one the manifest records.
    """

    def __init__(self, coll: Collection, feature: str, device: str = "cpu", weights: str | None = None) -> None:
        self.feature = feature
        self.origin = feature_origin(coll, feature)
        self.device = device
        self.explicit_weights = weights is not None
        self.weights = weights or (self.origin.weights if self.origin else None)
        self._inference: Any = None
        self._transform: Any = None
        self._text: Any = None

    def _require_origin(self, kind: str) -> FeatureOrigin:
        if self.origin is None:
            raise VcfError(f"feature {self.feature} has no manifest naming its model; it cannot encode {kind} queries")
        return self.origin

    def _check_weights(self, sha256: str) -> None:
        """Queries must be encoded with the weights the feature was made with, unless others were asked for."""
        recorded = self.origin.sha256 if self.origin else ""
        if recorded and sha256 != recorded and not self.explicit_weights:
            raise VcfError(
                f"feature {self.feature} was made with weights of sha256 {recorded[:12]}...; the weights found "
                f"(manifest's file or the model's default) have {sha256[:12]}...: pass the right file with --weights"
            )

    def _image_model(self) -> tuple[Any, Any]:
        if self._inference is None:
            from vcf.io.preprocess import FrameTransform
            from vcf.models import build_extractor, get_model
            from vcf.models.inference import Inference, Normalization, resolve_device

            origin = self._require_origin("image")
            record = get_model(origin.model)
            extractor, info = build_extractor(record, [origin.layer], weights_path=self.weights)
            self._check_weights(info.sha256)
            pre = record.preprocess
            self._transform = FrameTransform(pre.resize, pre.crop, pre.interpolation, origin.oversample)
            device = resolve_device(self.device)
            self._inference = Inference(extractor, Normalization(tuple(pre.mean), tuple(pre.std)), device, "fp32")
        return self._inference, self._transform

    def encode_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        """(N, D) features of RGB uint8 frames."""
        import torch

        inference, transform = self._image_model()
        layer = self._require_origin("image").layer
        rows = []
        for start in range(0, len(frames), 16):
            batch = torch.cat([transform(frame) for frame in frames[start : start + 16]])
            rows.append(inference(batch, views=transform.views)[layer])
        return np.concatenate(rows)

    def encode_image(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The feature vector of one image file."""
        from vcf.io.preprocess import ImageError, read_rgb

        try:
            rgb = read_rgb(path)
        except ImageError as exc:
            raise VcfError(f"query image {path}: {exc}") from exc
        return self.encode_frames([rgb])[0]

    def encode_video(self, path: str | os.PathLike[str]) -> np.ndarray:
        """A video's frames (two a second) encoded and pooled as the feature pools them (mean by default)."""
        import cv2

        from vcf.io.video import VideoError, decode_selected

        try:
            _, frames = decode_selected(Path(path), Sampling(fps=VIDEO_QUERY_FPS))
            rgb = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for _, frame in frames]
        except VideoError as exc:
            raise VcfError(f"query video {path}: {exc}") from exc
        vectors = self.encode_frames(rgb)
        pooling = self._require_origin("video").pooling
        return vectors.max(axis=0) if pooling == "max" else vectors.mean(axis=0)

    def encode_text(self, text: str) -> np.ndarray:
        """The text tower's embedding of ``text``; refused for features of models without one."""
        from vcf.models.openclip import EMBED_LAYER, TextEncoder, has_text_tower

        origin = self._require_origin("text")
        if not has_text_tower(origin.model) or origin.layer != EMBED_LAYER:
            raise VcfError(
                f"feature {self.feature} ({origin.model}, layer {origin.layer}) has no text tower; a text query "
                f"needs a clip/<arch>:<tag> feature of layer {EMBED_LAYER} (query {text!r} is neither a file "
                "nor an id of the feature)"
            )
        if self._text is None:
            self._text = TextEncoder(origin.model, self.weights, self.device)
            self._check_weights(self._text.weights.sha256)
        return self._text.encode([text])[0]


def id_vector(bigfile: BigFile, query: str, groups: dict[str, np.ndarray] | None) -> np.ndarray:
    """The row of id ``query``, or the mean of the rows of a video or shot when ``query`` names a group."""
    if query in bigfile.name2index:
        return np.asarray(bigfile.matrix()[bigfile.name2index[query]], dtype=np.float32)
    rows = (groups or {})[query]
    return np.asarray(bigfile.matrix()[np.sort(rows)], dtype=np.float32).mean(axis=0)
