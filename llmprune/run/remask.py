"""``llmprune remask MODEL -o OUT --like SEMI24_OUTPUT``: restore a 2:4 pattern after fine-tuning.

Merging a LoRA adapter (``merge_and_unload``) into a 2:4 output adds a dense update to every
targeted weight, so no group of four keeps its two zeros and sparse kernels no longer apply. This
command zeroes, in every weight the 2:4 output's sidecar lists, exactly the positions that are zero
in that output (the pattern the pruner chose), keeps the fine-tuned values elsewhere, verifies the
pattern and writes a new output (weights, sidecar, report) atomically. MODEL is never modified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmprune.errors import ModelLoadError, UsageError
from llmprune.export.report import PruneReport
from llmprune.export.save import SPARSITY_FILE, check_output, save_pruned
from llmprune.model.plan import PrunePlan, geometry_dict


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name → safetensors file of a model folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ModelLoadError(f"no model.safetensors in {folder}")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def reference_masks(like: Path) -> tuple[list[str], dict[str, Path]]:
    """Targets of a 2:4 output and where its weights are stored."""
    sidecar = like / SPARSITY_FILE
    if not sidecar.is_file():
        raise UsageError(f"--like {like} is not a 2:4 output of llmprune (no {SPARSITY_FILE})")
    targets = json.loads(sidecar.read_text()).get("targets") or []
    if not targets:
        raise UsageError(f"--like {like}: {SPARSITY_FILE} lists no targets")
    return targets, _tensor_files(like)


@torch.no_grad()
def remask(
    model_source: str,
    like: Path,
    output: Path,
    overwrite: bool = False,
    save_dtype: str | torch.dtype = "auto",
) -> dict[str, Any]:
    """Re-apply ``like``'s 2:4 zero pattern to ``model_source`` and export to ``output``.

    ``save_dtype`` ``auto`` writes the dtype MODEL is stored in (a bfloat16 merge stays bfloat16;
    it was written as float32, twice the size); the model is loaded in that dtype, which zeroing
    positions leaves exact.
    """
    from safetensors import safe_open

    from llmprune.model.loading import checkpoint_dtype, load_config, load_model, resolve_dtype

    like, output = Path(like).expanduser(), Path(output)
    if isinstance(save_dtype, torch.dtype):
        dtype = save_dtype
    elif save_dtype == "auto":
        dtype = checkpoint_dtype(load_config(model_source)) or torch.float32
    else:
        try:
            dtype = resolve_dtype(save_dtype, torch.device("cpu"), None)
        except UsageError as err:
            raise UsageError(f"invalid --save-dtype {save_dtype!r}; choose auto, float32, bfloat16, float16") from err
    check_output(output, model_source, overwrite)
    targets, files = reference_masks(like)
    model, adapter, tokenizer = load_model(model_source, torch.device("cpu"), dtype)
    modules = dict(model.named_modules())
    restored = 0
    for name in targets:
        key = f"{name}.weight"
        if name not in modules or key not in files:
            raise UsageError(f"{model_source} and --like {like} differ: {name} is missing in one of them")
        with safe_open(str(files[key]), framework="pt") as handle:
            keep = handle.get_tensor(key) != 0
        weight = modules[name].weight
        if weight.shape != keep.shape:
            raise UsageError(f"{name}: shape {tuple(weight.shape)} differs from --like's {tuple(keep.shape)}")
        restored += int(((weight != 0) & ~keep).sum())
        weight.mul_(keep.to(weight.dtype))
    plan = PrunePlan(
        kind="semi24",
        strategy="semi24",
        method="remask",
        dense=geometry_dict(adapter.geometry(model)),
        semi24_targets=targets,
    )
    previous = PruneReport.load(like) or PruneReport()
    report = {
        "strategy": "semi24",
        "method": "remask",
        "settings": {"model": model_source, "like": str(like), "output": str(output)},
        "zeros_restored": restored,
        "achieved_sparsity": previous.achieved_sparsity,
        "history": [step.model_dump(mode="json", exclude_unset=True) for step in previous.history]
        + [
            {
                "strategy": previous.strategy,
                "method": previous.method,
                "achieved_sparsity": previous.achieved_sparsity,
                "model": str(like),
            }
        ],
    }
    save_pruned(model, tokenizer, plan, report, output, dtype)
    return report
