"""Validated settings of the pruning and evaluation commands (pydantic, one place for limits)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from llmprune.errors import UsageError

_Settings = TypeVar("_Settings", bound=BaseModel)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

#: Fraction of decoder-layer linear weights removed when --sparsity is not given.
DEFAULT_SPARSITY = 0.5
#: 2:4 keeps 2 of every 4 weights: the one sparsity ``semi24`` accepts (and its default).
SEMI24_SPARSITY = 0.5


class RunSettings(BaseModel):
    """The settings every command that writes a model shares (pruning and ``recover``), with their
    checks; frozen (resolved values go into a ``model_copy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    output: Path
    calib: str = "auto"
    nsamples: int = 128
    seqlen: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    save_dtype: str = "auto"
    batch_size: int = 8
    overwrite: bool = False
    resume: bool = False
    max_shard_size: str = "5GB"
    offload_dir: Path | None = None
    #: ``--stream-weights``: decoder layers on the host, each copied to the device as it runs.
    stream_weights: Literal["auto", "on", "off"] = "auto"

    @field_validator("nsamples", "batch_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("seqlen")
    @classmethod
    def _seqlen(cls, v: int | None) -> int | None:
        return check_seqlen(v)

    @field_validator("max_shard_size")
    @classmethod
    def _shard_size(cls, v: str) -> str:
        shard_size_bytes(v)
        return v

    @field_validator("dtype", "save_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPE_CHOICES:
            raise ValueError(f"must be one of {', '.join(DTYPE_CHOICES)}, got {v!r}")
        return v


class PruneSettings(RunSettings):
    """Everything a pruning run was asked to do; written verbatim into the report.

    Frozen: the pipeline resolves values (seed under torchrun, seqlen, calibration source) into a
    new copy with ``model_copy(update=...)``, so what was validated is never changed in place.
    """

    strategy: Literal["uniform", "global", "semi24"]
    method: str
    sparsity: float = DEFAULT_SPARSITY  # None (not given) becomes the strategy's default
    attn_unit: Literal["group", "query"] = "group"
    align: int = 1
    align_heads: int = 1
    export_format: Literal["hf", "deci"] = "hf"
    grad_checkpoint: Literal["auto", "on", "off"] = "auto"
    #: ``--gpu-memory`` GiB: the device budget of the pre-flight check and ``--layers-per-stage auto``.
    gpu_memory: float | None = None
    method_options: dict[str, Any] = Field(default_factory=dict)
    #: The recovery stage's options (``--recover``), None without it: validated, with their defaults,
    #: by their owner (llmprune.train.recovery_options.RecoveryOptions) when the run is planned.
    recover: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_sparsity(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sparsity") is None:
            default = SEMI24_SPARSITY if data.get("strategy") == "semi24" else DEFAULT_SPARSITY
            data = {**data, "sparsity": default}
        return data

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float, info: ValidationInfo) -> float:
        if math.isnan(v) or not 0.0 <= v < 1.0:
            raise ValueError(f"--sparsity must be in [0, 1), got {v}")
        if info.data.get("strategy") == "semi24" and v != SEMI24_SPARSITY:
            raise ValueError(f"2:4 always removes half (only {SEMI24_SPARSITY} is accepted), got {v}")
        return v

    @field_validator("align", "align_heads")
    @classmethod
    def _positive_grid(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v


#: The smallest --seqlen: a window needs one token to predict from and one to predict.
MIN_SEQLEN = 2


def check_seqlen(v: int | None) -> int | None:
    """One rule and one message for --seqlen everywhere (settings, loading, data)."""
    if v is not None and v < MIN_SEQLEN:
        raise ValueError(f"must be at least {MIN_SEQLEN}, got {v}")
    return v


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def shard_size_bytes(text: str) -> int:
    """``5GB`` → bytes; the units save_pretrained understands (KB, MB, GB, TB), checked at parse time."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]B)\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"expected a positive size such as 500MB or 5GB (units KB, MB, GB, TB), got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def validated(settings_class: type[_Settings], **values: Any) -> _Settings:
    """Build a settings object, turning validation errors into one-line UsageErrors."""
    try:
        return settings_class(**values)
    except Exception as err:
        errors = getattr(err, "errors", None)
        if callable(errors):
            first = errors()[0]
            loc = "--" + "-".join(str(p) for p in first.get("loc", ())).replace("_", "-")
            msg = str(first.get("msg", "")).removeprefix("Value error, ")
            raise UsageError(f"invalid {loc}: {msg}") from err
        raise UsageError(str(err)) from err


def check_recipe_types(recipe: dict[str, Any], annotations: dict[str, Any], path: Path) -> None:
    """Check each recipe value against its option's type on its own, before it is merged with the
    command line (a value overridden by a flag is still checked: the recipe file is wrong)."""
    from pydantic import TypeAdapter, ValidationError

    # YAML reads `checkpoint_every: 20` or `layers_per_stage: 4` as a number; on the command line
    # these text options are the same characters, so a number is accepted as its text.
    as_text = ConfigDict(coerce_numbers_to_str=True)
    for key, value in recipe.items():
        if key not in annotations:
            continue
        try:
            TypeAdapter(annotations[key], config=as_text).validate_python(value)
        except ValidationError as err:
            msg = str(err.errors()[0].get("msg", "")).removeprefix("Value error, ")
            raise UsageError(f"--config {path}: {key}: {msg} (got {value!r})") from err


def load_recipe(path: Path, allowed: set[str]) -> dict[str, Any]:
    """Read a YAML/JSON recipe; keys are option names (dashes or underscores)."""
    import json

    import yaml

    if not path.is_file():
        raise UsageError(f"--config file not found: {path}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise UsageError(f"--config {path} is not valid YAML/JSON: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must be a mapping of option names to values")
    recipe = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(recipe) - allowed)
    if unknown:
        raise UsageError(
            f"--config {path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    return recipe
