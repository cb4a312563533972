"""minimax (learned uniform widths) against Wanda-sp and magnitude uniform on the reference model,
at 30% and 50%, with ablations (no LoRA, no distillation, fixed widths) and pruning wall time.
Calibration: 64 × 256 tokens of calib.txt, seed 0; perplexity on the whole eval.txt in 256-token
windows (methods.md §0), models exported in bfloat16 and reloaded.

    python benchmarks/minimax.py                 # everything (long on a busy 2-core machine)
    python benchmarks/minimax.py --ablations 0.5 # ablations at 50% only (the default)
    python benchmarks/minimax.py --reuse-baselines  # take wanda/magnitude rows from baselines.json

Writes benchmarks/results/minimax.json, docs/benchmarks/minimax.md and the 50% trace plot
docs/benchmarks/minimax_trace_50.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil

from common import CALIB, DOCS, REFMODEL, RESULTS, WORK, code_version, evaluate, prune_command, write_results

#: Options given to every minimax run (set from the command line; empty = the method's defaults).
MINIMAX_OPTS: dict = {}
BATCH_SIZE = 8
TABLE_ONLY = False


def prune(strategy: str, method: str, output, sparsity: float, batch_size: int = 8, **options) -> dict:
    """common.prune plus --batch-size (a common option, not a method option)."""
    from llmprune.run.pipeline import run_prune
    from llmprune.settings import PruneSettings

    settings = PruneSettings(
        strategy=strategy,
        method=method,
        model=str(REFMODEL),
        output=output,
        seqlen=256,
        nsamples=64,
        seed=0,
        calib=str(CALIB),
        overwrite=True,
        sparsity=sparsity,
        batch_size=batch_size,
        method_options=options,
    )
    return run_prune(settings).as_json()


ABLATIONS = {
    "no LoRA": {"lora_rank": 0},
    "no distillation": {"distill": False},
    "fixed widths": {"learn_widths": False},
}

COLUMNS = [
    ("method", "method", ""),
    ("variant", "variant", ""),
    ("achieved_sparsity", "achieved sparsity", ".1%"),
    ("widths", "kept per layer (attn units / MLP)", ""),
    ("perplexity", "perplexity", ".2f"),
    ("vs_wanda", "× Wanda-sp", ".2f"),
    ("time_prune_s", "prune time (s)", ".0f"),
    ("command", "command", ""),
]


ROWS = RESULTS / "minimax_rows"


def row_key(method: str, sparsity: float, batch_size: int, options: dict) -> str:
    """A row is reused only for the same code version, command, batch size and method defaults."""
    from llmprune.pruners.base import get_pruner_class, option_defaults

    key = {
        "code": code_version("uniform", "minimax"),
        "command": prune_command("uniform", method, sparsity, **options),
        "batch_size": batch_size,
        "defaults": option_defaults(get_pruner_class("uniform", method)),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def one(method: str, sparsity: float, variant: str = "default", **options) -> dict:
    """Prune + evaluate one configuration; rows are cached so runs can be split across processes."""
    bs = 8
    if method == "minimax":
        options = {**MINIMAX_OPTS, **options}
        bs = BATCH_SIZE
    cache = ROWS / f"{method}-{sparsity}-{variant.replace(' ', '_')}-{row_key(method, sparsity, bs, options)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    if TABLE_ONLY:
        return None
    out = WORK / f"minimax-bench-{method}-{sparsity}-{variant.replace(' ', '_')}"
    report = prune("uniform", method, out, sparsity=sparsity, batch_size=bs, **options)
    result = evaluate(out)
    widths = report["layer_widths"][0]
    mm = report.get("minimax") or {}
    row = {
        "method": method,
        "variant": variant,
        "requested_sparsity": sparsity,
        "achieved_sparsity": report["achieved_sparsity"],
        "widths": f"{widths['kv_heads']} KV groups ({widths['heads']} heads) / {widths['channels']}",
        "perplexity": result["perplexity"],
        "time_prune_s": report["time_prune_s"],
        "command": "`"
        + prune_command("uniform", method, sparsity, **options)
        + (f" --batch-size {bs}" if bs != 8 else "")
        + "`",
        "final_kl": mm.get("final_kl"),
    }
    if method == "minimax" and sparsity == 0.5 and variant == "default" and (out / "minimax_trace.png").exists():
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "minimax_trace.png", DOCS / "minimax_trace_50.png")
        shutil.copyfile(out / "minimax_trace.json", RESULTS / "minimax_trace_50.json")
    print(
        f"{method:10s} {variant:16s} {sparsity:.1f} achieved {report['achieved_sparsity']:.4f} "
        f"{row['widths']} ppl {result['perplexity']:.2f} prune {report['time_prune_s']:.0f}s",
        flush=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    ROWS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsities", default="0.3,0.5")
    ap.add_argument("--ablations", default="0.5", help="sparsities at which to run the ablations ('' for none)")
    ap.add_argument(
        "--reuse-baselines",
        action="store_true",
        help="take dense, wanda and magnitude from results/baselines.json (same settings)",
    )
    ap.add_argument("--steps", type=int, default=None, help="minimax --steps for every run (default: the method's)")
    ap.add_argument("--batch-size", type=int, default=8, help="minimax --batch-size")
    ap.add_argument(
        "--only",
        default="",
        help="run only these minimax rows, e.g. '0.5:default,0.5:no LoRA' "
        "(others come from the row cache); for splitting the work across processes",
    )
    ap.add_argument("--table-only", action="store_true", help="only write the table from cached rows")
    ap.add_argument("--no-table", action="store_true", help="run (and cache) rows without writing the table")
    ap.add_argument("--note", action="append", default=[], help="extra note for the page (repeatable)")
    args = ap.parse_args()
    global BATCH_SIZE, TABLE_ONLY
    BATCH_SIZE, TABLE_ONLY = args.batch_size, args.table_only
    if args.steps:
        MINIMAX_OPTS["steps"] = args.steps
    sparsities = [float(x) for x in args.sparsities.split(",") if x]
    ablate = [float(x) for x in args.ablations.split(",") if x]
    only = {tuple(x.split(":")) for x in args.only.split(",") if x}

    def wanted(sp: float, variant: str) -> bool:
        return not only or (f"{sp}", variant) in only or (f"{sp:g}", variant) in only

    baseline_rows: dict = {}
    dense_ppl = None
    if args.reuse_baselines and (RESULTS / "baselines.json").exists():
        for r in json.loads((RESULTS / "baselines.json").read_text())["rows"]:
            if r.get("strategy") == "dense":
                dense_ppl = r["perplexity"]
            if r.get("strategy") == "uniform":
                key = (r["method"], round(r["achieved_sparsity"], 1))
                baseline_rows[key] = {
                    "method": r["method"],
                    "variant": "baselines.json",
                    "requested_sparsity": key[1],
                    "achieved_sparsity": r["achieved_sparsity"],
                    "perplexity": r["perplexity"],
                    "time_prune_s": r.get("time_prune_s"),
                    "command": r.get("command"),
                    "widths": "uniform split (as fixed widths)",
                }
    if only:  # a worker process: run its rows and stop
        for sp in sparsities:
            for variant in ["default", *ABLATIONS]:
                if wanted(sp, variant):
                    one("minimax", sp, variant, **ABLATIONS.get(variant, {}))
        return
    if dense_ppl is None and not TABLE_ONLY:
        dense_ppl = evaluate(REFMODEL)["perplexity"]
    rows: list[dict] = [
        {
            "method": "dense",
            "variant": "-",
            "achieved_sparsity": 0.0,
            "perplexity": dense_ppl,
            "widths": "4 KV groups (8 heads) / 768",
            "command": "`llmprune eval ../shared/refmodel --data ../shared/data/eval.txt --seqlen 256`",
        }
    ]
    for sp in sparsities:
        group = [baseline_rows.get((m, sp)) or one(m, sp) for m in ("magnitude", "wanda")]
        group.append(one("minimax", sp))
        if sp in ablate:
            group += [one("minimax", sp, name, **opts) for name, opts in ABLATIONS.items()]
        group = [r for r in group if r is not None]
        wanda = next(r["perplexity"] for r in group if r["method"] == "wanda")
        for r in group:
            r["vs_wanda"] = r["perplexity"] / wanda
        rows += group
    if args.no_table:
        return

    notes = [
        "Targets (issue 3): minimax clearly better than Wanda-sp at both sparsities, and at 50% at most "
        "half of Wanda-sp's perplexity (`× Wanda-sp` ≤ 0.50)."
    ]
    for sp in sparsities:
        mm = [
            r for r in rows if r["method"] == "minimax" and r["variant"] == "default" and r["requested_sparsity"] == sp
        ]
        if mm:
            need = 0.5 if sp == 0.5 else 1.0
            status = "met" if mm[0]["vs_wanda"] <= need else "NOT met"
            notes.append(f"- {sp:.0%}: minimax / Wanda-sp = {mm[0]['vs_wanda']:.2f} ({status}).")
    for sp in ablate:
        missing = [
            name
            for name in ABLATIONS
            if not any(
                r["method"] == "minimax" and r["variant"] == name and r["requested_sparsity"] == sp for r in rows
            )
        ]
        if missing:
            notes.append(f"- {sp:.0%} ablations not measured in this run: {', '.join(missing)}.")
    notes += [f"- {n}" for n in args.note]
    if MINIMAX_OPTS or BATCH_SIZE != 8:
        notes.append(f"- minimax runs used {MINIMAX_OPTS} --batch-size {BATCH_SIZE} (see the commands).")
    if (DOCS / "minimax_trace_50.png").exists():
        notes += [
            "",
            "Training trace of the 50% run (losses, widths against the ramped budget, multipliers):",
            "",
            "![minimax trace at 50%](minimax_trace_50.png)",
        ]
    path = write_results(
        "minimax",
        "minimax (learned uniform widths) on the reference model",
        rows,
        COLUMNS,
        intro="Reference model: 8.4M-parameter Llama (8 layers, 8 query / 4 KV heads, MLP 768). All methods keep "
        "the same widths in every layer. Calibration 64 × 256 tokens of calib.txt, seed 0; perplexity on the "
        "whole eval.txt (256-token windows); models exported in bfloat16 and reloaded. minimax runs with its "
        "defaults unless the variant or command says otherwise; its prune time includes the teacher pass and "
        "the Wanda-sp initialisation. Rows marked baselines.json are taken from `benchmarks/baselines.py` "
        "(same calibration and evaluation).",
        notes="\n".join(notes),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
