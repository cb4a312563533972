"""GGUF input: a ``.gguf`` file (llama.cpp's format) as the model of any command.

transformers (with the ``gguf`` package and ``accelerate``: the optional ``gguf`` extra) reads the
file's metadata as a config and dequantizes its tensors into an ordinary model. That model still
carries the quantizer transformers loaded it with, so :func:`load_model` rebuilds a plain model of
the same config (no ``quantization_config``) around the dequantized tensors: it prunes, saves and
exports like a model read from a folder. The tokenizer comes from the file too.

:func:`read_header` reads the metadata and the tensor table only (the ``gguf`` package memory-maps
the file; no tensor data is read), which is all ``--estimate`` and ``inspect`` need; it is also the
check that turns a truncated or foreign file into one line. :func:`describe` is what a report
records about the input: the file, its sha256, its quantization type and its tensor types.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmprune.errors import MissingDependencyError, ModelLoadError, UnsupportedArchitectureError
from llmprune.model.arch import SUPPORTED_MODEL_TYPES, family_for_model_type

SUFFIX = ".gguf"
#: What ``pip install 'llmprune[gguf]'`` adds; transformers needs both to read a GGUF file.
REQUIRED = ("gguf", "accelerate")
#: GGUF's float tensor types and the torch dtypes they hold.
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
#: llama.cpp's tensor names (``blk.N.`` prefix removed) → the Llama layout's module names; the
#: families llmprune supports all use it (qwen3 adds the q/k norms).
GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def is_gguf(name: str | Path) -> bool:
    """True when ``name`` names a GGUF file (by its suffix; a folder is never one)."""
    path = Path(name).expanduser()
    return path.suffix.lower() == SUFFIX and not path.is_dir()


def require() -> None:
    """One line naming the extra when the packages transformers needs for GGUF are missing."""
    missing = _missing()
    if missing:
        raise MissingDependencyError(f"reading a GGUF file needs {' and '.join(missing)}: pip install 'llmprune[gguf]'")


def _missing() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class GgufHeader:
    """A GGUF file's metadata and tensor table (no tensor data)."""

    path: Path
    architecture: str
    file_type: str | None  # general.file_type, e.g. "Q4_1" (None when the file does not say)
    tensor_types: dict[str, str] = field(default_factory=dict)  # tensor name → GGML type name
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tensor name → torch-order shape

    @property
    def type_counts(self) -> dict[str, int]:
        return dict(Counter(self.tensor_types.values()).most_common())

    @property
    def quantization(self) -> str:
        """The file's quantization type: ``general.file_type``, else the commonest type of its matrices."""
        if self.file_type:
            return self.file_type
        matrices = [t for name, t in self.tensor_types.items() if len(self.shapes.get(name, ())) == 2]
        return Counter(matrices or list(self.tensor_types.values())).most_common(1)[0][0]

    @property
    def float_dtype(self) -> torch.dtype | None:
        """The dtype of a file that holds only float tensors (its half type when it mixes); None when
        any tensor is quantized."""
        types = set(self.tensor_types.values())
        if not types or not types <= set(FLOAT_TYPES):
            return None
        for name in ("BF16", "F16", "F32"):
            if name in types:
                return FLOAT_TYPES[name]
        return None

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tensor shapes under their transformers names (names outside the Llama layout kept)."""
        out: dict[str, tuple[int, ...]] = {}
        for name, shape in self.shapes.items():
            out[hf_name(name)] = shape
        return out


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` → ``model.layers.3.self_attn.q_proj.weight`` (unknown names unchanged)."""
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot:
        return gguf_name
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in GGUF_TO_HF:
        return f"model.layers.{parts[1]}.{GGUF_TO_HF[parts[2]]}.{suffix}"
    if stem in GGUF_TO_HF and not stem.startswith(("attn", "ffn")):
        return f"{GGUF_TO_HF[stem]}.{suffix}"
    return gguf_name


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _file(name: str | Path) -> Path:
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(f"GGUF file not found: {name}")
    if not path.is_file():
        raise ModelLoadError(f"not a GGUF file: {name}")
    return path


