"""The Pruner interface and the registry of (strategy, method) pairs.

A pruner receives a ``PruneContext`` (model, adapter, calibration tokens, settings) and returns a
``PrunePlan``. It may edit the model in place while it works (sequential layer-wise methods do);
surgery then applies the plan, which is idempotent on an already-masked model.

Method-specific command-line options are declared on the pruner class (``cli_options``) and
validated by its pydantic ``Options`` model, so adding a method never touches the CLI module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from llmprune.arch import ArchAdapter
from llmprune.capture import LayerwiseRunner
from llmprune.errors import UnknownMethodError, UsageError
from llmprune.plan import PrunePlan

STRATEGIES: tuple[str, ...] = ("uniform", "global", "semi24")

#: Preferred default method per strategy: the first one that is registered wins.
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "uniform": ("minimax", "wanda"),
    "global": ("tyr",),
    "semi24": ("proxsparse", "wanda"),
}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")


@dataclass(frozen=True)
class CliOption:
    """A method-specific command-line option (``--name``), forwarded to the pruner's Options."""

    name: str  # python identifier, e.g. "lora_rank" -> --lora-rank
    type: type
    default: Any
    help: str


@dataclass
class PruneContext:
    """Everything a pruner may use. ``calib`` is ``[N, L]`` token ids or None."""

    model: nn.Module
    adapter: ArchAdapter
    tokenizer: Any
    calib: torch.Tensor | None
    settings: Any  # llmprune.config.PruneSettings
    device: torch.device
    work_dir: Path
    progress: Any = None  # llmprune.progress.Reporter
    extras: dict[str, Any] = field(default_factory=dict)
    #: dtype for the numerics of a layer-wise pass (the model itself may be stored in another).
    compute_dtype: torch.dtype = torch.float32
    offload_dir: Path | None = None

    def layerwise_runner(self) -> LayerwiseRunner:
        """A runner over the calibration samples honouring --device, --dtype and --offload-dir."""
        return LayerwiseRunner(
            self.model, self.adapter, self.calib, self.device, self.settings.batch_size,
            compute_dtype=self.compute_dtype, offload_dir=self.offload_dir,
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
    def of(cls, value: "PrunePlan | PruneResult") -> "PruneResult":
        return value if isinstance(value, PruneResult) else cls(plan=value)


class Pruner(ABC):
    """One pruning method of one strategy."""

    strategy: ClassVar[str]
    method: ClassVar[str]
    summary: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = True
    #: True when --resume is meaningful (the method checkpoints into ctx.work_dir).
    resumable: ClassVar[bool] = False
    #: True for methods that only ever need one layer at a time on the device (Wanda, SparseGPT):
    #: the pipeline then keeps the model on CPU in its storage dtype and the runner moves and
    #: upcasts one layer at a time, so peak memory is the stored model plus one layer's work.
    layerwise: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions
    cli_options: ClassVar[tuple[CliOption, ...]] = ()

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        try:
            self.options = self.Options.model_validate(options or {})
        except Exception as err:  # pydantic ValidationError -> one line
            raise UsageError(f"invalid option for {self.strategy} --method {self.method}: {_first_error(err)}") from err

    @classmethod
    def has_checkpoint(cls, work_dir: Path) -> bool:
        """Whether ``work_dir`` holds a checkpoint ``--resume`` continues from (kept after a failure).

        Resumable methods save their state as ``*_state.pt``; caches alone (teacher logits, top-k)
        are not worth keeping a work folder for.
        """
        return cls.resumable and any(work_dir.glob("*_state.pt"))

    @abstractmethod
    def prune(self, ctx: PruneContext) -> PrunePlan | PruneResult:
        """Decide what to remove; may edit ``ctx.model`` in place."""


def _first_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg')}"
    return str(err)


_REGISTRY: dict[str, dict[str, type[Pruner]]] = {s: {} for s in STRATEGIES}


def register(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator adding a pruner to the registry."""
    _REGISTRY[cls.strategy][cls.method] = cls
    return cls


def methods(strategy: str) -> dict[str, type[Pruner]]:
    """Registered methods of a strategy, by name."""
    _load_builtin()
    return dict(_REGISTRY[strategy])


def default_method(strategy: str) -> str | None:
    known = methods(strategy)
    for name in DEFAULT_METHODS.get(strategy, ()):
        if name in known:
            return name
    return next(iter(known), None)


def get_pruner_class(strategy: str, method: str) -> type[Pruner]:
    known = methods(strategy)
    if method not in known:
        listing = ", ".join(sorted(known)) or "none yet"
        raise UnknownMethodError(f"unknown method {method!r} for {strategy}; known methods: {listing}")
    return known[method]


def cli_options(strategy: str) -> list[CliOption]:
    """Union of the method-specific options of a strategy's methods (first declaration wins)."""
    seen: dict[str, CliOption] = {}
    for cls in methods(strategy).values():
        for opt in cls.cli_options:
            seen.setdefault(opt.name, opt)
    return list(seen.values())


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import llmprune.pruners  # noqa: F401  (registers the built-in methods)


ProgressFn = Callable[[int], None]


def skipped_semi24(ctx: PruneContext, skipped: list[str]) -> dict[str, Any]:
    """Weights whose input width is not a multiple of 4 stay dense: warn, and the report field."""
    if skipped:
        ctx.progress.log(f"[yellow]warning:[/] {len(skipped)} weights have an input width that is not a multiple "
                         f"of 4 and stay dense (first: {skipped[0]})")
    return {"semi24_skipped": skipped}
