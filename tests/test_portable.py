"""Export hygiene (issue 16): tokenizer config that transformers 4.x and 5.x load, no leaked
loading keys, files readable by group/others as the umask allows."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from helpers import SAMPLE_TEXT, make_tiny_model, save_tiny_model

from llmprune.export.save import save_pruned
from llmprune.model.arch import ArchAdapter
from llmprune.model.plan import PrunePlan, geometry_dict


def _export(tmp_path, name="out"):
    from transformers import AutoTokenizer

    source = save_tiny_model(tmp_path / "src")
    tokenizer = AutoTokenizer.from_pretrained(source)  # loading from a folder sets is_local etc.
    model = make_tiny_model("llama")
    geom = ArchAdapter.for_model(model).geometry(model)
    plan = PrunePlan(kind="semi24", strategy="semi24", method="test", dense=geometry_dict(geom))
    out = tmp_path / name
    save_pruned(model, tokenizer, plan, {}, out, torch.float32)
    return out, tokenizer


def test_tokenizer_config_is_portable_and_gives_the_same_ids(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out, original = _export(tmp_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4.x has no TokenizersBackend
    assert not {"is_local", "local_files_only", "_commit_hash"} & set(config), config
    text = SAMPLE_TEXT[:300]
    for loaded in (AutoTokenizer.from_pretrained(out), PreTrainedTokenizerFast.from_pretrained(out)):
        assert loaded(text)["input_ids"] == original(text)["input_ids"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_exported_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out, _ = _export(tmp_path, f"out-{mask:o}")
    finally:
        os.umask(old)
    expected_file, expected_dir = 0o666 & ~mask, 0o777 & ~mask
    assert stat.S_IMODE(out.stat().st_mode) == expected_dir
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes
    assert modes == {name: expected_file for name in modes}, {k: oct(v) for k, v in modes.items()}
