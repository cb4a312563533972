"""``--checkpoint-every``: a number of steps (``20``) or a duration (``90s``, ``10m``, ``1h``).

A step count checkpoints at the same steps on every run; a duration bounds the write volume per
hour of training whatever a step costs (the default, ``10m``: at most six checkpoints of the lean
trainable state an hour, a small multiple of it, where a step count of a fast small model would
rewrite it hundreds of times an hour, and one of a slow 70B run once in many hours). Under
torchrun every rank must checkpoint at the same step (the checkpoint's step is the one every rank
resumes from), so a duration is compared with rank 0's clock and rank 0's answer is broadcast.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator

#: The default of every learned method's ``--checkpoint-every`` (see the module docstring).
DEFAULT_EVERY = "10m"
#: Seconds per unit of a duration.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
HELP = (
    "checkpoint for --resume every N steps (e.g. 20) or every duration (90s, 10m, 1h; rank 0's clock "
    f"decides under torchrun); the default {DEFAULT_EVERY} writes at most six lean checkpoints (the trainable "
    "state and its optimiser moments) an hour however fast a step is."
)

_PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", flags=re.IGNORECASE)


@dataclass(frozen=True)
class Every:
    """A parsed ``--checkpoint-every``: exactly one of ``steps`` and ``seconds``."""

    steps: int | None = None
    seconds: float | None = None


def parse_every(value: str | int) -> Every:
    """``20`` → every 20 steps; ``90s`` / ``10m`` / ``1h`` → every so many seconds.

    ``ValueError`` (with the accepted forms) for anything else: ``0``, ``-3``, ``10x``, ``m``, ``1.5``.
    """
    match = None if isinstance(value, bool) else _PATTERN.fullmatch(str(value))  # a bool is no cadence
    if match is not None:
        number, unit = match.group(1), match.group(2).lower()
        if unit:
            seconds = float(number) * UNITS[unit]
            if seconds > 0:
                return Every(seconds=seconds)
        elif "." not in number and int(number) >= 1:
            return Every(steps=int(number))
    raise ValueError(
        f"expected a positive whole number of steps (e.g. 20) or a positive duration (90s, 10m, 1h), got {value!r}"
    )


def normalised(value: str | int) -> str:
    """The validated text of a ``--checkpoint-every`` value (a recipe's YAML integer becomes text)."""
    parse_every(value)
    return str(value).strip().lower()


#: The type of every ``checkpoint_every`` option field: text on the command line, validated and
#: normalised (``10M`` → ``10m``; a recipe's integer ``20`` → ``"20"``).
CheckpointEvery = Annotated[str, BeforeValidator(normalised)]


def monotonic() -> float:
    """The clock durations are measured with (tests replace it; nothing sleeps)."""
    return time.monotonic()


class Cadence:
    """When the training loop checkpoints inside a stage; :meth:`restart` after every checkpoint."""

    def __init__(self, every: Every, clock: Callable[[], float] | None = None) -> None:
        self.every = every
        self._clock = clock
        self.last = self.now()

    def now(self) -> float:
        return self._clock() if self._clock is not None else monotonic()

    def restart(self) -> None:
        """A checkpoint was just written (or a stage started): the next duration counts from now."""
        self.last = self.now()

    def due(self, steps_done: int) -> bool:
        """Whether to checkpoint after ``steps_done`` steps of the stage; the same answer on every
        rank (a duration is rank 0's, broadcast: call it at the same steps on every rank)."""
        if self.every.steps is not None:
            return steps_done % self.every.steps == 0
        assert self.every.seconds is not None  # parse_every sets exactly one
        from llmprune.runtime import distributed  # torch: not needed to declare an option

        return distributed.main_decides(self.now() - self.last >= self.every.seconds)


def checkpoints_per_stage(every: str, steps: int, stage_hours: float) -> int:
    """Checkpoints written inside one stage of ``steps`` steps (the memory model's write volume):
    ``⌊(steps − 1) / N⌋`` every N steps; every duration D, ``⌊stage time / D⌋`` with the stage time
    at the slow end of the predicted range (so an upper bound), at most ``steps − 1``."""
    cadence = parse_every(every)
    if cadence.steps is not None:
        return (steps - 1) // cadence.steps
    assert cadence.seconds is not None
    return min(steps - 1, int(stage_hours * 3600 // cadence.seconds))
