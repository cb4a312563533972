"""ProxSparse at its own budget: select-split perplexity against steps and calibration tokens.

The paper trains one epoch of 400 × 4096 tokens; the CPU defaults train a few dozen steps on
16K tokens. This script measures where the curve goes on the reference model, under the held-out
protocol of ``benchmarks/selection.py`` (fit on 75% of calib.txt's documents, score on the other
25% in 256-token windows; eval.txt is never read; rows cached by code hash + command). The fit
split holds ~74K tokens, so "the whole fit split" is 288 × 256 or 144 × 512.

Points are hand-picked (a full grid would cost hours on 2 shared cores): steps at a fixed budget,
tokens at a fixed number of epochs, and seqlen 256 against 512 at equal tokens. Every row passes
``--steps``, ``--lr``, ``--lambda1`` and ``--batch-size`` explicitly, so a later change of the
defaults does not change what a row means; the learning-rate schedule (warm-up fraction, linear
decay to 0) stretches with ``--steps`` as the method always does. SparseGPT and Wanda 2:4 on the
same fit split (64 × 256 and the whole split) are the reference lines.

    python benchmarks/proxsparse_budget.py

Writes ``benchmarks/results/proxsparse_budget.json``, ``docs/benchmarks/proxsparse_budget.md``
and ``docs/benchmarks/proxsparse_budget.png``.
"""

from __future__ import annotations

from typing import Any

from common import DOCS, write_results
from selection import SEED, SEQLEN, Grid, measure

from llmprune.train.trace import pyplot, save_figure

NAME = "proxsparse_budget"
BATCH = 8  # sequences per step (the pipeline's --batch-size default)
BASE = {"lr": 2e-3, "lambda1": 0.1, "batch_size": BATCH}
#: Prune time on the reference model (2 shared cores) under which a setting may be the default.
DEFAULT_TIME_LIMIT_S = 300.0


def point(nsamples: int, seqlen: int, steps: int | None = None, **options: Any) -> dict[str, Any]:
    """One row's budget (``steps`` only for the trained method) and any other options."""
    return {"nsamples": nsamples, "seqlen": seqlen, **({"steps": steps} if steps else {}), **options}


GRIDS: dict[str, Grid] = {
    "sparsegpt-24": Grid("semi24", "sparsegpt", None, points=[point(64, 256), point(288, 256)], note="SparseGPT 2:4"),
    "wanda-24": Grid("semi24", "wanda", None, points=[point(64, 256), point(288, 256)], note="Wanda 2:4"),
    "proxsparse-budget": Grid(
        "semi24",
        "proxsparse",
        None,
        base=BASE,
        # Cheapest first, so an interrupted run (rows are saved one by one) keeps the most points.
        points=[
            point(64, 256, 24),  # the old defaults: 3 epochs of 16K tokens
            point(288, 256, 36),  # the whole fit split, 1 epoch
            point(32, 512, 24),  # 16K tokens in longer sequences, 6 epochs
            point(64, 256, 72),  # more steps on the same 16K tokens (9 epochs)
            point(144, 512, 18),  # the whole fit split at 512, 1 epoch (against 288 × 256, 36 steps)
            point(288, 256, 72),  # the whole fit split, 2 epochs: data against steps at 72 steps
            point(64, 256, 18),  # the step count of the whole split at 512 on the old defaults' 16K tokens
            point(64, 256, 36),  # the step count of the whole split at 256 on the old defaults' 16K tokens
        ],
        note="ProxSparse budget curve",
    ),
}


def describe(row: dict[str, Any]) -> dict[str, Any]:
    """Budget columns of a row: calibration tokens, tokens trained on, epochs, prox time."""
    vary = row["vary"]
    n, L = int(vary.get("nsamples", 64)), int(vary.get("seqlen", SEQLEN))
    steps = vary.get("steps")
    out = {**row, "nsamples": n, "seqlen": L, "steps": steps, "calib_tokens": n * L}
    if steps is not None:
        out["train_tokens"] = steps * BATCH * L
        out["epochs"] = steps * BATCH / n
        details = row.get("details", {})
        out["time_prox_s"] = details.get("time_prox_s")
        out["share24"] = details.get("final_share_24")
    return out


COLUMNS = [
    ("grid", "method", ""),
    ("nsamples", "nsamples", ""),
    ("seqlen", "seqlen", ""),
    ("calib_tokens", "calibration tokens", ","),
    ("steps", "steps", ""),
    ("epochs", "epochs", ".1f"),
    ("train_tokens", "tokens trained on", ","),
    ("perplexity", "select-split perplexity", ".2f"),
    ("vs_sparsegpt", "vs SparseGPT 2:4 (64 × 256)", "+.2f"),
    ("wall_time_s", "prune time (s)", ".0f"),
    ("time_prox_s", "of which prox (s)", ".0f"),
    ("share24", "groups 2:4 before the final mask", ".1%"),
    ("command", "command (CALIB_FIT = the fit split)", ""),
]


