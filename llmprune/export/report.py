"""``PruneReport``: the typed contents of ``llmprune_report.json``.

The pipeline builds it, the export writes it, and ``eval``, ``inspect``, the terminal summary and
stacking (a pruned model pruned again) read it back through ``PruneReport.load`` instead of each
picking its own dictionary keys. A method adds its own fields (``PruneResult.report``, e.g.
``semi24_skipped`` or a ``minimax`` block); they are kept as extra fields, in order
(as are the ``alignment`` entry and anything a later llmprune adds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llmprune.errors import ModelLoadError
from llmprune.export.save import REPORT_FILE

#: Keys written after the method's own fields (they are only known at the very end of a run).
_TAIL = ("distributed", "peak_rss_mib", "peak_cuda_mib", "time_total_s")


class Calibration(BaseModel):
    """The calibration text actually used (``auto`` resolved) and its windows."""

    model_config = ConfigDict(extra="allow")

    source: str
    nsamples: int
    seqlen: int | None = None
    text_sha256: str | None = None  # of the calibration text, to tell runs on different text apart


class HistoryStep(BaseModel):
    """One earlier pruning of the input (stacking, e.g. uniform → 2:4)."""

    model_config = ConfigDict(extra="allow")

    strategy: str | None = None
    method: str | None = None
    achieved_sparsity: float | None = None
    layer_widths: list[dict[str, int]] | None = None
    calibration: Calibration | None = None
    model: str | None = None


class RecoveryReport(BaseModel):
    """What the recovery stage did (``llmprune recover`` or ``--recover``; docs/recovery.md)."""

    model_config = ConfigDict(extra="allow")

    teacher: str
    mode: str  # lora | full
    options: dict[str, Any] = {}  # the validated RecoveryOptions, as JSON
    steps: int
    sequences_per_step: int
    sequences: int | None = None  # calibration sequences distilled on (the training set)
    seqlen: int
    tokens_seen: int  # steps × sequences × seqlen over all ranks
    trained_params: int  # adapter parameters (lora) or weights (full)
    objective_before: dict[str, float] = {}  # loss, kl, lm averaged over every calibration sequence
    objective_after: dict[str, float] = {}
    loss_curve: list[float] = []  # the training loss of every step (also in recovery_curve.json)
    zeros_checked: int | None = None  # 2:4 only: zeros verified to be still exactly zero
    time_teacher_s: float | None = None
    time_train_s: float | None = None


class PruneReport(BaseModel):
    """What one pruning run did. Fields absent from an older report are None (or empty)."""

    model_config = ConfigDict(extra="allow")

    strategy: str | None = None
    method: str | None = None
    settings: dict[str, Any] = {}  # PruneSettings, as JSON
    input_model: dict[str, Any] | None = None  # an input its path does not describe: a GGUF file's sha256, quantization
    options: dict[str, Any] = {}  # the method's validated Options, as JSON
    seed: int | None = None
    device: str | None = None
    compute_dtype: str | None = None
    save_dtype: str | None = None
    dense_geometry: dict[str, int] | None = None
    requested_sparsity: float | None = None
    achieved_sparsity: float | None = None
    layer_sparsity: list[float] = []
    layer_widths: list[dict[str, int]] | None = None  # structured outputs only
    params_decoder_linear_dense: int | None = None
    params_decoder_linear: int | None = None
    params_total_dense: int | None = None
    params_total: int | None = None
    sparsity_warning: str | None = None  # the structured budget could not be met closely
    calibration: Calibration | None = None
    time_load_s: float | None = None
    time_prune_s: float | None = None
    versions: dict[str, str] = {}
    output: str | None = None
    history: list[HistoryStep] = []
    recovery: RecoveryReport | None = None  # only after a recovery stage
    distributed: dict[str, Any] | None = None  # only under torchrun
    peak_rss_mib: float | None = None
    peak_cuda_mib: float | None = None  # only with CUDA
    time_total_s: float | None = None

    @classmethod
    def load(cls, folder: str | Path) -> PruneReport | None:
        """The report in ``folder``, or None when the folder is not an llmprune output."""
        path = Path(folder).expanduser() / REPORT_FILE
        if not path.is_file():
            return None
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "report"
            raise ModelLoadError(f"{path} is not a readable llmprune report: {where}: {first['msg']}") from err
        except (OSError, UnicodeDecodeError, ValueError) as err:
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelLoadError(f"{path} is not a readable llmprune report: {line}") from err

    def as_json(self) -> dict[str, Any]:
        """The JSON object written to ``llmprune_report.json`` (only the fields that were set)."""
        data = self.model_dump(mode="json", exclude_unset=True)
        tail = {k: data.pop(k) for k in _TAIL if k in data}
        return {**data, **tail}

    def as_history_step(self) -> HistoryStep:
        """This run as one entry of the history of a model pruned from its output."""
        step = HistoryStep(
            strategy=self.strategy,
            method=self.method,
            achieved_sparsity=self.achieved_sparsity,
            layer_widths=self.layer_widths,
            calibration=self.calibration,
            model=self.settings.get("model"),
        )
        if self.input_model is not None:  # a GGUF input's sha256 and quantization stay with its step
            step = HistoryStep.model_validate({**step.model_dump(exclude_unset=True), "input_model": self.input_model})
        return step

    def pruning_history(self) -> list[HistoryStep]:
        """Every pruning applied to this output, oldest first (the history a further run inherits)."""
        return [*self.history, self.as_history_step()]


def package_versions() -> dict[str, str]:
    """The versions a report records (what produced the output)."""
    import platform

    import torch
    import transformers

    import llmprune

    return {
        "llmprune": llmprune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
