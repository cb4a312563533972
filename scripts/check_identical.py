"""Prove a refactor left the pruning outputs byte-identical.

Prunes the reference model with one small setting of each learned method (and the one-shot
baselines whose scoring the learned methods share), recovers a Wanda-sp output by distillation, then
compares each output's ``model.safetensors``, ``llmprune_plan.json`` and ``config.json`` with the
hashes recorded from the code before the refactor (``scripts/identical_hashes.json``): SHA-256 of the
weights' and the plan's bytes, and of ``config.json`` as canonical JSON without its
``transformers_version`` key (which only says which transformers wrote the file).

    python scripts/check_identical.py             # check every case (~80 s on 2 idle CPU cores)
    python scripts/check_identical.py minimax     # check some cases
    python scripts/check_identical.py --record    # (re)record the hashes from the current code

For a refactor (code moves, renames, clean-ups that must not change any output):

1. On the commit before the refactor, run ``python scripts/check_identical.py``. It must pass;
   if it does not (another torch build or CPU sums floats in another order: the recorded hashes
   come from d96aa82 on torch 2.13.0+cpu, 2 threads, AVX512 kernels; the script prints what it
   runs on), record a baseline there instead: ``python scripts/check_identical.py --record --hashes
   /tmp/before.json`` (or ``--record`` alone, and commit the re-recorded file *before* the
   refactor, never with it).
2. Refactor, then run the same command without ``--record`` (with ``--hashes /tmp/before.json`` if
   you recorded there). Every case must print ``identical``; ``DIFFERENT`` names the files that
   changed. Re-record only for an intended change of outputs, in its own commit that says why.

Each case runs the real CLI in a subprocess with this checkout first on ``PYTHONPATH`` (the script
checks that the subprocess imports ``llmprune`` from this checkout, not from another editable
install). Týr's case passes its settings whose defaults were chosen on held-out text (they may
move again) explicitly; a deliberate change of a default another case relies on shows as
``DIFFERENT``: re-record in the commit that makes it.

Run it with the default torch thread count, as the hashes were recorded: with ``OMP_NUM_THREADS=1``
the matrix products sum in another order and SparseGPT's and Týr's bytes differ on unchanged code.

Exit code 0 when every checked case matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
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
#: config.json keys left out of its hash.
CONFIG_IGNORED = ("transformers_version",)

#: name -> command-line arguments after the model (small settings: at most a minute each on 2 cores).
CASES: dict[str, list[str]] = {
    "minimax": [
        "uniform",
        "--method",
        "minimax",
        "--sparsity",
        "0.4",
        "--steps",
        "8",
        "--lr",  # the default until 2026-12-08, when the hashes were recorded (now 0.01)
        "0.02",
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
        # The defaults at d96aa82 (chosen on held-out text, so they may move again), pinned:
        "--budget-split",
        "free",
        "--percdamp",
        "0.0001",
        "--first-order",
        "none",
        "--mlp-rounds",
        "16",
        "--final-prune",
        "supernet",
    ],
    "wanda_sp": ["uniform", "--method", "wanda", "--sparsity", "0.4"],
    "sparsegpt": ["semi24", "--method", "sparsegpt"],
    # `llmprune recover` of the wanda_sp output (the model argument) from its dense teacher.
    "recover": ["recover", "--teacher", str(MODEL), "--steps", "4", "--checkpoint-every", "2"],
}
#: case -> the case whose output it takes as its model (run first, in the same folder).
INPUTS: dict[str, str] = {"recover": "wanda_sp"}


def subprocess_env() -> dict[str, str]:
    """The environment of the CLI runs: offline, this checkout first on ``PYTHONPATH``."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=path)


def check_import(workdir: Path) -> None:
    """Fail unless the subprocesses import ``llmprune`` from this checkout; print their environment."""
    code = (
        "import llmprune, llmprune.cli, torch, transformers\n"
        "print(llmprune.__file__); print(llmprune.cli.__file__)\n"
        "print(f'torch {torch.__version__} ({torch.get_num_threads()} threads, "
        "{torch.backends.cpu.get_cpu_capability()}), transformers {transformers.__version__}')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=workdir
    )
    lines = proc.stdout.splitlines()
    files = [Path(line).resolve() for line in lines[:2]]
    if proc.returncode != 0 or len(files) != 2 or not all(f.is_relative_to(ROOT / "llmprune") for f in files):
        raise SystemExit(f"the CLI subprocess does not import llmprune from {ROOT}: {proc.stdout}{proc.stderr}")
    print(f"llmprune from {ROOT}; {lines[2]}", flush=True)


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes; of config.json as canonical JSON without ``CONFIG_IGNORED``."""
    data = path.read_bytes()
    if path.name == "config.json":
        config = {k: v for k, v in json.loads(data).items() if k not in CONFIG_IGNORED}
        data = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()


def run_case(name: str, workdir: Path) -> Path:
    """Run one case (after the case it takes its input from, unless already run) into workdir/name."""
    out = workdir / name
    if out.is_dir():
        return out
    model = run_case(INPUTS[name], workdir) if name in INPUTS else MODEL
    args = CASES[name]
    cmd = [sys.executable, "-m", "llmprune", args[0], str(model), "-o", str(out), *COMMON, *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=workdir)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"cases to run (default all): {', '.join(CASES)}")
    parser.add_argument("--record", action="store_true", help="record the hashes instead of checking them")
    parser.add_argument(
        "--hashes", type=Path, default=HASHES, help=f"hash file to check against or record into (default {HASHES})"
    )
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    names = args.cases or list(CASES)
    recorded = json.loads(args.hashes.read_text()) if args.hashes.is_file() else {}
    failed = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llmprune-identical-") as tmp:
        check_import(Path(tmp))
        for name in names:
            case_start = time.monotonic()
            try:
                out = run_case(name, Path(tmp))
            except RuntimeError as err:
                failed.append(name)
                print(f"{name}: FAILED ({time.monotonic() - case_start:.0f} s)\n{err}", flush=True)
                continue
            got = {f: file_hash(out / f) for f in FILES}
            took = f"({time.monotonic() - case_start:.0f} s)"
            if args.record:
                recorded[name] = got
                print(f"{name}: recorded {took}", flush=True)
                continue
            want = recorded.get(name)
            if want == got:
                print(f"{name}: identical {took}", flush=True)
                continue
            failed.append(name)
            if want is None:
                print(f"{name}: NO RECORD {took}", flush=True)
            else:
                differ = ", ".join(f for f in FILES if want.get(f) != got[f])
                print(f"{name}: DIFFERENT ({differ} differ) {took}", flush=True)
    print(f"total {time.monotonic() - start:.0f} s")
    if args.record:
        if failed:
            print(f"nothing recorded: {', '.join(failed)} failed")
            return 1
        args.hashes.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
