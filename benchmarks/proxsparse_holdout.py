"""ProxSparse defaults re-checked on held-out *calibration* text (never the evaluation set).

The calibration file is split by documents: the first 75% calibrates every run, the last 25% is
the validation set that ranks the settings. ``eval.txt`` is not read. This is how the defaults
(``--lr``, ``--metric``, ``--lambda1``) must be chosen under methods.md §0.

    python benchmarks/proxsparse_holdout.py
"""

from __future__ import annotations

from common import CALIB, WORK, evaluate, prune, prune_command, write_results

COLUMNS = [
    ("run", "run", ""),
    ("perplexity", "validation perplexity", ".2f"),
    ("wall_time_s", "prune time (s)", ".0f"),
    ("command", "command (calib = first 75% of calib.txt)", ""),
]

#: (label, method, options): the defaults, then one change at a time.
JOBS = [
    ("wanda 2:4", "wanda", {}),
    ("sparsegpt 2:4", "sparsegpt", {}),
    ("proxsparse defaults (lr 2e-3, metric wanda, lambda1 0.1)", "proxsparse", {}),
    ("proxsparse lr 5e-4", "proxsparse", {"lr": 5e-4}),
    ("proxsparse lr 5e-3", "proxsparse", {"lr": 5e-3}),
    ("proxsparse metric plain", "proxsparse", {"metric": "plain"}),
    ("proxsparse lambda1 0.03", "proxsparse", {"lambda1": 0.03}),
    ("proxsparse lambda1 0.3", "proxsparse", {"lambda1": 0.3}),
]


def split_calibration(fraction: float = 0.75) -> tuple:
    """Write the fit and validation parts of calib.txt (split between documents)."""
    docs = [d for d in CALIB.read_text().split("\n\n") if d.strip()]
    cut = int(len(docs) * fraction)
    WORK.mkdir(parents=True, exist_ok=True)
    fit, held = WORK / "calib_fit.txt", WORK / "calib_holdout.txt"
    fit.write_text("\n\n".join(docs[:cut]) + "\n")
    held.write_text("\n\n".join(docs[cut:]) + "\n")
    return fit, held


def main() -> None:
    fit, held = split_calibration()
    dense = evaluate(CALIB.parent.parent / "refmodel", data=held)
    rows = [{"run": "dense", "perplexity": dense["perplexity"], "wall_time_s": None, "command": "-"}]
    for label, method, options in JOBS:
        out = WORK / f"holdout-{method}-{len(rows)}"
        report = prune("semi24", method, out, calib=fit, **options)
        result = evaluate(out, data=held)
        rows.append(
            {
                "run": label,
                "perplexity": result["perplexity"],
                "wall_time_s": report["time_prune_s"],
                "command": "`" + prune_command("semi24", method, calib="CALIB_FIT", **options) + "`",
            }
        )
        print(rows[-1], flush=True)
    tuned = [r for r in rows if r["run"].startswith("proxsparse")]
    best = min(tuned, key=lambda r: r["perplexity"])
    write_results(
        "proxsparse_holdout",
        "ProxSparse defaults on held-out calibration text",
        rows,
        COLUMNS,
        intro="calib.txt split by documents: the first 75% (CALIB_FIT) calibrates every run (64 × 256 tokens, "
        "seed 0), perplexity is measured on the last 25% in 256-token windows. eval.txt is not read, so these "
        f"numbers may legitimately choose the defaults. Validation windows: {dense['eval_tokens']:,} tokens.",
        notes=f"Best ProxSparse setting on the validation text: **{best['run']}** ({best['perplexity']:.2f}).",
    )


if __name__ == "__main__":
    main()
