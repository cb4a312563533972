"""Interop: does each kind of output load and run in the consumers people deploy with?

One output of each strategy on the reference model (plus the dense model and DeciLM exports) is
handed to every consumer that is installed here, each in a fresh process:

- transformers: plain ``from_pretrained`` after ``import llmprune``; ``trust_remote_code`` in a
  process that never imports llmprune; ``AutoModel``; ``save_pretrained`` then a load of the copy
  in another fresh process; ``torch.compile`` (backend ``aot_eager``: Dynamo + AOTAutograd, no C++
  toolchain needed);
- PEFT: LoRA with default target modules, two training steps, save, reload, merge (for 2:4, also
  whether the merge kept the pattern and whether ``llmprune remask`` restores it);
- lm-eval's ``hf`` model (``HFLM``): loads the folder and scores a text (rolling log-likelihood);
- llama.cpp's own ``convert_hf_to_gguf.py`` (from the llama-cpp-python source distribution, or
  ``--llama-cpp DIR``), to F32 and to Q8_0, read back with the ``gguf`` package; when
  ``llama_cpp`` is importable, the 12 greedy tokens of llama.cpp against transformers';
- transformers 4.x and optimum's ONNX export, in the interpreter given by ``--tf4-python`` (a
  virtualenv: optimum-onnx pins transformers < 4.58, so it cannot share this interpreter):
  tokenizer and model load, and the 12 greedy tokens against transformers 5's.

The reference tokenizer needs two local mappings in llama.cpp's converter (properties of the
tokenizer, not of our exports): its pre-tokenizer hash is unknown (mapped to ``gpt-2``), and the
DeciLM class takes the GPT-2 vocabulary path only for a 128256-token vocabulary (taken for any
size). They are applied at run time to a temporary copy of the converter; nothing of llama.cpp is
kept in this repository.

    pip download --no-deps --no-binary :all: llama-cpp-python   # or: --llama-cpp PATH/TO/llama.cpp
    python -m venv --system-site-packages /tmp/tf4 && /tmp/tf4/bin/pip install "optimum-onnx[onnxruntime]"
    python benchmarks/interop.py [--sdist llama_cpp_python-X.tar.gz] [--llama-cpp DIR] [--tf4-python /tmp/tf4/bin/python]

Writes docs/benchmarks/interop.md and benchmarks/results/interop.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REFMODEL, ROOT, WORK, display_path, prune, prune_command, write_results  # noqa: E402

PROMPT = "The model is pruned and then"
GREEDY_TOKENS = 12
TYR_SMALL = dict(generations=4, offspring=8, iterations=2, nsamples=16)

#: (row name, pruning arguments or None for the input model itself)
OUTPUTS: list[tuple[str, dict[str, Any] | None]] = [
    ("dense (input)", None),
    ("dense → deci", dict(strategy="uniform", method="magnitude", sparsity=0.0, export_format="deci")),
    ("uniform wanda 30%", dict(strategy="uniform", method="wanda", sparsity=0.3)),
    ("uniform wanda 30% --align 32", dict(strategy="uniform", method="wanda", sparsity=0.3, align=32)),
    (
        "uniform wanda 30% --align 32 --align-heads 4",
        dict(strategy="uniform", method="wanda", sparsity=0.3, align=32, align_heads=4),
    ),
    ("semi24 wanda", dict(strategy="semi24", method="wanda")),
    ("global tyr 50%", dict(strategy="global", method="tyr", sparsity=0.5, **TYR_SMALL)),
    ("global tyr 50% → deci", dict(strategy="global", method="tyr", sparsity=0.5, export_format="deci", **TYR_SMALL)),
]

CONSUMERS = [
    "plain",
    "trust_remote_code",
    "AutoModel",
    "save → reload",
    "torch.compile",
    "PEFT LoRA",
    "lm-eval hf",
    "GGUF F32",
    "GGUF Q8_0",
    "llama.cpp greedy",
    "transformers 4.x",
    "optimum ONNX",
    "vLLM TP sizes",
]

TP_SIZES = (1, 2, 4, 8)


def layer_widths_of(config: dict[str, Any]) -> list[tuple[int, int, int]] | None:
    """Per layer (query heads, KV heads, MLP channels) of a folder's config; None when vLLM has no
    class for it (our ``llmprune_hetero_*`` types)."""
    if str(config.get("model_type", "")).startswith("llmprune_hetero_"):
        return None
    if "block_configs" in config:  # DeciLM: fixed query heads, per-layer KV grouping and MLP width
        heads, hidden = config["num_attention_heads"], config["hidden_size"]
        widths = []
        for block in config["block_configs"]:
            attn, ffn = block["attention"], block["ffn"]
            kv = 0 if attn.get("no_op") or attn.get("n_heads_in_group") is None else heads // attn["n_heads_in_group"]
            if ffn.get("no_op") or ffn.get("ffn_mult") is None:
                channels = 0
            else:
                channels = int(2 * ffn["ffn_mult"] * hidden / 3)
                channels += -channels % 256
            widths.append((heads if kv else 0, kv, channels))
        return widths
    layer = (
        config["num_attention_heads"],
        config.get("num_key_value_heads") or config["num_attention_heads"],
        config["intermediate_size"],
    )
    return [layer] * config["num_hidden_layers"]


def vllm_tp_cell(folder: Path) -> list[str]:
    """The tensor-parallel sizes vLLM's divisibility checks accept (read from its source, not run:
    ``LlamaAttention`` needs heads % tp == 0 and KV heads % tp == 0 or tp % KV heads == 0, the MLP's
    column-parallel layers need channels % tp == 0; ``DeciLMForCausalLM`` builds its layers from
    those classes)."""
    widths = layer_widths_of(json.loads((folder / "config.json").read_text()))
    if widths is None:
        return ["n/a", "vLLM has no class for this config: export with --export-format deci"]

    def fits(tp: int) -> bool:
        for heads, kv, channels in widths:
            if heads and (heads % tp or (kv % tp if kv >= tp else tp % kv)):
                return False
            if channels and channels % tp:
                return False
        return True

    ok = [tp for tp in TP_SIZES if fits(tp)]
    shapes = sorted({w for w in widths if any(w)})
    shown = ", ".join(f"{h}/{k}/{c}" for h, k, c in shapes[:3]) + (", ..." if len(shapes) > 3 else "")
    detail = (
        f"TP {', '.join(map(str, ok)) or 'none'} of {'/'.join(map(str, TP_SIZES))} "
        f"(static check of vLLM's rules; heads/KV heads/MLP: {shown})"
    )
    return ["works" if ok == list(TP_SIZES) else "partial", detail]


# ----- consumer scripts (each runs in a fresh interpreter) ----------------------------------------
COMMON = r"""
import json, sys, traceback
results = {}
def run(name, fn):
    try:
        detail = fn()
        results[name] = ["works", detail if isinstance(detail, str) else ""]
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        results[name] = ["fails", f"{type(err).__name__}: {first}"]
def done(path):
    json.dump(results, open(path, "w"))
