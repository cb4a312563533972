"""The pruning pipeline: resolve → load → calibrate → Pruner.prune → surgery → (recover) → export.

Every strategy goes through ``run_prune``; a strategy only supplies its Pruner. The settings are
resolved once (:mod:`llmprune.run.run_plan`); each stage below reads that plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from llmprune.core.budget import miss_warning
from llmprune.data.text import calibration_samples, resolve_calibration_source, text_sha256
from llmprune.export.report import HistoryStep, PruneReport, package_versions
from llmprune.export.save import save_pruned
from llmprune.model.alignment import Alignment, alignment_report
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.model.loading import describe_input, load_model
from llmprune.model.plan import PrunePlan
from llmprune.model.streaming import HOST, WeightStream, active, streamed, streaming_on, weights_fit
from llmprune.model.surgery import apply_plan, exported_config
from llmprune.pruners.base import PruneContext, PruneResult, get_pruner_class
from llmprune.run.recover import RecoveryClaim, note_fewer, run_stage
from llmprune.run.run_plan import PruneRunPlan, check_ranks, resolve_prune
from llmprune.run.workspace import Workspace, finish_run, open_work_folder
from llmprune.runtime import distributed
from llmprune.runtime.progress import Reporter, rank_reporter
from llmprune.runtime.signals import sigterm_as_interrupt
from llmprune.settings import PruneSettings


def kept_params_per_layer(model: torch.nn.Module, adapter: ArchAdapter, plan: PrunePlan) -> list[int]:
    """Decoder-linear parameters each layer keeps: stored weights, or non-zeros for 2:4 (the one count
    behind ``achieved_sparsity``, ``layer_sparsity`` and ``params_decoder_linear``)."""
    return adapter.linear_params_per_layer(model, nonzero=plan.kind == "semi24")


def layer_sparsity(model: torch.nn.Module, adapter: ArchAdapter, plan: PrunePlan) -> list[float]:
    """Achieved sparsity of each decoder layer's linear weights against the dense layer."""
    dense_layer = Geometry(**plan.dense).dense_layer_params
    return [1.0 - kept / dense_layer for kept in kept_params_per_layer(model, adapter, plan)]


def previous_pruning(model: str) -> list[HistoryStep]:
    """The pruning history of an input that is itself an llmprune output (stacking, e.g. uniform → 2:4)."""
    previous = PruneReport.load(model)
    return previous.pruning_history() if previous is not None else []


def input_model(model: str) -> dict[str, Any]:
    """``{"input_model": ...}`` for an input the path alone does not describe (a GGUF file: its
    sha256 and quantization type), else nothing."""
    described = describe_input(model)
    return {"input_model": described} if described is not None else {}


def run_prune(settings: PruneSettings, reporter: Reporter | None = None) -> PruneReport:
    """Run one pruning command end to end and return the report (also written to OUT).

    Under ``torchrun`` (WORLD_SIZE > 1) every rank runs this with a process group
    (``llmprune.runtime.distributed``); only rank 0 writes, and the group is destroyed at the end.
    """
    started = distributed.init(settings.device)
    claim: list[Workspace] = []  # rank 0's hold on OUT, once opened
    try:
        with sigterm_as_interrupt():
            return _run_prune(settings, rank_reporter(reporter, distributed.is_main()), claim)
    except BaseException as err:
        if not claim:
            raise
        replacement = claim[0].fail(err)  # keeps a resumable checkpoint, removes everything else
        if replacement is err:
            raise
        raise replacement from err
    finally:
        if started:
            distributed.cleanup()


@dataclass(frozen=True)
class Calibration:
    """The calibration windows: the pruning's first ``--nsamples``, then the recovery's more."""

    source: str
    samples: torch.Tensor  # what the pruner sees
    recovery_samples: torch.Tensor  # what the recovery stage distils on
    text_sha256: str


