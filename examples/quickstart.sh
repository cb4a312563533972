#!/usr/bin/env bash
# Offline tour on the reference model shipped in examples/refmodel (a copy of ../shared/refmodel);
# measured times: docs/benchmarks.md (benchmarks/quickstart_time.py).
# Run from the repository root after the two set-up commands of the README (CPU torch, then pip install -e ".[dev]").
set -euo pipefail
MODEL=${MODEL:-examples/refmodel}
CALIB=${CALIB:-examples/data/calib.txt}
EVAL=${EVAL:-examples/data/eval.txt}
OUT=${OUT:-out/quickstart}
COMMON=(--calib "$CALIB" --seqlen 256 --nsamples 64 --seed 0 --overwrite)

llmprune eval "$MODEL" --data "$EVAL" --seqlen 256 --json "$OUT-dense.json"
llmprune uniform "$MODEL" -o "$OUT/uniform-wanda-30" --sparsity 0.3 --method wanda "${COMMON[@]}"
llmprune semi24 "$MODEL" -o "$OUT/semi24-sparsegpt" --method sparsegpt "${COMMON[@]}"
for run in uniform-wanda-30 semi24-sparsegpt; do
  llmprune eval "$OUT/$run" --data "$EVAL" --seqlen 256 --json "$OUT/$run.json"
done
llmprune inspect "$OUT/uniform-wanda-30"
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
dense = json.loads(pathlib.Path(f"{out}-dense.json").read_text())["perplexity"]
print(f"dense perplexity {dense:.2f}")
for run in ("uniform-wanda-30", "semi24-sparsegpt"):
    r = json.loads((out / f"{run}.json").read_text())
    print(f"{run:20s} perplexity {r['perplexity']:.2f}  decoder-linear params {r['params_decoder_linear']:,}")
PY
