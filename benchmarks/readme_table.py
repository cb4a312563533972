"""Print README's results tables from ``benchmarks/results/<page>.json`` (written by run.py), so the
README's figures are copied by a script, not by hand.

    python benchmarks/readme_table.py                 # SmolLM2-135M (README's Results)
    python benchmarks/readme_table.py --page summary  # the reference model (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from common import RESULTS

NAMES = {
    ("uniform", "wanda"): "wanda (Wanda-sp)",
    ("uniform", "minimax"): "minimax (masks only)",
}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def method_cell(row: dict[str, Any]) -> str:
    label = row["label"]
    if label.startswith("wanda @ minimax widths") and row.get("command"):
        widths = re.search(r"--widths (\S+)", row["command"])
        return f"*control:* Wanda-sp at minimax's widths (`--widths {widths.group(1) if widths else '?'}`)"
    if label.startswith("minimax default"):
        return "minimax as shipped (own joint LoRA: not one-shot, not the shared recovery)"
    if label.startswith(row["method"] + " --"):  # e.g. "tyr --generations 16": other method options
        return f"{row['method']} (`{label.removeprefix(row['method'] + ' ')}`)"
    if label != row["method"]:  # e.g. "tyr, recovery --lr 0.0005": the same output, another recovery
        return label.replace(", recovery", " (recovery at").replace("--lr ", "`--lr ") + "`)"
    return NAMES.get((row["strategy"], label), label)


#: The label suffix of run.py's rows that recover a method's output on 256 sequences: shown as a
#: column of that method's row, not as a row of its own.
MORE_TEXT = ", recovery --nsamples 256"


def cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | method | sparsity | one-shot | + recovery (64 seq.) | + recovery (256 seq., default) "
        "| prune / recovery wall time (64 / 256) |",
        "|---|---|---|---|---|---|---|",
    ]
    more = {
        (r["strategy"], r["label"].removesuffix(MORE_TEXT), r.get("requested_sparsity")): r
        for r in rows
        if r["label"].endswith(MORE_TEXT)
    }
    for row in rows:
        if row["strategy"] == "dense" or row["label"].endswith(MORE_TEXT):
            continue
        sparsity = "2:4" if row["strategy"] == "semi24" else f"{row['requested_sparsity']:.0%}"
        twin = more.get((row["strategy"], row["label"], row.get("requested_sparsity")), {})
        times = " / ".join(duration(r.get("time_recover_s")) for r in (row, twin) if r)
        lines.append(
            f"| {row['strategy']} | {method_cell(row)} | {sparsity} | {row['perplexity']:.2f} | "
            f"{cell(row.get('perplexity_recovered'))} | {cell(twin.get('perplexity_recovered'))} | "
            f"{duration(row.get('time_prune_s'))} / {times} |"
        )
    return "\n".join(lines)


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def model_table(rows: list[dict[str, Any]]) -> str:
    """A real model's table: perplexity (one-shot, + recovery when measured), the prune run's time
    and peak RSS beside ``--estimate``'s prediction, and the output's speed against the dense model."""
    lines = [
        "| strategy | method | sparsity | one-shot | + recovery | prune time | peak RSS (predicted) "
        "| prefill / decode vs dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["strategy"] == "dense":
            lines.append(f"| dense | – | 0% | {row['perplexity']:.2f} | – | – | – | 1× / 1× |")
            continue
        sparsity = "2:4" if row["strategy"] == "semi24" else f"{row['requested_sparsity']:.0%}"
        rss, predicted = row.get("peak_rss_mib"), row.get("predicted_peak_host_mib")
        memory = "–" if rss is None else f"{rss / 1024:.2f} GiB" + (f" ({predicted / 1024:.2f})" if predicted else "")
        speed = f"{ratio(row.get('speedup_prefill'))} / {ratio(row.get('speedup_decode'))}"
        perplexity = "–" if row.get("perplexity") is None else f"{row['perplexity']:,.2f}"
        lines.append(
            f"| {row['strategy']} | {method_cell(row)} | {sparsity} | {perplexity} | "
            f"{cell(row.get('perplexity_recovered'))} | {duration(row.get('time_prune_s'))} | {memory} | {speed} |"
        )
    missing = [name for name, found in missing_parts(rows).items() if not found]
    if missing:
        lines += ["", "Not measured yet on this model: " + "; ".join(missing) + "."]
    return "\n".join(lines)


def missing_parts(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Which parts of the full table a model's page has rows for."""
    methods = {(r["strategy"], r.get("method")) for r in rows}
    return {
        "uniform minimax and its control (Wanda-sp at minimax's widths)": ("uniform", "minimax") in methods,
        "global tyr": ("global", "tyr") in methods,
        "semi24 proxsparse": ("semi24", "proxsparse") in methods,
        "every + recovery column": any(r.get("perplexity_recovered") is not None for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", default="smollm2", help="a run.py page: smollm2 (default) or summary")
    page = parser.parse_args().page
    data = json.loads((RESULTS / f"{page}.json").read_text())
    print(table(data["rows"]) if page == "summary" else model_table(data["rows"]))


if __name__ == "__main__":
    main()
