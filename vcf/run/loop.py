"""The one loop every stage runs its units through: each outcome is committed as it comes, then counted."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vcf.errors import VcfError
from vcf.io.atomic import is_output_error
from vcf.progress import Reporter
from vcf.run.processes import TaskFailed

# A unit's outcome: the unit, its result (None when it failed or was skipped), and why it failed (or None).
Outcome = tuple[Any, Any, "str | None"]


def run_units(
    outcomes: Iterable[Outcome],
    commit: Callable[[Any, Any, str | None], None],
    reporter: Reporter,
    task: str | None,
    describe: Callable[[Any], str] = str,
) -> None:
    """Commits each unit's outcome as the engine yields it and counts the unit in progress ``task``.

    The units were chosen by the stage (those not committed by an earlier run); a failed unit is data for
    ``commit``. A failure that says the disk is full or failing stops the run: it would fail every unit left,
    and the committed ones are kept for the rerun.
    """
    for unit, result, reason in outcomes:
        if reason is not None and is_output_error(reason):
            raise VcfError(reason)
        commit(unit, result, reason)
        if task is not None:
            reporter.advance(task, 1, description=describe(unit))


def as_outcomes(results: Iterable[tuple[Any, Any]]) -> Iterator[Outcome]:
    """``(task, result or TaskFailed)`` pairs of an engine's ``map`` as outcomes."""
    for unit, result in results:
        if isinstance(result, TaskFailed):
            yield unit, None, result.reason
        else:
            yield unit, result, None
