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
    if label != row["method"]:  # e.g. "tyr, recovery --lr 0.0005": the same output, another recovery
        return label.replace(", recovery", " (recovery at").replace("--lr ", "`--lr ") + "`)"
    return NAMES.get((row["strategy"], label), label)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | method | sparsity | one-shot | + recovery | prune / recovery wall time |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["strategy"] == "dense":
            continue
        sparsity = "2:4" if row["strategy"] == "semi24" else f"{row['requested_sparsity']:.0%}"
        recovered = row.get("perplexity_recovered")
        lines.append(
            f"| {row['strategy']} | {method_cell(row)} | {sparsity} | {row['perplexity']:.2f} | "
            f"{'–' if recovered is None else f'{recovered:.2f}'} | "
            f"{duration(row.get('time_prune_s'))} / {duration(row.get('time_recover_s'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    data = json.loads((RESULTS / "summary.json").read_text())
    print(table(data["rows"]))


if __name__ == "__main__":
    main()