"""

WITH_LLMPRUNE = (
    COMMON
    + r"""
import os
out, work, result_path = sys.argv[1:4]
import llmprune  # registers heterogeneous outputs (cheap: hooks only)
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(out)
ids = tok(PROMPT, return_tensors="pt").input_ids
state = {}
def plain():
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    state["model"] = model
    gen = model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=tok.eos_token_id or 0)
    state["greedy"] = gen[0, ids.shape[1]:].tolist()
    with torch.no_grad():
        state["logits"] = model(ids).logits
    return type(model).__name__
run("plain", plain)
def remote():  # a DeciLM folder loads only with its own code
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
    state["model"], state["remote"] = model, True
    gen = model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=tok.eos_token_id or 0)
    state["greedy"] = gen[0, ids.shape[1]:].tolist()
    with torch.no_grad():
        state["logits"] = model(ids).logits
if "model" not in state:
    try:
        remote()
    except Exception:
        pass
    config = json.load(open(os.path.join(out, "config.json")))
    if state.get("remote") and config.get("model_type") == "nemotron-nas":
        results["plain"] = [
            "n/a",
            "by design: a DeciLM folder runs its own modeling_decilm.py (trust_remote_code=True), "
            "as NVIDIA's Nemotron-NAS checkpoints do; llmprune does not claim the nemotron-nas model type",
        ]
