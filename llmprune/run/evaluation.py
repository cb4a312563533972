"""The ``eval`` command's orchestration: load, measure, assemble a JSON-ready report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from llmprune.data.text import evaluation_windows, text_sha256
from llmprune.errors import UsageError
from llmprune.export.report import HistoryStep, PruneReport
from llmprune.export.save import SPARSITY_FILE
from llmprune.model.loading import (
    checkpoint_dtype,
    describe_input,
    load_config,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_seqlen,
)
from llmprune.run.metrics import count_parameters, perplexity, throughput
from llmprune.runtime.atomic import check_file_writable, write_text
from llmprune.runtime.progress import Reporter
from llmprune.settings import DTYPE_CHOICES


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    data: str | None = None  # None: wikitext2, or no perplexity when tasks are given
    seqlen: int | None = None
    batch_size: int = 8
    speed: bool = False
    speed_repeats: int = 5
    device: str = "auto"
    dtype: str = "auto"
    json_path: Path | None = None
    baseline: str | None = None
    tasks: str | None = None
    num_fewshot: int = 0
    task_limit: int | None = None
    task_batch_size: int = 8

    @field_validator("batch_size", "speed_repeats", "task_batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("num_fewshot")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be at least 0, got {v}")
        return v

    @field_validator("task_limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPE_CHOICES:
            raise ValueError(f"must be one of {', '.join(DTYPE_CHOICES)}, got {v!r}")
        return v


def pruning_info(model: str) -> dict[str, Any]:
    """What llmprune recorded when it made this folder (empty for other models)."""
    folder = Path(model).expanduser()
    info: dict[str, Any] = {}
    report = PruneReport.load(folder)
    if report is not None:
        info = {"strategy": report.strategy, "method": report.method, "achieved_sparsity": report.achieved_sparsity}
    info["semi24"] = (folder / SPARSITY_FILE).is_file()
    return info


def calibrated_on(model: str, data: str) -> str | None:
    """The pruning step (strategy/method) of an llmprune folder calibrated on the text ``data``
    reads as, or None. Compared by the text's SHA-256 recorded in the report."""
    report = PruneReport.load(model)
    if report is None:
        return None
    steps: list[HistoryStep | PruneReport] = [*report.history, report]
    recorded = [(s, s.calibration.text_sha256 if s.calibration else None) for s in steps]
    if not any(digest for _, digest in recorded):
        return None
    digest = text_sha256(data, "evaluation")
    for step, recorded_digest in recorded:
        if recorded_digest == digest:
            return f"{step.strategy} --method {step.method}"
    return None


def measure_speed(model, seqlen: int, repeats: int) -> dict[str, Any]:
    model.config.use_cache = True
    return throughput(model, model.config.vocab_size, prefill_tokens=seqlen, repeats=repeats)


def run_eval(settings: EvalSettings, reporter: Reporter | None = None) -> dict[str, Any]:
    reporter = reporter or Reporter()
    t0 = time.perf_counter()
    if settings.json_path is not None:
        check_file_writable(settings.json_path, "--json")  # before the long measurements
    if settings.baseline and not settings.speed:
        raise UsageError("--baseline compares speed; add --speed")
    if settings.baseline:
        load_config(settings.baseline)  # fail before the long perplexity run
    task_plan = None
    if settings.tasks is not None:
        from llmprune.run.tasks import prepare_tasks

        task_plan = prepare_tasks(settings.tasks)  # lm_eval installed, task names known: fail early
    elif settings.num_fewshot or settings.task_limit is not None:
        raise UsageError("--num-fewshot and --task-limit apply to --tasks; add --tasks")
    data = settings.data if settings.data is not None or task_plan is not None else "wikitext2"
    device = resolve_device(settings.device)
    config = load_config(settings.model)
    seqlen = resolve_seqlen(settings.seqlen, config)
    dtype = resolve_dtype(settings.dtype, device, checkpoint_dtype(config))
    model, adapter, tokenizer = load_model(settings.model, device, dtype)
    report: dict[str, Any] = {"model": settings.model, "data": data}
    described = describe_input(settings.model)
    if described is not None:  # a GGUF file: its sha256 and quantization type
        report["input_model"] = described
    if data is not None:
        windows = evaluation_windows(tokenizer, data, seqlen)
        same = calibrated_on(settings.model, data)
        if same:
            report["evaluated_on_calibration_text"] = True
            reporter.log(
                f"[yellow]warning:[/] the evaluation text {data!r} is the text {settings.model} was "
                f"calibrated on ({same}); its perplexity is optimistic, use held-out text"
            )
        with reporter.live():
            task = reporter.task(
                "perplexity", total=(windows.shape[0] + settings.batch_size - 1) // settings.batch_size
            )
            ppl, nll = perplexity(model, windows, settings.batch_size, device, progress=task.advance)
        report.update(
            perplexity=ppl, mean_nll=nll, eval_windows=int(windows.shape[0]), eval_tokens=int(windows.numel())
        )
    if task_plan is not None:
        from llmprune.run.tasks import run_tasks

        report["tasks"] = run_tasks(
            model,
            tokenizer,
            task_plan,
            num_fewshot=settings.num_fewshot,
            limit=settings.task_limit,
            batch_size=settings.task_batch_size,
        )
        report["tasks"]["settings"].update(device=str(device), dtype=str(dtype).removeprefix("torch."))
    report.update(
        {
            "seqlen": seqlen,
            **count_parameters(model, adapter),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "pruning": pruning_info(settings.model),
        }
    )
    if settings.speed:
        report.update(measure_speed(model, seqlen, settings.speed_repeats))
        report["torch_threads"] = torch.get_num_threads()
        if settings.baseline:
            del model
            base_model, _, _ = load_model(settings.baseline, device, dtype)
            base = measure_speed(base_model, seqlen, settings.speed_repeats)
            report["baseline"] = settings.baseline
            report["baseline_prefill_tokens_per_s"] = base["prefill_tokens_per_s"]
            report["baseline_decode_tokens_per_s"] = base["decode_tokens_per_s"]
            report["speedup_prefill"] = report["prefill_tokens_per_s"] / base["prefill_tokens_per_s"]
            report["speedup_decode"] = report["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    report["time_s"] = time.perf_counter() - t0
    if settings.json_path is not None:
        write_text(settings.json_path, json.dumps(report, indent=2) + "\n")
    return report
