"""The collection layout: every path and index file of a collection is named here and nowhere else."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vcf.errors import CollectionError, IndexFormatError
from vcf.io.atomic import atomic_write_text

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".webm", ".gif", ".mkv", ".mov", ".mpg", ".m4v", ".flv"})
DEFAULT_ROOTPATH = "~/VisualSearch"
ROOTPATH_ENV = "VCF_ROOTPATH"
# Written inside each frame directory, last, before the directory is renamed into place: its presence
# under the final name means the directory is complete. Old tools that list ``*.jpg`` ignore it.
FRAME_META = ".vcf-frames.json"
FRAMES_LOCK = ".vcf-frames.lock"
SHARD_DIR = ".vcf-shards"
WORK_PREFIX = ".vcf-work-"
FEATURES_LOCK_PREFIX = ".vcf-features-"
PART_RECORD = "part.json"
SHOTS_LOCK = ".vcf-shots.lock"


def default_rootpath() -> Path:
    """The rootpath used when none is given: ``$VCF_ROOTPATH`` or ``~/VisualSearch``."""
    return Path(os.environ.get(ROOTPATH_ENV) or DEFAULT_ROOTPATH).expanduser()


@dataclass(frozen=True)
class Collection:
    """A collection directory and the names of everything inside it.

    Attributes:
        root: The collection directory (absolute).
    """

    root: Path

    @property
    def name(self) -> str:
        """The collection name: the directory's base name."""
        return self.root.name

    # Videos and frames -------------------------------------------------------------------------
    @property
    def video_dir(self) -> Path:
        return self.root / "VideoData"

    @property
    def image_dir(self) -> Path:
        return self.root / "ImageData"

    def frame_dir(self, video_id: str) -> Path:
        """Directory holding the sampled frames of one video."""
        return self.image_dir / video_id

    @staticmethod
    def frame_id(video_id: str, index: int) -> str:
        """Frame id of decoded frame ``index`` of a video: ``<vid>_<n>``."""
        return f"{video_id}_{index}"

    def frame_path(self, video_id: str, index: int) -> Path:
        return self.frame_dir(video_id) / f"{self.frame_id(video_id, index)}.jpg"

    # Shots ---------------------------------------------------------------------------------------
    @property
    def shots_file(self) -> Path:
        """``id.shots.txt``: ``<shot_id> <vid> <first frame> <last frame>`` a line."""
        return self.root / "id.shots.txt"

    @property
    def shot_data_dir(self) -> Path:
        """``ShotData/``: one TRECVID master shot reference file per video, and the manifest."""
        return self.root / "ShotData"

    def msb_file(self, video_id: str, directory: Path | None = None) -> Path:
        """The ``<vid>.msb`` shot file of a video, in ``ShotData/`` or in ``directory``."""
        return (directory if directory is not None else self.shot_data_dir) / f"{video_id}.msb"

    # Index files ---------------------------------------------------------------------------------
    @property
    def imagepath_file(self) -> Path:
        return self.root / "id.imagepath.txt"

    @property
    def videopath_file(self) -> Path:
        return self.root / "id.videopath.txt"

    @property
    def videometa_file(self) -> Path:
        return self.root / "id.videometa.txt"

    @property
    def videoset_file(self) -> Path:
        return self.root / "VideoSets" / f"{self.name}.txt"

    @property
    def imageset_file(self) -> Path:
        return self.root / "ImageSets" / f"{self.name}.txt"

    def failures_file(self, stage: str) -> Path:
        """Where a stage lists the items it could not process: ``<stage>.failures.txt``."""
        return self.root / f"{stage}.failures.txt"

    def list_failures_files(self) -> list[Path]:
        """Every ``*.failures.txt`` of the collection (sorted)."""
        return sorted(self.root.glob("*.failures.txt"))

    @property
    def report_dir(self) -> Path:
        """Where ``vcf report`` writes its pages by default."""
        return self.root / "Report"

    # Features ------------------------------------------------------------------------------------
    @property
    def feature_root(self) -> Path:
        return self.root / "FeatureData"

    def feature_dir(self, feature_name: str) -> Path:
        """BigFile directory of a feature, e.g. ``FeatureData/resnet50,avgpool``."""
        if not feature_name or "/" in feature_name or feature_name in {".", ".."}:
            raise CollectionError(f"invalid feature name {feature_name!r}")
        return self.feature_root / feature_name

    def list_features(self) -> list[str]:
        """Names of the feature directories present (sorted)."""
        if not self.feature_root.is_dir():
            return []
        return sorted(p.name for p in self.feature_root.iterdir() if p.is_dir() and not p.name.startswith("."))

    # Locks, unfinished work and shard parts ------------------------------------------------------
    @property
    def index_root(self) -> Path:
        """Where nearest-neighbour indexes of features live: ``IndexData/``."""
        return self.root / "IndexData"

    def index_dir(self, feature_name: str) -> Path:
        """The index directory of a feature, ``IndexData/<feature>``."""
        return self.index_root / self.feature_dir(feature_name).name

    @property
    def shard_root(self) -> Path:
        """Where ``--shard K/N`` runs keep their parts until ``vcf merge``."""
        return self.root / SHARD_DIR

    @property
    def frames_lock(self) -> Path:
        return self.root / FRAMES_LOCK

    def stage_shard_root(self, stage: str) -> Path:
        """Where the shards of a stage whose units are videos write their parts: ``.vcf-shards/<stage>/``."""
        return self.shard_root / stage

    def stage_part_dir(self, stage: str, shard: str) -> Path:
        """The part of shard ``shard`` (``<K>-of-<N>``) of such a stage: ``.vcf-shards/<stage>/<K>-of-<N>/``."""
        return self.stage_shard_root(stage) / shard

    def stage_shard_lock(self, stage: str, shard: str) -> Path:
        return self.stage_shard_root(stage) / f".{shard}.lock"

    @property
    def frames_shard_root(self) -> Path:
        return self.stage_shard_root("frames")

    def frames_part_dir(self, shard: str) -> Path:
        return self.stage_part_dir("frames", shard)

    def frames_shard_lock(self, shard: str) -> Path:
        return self.stage_shard_lock("frames", shard)

    @property
    def shots_lock(self) -> Path:
        return self.root / SHOTS_LOCK

    @property
    def feature_shard_root(self) -> Path:
        """Where ``vcf features --shard`` keeps its parts and work: ``FeatureData/.vcf-shards/``."""
        return self.feature_root / SHARD_DIR

    def feature_part_dir(self, feature: str, shard: str) -> Path:
        """The part BigFile of one feature written by one shard: ``FeatureData/.vcf-shards/<feature>/<K>-of-<N>/``."""
        self.feature_dir(feature)  # validates the name
        return self.feature_shard_root / feature / shard

    def features_lock(self, key: str, shard: str | None = None) -> Path:
        """The lock of a features run: one per output set, and one per shard so that shards run at once."""
        if shard is None:
            return self.feature_root / f"{FEATURES_LOCK_PREFIX}{key}.lock"
        return self.feature_shard_root / f"{FEATURES_LOCK_PREFIX}{key}-{shard}.lock"

    def features_locks(self, shard: str | None = None) -> list[Path]:
        """The features locks present (of shard runs when ``shard`` is given: ``*`` for any)."""
        if shard is None:
            return list(self.feature_root.glob(f"{FEATURES_LOCK_PREFIX}*.lock"))
        return list(self.feature_shard_root.glob(f"{FEATURES_LOCK_PREFIX}*-{shard}.lock"))

    def work_dir(self, key: str, shard: str | None = None) -> Path:
        """The resumable work of a features run: ``FeatureData/.vcf-work-<key>/`` (a shard's under its root)."""
        if shard is None:
            return self.feature_root / f"{WORK_PREFIX}{key}"
        return self.feature_shard_root / f".work-{key}-{shard}"

    def shard_failures_file(self, shard: str) -> Path:
        """Where a features shard lists its failures: ``FeatureData/.vcf-shards/features.<K>-of-<N>.failures.txt``."""
        return self.feature_shard_root / f"features.{shard}.failures.txt"


