"""Which decoded frames of a video are kept: the original 2-per-second rule and its alternatives."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from vcf.errors import VcfError


@dataclass(frozen=True)
class Sampling:
    """A frame selection rule.

    Exactly one of ``fps``, ``every`` and ``num_frames`` may be set; none means the original
    video-cnn-feat rule: with ``F = int(container fps)``, keep frame ``n`` when ``n % F == 0`` or
    ``n % F == F // 2`` (two frames a second).

    Attributes:
        fps: Keep the first frame at or after each ``k / fps`` seconds.
        every: Keep every ``every``-th decoded frame (0, N, 2N, ...).
        num_frames: Keep this many frames spread uniformly over the video.
    """

    fps: float | None = None
    every: int | None = None
    num_frames: int | None = None

    def __post_init__(self) -> None:
        chosen = [name for name in ("fps", "every", "num_frames") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise VcfError(
                f"choose one frame selection option, not {' and '.join('--' + c.replace('_', '-') for c in chosen)}"
            )
        if self.fps is not None and not self.fps > 0:
            raise VcfError("--fps must be > 0")
        if self.every is not None and self.every < 1:
            raise VcfError("--every must be >= 1")
        if self.num_frames is not None and self.num_frames < 1:
            raise VcfError("--num-frames must be >= 1")

    @property
    def rule(self) -> str:
        """A short name of the rule, for manifests and messages."""
        if self.fps is not None:
            return f"fps={self.fps:g}"
        if self.every is not None:
            return f"every={self.every}"
        if self.num_frames is not None:
            return f"num_frames={self.num_frames}"
        return "two_per_second"

    @property
    def needs_frame_count(self) -> bool:
        return self.num_frames is not None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, **{k: v for k, v in asdict(self).items() if v is not None}}

    def selector(self, fps: float, frame_count: int) -> FrameSelector:
        """A selector for one video with the given container fps and (estimated) frame count."""
        return FrameSelector(self, fps, frame_count)


class FrameSelector:
    """Decides frame by frame, in decoding order, whether to keep decoded frame ``n``."""

    def __init__(self, sampling: Sampling, fps: float, frame_count: int) -> None:
        self._sampling = sampling
        self._fps = fps
        self._int_fps = int(fps)
        self._next_time_slot = 0
        self._targets: list[int] = []
        if sampling.num_frames is not None:
            count = max(frame_count, 0)
            k = sampling.num_frames
            # The centre of each of k equal segments; duplicates collapse when the video is short.
            self._targets = sorted({min(count - 1, int((i + 0.5) * count / k)) for i in range(k)}) if count else []
        self._target_set = set(self._targets)

    @property
    def last_needed(self) -> int | None:
        """The last frame index that can be kept, when known (decoding may stop after it)."""
        if self._sampling.num_frames is not None:
            return self._targets[-1] if self._targets else -1
        return None

    def keep(self, n: int) -> bool:
        """True when decoded frame ``n`` is kept. Must be called for n = 0, 1, 2, ... in order."""
        sampling = self._sampling
        if sampling.every is not None:
            return n % sampling.every == 0
        if sampling.num_frames is not None:
            return n in self._target_set
        if sampling.fps is not None:
            timestamp = n / self._fps
            # A tiny tolerance so that a frame exactly on a slot (e.g. 1/3 s) is not missed by rounding.
            if timestamp * sampling.fps + 1e-6 >= self._next_time_slot:
                self._next_time_slot = math.floor(timestamp * sampling.fps + 1e-6) + 1
                return True
            return False
        f = self._int_fps
        return n % f == 0 or n % f == f // 2
