"""The typed contracts between the pipeline and its readers: PruneReport, frozen PruneSettings,
the sparsity rules, and Geometry as the one parameter accountant."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_tiny_model, read_json
from helpers import run_cli as run
from pydantic import ValidationError

from llmprune.errors import ModelLoadError
from llmprune.export.report import PruneReport
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.settings import DEFAULT_SPARSITY, SEMI24_SPARSITY, PruneSettings

#: Keys of llmprune_report.json, in the order they are written (a method, and entries such as
#: ``alignment``, append their own).
REPORT_KEYS = [
    "strategy",
    "method",
    "settings",
    "options",
    "seed",
    "device",
    "compute_dtype",
    "save_dtype",
    "dense_geometry",
    "requested_sparsity",
    "achieved_sparsity",
    "layer_sparsity",
    "layer_widths",
    "params_decoder_linear_dense",
    "params_decoder_linear",
    "params_total_dense",
    "params_total",
    "sparsity_warning",
    "calibration",
    "time_load_s",
    "time_prune_s",
    "versions",
    "output",
    "history",
]
TAIL_KEYS = ["peak_rss_mib", "time_total_s"]


def _settings(**kw) -> PruneSettings:
    return PruneSettings(**{"strategy": "uniform", "method": "magnitude", "model": "m", "output": "o", **kw})


def test_report_round_trips_the_written_json(model_dir, calib, tmp_path):
    out = tmp_path / "u"
    assert (
        run(
            "uniform",
            model_dir,
            "-o",
            out,
            "--method",
            "wanda",
            "--sparsity",
            "0.3",
            "--calib",
            calib,
            "--nsamples",
            "4",
            "--seqlen",
            "32",
        ).exit_code
        == 0
    )
    stacked = tmp_path / "s"
    assert run("semi24", out, "-o", stacked, "--method", "magnitude").exit_code == 0
    for folder, method_keys in ((out, ["alignment"]), (stacked, ["semi24_skipped"])):
        text = (folder / "llmprune_report.json").read_text()
        written = json.loads(text)
        assert list(written) == REPORT_KEYS + method_keys + TAIL_KEYS
        report = PruneReport.load(folder)
        assert report.as_json() == written and list(report.as_json()) == list(written)
        assert json.dumps(report.as_json(), indent=2) + "\n" == text  # byte for byte
    report = PruneReport.load(stacked)
    assert report.requested_sparsity == SEMI24_SPARSITY and report.calibration is None
    (step,) = report.history
    assert (step.strategy, step.method, step.model) == ("uniform", "wanda", str(model_dir))
    assert step.layer_widths == read_json(out / "llmprune_report.json")["layer_widths"]
    # The readers use the same values.
    info = json.loads(run("inspect", stacked, "--json").output)
    assert (info["strategy"], info["achieved_sparsity"], info["history"]) == (
        "semi24",
        report.achieved_sparsity,
        [step.model_dump(mode="json")],
    )
    assert PruneReport.load(model_dir) is None


def test_a_broken_report_is_one_clear_error(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "llmprune_report.json").write_text('{"strategy": "uniform", "achieved_sparsity": "most"}')
    with pytest.raises(ModelLoadError, match="not a readable llmprune report"):
        PruneReport.load(folder)
    result = run("inspect", folder)
    assert result.exit_code == 3 and result.output.startswith("error:") and "achieved_sparsity" in result.output
    (folder / "llmprune_report.json").write_text("{not json")
    result = run("inspect", folder)
    assert result.exit_code == 3 and "not a readable llmprune report" in result.output
    from llmprune.run.evaluation import pruning_info

    with pytest.raises(ModelLoadError):
        pruning_info(str(folder))


def test_method_fields_are_kept_after_the_common_ones():
    report = PruneReport.model_validate(
        {"strategy": "semi24", "method": "x", "time_total_s": 1.0, "peak_rss_mib": 2.0, "x_trace": {"loss": [1, 2]}}
    )
    assert list(report.as_json()) == ["strategy", "method", "x_trace", "peak_rss_mib", "time_total_s"]
    assert report.x_trace == {"loss": [1, 2]}


def test_settings_are_frozen_and_the_pipeline_does_not_change_them(model_dir, calib, tmp_path):
    from llmprune.run.pipeline import run_prune
    from llmprune.runtime.progress import Reporter

    settings = _settings(model=str(model_dir), output=tmp_path / "o", method="wanda", calib=str(calib), nsamples=4)
    with pytest.raises(ValidationError, match="frozen"):
        settings.seqlen = 16
    before = settings.model_dump()
    report = run_prune(settings, Reporter(enabled=False))
    assert settings.model_dump() == before and settings.seqlen is None
    # The report holds the resolved values.
    assert report.settings["seqlen"] == 128 and report.calibration.seqlen == 128
    assert report.settings["calib"] == str(calib) and report.calibration.source == str(calib)


def test_sparsity_default_and_the_24_rule_live_in_the_settings():
    assert _settings().sparsity == DEFAULT_SPARSITY
    assert _settings(sparsity=None).sparsity == DEFAULT_SPARSITY
    assert _settings(sparsity=0.3).sparsity == 0.3
    assert _settings(strategy="semi24", sparsity=None).sparsity == SEMI24_SPARSITY
    assert _settings(strategy="semi24", sparsity=0.5).sparsity == SEMI24_SPARSITY
    with pytest.raises(ValidationError, match="only 0.5"):
        _settings(strategy="semi24", sparsity=0.3)
    with pytest.raises(ValidationError, match=r"\[0, 1\)"):
        _settings(sparsity=1.0)


@pytest.mark.parametrize("attn_unit", ["group", "query"])
def test_geometry_counts_what_the_model_stores(attn_unit):
    """Geometry's formulas agree with the tensors of a sliced model, layer by layer."""
    from llmprune.core.masks import select_attention_units, uniform_widths
    from llmprune.model.plan import LayerPlan, PrunePlan, units_to_heads
    from llmprune.model.surgery import apply_plan

    model = make_tiny_model("llama")
    adapter = ArchAdapter.for_model(model)
    geom = adapter.geometry(model)
    assert adapter.decoder_linear_params(model) == geom.dense_linear_params
    assert adapter.linear_params_per_layer(model) == [geom.dense_layer_params] * geom.num_layers
    k_attn, k_mlp = uniform_widths(geom, 0.4, attn_unit)
    units = select_attention_units(torch.rand(geom.attn_unit_count(attn_unit)), k_attn, geom, attn_unit)
    heads, kv = units_to_heads(units, geom, attn_unit)
    plan = PrunePlan.dense_structured(geom, "uniform", "test", attn_unit)
    plan.layers = [
        LayerPlan(index=i, heads=heads, kv_heads=kv, channels=list(range(k_mlp))) for i in range(geom.num_layers)
    ]
    apply_plan(model, adapter, plan)
    expected = geom.attn_params_kept(attn_unit, k_attn) + k_mlp * geom.mlp_unit_params
    assert expected == geom.layer_linear_params(len(heads), len(kv), k_mlp)
    assert adapter.linear_params_per_layer(model) == [expected] * geom.num_layers


def test_24_sparsity_is_counted_once(model_dir, tmp_path):
    """achieved_sparsity, params_decoder_linear and layer_sparsity all come from the same non-zero count."""
    out = tmp_path / "s"
    assert run("semi24", model_dir, "-o", out, "--method", "magnitude", "--save-dtype", "float32").exit_code == 0
    report = PruneReport.load(out)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    adapter = ArchAdapter.for_model(model)
    nonzero = adapter.linear_params_per_layer(model, nonzero=True)
    dense = Geometry(**report.dense_geometry)
    assert report.params_decoder_linear == sum(nonzero)
    assert report.achieved_sparsity == 1 - sum(nonzero) / report.params_decoder_linear_dense
    assert report.layer_sparsity == [1 - n / dense.dense_layer_params for n in nonzero]
