"""Fault-injection harness: runs the vcf CLI in subprocesses, kills it, fills its disk, breaks its writes.

Run as a script (``python tests/faults.py cli <vcf arguments>``) it is the vcf CLI with the faults named
in ``$VCF_FAULT_KNOBS`` (JSON) injected. Worker processes started with the ``spawn`` method re-import
this file as their main module, so the knobs apply to them too.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

KNOBS_ENV = "VCF_FAULT_KNOBS"
TAG_ENV = "VCF_FAULT_TAG"
HERE = Path(__file__).resolve()
PYTHON = sys.executable
PAGE = 4096


# Knobs: applied in the CLI process and in its spawned workers ------------------------------------------------


def apply_knobs(knobs: dict) -> None:
    """Patches this process for the faults named in ``knobs``.

    ``chunk``: rows per features work chunk (small, so that resumption is exercised on a small collection).
    ``eio_fsync``: the N-th fsync of a regular file in each process fails with EIO, as a disk does.
    ``hang`` / ``crash``: decoding the video with this id sleeps for an hour / segfaults.
    """
    if "chunk" in knobs:
        import vcf.features

        vcf.features.CHUNK_SIZE = int(knobs["chunk"])
    if "eio_fsync" in knobs:
        target = int(knobs["eio_fsync"])
        real_fsync = os.fsync
        calls = [0]

        def failing_fsync(fd: int) -> None:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                calls[0] += 1
                if calls[0] == target:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        os.fsync = failing_fsync
    if "hang" in knobs or "crash" in knobs:
        import vcf.frames

        real_decode = vcf.frames.decode_selected

        def decode(path: Path, *args: object, **kwargs: object) -> object:
            if path.stem == knobs.get("hang"):
                time.sleep(3600)
            if path.stem == knobs.get("crash"):
                ctypes.string_at(0)  # a real SIGSEGV, as a broken native decoder gives
            return real_decode(path, *args, **kwargs)

        vcf.frames.decode_selected = decode


# Processes ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One CLI run."""

    args: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False
    lock_seconds: float | None = None
    orphans: list[int] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Error:")]

    def describe(self) -> str:
        return f"vcf {' '.join(self.args)} -> rc {self.rc}\n--- stderr ---\n{self.stderr[-3000:]}"


def tagged_pids(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``TAG_ENV=tag``, found by scanning /proc."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def reap_orphans(tag: str, grace: float = 10.0) -> list[int]:
    """Waits up to ``grace`` seconds for a run's processes to be gone; kills and returns those that stay."""
    deadline = time.monotonic() + grace
    while True:
        left = tagged_pids(tag)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def lock_holder_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cli_command(args: list[str], knobs: dict | None) -> list[str]:
    if knobs:
        return [PYTHON, str(HERE), "cli", *args]
    return [PYTHON, "-m", "vcf", *args]


def run_cli(
    args: list[str],
    *,
    knobs: dict | None = None,
    kill_after: float | None = None,
    kill_after_lock: tuple[Path, float] | None = None,
    watch_lock: list[Path] | None = None,
    preexec: Callable[[], None] | None = None,
    timeout: float = 300,
) -> Run:
    """Runs ``vcf ARGS`` in a subprocess and waits for it.

    Args:
        args: The vcf arguments.
        knobs: Faults to inject (the run goes through this file's ``cli`` entry).
        kill_after: SIGKILL the CLI process this many seconds after it started.
        kill_after_lock: ``(lock file, delay)``: SIGKILL it ``delay`` seconds after it took that lock.
        watch_lock: Lock files to watch; the time the process took one is recorded (reference runs).
        preexec: Called in the child before exec.
        timeout: Seconds before the run is considered hung (it is killed and the test fails).
    """
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG_ENV: tag, "PYTHONUNBUFFERED": "1"}
    env.pop(KNOBS_ENV, None)
    if knobs:
        env[KNOBS_ENV] = json.dumps(knobs)
    started = time.monotonic()
    with open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(
            cli_command(args, knobs),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=preexec,
        )
    killed = False
    lock_seconds = None
    watched = list(watch_lock or []) + ([kill_after_lock[0]] if kill_after_lock else [])
    kill_at = started + kill_after if kill_after is not None else None
    # Output is drained by a thread-free poll loop: the runs print little, so pipes do not fill up.
    while process.poll() is None:
        now = time.monotonic()
        if lock_seconds is None and watched:
            if any(lock_holder_pid(p) == process.pid for p in watched):
                lock_seconds = now - started
                if kill_after_lock is not None:
                    kill_at = now + kill_after_lock[1]
        if kill_at is not None and now >= kill_at:
            process.send_signal(signal.SIGKILL)
            killed = True
            break
        if now - started > timeout:
            process.kill()
            process.communicate()
            reap_orphans(tag, grace=0)
            raise AssertionError(f"vcf {' '.join(args)} still running after {timeout} s")
        time.sleep(0.002)
    stdout, stderr = process.communicate()
    seconds = time.monotonic() - started
    orphans = reap_orphans(tag, grace=10.0 if killed else 5.0)
    return Run(
        args=args,
        rc=process.returncode,
        stdout=stdout.decode(errors="replace"),
        stderr=stderr.decode(errors="replace"),
        seconds=seconds,
        killed=killed and process.returncode == -signal.SIGKILL,
        lock_seconds=lock_seconds,
        orphans=orphans,
    )


