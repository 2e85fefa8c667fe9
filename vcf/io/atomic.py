"""Crash-safe output: temporary names then rename, fsync, output locks, manifests."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vcf.errors import LockedError, OutputExistsError, VcfError

TMP_MARK = ".vcf-tmp"
MANIFEST_NAME = "manifest.json"


def temp_sibling(path: Path, tag: str = "") -> Path:
    """A hidden temporary name next to ``path`` that the final name can be renamed from."""
    return path.with_name(f".{path.name}{TMP_MARK}{tag}-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Makes a rename inside ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    """Flushes a written file to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL = "no space left on device while writing"
DISK_ERROR = "I/O error while writing"


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """A one-line message for an I/O error while writing ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{DISK_FULL} {path}; free space and run again to resume"
    if exc.errno == errno.EIO:
        return f"{DISK_ERROR} {path}; check the disk and run again to resume"
    return f"cannot write {path}: {exc.strerror or exc}"


def is_output_error(message: str) -> bool:
    """True for a :func:`describe_os_error` message about a full or failing disk (e.g. from a worker)."""
    return message.startswith((DISK_FULL, DISK_ERROR))


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turns OSErrors raised while writing ``path`` into one-line VcfErrors."""
    try:
        yield
    except OSError as exc:
        raise VcfError(describe_os_error(exc, path)) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    with writing(path):
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_path(path: Path) -> None:
    """Removes a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def publish(tmp: Path, final: Path, overwrite: bool = False) -> None:
    """Renames a finished temporary file or directory to its final name.

    Raises:
        OutputExistsError: ``final`` exists and ``overwrite`` is false.
    """
    if final.exists():
        if not overwrite:
            raise OutputExistsError(f"{final} exists; use --overwrite to replace it")
        trash = temp_sibling(final, ".old")
        os.replace(final, trash)
        os.replace(tmp, final)
        remove_path(trash)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def clean_stale_temps(directory: Path) -> None:
    """Removes temporary outputs that dead runs left in ``directory``."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(".") and TMP_MARK in entry.name:
            pid = entry.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and pid_alive(int(pid))):
                remove_path(entry)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # A zombie is dead; a killed run's workers stay zombies until init reaps them, seconds later.
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class OutputLock:
    """An exclusive lock on an output, held for the whole run.

    POSIX record locks (``lockf``) are used rather than ``flock`` because forked worker processes
    do not inherit them: a lock always dies with the process that took it, so a lock left by a
    killed run is taken over at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Takes the lock or raises LockedError naming the lock file and its owner's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise LockedError(
                    f"{self.path} is locked by another vcf run (pid {owner}); wait for it to finish"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock; the lock file stays (removing it would race with a new owner)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_owner(path: Path) -> int | None:
    """The pid of the process holding the POSIX record lock on ``path``, or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        except OSError:
            return recorded_pid(path) if pid_alive(recorded_pid(path) or 0) else None
        lock_type, _, _, _, pid = struct.unpack("hhqqi4x", answer)
        return None if lock_type == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def recorded_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of an output directory, or None if it has none."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# The libraries whose versions decide the bytes of an output: (manifest key, module, distributions).
_VERSIONED = (
    ("torch", "torch", ("torch",)),
    ("torchvision", "torchvision", ("torchvision",)),
    ("opencv", "cv2", ("opencv-python", "opencv-python-headless", "opencv-contrib-python")),
    ("timm", "timm", ("timm",)),
    ("numpy", "numpy", ("numpy",)),
)


def library_versions() -> dict[str, str | None]:
    """Versions of torch, torchvision, OpenCV, timm and numpy (None when not installed), importing none of them."""
    import importlib.metadata
    import sys

    versions: dict[str, str | None] = {}
    for key, module, distributions in _VERSIONED:
        version = getattr(sys.modules.get(module), "__version__", None)
        for distribution in distributions:
            if version is not None:
                break
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                version = importlib.metadata.version(distribution)
        versions[key] = str(version) if version is not None else None
    return versions


MANIFEST_HEADER = ("vcf_version", "versions")
"""The fields :func:`manifest_text` adds to every manifest: they describe the software, not the settings."""


def manifest_text(manifest: dict[str, Any]) -> str:
    """Stable JSON text of a manifest, with vcf's version and the library versions: same settings, same bytes."""
    from vcf.version import __version__

    header = {"vcf_version": __version__, "versions": library_versions()}
    return json.dumps({**header, **manifest}, indent=2, sort_keys=True) + "\n"


def write_manifests_beside(files: Iterable[Path], name: str, manifest: dict[str, Any]) -> list[Path]:
    """Writes ``name`` into each folder of some of ``files``: ``manifest`` plus the names of those files.

    For outputs that are loose files (one .npy per video) rather than a directory with its own manifest.

    Returns:
        The manifests written.

    Raises:
        VcfError: The disk is full or failing (a folder that cannot be written is skipped).
    """
    by_folder: dict[Path, list[str]] = {}
    for path in files:
        by_folder.setdefault(Path(path).parent, []).append(Path(path).name)
    written = []
    for folder, names in sorted(by_folder.items()):
        try:
            atomic_write_text(folder / name, manifest_text({**manifest, "outputs": sorted(names)}))
        except VcfError as exc:
            if is_output_error(str(exc)):
                raise
            continue  # e.g. a folder without write permission: its outputs fail on their own, with the reason
        written.append(folder / name)
    return written


def die_with_parent() -> None:
    """Makes this worker process die when the process that started it dies, e.g. by kill -9.

    Linux's parent-death signal covers a worker whose OS parent is that process. A worker forked by a
    fork server (its OS parent is the server, which waits for its workers before it exits), or one whose
    parent died before the signal was asked for, would outlive it: a thread watches the parent instead.
    """
    import multiprocessing
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers are still cleaned up on normal exit
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():
        import threading

        def watch() -> None:
            parent.join()  # returns once the parent's sentinel pipe closes: it has exited or been killed
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="vcf-watch-parent", daemon=True).start()
