"""Write pruned models as folders that load with plain transformers; atomically.

The folder is assembled under a hidden temporary name beside the target and renamed at the end,
so an interrupted export never leaves a half-written OUT, and an existing OUT is only replaced
(with ``--overwrite``) once the new one is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from llmprune.core.masks import max_nonzeros_per_group
from llmprune.errors import NumericalError, OutputExistsError
from llmprune.export.portable import apply_umask, portable_tokenizer_config
from llmprune.model.plan import PrunePlan
from llmprune.runtime.atomic import disk_full, probe_writable

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REPORT_FILE = "llmprune_report.json"
SPARSITY_FILE = "llmprune_sparsity.json"


def check_output(output: Path, model_source: str, overwrite: bool) -> None:
    """Refuse outputs that exist (without --overwrite), are files, or would touch the input."""
    out = output.expanduser().resolve()
    src = Path(model_source).expanduser()
    if src.exists() and overlaps(out, src.resolve()):
        raise OutputExistsError(f"output {output} overlaps the input model folder {model_source}; choose another -o")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {output} exists and is a file")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output folder {output} exists; pass --overwrite to replace it")
    if out.exists() and any(out.iterdir()) and not (out / REPORT_FILE).is_file():
        raise OutputExistsError(
            f"--overwrite replaces only an empty folder or an earlier llmprune output (with {REPORT_FILE}); "
            f"{output} holds other files, so it is left alone"
        )
    probe_writable(out, str(output))


def overlaps(a: Path, b: Path) -> bool:
    """True when resolved paths ``a`` and ``b`` are the same folder or one contains the other."""
    return a == b or b in a.parents or a in b.parents


def staging_dir(output: Path) -> Path:
    out = output.expanduser().resolve()
    return out.parent / f".{out.name}.llmprune-tmp"


def work_dir(output: Path) -> Path:
    """Where long-running methods keep checkpoints for --resume (removed after success)."""
    out = output.expanduser().resolve()
    return out.parent / f".{out.name}.llmprune-work"


def finalize(staging: Path, output: Path) -> None:
    """Move the finished staging folder to OUT, replacing an old OUT only at the very end."""
    out = output.expanduser().resolve()
    old = out.parent / f".{out.name}.llmprune-old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    if old.exists():
        shutil.rmtree(old)


def verify_semi24(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    """Check that every targeted weight has at most 2 non-zeros per group of 4 inputs."""
    modules = dict(model.named_modules())
    zeros = total = 0
    for name in targets:
        weight = modules[name].weight.detach()
        worst = max_nonzeros_per_group(weight)
        if worst > 2:
            raise NumericalError(f"{name} violates 2:4 ({worst} non-zeros in a group of 4)")
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return {"zero_fraction": zeros / max(total, 1), "targeted_params": total}


def sparsity_sidecar(plan: PrunePlan, verified: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": "semi-structured",
        "pattern": "2:4",
        "n": 2,
        "m": 4,
        "axis": "input",
        "description": "in every row of each listed weight ([out, in]), each group of 4 consecutive "
        "input elements has at most 2 non-zeros; weights are stored dense with explicit zeros",
        "targets": plan.semi24_targets,
        "verified": True,
        **verified,
    }


def save_pruned(
    model: nn.Module,
    tokenizer: Any,
    plan: PrunePlan,
    report: dict[str, Any],
    output: Path,
    save_dtype: torch.dtype,
    max_shard_size: str = "5GB",
    extra_files: dict[str, Any] | None = None,
    config: Any = None,
    export_format: str = "hf",
) -> Path:
    """Write weights, config, tokenizer, plan, report (and 2:4 sidecar) atomically to OUT.

    ``extra_files`` maps a file name in OUT to a ``Path`` (copied) or a JSON-able payload
    (written as JSON): traces, plots and logs produced by a strategy.
    """
    staging = staging_dir(output)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if plan.kind == "semi24":
            verified = verify_semi24(model, plan.semi24_targets)
            _write_json(staging / SPARSITY_FILE, sparsity_sidecar(plan, verified))
        if export_format == "deci":  # DeciLM / Nemotron-NAS block_configs (vLLM, llama.cpp)
            from llmprune.model.deci import write_deci

            model.to(save_dtype)
            report["deci"] = write_deci(staging, model, plan, save_dtype, max_shard_size)
        else:
            if config is None:  # surgery.exported_config is the one place that decides it
                from llmprune.model.arch import ArchAdapter
                from llmprune.model.surgery import exported_config

                config = exported_config(model, ArchAdapter.for_model(model), plan)
            from llmprune.model.hetero import is_hetero_config, write_modeling_file

            if is_hetero_config(config):  # heterogeneous widths: the modeling file goes beside the weights
                write_modeling_file(staging, config)
            model.to(save_dtype)
            # a transformers model; nn.Module does not declare save_pretrained
            cast("PreTrainedModel", model).save_pretrained(staging, max_shard_size=max_shard_size)
            # The pruned config may differ from the in-memory one (new widths, or an equivalent
            # family such as Llama -> Mistral), so it is written last, over save_pretrained's.
            config.dtype = save_dtype
            config.use_cache = True
            config.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            portable_tokenizer_config(staging)
        plan.save(staging)
        for name, payload in (extra_files or {}).items():
            if isinstance(payload, Path):
                shutil.copyfile(payload, staging / name)
            else:
                _write_json(staging / name, payload)
        _write_json(staging / REPORT_FILE, report)
        apply_umask(staging)  # transformers writes the weights 0600
        finalize(staging, output)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if disk_full(err):
            raise OutputExistsError(f"no space left on device while writing {output} (nothing was written)") from err
        raise
    return output


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
