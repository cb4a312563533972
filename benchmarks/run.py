"""The one benchmark command: every strategy and baseline at the standard settings, evaluated the
same way, written to docs/benchmarks/summary.md (and the docs/benchmarks.md index) with plots.

    python benchmarks/run.py                       # reference model, uniform+global at 20/30/50%, 2:4
    python benchmarks/run.py --model PATH --calib FILE --eval FILE --seqlen 256
    python benchmarks/run.py --methods wanda,tyr --sparsities 0.5

Standard settings: calibration 64 × 256 tokens of calib.txt, seed 0, each method's defaults;
perplexity on the whole evaluation text in non-overlapping windows (methods.md §0). Each prune
runs as its own `llmprune` process, so wall time and peak memory are that command's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import (
    CALIB,
    DOCS,
    EVAL,
    REFMODEL,
    RESULTS,
    WORK,
    display_path,
    evaluate,
    prune,
    prune_command,
    write_results,
)

STRUCTURED = [("uniform", "magnitude"), ("uniform", "wanda"), ("uniform", "minimax"), ("global", "tyr")]
SEMI24 = [("semi24", "magnitude"), ("semi24", "wanda"), ("semi24", "sparsegpt"), ("semi24", "proxsparse")]

COLUMNS = [
    ("strategy", "strategy", ""),
    ("method", "method", ""),
    ("achieved_sparsity", "achieved sparsity", ".1%"),
    ("params_decoder_linear", "decoder-linear params (non-zero)", ","),
    ("perplexity", "perplexity", ".2f"),
    ("ratio", "× dense", ".2f"),
    ("time_prune_s", "prune wall time (s)", ".0f"),
    ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
]


def registered(strategy: str, method: str) -> bool:
    from llmprune.pruners.base import methods

    return method in methods(strategy)


def plot_perplexity(rows: list[dict], dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, method in STRUCTURED:
        points = sorted(
            (r["achieved_sparsity"], r["perplexity"])
            for r in rows
            if r["strategy"] == strategy and r["method"] == method
        )
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{strategy} {method}")
    ax.axhline(dense, color="grey", linestyle="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("achieved sparsity (decoder linear weights)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("Structured pruning on the reference model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_global_widths(rows: list[dict], dense_geometry: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in rows if r["strategy"] == "global" and r.get("layer_widths")]
    if not runs:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for row in sorted(runs, key=lambda r: r["achieved_sparsity"]):
        widths = row["layer_widths"]
        layers = [w["layer"] for w in widths]
        label = f"{row['achieved_sparsity']:.0%}"
        axes[0].plot(layers, [w["heads"] / dense_geometry["num_heads"] for w in widths], marker="o", label=label)
        axes[1].plot(
            layers, [w["channels"] / dense_geometry["intermediate_size"] for w in widths], marker="o", label=label
        )
    axes[0].set_title("attention: kept fraction of query heads")
    axes[1].set_title("MLP: kept fraction of channels")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(title="sparsity")
    axes[0].set_ylabel("kept fraction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REFMODEL))
    parser.add_argument("--calib", default=str(CALIB))
    parser.add_argument("--eval", default=str(EVAL))
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--sparsities", default="0.2,0.3,0.5")
    parser.add_argument("--methods", default="", help="comma-separated subset of method names (default: all)")
    args = parser.parse_args()
    sparsities = [float(s) for s in args.sparsities.split(",")]
    wanted = set(filter(None, args.methods.split(",")))

    jobs = [(st, m, s) for st, m in STRUCTURED for s in sparsities] + [(st, m, None) for st, m in SEMI24]
    jobs = [j for j in jobs if (not wanted or j[1] in wanted) and registered(j[0], j[1])]

    dense = evaluate(Path(args.model), Path(args.eval), args.seqlen)
    rows = [
        {
            "strategy": "dense",
            "method": "-",
            "achieved_sparsity": 0.0,
            "params_decoder_linear": dense["params_decoder_linear"],
            "perplexity": dense["perplexity"],
            "ratio": 1.0,
        }
    ]
    dense_geometry = None
    for strategy, method, sparsity in jobs:
        out = WORK / f"run-{strategy}-{method}-{sparsity}"
        report = prune(
            strategy,
            method,
            out,
            model=args.model,
            calib=args.calib,
            sparsity=sparsity,
            seqlen=args.seqlen,
            nsamples=args.nsamples,
        )
        result = evaluate(out, Path(args.eval), args.seqlen)
        dense_geometry = dense_geometry or report.get("dense_geometry")
        rows.append(
            {
                "strategy": strategy,
                "method": method,
                "requested_sparsity": sparsity,
                "achieved_sparsity": report["achieved_sparsity"],
                "params_decoder_linear": report["params_decoder_linear"],
                "perplexity": result["perplexity"],
                "ratio": result["perplexity"] / dense["perplexity"],
                "time_prune_s": report["time_prune_s"],
                "peak_rss_mib": report["peak_rss_mib"],
                "layer_widths": report.get("layer_widths"),
                "command": prune_command(
                    strategy,
                    method,
                    sparsity,
                    model=args.model,
                    calib=args.calib,
                    seqlen=args.seqlen,
                    nsamples=args.nsamples,
                ),
            }
        )
        print(
            f"{strategy:8s} {method:10s} {report['achieved_sparsity']:.3f} ppl {result['perplexity']:.2f} "
            f"({report['time_prune_s']:.0f} s)",
            flush=True,
        )
        (RESULTS / "run_partial.json").write_text(json.dumps(rows, indent=2))
        shutil.rmtree(out)

    DOCS.mkdir(parents=True, exist_ok=True)
    plot_perplexity(rows, dense["perplexity"], DOCS / "perplexity_vs_sparsity.png")
    has_widths = dense_geometry is not None and plot_global_widths(
        rows, dense_geometry, DOCS / "global_kept_fraction.png"
    )
    commands = "\n".join(f"- `{r['command']}`" for r in rows[1:])
    notes = "![perplexity against sparsity](perplexity_vs_sparsity.png)\n"
    if has_widths:
        notes += "\n![per-layer kept fractions of global](global_kept_fraction.png)\n"
    notes += (
        f"\nCommands (each followed by `llmprune eval OUT --data {display_path(args.eval)} "
        f"--seqlen {args.seqlen}`):\n\n{commands}\n"
    )
    path = write_results(
        "summary",
        "All strategies on one model",
        rows,
        COLUMNS,
        intro=f"Model `{display_path(args.model)}`; calibration {args.nsamples} × {args.seqlen} tokens of "
        f"`{display_path(args.calib)}`, seed 0, each method at its defaults; perplexity on `{display_path(args.eval)}` "
        f"in non-overlapping {args.seqlen}-token windows. "
        "Sparsity is the fraction of decoder-layer linear weights removed (2:4 always removes half).",
        notes=notes,
    )
    (RESULTS / "run_partial.json").unlink(missing_ok=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
