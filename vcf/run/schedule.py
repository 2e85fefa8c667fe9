"""Where images are decoded: by idle-priority threads of the model's process, or by loader processes beside it.

The choice is made from the first batches of a run, decoded in this process and timed against the model,
whatever the run's length. It never changes the features (the batches are the same either way), so it is
reported in the run's result and summary line, never in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

# The model must wait for decoding at least this share of its own time before loader processes are tried:
# on a small CPU the model's threads use every core, and a loader process preempting one of them stalls the
# others at their next synchronisation.
LOADER_SWITCH_SHARE = 0.15
# CPU seconds it takes to start the loader processes (the fork server imports torch and OpenCV once, then
# forks them): the time decoding beside the model must save over the rest of the run to be worth it.
LOADER_START_SECONDS = 3.0


@dataclass(frozen=True)
class ProbeCosts:
    """What the first batches of a run cost, decoded in the model's process.

    Attributes:
        decode_cpu: CPU seconds the decoding threads spent reading and preprocessing the images.
        wait: Seconds the model waited for its batches (the decoding it could not run beside the model).
        model: Seconds the model took.
        images: Images in those batches.
    """

    decode_cpu: float
    wait: float
    model: float
    images: int


@dataclass(frozen=True)
class DecodeChoice:
    """How a run decodes its images, and why.

    Attributes:
        workers: Loader processes for the rest of the run (0: decoded in the model's process).
        reason: Why, in a few words.
        decode_ms: Decoding and preprocessing, CPU milliseconds per image (None: not measured).
        model_ms: The model, milliseconds per image (None: not measured).
        cores: CPU cores available.
        wait_ms: Milliseconds per image the model waited for decoding (None: not measured).
    """

    workers: int
    reason: str
    decode_ms: float | None = None
    model_ms: float | None = None
    cores: int = 1
    wait_ms: float | None = None

    def describe(self) -> str:
        """One line for the run's summary."""
        where = f"{self.workers} loader process(es)" if self.workers else "in the model's process"
        measured = ""
        if self.decode_ms is not None and self.model_ms is not None:
            waited = "" if self.wait_ms is None else f" ({self.wait_ms:.1f} ms/img waited for)"
            model = f"model {self.model_ms:.1f} ms/img on {self.cores} cores"
            measured = f"; decode {self.decode_ms:.1f} ms/img{waited} vs {model}"
        return f"decoding {where} ({self.reason}{measured})"


def choose_decoding(costs: ProbeCosts, remaining: int, cores: int) -> DecodeChoice:
    """Decides from the probe batches whether the rest of a run decodes in loader processes.

    In this process the images are decoded by idle-priority threads while the model runs the batch before,
    so an image costs ``model + wait``: only the decoding the model's own threads left no room for shows.
    Loaders can do no better than spread the decoding's CPU time over all cores, ``model + decode / cores``
    per image, and they compete with the model's threads at normal priority; so they are started only when
    the wait exceeds :data:`LOADER_SWITCH_SHARE` of the model and what they could save over the rest of the
    run, ``remaining * (wait - decode / cores)``, exceeds :data:`LOADER_START_SECONDS`.

    Args:
        costs: What the probe batches cost.
        remaining: Images left after them.
        cores: CPU cores available.
    """
    per_image = max(costs.images, 1)
    decode, wait, model = costs.decode_cpu / per_image, costs.wait / per_image, costs.model / per_image
    measured = {"decode_ms": 1000 * decode, "model_ms": 1000 * model, "cores": cores, "wait_ms": 1000 * wait}
    if remaining == 0:
        return DecodeChoice(0, "the whole run fitted in the timed first batches", **measured)
    if cores < 2:
        return DecodeChoice(0, "one core: nothing to decode beside the model", **measured)
    if model <= 0 or wait <= LOADER_SWITCH_SHARE * model:
        return DecodeChoice(0, f"waiting under {LOADER_SWITCH_SHARE:.0%} of the model's time", **measured)
    saving = remaining * (wait - decode / cores)
    if saving < LOADER_START_SECONDS:
        return DecodeChoice(0, f"loaders would save {max(saving, 0.0):.1f} s, under their start", **measured)
    return DecodeChoice(cores, f"waiting {wait / model:.0%} of the model's time", **measured)
