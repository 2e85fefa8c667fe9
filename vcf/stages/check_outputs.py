"""What ``check`` reports and how (problems, notes), and its checks of leftovers, shard parts and HDF5 files."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcf.errors import CollectionError, FeatureFileError, VcfError
from vcf.io import collection as layout
from vcf.io.atomic import TMP_MARK, lock_owner, pid_alive, recorded_pid
from vcf.io.bigfile import BigFile
from vcf.io.collection import WORK_PREFIX, Collection
from vcf.progress import Reporter
from vcf.run.store import count_parts
from vcf.stages.merge import MergeResult, has_parts, plan_feature, plan_frames, plan_shots

# Per kind of problem, this many items are named one by one; the rest are counted in one line.
DETAIL_LIMIT = 20
JPEG_START = b"\xff\xd8"
JPEG_END = b"\xff\xd9"


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        where: The file, directory or ``file:line`` concerned, relative to the collection when inside it.
        what: What is wrong, in one line.
    """

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class CheckResult:
    """What :func:`check` found.

    Attributes:
        collection: The collection directory.
        problems: Everything that is wrong; empty when all is well.
        notes: Facts worth knowing that are not errors (items listed in failures files, runs in progress,
            outputs made by other tools that cannot be fully verified).
        videos: Frame directories checked.
        frames: Frame files checked.
        features: Feature directories checked.
    """

    collection: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    videos: int = 0
    frames: int = 0
    features: int = 0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


class Findings:
    """Collects problems, naming the first few of each kind and counting the rest."""

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        self._counts: dict[str, int] = {}
        self._hidden: dict[str, tuple[str, int]] = {}
        self.rows_total = 0

    def add(self, where: str, what: str, kind: str | None = None) -> None:
        kind = kind or what
        count = self._counts.get(kind, 0) + 1
        self._counts[kind] = count
        if count <= DETAIL_LIMIT:
            self.result.problems.append(Problem(where, what))
        else:
            self._hidden[kind] = (where, count - DETAIL_LIMIT)

    def note(self, where: str, what: str) -> None:
        self.result.notes.append(Problem(where, what))

    def finish(self) -> None:
        for kind, (where, more) in self._hidden.items():
            self.result.problems.append(Problem(where, f"... and {more} more like: {kind}"))


def relative_name(coll: Collection, path: Path) -> str:
    try:
        return str(path.relative_to(coll.root))
    except ValueError:
        return str(path)


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return []


def videos_left(coll: Collection, stage: str, done: set[str]) -> list[str]:
    """Videos of VideoData a stage has neither done (``done``) nor listed in its failures file, in file order.

    Ids with whitespace are left out: they can never be indexed, and the stage lists them as failures under an
    escaped name.
    """
    failed = {line.split(" ", 1)[0] for line in read_lines(coll.failures_file(stage)) if line.strip()}
    return [
        video
        for video in map(layout.video_id_of, layout.list_video_files(coll))
        if video not in done and video not in failed and not layout.has_whitespace(video)
    ]


# Leftovers of killed runs ------------------------------------------------------------------------


def _scan_dirs(coll: Collection) -> Iterable[Path]:
    yield coll.root
    subdirs = (coll.image_dir, coll.feature_root, coll.root / "H5Data", coll.videoset_file.parent)
    for sub in (*subdirs, coll.imageset_file.parent):
        if sub.is_dir():
            yield sub


