"""Where images are decoded: in the model's process between batches, or in loader processes beside it.

The choice is made from the first batches of a run, decoded in this process and timed against the model,
whatever the run's length. It never changes the features (the batches are the same either way), so it is
reported in the run's result and summary line, never in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

# Decoding must take at least this share of the model's time before loader processes are worth it: on a
# small CPU the model's threads use every core, and a decoder preempting one of them stalls the others at
# their next synchronisation, so a heavy model runs faster with decoding between its batches.
LOADER_SWITCH_SHARE = 0.15
# CPU seconds it takes to start the loader processes (the fork server imports torch and OpenCV once, then
# forks them): the time decoding beside the model must save over the rest of the run to be worth it.
LOADER_START_SECONDS = 3.0


@dataclass(frozen=True)
class DecodeChoice:
    """How a run decodes its images, and why.

    Attributes:
        workers: Loader processes for the rest of the run (0: decoded in the model's process).
        reason: Why, in a few words.
        decode_ms: Decoding and preprocessing, milliseconds per image in this process (None: not measured).
        model_ms: The model, milliseconds per image (None: not measured).
        cores: CPU cores available.
    """

    workers: int
    reason: str
    decode_ms: float | None = None
    model_ms: float | None = None
    cores: int = 1

    def describe(self) -> str:
        """One line for the run's summary."""
        where = f"{self.workers} loader process(es)" if self.workers else "in the model's process"
        measured = ""
        if self.decode_ms is not None and self.model_ms is not None:
            measured = f"; decode {self.decode_ms:.1f} ms/img vs model {self.model_ms:.1f} ms/img on {self.cores} cores"
        return f"decoding {where} ({self.reason}{measured})"


def choose_decoding(
    decode_seconds: float, model_seconds: float, probed: int, remaining: int, cores: int
) -> DecodeChoice:
    """Decides from the probe batches whether the rest of a run decodes in loader processes.

    In this process an image costs ``decode + model``; with loaders decoding on the cores beside the
    model it costs about ``model + decode / cores`` (the decoding's CPU time spread over all cores), so the
    rest of the run saves ``remaining * decode * (1 - 1 / cores)`` seconds, against
    :data:`LOADER_START_SECONDS` to start the loaders and the stalls of :data:`LOADER_SWITCH_SHARE`.

    Args:
        decode_seconds: Seconds the probe batches took to read and preprocess in this process.
        model_seconds: Seconds the model took on them.
        probed: Images in the probe batches.
        remaining: Images left after them.
        cores: CPU cores available.
    """
    per_image = max(probed, 1)
    decode, model = decode_seconds / per_image, model_seconds / per_image
    measured = {"decode_ms": 1000 * decode, "model_ms": 1000 * model, "cores": cores}
    if remaining == 0:
        return DecodeChoice(0, "the whole run fitted in the timed first batches", **measured)
    if cores < 2:
        return DecodeChoice(0, "one core: nothing to decode beside the model", **measured)
    if model <= 0 or decode <= LOADER_SWITCH_SHARE * model:
        return DecodeChoice(0, f"decoding under {LOADER_SWITCH_SHARE:.0%} of the model's time", **measured)
    saving = remaining * decode * (1 - 1 / cores)
    if saving < LOADER_START_SECONDS:
        return DecodeChoice(0, f"the rest would save {saving:.1f} s, under the loaders' start", **measured)
    return DecodeChoice(cores, f"decoding {decode / model:.0%} of the model's time", **measured)