def csv_failures_path(csv: str | os.PathLike[str], shard: str | None = None) -> Path:
    """Where a CSV run lists its failures: ``<csv stem>.failures.txt`` next to the CSV.

    Shard K of N uses ``<csv stem>.<K>-of-<N>.failures.txt``, so that shards never write the same file.
    """
    path = Path(csv).expanduser()
    if shard is not None:
        return path.with_name(f"{path.stem}.{shard}.failures.txt")
    return path.with_name(f"{path.stem}.failures.txt")


def resolve_collection(
    collection: str | os.PathLike[str], rootpath: str | os.PathLike[str] | None = None
) -> Collection:
    """Finds a collection: a directory path, or else a name under the rootpath.

    Args:
        collection: A directory path, or a collection name looked up under ``rootpath``.
        rootpath: Where named collections live; defaults to ``$VCF_ROOTPATH`` or ``~/VisualSearch``.

    Returns:
        The collection.

    Raises:
        CollectionError: Neither the path nor ``rootpath/collection`` is a directory.
    """
    direct = Path(collection).expanduser()
    if direct.is_dir():
        return Collection(direct.resolve())
    if direct.is_absolute() or len(direct.parts) > 1:
        raise CollectionError(f"collection directory {direct} not found")
    root = Path(rootpath).expanduser() if rootpath is not None else default_rootpath()
    named = root / str(collection)
    if named.is_dir():
        return Collection(named.resolve())
    raise CollectionError(f"collection {str(collection)!r} not found: no directory {direct} nor {named}")


def video_id_of(path: Path) -> str:
    """Video id of a video file: its name without the extension."""
    return path.stem


