"""End to end on the real reference model: dense perplexity reproduces, Wanda beats magnitude.

Slow (about two minutes on 2 cores): prunes are full CLI runs; perplexity of pruned models is
measured on the first quarter of eval.txt to keep the suite short (the dense number is checked
on the whole file against the published 42.45).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CALIB, EVAL, REFMODEL, read_json, requires_refmodel
from typer.testing import CliRunner

from llmprune.cli import app

pytestmark = [pytest.mark.slow, requires_refmodel]
runner = CliRunner()
PRUNE = ["--calib", str(CALIB), "--seqlen", "256", "--nsamples", "64", "--seed", "0"]


def cli(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def eval_subset(tmp_path_factory) -> Path:
    text = EVAL.read_text()
    path = tmp_path_factory.mktemp("data") / "eval_quarter.txt"
    path.write_text(text[: len(text) // 4])
    return path


def perplexity(folder: Path, data: Path, tmp: Path) -> dict:
    report = tmp / f"{folder.name}.json"
    cli("eval", folder, "--data", data, "--seqlen", "256", "--json", report)
    return read_json(report)


def test_dense_perplexity_reproduces_the_reference(tmp_path):
    report = perplexity(REFMODEL, EVAL, tmp_path)
    assert report["perplexity"] == pytest.approx(42.45, abs=0.01)
    assert report["seqlen"] == 256 and report["eval_tokens"] == 416 * 256
    assert report["params_total"] == 8_392_960 and report["params_decoder_linear"] == 6_291_456


@pytest.mark.parametrize(
    "strategy,extra",
    [("uniform", ["--sparsity", "0.3"]), ("semi24", [])],
    ids=["uniform30", "semi24"],
)
def test_wanda_beats_magnitude(strategy, extra, tmp_path, eval_subset):
    results = {}
    for method in ("magnitude", "wanda"):
        out = tmp_path / method
        cli(strategy, REFMODEL, "-o", out, "--method", method, *extra, *PRUNE)
        report = read_json(out / "llmprune_report.json")
        results[method] = (report["achieved_sparsity"], perplexity(out, eval_subset, tmp_path)["perplexity"])
    (s_mag, ppl_mag), (s_wanda, ppl_wanda) = results["magnitude"], results["wanda"]
    assert s_mag == pytest.approx(s_wanda, abs=1e-9), "same achieved sparsity"
    assert ppl_wanda < ppl_mag, results


@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "shared" / "refmodel").is_dir(),
    reason="../shared is not beside this checkout",
)
@pytest.mark.parametrize("name", ["refmodel", "data"])
def test_bundled_example_copies_equal_the_shared_reference(name):
    from helpers import EXAMPLES, SHARED

    shared, bundled = SHARED / name, EXAMPLES / name
    names = sorted(p.name for p in shared.iterdir())
    assert names == sorted(p.name for p in bundled.iterdir())
    for file in names:
        assert (shared / file).read_bytes() == (bundled / file).read_bytes(), file
