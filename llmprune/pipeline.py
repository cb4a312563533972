"""The pruning pipeline: load → calibrate → Pruner.prune → surgery → export, with a report.

Every strategy goes through ``run_prune``; a strategy only supplies its Pruner.
"""

from __future__ import annotations

import atexit
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import llmprune
from llmprune import distributed
from llmprune.alignment import Alignment, alignment_report
from llmprune.arch import ArchAdapter, Geometry
from llmprune.budget import check_reachable, miss_warning
from llmprune.config import PruneSettings, RunSettings
from llmprune.data import calibration_samples, resolve_calibration_source, text_sha256
from llmprune.errors import UsageError
from llmprune.estimate import streaming_needed
from llmprune.export import save_pruned
from llmprune.loading import checkpoint_dtype, load_config, load_model, resolve_device, resolve_dtype, resolve_seqlen
from llmprune.plan import PrunePlan
from llmprune.progress import Reporter
from llmprune.pruners.base import PruneContext, PruneResult, get_pruner_class
from llmprune.report import HistoryStep, PruneReport
from llmprune.signals import sigterm_as_interrupt
from llmprune.streaming import HOST, WeightStream, active, streamed, streaming_on, weights_fit
from llmprune.surgery import apply_plan, exported_config
from llmprune.workspace import Workspace


