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
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOBS_ENV = "VCF_FAULT_KNOBS"
TAG_ENV = "VCF_FAULT_TAG"
HERE = Path(__file__).resolve()
PYTHON = sys.executable
PAGE = 4096


# Knobs: applied in the CLI process and in its spawned workers ------------------------------------------------


def apply_knobs(knobs: dict) -> None:
    """Patches this process for the faults named in ``knobs``.

    ``chunk``: rows per features work chunk (small, so that resumption is exercised on a small collection).
    ``part_videos``: videos per ``--from-video`` work part (likewise).
    ``eio_fsync``: the N-th fsync of a regular file in each process fails with EIO, as a disk does.
    ``sleep_first_fsync``: the first fsync of each process first sleeps this many seconds.
    ``hang`` / ``crash``: decoding the video with this id sleeps for an hour / segfaults (in ``vcf.stages.frames``,
    and in ``vcf.stages.videofeatures`` too when ``modules`` names it).
    """
    if "chunk" in knobs:
        import vcf.stages.image_features

        vcf.stages.image_features.CHUNK_SIZE = int(knobs["chunk"])
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
    if "sleep_first_fsync" in knobs:
        # Holds a run at its first write for a while, so that a second run surely meets its lock.
        pause = float(knobs["sleep_first_fsync"])
        inner_fsync = os.fsync
        slept = [False]

        def sleepy_fsync(fd: int) -> None:
            if not slept[0]:
                slept[0] = True
                time.sleep(pause)
            inner_fsync(fd)

        os.fsync = sleepy_fsync
    if "part_videos" in knobs:
        import vcf.stages.from_video

        vcf.stages.from_video.PART_VIDEOS = int(knobs["part_videos"])
    if "hang" in knobs or "crash" in knobs:
        import vcf.stages.frame_files
        import vcf.stages.shotframes

        modules = [vcf.stages.frame_files, vcf.stages.shotframes]
        if "videofeatures" in knobs.get("modules", ()):
            import vcf.stages.videofeatures

            modules.append(vcf.stages.videofeatures)
        for module in modules:
            module.decode_selected = _failing_decoder(module.decode_selected, knobs.get("hang"), knobs.get("crash"))


def _failing_decoder(real_decode: Callable, hang: str | None, crash: str | None) -> Callable:
    def decode(path: Path, *args: object, **kwargs: object) -> object:
        if path.stem == hang:
            time.sleep(3600)
        if path.stem == crash:
            ctypes.string_at(0)  # a real SIGSEGV, as a broken native decoder gives
        return real_decode(path, *args, **kwargs)

    return decode


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
    lock_path: Path | None = None
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


def start_cli(args: list[str], knobs: dict | None = None, preexec: Callable[[], None] | None = None) -> Started:
    """Starts ``vcf ARGS`` in a subprocess, tagged so that its workers can be found in /proc."""
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG_ENV: tag, "PYTHONUNBUFFERED": "1"}
    env.pop(KNOBS_ENV, None)
    if knobs:
        env[KNOBS_ENV] = json.dumps(knobs)
    # Files, not pipes: a worker that outlives its killed parent would keep a pipe open forever.
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115  (closed by finish)
    with open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(
            cli_command(args, knobs),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            preexec_fn=preexec,
        )
    return Started(args, process, tag, time.monotonic(), stdout, stderr)


