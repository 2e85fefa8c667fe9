"""HDF5 export: a BigFile feature, or a directory of .npy arrays, to one .h5 file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vcf.errors import CollectionError, OutputExistsError, VcfError
from vcf.io.atomic import OutputLock, clean_stale_temps, fsync_file, publish, remove_path, temp_sibling, writing
from vcf.io.bigfile import BigFile, chunk_rows, inputs_changed, open_feature
from vcf.io.collection import Collection, resolve_collection, write_failures
from vcf.progress import ProgressCallback, Reporter
from vcf.stages.pool import RowReader, group_frames, split_frame_id
from vcf.version import __version__

H5_DIR = "H5Data"
COMPRESSIONS = ("gzip", "lzf")
POOLED_PREFIXES = ("mean_", "max_", "gauss_")

# HDF5 chunks of about this size read well both row by row and as a whole.
H5_CHUNK_BYTES = 1 << 20

# HDF5 cannot recover from a failed write (its cache stays dirty and the process crashes when it
# exits), so room is checked before each write; this much is kept for the metadata written at close.
H5_SPACE_MARGIN = 16 << 20
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class H5Result:
    """What :func:`to_h5` wrote.

    Attributes:
        output: The .h5 file.
        layout: ``"matrix"`` (datasets ``ids`` and ``features``), ``"per_video"`` (one dataset per
            video) or ``"numpy"`` (one dataset per .npy file).
        datasets: Data datasets written: 1 for ``matrix``, the videos for ``per_video``, the arrays
            converted for ``numpy``.
        rows: Feature rows written (ids, or frames for ``per_video``); for ``numpy`` the arrays converted.
        dim: Values per row, or None for ``numpy``.
        failures: ``(file name, reason)`` of the .npy files that could not be converted.
        failures_file: Where the failures are listed, or None when there are none.
        skipped: True when the output already existed, made from the same feature with the same
            settings, and nothing was written (BigFile mode).
    """

    output: Path
    layout: str
    datasets: int
    rows: int
    dim: int | None
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_file: Path | None = None
    skipped: bool = False


def default_h5_path(collection: Collection, feature: str) -> Path:
    """Where ``to_h5`` writes a feature unless told otherwise: ``<collection>/H5Data/<feature>.h5``."""
    collection.feature_dir(feature)  # validates the name
    return collection.root / H5_DIR / f"{feature}.h5"


def is_frame_level(source: BigFile, feature: str) -> bool:
    """Whether a feature holds frames (one row per ``<video>_<n>``) rather than videos.

    The feature's manifest decides when it records a ``level``. Otherwise a pooled name (every
    ``+`` part starts with ``mean_``, ``max_`` or ``gauss_``) means video-level, and else the ids
    decide: frame-level when every id is ``<video>_<int>`` and at least one video has two or more
    rows. Video ids such as ``shot00001_1`` look like frame ids, hence the first two rules.
    """
    level = (source.manifest or {}).get("level")
    if level in ("frame", "video"):
        return level == "frame"
    if all(part.startswith(POOLED_PREFIXES) for part in feature.split("+")):
        return False
    videos: set[str] = set()
    for name in source.names:
        parsed = split_frame_id(name)
        if parsed is None:
            return False
        videos.add(parsed[0])
    return len(videos) < source.nr_of_images


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """Row-block chunks of about 1 MiB for a (rows, ...) dataset; None when it has no rows."""
    if not shape or shape[0] == 0 or 0 in shape:
        return None
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    rows = max(1, min(shape[0], H5_CHUNK_BYTES // row_bytes))
    return (rows, *shape[1:])


def _create(h5: h5py.File, name: str, shape: tuple[int, ...], dtype: Any, compression: str | None) -> h5py.Dataset:
    chunks = _chunks(shape, np.dtype(dtype).itemsize)
    return h5.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, compression=compression if chunks else None)


@contextlib.contextmanager
def _h5_output(output: Path, overwrite: bool) -> Iterator[h5py.File]:
    """An h5 file written under a temporary name, fsynced and renamed to ``output`` on success."""
    tmp = temp_sibling(output)
    remove_path(tmp)
    try:
        with writing(output):
            try:
                with h5py.File(tmp, "w") as h5:
                    h5.attrs["vcf_version"] = __version__
                    yield h5
            except RuntimeError as exc:
                raise _h5_os_error(exc) from exc
            fsync_file(tmp)
            publish(tmp, output, overwrite=overwrite)
    except BaseException:
        remove_path(tmp)
        raise


def _require_space(h5: h5py.File, nbytes: int) -> None:
    """Raises OSError(ENOSPC) while HDF5 can still close the file cleanly, not when it runs out of room."""
    stats = os.statvfs(os.path.dirname(os.path.abspath(h5.filename)))
    if stats.f_bavail * stats.f_frsize < nbytes + H5_SPACE_MARGIN:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _h5_os_error(exc: RuntimeError) -> OSError:
    """The OSError behind an HDF5 error (a write failing when the file is closed is a RuntimeError)."""
    found = re.search(r"errno = (\d+)", str(exc))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code))


def to_h5(
    collection: str | os.PathLike[str] | None = None,
    feature: str | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    per_video: bool | None = None,
    numpy_dir: str | os.PathLike[str] | None = None,
    compression: str | None = None,
    rootpath: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> H5Result:
    """Writes a BigFile feature, or every .npy file of a directory, to one HDF5 file.

    BigFile mode (``collection`` and ``feature``): the default output is
    ``<collection>/H5Data/<feature>.h5``. Video-level features get the ``matrix`` layout: datasets
    ``ids`` (UTF-8 strings) and ``features`` (N x D float32). Frame-level features (see
    :func:`is_frame_level`; ``per_video`` forces either way) get one root dataset per video, named
    by the video id, of shape (T, D) with frames in index order and the frame numbers in its
    ``frame_index`` attribute, so that ``h5py.File(f)[video_id]`` is the video's frame matrix.
    The root attributes record the feature, its dims, the layout and the source manifest (JSON).

    numpy mode (``numpy_dir``): one root dataset per ``.npy`` file, in name order, named by the
    file name without ``.npy``, dtype and values unchanged; other files are ignored. Files that
    cannot be read are reported in ``failures`` (and ``<output stem>.failures.txt``); the others are
    converted. The default output is ``<numpy_dir>.h5`` beside the directory.

    Args:
        collection: Collection directory, or its name under ``rootpath`` (BigFile mode).
        feature: Feature name (BigFile mode).
        output: The .h5 file to write.
        per_video: Force the per-video layout (True) or the matrix layout (False); None decides.
        numpy_dir: Directory of .npy files (numpy mode, instead of ``collection``/``feature``).
        compression: ``"gzip"`` or ``"lzf"``, or None.
        rootpath: Where named collections live.
        overwrite: Replace an existing output.
        progress: Receives ``rows``, ``videos`` or ``files`` events.

    Returns:
        The output, its layout and counts, and the numpy files that failed.

    Raises:
        VcfError: Conflicting or missing arguments, an unknown compression, no .npy file, or no
            .npy file that could be read.
        CollectionError: The collection, the feature or the numpy directory does not exist.
        FeatureFileError: The BigFile is inconsistent.
        OutputExistsError: The output exists and ``overwrite`` is false.
        LockedError: Another run is writing the same output.
    """
    if compression is not None and compression not in COMPRESSIONS:
        raise VcfError(f"unknown compression {compression!r}; use one of: {', '.join(COMPRESSIONS)}")
    reporter = Reporter(progress)
    if numpy_dir is not None:
        if collection is not None or feature is not None:
            raise VcfError("give either COLLECTION and FEATURE, or --numpy-dir, not both")
        source_dir = Path(numpy_dir).expanduser().resolve()
        if not source_dir.is_dir():
            raise CollectionError(f"numpy directory {numpy_dir} not found")
        target = Path(output).expanduser() if output else source_dir.parent / f"{source_dir.name}.h5"
        with _output_lock(target, overwrite):
            return _numpy_to_h5(source_dir, target, compression, overwrite, reporter)
    if collection is None or feature is None:
        raise VcfError("give COLLECTION and FEATURE, or --numpy-dir DIR")
    coll = resolve_collection(collection, rootpath)
    source = open_feature(coll, feature)
    target = Path(output).expanduser() if output else default_h5_path(coll, feature)
    if per_video is None:
        per_video = is_frame_level(source, feature)
    if per_video:
        for name in source.names:
            if split_frame_id(name) is None:
                raise VcfError(f"the per-video layout needs frame ids <video>_<number>; {name!r} is not one")
    layout = "per_video" if per_video else "matrix"
    stamp = json.dumps(
        {"feature": feature, "input": source.describe(), "layout": layout, "compression": compression}, sort_keys=True
    )
    overwrite = overwrite or _inputs_changed(target, stamp)  # made from other values of the feature: redo it
    with _output_lock(target, overwrite, stamp) as datasets:
        if datasets is not None:
            return H5Result(target, layout, datasets, source.nr_of_images, source.ndims, skipped=True)
        return _bigfile_to_h5(coll, source, feature, target, per_video, compression, overwrite, reporter, stamp)


def _inputs_changed(target: Path, stamp: str) -> bool:
    """True when ``target`` was written with the settings of ``stamp`` from another version of its input."""
    try:
        with h5py.File(target, "r") as h5:
            previous = json.loads(h5.attrs.get("source") or "null")
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(previous, dict) and inputs_changed(previous, json.loads(stamp))


def _made_from(target: Path, stamp: str | None) -> int | None:
    """The number of data datasets of ``target`` when it was written from ``stamp``, else None."""
    if stamp is None:
        return None
    try:
        with h5py.File(target, "r") as h5:
            if h5.attrs.get("source") != stamp:
                return None
            return 1 if h5.attrs.get("layout") == "matrix" else len(h5.keys())
    except (OSError, KeyError, ValueError):
        return None


@contextlib.contextmanager
def _output_lock(target: Path, overwrite: bool, stamp: str | None = None) -> Iterator[int | None]:
    """Holds the output's lock, after refusing an existing output without ``overwrite``.

    An existing output made from ``stamp`` is not refused: the dataset count is yielded instead of None
    (a rerun of a command that finished, e.g. killed just after its output appeared, has nothing to do).
    """

    def finished() -> int | None:
        if not target.exists() or overwrite:
            return None
        done = _made_from(target, stamp)
        if done is None:
            raise OutputExistsError(f"{target} exists; use --overwrite to replace it")
        return done

    # Checked before taking the lock (no directory created for a refused run) and again under it.
    done = finished()
    if done is not None:
        yield done
        return
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(target.parent / f".{target.name}.lock"):
        done = finished()
        if done is None:
            clean_stale_temps(target.parent)
        yield done


def _bigfile_to_h5(
    coll: Collection,
    source: BigFile,
    feature: str,
    target: Path,
    per_video: bool,
    compression: str | None,
    overwrite: bool,
    reporter: Reporter,
    stamp: str,
) -> H5Result:
    dim = source.ndims
    with RowReader(source) as matrix, _h5_output(target, overwrite) as h5:
        h5.attrs["source"] = stamp
        h5.attrs["feature"] = feature
        h5.attrs["collection"] = str(coll.root)
        h5.attrs["dims"] = dim
        h5.attrs["rows"] = source.nr_of_images
        h5.attrs["layout"] = "per_video" if per_video else "matrix"
        h5.attrs["source_manifest"] = json.dumps(source.manifest or {}, sort_keys=True)
        if per_video:
            groups = group_frames(source)
            reporter.total("videos", len(groups))
            for video, rows in groups.items():
                if "/" in video or video == ".":
                    raise VcfError(f"video id {video!r} cannot be an HDF5 dataset name")
                block = matrix.take(rows)
                # A video's frames are read whole, so chunks are only needed for compression.
                chunks = _chunks(block.shape, block.itemsize) if compression else None
                _require_space(h5, block.nbytes)
                dataset = h5.create_dataset(video, data=block, chunks=chunks, compression=compression)
                numbers = [split_frame_id(source.names[r])[1] for r in rows]  # type: ignore[index]
                dataset.attrs["frame_index"] = np.asarray(numbers, dtype=np.int64)
                reporter.advance("videos", 1, description=video)
            datasets = len(groups)
        else:
            _require_space(h5, sum(len(name) + 16 for name in source.names))
            h5.create_dataset("ids", data=np.asarray(source.names, dtype=object), dtype=h5py.string_dtype("utf-8"))
            features = _create(h5, "features", (source.nr_of_images, dim), np.float32, compression)
            reporter.total("rows", source.nr_of_images)
            step = chunk_rows(dim)
            for start in range(0, source.nr_of_images, step):
                stop = min(start + step, source.nr_of_images)
                _require_space(h5, (stop - start) * dim * 4)
                features[start:stop] = matrix.block(start, stop)
                reporter.advance("rows", stop - start)
            datasets = 1
    return H5Result(
        output=target,
        layout="per_video" if per_video else "matrix",
        datasets=datasets,
        rows=source.nr_of_images,
        dim=dim,
    )


def _load_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            # np.load would try unpickling it and blame pickled data.
            raise ValueError("not a .npy file (no NUMPY header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        # Memory-mapping fails on some valid files (e.g. empty arrays); a plain load tells which.
        return np.load(path, allow_pickle=False)


def _numpy_to_h5(
    source_dir: Path, target: Path, compression: str | None, overwrite: bool, reporter: Reporter
) -> H5Result:
    files = sorted(p for p in source_dir.iterdir() if p.is_file() and p.suffix.lower() == ".npy")
    if not files:
        raise VcfError(f"no .npy files in {source_dir}")
    failures: list[tuple[str, str]] = []
    converted = 0
    reporter.total("files", len(files))
    with _h5_output(target, overwrite) as h5:
        h5.attrs["source_dir"] = str(source_dir)
        h5.attrs["layout"] = "numpy"
        for path in files:
            name = path.name[: -len(path.suffix)]
            if name in h5:
                failures.append((path.name, f"dataset {name!r} was already written from another file"))
            else:
                try:
                    _copy_array(h5, name, _load_npy(path), compression)
                    converted += 1
                except (OSError, ValueError, EOFError, TypeError) as exc:
                    if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
                        raise  # the output's disk is full or failing: every other file would fail too
                    if name in h5:
                        del h5[name]
                    failures.append((path.name, " ".join(str(exc).split()) or type(exc).__name__))
            reporter.advance("files", 1, description=path.name)
        if converted == 0:
            name, reason = failures[0]
            raise VcfError(f"none of the {len(files)} .npy files in {source_dir} could be read ({name}: {reason})")
    failures_file = target.with_name(f"{target.stem}.failures.txt")
    write_failures(failures_file, failures)
    return H5Result(
        output=target,
        layout="numpy",
        datasets=converted,
        rows=converted,
        dim=None,
        failures=failures,
        failures_file=failures_file if failures else None,
    )


def _copy_array(h5: h5py.File, name: str, array: np.ndarray, compression: str | None) -> None:
    """Copies an array (possibly memory-mapped) into a new dataset, a block of rows at a time."""
    if array.ndim == 0 or array.size == 0:
        h5.create_dataset(name, data=np.asarray(array))
        return
    dataset = _create(h5, name, array.shape, array.dtype, compression)
    step = max(1, (64 << 20) // max(1, array.nbytes // array.shape[0]))
    for start in range(0, array.shape[0], step):
        block = array[start : start + step]
        _require_space(h5, block.nbytes)
        dataset[start : start + step] = block
