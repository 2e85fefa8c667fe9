"""Features of the videos of a ``video_path,feature_path`` CSV: units are CSV rows, results one ``.npy`` each."""

from __future__ import annotations

import csv as csvlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcf.errors import IndexFormatError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import atomic_write_bytes, clean_stale_temps, is_output_error, write_manifests_beside, writing
from vcf.progress import ProgressCallback, Reporter
from vcf.run.engines import open_engine, parse_scale_out
from vcf.run.jobs import VideoRows
from vcf.run.loop import run_units
from vcf.run.partition import owned_rows
from vcf.stages.outputs import FeaturesResult, RunOptions, resolve_model
from vcf.stages.videofeatures import (
    VideoSelection,
    check_workers,
    decode_spec,
    video_job,
    video_preprocessing,
)

DEFAULT_CSV_FPS = 1.0
DTYPES = ("float32", "float16")
CSV_COLUMNS = ("video_path", "feature_path")


@dataclass(frozen=True)
class CsvRow:
    """One video of a features CSV.

    Attributes:
        line: Line number in the CSV (1 is the header).
        video: The video file: as written when absolute, else joined to the CSV's folder (so relative to the
            current directory when the CSV's own path was relative).
        output: The .npy file to write.
    """

    line: int
    video: Path
    output: Path


@dataclass
class CsvFeaturesResult(FeaturesResult):
    """What a CSV run did; ``computed`` and ``reused`` count videos.

    Attributes:
        csv: The CSV file.
        videos: Rows of the CSV (videos), bad rows included.
        outputs: The .npy files written or found complete.
        dtype: The dtype of the .npy files.
    """

    csv: Path | None = None
    videos: int = 0
    outputs: list[Path] = field(default_factory=list)
    dtype: str = "float32"


def _item(text: str) -> str:
    """A failures-file item: no bare spaces, which separate the item from the reason."""
    return text.replace(" ", "\\ ")