def plot(rows: list[dict[str, Any]], path) -> None:
    """Perplexity against tokens trained on, one line per calibration set, baselines as lines."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(11, 4.8))
    curve = [r for r in rows if r["grid"] == "proxsparse-budget"]
    for key in sorted({(r["seqlen"], r["nsamples"]) for r in curve}):
        series = sorted((r for r in curve if (r["seqlen"], r["nsamples"]) == key), key=lambda r: r["train_tokens"])
        ax.plot(
            [r["train_tokens"] for r in series],
            [r["perplexity"] for r in series],
            marker="o" if key[0] == SEQLEN else "s",
            ls="-" if key[0] == SEQLEN else "--",
            label=f"proxsparse {key[1]} × {key[0]} ({key[0] * key[1] // 1000}K calibration tokens)",
        )
        for r in series:
            below = key[0] != SEQLEN  # the 512 series labels go under their points
            ax.annotate(
                f"{r['steps']}",
                (r["train_tokens"], r["perplexity"]),
                fontsize=7,
                xytext=(3, -10 if below else 4),
                textcoords="offset points",
            )
    styles = {"sparsegpt-24": ("SparseGPT 2:4", "C3"), "wanda-24": ("Wanda 2:4", "C7")}
    dense = rows[0]["perplexity"]
    top = max(r["perplexity"] for r in rows if r["grid"] != "wanda-24") + 0.8
    for r in rows:
        if r["grid"] in styles:
            label, color = styles[r["grid"]]
            off = r["perplexity"] > top  # Wanda is far above: named in the legend, not drawn
            ax.axhline(
                min(r["perplexity"], top),
                color=color,
                ls=":" if r["nsamples"] == 64 else "-.",
                lw=0 if off else 1,
                label=f"{label}, {r['nsamples']} × {r['seqlen']} ({r['perplexity']:.2f}{', off the chart' if off else ''})",
            )
    ax.axhline(dense, color="k", lw=0.8, label=f"dense ({dense:.2f})")
    ax.set_ylim(dense - 0.5, top)
    ax.set_xscale("log")
    ax.set_xlabel("tokens trained on (steps × batch 8 × seqlen); point labels = steps")
    ax.set_ylabel("perplexity on the select split")
    ax.set_title("ProxSparse 2:4 on the reference model: budget curve (held-out calibration text)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, path)


def findings(rows: list[dict[str, Any]]) -> str:
    """Best setting, best setting within the default time limit, and the gap to SparseGPT."""
    curve = [r for r in rows if r["grid"] == "proxsparse-budget"]
    sgpt = {r["nsamples"]: r for r in rows if r["grid"] == "sparsegpt-24"}
    best = min(curve, key=lambda r: r["perplexity"])
    fast = [r for r in curve if (r.get("wall_time_s") or 1e9) <= DEFAULT_TIME_LIMIT_S]
    lines = [
        f"- Best point: `{best['setting']}` at {best['perplexity']:.2f} ({best['wall_time_s']:.0f} s).",
    ]
    if fast:
        pick = min(fast, key=lambda r: r["perplexity"])
        lines.append(
            f"- Best point whose prune time is ≤ {DEFAULT_TIME_LIMIT_S:.0f} s: `{pick['setting']}` at "
            f"{pick['perplexity']:.2f} ({pick['wall_time_s']:.0f} s)."
        )
    for n, ref in sorted(sgpt.items()):
        gap = best["perplexity"] - ref["perplexity"]
        verdict = "below" if gap < 0 else "above"
        lines.append(
            f"- SparseGPT 2:4 with {n} × {ref['seqlen']} calibration tokens: {ref['perplexity']:.2f}; the best "
            f"ProxSparse point is {abs(gap):.2f} ({abs(gap) / ref['perplexity']:.1%}) {verdict} it."
        )
    return "\n".join(lines)


def main() -> None:
    rows = [describe(r) if r["grid"] != "dense" else r for r in measure(list(GRIDS), GRIDS, NAME)]
    dense = rows[0]
    ref = next(r for r in rows if r["grid"] == "sparsegpt-24" and r["nsamples"] == 64)
    for r in rows[1:]:
        r["vs_sparsegpt"] = r["perplexity"] - ref["perplexity"]
    png = DOCS / f"{NAME}.png"
    plot(rows, png)
    write_results(
        NAME,
        "ProxSparse at its own budget (held-out calibration text)",
        rows,
        COLUMNS,
        intro="Protocol of `benchmarks/selection.py`: calib.txt split into contiguous regions of whole "
        "paragraphs (8 KB or more), every fourth region is the "
        f"*select* split, the rest the *fit* split (CALIB_FIT). Every run prunes on the fit split "
        f"(seed {SEED}, batch {BATCH}, lr {BASE['lr']:g} with 10% warm-up and linear decay over the run's steps, "
        f"λ₁ {BASE['lambda1']:g}); perplexity on the select split in {SEQLEN}-token windows. eval.txt is not read. "
        f"Dense perplexity on the select split: {dense['perplexity']:.2f}. One seed per row. Prune times are "
        "wall times on 2 CPU cores shared with other jobs (compare within the table only).",
        notes=findings(rows) + f"\n\n![ProxSparse budget curve]({png.name})",
    )


if __name__ == "__main__":
    main()
