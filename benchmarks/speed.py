"""CPU speed of pruned outputs on a larger model built from a config (random weights are fine
for speed): prefill and decode tokens/s of dense and pruned, timed in the same process with
warm-up and repeats, next to the ideal speed-up (decoder-linear parameter ratio).

    python benchmarks/speed.py [--hidden 1024 --layers 16 --repeats 5]
"""

from __future__ import annotations

import argparse
import shutil

import torch
from common import CALIB, REFMODEL, WORK, prune, prune_command, write_results

COLUMNS = [
    ("output", "output", ""),
    ("widths", "kept widths", ""),
    ("achieved_sparsity", "sparsity", ".0%"),
    ("params_decoder_linear", "decoder-linear params", ","),
    ("ideal", "ideal ×", ".2f"),
    ("prefill", "prefill tok/s", ",.0f"),
    ("prefill_x", "prefill ×", ".2f"),
    ("decode", "decode tok/s", ",.1f"),
    ("decode_x", "decode ×", ".2f"),
]


def build_dense(folder, hidden: int, layers: int) -> None:
    """A random Llama-architecture model with the reference tokenizer, saved in bfloat16."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    heads = hidden // 64
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=64,
        vocab_size=8192,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(REFMODEL).save_pretrained(folder)


def widths_summary(folder) -> str:
    """Attention heads and MLP channels kept, from the exported plan (range over layers)."""
    import json

    plan = json.loads((folder / "llmprune_plan.json").read_text())
    layers = plan.get("layers") or []
    if not layers:
        return "2:4 on every linear"
    heads = [len(layer["heads"]) for layer in layers]
    mlp = [len(layer["channels"]) for layer in layers]

    def span(v: list[int]) -> str:
        return str(v[0]) if min(v) == max(v) else f"{min(v)}–{max(v)}"

    return f"heads {span(heads)}, MLP {span(mlp)}"


def load(folder):
    from llmprune.model.loading import load_model

    model, adapter, _ = load_model(str(folder), torch.device("cpu"), torch.float32)
    return model, adapter.decoder_linear_params(model)


def paired(dense, pruned, seqlen: int, rounds: int, repeats: int) -> dict:
    """Dense and pruned timed alternately, ``rounds`` times (each a median of ``repeats`` after
    warm-up); speed-ups are the median of the per-round ratios, so load changes on a shared
    machine hit both sides of a ratio alike."""
    from statistics import median

    from llmprune.run.evaluation import measure_speed

    runs = [(measure_speed(dense, seqlen, repeats), measure_speed(pruned, seqlen, repeats)) for _ in range(rounds)]
    out = {}
    for key, name in (("prefill_tokens_per_s", "prefill"), ("decode_tokens_per_s", "decode")):
        out[name] = median(b[key] for _, b in runs)
        out[f"dense_{name}"] = median(a[key] for a, _ in runs)
        out[f"{name}_x"] = median(b[key] / a[key] for a, b in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (after 2 warm-up runs)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating dense/pruned measurements per output")
    args = parser.parse_args()

    from llmprune.pruners.base import methods

    dense_dir = WORK / "speed-dense"
    shutil.rmtree(dense_dir, ignore_errors=True)
    build_dense(dense_dir, args.hidden, args.layers)
    jobs = [("uniform", "magnitude", 0.3, {}), ("uniform", "magnitude", 0.5, {})]
    if "tyr" in methods("global"):
        # Speed depends only on the widths, not on how good they are: a short search (one
        # iteration, two generations) keeps this benchmark to minutes on a CPU.
        short = {"iterations": 1, "generations": 2, "offspring": 8}
        jobs += [("global", "tyr", 0.3, short), ("global", "tyr", 0.5, short)]
    jobs.append(("semi24", "magnitude", None, {}))

    dense, dense_params = load(dense_dir)
    rows = []
    for strategy, method, sparsity, options in jobs:
        out = WORK / f"speed-{strategy}-{method}-{sparsity}"
        report = prune(
            strategy, method, out, model=dense_dir, sparsity=sparsity, calib=CALIB, nsamples=16, seqlen=256, **options
        )
        pruned, params = load(out)
        kept = params if strategy != "semi24" else report["params_decoder_linear"]
        timing = paired(dense, pruned, args.seqlen, args.rounds, args.repeats)
        del pruned
        if not rows:
            rows.append(
                {
                    "output": "dense",
                    "achieved_sparsity": 0.0,
                    "params_decoder_linear": dense_params,
                    "ideal": 1.0,
                    "prefill": timing["dense_prefill"],
                    "prefill_x": 1.0,
                    "decode": timing["dense_decode"],
                    "decode_x": 1.0,
                    "widths": "-",
                }
            )
        rows.append(
            {
                "output": f"{strategy} {method}",
                "achieved_sparsity": report["achieved_sparsity"],
                "params_decoder_linear": kept,
                "ideal": dense_params / kept,
                **timing,
                "widths": widths_summary(out),
                "command": prune_command(strategy, method, sparsity, model="SPEED_MODEL", nsamples=16, **options),
            }
        )
        print(rows[-1], flush=True)
        shutil.rmtree(out)
    path = write_results(
        "speed",
        "CPU speed of pruned outputs",
        rows,
        COLUMNS,
        intro=f"Random-weight Llama built from a config: hidden {args.hidden}, {args.layers} layers, "
        f"{args.hidden // 64} query / {args.hidden // 128} KV heads of 64, MLP {int(args.hidden * 2.75)}, vocab 8192. "
        f"float32 on CPU, batch 1; prefill = one forward of {args.seqlen} tokens, decode = 64 greedy tokens "
        f"with the KV cache after a 16-token prompt. Dense and pruned are loaded in the same process and timed "
        f"alternately {args.rounds} times (each a median of {args.repeats} runs after 2 warm-up runs); tok/s are "
        "medians over the rounds and '×' the median of the per-round ratios, so load changes on the shared "
        "machine affect both sides of a ratio alike (the dense row is from the first output's rounds). "
        "'ideal ×' is the decoder-linear parameter ratio. "
        "SPEED_MODEL in the commands is that model (built by this script, calibrated on calib.txt).",
        notes="Speed-ups follow the parameter ratio roughly but not exactly: on this shared 2-core VM, earlier runs that timed dense then pruned moved the same output's ratio by up to 0.9 (uniform 50% prefill: 2.28 in one run, 1.36 in the next); alternating the timing reduces that but one run cannot show by how much, so the difference between uniform and global outputs of the same size (e.g. 1.59 vs 2.01 prefill at 50%) is within noise, not a property of the method. Heterogeneous widths cost nothing measurable here. "
        "2:4 gives **no speed-up on CPU**: the weights are stored dense with zeros and CPU matmuls do not skip "
        "them. On a CUDA GPU (compute capability ≥ 8.0, fp16/bf16), `torch.sparse.to_sparse_semi_structured` "
        "turns the 2:4 weights into sparse tensors whose matmuls run faster; that needs a GPU and is not measured here.",
    )
    shutil.rmtree(dense_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
