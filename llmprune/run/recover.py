"""The recovery stage around ``llmprune.train.recovery``: ``llmprune recover`` and ``--recover``.

:func:`run_stage` trains a pruned model held in memory (``--recover`` calls it right after
surgery, with the input model as teacher); :func:`run_recover` is the command: it loads a pruned
folder, runs the stage and exports through the same exporter as the pruning commands (plan,
heterogeneous config and modeling file, 2:4 sidecar carried over), atomically. Resume, checkpoints
and distribution are the shared loop's (``llmprune.train.loop``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from llmprune.core.distill import TeacherTopK
from llmprune.core.memory_model import shape_of_config
from llmprune.errors import ModelLoadError, UsageError
from llmprune.export.report import PruneReport, RecoveryReport, package_versions
from llmprune.export.save import SPARSITY_FILE, overlaps, save_pruned
from llmprune.model.plan import PLAN_FILE, PrunePlan
from llmprune.model.streaming import HOST, active, streamed, streaming_on, weights_fit
from llmprune.pruners.base import PruneContext
from llmprune.run.run_plan import resolve_run
from llmprune.run.workspace import finish_run, open_work_folder
from llmprune.runtime import distributed
from llmprune.runtime.progress import Reporter, rank_reporter
from llmprune.settings import RunSettings
from llmprune.train.loop import Training, is_main
from llmprune.train.recovery import (
    RecoveryOptions,
    RecoveryTraining,
    check_zeros_kept,
    objective_on,
    topk_targets,
    zero_masks,
)
from llmprune.train.trace import pyplot, save_figure

TEACHER = "recovery_teacher.pt"
CURVE_JSON = "recovery_curve.json"
CURVE_PNG = "recovery_curve.png"


class RecoverSettings(RunSettings):
    """Everything ``llmprune recover`` was asked to do (``model``: the pruned folder; ``options``:
    :class:`RecoveryOptions`; ``offload_dir`` is not used by recovery, the workspace checks it)."""

    teacher: str
    strategy: str = "recover"
    method: str = "recover"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        return RecoveryOptions.model_validate(v).model_dump(mode="json")


class StageFingerprint(RecoveryOptions):
    """What a resumed stage must share besides the run's settings: the teacher and the student's
    starting weights (under ``--recover`` they come out of the pruning stage)."""

    teacher: str
    student_sha256: str


class RecoveryClaim:
    """What :class:`llmprune.run.workspace.Workspace` asks of a run: the stage always checkpoints."""

    resumable = True

    @staticmethod
    def has_checkpoint(work: Path) -> bool:
        return any(work.glob("*_state.pt"))


@dataclass
class StageResult:
    report: RecoveryReport
    files: dict[str, Any]


# ----- the stage ------------------------------------------------------------------------------------
def run_stage(
    ctx: PruneContext, options: RecoveryOptions, teacher: str, compute_dtype: torch.dtype, semi24_targets: list[str]
) -> StageResult:
    """Distil ``ctx.model`` (pruned, on ``ctx.device`` in ``compute_dtype``) from ``teacher`` on
    ``ctx.calib``; the trained weights end up in the model (LoRA merged). 2:4 targets keep their zeros."""
    o, calib = options, ctx.calib
    assert calib is not None, "recovery needs calibration samples"
    masks = zero_masks(ctx.model, semi24_targets) if semi24_targets else None
    fp = StageFingerprint(**o.model_dump(), teacher=teacher, student_sha256=weights_sha256(ctx.model))
    training = Training(ctx, "recovery", fp, o.checkpoint_every)
    training.load_checkpoint()
    t0 = time.perf_counter()
    topk = None
    if o.kl_weight > 0:  # precomputed once (kept on CPU), reused by --resume
        state = training.cached(TEACHER, lambda: teacher_targets(ctx, teacher, o, compute_dtype).state())
        topk = TeacherTopK.from_state(state)
    time_teacher = time.perf_counter() - t0
    bs = min(ctx.settings.batch_size, calib.shape[0])
    before = objective_on(ctx.model, calib, topk, o, bs, ctx.device)
    method = RecoveryTraining(ctx.model, ctx.adapter, o, topk, ctx.settings.seed, ctx.device, masks)
    t0 = time.perf_counter()
    everything = range(len(ctx.adapter.layers(ctx.model)))
    if ctx.stream is not None and o.recover_mode == "full":  # every layer's weights train: none streams
        ctx.stream.keep(everything)
    trained = training.run(method)
    if ctx.stream is not None:
        ctx.stream.release(everything)
    trace = method.trace
    time_train = time.perf_counter() - t0
    after = objective_on(ctx.model, calib, topk, o, bs, ctx.device)
    zeros = check_zeros_kept(ctx.model, masks) if masks else None
    report = RecoveryReport(
        teacher=teacher,
        mode=o.recover_mode,
        options=o.model_dump(mode="json"),
        steps=o.steps,
        sequences_per_step=bs,
        sequences=int(calib.shape[0]),
        seqlen=int(calib.shape[1]),
        tokens_seen=int(trace[-1]["tokens"]) if trace else 0,
        trained_params=_trained_params(o, trained),
        objective_before=before,
        objective_after=after,
        loss_curve=[r["loss"] for r in trace],
        zeros_checked=zeros,
        time_teacher_s=time_teacher,
        time_train_s=time_train,
    )
    files: dict[str, Any] = {
        CURVE_JSON: {"report": report.model_dump(mode="json", exclude={"loss_curve"}), "trace": trace}
    }
    png = plot_curve(trace, Path(ctx.work_dir) / CURVE_PNG) if is_main() else None
    if png is not None:
        files[CURVE_PNG] = png
    return StageResult(report, files)


def _trained_params(o: RecoveryOptions, trained: dict[str, torch.Tensor]) -> int:
    if o.recover_mode == "full":
        return sum(w.numel() for w in trained.values())
    return sum(o.lora_rank * (w.shape[0] + w.shape[1]) for w in trained.values())


def weights_sha256(model: torch.nn.Module) -> str:
    """Digest of every parameter (names, shapes, bytes): the student a checkpoint belongs to."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def teacher_targets(ctx: PruneContext, teacher: str, o: RecoveryOptions, dtype: torch.dtype) -> TeacherTopK:
    """Load the teacher, keep its top-k on every calibration row (each rank its shard under
    torchrun, then gathered), and free it."""
    from llmprune.model.loading import load_model

    on_host = ctx.stream is not None  # the student's layers wait on the host: so do the teacher's
    model, adapter, _ = load_model(teacher, HOST if on_host else ctx.device, dtype)
    stream = streamed(model, adapter.layers(model), ctx.device, dtype) if on_host else None
    try:
        with active(stream):
            return topk_targets(ctx, model, o.teacher_topk, o.temperature, "recovery teacher top-k")
    finally:
        del model


