"""The Pruner interface: a declared method (``registry.Method``) with its ``prune``.

A pruner receives a ``PruneContext`` (model, adapter, calibration tokens, settings) and returns a
``PrunePlan``. It may edit the model in place while it works (sequential layer-wise methods do);
surgery then applies the plan, which is idempotent on an already-masked model.

What the command line needs of a method (names, summary, ``Options``, behaviour flags) is declared
in a torch-free module, ``llmprune/pruners/<name>_options.py`` (see :mod:`llmprune.pruners.registry`),
so building the commands imports no torch; the pruner subclasses its declaration. The registry's
functions are re-exported here for the code that runs a method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmprune.data.capture import LayerwiseRunner
from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import PrunePlan
from llmprune.pruners import registry
from llmprune.pruners.registry import (
    _REGISTRY,
    DEFAULT_METHODS,
    STRATEGIES,
    Method,
    MethodOption,
    NoOptions,
    cli_options,
    default_method,
    methods,
    option_defaults,
    register,
)

__all__ = [
    "_REGISTRY",
    "DEFAULT_METHODS",
    "STRATEGIES",
    "MethodOption",
    "NoOptions",
    "PruneContext",
    "PruneResult",
    "Pruner",
    "cli_options",
    "default_method",
    "get_pruner_class",
    "methods",
    "option_defaults",
    "register",
    "skipped_semi24",
]


@dataclass
class PruneContext:
    """Everything a pruner may use. ``calib`` is ``[N, L]`` token ids or None."""

    model: nn.Module
    adapter: ArchAdapter
    tokenizer: Any
    calib: torch.Tensor | None
    settings: Any  # llmprune.settings.PruneSettings
    device: torch.device
    work_dir: Path
    progress: Any = None  # llmprune.runtime.progress.Reporter
    extras: dict[str, Any] = field(default_factory=dict)
    #: dtype for the numerics of a layer-wise pass (the model itself may be stored in another).
    compute_dtype: torch.dtype = torch.float32
    offload_dir: Path | None = None
    #: The decoder layers' weight stream (llmprune.model.streaming) when they wait on the host, else None.
    stream: Any = None

    def layerwise_runner(self) -> LayerwiseRunner:
        """A runner over the calibration samples honouring --device, --dtype and --offload-dir."""
        assert self.calib is not None, "a layer-wise runner needs calibration samples"
        return LayerwiseRunner(
            self.model,
            self.adapter,
            self.calib,
            self.device,
            self.settings.batch_size,
            compute_dtype=self.compute_dtype,
            offload_dir=self.offload_dir,
        )

    def for_each_layer(
        self, process: Callable[[int, nn.Module, LayerwiseRunner | None], None], calibrated: bool, description: str
    ) -> None:
        """Call ``process(i, layer, runner)`` for every decoder layer in order, with a progress bar.

        With ``calibrated`` the layer-wise runner walks the layers (so ``process`` can collect
        statistics and later layers see its edits); otherwise a plain loop passes ``runner=None``.
        """
        layers = self.adapter.layers(self.model)
        task = self.progress.task(description, total=len(layers))
        if calibrated:
            runner = self.layerwise_runner()
            runner.run(lambda i, layer: process(i, layer, runner), progress=task)
            return
        for i, layer in enumerate(layers):
            process(i, layer, None)
            task(i)


@dataclass
class PruneResult:
    """What a pruner hands back: the plan, its own report fields, and files for OUT.

    ``report`` is merged into ``llmprune_report.json`` (keys the method owns); ``files`` maps a
    file name in OUT to a ``Path`` (copied) or a JSON-able payload (traces, plots, search logs).
    A pruner may also return a bare ``PrunePlan`` when it has nothing else to say.
    """

    plan: PrunePlan
    report: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: PrunePlan | PruneResult) -> PruneResult:
        return value if isinstance(value, PruneResult) else cls(plan=value)


class Pruner(Method, ABC):
    """One pruning method of one strategy: its declaration (a ``registry.Method`` subclass, listed
    after this class among the bases) and the work."""

    @abstractmethod
    def prune(self, ctx: PruneContext) -> PrunePlan | PruneResult:
        """Decide what to remove; may edit ``ctx.model`` in place."""


def get_pruner_class(strategy: str, method: str) -> type[Pruner]:
    """The implementation of ``strategy --method method`` (imported now)."""
    cls: type[Pruner] = registry.get_pruner_class(strategy, method)
    return cls


ProgressFn = Callable[[int], None]


def skipped_semi24(ctx: PruneContext, skipped: list[str]) -> dict[str, Any]:
    """Weights whose input width is not a multiple of 4 stay dense: warn, and the report field."""
    if skipped:
        ctx.progress.log(
            f"[yellow]warning:[/] {len(skipped)} weights have an input width that is not a multiple "
            f"of 4 and stay dense (first: {skipped[0]})"
        )
    return {"semi24_skipped": skipped}
