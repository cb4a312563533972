"""Load a causal LM and its tokenizer from a hub id, a local folder or a GGUF file (:mod:`llmprune.model.gguf`),
with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from llmprune.errors import ModelLoadError, UnsupportedArchitectureError, UsageError
from llmprune.model import gguf
from llmprune.model.arch import ArchAdapter
from llmprune.model.completeness import check_loading_info
from llmprune.model.hub import require_hub
from llmprune.settings import check_seqlen

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else must be a valid torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UsageError(f"invalid --device {device!r}: {err}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device} requested but MPS is not available")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device}: choose auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(dtype: str, device: torch.device, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
    """``auto``: float32 on CPU (calibration math is float32 anyway), the checkpoint's dtype on GPU."""
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        return checkpoint_dtype or torch.bfloat16
    if dtype not in DTYPES:
        raise UsageError(f"invalid dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype the checkpoint was saved in, from its config."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        return DTYPES.get(value)
    return None


DEFAULT_SEQLEN = 2048


def resolve_seqlen(requested: int | None, config: Any) -> int:
    """``None`` → min(2048, context); a request beyond the model's context is an error."""
    context = getattr(config, "max_position_embeddings", None) or DEFAULT_SEQLEN
    if requested is None:
        return min(DEFAULT_SEQLEN, context)
    try:
        check_seqlen(requested)
    except ValueError as err:
        raise UsageError(f"invalid --seqlen: {err}") from err
    if requested > context:
        raise UsageError(f"--seqlen {requested} exceeds the model's context of {context} tokens")
    return requested


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and info logs; llmprune draws its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_config(name: str) -> Any:
    """Load and check a model config; raises one-line errors for missing or bad models."""
    from transformers import AutoConfig

    quiet_transformers()
    if gguf.is_gguf(name):  # a llama.cpp file: the config from its metadata (header only)
        config = gguf.load_config(name)
        ArchAdapter.for_config(config)
        return config
    path = Path(name).expanduser()
    if _looks_local(name):
        if not path.exists():
            raise ModelLoadError(f"model folder not found: {name}")
        if not path.is_dir():
            raise ModelLoadError(f"model path is not a folder: {name}")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no config.json in model folder {name}")
        from llmprune.model.deci import MODEL_TYPE as DECI_MODEL_TYPE

        model_type = _config_model_type(path)
        if model_type == DECI_MODEL_TYPE:
            raise UnsupportedArchitectureError(
                f"{name} is a DeciLM (--export-format deci) folder, for vLLM and llama.cpp; llmprune reads "
                "the default hf export of the same model (load this one with trust_remote_code=True)"
            )
        from llmprune.model.hetero import MODEL_TYPE_PREFIX, family_of, register_family

        if model_type is not None and model_type.startswith(MODEL_TYPE_PREFIX):
            # A heterogeneous-width output of `llmprune global` loads without remote code. Only its
            # own family: registering every family imports every family's modeling code (seconds,
            # and --estimate reads only the config); `import llmprune` registers any other lazily.
            register_family(family_of(model_type))
    else:
        require_hub(name)  # one quick connection instead of half a minute of retries
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else name)
    except Exception as err:
        raise ModelLoadError(f"cannot load model config {name!r}: {_first_line(err)}") from err
    ArchAdapter.for_config(config)  # fail early, before reading weights
    return config


def load_model(name: str, device: torch.device, dtype: torch.dtype):
    """Load model (eval mode, on ``device`` in ``dtype``), its adapter and its tokenizer."""
    from transformers import AutoModelForCausalLM

    config = load_config(name)
    adapter = ArchAdapter.for_config(config)
    source = str(Path(name).expanduser()) if Path(name).expanduser().exists() else name
    if gguf.is_gguf(name):
        model = gguf.load_model(name, dtype)
        model.to(device).eval()
        model.config.use_cache = False
        return model, adapter, load_tokenizer(source)
    try:
        # With output_loading_info the call returns (model, info); the stubs only know the model.
        # ignore_mismatched_sizes: a tensor of the wrong shape lands in info (one line of ours
        # below) instead of a many-line RuntimeError; such a model is never used.
        model, info = cast(
            "tuple[Any, dict[str, Any]]",
            AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
            ),
        )
    except Exception as err:
        raise ModelLoadError(f"cannot load model weights from {name!r}: {_first_line(err)}") from err
    check_loading_info(info, model, f"model {name!r}")
    model.to(device).eval()
    model.config.use_cache = False
    tokenizer = load_tokenizer(source)
    return model, adapter, tokenizer


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    if gguf.is_gguf(source):
        return gguf.load_tokenizer(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:
        raise ModelLoadError(f"cannot load tokenizer from {source!r}: {_first_line(err)}") from err


def describe_input(name: str) -> dict[str, Any] | None:
    """What a report records about an input that is not a folder (a GGUF file: sha256 and
    quantization type); None for a folder or hub id, which the settings' ``model`` describes."""
    return gguf.describe(name) if gguf.is_gguf(name) else None


def _config_model_type(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # AutoConfig reports unreadable configs


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def save_dtype_for(settings: Any, config: Any, device: torch.device) -> torch.dtype:
    """The dtype an output is written in: ``--save-dtype``, else the checkpoint's (float32 when its
    config names none)."""
    if settings.save_dtype != "auto":
        return resolve_dtype(settings.save_dtype, device, None)
    return checkpoint_dtype(config) or torch.float32