def check_leftovers(coll: Collection, findings: Findings) -> None:
    for directory in _scan_dirs(coll):
        try:
            entries = sorted(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            where = relative_name(coll, entry)
            if name.startswith(".") and TMP_MARK in name:
                pid = name.rsplit("-", 1)[-1]
                if pid.isdigit() and pid_alive(int(pid)):
                    findings.note(where, f"being written by running process {pid}")
                else:
                    findings.add(
                        where,
                        "temporary output left by a killed or failed run; the next run of its stage removes it",
                        kind="temporary output left by a killed or failed run",
                    )
            elif name.startswith(".") and name.endswith(".lock") and entry.is_file():
                owner = lock_owner(entry)
                recorded = recorded_pid(entry)
                if owner is not None:
                    findings.note(where, f"held by running process {owner}")
                elif recorded is not None:
                    findings.add(
                        where,
                        f"stale lock of process {recorded}, which died without releasing it; "
                        "the next run takes it over",
                        kind="stale lock",
                    )
            elif directory == coll.feature_root and name.startswith(WORK_PREFIX) and entry.is_dir():
                check_work_dir(coll, entry, findings)


def check_work_dir(coll: Collection, work: Path, findings: Findings) -> None:
    """An unfinished ``features`` run: reports how far it got."""
    locks = [p for p in coll.features_locks() if lock_owner(p) is not None]
    if locks:
        findings.note(relative_name(coll, work), "work directory of a features run in progress")
        return
    done = count_parts(work)
    of = ""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        settings = json.loads((work / "settings.json").read_text(encoding="utf-8"))
        of = f" of a run over {int(settings['settings']['input']['count'])} inputs"
    findings.add(
        relative_name(coll, work),
        f"unfinished features run ({done} part(s) saved{of}); run the same `vcf features` command to finish it",
        kind="unfinished features run",
    )


def check_shards(coll: Collection, feature: str | None, findings: Findings) -> None:
    """Parts of sharded runs not merged yet: what ``vcf merge`` would do with them, or why it cannot yet."""
    targets: list[tuple[str, Path, Callable[[], object]]] = []
    quiet = Reporter(None)
    if feature is None:
        targets.append(
            ("shots", coll.stage_shard_root("shots"), lambda: plan_shots(coll, MergeResult(coll.root), quiet))
        )
        targets.append(("frames", coll.frames_shard_root, lambda: plan_frames(coll, MergeResult(coll.root), quiet)))
    root = coll.feature_shard_root
    names = [feature] if feature is not None else sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    for name in names:
        targets.append((name, root / name, lambda n=name: plan_feature(coll, n, MergeResult(coll.root), quiet)))
    for what, part_root, prepare in targets:
        if not has_parts(part_root):
            continue
        where = relative_name(coll, part_root)
        try:
            prepare()
        except VcfError as exc:
            findings.add(where, f"shard parts not merged: {exc}", kind="unmerged shards")
            continue
        findings.add(
            where,
            f"every shard of {what} is complete but not merged; run `vcf merge {coll.root}"
            f"{'' if what in ('shots', 'frames') else ' ' + what}`",
            kind="unmerged shards",
        )


# HDF5 ----------------------------------------------------------------------------------------------


def check_h5(coll: Collection, findings: Findings) -> None:
    h5_dir = coll.root / "H5Data"
    files = sorted(p for p in h5_dir.glob("*.h5") if not p.name.startswith(".")) if h5_dir.is_dir() else []
    if not files:
        return
    import h5py

    for path in files:
        where = relative_name(coll, path)
        try:
            with h5py.File(path, "r") as h5:
                if h5.attrs.get("layout") == "matrix":
                    rows, dims = int(h5.attrs["rows"]), int(h5.attrs["dims"])
                    if h5["features"].shape != (rows, dims) or h5["ids"].shape != (rows,):
                        findings.add(where, f"datasets do not have the {rows} x {dims} shape its attributes record")
                stamp = h5.attrs.get("source")
        except (OSError, KeyError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            findings.add(where, f"cannot be read as HDF5 (truncated or damaged?): {reason}", kind="unreadable h5")
            continue
        with contextlib.suppress(ValueError, TypeError, KeyError):
            recorded = json.loads(stamp) if stamp else None
            if recorded is not None:
                check_input_unchanged(coll, str(recorded["feature"]), recorded["input"], where, findings)


# `vcf.check(...)` stays a call of the stage function once this module is imported.


def check_input_unchanged(
    coll: Collection, input_name: str, recorded: dict[str, Any], where: str, findings: Findings
) -> None:
    try:
        directory = coll.feature_dir(input_name)
    except CollectionError:
        return
    if not directory.is_dir():
        findings.add(where, f"its input feature {input_name!r} no longer exists", kind="input gone")
        return
    try:
        current = BigFile(directory).describe()
    except (FeatureFileError, OSError):
        return  # the input's own check reports it
    keys = ("shape", "ids_sha1", "manifest_sha1", "values_sha256")
    changed = [key for key in keys if key in recorded and recorded[key] != current[key]]
    if changed:
        findings.add(
            where,
            f"its input {input_name!r} changed since it was made ({', '.join(changed)}); rerun the command to "
            "recompute it",
            kind="stale derived feature",
        )