def package_versions() -> dict[str, str]:
    import transformers

    return {
        "llmprune": llmprune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB.

    Linux's VmHWM belongs to this program alone; ``ru_maxrss`` would also include the RSS of a
    parent that forked us (it survives exec), which inflates numbers in benchmark subprocesses.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of CUDA allocations) in MiB."""
    peak = {"peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


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


class _QuietReporter(Reporter):
    """Ranks other than 0 draw no bars and log nothing (rank 0 speaks for the run)."""

    def __init__(self) -> None:
        super().__init__(enabled=False)

    def log(self, message: str) -> None:
        pass


def run_prune(settings: PruneSettings, reporter: Reporter | None = None) -> PruneReport:
    """Run one pruning command end to end and return the report (also written to OUT).

    Under ``torchrun`` (WORLD_SIZE > 1) every rank runs this with a process group
    (``llmprune.distributed``); only rank 0 writes, and the group is destroyed at the end.
    """
    started = distributed.init(settings.device)
    claim: list[Workspace] = []  # rank 0's hold on OUT, once opened
    try:
        with sigterm_as_interrupt():
            return _run_prune(settings, reporter, claim)
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


def _recovery_claim() -> Any:
    from llmprune.recovery_run import RecoveryClaim

    return RecoveryClaim


def open_work_folder(settings: RunSettings, claimant: Any, reporter: Reporter, claim: list[Workspace]) -> Path:
    """Rank 0 checks OUT, locks it and prepares the checkpoint folder (its ``Workspace`` goes into
    ``claim``); the other ranks keep their scratch files (e.g. Týr's supernet) in a private folder,
    removed at exit, also after an error (nothing to resume there)."""

    def open_on_main() -> Path:
        workspace = Workspace(settings, claimant, reporter)
        work = workspace.open()
        claim.append(workspace)
        return work

    work = distributed.on_main(open_on_main)
    if not distributed.is_main():
        if settings.offload_dir is not None:
            Path(settings.offload_dir).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".llmprune-rank{distributed.rank()}-", dir=settings.offload_dir))
        atexit.register(shutil.rmtree, work, True)
    return work


def save_dtype_for(settings: RunSettings, config: Any, device: torch.device) -> torch.dtype:
    """The dtype an output is written in: ``--save-dtype``, else the checkpoint's (float32 when its
    config names none)."""

    if settings.save_dtype != "auto":
        return resolve_dtype(settings.save_dtype, device, None)
    return checkpoint_dtype(config) or torch.float32


def finish_run(
    fields: dict[str, Any], t_start: float, claim: list[Workspace], work: Path, save: Callable[[dict[str, Any]], object]
) -> PruneReport:
    """Complete the report (peak memory, total time); rank 0 writes the output through ``save`` and
    releases OUT, the other ranks drop their scratch folder; every rank waits for the export."""
    fields.update(peak_memory())
    fields["time_total_s"] = time.perf_counter() - t_start
    report = PruneReport.model_validate(fields)
    if distributed.is_main():
        save(report.as_json())
        claim[0].close()
    else:
        shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()
    return report


def _run_prune(settings: PruneSettings, reporter: Reporter | None, claim: list[Workspace]) -> PruneReport:
    main = distributed.is_main()
    reporter = reporter or (Reporter() if main else _QuietReporter())
    t_start = time.perf_counter()
    settings_in = settings  # as asked (--stream-weights auto is resolved below, per stage)
    pruner_cls = get_pruner_class(settings.strategy, settings.method)
    pruner = pruner_cls(settings.method_options)
    needs_calibration = pruner_cls.needs_calibration or settings.recover is not None
    world = distributed.world_size()
    if world > 1 and needs_calibration and min(settings.nsamples, settings.batch_size) < world:
        raise UsageError(
            f"with {world} ranks, --nsamples ({settings.nsamples}) and --batch-size "
            f"({settings.batch_size}) must be at least {world} (each rank needs its share)"
        )
    # With --recover even a one-shot method's run is resumable (the recovery stage checkpoints).
    claimant = pruner_cls if settings.recover is None or pruner_cls.resumable else _recovery_claim()
    work = open_work_folder(settings, claimant, reporter, claim)
    # Settings are frozen: resolved values go into a copy (every rank uses rank 0's seed).
    settings = settings.model_copy(update={"seed": distributed.broadcast_seed(settings.seed)})

    device = distributed.device_for(resolve_device(settings.device))
    config = load_config(settings.model)
    if settings.export_format == "deci":  # fail before the pruning work, not at export
        from llmprune.deci import check_exportable

        check_exportable(config)
    settings = settings.model_copy(update={"seqlen": resolve_seqlen(settings.seqlen, config)})
    geom = ArchAdapter.for_config(config).geometry(config)
    if settings.strategy != "semi24":
        check_reachable(
            geom, settings.sparsity, settings.attn_unit, Alignment.of(settings)
        )  # before the weights are read
    pruner.check(settings, geom)
    compute_dtype = resolve_dtype(settings.dtype, device, checkpoint_dtype(config))
    save_dtype = save_dtype_for(settings, config, device)

    torch.manual_seed(settings.seed)
    stream: WeightStream | None = None
    if pruner_cls.layerwise:
        # The model stays on CPU in the dtype it will be saved in; one layer at a time is moved
        # to the device and cast to the compute dtype by the layer-wise runner.
        model, adapter, tokenizer = load_model(settings.model, torch.device("cpu"), save_dtype)
    else:  # whole-model forwards; the decoder layers wait on the host when streamed (llmprune.streaming)
        on_host = streaming_on(
            settings, device, lambda: not streaming_needed(settings, config, distributed.world_size())
        )
        model, adapter, tokenizer = load_model(settings.model, HOST if on_host else device, compute_dtype)
        stream = streamed(model, adapter.layers(model), device, compute_dtype) if on_host else None
    settings = settings.model_copy(update={"stream_weights": "on" if stream is not None else "off"})  # as run
    dense_params = adapter.decoder_linear_params(model)
    dense_total = sum(p.numel() for p in model.parameters())
    calib = recovery_calib = None
    if needs_calibration:

        def load_calibration() -> tuple[str, torch.Tensor, str]:
            from llmprune.recovery import RecoveryOptions
            from llmprune.recovery_run import note_fewer

            source, warning = resolve_calibration_source(settings.calib)
            if warning:
                reporter.log(f"[yellow]warning:[/] {warning}")
            assert settings.seqlen is not None  # resolve_seqlen above always sets it
            # The pruning's windows are the first --nsamples of the recovery's (one permutation).
            n, least = settings.nsamples, None
            if settings.recover is not None:
                n, least = max(n, RecoveryOptions.model_validate(settings.recover).recover_nsamples), n
            samples = calibration_samples(tokenizer, source, n, settings.seqlen, settings.seed, minimum=least)
            if settings.recover is not None:
                note_fewer(samples, n, "--recover-nsamples", reporter)
            return source, samples, text_sha256(source)

        # Rank 0 reads the text and draws the windows; every rank gets the same samples.
        source, recovery_calib, calib_sha256 = distributed.on_main(load_calibration)
        calib = recovery_calib[: settings.nsamples]
        settings = settings.model_copy(update={"calib": source})
    t_loaded = time.perf_counter()

    work.mkdir(parents=True, exist_ok=True)
    ctx = PruneContext(
        model=model,
        adapter=adapter,
        tokenizer=tokenizer,
        calib=calib,
        settings=settings,
        device=device,
        work_dir=work,
        progress=reporter,
        compute_dtype=compute_dtype,
        offload_dir=settings.offload_dir,
        stream=stream,
    )
    with reporter.live(), active(stream):
        result = PruneResult.of(pruner.prune(ctx))
    plan = result.plan
    # Methods not yet converted to PruneResult still write into ctx.extras.
    method_report = {**ctx.extras.get("report", {}), **result.report}
    method_files = {**ctx.extras.get("files", {}), **result.files}
    t_pruned = time.perf_counter()
    apply_plan(model, adapter, plan)
    if settings.recover is not None:  # the recovery stage, teacher = the input model
        from llmprune.recovery import RecoveryOptions
        from llmprune.recovery_run import run_stage

        options = RecoveryOptions.model_validate(settings.recover)
        ctx.calib = recovery_calib  # the pruning's sequences, then --recover-nsamples' more
        weight_bytes = sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=compute_dtype).element_size()
        if stream is None and streaming_on(settings_in, device, lambda: weights_fit(weight_bytes, settings_in)):
            stream = ctx.stream = streamed(model, adapter.layers(model), device, compute_dtype)
            settings = settings.model_copy(update={"stream_weights": "on"})  # as run
        elif stream is None:
            model.to(device=device, dtype=compute_dtype)  # layer-wise methods left it on CPU in save_dtype
        with reporter.live(), active(stream):
            stage = run_stage(ctx, options, settings.model, compute_dtype, plan.semi24_targets)
        method_report["recovery"] = stage.report.model_dump(mode="json")
        method_files.update(stage.files)

    kept_params = sum(kept_params_per_layer(model, adapter, plan))
    achieved = 1.0 - kept_params / dense_params
    missed = (
        miss_warning(geom, settings.sparsity, achieved, Alignment.of(settings)) if plan.kind == "structured" else None
    )
    if missed:
        reporter.log(f"[yellow]warning:[/] {missed}")
    fields: dict[str, Any] = {
        "strategy": settings.strategy,
        "method": settings.method,
        "settings": settings.model_dump(mode="json"),
        "options": pruner.options.model_dump(mode="json"),
        "seed": settings.seed,
        "device": str(device),
        "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "save_dtype": str(save_dtype).removeprefix("torch."),
        "dense_geometry": plan.dense or None,
        "requested_sparsity": settings.sparsity,
        "achieved_sparsity": achieved,
        "layer_sparsity": layer_sparsity(model, adapter, plan),
        "layer_widths": plan.layer_widths() if plan.kind == "structured" else None,
        "params_decoder_linear_dense": dense_params,
        "params_decoder_linear": kept_params,
        "params_total_dense": dense_total,
        "params_total": sum(p.numel() for p in model.parameters()),
        "sparsity_warning": missed,
        "calibration": {
            "source": settings.calib,
            "nsamples": int(calib.shape[0]),
            "seqlen": settings.seqlen,
            "text_sha256": calib_sha256,
        }
        if calib is not None
        else None,
        "time_load_s": t_loaded - t_start,
        "time_prune_s": t_pruned - t_loaded,
        "versions": package_versions(),
        "output": str(settings.output),
        "history": previous_pruning(settings.model),
        **method_report,
    }
    fields.update(alignment_report(settings, plan, reporter.log))
    fields.update(distributed.group_record())
    report = finish_run(
        fields,
        t_start,
        claim,
        work,
        lambda report_json: save_pruned(
            model,
            tokenizer,
            plan,
            report_json,
            settings.output,
            save_dtype,
            settings.max_shard_size,
            method_files or None,
            config=exported_config(model, adapter, plan),
            export_format=settings.export_format,
        ),
    )
    report.time_total_s = time.perf_counter() - t_start
    return report
