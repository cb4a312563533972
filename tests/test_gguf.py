"""A DeciLM export converts with llama.cpp's own converter (issue 16).

Needs llama.cpp's ``convert_hf_to_gguf.py``: set ``LLMPRUNE_LLAMA_CPP`` to a llama.cpp checkout or
``LLMPRUNE_LLAMA_CPP_SDIST`` to a llama-cpp-python source distribution
(``pip download --no-deps --no-binary :all: llama-cpp-python``; ``.ci/run`` puts one in
``.ci/cache``, which is used when neither variable is set), and install ``gguf`` (and
``sentencepiece``, which the converter imports). Skipped otherwise. The converter is patched at run
time (a temporary copy) with the test tokenizer's two mappings, as in benchmarks/interop.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

LLAMA_CPP = os.environ.get("LLMPRUNE_LLAMA_CPP")
#: ``.ci/run`` downloads the source distribution into ``.ci/cache``.
SDIST = os.environ.get("LLMPRUNE_LLAMA_CPP_SDIST") or next(
    (str(p) for p in sorted((Path(__file__).resolve().parents[1] / ".ci" / "cache").glob("llama_cpp_python-*.tar.gz"))),
    None,
)
MISSING = [name for name in ("gguf", "sentencepiece") if importlib.util.find_spec(name) is None]

pytestmark = [
    pytest.mark.skipif(
        not (LLAMA_CPP or SDIST),
        reason="llama.cpp converter not available (set LLMPRUNE_LLAMA_CPP or LLMPRUNE_LLAMA_CPP_SDIST)",
    ),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}"),
]


@pytest.fixture(scope="module")
def converter(tmp_path_factory):
    import interop

    work = tmp_path_factory.mktemp("converter")
    source = Path(LLAMA_CPP) if LLAMA_CPP else interop.converter_from_sdist(Path(SDIST), work)
    return source, work


def test_deci_export_converts_to_gguf_with_per_layer_widths(tmp_path, converter):
    import interop
    from gguf import GGUFReader
    from test_deci import _export, _group_plan

    source, work = converter
    out, _, deci = _export(tmp_path, _group_plan)
    script, _ = interop.prepare_converter(source, work, out)
    ok, log = interop.convert(script, out, tmp_path / "model.gguf", "f32")
    assert ok, log[-3000:]
    reader = GGUFReader(str(tmp_path / "model.gguf"))

    def field(name):
        f = reader.fields[name]
        return [f.parts[i].tolist()[0] if len(f.parts[i]) == 1 else bytes(f.parts[i]).decode() for i in f.data]

    assert field("general.architecture") == ["deci"]
    layers = deci["layers"]
    assert field("deci.attention.head_count") == [l["deci_heads"] for l in layers]
    assert field("deci.attention.head_count_kv") == [l["deci_kv_heads"] for l in layers]
    assert field("deci.feed_forward_length") == [l["deci_channels"] for l in layers]
    tensors = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    assert "blk.1.attn_q.weight" not in tensors and "blk.1.attn_norm.weight" not in tensors  # no-op attention
    assert "blk.2.ffn_down.weight" not in tensors and "blk.2.ffn_norm.weight" not in tensors  # no-op MLP
    assert tensors["blk.0.ffn_down.weight"] == [256, 64]  # ggml order: [in, out]
