"""Readable end-of-run tables for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import JustifyMethod
from rich.table import Table

from llmprune.export.report import PruneReport, RecoveryReport
from llmprune.runtime.progress import console


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f}M"


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def print_prune_summary(report: PruneReport) -> None:
    table = Table(title=f"llmprune {report.strategy} --method {report.method}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("requested sparsity", _percent(report.requested_sparsity))
    table.add_row("achieved sparsity", _percent(report.achieved_sparsity))
    table.add_row(
        "decoder linear params",
        f"{_millions(report.params_decoder_linear_dense)} → {_millions(report.params_decoder_linear)}",
    )
    table.add_row("total params", f"{_millions(report.params_total_dense)} → {_millions(report.params_total)}")
    padding = deci_padding_line(report)
    if padding:
        table.add_row("stored (deci)", padding)
    if report.layer_widths:
        shapes = {(w["heads"], w["kv_heads"], w["channels"]) for w in report.layer_widths}
        if len(shapes) == 1:
            h, kv, ch = shapes.pop()
            table.add_row("per-layer widths", f"{h} heads, {kv} KV heads, {ch} MLP channels")
        else:
            table.add_row("per-layer widths", "heterogeneous (see llmprune_plan.json)")
    table.add_row("prune time", f"{_seconds(report.time_prune_s)} (total {_seconds(report.time_total_s)})")
    if report.recovery is not None:
        table.add_row("recovery", recovery_line(report.recovery))
    if report.peak_rss_mib is not None:
        table.add_row("peak memory", f"{report.peak_rss_mib:.0f} MiB RSS")
    table.add_row("output", str(report.output))
    console.print(table)


def deci_padding_line(report: PruneReport) -> str | None:
    """What ``--export-format deci`` stored beyond the pruned widths, and the format that avoids it.

    The DeciLM format keeps every layer's query-head count and rounds MLP widths up to 256, so the
    exporter pads with zeros: the stored decoder-linear weights can be as many as the dense model's
    (a uniform 30% output of a 6.29M model stored 6.29M). ``None`` for other formats.
    """
    deci = (report.model_extra or {}).get("deci")
    if not isinstance(deci, dict) or "padding_params" not in deci:
        return None
    padded, padding = deci.get("params_decoder_linear_padded"), int(deci["padding_params"])
    if padding == 0:
        return f"{_millions(padded)} decoder linear params, no zero padding"
    hf = (
        "--export-format hf stores none (a plain config)"
        if report.strategy == "uniform"
        else "--export-format hf stores none (transformers only, not vLLM or llama.cpp)"
    )
    return f"{_millions(padded)} decoder linear params, {_millions(padding)} of them zero padding; {hf}"


def recovery_line(r: RecoveryReport) -> str:
    """The recovery stage in one line: what trained, how long, and the objective before → after."""
    before, after = r.objective_before.get("loss"), r.objective_after.get("loss")
    change = (
        f"objective {before:.4f} → {after:.4f} on the calibration text"
        if before is not None and after is not None
        else ""
    )
    over = f" over {r.sequences} sequences" if r.sequences else ""
    return f"{r.mode}, {r.steps} steps, {r.tokens_seen:,} tokens{over}, {_seconds(r.time_train_s)}: {change}"


def print_eval_summary(report: dict[str, Any]) -> None:
    table = Table(title=f"llmprune eval {report['model']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    if "perplexity" in report:
        table.add_row("perplexity", f"{report['perplexity']:.3f}")
        table.add_row(
            "data",
            f"{report['data']} ({report['eval_windows']} windows × {report['seqlen']} = {report['eval_tokens']} tokens)",
        )
    table.add_row("params total", f"{report['params_total']:,}")
    table.add_row("params decoder linear", f"{report['params_decoder_linear']:,}")
    pruning = report.get("pruning") or {}
    if pruning.get("method"):
        table.add_row(
            "pruned by", f"{pruning['strategy']} --method {pruning['method']} ({pruning['achieved_sparsity']:.2%})"
        )
    if "prefill_tokens_per_s" in report:
        table.add_row("prefill", f"{report['prefill_tokens_per_s']:,.0f} tokens/s")
        table.add_row("decode", f"{report['decode_tokens_per_s']:,.1f} tokens/s")
    if "speedup_prefill" in report:
        table.add_row(
            "speed-up vs baseline",
            f"prefill ×{report['speedup_prefill']:.2f}, decode ×{report['speedup_decode']:.2f} ({report['baseline']})",
        )
    table.add_row("device / dtype", f"{report['device']} / {report['dtype']}")
    console.print(table)
    if report.get("tasks"):
        print_task_summary(report["tasks"])


def print_task_summary(tasks: dict[str, Any]) -> None:
    """One row per task (and group): examples, acc and acc_norm ± stderr, other metrics."""
    settings = tasks["settings"]
    limit = f", limit {settings['limit']}" if settings.get("limit") else ""
    table = Table(title=f"tasks (lm-eval {settings['lm_eval_version']}, {settings['num_fewshot']}-shot{limit})")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("task", "left"),
        ("examples", "right"),
        ("acc", "right"),
        ("acc_norm", "right"),
        ("other", "left"),
    )
    for col, justify in columns:
        table.add_column(col, justify=justify)

    def cell(row: dict[str, Any], metric: str) -> str:
        if row.get(metric) is None:
            return "-"
        err = row.get(f"{metric}_stderr")
        return f"{row[metric]:.4f}" + ("" if err is None else f" ± {err:.4f}")

    skip = {"n_samples", "n_available", "num_fewshot", "version", "group", "acc", "acc_norm"}
    for name, row in tasks["results"].items():
        other = ", ".join(
            f"{k} {v:.4f}"
            for k, v in row.items()
            if k not in skip and not k.endswith("_stderr") and isinstance(v, float)
        )
        examples = "group" if row.get("group") else f"{row['n_samples']}/{row['n_available']}"
        table.add_row(name, examples, cell(row, "acc"), cell(row, "acc_norm"), other or "")
    console.print(table)


def print_inspect(info: dict[str, Any]) -> None:
    table = Table(title=f"llmprune inspect {info['folder']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("model type", str(info["model_type"]))
    if info.get("gguf"):
        kinds = ", ".join(f"{k} {n}" for k, n in info["gguf"]["tensor_types"].items())
        table.add_row("GGUF", f"{info['gguf']['quantization']} (tensors: {kinds})")
    if info["pruned_by_llmprune"]:
        table.add_row(
            "pruned by",
            f"{info['strategy']} --method {info['method']} ({info['achieved_sparsity']:.2%} of decoder linear weights)",
        )
        settings = info.get("settings") or {}
        keys = ("model", "sparsity", "calib", "nsamples", "seqlen", "seed", "attn_unit")
        table.add_row("settings", ", ".join(f"{k}={settings[k]}" for k in keys if k in settings))
        for step in info.get("history", []):
            table.add_row(
                "applied before",
                f"{step.get('strategy')} --method {step.get('method')} "
                f"({step.get('achieved_sparsity', 0):.2%}) on {step.get('model')}",
            )
    else:
        table.add_row("pruned by", "not an llmprune output")
    table.add_row("params total", f"{info['params_total']:,}")
    table.add_row("params decoder linear", f"{info['params_decoder_linear']:,} (stored)")
    if info["semi24"]:
        table.add_row("2:4", f"{info['semi24_targets']} weights, zero fraction {info['semi24_zero_fraction']:.2%}")
    table.add_row("widths", "uniform" if info["uniform_widths"] else "heterogeneous per layer")
    table.add_row("loads", ("[green]" if info["loads_without_custom_code"] else "[yellow]") + info["loading"])
    console.print(table)
    layers = Table(title="per-layer widths")
    for col in ("layer", "heads", "KV heads", "MLP channels"):
        layers.add_column(col, justify="right")
    for row in info["layers"]:
        layers.add_row(str(row["layer"]), str(row["heads"]), str(row["kv_heads"]), str(row["channels"]))
    console.print(layers)
