"""The ``features`` stage: picks the input mode (frames, videos, a CSV of videos) from a table and runs it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vcf.errors import VcfError
from vcf.model_kinds import KINDS
from vcf.progress import ProgressCallback
from vcf.run.engines import ENGINES
from vcf.stages.csv_features import CsvFeaturesResult, features_from_csv
from vcf.stages.from_video import features_from_videos
from vcf.stages.image_features import features_from_images
from vcf.stages.outputs import DEFAULT_LAYER, FeaturesResult, RunOptions, feature_name
from vcf.stages.videofeatures import VideoSelection, resolve_model_name

DEFAULT_MODEL = KINDS["2d"].default_model
SELECTION = ("fps", "every", "num_frames", "clip_len", "clip_stride", "clip_fps")
VIDEO_OPTIONS = (*SELECTION, "video_timeout")


@dataclass(frozen=True)
class InputMode:
    """One way of feeding ``features``: the function that runs it and the options it takes beyond the common ones."""

    run: Callable[..., FeaturesResult]
    options: tuple[str, ...]


MODES: dict[str, InputMode] = {
    "images": InputMode(features_from_images, ("rootpath", "fast_decode", "decode_on_device", "compile_model")),
    "videos": InputMode(features_from_videos, ("rootpath", "selection", "video_timeout", "shots", "keyframe")),
    "csv": InputMode(features_from_csv, ("l2_normalize", "dtype", "selection", "video_timeout")),
}
# Why an option given to a mode that does not take it is refused.
REFUSALS: dict[str, str] = {
    "fast_decode": "--fast-decode applies to JPEG frames, not to --from-video or --csv",
    "decode_on_device": "--decode-on-device applies to JPEG frames, not to --from-video or --csv",
    "compile_model": "--compile applies to JPEG frames with the local engine",
    "l2_normalize": "--l2-normalize applies to --csv runs (BigFiles hold float32)",
    "dtype": "--dtype applies to --csv runs (BigFiles hold float32)",
    "shots": "--shots applies to --from-video; frame files sampled by shot come from `vcf frames --shots`",
    "keyframe": "--keyframe applies to --from-video --shots",
    **{key: f"--{key.replace('_', '-')} applies when decoding videos; add --from-video" for key in VIDEO_OPTIONS},
}


def features(
    collection: str | os.PathLike[str] | None = None,
    *,
    model: str | None = None,
    layers: Sequence[str] = (DEFAULT_LAYER,),
    oversample: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    shard: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    from_video: bool = False,
    csv: str | os.PathLike[str] | None = None,
    model_type: str | None = None,
    fps: float | None = None,
    every: int | None = None,
    num_frames: int | None = None,
    clip_len: int | None = None,
    clip_stride: int | None = None,
    clip_fps: float | None = None,
    l2_normalize: bool = False,
    dtype: str | None = None,
    video_timeout: float | None = None,
    fast_decode: bool = False,
    decode_on_device: bool = False,
    compile_model: bool | None = None,
    shots: bool = False,
    keyframe: bool = False,
    resize_backend: str = "default",
) -> FeaturesResult:
    """Computes CNN features of the frames listed in ``id.imagepath.txt``, or straight from videos.

    Writes ``FeatureData/<model>,<layer>[,os]/`` (BigFile, rows in id.imagepath.txt order) for each
    layer, with a ``manifest.json``. Work is saved in chunks as it goes: an interrupted run resumes
    where it stopped and ends with the same bytes an uninterrupted run writes. Images that cannot be
    read are left out and listed in ``features.failures.txt``.

    ``from_video`` decodes ``VideoData/`` instead, with the frame selection of ``vcf frames`` (3D models
    always read videos, as clips); ``csv`` turns the videos of a ``video_path,feature_path`` CSV into one
    ``.npy`` each. See :mod:`vcf.stages.videofeatures`.

    Args:
        collection: Collection directory, or its name under ``rootpath`` (None with ``csv``).
        model: A registry name (``vcf models`` lists them); None takes the default of ``model_type``.
        layers: Layers to write, e.g. ``avgpool`` (pooled penultimate vector) and ``fc``/``logits``.
        oversample: Average the outputs of ten crops (adds ``,os`` to the feature name).
        batch_size: Images per forward pass.
        workers: Image decoding processes; 0 decodes in this process (default: :func:`vcf.run.local.default_workers`).
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        weights: A local state_dict or checkpoint to use instead of the model's published weights.
        rootpath: Where named collections live.
        overwrite: Recompute and replace the outputs, even up-to-date ones or ones made with other settings
            (outputs whose inputs changed since are recomputed without it).
        progress: Receives ``images`` progress events.
        shard: ``K/N``: compute only shard K (from 0) of N, whole videos, into part BigFiles under
            ``FeatureData/.vcf-shards/``; :func:`vcf.merge` assembles them once all N are done.
        engine: ``local`` (this process and its loader workers) or ``ray`` (Ray tasks and model actors).
        ray_address: The Ray cluster to use with ``engine="ray"`` (default: Ray's own choice).
        from_video: Decode ``VideoData/`` instead of reading the frames of id.imagepath.txt.
        csv: A ``video_path,feature_path`` CSV to work on instead of a collection.
        model_type: ``2d`` or ``3d``: picks the default model and checks ``model``'s kind.
        fps: Videos: keep the first frame at or after each ``k/fps`` seconds (CSV default 1).
        every: Videos: keep every N-th decoded frame.
        num_frames: Videos: keep K frames spread over each video.
        clip_len: 3D models: frames per clip (default the model's).
        clip_stride: 3D models: frames between clip starts (default ``clip_len``).
        clip_fps: 3D models: frame rate the clips are decoded at (default the model's).
        l2_normalize: CSV: L2-normalise each row.
        dtype: CSV: ``float32`` (default) or ``float16``.
        video_timeout: Videos: seconds a decoder may go without output before its video fails.
        fast_decode: Frames: decode JPEGs much larger than the model input at 1/2, 1/4 or 1/8 size
            (reduced-size DCT decoding; faster, slightly different features, recorded in the manifest).
        decode_on_device: Frames, local engine: decode JPEGs with torchvision on the model's device
            (nvJPEG, batched, on CUDA), and resize and crop there; the loader workers only read files.
            Faster on GPUs; another decoder and float resizing give slightly different features
            (recorded in the manifest).
        compile_model: Frames, local engine: run the model through ``torch.compile`` (a one-time
            compilation per batch shape, then faster kernels; recorded in the manifest). None: where a
            measurement of that model, precision and CPU says a run of this size is 15 % faster compiled,
            compile included (:mod:`vcf.models.compile_rule`); complete outputs of the other choice are kept.
        shots: With ``from_video``: sample inside each shot of ``id.shots.txt``, ids ``<shot_id>_<n>``.
        keyframe: With ``shots``: the middle frame of each shot only.
        resize_backend: ``default`` (torchvision's fast uint8 kernel for bilinear resizing) or ``pil``
            (the reference pipeline exactly: PIL's resize, as the published transforms do; recorded in the
            manifest). See :data:`vcf.io.preprocess.RESIZE_BACKENDS`.

    Returns:
        A FeaturesResult (in a shard run, ``feature_dirs`` are the part directories; in a CSV run a
        :class:`vcf.stages.videofeatures.CsvFeaturesResult`).

    Raises:
        VcfError: Missing index, malformed index line, unknown model or layer, weights that cannot be
            loaded, outputs made with other settings, a lock held by another run.

    Example:
        >>> vcf.features("toydata", model="efficientnet_lite0", layers=["avgpool", "fc"])  # doctest: +SKIP
    """
    if csv is not None and (collection is not None or from_video):
        raise VcfError("give a COLLECTION or --csv FILE, not both")
    if csv is None and collection is None:
        raise VcfError("give a COLLECTION, or --csv FILE")
    mode = "csv" if csv is not None else "videos" if from_video else "images"
    in_process = engine not in ENGINES or ENGINES[engine].on_this_machine  # an unknown engine is named later
    if decode_on_device and (fast_decode or not in_process) and mode == "images":
        raise VcfError("--decode-on-device works with the local engine and without --fast-decode")
    if compile_model and not in_process:
        raise VcfError(REFUSALS["compile_model"])
    if compile_model is None and not in_process:
        compile_model = False
    given = {
        "fast_decode": fast_decode,
        "decode_on_device": decode_on_device,
        "compile_model": compile_model,
        "shots": shots,
        "keyframe": keyframe,
        "l2_normalize": l2_normalize,
        "dtype": dtype,
        "fps": fps,
        "every": every,
        "num_frames": num_frames,
        "clip_len": clip_len,
        "clip_stride": clip_stride,
        "clip_fps": clip_fps,
        "video_timeout": video_timeout,
    }
    for key, value in given.items():
        takes = MODES[mode].options + (SELECTION if "selection" in MODES[mode].options else ())
        if value not in (None, False) and key not in takes:
            raise VcfError(REFUSALS[key])
    name = resolve_model_name(model, model_type)
    if mode == "images":
        from vcf.models import get_model

        record = get_model(name)
        if record.kind_info.reads_videos:
            raise VcfError(f"{name} is a {record.kind.upper()} model: it reads clips from the videos; add --from-video")
    run = RunOptions(
        model=name,
        layers=layers,
        oversample=oversample,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        weights=weights,
        overwrite=overwrite,
        shard=shard,
        engine=engine,
        ray_address=ray_address,
        resize_backend=resize_backend,
    )
    options: dict[str, Any] = {
        "rootpath": rootpath,
        "progress": progress,
        "selection": VideoSelection(**{key: given.pop(key) for key in SELECTION}),
        **given,
    }
    if mode == "csv":
        options["dtype"] = dtype or "float32"
    chosen = {key: value for key, value in options.items() if key == "progress" or key in MODES[mode].options}
    return MODES[mode].run(csv if mode == "csv" else collection, run, **chosen)


__all__ = ["DEFAULT_MODEL", "MODES", "CsvFeaturesResult", "FeaturesResult", "feature_name", "features"]