@dataclass
class Started:
    """A CLI run in progress."""

    args: list[str]
    process: subprocess.Popen
    tag: str
    started: float
    stdout: Any
    stderr: Any

    def finish(
        self,
        *,
        kill_at: float | None = None,
        kill_after_lock: tuple[Path, float] | None = None,
        lock_dirs: list[Path] | None = None,
        timeout: float = 300,
    ) -> Run:
        """Waits for the run, SIGKILLing it at ``kill_at`` (monotonic time) or some time after it took a lock.

        Args:
            kill_at: When to SIGKILL the CLI process (its workers are left to die on their own).
            kill_after_lock: ``(lock file, delay)``: SIGKILL it ``delay`` seconds after it took that lock.
            lock_dirs: Directories where the lock it takes is looked for (recorded in ``Run.lock_path``).
            timeout: Seconds before the run counts as hung: it is killed and an AssertionError raised.
        """
        process = self.process
        killed = False
        lock_seconds = None
        lock_path = None
        while process.poll() is None:
            now = time.monotonic()
            if lock_seconds is None and (lock_dirs or kill_after_lock):
                candidates = [kill_after_lock[0]] if kill_after_lock else []
                for directory in lock_dirs or []:
                    with contextlib.suppress(OSError):
                        candidates += [directory / n for n in os.listdir(directory) if n.endswith(".lock")]
                for candidate in candidates:
                    if lock_holder_pid(candidate) == process.pid:
                        lock_seconds, lock_path = now - self.started, candidate
                        if kill_after_lock is not None:
                            kill_at = now + kill_after_lock[1]
                        break
            if kill_at is not None and now >= kill_at:
                process.send_signal(signal.SIGKILL)
                killed = True
                break
            if now - self.started > timeout:
                process.kill()
                process.wait()
                reap_orphans(self.tag, grace=0)
                raise AssertionError(f"vcf {' '.join(self.args)} still running after {timeout} s")
            time.sleep(0.002)
        process.wait()
        seconds = time.monotonic() - self.started
        orphans = reap_orphans(self.tag, grace=30.0 if killed else 10.0)
        outputs = []
        for handle in (self.stdout, self.stderr):
            handle.seek(0)
            outputs.append(handle.read().decode(errors="replace"))
            handle.close()
        return Run(
            args=self.args,
            rc=process.returncode,
            stdout=outputs[0],
            stderr=outputs[1],
            seconds=seconds,
            killed=killed and process.returncode == -signal.SIGKILL,
            lock_seconds=lock_seconds,
            lock_path=lock_path,
            orphans=orphans,
        )


def run_cli(
    args: list[str],
    *,
    knobs: dict | None = None,
    kill_after: float | None = None,
    kill_after_lock: tuple[Path, float] | None = None,
    lock_dirs: list[Path] | None = None,
    preexec: Callable[[], None] | None = None,
    timeout: float = 300,
) -> Run:
    """Runs ``vcf ARGS`` in a subprocess and waits for it (see :meth:`Started.finish`).

    Args:
        args: The vcf arguments.
        knobs: Faults to inject (the run then goes through this file's ``cli`` entry).
        kill_after: SIGKILL the CLI process this many seconds after it started.
        kill_after_lock: ``(lock file, delay)``: SIGKILL it ``delay`` seconds after it took that lock.
        lock_dirs: Directories where the lock it takes is looked for.
        preexec: Called in the child before exec.
        timeout: Seconds before the run counts as hung.
    """
    started = start_cli(args, knobs, preexec)
    kill_at = started.started + kill_after if kill_after is not None else None
    return started.finish(kill_at=kill_at, kill_after_lock=kill_after_lock, lock_dirs=lock_dirs, timeout=timeout)