def list_video_files(collection: Collection) -> list[Path]:
    """Every video file under ``VideoData/`` (recursively), sorted by path.

    Raises:
        CollectionError: ``VideoData/`` does not exist.
    """
    if not collection.video_dir.is_dir():
        raise CollectionError(f"no VideoData directory in {collection.root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(collection.video_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if not filename.startswith(".") and os.path.splitext(filename)[1].lower() in VIDEO_EXTENSIONS:
                found.append(Path(dirpath) / filename)
    return sorted(found)


def has_whitespace(text: str) -> bool:
    """True when ``text`` cannot be one token of a space-separated index file."""
    return any(ch.isspace() for ch in text) or text == ""


# Index files -------------------------------------------------------------------------------------


def parse_id_value_lines(path: Path, lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Splits ``<id> <value>`` lines on the first space; blank lines are skipped.

    Raises:
        IndexFormatError: A line has no value; the message names the file and line number.
    """
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split(" ", 1)
        if len(parts) != 2 or not parts[0] or not parts[1].strip():
            raise IndexFormatError(f"{path}:{number}: expected '<id> <path>', got {line[:80]!r}")
        yield parts[0], parts[1]


def read_imagepath(collection: Collection, path: Path | None = None) -> list[tuple[str, Path]]:
    """Reads ``id.imagepath.txt``: ``(frame_id, image_path)`` pairs in file order.

    Absolute and collection-relative paths are both accepted; paths may contain spaces. A relative
    path that does not exist under the collection is tried against the collection's parent too,
    since the original tools wrote paths relative to the rootpath.

    Raises:
        CollectionError: The file does not exist.
        IndexFormatError: A malformed line (named by its number) or a duplicate id.
    """
    path = path or collection.imagepath_file
    if not path.is_file():
        raise CollectionError(f"{path} not found: run `vcf frames {collection.root}` first")
    with open(path, encoding="utf-8") as handle:
        pairs = list(parse_id_value_lines(path, handle))
    seen: dict[str, int] = {}
    result = []
    for number, (frame_id, image) in enumerate(pairs, start=1):
        if frame_id in seen:
            raise IndexFormatError(f"{path}: duplicate id {frame_id!r}")
        seen[frame_id] = number
        result.append((frame_id, resolve_index_path(collection, image)))
    return result


def resolve_index_path(collection: Collection, value: str) -> Path:
    """Turns a path written in an index file into a usable path."""
    candidate = Path(value)
    if candidate.is_absolute():
        return candidate
    inside = collection.root / candidate
    if inside.exists():
        return inside
    # The original tools wrote `<rootpath>/<collection>/ImageData/...` relative to the cwd.
    parts = candidate.parts
    if collection.name in parts:
        tail = Path(*parts[parts.index(collection.name) + 1 :])
        if (collection.root / tail).exists():
            return collection.root / tail
    return inside


def files_digest(collection: Collection, paths: Iterable[Path]) -> str:
    """SHA-256 over the path, size and modification time of each file, in order (-1 for a missing file).

    Tells whether the files an output was computed from changed since, without reading them: rewriting a
    file (e.g. ``vcf frames --overwrite``) changes its modification time. Paths inside the collection
    count relative to it, so that a collection mounted elsewhere (another node) gives the same digest.
    """
    digest = hashlib.sha256()
    for path in paths:
        name = path.relative_to(collection.root) if path.is_relative_to(collection.root) else path
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # a missing or unreadable file fails when read; the run goes on
            size = mtime = -1
        digest.update(f"{name}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def format_index_path(collection: Collection, path: Path, relative: bool) -> str:
    """The text written for ``path`` in an index file: absolute, or relative to the collection."""
    return str(path.relative_to(collection.root)) if relative else str(path)


def write_id_value_file(path: Path, pairs: Iterable[tuple[str, str]]) -> None:
    """Atomically writes ``<id> <value>`` lines, each ending in a newline."""
    atomic_write_text(path, "".join(f"{key} {value}\n" for key, value in pairs))


def read_id_list(path: Path) -> list[str]:
    """Reads a list of ids, one a line (``VideoSets/*.txt``); blank lines are skipped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def write_id_list(path: Path, ids: Iterable[str]) -> None:
    """Atomically writes one id a line."""
    atomic_write_text(path, "".join(f"{i}\n" for i in ids))


def write_imageset(collection: Collection, frame_ids: Iterable[str]) -> None:
    """Writes ``ImageSets/<collection>.txt`` as the original tools did: the frame ids sorted as strings."""
    write_id_list(collection.imageset_file, sorted(frame_ids))


def write_failures(path: Path, failures: Iterable[tuple[str, str]]) -> Path | None:
    """Writes ``<item> <reason>`` lines to a failures file, or removes it when there are none; returns it or None."""
    failures = list(failures)
    if failures:
        atomic_write_text(path, "".join(f"{item} {' '.join(reason.split())}\n" for item, reason in failures))
        return path
    if path.exists():
        path.unlink()
    return None


def videos_digest(coll: Collection, videos: dict[str, Path]) -> str:
    """Identifies the videos read: ids, paths, sizes and modification times."""
    digest = hashlib.sha256()
    for video, path in videos.items():
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # e.g. a broken link: the video fails when decoded, the run goes on
            size = mtime = -1
        digest.update(f"{video}\t{path.relative_to(coll.root)}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()
