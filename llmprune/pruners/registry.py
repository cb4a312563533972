"""The method table, importable without torch: what the command line needs to know of a method.

Each method is declared in a torch-free module ``llmprune/pruners/<name>_options.py``: a
:class:`Method` subclass decorated with :func:`register`, holding its strategy and name, its
one-line summary, its pydantic ``Options`` (each field becomes a ``--flag``, ``Field(description=...)``
is the ``--help`` text), its behaviour flags, and ``implementation``, the ``"module:Class"`` of the
``Pruner`` that subclasses the declaration and does the work. Building the commands, ``--help``,
``--version`` and usage errors read only this table; :func:`get_pruner_class` imports the
implementation (and torch) when a run needs it.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from llmprune.errors import UnknownMethodError, UsageError

if TYPE_CHECKING:
    from llmprune.core.memory_model import Request, Resources

STRATEGIES: tuple[str, ...] = ("uniform", "global", "semi24")

#: Preferred default method per strategy: the first one that is registered wins.
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "uniform": ("minimax", "wanda"),
    "global": ("tyr",),
    "semi24": ("proxsparse", "wanda"),
}

#: Declaration modules end with this: the registry imports every such module of ``llmprune.pruners``.
DECLARATIONS = "_options"


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method:
    """One pruning method of one strategy, as declared (no torch); ``Pruner`` adds ``prune``."""

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
    #: ``"module:Class"`` of the ``Pruner`` implementing this declaration (a subclass of it);
    #: empty when the registered class is the implementation itself.
    implementation: ClassVar[str] = ""

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
        from llmprune.core.memory_model import layerwise_resources

        return layerwise_resources(request, hessians=False)


def _first_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {str(first.get('msg', '')).removeprefix('Value error, ')}"
    return str(err)


_REGISTRY: dict[str, dict[str, type[Method]]] = {s: {} for s in STRATEGIES}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method's declaration to the table."""
    _REGISTRY[cls.strategy][cls.method] = cls
    return cls


def methods(strategy: str) -> dict[str, type[Method]]:
    """Declared methods of a strategy, by name (their implementations are not imported)."""
    _load_builtin()
    return dict(_REGISTRY[strategy])


def default_method(strategy: str) -> str | None:
    known = methods(strategy)
    for name in DEFAULT_METHODS.get(strategy, ()):
        if name in known:
            return name
    return next(iter(known), None)


def declared(strategy: str, method: str) -> type[Method]:
    """The declaration of ``strategy --method method`` (an unknown method is a usage error)."""
    known = methods(strategy)
    if method not in known:
        listing = ", ".join(sorted(known)) or "none yet"
        raise UnknownMethodError(f"unknown method {method!r} for {strategy}; known methods: {listing}")
    return known[method]


def get_pruner_class(strategy: str, method: str) -> Any:
    """The ``Pruner`` class of a method, its implementation module imported now (with torch).

    Typed ``Any`` here so this module names no torch-importing type; ``pruners.base.get_pruner_class``
    is the same function typed ``type[Pruner]``.
    """
    decl = declared(strategy, method)
    if not decl.implementation:
        return decl
    module, _, name = decl.implementation.partition(":")
    impl = getattr(importlib.import_module(module), name)
    if not (isinstance(impl, type) and issubclass(impl, decl)):
        raise TypeError(f"{decl.implementation} does not subclass the declaration of {strategy} --method {method}")
    return impl


def option_defaults(cls: type[Method]) -> dict[str, Any]:
    """Every option of a method with its default, in declaration order."""
    return {name: f.get_default(call_default_factory=True) for name, f in cls.Options.model_fields.items()}


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


def flag_type(annotation: Any, where: str) -> type:
    """The command-line type of an option field: bool, int, float or str (``X | None`` -> X, Literal -> str)."""
    if get_origin(annotation) is Literal:
        kinds = {type(a) for a in get_args(annotation)}
        if len(kinds) == 1:
            return kinds.pop()
    elif get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return flag_type(args[0], where)
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
            kind = flag_type(f.annotation, where)
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
    """Import every declaration module (``llmprune/pruners/*_options.py``): no implementation, no torch."""
    global _loaded
    if not _loaded:
        _loaded = True
        import llmprune.pruners as package

        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith(DECLARATIONS):
                importlib.import_module(f"{package.__name__}.{module.name}")
