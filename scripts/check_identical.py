"""Prove a refactor left the pruning outputs byte-identical.

Prunes the reference model with one small setting of each learned method (and the one-shot
baselines whose scoring the learned methods share), then compares the SHA-256 of the exported
``model.safetensors``, ``llmprune_plan.json`` and ``config.json`` with the hashes recorded from the
code before the refactor (``scripts/identical_hashes.json``).

    python scripts/check_identical.py             # check every case (a few minutes on 2 CPU cores)
    python scripts/check_identical.py minimax     # check some cases
    python scripts/check_identical.py --record    # (re)record the hashes from the current code

Run it with the default torch thread count, as the hashes were recorded: with ``OMP_NUM_THREADS=1``
the matrix products sum in another order and SparseGPT's and Týr's bytes differ on unchanged code.

Exit code 0 when every checked case matches, 1 otherwise. Each case runs the real CLI in a
subprocess with this checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HASHES = ROOT / "scripts" / "identical_hashes.json"
SHARED = (ROOT.parent / "shared").resolve()
REFERENCE = SHARED if (SHARED / "refmodel" / "config.json").is_file() else ROOT / "examples"
MODEL = REFERENCE / "refmodel"
CALIB = REFERENCE / "data" / "calib.txt"
COMMON = [
    "--calib",
    str(CALIB),
    "--nsamples",
    "16",
    "--seqlen",
    "128",
    "--batch-size",
    "4",
    "--seed",
    "0",
    "--device",
    "cpu",
]
FILES = ("model.safetensors", "llmprune_plan.json", "config.json")

#: name -> command-line arguments after the model (small settings: about a minute each on 2 cores).
CASES: dict[str, list[str]] = {
    "minimax": [
        "uniform",
        "--method",
        "minimax",
        "--sparsity",
        "0.4",
        "--steps",
        "8",
        "--lora-rank",
        "4",
        "--teacher-topk",
        "16",
        "--checkpoint-every",
        "4",
    ],
    "proxsparse": [
        "semi24",
        "--method",
        "proxsparse",
        "--steps",
        "6",
        "--lr",
        "0.02",
        "--lambda1",
        "0.3",
        "--lambda2",
        "0.1",
        "--layers-per-stage",
        "4",
        "--checkpoint-every",
        "2",
        "--refit",
        "obs",
    ],
    "proxsparse_init": [
        "semi24",
        "--method",
        "proxsparse",
        "--steps",
        "3",
        "--metric",
        "plain",
        "--init-mask",
        "sparsegpt",
    ],
    "tyr": [
        "global",
        "--method",
        "tyr",
        "--sparsity",
        "0.4",
        "--generations",
        "2",
        "--offspring",
        "4",
        "--select-tokens",
        "64,128,256",
        "--survivors",
        "2,1",
        "--iterations",
        "2",
        "--topk-logits",
        "50",
        "--budget-split",  # the default until 2026-11-30, when the hashes were recorded
        "fixed",
    ],
    "wanda_sp": ["uniform", "--method", "wanda", "--sparsity", "0.4"],
    "sparsegpt": ["semi24", "--method", "sparsegpt"],
}


def run_case(name: str, workdir: Path) -> dict[str, str]:
    """Run one case and hash its export."""
    args = CASES[name]
    out = workdir / name
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    cmd = [sys.executable, "-m", "llmprune", args[0], str(MODEL), "-o", str(out), *COMMON, *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in FILES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"cases to run (default all): {', '.join(CASES)}")
    parser.add_argument("--record", action="store_true", help="record the hashes instead of checking them")
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    names = args.cases or list(CASES)
    recorded = json.loads(HASHES.read_text()) if HASHES.is_file() else {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="llmprune-identical-") as tmp:
        for name in names:
            got = run_case(name, Path(tmp))
            if args.record:
                recorded[name] = got
                print(f"{name}: recorded")
                continue
            want = recorded.get(name)
            ok = want == got
            if not ok:
                failed.append(name)
            diff = (
                "" if ok or want is None else " (" + ", ".join(f for f in FILES if want.get(f) != got[f]) + " differ)"
            )
            print(f"{name}: {'identical' if ok else 'NO RECORD' if want is None else 'DIFFERENT'}{diff}")
    if args.record:
        HASHES.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
