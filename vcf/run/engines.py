"""Engines: where the units of a run are computed (this machine, or a Ray cluster), behind one small protocol."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vcf.errors import VcfError
from vcf.run.partition import Shard


class Engine(Protocol):
    """What a stage asks of an engine; the local and the Ray engine give the same results for the same units.

    ``map`` runs a function over independent tasks (yields ``(task, result or TaskFailed)`` as they finish);
    ``image_batches`` computes batches of an :class:`~vcf.run.jobs.ImageJob` (yields ``(position, (indices,
    {layer: rows}, failures))``); ``video_rows`` decodes and computes the videos of a
    :class:`~vcf.run.jobs.VideoJob` (yields ``(index, VideoRows | None, reason | None)``); ``resolve_device``
    says where the model runs and with which precision; ``close`` releases what the engine holds.
    """

    name: str

    def map(self, function: Callable[[Any], Any], tasks: Sequence[Any], **options: Any) -> Iterator[Any]: ...
    def resolve_device(self, device: str, precision: str) -> tuple[Any, str]: ...
    def image_batches(self, job: Any, batches: list[list[int]]) -> Iterator[tuple[int, Any]]: ...
    def video_rows(self, job: Any, paths: Sequence[Any], wanted: Any, on_items: Any) -> Iterator[Any]: ...
    def close(self) -> None: ...


class Closing:
    """Makes an engine a context manager that releases what it holds on exit."""

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # type: ignore[attr-defined]


@dataclass
class LocalEngine(Closing):
    """This machine: isolated decoder processes and the model in this process."""

    address: str | None = None
    name: str = "local"
    on_this_machine: bool = True  # workers are processes of this run, here: their temporaries' owners can be seen

    @staticmethod
    def check(address: str | None) -> None:
        if address:
            raise VcfError("--ray-address needs --engine ray")

    def map(self, function, tasks, *, workers, timeout, initializer):  # type: ignore[no-untyped-def]
        from vcf.run.processes import run_isolated

        return run_isolated(
            function, tasks, workers=workers or os.cpu_count() or 1, timeout=timeout, initializer=initializer
        )

    def resolve_device(self, device: str, precision: str) -> tuple[Any, str]:
        from vcf.models.inference import resolve_device, resolve_precision

        torch_device = resolve_device(device)
        return torch_device, resolve_precision(precision, torch_device)

    def image_batches(self, job: Any, batches: list[list[int]]) -> Iterator[tuple[int, Any]]:
        from vcf.run.local import image_batches

        return image_batches(job, batches)

    def video_rows(self, job, paths, wanted, on_items):  # type: ignore[no-untyped-def]
        from vcf.run.local import video_rows

        return video_rows(job, paths, wanted, on_items)

    def close(self) -> None:
        pass


@dataclass
class RayEngine(Closing):
    """A Ray cluster: decoding and preprocessing in Ray tasks, the model in actors (see :mod:`vcf.run.ray_engine`)."""

    address: str | None = None
    name: str = "ray"
    on_this_machine: bool = False

    @staticmethod
    def check(address: str | None) -> None:
        from vcf.run.ray_engine import require_ray

        require_ray()

    def __post_init__(self) -> None:
        from vcf.run.ray_engine import connect

        connect(self.address)  # before anything is shown or written: an unreachable cluster is a one-line error

    def map(self, function, tasks, *, workers, timeout, initializer):  # type: ignore[no-untyped-def]
        from vcf.run.ray_engine import run_tasks

        return run_tasks(function, tasks, timeout=timeout, workers=workers, initializer=initializer)

    def resolve_device(self, device: str, precision: str) -> tuple[Any, str]:
        from vcf.run.ray_engine import resolve_cluster_device

        return resolve_cluster_device(device, precision, self.address)

    def image_batches(self, job: Any, batches: list[list[int]]) -> Iterator[tuple[int, Any]]:
        from vcf.run.ray_engine import feature_batches

        return feature_batches(job, batches)

    def video_rows(self, job, paths, wanted, on_items):  # type: ignore[no-untyped-def]
        from vcf.run.ray_videos import video_rows

        return video_rows(job, paths, wanted=wanted, on_items=on_items)

    def close(self) -> None:
        from vcf.run.ray_engine import release

        release()


ENGINES: dict[str, type[LocalEngine] | type[RayEngine]] = {"local": LocalEngine, "ray": RayEngine}


def parse_scale_out(shard: str | Shard | None, engine: str, ray_address: str | None) -> Shard | None:
    """Checks the ``--shard``, ``--engine`` and ``--ray-address`` options together.

    Returns:
        The shard, or None for the whole collection.

    Raises:
        VcfError: A malformed shard, an unknown engine, an address without ``--engine ray``, or
            ``--engine ray`` without Ray installed.
    """
    if engine not in ENGINES:
        raise VcfError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
    ENGINES[engine].check(ray_address)
    return None if shard is None else Shard.parse(shard)


def open_engine(engine: str, ray_address: str | None) -> LocalEngine | RayEngine:
    """The engine named ``engine`` (from :data:`ENGINES`; checked by :func:`parse_scale_out`), connected."""
    return ENGINES[engine](ray_address)