def _run_prune(settings: PruneSettings, reporter: Reporter, claim: list[Workspace]) -> PruneReport:
    t_start = time.perf_counter()
    pruner_cls = get_pruner_class(settings.strategy, settings.method)
    pruner = pruner_cls(settings.method_options)
    check_ranks(settings, pruner_cls)
    # With --recover even a one-shot method's run is resumable (the recovery stage checkpoints).
    claimant = pruner_cls if settings.recover is None or pruner_cls.resumable else RecoveryClaim
    work = open_work_folder(settings, claimant, reporter, claim)
    run = resolve_prune(settings, pruner)

    torch.manual_seed(run.settings.seed)
    model, adapter, tokenizer, stream = load(run)
    dense = {
        "params_decoder_linear_dense": adapter.decoder_linear_params(model),
        "params_total_dense": sum(p.numel() for p in model.parameters()),
    }
    calib = distributed.on_main(lambda: calibrate(run, tokenizer, reporter)) if run.needs_calibration else None
    t_loaded = time.perf_counter()

    work.mkdir(parents=True, exist_ok=True)
    ctx = PruneContext(
        model=model,
        adapter=adapter,
        tokenizer=tokenizer,
        calib=calib.samples if calib is not None else None,
        settings=run.settings.model_copy(update={"calib": calib.source}) if calib is not None else run.settings,
        device=run.device,
        work_dir=work,
        progress=reporter,
        compute_dtype=run.compute_dtype,
        offload_dir=run.settings.offload_dir,
        stream=stream,
    )
    with reporter.live(), active(stream):
        result = PruneResult.of(pruner.prune(ctx))
    method_report = {**ctx.extras.get("report", {}), **result.report}  # ctx.extras: older methods' channel
    method_files = {**ctx.extras.get("files", {}), **result.files}
    t_pruned = time.perf_counter()
    apply_plan(model, adapter, result.plan)
    if run.recovery is not None:  # the recovery stage, teacher = the input model
        assert calib is not None
        stage = recover_after_pruning(ctx, run, calib, result.plan, reporter)
        method_report["recovery"] = stage.report.model_dump(mode="json")
        method_files.update(stage.files)

    times = {"time_load_s": t_loaded - t_start, "time_prune_s": t_pruned - t_loaded}
    fields = report_fields(ctx, run, pruner, result.plan, calib, dense | times, method_report, reporter)
    report = finish_run(
        fields,
        t_start,
        claim,
        work,
        lambda report_json: save_pruned(
            model,
            tokenizer,
            result.plan,
            report_json,
            run.settings.output,
            run.save_dtype,
            run.settings.max_shard_size,
            method_files or None,
            config=exported_config(model, adapter, result.plan),
            export_format=run.settings.export_format,
        ),
    )
    report.time_total_s = time.perf_counter() - t_start
    return report


def load(run: PruneRunPlan) -> tuple[torch.nn.Module, ArchAdapter, Any, WeightStream | None]:
    """Layer-wise methods: the model stays on CPU in the dtype it will be saved in (the runner
    moves and casts one layer at a time). Others: whole-model forwards in the compute dtype, the
    decoder layers waiting on the host when streamed (:mod:`llmprune.model.streaming`)."""
    if run.layerwise:
        model, adapter, tokenizer = load_model(run.settings.model, torch.device("cpu"), run.save_dtype)
        return model, adapter, tokenizer, None
    model, adapter, tokenizer = load_model(run.settings.model, HOST if run.on_host else run.device, run.compute_dtype)
    stream = streamed(model, list(adapter.layers(model)), run.device, run.compute_dtype) if run.on_host else None
    return model, adapter, tokenizer, stream


def calibrate(run: PruneRunPlan, tokenizer: Any, reporter: Reporter) -> Calibration:
    """Rank 0 reads the text and draws the windows (every rank gets the same): one permutation,
    whose first ``--nsamples`` the pruner sees and whose first ``--recover-nsamples`` the
    recovery stage distils on."""
    s = run.settings
    source, warning = resolve_calibration_source(s.calib)
    if warning:
        reporter.log(f"[yellow]warning:[/] {warning}")
    assert s.seqlen is not None  # resolved by the plan
    n, least = s.nsamples, None
    if run.recovery is not None:
        n, least = max(n, run.recovery.recover_nsamples), n
    samples = calibration_samples(tokenizer, source, n, s.seqlen, s.seed, minimum=least)
    if run.recovery is not None:
        note_fewer(samples, n, "--recover-nsamples", reporter)
    return Calibration(source, samples[: s.nsamples], samples, text_sha256(source))


