"""The one benchmark command: every strategy and baseline at the standard settings, side by side,
one-shot and after the same recovery budget, written to docs/benchmarks/summary.md (and the
docs/benchmarks.md index) with plots.

    python benchmarks/run.py                          # reference model: 50/30/20% structured and 2:4
    python benchmarks/run.py --sparsities 0.5 --methods wanda,tyr
    python benchmarks/run.py --rerun minimax          # ignore the row cache for these methods

Two columns per row, measuring two different things:

* **one-shot**: the structure (widths, or the 2:4 pattern) and the weights right after pruning, with
  no weight training once the structure is fixed. Minimax's masks are learned, but its LoRA phase is
  off (``--lora-rank 0``); SparseGPT's and Týr's weight updates are part of their pruning step.
* **+ recovery**: that same output after one and the same ``llmprune recover`` run (top-k KD from
  the dense model, LoRA rank 16 merged, 100 steps × 8 × 256 tokens of the calibration text, seed 0;
  2:4 zeros stay zero).

Extra rows: the control "Wanda-sp at minimax's learned widths" (``--widths``, the split minimax
chose at that sparsity), and minimax at its defaults (its own joint LoRA phase, trained while the
masks are learned; not the shared recovery stage: it is listed for continuity, not compared).

Standard settings: calibration 64 × 256 tokens of calib.txt, seed 0, each method's defaults;
perplexity on the whole evaluation text in non-overlapping windows (methods.md §0): this is the
final table, nothing here chooses a default (benchmarks/selection.py does, on held-out calib text).
Each prune and recovery runs as its own ``llmprune`` process, so wall time and peak memory are its
own. Rows are cached in ``benchmarks/results/summary_rows.json`` in two parts, each under a
``common.row_key`` (shared with benchmarks/selection.py): the one-shot part by its prune command,
the method's option defaults, the hashes of the text files and the code version (a content hash of
``llmprune/`` without the other methods' files); the recovery part by its recover command, the recovery defaults, the code version
and the one-shot key it continues. The pruned outputs are kept (``benchmarks/results/work/run-*``,
marked with their one-shot key), so a change of the recovery defaults re-runs only the recoveries.

    python benchmarks/run.py --stale         # run nothing: each stale row and why, counts by reason
    python benchmarks/run.py --cached-only   # the page from cached rows, stale ones marked with why

Another model's page (``--page NAME``: ``benchmarks/results/NAME.json``, ``docs/benchmarks/NAME.md``
and its own plots; the reference model's ``summary`` page is left alone). ``--model`` takes a model
folder or a name of ``benchmarks/models.py`` (fetched and converted once), whose page is its name:

    python benchmarks/run.py --model smollm2 --oneshot-only --methods magnitude,wanda,sparsegpt

Every row also measures, besides its perplexity: the prune run's own wall time (``time_total_s``
of its report) and peak RSS beside the peak host memory ``--estimate`` predicts for the same
command (config only) and their ratio, and the pruned output's prefill and decode speed against
the dense model timed in the same process (``llmprune eval OUT --speed --baseline DENSE``, which
also gives the row's perplexity). A cached row measured before these columns gets them when its
pruned output is still kept; otherwise they are blank.

A row cached under another key is *stale*: ``--cached-only`` shows it (marked, with the component
that changed: code version, a default, a text) instead of leaving it out; any other run re-runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import models
from common import (
    CALIB,
    DOCS,
    EVAL,
    REFMODEL,
    RESULTS,
    WORK,
    code_version,
    display_path,
    evaluate,
    format_reasons,
    key_text,
    nearest_stale,
    option_flags,
    prune,
    prune_args,
    prune_command,
    row_key,
    run_llmprune,
    text_hash,
    write_results,
)

STRUCTURED = [("uniform", "magnitude"), ("uniform", "wanda"), ("uniform", "minimax"), ("global", "tyr")]
SEMI24 = [("semi24", "magnitude"), ("semi24", "wanda"), ("semi24", "sparsegpt"), ("semi24", "proxsparse")]
#: One-shot settings where a method's default trains weights after the structure is fixed.
ONE_SHOT = {"minimax": {"lora_rank": 0}}
#: Extra rows: a method's output recovered again with other recovery settings than the column's.
#: ``nsamples`` 256: the recovery distilling on 256 calibration sequences instead of the column's
#: 64 (the pruning's), the default of --recover-nsamples since 2026-11-30 (selection grids recovery-n256-*).
#: (Týr's extra row at --lr 5e-4, the rate the select split chose for 64 sequences, went with the
#: 256-sequence default: summary_2026-11-30.json keeps it.)
RECOVER_AT: dict[str, list[dict[str, Any]]] = {
    m: [{"nsamples": 256}] for m in ("magnitude", "wanda", "minimax", "tyr", "sparsegpt", "proxsparse")
}
#: Týr at 50% with longer searches than the default 8 generations per iteration: how far search
#: length goes (select split, grids tyr-final-default and tyr-longer: 8 / 16 / 32 generations
#: 42.52 / 42.31 / 42.23; the paper's 50 was dropped unmeasured once 32 gained so little).
LONGER_SEARCH = [{"generations": 16}]  # 32 (at --percdamp 0.01: 46.30): summary_2026-12-01.json
CACHE = RESULTS / "summary_rows.json"

COLUMNS = [
    ("strategy", "strategy", ""),
    ("label", "method", ""),
    ("achieved_sparsity", "achieved sparsity", ".1%"),
    ("params_decoder_linear", "decoder-linear params (non-zero)", ","),
    ("perplexity", "one-shot ppl", ".2f"),
    ("perplexity_recovered", "+ recovery ppl", ".2f"),
    ("time_prune_s", "prune wall (s)", ".0f"),
    ("time_recover_s", "recovery wall (s)", ".0f"),
    ("time_total_s", "prune total (s)", ".0f"),
    ("peak_rss_mib", "prune peak RSS (MiB)", ".0f"),
    ("predicted_peak_host_mib", "predicted peak (MiB)", ".0f"),
    ("peak_ratio", "measured / predicted", ".2f"),
    ("speedup_prefill", "prefill × dense", ".2f"),
    ("speedup_decode", "decode × dense", ".2f"),
]


@dataclass
class Job:
    """One row: a pruning command, then (unless ``recover`` is off) the shared recovery on its output."""

    strategy: str
    method: str
    sparsity: float | None
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    recover: bool = True
    widths_from: str | None = None  # the label of the row whose learned widths this one keeps
    recover_options: dict[str, Any] = field(default_factory=dict)  # non-default recovery flags
    output_from: str | None = None  # the label of the row whose pruned output this one recovers


def registered(strategy: str, method: str) -> bool:
    from llmprune.pruners.base import methods

    return method in methods(strategy)


def jobs_for(sparsities: list[float], wanted: set[str]) -> list[Job]:
    """Rows in the order they are run: 50% and 2:4 first (the issue's targets), then the rest."""
    jobs: list[Job] = []
    order = sorted(sparsities, reverse=True)
    for i, s in enumerate(order):
        for strategy, method in STRUCTURED:
            jobs += with_recovered_again(Job(strategy, method, s, method, dict(ONE_SHOT.get(method, {}))))
            if method == "tyr" and s == 0.5:  # the one-shot target's rows at longer searches
                for longer in LONGER_SEARCH:
                    label = "tyr " + " ".join(f"--{k} {v}" for k, v in longer.items())
                    jobs += with_recovered_again(Job(strategy, method, s, label, dict(longer)))
            if method == "minimax":
                control = Job("uniform", "wanda", s, "wanda @ minimax widths", widths_from=f"minimax@{s}")
                jobs += with_recovered_again(control)
        if i == 0:
            for st, m in SEMI24:
                jobs += with_recovered_again(Job(st, m, None, m))
    jobs += [Job("uniform", "minimax", s, "minimax default (own LoRA)", recover=False) for s in order]
    return [j for j in jobs if (not wanted or j.method in wanted) and registered(j.strategy, j.method)]


def with_recovered_again(job: Job) -> list[Job]:
    """``job`` and its ``RECOVER_AT`` rows: the same output recovered with other settings."""
    return [job] + [
        Job(
            job.strategy,
            job.method,
            job.sparsity,
            f"{job.label}, recovery " + " ".join(f"--{k} {v:g}" for k, v in extra.items()),
            dict(job.options),
            widths_from=job.widths_from,
            recover_options=extra,
            output_from=job.label,
        )
        for extra in RECOVER_AT.get(job.method, [])
    ]


def recover_args(pruned: Path, out: Path, args: argparse.Namespace, options: dict[str, Any]) -> list[str]:
    return [
        "recover",
        str(pruned),
        "-o",
        str(out),
        "--teacher",
        str(args.model),
        "--calib",
        str(args.calib),
        "--seqlen",
        str(args.seqlen),
        "--nsamples",
        str(options.get("nsamples", args.nsamples)),
        "--seed",
        "0",
        *option_flags({k: v for k, v in options.items() if k != "nsamples"}),
    ]


#: Fields of a row that belong to its recovery part (the rest is the one-shot part).
RECOVERY_FIELDS = ("perplexity_recovered", "time_recover_s", "recover_command", "recover_code_version")
#: File in a kept pruned output naming the one-shot key it was made under.
MARKER = "bench_oneshot_key.txt"


def output_of(job: Job, page: str = "summary") -> Path:
    """A row's kept pruned output; another page's outputs are prefixed with the page's name (the
    summary's keep their names), so two models never overwrite each other's."""
    label = job.output_from or job.label  # a recovery-only row reuses its source row's output
    prefix = "" if page == "summary" else f"{page}-"
    return WORK / f"{prefix}run-{job.strategy}-{label.replace(' ', '_')}-{job.sparsity}"


def recover_command(args: argparse.Namespace, options: dict[str, Any]) -> str:
    """The shown ``llmprune recover`` command of a row (repository-relative paths, OUT → OUT2)."""
    shown = recover_args(Path("OUT"), Path("OUT2"), args, options)
    shown[shown.index("--teacher") + 1] = args.model_shown
    shown[shown.index("--calib") + 1] = display_path(args.calib)
    return shlex.join(["llmprune", *shown])


def keys_of(
    job: Job, options: dict[str, Any], args: argparse.Namespace, texts: dict[str, str], version: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(one-shot key, recovery key), both ``common.row_key``s: the prune command, the method's
    defaults, the text hashes and the code version; the recovery key holds the recover command,
    the recovery defaults, the code version and the one-shot key it continues."""
    shown = prune_command(
        job.strategy,
        job.method,
        job.sparsity,
        model=args.model_shown,
        calib=args.calib,
        nsamples=args.nsamples,
        **options,
    )
    oneshot = row_key(
        shown,
        texts=texts,
        strategy=job.strategy,
        method=job.method,
        code=version,
        model=args.model_shown,
        recover=job.recover,
        seqlen=args.seqlen,
        **({"model_source": args.model_source} if args.model_source else {}),
    )
    recovery = row_key(
        recover_command(args, job.recover_options), texts=texts, recovery="command", code=version, oneshot=oneshot
    )
    if job.recover_options:
        recovery["recover_options"] = job.recover_options
    return oneshot, recovery


def save_cache(cache: dict[str, dict[str, Any]]) -> None:
    """Write the row cache, merged into what the file holds now: two run.py processes (say one
    model's baselines and its learned rows, one core each) keep each other's rows. A key this
    process holds wins; the file is replaced atomically."""
    merged = load_cache() if CACHE.is_file() else {"oneshot": {}, "recovery": {}}
    for part in ("oneshot", "recovery"):
        merged[part].update(cache[part])
        cache[part].update(merged[part])
    tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(CACHE)


def load_cache() -> dict[str, dict[str, Any]]:
    """``{"oneshot": {key: part}, "recovery": {key: part}}`` with every key in today's form
    (``upgrade_keys``); a cache of whole rows (the format before 2026-11-30, keyed by command +
    method and recovery defaults) is first split into the two."""
    raw: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    if "oneshot" in raw:
        return upgrade_keys(raw)
    cache: dict[str, dict[str, Any]] = {"oneshot": {}, "recovery": {}}
    for old_key, row in raw.items():
        k = json.loads(old_key)
        defaults = k.pop("defaults")
        oneshot = json.dumps({**k, "defaults": {"method": defaults["method"]}}, sort_keys=True)
        cache["oneshot"][oneshot] = {f: v for f, v in row.items() if f not in RECOVERY_FIELDS}
        if k["recover"]:
            recovery = json.dumps({"oneshot": oneshot, "recover": defaults.get("recover")}, sort_keys=True)
            part = {f: row[f] for f in RECOVERY_FIELDS if f in row}
            cache["recovery"][recovery] = {**part, "recover_code_version": row.get("code_version")}
    return upgrade_keys(cache)


def upgrade_keys(cache: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Keys written before issue 30 (``prune`` command, no code version; a recovery key nesting
    the one-shot key's text) in today's form, with what each part recorded: its command and the
    code version it ran at. Keys already in today's form are kept."""
    oneshot: dict[str, dict[str, Any]] = {}
    renamed: dict[str, dict[str, Any]] = {}  # old one-shot key text -> today's form
    for text, part in cache["oneshot"].items():
        key = json.loads(text)
        if "prune" in key:
            key["command"] = key.pop("prune")
            if part.get("code_version"):
                key["code"] = part["code_version"]
        renamed[text] = key
        oneshot[key_text(key)] = part
    recovery: dict[str, dict[str, Any]] = {}
    for text, part in cache["recovery"].items():
        key = json.loads(text)
        if isinstance(key.get("oneshot"), str):
            new: dict[str, Any] = {
                "oneshot": renamed.get(key["oneshot"]) or json.loads(key["oneshot"]),
                "defaults": {"recover": key["recover"]},
            }
            new["texts"] = new["oneshot"].get("texts")
            if part.get("recover_command"):
                new["command"] = part["recover_command"]
            if part.get("recover_code_version"):
                new["code"] = part["recover_code_version"]
            if "recover_options" in key:
                new["recover_options"] = key["recover_options"]
            key = new
        recovery[key_text(key)] = part
    return {"oneshot": oneshot, "recovery": recovery}


def prune_part(job: Job, options: dict[str, Any], args: argparse.Namespace, oneshot_key: str) -> dict[str, Any]:
    """Prune and evaluate one row's output (kept on disk, marked with its key); the one-shot part."""
    common = dict(model=args.model, calib=args.calib, seqlen=args.seqlen, nsamples=args.nsamples)
    out = output_of(job, args.page)
    t0 = time.perf_counter()
    report = prune(job.strategy, job.method, out, sparsity=job.sparsity, **common, **options)
    time_prune = time.perf_counter() - t0
    (out / MARKER).write_text(oneshot_key)
    measured = measurements(job, options, args, out, report)
    row: dict[str, Any] = {
        "strategy": job.strategy,
        "method": job.method,
        "label": job.label,
        "requested_sparsity": job.sparsity,
        "achieved_sparsity": report["achieved_sparsity"],
        "params_decoder_linear": report["params_decoder_linear"],
        "time_prune_s": time_prune,
        "peak_rss_mib": report["peak_rss_mib"],
        **measured,
        "layer_widths": report.get("layer_widths"),
        "command": prune_command(
            job.strategy, job.method, job.sparsity, **{**common, "model": args.model_shown}, **options
        ),
        "code_version": code_version(job.strategy, job.method),
    }
    if not job.recover:  # minimax's default: its own weight training, reported in its own row
        row["perplexity_own_training"], row["perplexity"] = row["perplexity"], None
        shutil.rmtree(out)
    return row


#: What ``llmprune eval OUT --speed --baseline DENSE --json F`` writes that a row keeps.
SPEED_KEYS = (
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "baseline_prefill_tokens_per_s",
    "baseline_decode_tokens_per_s",
    "speedup_prefill",
    "speedup_decode",
    "torch_threads",
)
#: Fields ``measurements`` adds (a cached row without them gets them while its output is kept).
MEASURED_FIELDS = ("time_total_s", "predicted_peak_host_mib", "peak_ratio", "time_eval_s", *SPEED_KEYS)


def predicted_peak_mib(job: Job, options: dict[str, Any], args: argparse.Namespace) -> float:
    """``--estimate``'s predicted peak host memory (MiB) of the row's own prune command (same
    flags, config only; the CPU run's peak RSS is host memory)."""
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        f = Path(tmp) / "estimate.json"
        argv = prune_args(
            job.strategy,
            job.method,
            Path(tmp) / "OUT",
            model=args.model,
            sparsity=job.sparsity,
            seqlen=args.seqlen,
            nsamples=args.nsamples,
            calib=args.calib,
            **options,
        )
        run_llmprune([*argv, "--estimate", "--json", str(f)])
        return json.loads(f.read_text())["peak_host_gib"] * 1024


def speed_eval(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``llmprune eval OUT --data EVAL --seqlen N --speed --baseline DENSE --json F`` as its own
    process: the output's perplexity and its prefill/decode speed against the dense model's,
    both timed in that one process."""
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        f = Path(tmp) / "eval.json"
        argv = ["eval", str(out), "--data", str(args.eval), "--seqlen", str(args.seqlen), "--speed"]
        run_llmprune([*argv, "--baseline", str(args.model), "--json", str(f)], overwrite=False)
        return json.loads(f.read_text())


def measurements(
    job: Job, options: dict[str, Any], args: argparse.Namespace, out: Path, report: dict[str, Any]
) -> dict[str, Any]:
    """A row's perplexity and the columns beside it: the prune's own total time, its measured
    against its predicted peak, and the output's speed against the dense model."""
    predicted = predicted_peak_mib(job, options, args)
    result = speed_eval(out, args)
    measured = report.get("peak_rss_mib")
    return {
        "perplexity": result["perplexity"],
        "time_total_s": report.get("time_total_s"),
        "predicted_peak_host_mib": predicted,
        "peak_ratio": measured / predicted if measured and predicted else None,
        "time_eval_s": result.get("time_s"),  # the eval process's own (perplexity, then both speeds)
        **{k: result.get(k) for k in SPEED_KEYS},
    }


def recovery_part(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """Recover the row's kept pruned output and evaluate it; the recovery part."""
    out = output_of(job, args.page)
    recovered = out.with_name(out.name + "-recovered")
    part: dict[str, Any] = {"time_recover_s": run_llmprune(recover_args(out, recovered, args, job.recover_options))}
    part["perplexity_recovered"] = evaluate(recovered, Path(args.eval), args.seqlen)["perplexity"]
    part["recover_command"] = recover_command(args, job.recover_options)
    part["recover_code_version"] = code_version()
    shutil.rmtree(recovered)
    return part


def complete_part(
    job: Job, options: dict[str, Any], args: argparse.Namespace, part: dict[str, Any], oneshot_key: str
) -> bool:
    """Add ``MEASURED_FIELDS`` to a cached one-shot part measured before them, when its pruned
    output is still kept (its report gives the total time; the estimate and the speed run are
    measured now); whether it changed."""
    if "speedup_decode" in part or not kept_output(job, oneshot_key, args.page):
        return False
    out = output_of(job, args.page)
    report = json.loads((out / "llmprune_report.json").read_text())
    measured = measurements(job, options, args, out, report)
    part.update({k: v for k, v in measured.items() if k != "perplexity"})
    return True


def kept_output(job: Job, oneshot_key: str, page: str = "summary") -> bool:
    marker = output_of(job, page) / MARKER
    return marker.is_file() and marker.read_text() == oneshot_key


def plot_perplexity(rows: list[dict], dense: float, path: Path, model: str = "the reference model") -> None:
    """Perplexity against achieved sparsity: one line per structured method (one-shot solid, +
    recovery dashed, when measured), each 2:4 method a single marker, dense a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    recovered = False
    lines = list(dict.fromkeys((r["strategy"], r["label"]) for r in rows if r["strategy"] in ("uniform", "global")))
    structured = [(st, m) for st, m in lines if m == m.split()[0] and registered(st, m)]
    for i, (strategy, method) in enumerate(structured):
        ours = [r for r in rows if r["strategy"] == strategy and r["label"] == method]
        color = f"C{i}"
        for key, style, name in (("perplexity", "-", "one-shot"), ("perplexity_recovered", "--", "+ recovery")):
            points = sorted((r["achieved_sparsity"], r[key]) for r in ours if r.get(key) is not None)
            if points:
                recovered |= key == "perplexity_recovered"
                ax.plot(*zip(*points), style, marker="o", color=color, label=f"{strategy} {method}, {name}")
    markers = iter("s^Dv")
    for i, row in enumerate(r for r in rows if r["strategy"] == "semi24" and r["label"] == r["method"]):
        color, marker = f"C{len(structured) + i}", next(markers, "x")
        for key, filled, name in (("perplexity", True, "one-shot"), ("perplexity_recovered", False, "+ recovery")):
            if row.get(key) is not None:
                face = color if filled else "none"
                label = f"2:4 {row['method']}, {name}"
                ax.plot([row["achieved_sparsity"]], [row[key]], marker, color=color, mfc=face, label=label)
    ax.axhline(dense, color="grey", linestyle=":", label=f"dense ({dense:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("achieved sparsity (decoder linear weights)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"Pruning {model}: one-shot" + (" and + recovery" if recovered else ""))
    ax.legend(fontsize=7, ncol=2)
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


def stale_parts(
    cache: dict[str, dict[str, Any]], job: Job, oneshot: dict[str, Any], recovery: dict[str, Any], one: Any, rec: Any
) -> tuple[Any, Any, list[tuple[str, str]]]:
    """For ``--cached-only``: the parts missing at today's keys taken from the cached parts of the
    same commands whose keys differ least, and why they are stale (``common.stale_reasons``,
    details prefixed with the part)."""
    reasons: list[tuple[str, str]] = []
    if one is None and (found := nearest_stale(cache["oneshot"], oneshot)):
        one = cache["oneshot"][found[0]]
        reasons += [(kind, "one-shot " + detail) for kind, detail in found[1]]
    if job.recover and rec is None:
        found = nearest_stale(cache["recovery"], recovery, same=("command", "oneshot.command"))
        if found:
            rec = cache["recovery"][found[0]]
            # the one-shot key it continues: already named above when that part is stale itself
            again = bool(reasons)
            reasons += [(k, "recovery " + d) for k, d in found[1] if not (again and d.startswith("oneshot."))]
    return one, rec, reasons


def collect(
    jobs: list[Job], cache: dict[str, dict[str, Any]], args: argparse.Namespace, rerun: set[str], stale_ok: bool
) -> tuple[list[dict[str, Any]], list[str], list[tuple[str, list[tuple[str, str]]]]]:
    """The table's rows (run when not cached, unless ``stale_ok``), the rows left out, and the
    stale rows with their reasons. ``stale_ok`` (``--cached-only``, ``--stale``) runs nothing: a
    row missing at today's key is the cached row of the same commands, marked stale."""
    texts = {"calib": text_hash(args.calib), "eval": text_hash(args.eval)}
    rows: list[dict[str, Any]] = []
    by_label: dict[str, dict[str, Any]] = {}
    fresh = 0
    missing: list[str] = []  # rows neither cached nor run (--cached-only, --max-rows)
    stale: list[tuple[str, list[tuple[str, str]]]] = []
    for job in jobs:
        name = f"{job.strategy} {job.label}" + (f" {job.sparsity:.0%}" if job.sparsity else " 2:4")
        options = dict(job.options)
        if job.widths_from:
            source = by_label.get(job.widths_from)
            if source is None or not source.get("layer_widths"):
                print(f"skip {job.label} {job.sparsity}: no {job.widths_from} row", flush=True)
                missing.append(name)
                continue
            w = source["layer_widths"][0]
            options["widths"] = f"{w['kv_heads']},{w['channels']}"
        oneshot, recovery = keys_of(job, options, args, texts)  # code versions per method
        oneshot_key, recovery_key = key_text(oneshot), key_text(recovery)
        one = None if job.method in rerun else cache["oneshot"].get(oneshot_key)
        rec = None if job.method in rerun else cache["recovery"].get(recovery_key)
        reasons: list[tuple[str, str]] = []
        if stale_ok and (one is None or (job.recover and rec is None)):
            one, rec, reasons = stale_parts(cache, job, oneshot, recovery, one, rec)
        if args.oneshot_only and one is None and not stale_ok and not job.output_from:
            if args.max_rows and fresh >= args.max_rows:
                print(f"not run: {job.label} {job.sparsity}", flush=True)
                missing.append(name)
                continue
            one = cache["oneshot"][oneshot_key] = prune_part(job, options, args, oneshot_key)
            fresh += 1
            save_cache(cache)
        if one is not None and not stale_ok and not reasons and not job.output_from:
            if complete_part(job, options, args, one, oneshot_key):  # measured before the new columns
                save_cache(cache)
        # --oneshot-only: a row's one-shot part is shown without its recovery (a row that only
        # recovers another row's output again is left out)
        oneshot_row = args.oneshot_only and one is not None and not job.output_from
        if not oneshot_row and (one is None or (job.recover and rec is None)):
            if stale_ok or args.oneshot_only or (args.max_rows and fresh >= args.max_rows):
                print(f"not run: {job.label} {job.sparsity}", flush=True)
                missing.append(name)
                continue
            if one is None or not kept_output(job, oneshot_key, args.page):  # recovery needs the pruned output
                one = cache["oneshot"][oneshot_key] = prune_part(job, options, args, oneshot_key)
            if job.recover and rec is None:
                rec = cache["recovery"][recovery_key] = recovery_part(job, args)
            fresh += 1
            save_cache(cache)
        row = {**one, **(rec or {}), "label": job.label}  # a recovery-only row shares its source's one-shot part
        if reasons:
            row["stale"] = format_reasons(reasons)
            stale.append((name, reasons))
            print(f"stale: {name}: {row['stale']}", flush=True)
        by_label[f"{job.label}@{job.sparsity}"] = row
        rows.append(row)
        shown = {k: row.get(k) for k in ("perplexity", "perplexity_recovered", "perplexity_own_training")}
        print(f"{job.strategy:8s} {job.label:28s} {row['achieved_sparsity']:.3f} {shown}", flush=True)
    return rows, missing, stale


def dense_eval(cache: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The dense model's evaluation, cached beside the one-shot parts under its own key (its eval
    command, the evaluation text's hash, the code version, the model)."""
    command = f"llmprune eval {args.model_shown} --data {display_path(args.eval)} --seqlen {args.seqlen}"
    key = row_key(command, texts={"eval": text_hash(args.eval)}, model=args.model_shown, seqlen=args.seqlen)
    if args.model_source:
        key["model_source"] = args.model_source
    text = key_text(key)
    if text not in cache["oneshot"]:
        result = evaluate(Path(args.model), Path(args.eval), args.seqlen)
        part = {k: result[k] for k in ("perplexity", "params_decoder_linear")}
        cache["oneshot"][text] = {**part, "strategy": "dense", "command": command, "code_version": code_version()}
        save_cache(cache)
    return cache["oneshot"][text]


def print_stale_counts(stale: list[tuple[str, list[tuple[str, str]]]], total: int) -> None:
    counts: dict[str, int] = {}
    for _, reasons in stale:
        for kind in dict.fromkeys(k for k, _ in reasons):
            counts[kind] = counts.get(kind, 0) + 1
    print(f"{total} cached rows: {total - len(stale)} current; stale by reason: {counts}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=str(REFMODEL),
        help=f"a model folder or a name of benchmarks/models.py ({', '.join(models.MODELS)}; fetched once)",
    )
    parser.add_argument(
        "--page",
        default=None,
        help="the page written: benchmarks/results/PAGE.json, docs/benchmarks/PAGE.md and its plots [default: "
        "summary for the reference model, the name for a benchmarks/models.py model; required for another folder]",
    )
    parser.add_argument("--calib", default=str(CALIB))
    parser.add_argument("--eval", default=str(EVAL))
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--sparsities", default="0.2,0.3,0.5")
    parser.add_argument("--methods", default="", help="comma-separated subset of method names (default: all)")
    parser.add_argument("--rerun", default="", help="comma-separated methods whose cached rows are run again")
    parser.add_argument("--max-rows", type=int, default=0, help="run at most this many uncached rows, then write")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="run nothing (but the dense evaluation): write the page from cached rows; a row cached under another "
        "key is used, marked stale, and printed with why (code version, a default, a text)",
    )
    parser.add_argument(
        "--stale", action="store_true", help="run nothing: print each stale row with why, and the count by reason"
    )
    parser.add_argument(
        "--oneshot-only",
        action="store_true",
        help="prune and evaluate the one-shot parts only (outputs kept for a later run's recoveries)",
    )
    args = parser.parse_args()
    resolve_model(parser, args)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    rerun = set(filter(None, args.rerun.split(",")))
    jobs = jobs_for(sparsities, set(filter(None, args.methods.split(","))))
    if args.oneshot_only:  # a row that only recovers another row's output again has no one-shot part
        jobs = [j for j in jobs if not j.output_from]

    cache = load_cache()
    if args.stale:
        found, missing, stale = collect(jobs, cache, args, set(), stale_ok=True)
        print_stale_counts(stale, len(found))
        if missing:
            print(f"not cached at all: {', '.join(missing)}")
        return
    dense = dense_eval(cache, args)
    rows: list[dict[str, Any]] = [
        {
            "strategy": "dense",
            "label": "-",
            "achieved_sparsity": 0.0,
            "params_decoder_linear": dense["params_decoder_linear"],
            "perplexity": dense["perplexity"],
        }
    ]
    found, missing, stale = collect(jobs, cache, args, rerun, stale_ok=args.cached_only)
    rows += found
    if stale:
        print_stale_counts(stale, len(found))

    for row in rows:
        own = row.get("perplexity_own_training")
        if own is not None:  # shown in the one-shot column's place, marked in the label
            row["perplexity"] = own
            row["label"] = row["label"].replace("(own LoRA)", "(own LoRA: not one-shot)")
    DOCS.mkdir(parents=True, exist_ok=True)
    prefix = "" if args.page == "summary" else f"{args.page}_"
    ppl_png, widths_png = f"{prefix}perplexity_vs_sparsity.png", f"{prefix}global_kept_fraction.png"
    model_name = "the reference model" if args.page == "summary" else args.page
    plot_perplexity(rows, dense["perplexity"], DOCS / ppl_png, model_name)
    has_widths = plot_global_widths(rows, _geometry(args.model), DOCS / widths_png)
    commands = "\n".join(
        f"- `{r['command']}`" + (f" then `{r['recover_command']}`" if r.get("recover_command") else "")
        for r in rows[1:]
    )
    notes = f"![perplexity against sparsity, one-shot and + recovery]({ppl_png})\n"
    if missing:
        notes = (
            f"**Not measured yet** (no cached row; run the command again to add them): {', '.join(missing)}.\n\n"
            + notes
        )
    if stale:
        notes = (
            f"**Stale** (cached under another key, shown until re-run; the `stale` column says why): "
            f"{', '.join(name for name, _ in stale)}.\n\n" + notes
        )
    if has_widths:
        notes += f"\n![per-layer kept fractions of global]({widths_png})\n"
    notes += (
        f"\nCommands (each output evaluated with `llmprune eval OUT --data {display_path(args.eval)} "
        f"--seqlen {args.seqlen} --speed --baseline {args.model_shown}`, which gives its perplexity and its "
        f"speed against the dense model's in the same process; OUT2 is the recovered copy of OUT):\n\n"
        f"{commands}\n"
    )
    shows_recovery = any(r.get("perplexity_recovered") is not None for r in rows)
    columns = [c for c in COLUMNS if shows_recovery or c[0] not in ("perplexity_recovered", "time_recover_s")]
    path = write_results(
        args.page,
        "All strategies on one model: one-shot and + the same recovery"
        if args.page == "summary"
        else f"{args.page}: one-shot pruning, every strategy side by side",
        rows,
        columns + ([("stale", "stale (why its key changed)", "")] if stale else []),
        intro=page_intro(args, rows) + intro_text(args, rows, dense["perplexity"]),
        notes=notes,
    )
    print(f"wrote {path}")


def intro_text(args: argparse.Namespace, rows: list[dict[str, Any]], dense: float) -> str:
    """The settings and what each column means (the bullets of rows the page does not hold left out)."""
    labels = {r.get("label", "") for r in rows}
    bullets = [
        "- **one-shot**: no weight training after the structure or mask is fixed (minimax: masks learned, "
        "`--lora-rank 0`; SparseGPT's and Týr's weight updates are part of pruning)."
    ]
    if any(r.get("perplexity_recovered") is not None for r in rows):
        bullets.append(
            "- **+ recovery**: the same output after the same `llmprune recover` budget for every row "
            f"(top-k KD from the dense model, LoRA rank 16 merged, 100 steps × 8 × {args.seqlen} tokens of the "
            "calibration text, its defaults)."
        )
    if any(label.startswith("wanda @ minimax widths") for label in labels):
        bullets.append(
            "- *wanda @ minimax widths*: Wanda-sp scores at the attention/MLP split minimax learned "
            "(`--widths`), the control for minimax's learned widths."
        )
    if any(label.startswith("minimax default") for label in labels):
        bullets.append(
            "- *minimax default (own LoRA)*: minimax as it ships, training LoRA jointly with the masks "
            "(not one-shot, not the shared recovery); shown in the one-shot column for reference only."
        )
    bullets += [
        "- Wall times are of separate processes on a machine that was running other jobs: compare "
        "within this page only loosely.",
        "- **prune total (s)** is the report's `time_total_s` (load, calibrate, prune, save); **peak RSS** "
        "is the prune process's own, beside the peak host memory `--estimate` predicts for the same "
        "command (config only) and their ratio (measured / predicted).",
        "- **prefill × / decode ×**: the output's tokens/s over the dense model's, both timed in one "
        f"`llmprune eval --speed --baseline` process (one {args.seqlen}-token prefill; greedy decoding of 64 "
        "tokens with the KV cache; median of 5 after 2 warm-ups); both models' tokens/s are in the JSON.",
    ]
    return (
        f"Model `{args.model_shown}`; calibration {args.nsamples} × {args.seqlen} tokens of "
        f"`{display_path(args.calib)}`, seed 0, each method at its defaults; perplexity on "
        f"`{display_path(args.eval)}` in non-overlapping {args.seqlen}-token windows (dense "
        f"{dense:.2f}). Sparsity is the fraction of decoder-layer linear weights removed "
        "(2:4 always removes half).\n\n" + "\n".join(bullets)
    )


def resolve_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.model`` as a folder (a ``benchmarks/models.py`` name fetched once), ``args.page``,
    ``args.model_shown`` (the model as commands and row keys write it) and ``args.model_source``
    (the checksum a fetched model was converted from, part of its rows' keys)."""
    name = args.model if args.model in models.MODELS else None
    if name:
        try:
            args.model = str(models.fetch(name))
        except models.FetchError as err:
            parser.error(str(err))
    reference = Path(args.model).resolve() == REFMODEL.resolve()
    if args.page is None:
        if not (reference or name):
            parser.error("--page is required for a model other than the reference model or a benchmarks/models.py name")
        args.page = "summary" if reference else name
    if args.page == "summary" and not reference:
        parser.error("--page summary is the reference model's page; name another page for this model")
    args.model_shown = display_path(args.model)
    args.model_source = None
    for known in models.MODELS:  # a placeholder, as OUT: the page says what it stands for
        if Path(args.model).resolve() == models.default_folder(known).resolve():
            args.model_shown = known.upper()
    source = Path(args.model) / models.SOURCE_FILE
    if source.is_file():
        args.model_source = json.loads(source.read_text()).get("member_sha256")


def page_intro(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    """What a page other than the summary measures and does not (yet)."""
    if args.page == "summary":
        return ""
    missing = []
    if not any(r.get("perplexity_recovered") is not None for r in rows):
        missing.append("recovery rows (no `llmprune recover` has run on this model's outputs)")
    for strategy, method in (("uniform", "minimax"), ("semi24", "proxsparse")):
        if not any(r.get("strategy") == strategy and r.get("method") == method for r in rows):
            missing.append(f"{strategy} {method} (learned)")
    if not any(r.get("method") == "tyr" for r in rows):
        missing.append("global tyr")
    text = "**Not measured yet on this page:** " + "; ".join(missing) + ".\n\n" if missing else ""
    if args.cached_only:
        text += "This page was written from the cached rows (`--cached-only`); without it the missing rows are run.\n\n"
    timed = [r for r in rows if r.get("baseline_prefill_tokens_per_s")]
    if timed:
        prefill = [r["baseline_prefill_tokens_per_s"] for r in timed]
        decode = [r["baseline_decode_tokens_per_s"] for r in timed]
        text += (
            f"The speed columns are noisy here: the machine ran other jobs, and the dense model itself was timed at "
            f"{min(prefill):.0f}–{max(prefill):.0f} prefill and {min(decode):.1f}–{max(decode):.1f} decode tokens/s "
            "across the rows' processes; read a ratio only as measured in that one process.\n\n"
        )
    if args.model_shown != display_path(args.model):
        name = args.model_shown.lower()
        if name in models.MODELS and models.MODELS[name].caveat:
            text += models.MODELS[name].caveat + "\n\n"
        text += (
            f"`{args.model_shown}` in the commands below is the converted model folder, "
            f"`$(python benchmarks/models.py fetch {name})`.\n\n"
        )
    return text


def _geometry(model: str) -> dict[str, int]:
    config = json.loads((Path(model) / "config.json").read_text())
    return {"num_heads": config["num_attention_heads"], "intermediate_size": config["intermediate_size"]}


if __name__ == "__main__":
    main()