def read_feature_csv(path: str | os.PathLike[str]) -> tuple[list[CsvRow], list[tuple[str, str]]]:
    """Reads a ``video_path,feature_path`` CSV.

    Blanks around fields, extra columns and blank lines are tolerated; relative paths are taken relative to
    the CSV's folder; a ``feature_path`` without the ``.npy`` suffix gets it (as ``np.save`` does).

    """
    csv_path = Path(path).expanduser()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VcfError(f"CSV file {csv_path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VcfError(f"cannot read CSV file {csv_path}: {exc}") from None
    base = csv_path.parent
    rows: list[CsvRow] = []
    bad: list[tuple[str, str]] = []
    columns: dict[str, int] | None = None
    seen: dict[Path, int] = {}
    reader = csvlib.reader(io.StringIO(text, newline=""))
    for fields in reader:
        line = reader.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if columns is None:
            columns = {name: i for i, name in reversed(list(enumerate(fields)))}
            missing = [name for name in CSV_COLUMNS if name not in columns]
            if missing:
                raise IndexFormatError(
                    f"{csv_path}:{line}: the header must name the columns video_path and feature_path, "
                    f"got {','.join(fields)[:80]!r}"
                )
            continue
        values = {name: fields[i] if i < len(fields) else "" for name, i in columns.items() if name in CSV_COLUMNS}
        empty = [name for name in CSV_COLUMNS if not values[name]]
        if empty:
            bad.append((f"{_item(csv_path.name)}:{line}", f"no {empty[0]} on line {line}"))
            continue
        video = Path(values["video_path"]).expanduser()
        output = Path(values["feature_path"]).expanduser()
        if output.suffix != ".npy":
            output = output.with_name(output.name + ".npy")
        video, output = base / video, base / output  # an absolute right-hand side wins
        if output in seen:
            bad.append((f"{_item(csv_path.name)}:{line}", f"feature_path {output} is also on line {seen[output]}"))
            continue
        seen[output] = line
        rows.append(CsvRow(line, video, output))
    if columns is None:
        raise IndexFormatError(f"{csv_path}: empty CSV; expected the header video_path,feature_path")
    return rows, bad


def _file_size(path: Path) -> float:
    try:
        return float(path.stat().st_size)
    except OSError:  # a missing video fails when decoded; it weighs nothing in the split
        return 0.0


def _bounds(rows: range) -> tuple[int, int]:
    return rows.start, rows.stop


def complete_npy(path: Path, dims: int) -> bool:
    """True when ``path`` loads as a (T, dims) array with T >= 1."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return array.ndim == 2 and array.shape[0] >= 1 and array.shape[1] == dims


def l2_normalize_rows(array: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (zero rows stay zero), in float32."""
    array = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, np.float32(1e-12))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Writes a .npy file under a temporary name then renames it (parent folders created)."""
    handle = io.BytesIO()
    np.save(handle, array, allow_pickle=False)
    with writing(path):  # creating the parent folders can fail too
        atomic_write_bytes(path, handle.getvalue())


def features_from_csv(
    csv: str | os.PathLike[str],
    run: RunOptions,
    *,
    selection: VideoSelection = VideoSelection(),
    l2_normalize: bool = False,
    dtype: str = "float32",
    video_timeout: float | None = None,
    progress: ProgressCallback | None = None,
) -> CsvFeaturesResult:
    """Computes one ``.npy`` of shape (T, D) per video of a ``video_path,feature_path`` CSV.

    2D models: T frames, by default one a second (``fps=1``). 3D models: T clips (see
    :func:`features_from_videos`). Videos whose output already loads with D columns are skipped (checked
    again just before each video, so several runs may share one CSV); each file is written under a
    temporary name and renamed. Bad rows and videos that cannot be decoded are listed in
    ``<csv stem>.failures.txt`` next to the CSV; the other videos complete.

    Args:
        run: The options every input mode shares.
        csv: The CSV file.
        selection: Which frames (2D, default one a second) or clips (3D) of each video are computed.
        l2_normalize: Divide each row by its L2 norm (the older tool's default).
        dtype: ``float32`` or ``float16`` (the older tool wrote float16).
        video_timeout: Seconds a decoder may go without producing anything before its video is failed.
        progress: Receives ``videos`` and ``frames`` (or ``clips``) events.

    Returns:
        A CsvFeaturesResult; ``computed`` and ``reused`` count videos.

    Raises:
        VcfError: Unreadable CSV or bad header, unknown model or layer, bad options.

    Example:
        >>> vcf.features(csv="input.csv", model="efficientnet_lite0", l2_normalize=True)  # doctest: +SKIP
    """
    from vcf.models import get_model

    if run.batch_size < 1:
        raise VcfError("--batch-size must be >= 1")
    check_workers(run.workers, video_timeout)
    if dtype not in DTYPES:
        raise VcfError(f"unknown --dtype {dtype!r}; use {' or '.join(DTYPES)}")
    if len(run.layers) != 1:
        raise VcfError(f"--csv writes one .npy per video: give one --layer, not {len(run.layers)}")
    record = get_model(run.model)
    layer = run.layers[0]
    dims = record.layers[record.resolve_layer(layer)]
    clips, sampling = selection.resolve(record, default_fps=DEFAULT_CSV_FPS)
    spec = decode_spec(record, sampling, clips, run.oversample, run.batch_size, run.resize_backend)
    shard_spec = parse_scale_out(run.shard, run.engine, run.ray_address)
    csv_path = Path(csv).expanduser()
    rows, failures = read_feature_csv(csv_path)
    if shard_spec is not None:
        sizes = [_file_size(row.video) for row in rows]
        rows = rows[slice(*_bounds(owned_rows([str(row.output) for row in rows], shard_spec, sizes)))]
        failures = failures if shard_spec.index == 0 else []
    result = CsvFeaturesResult(collection=None, csv=csv_path, videos=len(rows) + len(failures), dtype=dtype)

    def wanted(index: int) -> bool:
        return run.overwrite or not complete_npy(rows[index].output, dims)

    todo = [row for index, row in enumerate(rows) if wanted(index)]
    reporter = Reporter(progress)
    result.reused = len(rows) - len(todo)
    failed_outputs: set[Path] = set()
    if todo:  # the model is loaded only when there is work, and before any progress is shown
        with open_engine(run.engine, run.ray_address) as runner:
            torch_device, chosen_precision = runner.resolve_device(run.device, run.precision)
            record, extractor, weights_info = resolve_model(record.name, run.layers, run.weights)
            # What the .npy files are computed with, beside them, written first so that a killed run leaves it too.
            weights_used = {"source": weights_info.source, "sha256": weights_info.sha256}
            manifest = {
                "model": record.name,
                "layer": layer,
                "weights": weights_used,
                "preprocessing": video_preprocessing(record, spec),
                "precision": chosen_precision,
                "dtype": dtype,
                "l2_normalize": l2_normalize,
                "csv": csv_path.name,
                "sampling": sampling.as_dict(),
                "clips": clips.as_dict() if clips is not None else None,
            }
            shard_name = None if shard_spec is None else shard_spec.name
            name = layout.csv_failures_path(csv_path, shard_name).name.replace(".failures.txt", ".manifest.json")
            write_manifests_beside([row.output for row in rows], name, manifest)
            for folder in {row.output.parent for row in todo}:  # .npy files a killed run left half written
                clean_stale_temps(folder)
            job = video_job(record, extractor, spec, torch_device, chosen_precision, run.workers, video_timeout)
            reporter.total("videos", result.videos)
            reporter.advance("videos", len(rows) - len(todo) + len(failures))
            # Checked again just before each video starts: several runs may share one CSV.
            todo_wanted = None if run.overwrite else (lambda index: not complete_npy(todo[index].output, dims))
            outcomes = runner.video_rows(
                job, [row.video for row in todo], todo_wanted, lambda n: reporter.advance(job.item_task, n)
            )

            def commit(task: int, video: VideoRows | None, reason: str | None) -> None:
                row = todo[task]
                if video is not None:
                    values = video.layers[layer]
                    if l2_normalize:
                        values = l2_normalize_rows(values)
                    try:
                        write_npy(row.output, values.astype(dtype))
                        result.computed += 1
                    except VcfError as exc:  # e.g. an output folder without write permission: this video only
                        if is_output_error(str(exc)):
                            raise  # a full or failing disk would fail every other video too; finished files stay
                        reason = str(exc)
                if reason is not None:
                    failures.append((_item(str(row.video)), reason))
                    failed_outputs.add(row.output)
                elif video is None:  # completed by another run meanwhile
                    result.reused += 1

            run_units(outcomes, commit, reporter, "videos", describe=lambda task: todo[task].video.name)
    else:
        reporter.total("videos", result.videos)
        reporter.advance("videos", len(rows) - len(todo) + len(failures))
    result.up_to_date = not todo and not failures
    result.outputs = [row.output for row in rows if row.output not in failed_outputs and row.output.is_file()]
    result.shapes[layer] = (len(result.outputs), dims)
    result.failures = failures
    failures_path = layout.csv_failures_path(csv_path, None if shard_spec is None else shard_spec.name)
    result.failures_file = layout.write_failures(failures_path, failures)
    return result