def recover_after_pruning(
    ctx: PruneContext, run: PruneRunPlan, calib: Calibration, plan: PrunePlan, reporter: Reporter
) -> Any:
    """``--recover``: distil the pruned model from the input model. The decoder layers are
    streamed when ``--stream-weights`` asks or (auto) the pruned weights do not fit half the device."""
    assert run.recovery is not None
    ctx.calib = calib.recovery_samples
    model = ctx.model
    weight_bytes = sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=run.compute_dtype).element_size()
    asked = run.settings.model_copy(update={"stream_weights": run.stream_asked})
    if ctx.stream is None and streaming_on(asked, run.device, lambda: weights_fit(weight_bytes, asked)):
        ctx.stream = streamed(model, list(ctx.adapter.layers(model)), run.device, run.compute_dtype)
        ctx.settings = ctx.settings.model_copy(update={"stream_weights": "on"})  # as run
    elif ctx.stream is None:
        model.to(device=run.device, dtype=run.compute_dtype)  # layer-wise methods left it on CPU in save_dtype
    with reporter.live(), active(ctx.stream):
        return run_stage(ctx, run.recovery, run.settings.model, run.compute_dtype, plan.semi24_targets)


def report_fields(
    ctx: PruneContext,
    run: PruneRunPlan,
    pruner: Any,
    plan: PrunePlan,
    calib: Calibration | None,
    counts: dict[str, Any],
    method_report: dict[str, Any],
    reporter: Reporter,
) -> dict[str, Any]:
    """The report's fields: settings as run, achieved sparsity per layer, parameter counts, the
    calibration, the load and prune times (``counts``: the dense parameter counts and the times),
    versions, history, and the method's own fields."""
    model, adapter, settings = ctx.model, ctx.adapter, ctx.settings
    kept_params = sum(kept_params_per_layer(model, adapter, plan))
    achieved = 1.0 - kept_params / counts["params_decoder_linear_dense"]
    assert run.geometry is not None
    missed = (
        miss_warning(run.geometry, settings.sparsity, achieved, Alignment.of(settings))
        if plan.kind == "structured"
        else None
    )
    if missed:
        reporter.log(f"[yellow]warning:[/] {missed}")
    fields: dict[str, Any] = {
        "strategy": settings.strategy,
        "method": settings.method,
        "settings": settings.model_dump(mode="json"),
        **input_model(settings.model),
        "options": pruner.options.model_dump(mode="json"),
        "seed": settings.seed,
        "device": str(run.device),
        "compute_dtype": str(run.compute_dtype).removeprefix("torch."),
        "save_dtype": str(run.save_dtype).removeprefix("torch."),
        "dense_geometry": plan.dense or None,
        "requested_sparsity": settings.sparsity,
        "achieved_sparsity": achieved,
        "layer_sparsity": layer_sparsity(model, adapter, plan),
        "layer_widths": plan.layer_widths() if plan.kind == "structured" else None,
        "params_decoder_linear_dense": counts["params_decoder_linear_dense"],
        "params_decoder_linear": kept_params,
        "params_total_dense": counts["params_total_dense"],
        "params_total": sum(p.numel() for p in model.parameters()),
        "sparsity_warning": missed,
        "calibration": {
            "source": settings.calib,
            "nsamples": int(calib.samples.shape[0]),
            "seqlen": settings.seqlen,
            "text_sha256": calib.text_sha256,
        }
        if calib is not None
        else None,
        "time_load_s": counts["time_load_s"],
        "time_prune_s": counts["time_prune_s"],
        "versions": package_versions(),
        "output": str(settings.output),
        "history": previous_pruning(settings.model),
        **method_report,
    }
    fields.update(alignment_report(settings, plan, reporter.log))
    fields.update(distributed.group_record())
    return fields