KW = {"trust_remote_code": True} if state.get("remote") else {}
NOTE = " (trust_remote_code)" if KW else ""
def compiled():
    fn = torch.compile(state["model"], backend="aot_eager")
    with torch.no_grad():
        diff = float((fn(ids).logits - state["logits"]).abs().max())
    assert diff < 1e-4, f"compiled logits differ by {diff}"
    return f"max |Δlogit| {diff:.1e}" + NOTE
if "model" in state:
    run("torch.compile", compiled)
else:
    results["torch.compile"] = ["n/a", "the folder does not load"]
def lora():
    from peft import LoraConfig, PeftModel, get_peft_model
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **KW)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    targets = sorted({n.split(".")[-4] for n, _ in peft_model.named_parameters() if "lora_A" in n})
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    batch = tok(PROMPT * 4, return_tensors="pt").input_ids
    for _ in range(2):
        loss = peft_model(batch, labels=batch).loss
        loss.backward(); opt.step(); opt.zero_grad()
    peft_model.save_pretrained(os.path.join(work, "adapter"))
    base = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **KW)
    reloaded = PeftModel.from_pretrained(base, os.path.join(work, "adapter"))
    with torch.no_grad():
        before = reloaded(ids).logits
        merged = reloaded.merge_and_unload()
        diff = float((merged(ids).logits - before).abs().max())
    assert diff < 1e-4, f"merged logits differ by {diff}"
    detail = f"default targets {','.join(targets)}" + NOTE
    sidecar = os.path.join(out, "llmprune_sparsity.json")
    if os.path.exists(sidecar):
        from llmprune.core.masks import max_nonzeros_per_group
        from llmprune.run.remask import remask
        names = json.load(open(sidecar))["targets"]
        modules = dict(merged.named_modules())
        broken = sum(max_nonzeros_per_group(modules[n].weight) > 2 for n in names)
        merged.save_pretrained(os.path.join(work, "merged")); tok.save_pretrained(os.path.join(work, "merged"))
        remask(os.path.join(work, "merged"), out, os.path.join(work, "remasked"))
        detail += f"; 2:4 broken by the merge in {broken}/{len(names)} weights, restored by llmprune remask"
    return detail
try:
    import peft  # noqa: F401
    run("PEFT LoRA", lora)
except ImportError:
    results["PEFT LoRA"] = ["not run here", "peft not installed"]
results["_greedy"] = state.get("greedy")
done(result_path)
"""
)

WITHOUT_LLMPRUNE = (
    COMMON
    + r"""
out, saved, result_path = sys.argv[1:4]
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(out)
ids = tok(PROMPT, return_tensors="pt").input_ids
def trust():
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.save(model(ids).logits, saved + ".logits.pt")
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    return type(model).__name__
run("trust_remote_code", trust)
run("AutoModel", lambda: type(AutoModel.from_pretrained(out, trust_remote_code=True)).__name__)
assert not any(m == "llmprune" or m.startswith("llmprune.") for m in sys.modules)
done(result_path)
"""
)

RELOAD = (
    COMMON
    + r"""
saved, result_path = sys.argv[1:3]
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
def reload():
    tok = AutoTokenizer.from_pretrained(saved)
    model = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = float((model(tok(PROMPT, return_tensors="pt").input_ids).logits - torch.load(saved + ".logits.pt")).abs().max())
    assert diff < 1e-5, f"reloaded logits differ by {diff}"
    return "same logits"
run("save → reload", reload)
assert not any(m == "llmprune" or m.startswith("llmprune.") for m in sys.modules)
done(result_path)
"""
)

LM_EVAL = (
    COMMON
    + r"""
out, result_path = sys.argv[1:3]
def score():
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=out, trust_remote_code=True, device="cpu", batch_size=1, dtype="float32")
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(PROMPT * 8,), idx=0)
    (value,) = lm.loglikelihood_rolling([request])
    value = value[0] if isinstance(value, tuple) else value
    assert value == value and value < 0, value
    return f"rolling log-likelihood {value:.1f}"
