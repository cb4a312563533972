"""Where a pruning run's time goes: one ``llmprune`` command sampled by py-spy, summed by stage.

    pip install py-spy
    python benchmarks/profile_methods.py --model smollm2 -- semi24 --method proxsparse
    python benchmarks/profile_methods.py --model smollm2 --attach PID --name tyr-50   # a running job
    python benchmarks/profile_methods.py --report     # rebuild the page from the recorded profiles

The command runs at the standard settings (64 × 256 tokens of calib.txt, seed 0) unless its own
flags say otherwise, under ``py-spy record --format raw --idle`` (10 samples a second, never
pausing the process; ``--idle`` keeps the samples taken inside torch's kernels, which release the
GIL and would otherwise be dropped as idle); ``--attach`` samples a job already
running (a benchmark row) until it ends. Each sample's stack is attributed twice:

* its **stage**: the outermost ``llmprune`` frame below the command (loading, calibration, the
  method's ``prune``, saving), and inside ``prune`` the method's own next frame (e.g. Týr's supernet,
  search and final prune; a learned method's training loop and its teacher pass);
* its **hot spot**: the innermost ``llmprune`` frame, i.e. the line of ours that called into torch
  or transformers when the sample was taken.

Writes ``benchmarks/results/profiles/<name>.txt`` (py-spy's raw stacks), ``benchmarks/results/
profile.json`` and ``docs/benchmarks/cost.md``. Shares of samples, not seconds: the run's wall time
is in its report, the shares say where it went.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from common import CALIB, DOCS, RESULTS, WORK, machine, rebuild_index, today

PROFILES = RESULTS / "profiles"
RATE = 10
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
#: The frames of a command's own plumbing end here: what it calls is a stage.
COMMANDS = ("_run_prune", "_run_recover", "run_eval")


def frames(stack: str) -> list[tuple[str, str, str]]:
    """``(function, file, line)`` of each frame, outermost first (py-spy's raw format)."""
    found = []
    for part in stack.split(";"):
        m = FRAME.match(part.strip())
        if m:
            found.append((m["func"], m["file"], m["line"] or ""))
    return found


def ours(frame: tuple[str, str, str]) -> bool:
    return frame[1].startswith("llmprune/") or "/llmprune/llmprune/" in frame[1]


def short(frame: tuple[str, str, str]) -> str:
    path = frame[1].split("/llmprune/", 1)[-1]
    return f"{frame[0]} ({path}:{frame[2]})" if frame[2] else f"{frame[0]} ({path})"


def attribute(stacks: Counter[str]) -> dict[str, Any]:
    """Shares of samples by stage (outermost two frames of ours below the command's plumbing)
    and by hot spot (innermost frame of ours)."""
    stages: Counter[str] = Counter()
    hot: Counter[str] = Counter()
    total = sum(stacks.values())
    for stack, count in stacks.items():
        mine = [f for f in frames(stack) if ours(f)]
        top = max((i for i, f in enumerate(mine) if f[0] in COMMANDS), default=None)
        work = mine[top + 1 :] if top is not None else [f for f in mine if not f[1].endswith(("cli.py", "__main__.py"))]
        if not work:
            stages["(start-up: imports, argument parsing)"] += count
            hot["(outside llmprune)"] += count
            continue
        stage = work[0][0] if len(work) == 1 else f"{work[0][0]} › {work[1][0]}"
        stages[stage] += count
        hot[short(mine[-1])] += count
    return {
        "samples": total,
        "stages": [(k, v / total) for k, v in stages.most_common()],
        "hot_spots": [(k, v / total) for k, v in hot.most_common(12)],
    }


def read_raw(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "(threading.py" in stack:  # helper threads (progress display), idle by design
            continue
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def record(name: str, argv: list[str] | None, pid: int | None) -> Path:
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    PROFILES.mkdir(parents=True, exist_ok=True)
    raw = PROFILES / f"{name}.txt"
    spy = ["py-spy", "record", "--format", "raw", "--rate", str(RATE), "--nonblocking", "--idle", "-o", str(raw)]
    if pid is not None:
        subprocess.run([*spy, "--pid", str(pid)], check=True)
    else:
        assert argv is not None
        subprocess.run([*spy, "--", sys.executable, "-m", "llmprune", *argv], check=True)
    return raw


def command_args(model: Path, rest: list[str], name: str) -> list[str]:
    """The pruning command at the standard settings (its own flags win)."""
    out = WORK / f"profile-{name}"
    argv = [rest[0], str(model), "-o", str(out), *rest[1:], "--overwrite"]
    for flag, value in (("--calib", str(CALIB)), ("--seqlen", "256"), ("--nsamples", "64"), ("--seed", "0")):
        if flag not in rest:
            argv += [flag, value]
    return argv


def write_page(entries: dict[str, dict[str, Any]]) -> Path:
    lines = [
        "# Where the time goes",
        "",
        f"Profiles taken with py-spy ({RATE} samples/s) on {machine()}; page written {today()}. "
        "Rebuild with `python benchmarks/profile_methods.py --report`; each profile's command is "
        "below. Shares of samples: the run's wall time is its report's.",
        "",
    ]
    for name, entry in entries.items():
        lines += [f"## {name}", "", f"`{entry['command']}`" + (f" — {entry['note']}" if entry.get("note") else ""), ""]
        lines += [f"{entry['samples']} samples ({entry['samples'] / RATE / 60:.1f} min sampled).", ""]
        if entry.get("analysis"):  # written by hand into profile.json after reading the profile
            lines += [entry["analysis"], ""]
        lines += ["| stage | share |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in entry["stages"] if v >= 0.005]
        lines += ["", "| hot spot (innermost llmprune frame) | share |", "|---|---|"]
        lines += [f"| `{k}` | {v:.1%} |" for k, v in entry["hot_spots"] if v >= 0.005]
        lines.append("")
    page = DOCS / "cost.md"
    page.write_text("\n".join(lines))
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="a model folder or a name of benchmarks/models.py")
    parser.add_argument("--name", help="the profile's name (default: the command's strategy and method)")
    parser.add_argument("--attach", type=int, help="sample this running process until it ends")
    parser.add_argument("--note", default="", help="a line shown beside the profile (e.g. what ran beside it)")
    parser.add_argument("--command-shown", default="", help="with --attach: the command the process runs")
    parser.add_argument("--report", action="store_true", help="only rebuild the page from profile.json")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- STRATEGY --method M [flags]")
    args = parser.parse_args()
    store = RESULTS / "profile.json"
    entries: dict[str, dict[str, Any]] = json.loads(store.read_text()) if store.is_file() else {}
    if not args.report:
        rest = [a for a in args.rest if a != "--"]
        if args.attach is None and not rest:
            raise SystemExit("give a command after --, or --attach PID, or --report")
        name = args.name or "-".join(a for a in rest[:3] if not a.startswith("-"))
        if args.attach is not None:
            raw, shown = record(name, None, args.attach), args.command_shown
        else:
            import models

            model = models.fetch(args.model) if args.model in models.MODELS else Path(args.model)
            argv = command_args(model, rest, name)
            raw, shown = record(name, argv, None), "llmprune " + " ".join(argv).replace(str(model), args.model.upper())
        entries[name] = {"command": shown, "note": args.note, **attribute(read_raw(raw))}
        store.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"wrote {write_page(entries)}")
    rebuild_index()


if __name__ == "__main__":
    main()
