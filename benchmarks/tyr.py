"""Týr global pruning on the reference model at 30% and 50%, against (a) the same local pruner with
uniform widths (the search's own starting point: ``--generations 0 --iterations 1``), (b) Wanda-sp
uniform and (c) minimax uniform when that method is registered. Calibration: 64 × 256 tokens of
calib.txt (pruning, supernet and search); perplexity on the whole eval.txt in 256-token windows.

    python benchmarks/tyr.py [--sparsities 0.3,0.5] [--threads 1] [--skip-minimax]

Writes benchmarks/results/tyr.json, docs/benchmarks/tyr.md and the per-layer kept-fraction plots
docs/benchmarks/tyr_kept_fraction_<sparsity>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from common import DOCS, RESULTS, WORK, evaluate, prune, prune_command, write_results

COLUMNS = [
    ("sparsity", "target", ".0%"),
    ("variant", "method", ""),
    ("achieved_sparsity", "achieved", ".1%"),
    ("perplexity", "perplexity", ".2f"),
    ("vs_wanda", "÷ Wanda-sp", ".2f"),
    ("vs_start", "÷ uniform start", ".2f"),
    ("fitness", "search KL start → end", ""),
    ("time_supernet_s", "supernet (s)", ".0f"),
    ("time_search_s", "search (s)", ".0f"),
    ("time_prune_s", "prune total (s)", ".0f"),
    ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
    ("command", "command", ""),
]


def minimax_registered() -> bool:
    from llmprune.pruners.base import methods

    return "minimax" in methods("uniform")


def run(label: str, strategy: str, method: str, sparsity: float, **options) -> dict:
    out = WORK / f"tyr-{label}-{sparsity}"
    report = prune(strategy, method, out, sparsity=sparsity, **options)
    result = evaluate(out)
    row = {
        "sparsity": sparsity,
        "variant": label,
        "achieved_sparsity": report["achieved_sparsity"],
        "perplexity": result["perplexity"],
        "time_prune_s": report["time_prune_s"],
        "peak_rss_mib": report["peak_rss_mib"],
        "time_supernet_s": report.get("time_supernet_s"),
        "time_search_s": report.get("time_search_s"),
        "layer_widths": report.get("layer_widths"),
        "command": "`" + prune_command(strategy, method, sparsity, **options) + "`",
    }
    if report.get("search_start_fitness") is not None:
        row["fitness"] = f"{report['search_start_fitness']:.3f} → {report['search_final_fitness']:.3f}"
        row["kept_fraction_attention"] = report.get("kept_fraction_attention")
        row["kept_fraction_mlp"] = report.get("kept_fraction_mlp")
    if label.startswith("tyr global") and (out / "tyr_kept_fraction.png").is_file():
        DOCS.mkdir(parents=True, exist_ok=True)
        suffix = "_free" if "free" in label else ""
        shutil.copyfile(out / "tyr_kept_fraction.png", DOCS / f"tyr_kept_fraction_{int(sparsity * 100)}{suffix}.png")
        row["log"] = json.loads((out / "tyr_search_log.json").read_text())["generations"]
    print(f"{sparsity:.0%} {label:28s} ppl {result['perplexity']:.2f}  prune {report['time_prune_s']:.0f}s", flush=True)
    shutil.rmtree(out)
    partial = json.loads(PARTIAL.read_text()) if PARTIAL.is_file() else []
    PARTIAL.write_text(json.dumps(partial + [row], indent=2) + "\n")
    return row


PARTIAL = RESULTS / "tyr_partial.json"


def cached(label: str, sparsity: float) -> dict | None:
    """A row measured by an earlier, interrupted invocation (``--reuse``)."""
    if not PARTIAL.is_file():
        return None
    return next(
        (r for r in json.loads(PARTIAL.read_text()) if r["variant"] == label and r["sparsity"] == sparsity), None
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sparsities", default="0.3,0.5")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: as configured)")
    parser.add_argument("--skip-minimax", action="store_true")
    parser.add_argument("--free-at", default="0.5", help="sparsities that also get a --budget-split free row")
    parser.add_argument("--reuse", action="store_true", help="reuse rows of an interrupted run (tyr_partial.json)")
    args = parser.parse_args()
    if not args.reuse and PARTIAL.is_file():
        PARTIAL.unlink()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    rows: list[dict] = []
    for sparsity in sparsities:
        jobs = [
            ("tyr global", "global", "tyr", {}),
            ("tyr local, uniform (no search)", "global", "tyr", dict(generations=0, iterations=1)),
            ("wanda-sp uniform", "uniform", "wanda", {}),
        ]
        if str(sparsity) in args.free_at.split(","):
            jobs.insert(1, ("tyr global --budget-split free", "global", "tyr", dict(budget_split="free")))
        if not args.skip_minimax and minimax_registered():
            jobs.append(("minimax uniform", "uniform", "minimax", {}))
        group = []
        for label, strategy, method, options in jobs:
            row = cached(label, sparsity) if args.reuse else None
            group.append(row or run(label, strategy, method, sparsity, **options))
        wanda = next(r["perplexity"] for r in group if r["variant"] == "wanda-sp uniform")
        start = next(r["perplexity"] for r in group if r["variant"].startswith("tyr local"))
        for r in group:
            r["vs_wanda"] = r["perplexity"] / wanda
            r["vs_start"] = r["perplexity"] / start if r["variant"].startswith("tyr") else None
        rows += group
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    plots = "\n\n".join(
        f"![kept fraction per layer, {name}](tyr_kept_fraction_{name}.png)"
        for name in [f"{int(s * 100)}{x}" for s in sparsities for x in ("", "_free")]
        if (DOCS / f"tyr_kept_fraction_{name}.png").is_file()
    )
    table_rows = [
        {k: v for k, v in r.items() if k not in ("layer_widths", "log", "kept_fraction_attention", "kept_fraction_mlp")}
        for r in rows
    ]
    path = write_results(
        "tyr",
        "Týr global pruning (supernet + evolutionary search) on the reference model",
        table_rows,
        COLUMNS,
        intro="Reference model: 8.4M-parameter Llama (8 layers, 8 query / 4 KV heads, MLP 768), dense perplexity "
        "42.45. Calibration (pruning, supernet, search): 64 × 256 tokens of calib.txt, seed 0; perplexity: whole "
        "eval.txt in 256-token windows, model exported in bfloat16 and reloaded. `tyr global` uses the default "
        "settings (4 coarse-to-fine iterations Δ = 12.5% → 1.5625%, 8 generations × 16 offspring each, selection "
        "on 1024/2048/4096 tokens, top-256 dense logits). `tyr local, uniform` is the search's own starting point "
        f"(same local pruner and supernet, uniform widths). Threads per process: {threads} (the 2 cores were "
        "shared with other jobs while measuring, so wall times are pessimistic).",
        notes=plots,
    )
    (RESULTS / "tyr.json").write_text(
        json.dumps({**json.loads((RESULTS / "tyr.json").read_text()), "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
