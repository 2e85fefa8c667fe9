"""The resumable work store: each finished unit of work saved as a part renamed into place, failures included."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vcf.errors import VcfError
from vcf.io.atomic import atomic_write_bytes, fsync_dir, remove_path, writing
from vcf.io.bigfile import BigFileWriter

SETTINGS_NAME = "settings.json"
PART_SUFFIX = ".npz"
RECORD_KEY = "record"


class WorkStore:
    """The work directory of one run: finished parts saved as files, so a rerun continues after them.

    A part ``<name>.npz`` holds arrays (rows of each layer, their positions) and a JSON record (which
    items it holds, which failed and why); it appears, by rename, only once complete. The directory
    remembers the settings it was made with: opened with other settings, it starts empty.
    """

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        self.directory = directory
        settings_file = directory / SETTINGS_NAME
        text = json.dumps(settings, sort_keys=True, indent=1)
        if directory.is_dir() and (not settings_file.is_file() or settings_file.read_text() != text):
            remove_path(directory)  # made by another version or settings: not resumable
        directory.mkdir(parents=True, exist_ok=True)
        if not settings_file.is_file():
            atomic_write_bytes(settings_file, text.encode())
        self._loaded: dict[str, tuple[Any, dict[str, Any]]] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}{PART_SUFFIX}"

    def has(self, name: str) -> bool:
        """True when part ``name`` is committed."""
        return self.path(name).is_file()

    def commit(self, name: str, arrays: dict[str, np.ndarray], record: dict[str, Any]) -> None:
        """Saves one part under a temporary name, syncs it and renames it into place."""
        final = self.path(name)
        tmp = self.directory / f".{name}.tmp"
        payload = {**arrays, RECORD_KEY: np.asarray(json.dumps(record, sort_keys=True))}
        with writing(final):
            try:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, final)
            except BaseException:
                remove_path(tmp)  # a partial part only takes space a full disk needs
                raise
        fsync_dir(self.directory)

    def load(self, name: str) -> tuple[Any, dict[str, Any]]:
        """The arrays (loaded on access) and the record of a committed part."""
        if name not in self._loaded:
            data = np.load(self.path(name), allow_pickle=False)
            self._loaded[name] = (data, json.loads(str(data[RECORD_KEY])))
        return self._loaded[name]

    def records(self) -> Iterable[tuple[str, dict[str, Any]]]:
        for path in sorted(self.directory.glob(f"*{PART_SUFFIX}")):
            yield path.stem, self.load(path.stem)[1]

    def write_bigfile(
        self,
        rows: Iterable[tuple[Sequence[str], np.ndarray]],
        out_dir: Path,
        manifest: dict[str, Any],
        overwrite: bool,
        empty_message: str | None,
    ) -> int:
        """Streams ``(ids, rows)`` pieces into a BigFile; returns its width.

        With no row at all: raises VcfError(``empty_message``), or writes an empty BigFile (a shard's part
        none of whose items could be read; merge skips it) when ``empty_message`` is None.
        """
        writer: BigFileWriter | None = None
        try:
            for ids, values in rows:
                if writer is None:
                    writer = BigFileWriter(out_dir, values.shape[1], overwrite=overwrite, manifest=manifest)
                writer.append(list(ids), values)
            if writer is None:
                if empty_message is not None:
                    raise VcfError(empty_message)
                with BigFileWriter(out_dir, 1, overwrite=True, manifest=manifest):
                    pass  # nothing to take the width from; any width does
                return 0
            writer.close()
            return writer.dim
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    def remove(self) -> None:
        self._loaded.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def count_parts(directory: Path) -> int:
    """The parts committed in a work directory (for reports on unfinished runs)."""
    return sum(1 for _ in directory.glob(f"*{PART_SUFFIX}"))
