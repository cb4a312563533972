"""The Pruner interface and the registry of (strategy, method) pairs.

A pruner receives a ``PruneContext`` (model, adapter, calibration tokens, settings) and returns a
``PrunePlan``. It may edit the model in place while it works (sequential layer-wise methods do);
surgery then applies the plan, which is idempotent on an already-masked model.

Method-specific options are declared once, as the fields of the pruner's pydantic ``Options``
model (type, default, limits, ``Field(description=...)``); the command-line flags are generated from
them (``cli_options``), so adding a method never touches the CLI module.
"""

from __future__ import annotations

import types
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from llmprune.core.memory_model import Request, Resources, layerwise_resources
from llmprune.data.capture import LayerwiseRunner
from llmprune.errors import UnknownMethodError, UsageError
from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import PrunePlan

STRATEGIES: tuple[str, ...] = ("uniform", "global", "semi24")

#: Preferred default method per strategy: the first one that is registered wins.
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "uniform": ("minimax", "wanda"),
    "global": ("tyr",),
    "semi24": ("proxsparse", "wanda"),
}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodOption:
    """One method-specific flag of a strategy, generated from the ``Options`` fields declaring it.

    Several methods of a strategy may declare the same name: their flag types must agree, their
    defaults may differ (``defaults`` keeps each method's own, applied when the flag is not given).
    """

    name: str  # python identifier, e.g. "lora_rank" -> --lora-rank
    type: type  # bool, int, float or str
    help: str
    defaults: dict[str, Any]  # method -> its default, in registration order

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.defaults)

    @property
    def shared_default(self) -> bool:
        """True when every declaring method has the same default (the flag can show it)."""
        values = list(self.defaults.values())
        return all(v == values[0] and type(v) is type(values[0]) for v in values)

    @property
    def default(self) -> Any:
        """The flag's own default: the common default, or None when the methods disagree."""
        return next(iter(self.defaults.values())) if self.shared_default else None


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
    #: The method's options (pydantic): each field becomes a ``--flag`` of the strategy's command,
    #: with its type, default and ``Field(description=...)`` as the help text.
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: The setting ``--estimate`` and the pre-flight check name when this device term is the largest.
    advice: ClassVar[dict[str, str]] = {}

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

    def check(self, settings: Any, geometry: Any) -> None:
        """Refuse options that cannot work on this model before any weight is read (the pipeline
        calls it with the config's geometry); raise a UsageError naming the option. Default: none."""

    @classmethod
    def resources(cls, request: Request) -> Resources:
        """What a run of this method costs (``--estimate``, the pre-flight check, ``--stream-weights
        auto``): its device terms, host memory, disk, FLOPs. Default: a one-shot layer-wise pass
        (the model on the host, one layer on the device, no Hessians)."""
        return layerwise_resources(request, hessians=False)

    @abstractmethod
    def prune(self, ctx: PruneContext) -> PrunePlan | PruneResult:
        """Decide what to remove; may edit ``ctx.model`` in place."""


def _first_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {str(first.get('msg', '')).removeprefix('Value error, ')}"
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


def option_defaults(cls: type[Pruner]) -> dict[str, Any]:
    """Every option of a method with its default, in declaration order."""
    return {name: f.get_default(call_default_factory=True) for name, f in cls.Options.model_fields.items()}


def _flag_type(annotation: Any, where: str) -> type:
    """The command-line type of an option field: bool, int, float or str (``X | None`` -> X, Literal -> str)."""
    if get_origin(annotation) is Literal:
        kinds = {type(a) for a in get_args(annotation)}
        if len(kinds) == 1:
            return kinds.pop()
    elif get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _flag_type(args[0], where)
    elif annotation in (bool, int, float, str):
        return annotation
    raise TypeError(
        f"{where}: option type {annotation!r} cannot be a command-line flag (use bool, int, float, str, "
        "a Literal of one of them, or one of them | None)"
    )


def cli_options(strategy: str) -> list[MethodOption]:
    """The method-specific flags of a strategy, generated from its methods' ``Options`` fields.

    A name declared by several methods becomes one flag whose help lists each method's text; its
    type must be the same everywhere (a ``TypeError`` otherwise: a programming error).
    """
    kinds: dict[str, type] = {}
    helps: dict[str, dict[str, str]] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for method, cls in methods(strategy).items():
        for name, f in cls.Options.model_fields.items():
            where = f"{strategy} --method {method} option {name!r}"
            kind = _flag_type(f.annotation, where)
            if not f.description:
                raise TypeError(f"{where} has no Field(description=...) (it is the --help text)")
            if kinds.setdefault(name, kind) is not kind:
                raise TypeError(
                    f"{where} is a {kind.__name__}, but another method of {strategy} declares it "
                    f"as a {kinds[name].__name__}: one flag cannot have both types"
                )
            helps.setdefault(name, {})[method] = f.description
            defaults.setdefault(name, {})[method] = f.get_default(call_default_factory=True)
    result = []
    for name, kind in kinds.items():
        by_text: dict[str, list[str]] = {}
        for method, text in helps[name].items():
            by_text.setdefault(text, []).append(method)
        text = " ".join(f"{', '.join(ms)}: {t}" for t, ms in by_text.items())
        result.append(MethodOption(name=name, type=kind, help=text, defaults=defaults[name]))
    return result


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
        ctx.progress.log(
            f"[yellow]warning:[/] {len(skipped)} weights have an input width that is not a multiple "
            f"of 4 and stay dense (first: {skipped[0]})"
        )
    return {"semi24_skipped": skipped}
