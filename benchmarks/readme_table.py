"""Print README's results table from ``benchmarks/results/summary.json`` (written by run.py), so the
README's figures are copied by a script, not by hand.

    python benchmarks/readme_table.py
"""

from __future__ import annotations

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


def main() -> None:
    data = json.loads((RESULTS / "summary.json").read_text())
    print(table(data["rows"]))


if __name__ == "__main__":
    main()
