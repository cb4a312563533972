"""``llmprune inspect``: describe a model folder or a GGUF file without loading its weights.

Reads the config, the llmprune plan/report/sidecar, and the safetensors headers (shapes only),
and checks on the meta device whether the config instantiates with plain transformers. A GGUF
file: its metadata and tensor table (:mod:`llmprune.model.gguf`), with its quantization type.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmprune.errors import ModelLoadError, UnsupportedArchitectureError
from llmprune.export.report import PruneReport
from llmprune.export.save import SPARSITY_FILE
from llmprune.model import gguf
from llmprune.model.arch import ArchAdapter, family_named
from llmprune.model.completeness import check_shapes, expected_shapes, expected_tensors, missing_tensor_error
from llmprune.model.plan import PLAN_FILE


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of the folder, None when absent; one line naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err})") from err


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in the folder's safetensors files (headers only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as err:  # SafetensorError, OSError: truncated, corrupt or unreadable
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"cannot read the safetensors header of {file}: {first}") from err
    return shapes


def check_complete(folder: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise when the headers lack a tensor the config's model needs (it would load as random values)
    or hold one of another shape than the config implies."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception:  # reported by loads_without_custom_code
        return
    expected = expected_shapes(config)
    if expected is None:
        return
    if set(expected) - set(shapes):
        raise missing_tensor_error(set(expected) - set(shapes), f"model folder {folder}")
    check_shapes(shapes, expected, f"model folder {folder}")


def loads_without_custom_code(folder: Path) -> tuple[bool, str]:
    """Whether plain ``AutoModelForCausalLM`` can build this config (checked on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config_data = _read_json(folder / "config.json") or {}
    if config_data.get("model_type") == "nemotron-nas":
        return False, "DeciLM format: vLLM, llama.cpp's converter, or transformers with trust_remote_code=True"
    if "auto_map" in config_data:
        return False, "needs trust_remote_code=True (or `import llmprune` first)"
    try:
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as err:  # any failure means "not without help"
        return (
            False,
            f"plain transformers cannot build it: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
        )
    return True, f"plain AutoModelForCausalLM ({config.model_type})"


def _adapter(config: dict[str, Any]) -> ArchAdapter:
    """The adapter that names the folder's projections and knows its head geometry: its family's,
    the family of a heterogeneous-width export, or the shared Llama layout for other model types
    (e.g. DeciLM exports), which then reports what matches it."""
    try:
        return ArchAdapter.for_config(SimpleNamespace(**config))
    except UnsupportedArchitectureError:
        pass
    from llmprune.model.hetero import family_of

    try:  # a heterogeneous-width export names its family in its model type
        family = family_named(family_of(str(config.get("model_type"))))
    except ValueError:
        family = None
    return ArchAdapter(family) if family is not None else ArchAdapter.generic()


def inspect_folder(path: str) -> dict[str, Any]:
    if gguf.is_gguf(path):
        return inspect_gguf(path)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"not a model folder: {path}")
    config = _read_json(folder / "config.json")
    if config is None:
        raise ModelLoadError(f"no config.json in {path}")
    shapes = tensor_shapes(folder)
    if not shapes:
        raise ModelLoadError(f"no safetensors weights in {path}")
    check_complete(folder, shapes)
    report = PruneReport.load(folder)
    sidecar = _read_json(folder / SPARSITY_FILE)
    ok, how = loads_without_custom_code(folder)
    info = describe(folder, config, shapes, report, sidecar)
    info.update(has_plan=(folder / PLAN_FILE).is_file(), loads_without_custom_code=ok, loading=how)
    return info


def inspect_gguf(path: str) -> dict[str, Any]:
    """A GGUF file: its metadata as a config, its tensor table under transformers' names (no tensor
    data is read), its quantization; never an llmprune output."""
    from llmprune.model.loading import load_config

    header = gguf.read_header(path)
    config = load_config(path)
    shapes = header.hf_shapes()
    expected = expected_tensors(config)
    if expected is not None and expected - set(shapes):
        raise missing_tensor_error(expected - set(shapes), f"GGUF file {path}")
    info = describe(Path(path).expanduser(), config.to_dict(), shapes, None, None)
    info.update(
        has_plan=False,
        loads_without_custom_code=True,
        loading=f"transformers from_pretrained(gguf_file=...) dequantizes it ({config.model_type})",
        gguf=gguf.describe(path, header, with_sha256=False),
    )
    return info


def describe(
    folder: Path,
    config: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    report: PruneReport | None,
    sidecar: dict[str, Any] | None,
) -> dict[str, Any]:
    """The description common to folders and GGUF files: pruning record, counts, per-layer widths."""
    adapter = _adapter(config)
    linears = {name: where for name in shapes if (where := adapter.parse_linear_weight(name)) is not None}
    per_layer: dict[int, dict[str, tuple[int, ...]]] = {}
    for name, (index, key) in linears.items():
        per_layer.setdefault(index, {})[key] = shapes[name]
    head_dim = adapter.geometry(SimpleNamespace(**config)).head_dim if per_layer else 1
    layers = []
    for index in range(config.get("num_hidden_layers", len(per_layer))):
        mods = per_layer.get(index, {})
        layers.append(
            {
                "layer": index,
                "heads": mods["q"][0] // head_dim if "q" in mods else 0,
                "kv_heads": mods["k"][0] // head_dim if "k" in mods else 0,
                "channels": mods["down"][1] if "down" in mods else 0,
            }
        )
    linear = sum(_numel(shapes[name]) for name in linears)
    info: dict[str, Any] = {
        "folder": str(folder),
        "model_type": config.get("model_type"),
        "pruned_by_llmprune": report is not None,
        "strategy": report.strategy if report else None,
        "method": report.method if report else None,
        "settings": report.settings if report else None,
        "achieved_sparsity": report.achieved_sparsity if report else None,
        "history": [step.model_dump(mode="json", exclude_unset=True) for step in report.history] if report else [],
        "params_total": sum(_numel(s) for s in shapes.values()),
        "params_decoder_linear": linear,
        "layers": layers,
        "uniform_widths": len({(l["heads"], l["kv_heads"], l["channels"]) for l in layers}) <= 1,
        "semi24": sidecar is not None,
        "semi24_targets": len(sidecar["targets"]) if sidecar else 0,
        "semi24_zero_fraction": sidecar.get("zero_fraction") if sidecar else None,
    }
    return info


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