run("lm-eval hf", score)
done(result_path)
"""
)

LLAMA_CPP = (
    COMMON
    + r"""
gguf_path, result_path, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def greedy():
    from llama_cpp import Llama
    llm = Llama(model_path=gguf_path, n_ctx=128, verbose=False, logits_all=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False)
    out = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == N:
            break
    assert out == expected, f"llama.cpp {out} != transformers {expected}"
    return "same 12 greedy tokens"
run("llama.cpp greedy", greedy)
done(result_path)
"""
)

TF4 = (
    COMMON
    + r"""
out, expected, result_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
VERSION = f"transformers {transformers.__version__}"
try:
    tok = AutoTokenizer.from_pretrained(out)
except Exception as err:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    for column in ("transformers 4.x", "optimum ONNX"):
        results[column] = ["fails", f"{VERSION} cannot load the tokenizer: {type(err).__name__}: {first}"]
    done(result_path)
    sys.exit(0)
ids = tok(PROMPT, return_tensors="pt").input_ids
def tf4():
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, torch_dtype=torch.float32).eval()
    gen = model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=tok.eos_token_id or 0)
    got = gen[0, ids.shape[1]:].tolist()
    assert got == expected, f"{VERSION} greedy {got} != transformers 5's {expected}"
    return f"{VERSION}: {type(tok).__name__}, same {N} greedy tokens"
run("transformers 4.x", tf4)
def onnx_greedy(model):
    gen = model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=tok.eos_token_id or 0)
    got = gen[0, ids.shape[1]:].tolist()
    assert got == expected, f"ONNX greedy {got} != transformers {expected}"
def export():
    from optimum.onnxruntime import ORTModelForCausalLM
    model = ORTModelForCausalLM.from_pretrained(out, export=True, trust_remote_code=True)
    head_dim = getattr(model.config, "head_dim", None)
    if head_dim and getattr(model, "embed_size_per_head", head_dim) != head_dim:
        # optimum's runtime sizes the KV cache as hidden_size // num_attention_heads for Llama and
        # Mistral, which is wrong once heads are pruned; check the export with the right size
        shipped = model.embed_size_per_head
        model.embed_size_per_head = head_dim
        onnx_greedy(model)
        raise RuntimeError(
            f"the ONNX export is right, but optimum's runtime sizes the KV cache as hidden/heads = {shipped} "
            f"instead of head_dim {head_dim}; with ort_model.embed_size_per_head = config.head_dim it gives "
            f"the same {N} greedy tokens"
        )
    onnx_greedy(model)
    return f"exported; same {N} greedy tokens with the KV cache ({VERSION})"
try:
    import optimum.onnxruntime  # noqa: F401
    run("optimum ONNX", export)
except ImportError:
    results["optimum ONNX"] = ["not run here", "optimum-onnx not installed in --tf4-python"]
done(result_path)
"""
)


def run_script(
    source: str,
    args: list[str],
    work: Path,
    name: str,
    timeout: int = 900,
    with_repo: bool = True,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run one consumer script in a fresh interpreter; its JSON results, or a failure for all."""
    script = work / f"{name}.py"
    script.write_text(f"PROMPT = {PROMPT!r}\nN = {GREEDY_TOKENS}\n" + source)
    result = work / f"{name}.json"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT) if with_repo else "",
        HF_MODULES_CACHE=str(work / "hf_modules"),
    )
    try:
        proc = subprocess.run(
            [python, str(script), *args, str(result)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"_error": f"timed out after {timeout} s"}
    if not result.is_file():
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        return {"_error": f"crashed: {tail}"}
    return json.loads(result.read_text())


# ----- llama.cpp converter ------------------------------------------------------------------------
def converter_from_sdist(sdist: Path, into: Path) -> Path:
    """Unpack ``vendor/llama.cpp``'s converter (script, conversion package, gguf-py) from a
    llama-cpp-python source distribution."""
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if re.search(r"/vendor/llama\.cpp/(convert_hf_to_gguf\.py|conversion/|gguf-py/)", m.name)
        ]
        tar.extractall(into, members=members, filter="data")
    (script,) = into.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py")
    return script.parent


