"""Feature extraction: a model wrapped to return the vectors of the requested layers from one forward pass."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vcf.errors import ModelError
from vcf.models.registry import ModelRecord
from vcf.models.weights import RANDOM_WEIGHTS, WeightsInfo, load_state


class FeatureExtractor(nn.Module):
    """Runs a model once and returns one (B, D) tensor per requested layer.

    The record's ``output_layer`` is the model's output; any other layer is the input of its
    ``feature_module``. For classifiers ``avgpool`` is the pooled vector the classifier reads (captured by
    a hook on the classifier's input, averaged over any remaining time/space positions); ``fc`` (alias
    ``logits``) is the classifier output.

    Args:
        model: The network of ``record``, in eval mode.
        record: The model's registry record.
        layers: Names of the layers to return, in the order wanted.
    """

    def __init__(self, model: nn.Module, record: ModelRecord, layers: Sequence[str]) -> None:
        super().__init__()
        if not layers:
            raise ModelError(f"no layer asked for; {record.name} has {', '.join(record.layers)}")
        self.model = model
        self.record = record
        self.layers = tuple(layers)
        self._canonical = tuple(record.resolve_layer(layer) for layer in self.layers)
        try:
            model.get_submodule(record.feature_module)
        except AttributeError as exc:
            raise ModelError(f"model {record.name} has no module {record.feature_module!r}") from exc

    @property
    def dims(self) -> dict[str, int]:
        """Feature dimension of each requested layer."""
        return {
            layer: self.record.layers[canonical] for layer, canonical in zip(self.layers, self._canonical, strict=True)
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extracts the requested layers.

        Args:
            x: Normalized input, (B, 3, H, W) for 2D models or (B, 3, T, H, W) for 3D models.

        Returns:
            ``{layer: Tensor(B, D)}`` in the order of ``layers``.
        """
        rank = self.record.kind_info.rank
        if x.dim() != rank:
            raise ModelError(f"{self.record.name} takes {rank}-d input, got shape {tuple(x.shape)}")
        captured: list[torch.Tensor] = []
        handle = None
        output = self.record.output_layer
        if any(canonical != output for canonical in self._canonical):
            # Registered per call on the module this replica owns, so copies made by DataParallel work too.
            head = self.model.get_submodule(self.record.feature_module)
            handle = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            logits = self.model(x)
        finally:
            if handle is not None:
                handle.remove()
        outputs: dict[str, torch.Tensor] = {}
        for layer, canonical in zip(self.layers, self._canonical, strict=True):
            if canonical == output:
                value = logits
            else:
                if not captured:
                    raise ModelError(f"{self.record.name}: {self.record.feature_module} was not called")
                value = captured[-1]
                if value.dim() > 2:
                    value = value.mean(dim=tuple(range(2, value.dim())))
            outputs[layer] = value.flatten(1)
        return outputs


def build_extractor(
    record: ModelRecord,
    layers: Sequence[str],
    weights_path: str | Path | None = None,
    pretrained: bool = True,
) -> tuple[FeatureExtractor, WeightsInfo]:
    """Builds a model with its weights and wraps it to extract ``layers``.

    Args:
        record: The model (see :func:`vcf.models.get_model`).
        layers: Layer names, e.g. ``["avgpool"]`` or ``["avgpool", "fc"]``.
        weights_path: A local weights file to use instead of the record's default weights.
        pretrained: False gives random weights (for tests); ``weights_path`` must then be None.

    Returns:
        The extractor on the CPU, in eval mode without gradients, and where its weights came from.

    Raises:
        ModelError: Unknown layer, or weights that cannot be had or do not fit.
    """
    for layer in layers:
        record.resolve_layer(layer)
    if not pretrained:
        if weights_path is not None:
            raise ModelError("a weights file was given together with random weights (pretrained=False)")
        model, info = record.build(), RANDOM_WEIGHTS
    else:
        skeleton = record.build(meta=True)
        state, info = load_state(record, weights_path, model=skeleton)
        model = _materialize(record, skeleton, state)
    model.eval().requires_grad_(False)
    return FeatureExtractor(model, record, layers), info


def _materialize(record: ModelRecord, skeleton: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model holding ``state``: the meta skeleton takes the tensors over when they cover all of it,
    which skips a random initialization and a copy (seconds and gigabytes for the largest models)."""
    names = {name for name, _ in itertools.chain(skeleton.named_parameters(), skeleton.named_buffers())}
    if names <= state.keys():
        expected = skeleton.state_dict()
        cast = {key: value.to(expected[key].dtype) for key, value in state.items()}
        skeleton.load_state_dict(cast, strict=True, assign=True)
        if not any(t.is_meta for t in itertools.chain(skeleton.parameters(), skeleton.buffers())):
            return skeleton
    model = record.build()
    model.load_state_dict(state, strict=True)
    return model
