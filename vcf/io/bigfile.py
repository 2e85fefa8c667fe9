"""The BigFile feature format: feature.bin (float32 rows), id.txt and shape.txt in one directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import CollectionError, FeatureFileError, OutputExistsError
from vcf.io.atomic import (
    MANIFEST_NAME,
    fsync_dir,
    fsync_file,
    manifest_text,
    publish,
    read_manifest,
    remove_path,
    temp_sibling,
    writing,
)
from vcf.io.collection import Collection, has_whitespace

BIN_NAME = "feature.bin"
ID_NAME = "id.txt"
SHAPE_NAME = "shape.txt"

# feature.bin is little-endian float32 (what the original tools wrote on x86), whatever this machine is.
DTYPE = np.dtype("<f4")
ITEMSIZE = DTYPE.itemsize

# Rows per chunk are chosen so that one chunk holds about this many bytes.
CHUNK_BYTES = 64 << 20


def chunk_rows(dim: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """How many rows of ``dim`` float32 values fit in ``chunk_bytes`` (at least one)."""
    return max(1, chunk_bytes // max(1, dim * ITEMSIZE))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES // 8):
            digest.update(block)
    return digest.hexdigest()


# Manifest fields naming what an output was computed from; every other field is a setting. An output whose
# settings match but whose inputs changed is stale: it is recomputed without --overwrite.
INPUT_FIELDS = ("input", "inputs")
# Fields that follow from a run's result rather than from what was asked.
RESULT_FIELDS = ("failures", "shape", "format", "vcf_version", "versions")


def inputs_changed(previous: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
    """True when ``previous`` has the settings of ``manifest`` but was computed from other inputs."""
    if previous is None:
        return False
    skip = INPUT_FIELDS + RESULT_FIELDS
    same_settings = all(previous.get(k) == v for k, v in manifest.items() if k not in skip)
    return same_settings and any(previous.get(k) != manifest[k] for k in INPUT_FIELDS if k in manifest)


def _read_ids(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Older tools wrote ids as raw bytes; latin-1 maps every byte to one character.
        text = data.decode("latin-1")
    return text.split()


class BigFile:
    """Reader of one BigFile directory, checked for consistency when opened.

    The classic API of the original ``bigfile.py`` (``names``, ``name2index``, ``ndims``,
    ``nr_of_images``, ``binary_file``, ``shape()``, ``read()``, ``read_one()``, ``readall()``) is kept,
    plus numpy access through a read-only memory map (``matrix()``, ``read_array()``, ``iter_chunks()``).

    Attributes:
        datadir: The BigFile directory.
        names: The ids, in row order.
        name2index: Row number of each id.
        nr_of_images: Number of rows N.
        ndims: Number of values per row D.
        binary_file: Path of ``feature.bin``.
    """

    def __init__(self, datadir: str | os.PathLike[str], bin_file: str = BIN_NAME) -> None:
        """Opens and checks a BigFile directory.

        Args:
            datadir: The directory holding ``feature.bin``, ``id.txt`` and ``shape.txt``.
            bin_file: Name of the binary file inside ``datadir``.

        Raises:
            FeatureFileError: A file is missing, or shape.txt, id.txt and feature.bin disagree.
        """
        self.datadir = Path(datadir)
        self.binary_file = str(self.datadir / bin_file)
        shape_path = self.datadir / SHAPE_NAME
        id_path = self.datadir / ID_NAME
        for path in (shape_path, id_path, Path(self.binary_file)):
            if not path.is_file():
                raise FeatureFileError(f"{self.datadir} is not a BigFile directory: {path.name} is missing")
        fields = shape_path.read_text(encoding="ascii", errors="replace").split()
        try:
            n, d = (int(x) for x in fields)
        except ValueError:
            raise FeatureFileError(f"{shape_path}: expected 'N D', got {' '.join(fields)[:60]!r}") from None
        if n < 0 or d < 1:
            raise FeatureFileError(f"{shape_path}: invalid shape {n} x {d}")
        self.nr_of_images = n
        self.ndims = d
        self.names = _read_ids(id_path)
        if len(self.names) != n:
            raise FeatureFileError(f"{self.datadir}: shape.txt says {n} rows but id.txt has {len(self.names)} ids")
        self.name2index = {name: i for i, name in enumerate(self.names)}
        if len(self.name2index) != n:
            seen: set[str] = set()
            for name in self.names:
                if name in seen:
                    raise FeatureFileError(f"{self.datadir}: id.txt lists {name!r} more than once")
                seen.add(name)
        size = os.path.getsize(self.binary_file)
        expected = n * d * ITEMSIZE
        if size != expected:
            raise FeatureFileError(
                f"{self.datadir}: {bin_file} has {size} bytes but shape {n} x {d} needs {expected}"
                f" ({'truncated' if size < expected else 'too long'})"
            )
        self._matrix: np.ndarray | None = None

    # Classic API ---------------------------------------------------------------------------------
    def shape(self) -> list[int]:
        """``[N, D]``."""
        return [self.nr_of_images, self.ndims]

    def read(
        self, requested: Iterable[str] | Iterable[int], isname: bool = True
    ) -> tuple[list[str], list[list[float]]]:
        """Reads some rows, as the original reader did.

        Duplicates are read once and unknown names are dropped; the result is in file order, not
        in request order.

        Args:
            requested: Ids, or row numbers when ``isname`` is false.
            isname: Whether ``requested`` holds ids (true) or row numbers.

        Returns:
            ``(names, vectors)``: the ids found, in file order, and their rows as lists of floats.

        Raises:
            IndexError: A row number is out of range.
        """
        wanted = set(requested)
        if isname:
            rows = sorted(self.name2index[x] for x in wanted if x in self.name2index)  # type: ignore[index]
        else:
            rows = sorted(int(x) for x in wanted)
            if rows and (rows[0] < 0 or rows[-1] >= self.nr_of_images):
                raise IndexError(f"row numbers must be in [0, {self.nr_of_images}), got {rows[0]}..{rows[-1]}")
        if not rows:
            return [], []
        block = self.matrix()[np.asarray(rows, dtype=np.int64)]
        return [self.names[i] for i in rows], block.astype(np.float32).tolist()

    def read_one(self, name: str) -> list[float]:
        """The row of one id as a list of floats.

        Raises:
            KeyError: The id is not in this BigFile.
        """
        return self.matrix()[self.name2index[name]].astype(np.float32).tolist()

    def readall(self, isname: bool = True) -> tuple[list[str], list[list[float]]]:
        """Every row, in file order, as ``(names, vectors)``."""
        return list(self.names), self.matrix().astype(np.float32).tolist()

    # numpy API ----------------------------------------------------------------------------------
    def matrix(self) -> np.ndarray:
        """All rows as a read-only (N, D) float32 array mapped from feature.bin (not loaded)."""
        if self._matrix is None:
            if self.nr_of_images == 0:
                self._matrix = np.zeros((0, self.ndims), dtype=DTYPE)
            else:
                self._matrix = np.memmap(self.binary_file, dtype=DTYPE, mode="r", shape=(self.nr_of_images, self.ndims))
        return self._matrix

    def indices(self, ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``ids``, in the given order.

        Raises:
            KeyError: An id is not in this BigFile.
        """
        try:
            return np.fromiter((self.name2index[x] for x in ids), dtype=np.int64)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]!r} is not in {self.datadir}") from None

    def read_array(self, ids: Iterable[str]) -> np.ndarray:
        """The rows of ``ids`` in the given order, as a new (len(ids), D) float32 array.

        Raises:
            KeyError: An id is not in this BigFile.
        """
        return np.asarray(self.matrix()[self.indices(ids)], dtype=np.float32)

    def iter_chunks(self, rows: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yields ``(ids, array)`` for consecutive blocks of rows, in file order.

        Args:
            rows: Rows per block; by default about 64 MiB worth.
        """
        step = rows or chunk_rows(self.ndims)
        matrix = self.matrix()
        for start in range(0, self.nr_of_images, step):
            stop = min(start + step, self.nr_of_images)
            yield self.names[start:stop], np.array(matrix[start:stop], dtype=np.float32)

    @property
    def manifest(self) -> dict[str, Any] | None:
        """The directory's manifest.json, or None (e.g. made by the original tools)."""
        return read_manifest(self.datadir)

    def ids_digest(self) -> str:
        """SHA-1 of the ids in order; tells whether two versions of a feature hold the same rows."""
        digest = hashlib.sha1()
        for name in self.names:
            digest.update(name.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a manifest records about this BigFile as an input.

        Shape, size, a digest of the ids, a digest of its own manifest.json (None when it has none)
        and a digest of the values: an output made from an input whose values changed since, even under
        the same name and settings, is no longer up to date.
        """
        manifest_path = self.datadir / MANIFEST_NAME
        manifest_sha1 = hashlib.sha1(manifest_path.read_bytes()).hexdigest() if manifest_path.is_file() else None
        return {
            "shape": self.shape(),
            "bytes": self.nr_of_images * self.ndims * ITEMSIZE,
            "ids_sha1": self.ids_digest(),
            "manifest_sha1": manifest_sha1,
            "values_sha256": file_sha256(self.datadir / BIN_NAME),
        }

    def __len__(self) -> int:
        return self.nr_of_images

    def __contains__(self, name: object) -> bool:
        return name in self.name2index

    def __repr__(self) -> str:
        return f"BigFile({str(self.datadir)!r}, {self.nr_of_images}x{self.ndims})"


def open_feature(collection: Collection, feature: str) -> BigFile:
    """Opens ``FeatureData/<feature>`` of a collection.

    Raises:
        CollectionError: The feature directory does not exist (the message lists those that do).
        FeatureFileError: The directory is not a consistent BigFile.
    """
    directory = collection.feature_dir(feature)
    if not directory.is_dir():
        present = collection.list_features()
        hint = f"; present: {', '.join(present[:10])}" if present else ""
        raise CollectionError(f"feature {feature!r} not found: no directory {directory}{hint}")
    return BigFile(directory)


def reusable_output(out_dir: Path, manifest: dict[str, Any], *, overwrite: bool) -> BigFile | None:
    """The existing BigFile at ``out_dir`` when its manifest has every field of ``manifest``, else None.

    Stages call this before computing: a match means the output is up to date and can be kept. None
    (compute it) also when ``overwrite`` is asked, and when only the inputs changed (see :func:`inputs_changed`).

    Raises:
        OutputExistsError: ``out_dir`` exists, was made with other settings, and ``overwrite`` is false.
    """
    if overwrite or not out_dir.exists():
        return None
    previous = read_manifest(out_dir)
    if inputs_changed(previous, manifest):
        return None
    if previous is not None and all(previous.get(k) == v for k, v in manifest.items()):
        try:
            return BigFile(out_dir)
        except FeatureFileError as exc:
            # Damaged since it was written: say so rather than blame the settings.
            reason = str(exc).replace(f"{out_dir}: ", "")
            raise OutputExistsError(f"{out_dir} is damaged ({reason}); use --overwrite to recompute it") from None
    raise OutputExistsError(f"{out_dir} exists but was made with other settings; use --overwrite to replace it")


class BigFileWriter:
    """Streams rows into a new BigFile directory that appears under its final name only when complete.

    Rows go to a temporary sibling directory; :meth:`close` writes id.txt, shape.txt and
    manifest.json, fsyncs everything and renames the directory into place. As a context manager it
    closes on success and removes the temporary directory on an exception.
    """

    def __init__(
        self,
        final_dir: str | os.PathLike[str],
        dim: int,
        *,
        overwrite: bool = False,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        """Starts a new BigFile.

        Args:
            final_dir: Where the finished BigFile directory goes.
            dim: Values per row.
            overwrite: Replace an existing ``final_dir`` when closing (one made with the same settings from
                other inputs is replaced in any case).
            manifest: What the output was computed from; written to manifest.json with its shape.

        Raises:
            OutputExistsError: ``final_dir`` exists and ``overwrite`` is false.
        """
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.final_dir = Path(final_dir)
        self.dim = int(dim)
        self.overwrite = overwrite
        self.manifest = dict(manifest or {})
        if self.final_dir.exists() and not overwrite and inputs_changed(read_manifest(self.final_dir), self.manifest):
            self.overwrite = overwrite = True  # a stale output is replaced by its recomputation
        if self.final_dir.exists() and not overwrite:
            raise OutputExistsError(f"{self.final_dir} exists; use --overwrite to replace it")
        self.tmp_dir = temp_sibling(self.final_dir)
        self.ids: list[str] = []
        self._seen: set[str] = set()
        self._closed = False
        remove_path(self.tmp_dir)
        with writing(self.tmp_dir):
            self.tmp_dir.mkdir(parents=True)
            self._bin = open(self.tmp_dir / BIN_NAME, "wb")  # noqa: SIM115  (closed by close/abort)

    @property
    def rows(self) -> int:
        """Rows appended so far."""
        return len(self.ids)

    def append(self, ids: Sequence[str], array: Any) -> None:
        """Appends rows.

        Args:
            ids: One id per row; no whitespace, not seen before in this file.
            array: (len(ids), dim) values, cast to float32 (a 1-D row is accepted for a single id).

        Raises:
            FeatureFileError: An id is empty, contains whitespace or repeats an earlier id.
            ValueError: The array's shape does not match.
        """
        if self._closed:
            raise ValueError("append to a closed BigFileWriter")
        ids = list(ids)
        values = np.asarray(array, dtype=DTYPE)
        if values.ndim == 1 and len(ids) == 1:
            values = values.reshape(1, -1)
        if values.shape != (len(ids), self.dim):
            raise ValueError(f"expected an array of shape ({len(ids)}, {self.dim}), got {values.shape}")
        for name in ids:
            if not isinstance(name, str) or has_whitespace(name):
                raise FeatureFileError(f"invalid id {name!r} for {self.final_dir}: ids must be non-empty, no spaces")
            if name in self._seen:
                raise FeatureFileError(f"duplicate id {name!r} written to {self.final_dir}")
            self._seen.add(name)
        with writing(self.final_dir):
            self._bin.write(np.ascontiguousarray(values).data)
        self.ids.extend(ids)

    def close(self) -> Path:
        """Finishes the files and renames the directory to its final name.

        Returns:
            The final directory.

        Raises:
            OutputExistsError: The final directory appeared meanwhile and ``overwrite`` is false.
        """
        if self._closed:
            return self.final_dir
        try:
            with writing(self.final_dir):
                self._bin.flush()
                os.fsync(self._bin.fileno())
                self._bin.close()
                shape = [len(self.ids), self.dim]
                files = {
                    ID_NAME: " ".join(self.ids),
                    SHAPE_NAME: "%d %d" % (shape[0], shape[1]),  # noqa: UP031  (the original's exact format)
                    MANIFEST_NAME: manifest_text({"format": "bigfile", "shape": shape, **self.manifest}),
                }
                for name, text in files.items():
                    path = self.tmp_dir / name
                    path.write_bytes(text.encode("utf-8"))
                    fsync_file(path)
                fsync_dir(self.tmp_dir)
                publish(self.tmp_dir, self.final_dir, overwrite=self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.final_dir

    def abort(self) -> None:
        """Drops everything written; the final directory is left as it was."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._bin.close()
        remove_path(self.tmp_dir)

    def __enter__(self) -> BigFileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_bigfile(
    final_dir: str | os.PathLike[str],
    ids: Sequence[str],
    array: Any,
    *,
    overwrite: bool = False,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """Writes a whole BigFile at once (see :class:`BigFileWriter`).

    Args:
        final_dir: The BigFile directory to create.
        ids: One id per row.
        array: (len(ids), D) values, stored as float32.
        overwrite: Replace an existing directory.
        manifest: What the output was computed from.

    Returns:
        The final directory.
    """
    values = np.asarray(array, dtype=DTYPE)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {values.shape}")
    with BigFileWriter(final_dir, values.shape[1], overwrite=overwrite, manifest=manifest) as writer:
        writer.append(ids, values)
    return writer.final_dir