def patched_converter(source: Path, into: Path, gpt2_hashes: list[str]) -> Path:
    """A temporary copy of llama.cpp's converter with the reference tokenizer's two local mappings."""
    target = into / "llama.cpp-patched"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(source / "convert_hf_to_gguf.py", target)
    for sub in ("conversion", "gguf-py"):
        if (source / sub).exists():
            shutil.copytree(source / sub, target / sub)
    base = target / "conversion" / "base.py"
    if not base.exists():  # older single-file converter
        base = target / "convert_hf_to_gguf.py"
    text = base.read_text()
    mapping = "".join(
        f'        if chkhsh == "{h}":\n            res = "gpt-2"  # llmprune benchmark: local mapping\n'
        for h in gpt2_hashes
    )
    text = text.replace(
        '        if res is None:\n            logger.warning("\\n")',
        mapping + '        if res is None:\n            logger.warning("\\n")',
        1,
    )
    base.write_text(text)
    deci = target / "conversion" / "deci.py"
    if not deci.exists():
        deci = target / "convert_hf_to_gguf.py"
    text = deci.read_text()
    text = text.replace(
        'if self.hparams.get("vocab_size", 128256) == 128256:',
        "if True:  # llmprune benchmark: GPT-2 vocabulary path for any vocabulary size",
        1,
    )
    deci.write_text(text)
    return target / "convert_hf_to_gguf.py"


