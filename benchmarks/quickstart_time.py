"""Time the README quick start (``bash examples/quickstart.sh``) on this machine.

Writes benchmarks/results/quickstart_time.json: wall time, CPU time of the commands, the machine
(CPU model, cores) and the load average before and after, since a shared machine is slower.
Run from the repository root: ``python benchmarks/quickstart_time.py``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="llmprune-quickstart-") as tmp:
        env = dict(os.environ, OUT=str(Path(tmp) / "quickstart"))
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run(
            ["bash", "examples/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
    if proc.returncode != 0:
        sys.exit(f"quickstart failed ({proc.returncode}): {proc.stderr[-2000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "command": "bash examples/quickstart.sh",
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1min_before": load_before[0],
        "load_average_1min_after": load_after[0],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "summary": proc.stdout.strip().splitlines()[-3:],
    }
    out = ROOT / "benchmarks" / "results" / "quickstart_time.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
