"""Importing ``id.feature.txt`` (one ``<id> <v1> ... <vD>`` line per row) into a BigFile."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import CollectionError, FeatureFileError, OutputExistsError
from vcf.io.bigfile import BigFileWriter
from vcf.progress import ProgressCallback, Reporter


@dataclass(frozen=True)
class TxtImportResult:
    """What :func:`txt_to_bigfile` did.

    Attributes:
        output: The BigFile directory written.
        lines: Non-blank lines parsed.
        rows: Rows written (unique ids without NaN).
        duplicates: Lines skipped because their id appeared earlier (the first one wins).
        failed: Ids dropped because their vector contains NaN.
        dim: Values per row.
    """

    output: Path
    lines: int
    rows: int
    duplicates: int
    failed: int
    dim: int


def txt_to_bigfile(
    text_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    final_dir: str | os.PathLike[str],
    *,
    dim: int = 0,
    overwrite: bool = False,
    manifest: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> TxtImportResult:
    """Converts the text form ``<id> v1 ... vD`` (``id.feature.txt``) to a BigFile, like the original txt2bin.

    The first line of an id wins and later ones are skipped; an id whose first vector contains a NaN
    is dropped. Several text files (parts of one feature) can be given and are read in order.

    Args:
        text_file: One text file or a list of them.
        final_dir: The BigFile directory to create.
        dim: Expected values per row; 0 takes it from the first line.
        overwrite: Replace an existing directory.
        manifest: Extra manifest fields; the source file names are recorded in any case.
        progress: Receives ``lines`` events.

    Returns:
        Counts of what was read and written.

    Raises:
        FeatureFileError: A line has a different number of values or a value that is not a number,
            or no line holds a vector.
        CollectionError: A text file does not exist.
    """
    single = isinstance(text_file, (str, os.PathLike))
    sources = [Path(text_file)] if single else [Path(p) for p in text_file]  # type: ignore[union-attr]
    for source in sources:
        if not source.is_file():
            raise CollectionError(f"{source} not found")
    if Path(final_dir).exists() and not overwrite:
        raise OutputExistsError(f"{final_dir} exists; use --overwrite to replace it")
    reporter = Reporter(progress)
    seen: set[str] = set()
    lines = duplicates = failed = 0
    writer: BigFileWriter | None = None
    batch_ids: list[str] = []
    batch_rows: list[np.ndarray] = []
    info = {"source": [str(s) for s in sources], "stage": "txt2bin", **(manifest or {})}
    try:
        for source in sources:
            with open(source, encoding="utf-8", errors="surrogateescape") as handle:
                for number, line in enumerate(handle, start=1):
                    parts = line.split()
                    if not parts:
                        continue
                    lines += 1
                    name, values = parts[0], parts[1:]
                    if dim == 0:
                        dim = len(values)
                        if dim == 0:
                            raise FeatureFileError(f"{source}:{number}: id {name!r} has no values")
                    if len(values) != dim:
                        raise FeatureFileError(f"{source}:{number}: {len(values)} values, expected {dim}")
                    if name in seen:
                        duplicates += 1
                        continue
                    seen.add(name)
                    try:
                        vector = np.array([float(v) for v in values], dtype=np.float64)
                    except ValueError:
                        raise FeatureFileError(f"{source}:{number}: a value of {name!r} is not a number") from None
                    if np.isnan(vector).any():
                        failed += 1
                        continue
                    if writer is None:
                        writer = BigFileWriter(final_dir, dim, overwrite=overwrite, manifest=info)
                    batch_ids.append(name)
                    batch_rows.append(vector.astype(np.float32))
                    if len(batch_ids) >= 1024:
                        writer.append(batch_ids, np.stack(batch_rows))
                        reporter.advance("lines", len(batch_ids))
                        batch_ids, batch_rows = [], []
        if writer is None:
            raise FeatureFileError(f"no usable vector in {', '.join(map(str, sources))}")
        if batch_ids:
            writer.append(batch_ids, np.stack(batch_rows))
            reporter.advance("lines", len(batch_ids))
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return TxtImportResult(
        output=writer.final_dir, lines=lines, rows=writer.rows, duplicates=duplicates, failed=failed, dim=dim
    )