def convert(converter: Path, model: Path, outfile: Path, outtype: str, timeout: int = 900) -> tuple[bool, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # stdin closed: the converter's tokenizer load asks whether to run a folder's custom code (no)
    proc = subprocess.run(
        [sys.executable, str(converter), str(model), "--outfile", str(outfile), "--outtype", outtype],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode == 0 and outfile.is_file(), proc.stderr + proc.stdout


def unknown_tokenizer_hashes(log: str) -> list[str]:
    return re.findall(r"chkhsh:\s+([0-9a-f]{64})", log)


def gguf_summary(path: Path, expect: str) -> str:
    """Architecture and tensor types of a GGUF file (read with the ``gguf`` package)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    weights = [t for t in reader.tensors if len(t.shape) == 2 and "token_embd" not in t.name]
    off = [t for t in weights if t.tensor_type.name != expect]
    text = f"arch {arch}, {len(reader.tensors)} tensors"
    if expect != "F32":
        text += f"; {len(weights) - len(off)}/{len(weights)} weights {expect}"
        if off:
            names = sorted({re.sub(r"blk\.\d+\.", "", t.name) for t in off})
            text += f", fell back to {off[0].tensor_type.name}: {', '.join(names)}"
    return text


def gguf_cells(converter: Path | None, folder: Path, work: Path, hashes: list[str]) -> dict[str, list[str]]:
    if converter is None:
        return {
            k: ["not run here", "no llama.cpp converter (pass --sdist or --llama-cpp)"]
            for k in ("GGUF F32", "GGUF Q8_0")
        }
    if importlib.util.find_spec("gguf") is None:
        return {k: ["not run here", "gguf package not installed"] for k in ("GGUF F32", "GGUF Q8_0")}
    cells: dict[str, list[str]] = {}
    for column, outtype, expect in (("GGUF F32", "f32", "F32"), ("GGUF Q8_0", "q8_0", "Q8_0")):
        outfile = work / f"model-{outtype}.gguf"
        ok, log = convert(converter, folder, outfile, outtype)
        if ok:
            cells[column] = ["works", gguf_summary(outfile, expect)]
        else:
            error = next(
                (l for l in reversed(log.splitlines()) if "Error" in l or "error" in l),
                log.strip().splitlines()[-1:] or [""],
            )
            cells[column] = ["fails", (error if isinstance(error, str) else error[0])[:200]]
    return cells


# ----- one output ---------------------------------------------------------------------------------
def check_output(
    name: str, folder: Path, work: Path, converter: Path | None, hashes: list[str], tf4_python: str | None = None
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    cells: dict[str, list[str]] = {}
    first = run_script(WITH_LLMPRUNE, [str(folder), str(work)], work, "check_with_llmprune")
    greedy = first.pop("_greedy", None)
    second = run_script(
        WITHOUT_LLMPRUNE, [str(folder), str(work / "saved")], work, "check_without_llmprune", with_repo=False
    )
    for part in (first, second):
        if "_error" in part:
            part.setdefault("plain" if part is first else "trust_remote_code", ["fails", part.pop("_error")])
        cells.update(part)
    if cells.get("trust_remote_code", [""])[0] == "works":
        cells.update(
            {
                k: v
                for k, v in run_script(RELOAD, [str(work / "saved")], work, "check_reload", with_repo=False).items()
                if not k.startswith("_")
            }
        )
    else:
        cells["save → reload"] = ["n/a", "no model to save"]
    cells.update(
        {
            k: v
            for k, v in run_script(LM_EVAL, [str(folder)], work, "check_lm_eval", with_repo=False).items()
            if not k.startswith("_")
        }
    )
    cells.update(gguf_cells(converter, folder, work, hashes))
    if cells.get("GGUF F32", [""])[0] != "works":
        cells["llama.cpp greedy"] = ["n/a", "no GGUF file"]
    elif importlib.util.find_spec("llama_cpp") is None:
        cells["llama.cpp greedy"] = [
            "not run here",
            "llama_cpp not installed (building it from source takes long on 2 cores)",
        ]
    else:
        cells.update(run_llama_cpp(work, greedy))
    if tf4_python is None:
        for column in ("transformers 4.x", "optimum ONNX"):
            cells[column] = ["not run here", "no transformers 4.x interpreter (pass --tf4-python)"]
    else:
        tf4_args = [str(folder), json.dumps(greedy)]
        part = run_script(TF4, tf4_args, work, "check_tf4", with_repo=False, python=tf4_python)
        if "_error" in part:
            part = {"transformers 4.x": ["fails", part["_error"]]}
        cells.update(part)
    cells["vLLM TP sizes"] = vllm_tp_cell(folder)
    for column in CONSUMERS:
        cells.setdefault(column, ["fails", "no result"])
    return {"output": name, "folder": display_path(folder), "greedy_tokens": greedy, "cells": cells}


def run_llama_cpp(work: Path, greedy: list[int] | None) -> dict[str, list[str]]:
    script = work / "check_llama_cpp.py"
    script.write_text(f"PROMPT = {PROMPT!r}\nN = {GREEDY_TOKENS}\n" + LLAMA_CPP)
    result = work / "llama_cpp.json"
    subprocess.run(
        [sys.executable, str(script), str(work / "model-f32.gguf"), str(result), json.dumps(greedy)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not result.is_file():
        return {"llama.cpp greedy": ["fails", "crashed"]}
    return json.loads(result.read_text())


def find_converter(args: argparse.Namespace, work: Path) -> Path | None:
    if args.llama_cpp:
        return Path(args.llama_cpp)
    sdists = (
        [Path(args.sdist)]
        if args.sdist
        else sorted(ROOT.glob("llama_cpp_python-*.tar.gz"))
        + sorted(Path(tempfile.gettempdir()).glob("llama_cpp_python-*.tar.gz"))
        + sorted(Path(tempfile.gettempdir()).glob("*/llama_cpp_python-*.tar.gz"))
    )
    for sdist in sdists:
        if sdist.is_file():
            return converter_from_sdist(sdist, work / "sdist")
    return None


def prepare_converter(source: Path, work: Path, probe_model: Path) -> tuple[Path, list[str]]:
    """The patched converter: the DeciLM vocabulary mapping first, then the pre-tokenizer hash that
    converter reports for ``probe_model``'s tokenizer mapped to gpt-2."""
    script = patched_converter(source, work, [])
    ok, log = convert(script, probe_model, work / "probe.gguf", "f32")
    hashes = [] if ok else unknown_tokenizer_hashes(log)
    (work / "probe.gguf").unlink(missing_ok=True)
    return (patched_converter(source, work, hashes) if hashes else script), hashes


COLUMNS = [("output", "output", "")] + [(c, c, "") for c in CONSUMERS]


DETAILS = ROOT / "benchmarks" / "results" / "interop_details.json"


def publish(records: list[dict[str, Any]], converter_note: str) -> None:
    """Write the page and the JSON for the rows measured so far (after every row, so an interrupted
    run keeps what it measured; ``--only`` reruns rows and keeps the others)."""
    order = [name for name, _ in OUTPUTS]
    records = sorted(records, key=lambda r: order.index(r["output"]) if r["output"] in order else len(order))
    rows = []
    for record in records:
        folder = REFMODEL if record["folder"].startswith("../shared/") else ROOT / record["folder"]
        if "vLLM TP sizes" not in record["cells"] and (folder / "config.json").is_file():
            record["cells"]["vLLM TP sizes"] = vllm_tp_cell(folder)
        row = {"output": record["output"]}
        for column in CONSUMERS:
            status, detail = record["cells"].get(column, ["not run here", "column added after this row ran"])
            row[column] = status if not detail else f"{status}: {detail}"
        rows.append(row)
    notes = ["Commands:", ""] + [f"- {r['output']}: `{r['command']}`" for r in records] + ["", converter_note]
    write_results(
        "interop",
        "Interop: outputs × consumers",
        rows,
        COLUMNS,
        intro="Each cell: `works` / `fails` / `n/a` / `not run here`, with what was checked. "
        "Outputs are pruned from the reference model (calibration 64 × 256 tokens of calib.txt, seed 0; "
        "Týr on 16 × 256 tokens with --generations 4 --offspring 8 --iterations 2 to keep the run short).",
        notes="\n".join(notes),
    )
    DETAILS.write_text(json.dumps(records, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", help="llama-cpp-python source distribution (.tar.gz) holding llama.cpp's converter")
    parser.add_argument("--llama-cpp", help="a llama.cpp checkout (its convert_hf_to_gguf.py is used)")
    parser.add_argument(
        "--tf4-python",
        help="a Python interpreter with transformers 4.x (and optimum-onnx) for the transformers 4.x and ONNX columns",
    )
    parser.add_argument(
        "--only", help="comma-separated row names to (re)run; the other rows are kept from the last run"
    )
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    if only:  # the page's "Reproduce with" line names the command that measures every row
        at = sys.argv.index("--only") if "--only" in sys.argv else None
        sys.argv = [a for i, a in enumerate(sys.argv) if at is None or i not in (at, at + 1)]
        sys.argv = [a for a in sys.argv if not a.startswith("--only=")]
    work = WORK / "interop"
    if only:  # keep the other rows' folders: the static vLLM column is read from them
        for sub in ("sdist", "llama.cpp-patched"):
            shutil.rmtree(work / sub, ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    source = find_converter(args, work)
    converter, hashes = None, []
    if source is not None:
        converter, hashes = prepare_converter(source, work, REFMODEL)
    converter_note = "Converter: " + (
        "llama.cpp's `convert_hf_to_gguf.py` from "
        + display_path(args.llama_cpp or args.sdist or "the llama-cpp-python sdist")
        + f", patched at run time with the two tokenizer mappings (pre-tokenizer hash(es) "
        f"{', '.join(h[:12] + '…' for h in hashes) or 'none needed'} → gpt-2; "
        "DeciLM GPT-2 vocabulary path for any vocabulary size)."
        if converter
        else "none available."
    )
    records = json.loads(DETAILS.read_text()) if only and DETAILS.is_file() else []
    for name, spec in OUTPUTS:
        if only and name not in only:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        shutil.rmtree(work / slug, ignore_errors=True)  # no stale results from an earlier run
        if spec is None:
            folder, command = REFMODEL, "(the input model)"
        else:
            spec = dict(spec)
            strategy, method = spec.pop("strategy"), spec.pop("method")
            sparsity = spec.pop("sparsity", None)
            folder = work / slug / "out"
            report = prune(strategy, method, folder, sparsity=sparsity, **spec)
            command = prune_command(strategy, method, sparsity, **spec)
            if "deci" in report:
                command += f" (padding: {report['deci']['padding_params']:,} parameters)"
        record = check_output(name, folder, work / slug / "checks", converter, hashes, args.tf4_python)
        record["command"] = command
        records = [r for r in records if r["output"] != name] + [record]
        publish(records, converter_note)
        print(name, {c: record["cells"][c][0] for c in CONSUMERS}, flush=True)


if __name__ == "__main__":
    main()
