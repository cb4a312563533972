"""Baselines on the reference model: dense, magnitude and Wanda-sp uniform at 30% and 50%, and
2:4 magnitude / Wanda / SparseGPT. Calibration: 64 × 256 tokens of calib.txt, seed 0; perplexity
on the whole eval.txt in 256-token windows (methods.md §0).

    python benchmarks/baselines.py
"""

from __future__ import annotations

import shutil

from common import REFMODEL, WORK, evaluate, prune, prune_command, write_results

RUNS = [
    ("uniform", "magnitude", 0.3),
    ("uniform", "wanda", 0.3),
    ("uniform", "magnitude", 0.5),
    ("uniform", "wanda", 0.5),
    ("semi24", "magnitude", None),
    ("semi24", "wanda", None),
    ("semi24", "sparsegpt", None),
]

COLUMNS = [
    ("strategy", "strategy", ""),
    ("method", "method", ""),
    ("achieved_sparsity", "achieved sparsity", ".1%"),
    ("params_decoder_linear", "decoder-linear params (non-zero)", ","),
    ("perplexity", "perplexity", ".2f"),
    ("ratio", "× dense", ".2f"),
    ("time_prune_s", "prune time (s)", ".1f"),
    ("peak_rss_mib", "peak RSS (MiB)", ".0f"),
    ("command", "command", ""),
]


def main() -> None:
    dense = evaluate(REFMODEL)
    rows = [
        {
            "strategy": "dense",
            "method": "-",
            "achieved_sparsity": 0.0,
            "params_decoder_linear": dense["params_decoder_linear"],
            "perplexity": dense["perplexity"],
            "ratio": 1.0,
            "command": "llmprune eval ../shared/refmodel --data ../shared/data/eval.txt --seqlen 256",
        }
    ]
    for strategy, method, sparsity in RUNS:
        out = WORK / f"{strategy}-{method}-{sparsity}"
        report = prune(strategy, method, out, sparsity=sparsity)
        result = evaluate(out)
        rows.append(
            {
                "strategy": strategy,
                "method": method,
                "achieved_sparsity": report["achieved_sparsity"],
                "params_decoder_linear": report["params_decoder_linear"],
                "perplexity": result["perplexity"],
                "ratio": result["perplexity"] / dense["perplexity"],
                "time_prune_s": report["time_prune_s"],
                "peak_rss_mib": report["peak_rss_mib"],
                "command": "`" + prune_command(strategy, method, sparsity) + "`",
            }
        )
        print(
            f"{strategy:8s} {method:10s} {report['achieved_sparsity']:.3f} ppl {result['perplexity']:.2f}", flush=True
        )
        shutil.rmtree(out)
    path = write_results(
        "baselines",
        "Baselines on the reference model",
        rows,
        COLUMNS,
        intro="Reference model: 8.4M-parameter Llama (8 layers, 8 query / 4 KV heads, MLP 768). "
        "Calibration: 64 × 256 tokens from calib.txt, seed 0. Perplexity: whole eval.txt, "
        "non-overlapping 256-token windows, float32. Pruned models are exported in bfloat16 "
        "(the checkpoint's dtype) and evaluated after reloading.",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
