"""Peak RSS of one pruning command by stage: which step of a run holds the memory.

    python benchmarks/rss_by_stage.py uniform SMOLLM2_FOLDER -o OUT --method magnitude --sparsity 0.5

Runs the command in this process (the arguments are ``llmprune``'s) with a thread sampling
``VmRSS`` every 20 ms, and tags each sample with the stage running then: ``start`` (load,
calibration, pruning), ``slice`` (the structured surgery), ``save``. Prints the peak per stage in
MiB. docs/scale.md's "RSS by stage" figures come from it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    stage = ["start"]
    peaks: dict[str, float] = {}

    def sample() -> None:
        while True:
            current = stage[0]
            peaks[current] = max(peaks.get(current, 0.0), rss_mib())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    import llmprune.export.save as save
    import llmprune.model.surgery as surgery
    import llmprune.run.pipeline as pipeline

    def tagged(module: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stage[0] = label
            try:
                return inner(*args, **kwargs)
            finally:
                stage[0] = f"after {label}"

        setattr(module, name, wrapper)

    tagged(surgery, "slice_structured", "slice")
    for module in (save, pipeline):  # the pipeline holds its own reference to save_pruned
        if hasattr(module, "save_pruned"):
            tagged(module, "save_pruned", "save")
    from llmprune.cli import main as cli

    sys.argv = ["llmprune", *sys.argv[1:]]
    try:
        cli()
    except SystemExit:
        pass
    print({k: round(v) for k, v in peaks.items()})


if __name__ == "__main__":
    main()