def plot_curve(trace: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG of the loss and its terms per step (None without matplotlib)."""
    plt = pyplot()
    if not trace or plt is None:
        return None
    steps = [r["step"] for r in trace]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in (("loss", "loss"), ("kl", "KL"), ("lm", "LM")):
        ax.plot(steps, [r[key] for r in trace], label=label)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title("recovery (distillation from the dense teacher)")
    ax.legend()
    return save_figure(fig, path)


def check_teacher(student: str, student_config: Any, teacher: str, teacher_config: Any) -> None:
    """The teacher must predict over the same vocabulary as the student."""
    a, b = getattr(student_config, "vocab_size", None), getattr(teacher_config, "vocab_size", None)
    if a != b:
        raise UsageError(
            f"--teacher {teacher} has a vocabulary of {b} tokens, {student} has {a}; "
            "distillation needs the same tokenizer"
        )


def _model_key(name: str) -> str:
    """A model named by a path or a hub id, comparable: an existing path resolved, else the name."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name.rstrip("/")


def _widths(config: Any) -> dict[str, int] | None:
    from llmprune.model.arch import ArchAdapter
    from llmprune.model.plan import geometry_dict

    try:
        return geometry_dict(ArchAdapter.for_config(config).geometry(config))
    except Exception:  # a config the adapter cannot read: nothing to compare
        return None


def source_warnings(student: str, student_config: Any, teacher: str, teacher_config: Any) -> list[str]:
    """Why the run may not be what the user meant, one line each; neither refuses it.

    A teacher other than every model the student's report says it came from (the pruned input,
    earlier stacked steps, an earlier recovery's teacher) distils the student towards another
    model; a student with the teacher's widths and no pruning record (no report with a sparsity,
    no 2:4 sidecar, not heterogeneous) is the dense model, not a pruned one.
    """
    from llmprune.model.hetero import is_hetero_config

    folder = Path(student).expanduser()
    report = PruneReport.load(folder) if folder.is_dir() else None
    warnings = []
    if report is not None:
        sources = [report.settings.get("model")] + [step.model for step in report.history]
        if report.recovery is not None:
            sources.append(report.recovery.teacher)
        named = [str(s) for s in sources if s]
        if named and _model_key(teacher) not in {_model_key(s) for s in named}:
            warnings.append(
                f"--teacher {teacher} is not the model {student} was pruned from ({named[0]}, per its "
                f"report); recovery distils it towards {teacher}"
            )
    pruned = (
        is_hetero_config(student_config)
        or (folder / SPARSITY_FILE).is_file()
        or (report is not None and bool(report.achieved_sparsity))
    )
    widths = _widths(student_config)
    if not pruned and widths is not None and widths == _widths(teacher_config):
        warnings.append(
            f"{student} does not look pruned (the teacher's widths, no {SPARSITY_FILE}, no pruning in a "
            "report): recovery will distil the teacher into a model of its own size"
        )
    return warnings


# ----- the command ------------------------------------------------------------------------------------
def run_recover(settings: RecoverSettings, reporter: Reporter | None = None) -> PruneReport:
    """Recover one pruned folder into OUT; returns the report (also written to OUT)."""
    started = distributed.init(settings.device)
    claim: list[Any] = []
    try:
        from llmprune.runtime.signals import sigterm_as_interrupt

        with sigterm_as_interrupt():
            return _run_recover(settings, reporter, claim)
    except BaseException as err:
        if not claim:
            raise
        replacement = claim[0].fail(err)
        if replacement is err:
            raise
        raise replacement from err
    finally:
        if started:
            distributed.cleanup()


def pruned_plan(folder: Path, model: torch.nn.Module, adapter: Any) -> PrunePlan:
    """The plan of the pruned folder (2:4 targets from its sidecar); a model without one is its
    own identity plan."""
    sidecar = folder / SPARSITY_FILE
    plan_file = folder / PLAN_FILE
    try:
        plan = PrunePlan.load(plan_file) if plan_file.is_file() else None
        targets = json.loads(sidecar.read_text()).get("targets") if sidecar.is_file() else None
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{folder} has an unreadable {PLAN_FILE} or {SPARSITY_FILE}: {err}") from err
    if targets:
        from llmprune.model.plan import geometry_dict

        dense = plan.dense if plan is not None else geometry_dict(adapter.geometry(model))
        return PrunePlan(kind="semi24", strategy="semi24", method="recover", dense=dense, semi24_targets=targets)
    return plan or PrunePlan.dense_structured(adapter.geometry(model), "recover", "none")


def _run_recover(settings: RecoverSettings, reporter: Reporter | None, claim: list[Any]) -> PruneReport:
    from llmprune.model.loading import load_config, load_model

    t_start = time.perf_counter()
    reporter = rank_reporter(reporter, distributed.is_main())
    options = RecoveryOptions.model_validate(settings.options)
    config = load_config(settings.model)
    teacher_config = load_config(settings.teacher)
    check_teacher(settings.model, config, settings.teacher, teacher_config)
    for warning in source_warnings(settings.model, config, settings.teacher, teacher_config):
        reporter.log(f"[yellow]warning:[/] {warning}")
    teacher_path = Path(settings.teacher).expanduser()
    if teacher_path.exists() and overlaps(settings.output.expanduser().resolve(), teacher_path.resolve()):
        raise UsageError(f"output {settings.output} overlaps the teacher folder {settings.teacher}; choose another -o")

    work = open_work_folder(settings, RecoveryClaim, reporter, claim)
    run = resolve_run(settings, config)
    settings, device, compute_dtype, save_dtype = run.settings, run.device, run.compute_dtype, run.save_dtype
    torch.manual_seed(settings.seed)
    weight_bytes = shape_of_config(config).params * torch.empty((), dtype=compute_dtype).element_size()
    on_host = streaming_on(settings, device, lambda: weights_fit(weight_bytes, settings))
    model, adapter, tokenizer = load_model(settings.model, HOST if on_host else device, compute_dtype)
    stream = streamed(model, adapter.layers(model), device, compute_dtype) if on_host else None
    settings = settings.model_copy(update={"stream_weights": "on" if stream is not None else "off"})
    source, calib = distributed.on_main(lambda: _calibration(settings, tokenizer, reporter))
    settings = settings.model_copy(update={"calib": source})
    plan = pruned_plan(Path(settings.model).expanduser(), model, adapter)
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
        stream=stream,
    )
    with reporter.live(), active(stream):
        stage = run_stage(ctx, options, settings.teacher, compute_dtype, plan.semi24_targets)
    previous = PruneReport.load(settings.model)
    fields = previous.as_json() if previous is not None else {}
    fields.update(
        {
            "output": str(settings.output),
            "recovery": {
                **stage.report.model_dump(mode="json"),
                "settings": settings.model_dump(mode="json"),
                "student": settings.model,
                "calibration": {"source": source, "nsamples": int(calib.shape[0]), "seqlen": settings.seqlen},
                "versions": package_versions(),
                **distributed.group_record(),
            },
        }
    )
    return finish_run(
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
            stage.files,
            config=model.config,
        ),
    )


def _calibration(settings: RecoverSettings, tokenizer: Any, reporter: Reporter) -> tuple[str, torch.Tensor]:
    from llmprune.data.text import calibration_samples, resolve_calibration_source

    source, warning = resolve_calibration_source(settings.calib)
    if warning:
        reporter.log(f"[yellow]warning:[/] {warning}")
    assert settings.seqlen is not None
    samples = calibration_samples(tokenizer, source, settings.nsamples, settings.seqlen, settings.seed, minimum=1)
    note_fewer(samples, settings.nsamples, "--nsamples", reporter)
    return source, samples


def note_fewer(samples: torch.Tensor, asked: int, flag: str, reporter: Reporter) -> None:
    """One line when the calibration text held fewer sequences than the recovery asked for."""
    if samples.shape[0] < asked:
        reporter.log(
            f"[yellow]note:[/] the calibration text holds {samples.shape[0]} sequences of "
            f"{samples.shape[1]} tokens; the recovery distils on all of them ({flag} {asked} asked for more)"
        )