def hold_lock(path: Path) -> subprocess.Popen:
    """Starts a process that takes ``path`` as a vcf output lock and sleeps; returns once it holds it."""
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sys, time, pathlib; from vcf.atomic import OutputLock; "
            "OutputLock(pathlib.Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(600)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def drop_file_permission_override() -> None:
    """Makes a root child process subject to file permissions (drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


# Trees -------------------------------------------------------------------------------------------------


def is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in Path(relative).parts)


def snapshot(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root`` except lock files."""
    result = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".lock"):
                continue
            path = Path(dirpath) / name
            result[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def tree_bytes(root: Path) -> int:
    """Bytes ``root`` takes on a tmpfs (whole pages per file)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            total += -(-os.path.getsize(Path(dirpath) / name) // PAGE) * PAGE
    return total


def reset(template: Path, work: Path) -> None:
    """Makes ``work`` a fresh copy of ``template`` (``work`` itself may be a mount point and is kept)."""
    work.mkdir(parents=True, exist_ok=True)
    for entry in work.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in template.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, work / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, work / entry.name, follow_symlinks=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Callable[[int], None]]:
    """Mounts a tmpfs of ``size`` bytes on ``path``; yields a function that resizes it."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True, capture_output=True)

    try:
        yield resize
    finally:
        result = subprocess.run(["umount", str(path)], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def tmpfs_available(scratch: Path) -> str | None:
    """None when tmpfs can be mounted here, else why not."""
    probe = scratch / "tmpfs-probe"
    try:
        with tmpfs(probe, 64 * PAGE):
            pass
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot mount a tmpfs here ({exc})"
    return None


# Results table -----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the fault table."""

    fault: str
    stage: str
    scenarios: int = 0
    runs: int = 0
    recovered: int = 0
    identical: int = 0
    lost: int = 0
    false_complete: int = 0
    orphans: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.recovered == self.scenarios
            and self.identical == self.scenarios
            and self.lost == 0
            and self.false_complete == 0
            and self.orphans == 0
        )


RESULTS: list[Row] = []


def format_table(rows: list[Row] | None = None) -> str:
    """The fault table in Markdown."""
    rows = RESULTS if rows is None else rows
    lines = [
        "| fault | stage | scenarios | CLI runs | recovered | byte-identical | lost items | looked complete | orphans |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.fault} | {row.stage} | {row.scenarios} | {row.runs} | {row.recovered}/{row.scenarios}"
            f" | {row.identical}/{row.scenarios} | {row.lost} | {row.false_complete} | {row.orphans} |"
        )
    return "\n".join(lines)


def seeded(*parts: object) -> random.Random:
    """A random generator seeded from the matrix seed and ``parts`` (stable across runs and Python versions)."""
    seed = os.environ.get("VCF_FAULTS_SEED", "20240601")
    digest = hashlib.sha256(("/".join(map(str, (seed, *parts)))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


if os.environ.get(KNOBS_ENV):
    apply_knobs(json.loads(os.environ[KNOBS_ENV]))

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "cli":
        sys.exit("usage: python tests/faults.py cli <vcf arguments>")
    from vcf.cli import main

    main(sys.argv[2:])