def hold_lock(path: Path) -> subprocess.Popen:
    """Starts a process that takes ``path`` as a vcf output lock and sleeps; returns once it holds it."""
    holder = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import sys, time, pathlib; from vcf.io.atomic import OutputLock; "
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
            data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            result[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return result


def tree_bytes(root: Path) -> int:
    """Bytes ``root`` takes on a tmpfs (whole pages per file)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            total += -(-os.lstat(Path(dirpath) / name).st_size // PAGE) * PAGE
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
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)

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
    """One line of the fault table.

    Attributes:
        fault: What was injected.
        stage: The command it was injected into.
        scenarios: Independent scenarios (each ends with a run that must complete).
        injections: Faults actually injected (kills landed, disks filled, errors raised, bad inputs).
        runs: CLI runs in all.
        recovered: Scenarios whose final run completed (exit 0, or the expected failures only) and left a
            collection ``vcf check`` finds in order.
        identical: Scenarios whose final outputs are byte-identical to an uninterrupted run's.
        lost: Finished items (frame directories, work chunks, outputs) that a later run lost or redid.
        false_complete: Outputs seen under their final name while incomplete or different.
        orphans: Worker processes still alive after their CLI process was killed.
    """

    fault: str
    stage: str
    scenarios: int = 0
    injections: int = 0
    runs: int = 0
    recovered: int = 0
    identical: int = 0
    lost: int = 0
    false_complete: int = 0
    orphans: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.scenarios > 0
            and self.recovered == self.scenarios
            and self.identical == self.scenarios
            and self.lost == 0
            and self.false_complete == 0
            and self.orphans == 0
        )


RESULTS: list[Row] = []

COLUMNS = (
    "fault",
    "stage",
    "scenarios",
    "injected",
    "CLI runs",
    "recovered",
    "byte-identical",
    "lost items",
    "looked complete",
    "orphans",
)


def format_table(rows: list[Row] | None = None) -> str:
    """The fault table in Markdown."""
    rows = RESULTS if rows is None else rows
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    for row in rows:
        cells = (
            row.fault,
            row.stage,
            row.scenarios,
            row.injections,
            row.runs,
            f"{row.recovered}/{row.scenarios}",
            f"{row.identical}/{row.scenarios}",
            row.lost,
            row.false_complete,
            row.orphans,
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def seeded(*parts: object) -> random.Random:
    """A random generator seeded from the matrix seed and ``parts`` (stable across runs and Python versions)."""
    seed = os.environ.get("VCF_FAULTS_SEED", "20240601")
    digest = hashlib.sha256(("/".join(map(str, (seed, *parts)))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# Stages and their reference runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """A command under test.

    Attributes:
        name: Short name (also the work directory's name).
        build: Fills an empty directory with the stage's input collection.
        args: The vcf arguments for a collection directory.
        units: Globs (relative to the collection) of the outputs that appear whole: frame directories,
            BigFile directories, .h5 files. Under its final name a unit must equal the reference's.
        knobs: Knobs every run of this stage gets (e.g. a small features chunk).
        fsyncs: About how many regular-file fsyncs one process of the stage makes (EIO targets).
        locked: Whether the stage takes an output lock (``--csv`` runs share their CSV instead).
    """

    name: str
    build: Callable[[Path], None]
    args: Callable[[Path], list[str]]
    units: tuple[str, ...]
    knobs: tuple[tuple[str, object], ...] = ()
    fsyncs: int = 4
    locked: bool = True

    @property
    def knob_dict(self) -> dict:
        return dict(self.knobs)

    def knobs_with(self, **extra: object) -> dict:
        return {**self.knob_dict, **extra}


@dataclass
class Reference:
    """An uninterrupted run of a stage on a fresh copy of its input."""

    snapshot: dict[str, str]
    tree: Path
    seconds: float
    lock_seconds: float | None
    lock_path: Path | None
    bytes: int
    units: list[str]


class Lab:
    """Templates, work directories and reference runs of the stages, built once per session.

    A stage always runs in the same work directory, so that absolute paths written in its outputs
    (index files, manifests) are the same in every run and outputs can be compared byte for byte.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self._templates: dict[str, Path] = {}
        self._references: dict[str, Reference] = {}

    def template(self, stage: Stage) -> Path:
        if stage.name not in self._templates:
            path = self.base / "templates" / stage.name
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            stage.build(path)
            self._templates[stage.name] = path
        return self._templates[stage.name]

    def work(self, stage: Stage) -> Path:
        return self.base / "work" / stage.name

    def fresh(self, stage: Stage) -> Path:
        work = self.work(stage)
        reset(self.template(stage), work)
        return work

    def reference(self, stage: Stage) -> Reference:
        if stage.name not in self._references:
            work = self.fresh(stage)
            lock_dirs = [work, work / "FeatureData", work / "H5Data"]
            run = run_cli(stage.args(work), knobs=stage.knob_dict or None, lock_dirs=lock_dirs)
            assert run.rc == 0, run.describe()
            assert run.lock_path is not None or not stage.locked, f"{stage.name}: no lock seen"
            tree = self.base / "references" / stage.name
            if tree.exists():
                shutil.rmtree(tree)
            shutil.copytree(work, tree, symlinks=True)
            units = sorted(
                str(p.relative_to(work)) for glob in stage.units for p in work.glob(glob) if not p.name.startswith(".")
            )
            self._references[stage.name] = Reference(
                snapshot=snapshot(work),
                tree=tree,
                seconds=run.seconds,
                lock_seconds=run.lock_seconds,
                lock_path=run.lock_path,
                bytes=tree_bytes(work),
                units=units,
            )
        return self._references[stage.name]


# What must hold after every run ---------------------------------------------------------------------------


def unit_files(snap: dict[str, str], unit: str) -> dict[str, str]:
    return {k: v for k, v in snap.items() if k == unit or k.startswith(unit + "/")}


def present_units(work: Path, stage: Stage) -> list[str]:
    return sorted(
        str(p.relative_to(work)) for glob in stage.units for p in work.glob(glob) if not p.name.startswith(".")
    )


def false_complete(work: Path, ref: Reference, stage: Stage) -> list[str]:
    """Outputs under their final name that differ from the reference: units and other visible files."""
    snap = snapshot(work)
    units = present_units(work, stage)
    found = []
    for unit in units:
        if unit_files(snap, unit) != unit_files(ref.snapshot, unit):
            found.append(f"{unit} is under its final name but differs from the uninterrupted run's")
    for path, digest in snap.items():
        if is_hidden(path) or any(path == u or path.startswith(u + "/") for u in units):
            continue
        if ref.snapshot.get(path) != digest:
            found.append(f"{path} is under its final name but differs from the uninterrupted run's")
    return found


def finished_units(work: Path, ref: Reference, stage: Stage) -> dict[str, int]:
    """Inodes of the finished work now on disk: complete units and saved features chunks."""
    snap = snapshot(work)
    done = {}
    for unit in present_units(work, stage):
        if unit_files(snap, unit) == unit_files(ref.snapshot, unit):
            done[unit] = (work / unit).stat().st_ino
    for chunk in work.glob("FeatureData/.vcf-work-*/chunk-*.npz"):
        done[str(chunk.relative_to(work))] = chunk.stat().st_ino
    return done


def lost_units(before: dict[str, int], work: Path, ref: Reference, stage: Stage) -> list[str]:
    """Finished work of ``before`` that is gone or was redone (a new inode) although still needed."""
    complete = present_units(work, stage) == ref.units and not false_complete(work, ref, stage)
    lost = []
    for path, inode in before.items():
        try:
            now = (work / path).stat().st_ino
        except FileNotFoundError:
            now = None
        if now == inode:
            continue
        if now is None and "/.vcf-work-" in "/" + path and complete:
            continue  # chunks are dropped once every output is written
        lost.append(f"{path} was finished but {'is gone' if now is None else 'was redone'}")
    return lost


def clean_error(run: Run, *needles: str) -> str | None:
    """None when a failed run ended with one ``Error:`` line containing ``needles``, else what is wrong."""
    if run.rc == 0:
        return "exit status 0"
    if "Traceback" in run.stderr:
        return "a traceback instead of a one-line error"
    lines = run.error_lines
    if len(lines) != 1:
        return f"{len(lines)} 'Error:' lines"
    missing = [n for n in needles if n.lower() not in lines[0].lower()]
    if missing:
        return f"error line {lines[0]!r} does not mention {missing}"
    return None


def finish_scenario(
    row: Row,
    run: Run,
    work: Path,
    ref: Reference,
    stage: Stage,
    before: dict[str, int],
    what: str,
    problem: str | None = None,
) -> None:
    """Scores the final run of a scenario: it must complete, pass ``vcf check`` and equal the reference.

    ``problem`` is what went wrong earlier in the scenario (e.g. an unclear error message); the
    scenario then does not count as recovered.
    """
    from vcf.stages.check import check

    if problem is not None:
        row.details.append(f"{what}: {problem}")
    row.runs += 1
    row.orphans += len(run.orphans)
    lost = lost_units(before, work, ref, stage)
    row.lost += len(lost)
    row.details += [f"{what}: {item}" for item in lost]
    report = check(work)
    if run.rc == 0 and report.ok and problem is None:
        row.recovered += 1
    elif run.rc != 0:
        row.details.append(f"{what}: the rerun failed: {run.describe()}")
    else:
        row.details.append(f"{what}: vcf check after the rerun: {'; '.join(map(str, report.problems[:5]))}")
    snap = snapshot(work)
    if snap == ref.snapshot:
        row.identical += 1
    else:
        differ = sorted(k for k in set(snap) | set(ref.snapshot) if snap.get(k) != ref.snapshot.get(k))
        row.details.append(f"{what}: {len(differ)} file(s) differ from the uninterrupted run, e.g. {differ[:4]}")


def after_fault(row: Row, run: Run, work: Path, ref: Reference, stage: Stage, what: str) -> dict[str, int]:
    """Checks the state a faulted run left; returns the finished work now on disk."""
    row.runs += 1
    row.orphans += len(run.orphans)
    if run.orphans:
        row.details.append(f"{what}: worker processes {run.orphans} outlived the CLI process")
    bad = false_complete(work, ref, stage)
    row.false_complete += len(bad)
    row.details += [f"{what}: {item}" for item in bad]
    return finished_units(work, ref, stage)


# Scenarios ---------------------------------------------------------------------------------------------


def kill_scenarios(lab: Lab, stage: Stage, row: Row, *, kills: int, chain: int, rng: random.Random) -> None:
    """SIGKILLs the stage at random moments, ``chain`` kills in a row before a run may finish.

    Most kills land a random time after the run took its output lock (where the writing happens);
    some at a random time after the process started (imports, model loading, reading inputs).
    """
    ref = lab.reference(stage)
    args = stage.args(lab.work(stage))
    landed = attempts = 0
    while landed < kills and attempts < kills * 4:
        work = lab.fresh(stage)
        before: dict[str, int] = {}
        row.scenarios += 1
        in_chain = 0
        while True:
            what = f"scenario {row.scenarios} after {in_chain} kill(s)"
            if in_chain >= chain or landed >= kills:
                finish_scenario(row, run_cli(args, knobs=stage.knob_dict or None), work, ref, stage, before, what)
                break
            attempts += 1
            if ref.lock_path is None or ref.lock_seconds is None or rng.random() < 0.2:
                run = run_cli(args, knobs=stage.knob_dict or None, kill_after=rng.uniform(0, ref.seconds))
            else:
                window = max(0.01, (ref.seconds - ref.lock_seconds) * 0.95)
                run = run_cli(
                    args, knobs=stage.knob_dict or None, kill_after_lock=(ref.lock_path, rng.uniform(0, window))
                )
            if not run.killed:
                finish_scenario(row, run, work, ref, stage, before, what + " (finished before its kill)")
                break
            landed += 1
            in_chain += 1
            row.injections += 1
            lost = lost_units(before, work, ref, stage)
            row.lost += len(lost)
            row.details += [f"{what}: {item}" for item in lost]
            before = after_fault(row, run, work, ref, stage, what)


def disk_full_scenario(lab: Lab, stage: Stage, row: Row, fraction: float) -> None:
    """Runs the stage on a tmpfs holding its input and ``fraction`` of its output, then frees space and reruns."""
    ref = lab.reference(stage)
    template = lab.template(stage)
    work = lab.work(stage)
    input_bytes = tree_bytes(template)
    output_bytes = max(PAGE, ref.bytes - input_bytes)
    size = -(-(input_bytes + int(fraction * output_bytes)) // PAGE) * PAGE
    what = f"disk full at {fraction:.0%} of the output"
    row.scenarios += 1
    with tmpfs(work, size) as resize:
        reset(template, work)
        run = run_cli(stage.args(work), knobs=stage.knob_dict or None)
        problem = clean_error(run, "no space left on device")
        if run.rc != 0:
            row.injections += 1
        before = after_fault(row, run, work, ref, stage, what)
        resize(input_bytes + 4 * output_bytes + (64 << 20))
        final = run_cli(stage.args(work), knobs=stage.knob_dict or None)
        problem = f"{problem}: {run.describe()}" if problem else None
        finish_scenario(row, final, work, ref, stage, before, what, problem)


def io_error_scenario(lab: Lab, stage: Stage, row: Row, nth: int) -> None:
    """Makes the ``nth`` file fsync of each process fail with EIO, then reruns without the fault."""
    ref = lab.reference(stage)
    work = lab.fresh(stage)
    what = f"EIO at fsync #{nth}"
    row.scenarios += 1
    run = run_cli(stage.args(work), knobs=stage.knobs_with(eio_fsync=nth))
    if run.rc == 0:
        problem = None
        row.details.append(f"{what}: not triggered (fewer fsyncs)")
    else:
        row.injections += 1
        problem = clean_error(run, "I/O error")
    before = after_fault(row, run, work, ref, stage, what)
    final = run_cli(stage.args(work), knobs=stage.knob_dict or None)
    finish_scenario(row, final, work, ref, stage, before, what, f"{problem}: {run.describe()}" if problem else None)


def held_lock_scenario(lab: Lab, stage: Stage, row: Row) -> None:
    """Another process holds the stage's lock: the run fails at once naming it; once the owner dies it is taken over."""
    ref = lab.reference(stage)
    work = lab.fresh(stage)
    initial = snapshot(work)
    what = "lock held by another process"
    row.scenarios += 1
    holder = hold_lock(ref.lock_path)
    try:
        run = run_cli(stage.args(work), knobs=stage.knob_dict or None)
    finally:
        holder.kill()
        holder.wait()
    row.runs += 1
    row.injections += 1
    problem = clean_error(run, str(ref.lock_path), f"pid {holder.pid}")
    if snapshot(work) != initial:
        problem = "the refused run changed the collection"
    # The holder was SIGKILLed: its lock file still names it, and the next run must take the lock over.
    final = run_cli(stage.args(work), knobs=stage.knob_dict or None)
    finish_scenario(row, final, work, ref, stage, {}, what, f"{problem}: {run.describe()}" if problem else None)


def concurrent_scenario(lab: Lab, stage: Stage, row: Row, hold_seconds: float) -> None:
    """Two runs of the same command at once.

    A locked stage: the second fails at once naming the first's pid, and the first completes. An unlocked
    one (``--csv``): both complete, and the outputs are those of a single run.
    """
    ref = lab.reference(stage)
    work = lab.fresh(stage)
    what = "two runs at once"
    row.scenarios += 1
    first = start_cli(stage.args(work), stage.knobs_with(sleep_first_fsync=hold_seconds))
    problem = None
    if ref.lock_path is not None:
        deadline = time.monotonic() + 120
        while lock_holder_pid(ref.lock_path) != first.process.pid and first.process.poll() is None:
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.01)
        second = run_cli(stage.args(work), knobs=stage.knob_dict or None)
        problem = clean_error(second, str(ref.lock_path), f"pid {first.process.pid}")
        problem = f"{problem}: {second.describe()}" if problem else None
    else:
        second = run_cli(stage.args(work), knobs=stage.knob_dict or None)
        if second.rc != 0:
            problem = f"the second run failed: {second.describe()}"
    row.runs += 1
    row.injections += 1
    finish_scenario(row, first.finish(), work, ref, stage, {}, what, problem)


if os.environ.get(KNOBS_ENV):
    apply_knobs(json.loads(os.environ[KNOBS_ENV]))

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "cli":
        sys.exit("usage: python tests/faults.py cli <vcf arguments>")
    from vcf.cli import main

    main(sys.argv[2:])