def read_header(name: str | Path) -> GgufHeader:
    """The metadata and tensor table of a GGUF file; a file that is not a complete GGUF (bad magic,
    truncated metadata, tensor data past the end of the file) is one ``ModelLoadError`` line."""
    path = _file(name)
    require()
    from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path), "r")
        fields = reader.fields

        def scalar(key: str) -> Any:
            f = fields.get(key)
            if f is None or not f.data:
                return None
            value = f.parts[f.data[0]]
            return bytes(value).decode("utf-8") if f.types and f.types[0].name == "STRING" else value.tolist()[0]

        architecture = scalar("general.architecture")
        file_type = scalar("general.file_type")
        types: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        end = path.stat().st_size
        for tensor in reader.tensors:
            types[tensor.name] = GGMLQuantizationType(int(tensor.tensor_type)).name
            shapes[tensor.name] = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            if tensor.data_offset + int(tensor.n_bytes) > end:
                raise ValueError(f"tensor {tensor.name} ends past the end of the file")
    except (MissingDependencyError, ModelLoadError):
        raise
    except Exception as err:  # ValueError, struct/numpy errors, OSError: truncated, corrupt or not GGUF
        raise ModelLoadError(f"cannot read the GGUF file {name}: {_first_line(err)}") from err
    if not isinstance(architecture, str):
        raise ModelLoadError(f"cannot read the GGUF file {name}: no general.architecture in its metadata")
    if not shapes:
        raise ModelLoadError(f"cannot read the GGUF file {name}: it holds no tensors")
    kind = None
    if file_type is not None:
        try:
            kind = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            kind = str(file_type)
    return GgufHeader(path, architecture, kind, types, shapes)


def check_architecture(header: GgufHeader, name: str | Path) -> None:
    """Refuse, before transformers reads the file, an architecture llmprune has no family for."""
    if family_for_model_type(header.architecture) is None:
        raise UnsupportedArchitectureError(
            f"{name} holds a {header.architecture!r} model (GGUF general.architecture); llmprune reads GGUF files "
            f"of: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def load_config(name: str | Path) -> Any:
    """The transformers config from the file's metadata (header only), without quantization keys;
    its dtype is the file's float type, or none when the file is quantized."""
    header = read_header(name)
    check_architecture(header, name)
    from transformers import AutoConfig

    path = header.path
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        if "not supported" in str(err):
            raise UnsupportedArchitectureError(f"{name}: {_first_line(err)}") from err
        raise ModelLoadError(f"cannot read the config of the GGUF file {name}: {_first_line(err)}") from err
    return plain_config(config, header.float_dtype)


def plain_config(config: Any, dtype: torch.dtype | None) -> Any:
    """A copy of ``config`` as a folder's would be: no quantization, no name from the file's metadata."""
    config = copy.deepcopy(config)
    for key in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = dtype
    return config


def load_model(name: str | Path, dtype: torch.dtype) -> Any:
    """The file's model, dequantized into ``dtype``, as a plain transformers model (saves and exports
    like any other): the dequantized tensors are moved (not copied) into a model built from the
    config on the meta device."""
    config = load_config(name)
    path = Path(name).expanduser()
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    try:  # transformers >= 5.x with packed GGUF layers: ask for plain dequantized weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older releases always dequantize
        pass
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' own tqdm bar; llmprune draws its own
            loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **kwargs)
    except Exception as err:
        raise ModelLoadError(f"cannot load model weights from the GGUF file {name}: {_first_line(err)}") from err
    return plain_model(loaded, plain_config(config, dtype), dtype)


def plain_model(loaded: Any, config: Any, dtype: torch.dtype) -> Any:
    """``loaded``'s parameters and buffers in a model built from ``config`` (no quantizer attached)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = plain.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            "the GGUF file's tensors do not match its config: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    for full, buffer in loaded.named_buffers():  # non-persistent buffers (rotary frequencies)
        owner, _, attr = full.rpartition(".")
        plain.get_submodule(owner)._buffers[attr] = buffer
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    meta = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if meta:
        raise ModelLoadError(f"the GGUF file left {meta[0]} (and {len(meta) - 1} more) without values")
    return plain


def load_tokenizer(name: str | Path) -> Any:
    """The tokenizer stored in the file."""
    path = _file(name)
    require()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as err:
        raise ModelLoadError(f"cannot load the tokenizer of the GGUF file {name}: {_first_line(err)}") from err


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(name: str | Path, header: GgufHeader | None = None, with_sha256: bool = True) -> dict[str, Any]:
    """What a report records about a GGUF input."""
    header = header or read_header(name)
    info: dict[str, Any] = {
        "format": "gguf",
        "file": str(header.path),
        "architecture": header.architecture,
        "quantization": header.quantization,
        "tensor_types": header.type_counts,
    }
    if with_sha256:
        info["sha256"] = sha256(header.path)
    return info
