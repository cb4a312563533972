"""Týr-the-Pruner (global --method tyr): local pruner, supernet, search, resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import SAMPLE_TEXT, make_tiny_model, read_json, tiny_tokenizer

from llmprune.core.masks import uniform_widths
from llmprune.data.capture import LayerwiseRunner
from llmprune.data.text import calibration_samples
from llmprune.model.arch import ArchAdapter
from llmprune.pruners.base import PruneContext
from llmprune.pruners.tyr import GlobalTyr
from llmprune.pruners.tyr.final_prune import prune_sequentially
from llmprune.pruners.tyr.local_prune import (
    ROUNDS,
    LocalSettings,
    least_squares_refit,
    prune_module,
    prune_module_levels,
    unit_rows,
    unit_scores,
)
from llmprune.pruners.tyr.pruner import TyrOptions, local_settings
from llmprune.pruners.tyr.search import (
    Evaluator,
    IterationState,
    SearchConfig,
    SearchSpace,
    cross_ratio,
    mutate,
    run_generations,
)
from llmprune.pruners.tyr.supernet import (
    KEYS,
    LEVELS,
    Supernet,
    SupernetSpec,
    expectation_weights,
    level_values,
    module_types,
)
from llmprune.runtime.progress import Reporter
from llmprune.settings import PruneSettings


def _problem(n_in=48, n_out=20, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, n_in, generator=g) @ torch.randn(n_in, n_in, generator=g) * 0.3
    W = torch.randn(n_out, n_in, generator=g)
    return X, W, X.t() @ X


# ----- local pruner -----------------------------------------------------------------------------
def test_refit_equals_least_squares_solution():
    X, W, H = _problem()
    rows = unit_rows(12, 4)
    result = prune_module(W, H, rows, keep=7, rounds=3, percdamp=0.0)
    kept_cols = rows[result.kept].reshape(-1)
    # Least squares against the dense output: min ||X W^T - X_K V_K||.
    expected = torch.linalg.lstsq(X[:, kept_cols].double(), (X @ W.t()).double()).solution.t().float()
    torch.testing.assert_close(result.weight[:, kept_cols], expected, atol=2e-4, rtol=2e-4)
    # Same via the closed form used by the supernet.
    refit = least_squares_refit(H, H @ W.t(), kept_cols).t()
    torch.testing.assert_close(result.weight[:, kept_cols], refit, atol=1e-5, rtol=1e-5)
    assert result.weight.dtype == torch.float32


@pytest.mark.parametrize("rounds", [1, 4, 16])
def test_removed_units_are_exactly_zero_and_counts_right(rounds):
    X, W, H = _problem(n_in=40)
    rows = unit_rows(40, 1)
    for keep in (0, 1, 13, 39, 40):
        result = prune_module(W, H, rows, keep=keep, rounds=rounds)
        assert len(result.kept) == keep and result.kept == sorted(set(result.kept))
        removed = [u for u in range(40) if u not in result.kept]
        assert torch.all(result.weight[:, removed] == 0)
        if keep:
            assert torch.all(result.weight[:, result.kept].abs().sum(0) > 0)


def test_query_head_units_stay_balanced_across_kv_groups():
    X, W, H = _problem(n_in=8 * 4)
    rows = unit_rows(8, 4)  # 8 query heads of 4 rows; 4 KV groups of 2 heads
    groups = [[2 * j, 2 * j + 1] for j in range(4)]
    result = prune_module(W, H, rows, keep=4, groups=groups)
    assert [sum(h in result.kept for h in grp) for grp in groups] == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        prune_module(W, H, rows, keep=5, groups=groups)


def test_obs_rounds_pick_the_least_damaging_unit():
    # One input is a near-copy of another: removing it costs almost nothing after compensation.
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 6, generator=g)
    X[:, 5] = X[:, 0] + 1e-3 * torch.randn(500, generator=g)
    W = torch.randn(3, 6, generator=g) + 3.0
    result = prune_module(W, X.t() @ X, unit_rows(6, 1), keep=5, percdamp=0.0, first_order="none")
    assert 0 not in result.kept or 5 not in result.kept


# A hand-worked first-order problem: inputs e1, e2, e3, e1+e2, e2+e3 give H = XᵀX below,
# H⁻¹ has diagonal (5/8, 1/2, 5/8), and one output row V = Wᵀ.
_H3 = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])


def test_first_order_term_is_computed_by_hand():
    V = torch.tensor([[-1.0], [-1.0], [2.0]])
    # G = H·V = (−3, −2, 3); ⟨V_p, G_p⟩ = (3, 2, 6); OBS = V_p² / (2 (H⁻¹)_pp) = (0.8, 1, 3.2).
    G = _H3 @ V
    local = unit_rows(3, 1)
    Hinv = torch.linalg.inv(_H3)
    expected = {"none": [0.8, 1.0, 3.2], "paper": [3.8, 3.0, 9.2], "code": [3.8, 3.0, 9.2]}
    for mode, want in expected.items():
        torch.testing.assert_close(unit_scores(V, G, Hinv, local, mode), torch.tensor(want))
    # A negative ⟨V_p, G_p⟩: V = (1, −1, 3) gives G = (1, 1, 5) and ⟨V_p, G_p⟩ = (1, −1, 15).
    V = torch.tensor([[1.0], [-1.0], [3.0]])
    torch.testing.assert_close(unit_scores(V, _H3 @ V, Hinv, local, "paper"), torch.tensor([1.8, 2.0, 22.2]))
    torch.testing.assert_close(unit_scores(V, _H3 @ V, Hinv, local, "code"), torch.tensor([1.8, 0.0, 22.2]))


@pytest.mark.parametrize(
    ("v", "mode", "dropped"),
    [
        ((-1.0, -1.0, 2.0), "none", 0),  # OBS alone: 0.8 < 1.0
        ((-1.0, -1.0, 2.0), "paper", 1),  # 3.0 < 3.8: the first-order term changes the choice
        ((1.0, -1.0, 3.0), "paper", 0),  # 1.8 < 2.0
        ((1.0, -1.0, 3.0), "code", 1),  # signed: 0.0 < 1.8
    ],
)
def test_first_order_term_decides_which_unit_goes(v, mode, dropped):
    # Without damping the old term −⟨HV − G, V⟩ is exactly zero at the dense start; the paper's is not.
    W = torch.tensor([v])
    result = prune_module(W, _H3, unit_rows(3, 1), keep=2, percdamp=0.0, first_order=mode)
    assert result.kept == [u for u in range(3) if u != dropped]


# ----- supernet ---------------------------------------------------------------------------------
def test_level_values_and_steps():
    assert level_values(384, 96, 768) == [0, 96, 192, 288, 384, 480, 576, 672, 768]
    assert level_values(525, 96, 768) == [141, 237, 333, 429, 525, 621, 717, 768, 768]
    assert level_values(2, 1, 4) == [0, 0, 0, 1, 2, 3, 4, 4, 4]
    model = make_tiny_model("llama")
    geom = ArchAdapter.for_model(model).geometry(model)
    types = module_types(geom, "group")
    assert types["o"].units == 2 and types["down"].units == 96
    assert types["down"].step(0.125) == 12 and types["down"].step(0.015625) == 2 and types["o"].step(0.125) == 1
    q = module_types(geom, "query")["o"]
    assert q.units == 4 and q.step(0.125) == 2 and q.step(0.9) == 4  # one head per KV group at least


def test_expectation_weights_sum_to_one_and_favour_denser_variants():
    w = expectation_weights([0, 10, 20, 40], 40)
    assert float(w.sum()) == pytest.approx(1.0)
    assert w[0] == 0 and torch.all(w[1:] > 0) and torch.all(w[1:] > w[:-1])
    torch.testing.assert_close(w[3] / w[1], torch.tensor(4.0))
    assert torch.all(expectation_weights([0], 5) == 0)


def _ctx(tmp_path: Path, model, sparsity=0.4, nsamples=6, seqlen=32, resume=False, seed=0, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT)
    tok = tiny_tokenizer(model.config.vocab_size)
    settings = PruneSettings(
        strategy="global",
        method="tyr",
        model="tiny",
        output=tmp_path / "out",
        sparsity=sparsity,
        calib=str(text),
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        resume=resume,
        method_options=options,
    )
    calib = calibration_samples(tok, str(text), nsamples, seqlen, seed)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return PruneContext(
        model=model,
        adapter=ArchAdapter.for_model(model),
        tokenizer=tok,
        calib=calib,
        settings=settings,
        device=torch.device("cpu"),
        work_dir=work,
        progress=Reporter(enabled=False),
    )


@pytest.mark.parametrize("attn_unit", ["group", "query"])
def test_supernet_levels_have_the_right_counts(tmp_path, attn_unit):
    model = make_tiny_model("qwen2", num_hidden_layers=2)
    ctx = _ctx(tmp_path, model)
    adapter = ctx.adapter
    geom = adapter.geometry(model)
    types = module_types(geom, attn_unit)
    dense = copy.deepcopy(model.state_dict())
    centers = {"o": [types["o"].units // 2, types["o"].units], "down": [50, 90]}
    spec = SupernetSpec(centers, {"o": types["o"].granularity, "down": 12}, 0.125)
    net = Supernet(tmp_path / "net", spec, types, 2)
    net.build(model, adapter, LayerwiseRunner(model, adapter, ctx.calib, ctx.device, 4), ctx.device)
    assert net.complete()
    for key, v in model.state_dict().items():  # building leaves the model dense
        assert torch.equal(v, dense[key]), key
    assert net.levels("down", 0) == [2, 14, 26, 38, 50, 62, 74, 86, 96]
    for i in range(2):
        for key in ("o", "down"):
            for kept in set(net.levels(key, i)):
                compact, units = net.load(i, key, kept)
                assert len(units) == kept
                rows = types[key].rows
                assert compact.shape == (geom.hidden_size, kept * rows.shape[1])  # kept columns only
                weight, _ = net.load_dense(i, key, kept)
                removed = rows[[u for u in range(types[key].units) if u not in units]].reshape(-1)
                assert torch.all(weight[:, removed] == 0)
                assert torch.equal(weight[:, rows[units].reshape(-1)], compact)
                if attn_unit == "query" and key == "o":
                    assert (
                        len({sum(1 for u in units if u // geom.group_size == j) for j in range(geom.num_kv_heads)}) == 1
                    )


class _RecordingRunner(LayerwiseRunner):
    """Keeps a copy of the inputs each layer's statistics were collected on."""

    seen: dict[int, list[torch.Tensor]]

    def collect(self, layer_index, layer, keys, hessian):
        self.seen = getattr(self, "seen", {})
        self.seen[layer_index] = [h.clone() for h in self.inputs.hidden]
        return super().collect(layer_index, layer, keys, hessian)


def test_next_block_sees_the_density_weighted_average_of_the_variants(tmp_path):
    # Expectation error accumulation (methods.md §3.2): layer 1's supernet is built on the outputs
    # of layer 0 run with Σ_k w_k·W_k (w ∝ density), not with the dense weights (the public code).
    model = make_tiny_model("llama", num_hidden_layers=2)
    ctx = _ctx(tmp_path, model)
    adapter = ctx.adapter
    types = module_types(adapter.geometry(model), "group")
    spec = SupernetSpec({"o": [1, 1], "down": [48, 48]}, {"o": 1, "down": 12}, 0.125)
    net = Supernet(tmp_path / "net", spec, types, 2)
    runner = _RecordingRunner(model, adapter, ctx.calib, ctx.device, 4)
    net.build(model, adapter, runner, ctx.device)
    built_on = runner.seen[1]

    layer0 = adapter.layers(model)[0]
    dense = {key: adapter.linear(layer0, key).weight.detach().clone() for key in ("o", "down")}

    def layer1_inputs() -> list[torch.Tensor]:
        fresh = LayerwiseRunner(model, adapter, ctx.calib, ctx.device, 4)
        fresh.advance(layer0)
        return [h.clone() for h in fresh.inputs.hidden]

    with torch.no_grad():
        for key in ("o", "down"):
            kept = sorted(set(net.levels(key, 0)))
            weights = expectation_weights(kept, types[key].units)
            average = sum(w * net.load_dense(0, key, k)[0] for w, k in zip(weights.tolist(), kept))
            adapter.linear(layer0, key).weight.copy_(average)
        expected = layer1_inputs()
        for key in ("o", "down"):
            adapter.linear(layer0, key).weight.copy_(dense[key])
        dense_inputs = layer1_inputs()
    assert len(built_on) == len(expected) > 0
    for got, want, plain in zip(built_on, expected, dense_inputs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (got - plain).abs().max() > 1e-3, "indistinguishable from dense propagation"


def test_final_prune_runs_the_local_pruner_on_the_pruned_models_own_inputs(tmp_path):
    # --final-prune sequential: layer 1 is pruned on the outputs of layer 0 *as pruned* (not the
    # dense or the expected ones), and down on the inputs the pruned o gives.
    model = make_tiny_model("llama", num_hidden_layers=2)
    ctx = _ctx(tmp_path, model)
    adapter = ctx.adapter
    layers = adapter.layers(model)
    types = module_types(adapter.geometry(model), "group")
    kept = {(0, "o"): 1, (0, "down"): 40, (1, "o"): 2, (1, "down"): 30}
    dense = {(i, key): adapter.linear(layers[i], key).weight.detach().clone() for i in range(2) for key in KEYS}
    runner = LayerwiseRunner(model, adapter, ctx.calib, ctx.device, 4)
    results = prune_sequentially(adapter, runner, kept, types, LocalSettings(0.01, "none"))

    with torch.no_grad():  # reference: the pruned model itself, its statistics layer by layer
        for (i, key), result in results.items():
            assert len(result.kept) == kept[(i, key)]
            adapter.linear(layers[i], key).weight.copy_(result.weight)
        reference = LayerwiseRunner(model, adapter, ctx.calib, ctx.device, 4)
        for i, layer in enumerate(layers):
            for key in KEYS:
                H = reference.collect(i, layer, [key], hessian=True)[key].hessian
                mtype = types[key]
                want = prune_module(dense[(i, key)], H, mtype.rows, kept[(i, key)], ROUNDS[key], 0.01, mtype.groups)
                assert results[(i, key)].kept == want.kept, (i, key)
                torch.testing.assert_close(results[(i, key)].compact, want.compact, rtol=1e-4, atol=1e-5)
            reference.advance(layer)


def test_mlp_rounds_reach_the_supernet_and_the_final_prune(tmp_path, monkeypatch):
    # --mlp-rounds: both places the local pruner runs take the MLP's rounds from the options;
    # attention keeps its single round.
    from llmprune.pruners.tyr import final_prune, supernet

    seen: list[tuple[str, int]] = []
    levels, single = supernet.prune_module_levels, final_prune.prune_module
    monkeypatch.setattr(
        supernet, "prune_module_levels", lambda *a, **k: seen.append(("supernet", k["rounds"])) or levels(*a, **k)
    )
    monkeypatch.setattr(
        final_prune, "prune_module", lambda *a, **k: seen.append(("final", k["rounds"])) or single(*a, **k)
    )
    model = make_tiny_model("llama", num_hidden_layers=1)
    ctx = _ctx(tmp_path, model)
    adapter = ctx.adapter
    types = module_types(adapter.geometry(model), "group")
    local = local_settings(TyrOptions(mlp_rounds=5))
    assert local == LocalSettings(1e-4, "none", 5)
    net = Supernet(tmp_path / "net", SupernetSpec({"o": [1], "down": [48]}, {"o": 1, "down": 12}, 0.125), types, 1)
    net.build(model, adapter, LayerwiseRunner(model, adapter, ctx.calib, ctx.device, 4), ctx.device, local)
    runner = LayerwiseRunner(model, adapter, ctx.calib, ctx.device, 4)
    prune_sequentially(adapter, runner, {(0, "o"): 1, (0, "down"): 40}, types, local)
    assert seen == [("supernet", 1), ("supernet", 5), ("final", 1), ("final", 5)]


# ----- search -----------------------------------------------------------------------------------
def _space(n_layers=6, attn_units=4, channels=768, hidden=256, head_dim=32, kv=4, heads=8, centers=None, delta=0.125):
    from llmprune.model.arch import Geometry

    geom = Geometry(hidden, heads, kv, head_dim, channels, n_layers)
    types = module_types(geom, "group")
    k_attn, k_mlp = uniform_widths(geom, 0.3, "group")
    centers = centers or {"o": [k_attn] * n_layers, "down": [k_mlp] * n_layers}
    spec = SupernetSpec(centers, {k: types[k].step(delta) for k in ("o", "down")}, delta)
    net = Supernet(Path("/nonexistent"), spec, types, n_layers)
    return SearchSpace.from_supernet(net), spec


@pytest.mark.parametrize("delta", [0.125, 0.0625, 0.03125, 0.015625])
def test_every_mutation_preserves_the_budget_exactly(delta):
    space, spec = _space(delta=delta, centers={"o": [3, 2, 4, 1, 3, 0], "down": [525, 700, 100, 768, 30, 400]})
    gen = torch.Generator().manual_seed(0)
    parent = (0,) * len(space.modules)
    budget = space.total_params(parent)
    per_type = {k: space.type_params(parent, k) for k in ("o", "down")}
    state = parent
    for n in range(400):
        child = mutate(space, state, gen, None)
        assert space.total_params(child) == budget
        assert {k: space.type_params(child, k) for k in ("o", "down")} == per_type
        assert all(LEVELS[0] <= k <= LEVELS[-1] for k in child)
        state = child if n % 3 else state  # random walk, too
    assert state != parent


def test_free_budget_split_moves_parameters_between_types_exactly():
    space, spec = _space()
    ratio = cross_ratio(space, spec.steps)
    assert ratio == (3, 2)  # 3 KV groups (3·49152) = 2 MLP steps of 96 channels (2·96·768)
    gen = torch.Generator().manual_seed(0)
    parent = (0,) * len(space.modules)
    budget = space.total_params(parent)
    attn_shares = set()
    state = parent
    for _ in range(300):
        state = mutate(space, state, gen, ratio)
        assert space.total_params(state) == budget
        attn_shares.add(space.type_params(state, "o"))
    assert len(attn_shares) > 1


# ----- end to end -------------------------------------------------------------------------------
SMALL = dict(generations=2, offspring=4, select_tokens="32,64,128", survivors="2,1", iterations=2, topk_logits=50)


@pytest.mark.parametrize("final_prune", ["supernet", "sequential"])
def test_plan_is_consistent_with_the_budget_and_weights(tmp_path, final_prune):
    model = make_tiny_model("llama", num_hidden_layers=3)
    dense = copy.deepcopy(model)
    options = dict(SMALL, final_prune=final_prune)
    ctx = _ctx(tmp_path, model, **options)
    result = GlobalTyr(options).prune(ctx)
    plan = result.plan
    geom = ctx.adapter.geometry(model)
    k_attn, k_mlp = uniform_widths(geom, 0.4, "group")
    kept = sum(geom.layer_linear_params(len(lp.heads), len(lp.kv_heads), len(lp.channels)) for lp in plan.layers)
    assert kept == geom.num_layers * geom.layer_linear_params(k_attn * geom.group_size, k_attn, k_mlp)
    for key, v in model.state_dict().items():  # the model is handed back dense
        assert torch.equal(v, dense.state_dict()[key]), key
    for lp in plan.layers:
        name = ctx.adapter.linear_name(lp.index, "down")
        if lp.channels:
            w = plan.weights[name]
            removed = [c for c in range(geom.intermediate_size) if c not in lp.channels]
            assert torch.all(w[:, removed] == 0)
    log = result.files["tyr_search_log.json"]
    fits = [r["best_fitness"] for r in log["generations"] if r["iteration"] == 0]
    assert len(fits) == SMALL["generations"] + 1 and fits == sorted(fits, reverse=True)
    assert Path(result.files["tyr_kept_fraction.png"]).is_file()
    assert result.report["time_supernet_s"] > 0


class DenseCoordinateSupernet(Supernet):
    """Reference: the layout before the compact supernet, float32 variants in dense coordinates
    ``[out, in]`` (zeros in the removed columns) straight from the local pruner; every reader then
    uses all the columns."""

    def _write_layer(self, i, layer, adapter, stats, local):
        from safetensors.torch import save_file

        tensors = {}
        for key in KEYS:
            mtype = self.types[key]
            W = adapter.linear(layer, key).weight.detach().float()
            H = stats[key].hessian
            kept_values = sorted(set(self.levels(key, i)))
            results = prune_module_levels(
                W,
                H,
                mtype.rows,
                kept_values,
                local.rounds(key),
                local.percdamp,
                mtype.groups,
                H @ W.t(),
                local.first_order,
            )
            for kept in kept_values:
                tensors[f"{key}.{kept}.weight"] = results[kept].weight.cpu().contiguous()
                tensors[f"{key}.{kept}.units"] = torch.tensor(results[kept].kept, dtype=torch.int64)
        save_file(tensors, str(self.layer_file(i)))

    def columns(self, key, units):
        return torch.arange(self.types[key].rows.numel())


def test_compact_supernet_gives_the_search_result_of_the_dense_coordinate_layout(tmp_path, monkeypatch):
    import llmprune.pruners.tyr.pruner as pruner_mod

    options = dict(SMALL, budget_split="free")
    on_disk: list[list[str]] = []  # supernets on disk whenever one is built: one at a time
    build = Supernet.build

    def recording_build(self, *args, **kwargs):
        on_disk.append(sorted(p.name for p in self.folder.parent.glob("iter*")))
        return build(self, *args, **kwargs)

    monkeypatch.setattr(Supernet, "build", recording_build)
    compact = GlobalTyr(options).prune(_ctx(tmp_path / "c", make_tiny_model("llama", num_hidden_layers=2), **options))
    assert on_disk == [[], []], on_disk  # iteration 0's supernet is deleted before iteration 1's is built
    monkeypatch.setattr(pruner_mod, "Supernet", DenseCoordinateSupernet)
    dense = GlobalTyr(options).prune(_ctx(tmp_path / "d", make_tiny_model("llama", num_hidden_layers=2), **options))
    assert [lp.model_dump() for lp in compact.plan.layers] == [lp.model_dump() for lp in dense.plan.layers]
    assert compact.plan.weights.keys() == dense.plan.weights.keys()
    for name, w in dense.plan.weights.items():
        assert torch.equal(compact.plan.weights[name], w), name  # identical exported weights
    fitness = [[r["best_fitness"] for r in x.files["tyr_search_log.json"]["generations"]] for x in (compact, dense)]
    assert fitness[0] == fitness[1]
    assert any(r["improved"] for r in compact.files["tyr_search_log.json"]["generations"])
    size = [
        sum(f.stat().st_size for f in (t / "work" / "supernet").rglob("*.safetensors"))
        for t in (tmp_path / "c", tmp_path / "d")
    ]
    assert 0 < size[0] < 0.75 * size[1], size  # only the last iteration's supernet is left, compact


def test_a_later_supernet_that_does_not_fit_is_refused_and_the_search_is_resumable(tmp_path, monkeypatch):
    # A later iteration's centers come from the search: its exact size is checked before building.
    import collections
    import shutil

    from llmprune.errors import OutputExistsError
    from llmprune.pruners.tyr.search import IterationState

    Usage = collections.namedtuple("Usage", "total used free")
    checks: list[Path] = []

    def usage(path):
        checks.append(Path(path))
        return Usage(0, 0, 10**12 if len(checks) == 1 else 1000)  # room for the start only

    monkeypatch.setattr(shutil, "disk_usage", usage)
    options = dict(SMALL, generations=1)
    ctx = _ctx(tmp_path, make_tiny_model("llama", num_hidden_layers=2), **options)
    with pytest.raises(OutputExistsError, match=r"^not enough disk space for the Týr supernet: need .*--resume\)$"):
        GlobalTyr(options).prune(ctx)
    assert len(checks) == 2 and checks[1] == ctx.work_dir / "supernet"
    state = IterationState.load(ctx.work_dir / "search_state.pt")
    assert (state.iteration, state.generation) == (1, 0)  # iteration 1's centers are checkpointed
    assert not (ctx.work_dir / "supernet" / "iter1").exists() and not (ctx.work_dir / "supernet" / "iter0").exists()


@pytest.mark.parametrize("stop_after", [4, 9])  # saves: mid first iteration / mid second iteration
def test_resume_equals_uninterrupted_run(tmp_path, monkeypatch, stop_after):
    import llmprune.pruners.tyr.search as search_mod

    options = dict(SMALL, generations=3, budget_split="free")
    straight = (
        GlobalTyr(options).prune(_ctx(tmp_path / "a", make_tiny_model("llama", num_hidden_layers=3), **options)).plan
    )

    calls = {"n": 0}
    original = search_mod.IterationState.save

    def interrupting_save(self, path):
        original(self, path)
        calls["n"] += 1
        if calls["n"] == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(search_mod.IterationState, "save", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        GlobalTyr(options).prune(_ctx(tmp_path / "b", make_tiny_model("llama", num_hidden_layers=3), **options))
    monkeypatch.setattr(search_mod.IterationState, "save", original)
    resumed_ctx = _ctx(tmp_path / "b", make_tiny_model("llama", num_hidden_layers=3), resume=True, **options)
    resumed_result = GlobalTyr(options).prune(resumed_ctx)
    resumed = resumed_result.plan
    assert [lp.model_dump() for lp in resumed.layers] == [lp.model_dump() for lp in straight.layers]
    assert resumed.weights.keys() == straight.weights.keys()
    for name in straight.weights:
        torch.testing.assert_close(resumed.weights[name], straight.weights[name], atol=1e-6, rtol=0)
    log = resumed_result.files["tyr_search_log.json"]["generations"]
    assert len(log) == options["iterations"] * (options["generations"] + 1)


def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path, monkeypatch):
    import llmprune.pruners.tyr.search as search_mod
    from llmprune.errors import ResumeError

    calls = {"n": 0}
    original = search_mod.IterationState.save

    def interrupting_save(self, path):
        original(self, path)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(search_mod.IterationState, "save", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        GlobalTyr(SMALL).prune(_ctx(tmp_path, make_tiny_model("llama"), **SMALL))
    monkeypatch.setattr(search_mod.IterationState, "save", original)
    other = dict(SMALL, offspring=5)
    with pytest.raises(ResumeError, match="offspring"):
        GlobalTyr(other).prune(_ctx(tmp_path, make_tiny_model("llama"), resume=True, **other))


def test_cli_global_end_to_end_and_eval(tmp_path, tiny_model_dir, tiny_text):
    from typer.testing import CliRunner

    from llmprune.cli import app
    from llmprune.model.loading import load_model

    out = tmp_path / "out"
    args = [
        "global",
        str(tiny_model_dir),
        "-o",
        str(out),
        "--sparsity",
        "0.4",
        "--calib",
        str(tiny_text),
        "--nsamples",
        "6",
        "--seqlen",
        "32",
        "--generations",
        "2",
        "--offspring",
        "4",
        "--select-tokens",
        "32,64,128",
        "--survivors",
        "2,1",
        "--iterations",
        "2",
        "--budget-split",
        "free",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = read_json(out / "llmprune_report.json")
    assert report["achieved_sparsity"] == pytest.approx(0.4, abs=0.02)
    assert {"tyr_search_log.json", "tyr_kept_fraction.png", "llmprune_plan.json"} <= {p.name for p in out.iterdir()}
    model, adapter, _ = load_model(str(out), torch.device("cpu"), torch.float32)
    assert adapter.decoder_linear_params(model) == report["params_decoder_linear"]
    bad = CliRunner().invoke(
        app, args[:3] + [str(tmp_path / "bad"), "--select-tokens", "64,32", "--calib", str(tiny_text)]
    )
    assert bad.exit_code == 2 and "select-tokens" in bad.output


# ----- fitness: KL(dense ‖ pruned) on the dense top-k -----------------------------------------
# A stand-in model over a 3-token vocabulary: each input token id yields a fixed row of logits, and
# ``state`` picks which table (the dense model or a pruned candidate) is in place.
_LN = torch.log(torch.tensor([1.0, 2.0, 3.0, 6.0]))
_ONE, _TWO, _THREE, _SIX = _LN.tolist()
_TABLES = {
    # token 0: p = (6, 2, 1)/9, top-2 renormalised p̃ = (3/4, 1/4) on tokens (0, 1)
    # token 1: p = (2, 6, 1)/9, top-2 renormalised p̃ = (3/4, 1/4) on tokens (1, 0)
    "dense": [[_SIX, _TWO, _ONE], [_TWO, _SIX, _ONE]],
    "A": [[_TWO, _ONE, _ONE], [_ONE, _ONE, _ONE]],  # q = (1/2, 1/4, 1/4); uniform
    "B": [[_ONE, _TWO, _ONE], [_ONE, _ONE, _ONE]],  # q = (1/4, 1/2, 1/4); uniform
    "P": [[_ONE, _ONE, _ONE], [_ONE, _ONE, _ONE]],  # uniform; uniform
}
_LOG = math.log
_KL = {  # KL(p̃ ‖ q) = Σ p̃ log(p̃ / q) for token 0
    "dense": _LOG(9 / 8),  # −log of the dense top-2 mass 8/9
    "A": 0.75 * _LOG(1.5) + 0.25 * _LOG(1.0),
    "B": 0.75 * _LOG(3.0) + 0.25 * _LOG(0.5),
    "P": 0.75 * _LOG(2.25) + 0.25 * _LOG(0.75),
}


class _TableModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=3)
        self.state = "dense"

    def forward(self, tokens: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.tensor(_TABLES[self.state])[tokens])


def _evaluator(model: _TableModel, tokens: torch.Tensor) -> Evaluator:
    adapter = SimpleNamespace(layers=lambda m: [])  # no projections: candidates are swapped by hand
    return Evaluator(model, adapter, tokens, topk=2, device=torch.device("cpu"), batch_size=1)


def test_search_fitness_is_the_top_k_kl_computed_by_hand():
    model = _TableModel()
    ev = _evaluator(model, torch.tensor([[0], [1]]))
    assert ev.top_idx.tolist() == [[[0, 1]], [[1, 0]]]
    torch.testing.assert_close(ev.top_logp.exp(), torch.tensor([[[0.75, 0.25]], [[0.75, 0.25]]]))
    first, second = torch.tensor([0]), torch.tensor([1])
    for state in ("dense", "A", "B", "P"):
        model.state = state
        assert ev.kl(first) == pytest.approx(_KL[state], rel=1e-5)
    assert _KL["A"] < _KL["P"] < _KL["B"]  # 0.304 < 0.536 < 0.651
    # the second token: p̃ on (1, 0); A and B are uniform there, like P
    model.state = "A"
    assert ev.kl(second) == pytest.approx(_KL["P"], rel=1e-5)
    assert ev.kl(torch.tensor([0, 1])) == pytest.approx((_KL["A"] + _KL["P"]) / 2, rel=1e-5)  # mean over tokens
    model.state = "dense"
    assert ev.kl(second) == pytest.approx(_KL["dense"], rel=1e-5)


def test_search_keeps_the_candidate_with_the_lower_kl(monkeypatch):
    """Parent P and two offspring: A (lower KL than P) and B (higher). The generation must end on A
    with A's KL as the fitness; an objective that maximised the divergence would pick B."""
    import llmprune.pruners.tyr.search as search_mod

    model = _TableModel()
    ev = _evaluator(model, torch.tensor([[0]]))
    # two "o" modules whose levels keep 0..8 units at one parameter per unit: (1, −1) and (−1, 1)
    # are budget-preserving swaps from (0, 0)
    unit = SimpleNamespace(params=lambda kept: kept)
    space = SearchSpace([(0, "o"), (1, "o")], [list(range(9)), list(range(9))], {"o": unit})
    by_first = {4: "P", 5: "A", 3: "B"}  # units kept by module 0 → candidate
    monkeypatch.setattr(ev, "load", lambda supernet, kept: setattr(model, "state", by_first[kept[(0, "o")]]))
    children = iter([(1, -1), (-1, 1)])
    monkeypatch.setattr(search_mod, "mutate", lambda *a, **k: next(children, (1, -1)))
    gen = torch.Generator().manual_seed(0)
    state = IterationState(
        iteration=0, generation=0, parent=(0, 0), parent_fitness=None, centers={}, rng=gen.get_state()
    )
    config = SearchConfig(generations=1, offspring=2, select_tokens=(1, 1, 1), survivors=(2, 2))
    out = run_generations(space, SimpleNamespace(), ev, config, state, gen, 0.125, lambda s: None)
    assert out.log[0]["best_fitness"] == pytest.approx(_KL["P"], rel=1e-5)  # generation 0: the parent
    assert out.parent == (1, -1)
    assert out.parent_fitness == pytest.approx(_KL["A"], rel=1e-5)
    assert out.log[1]["improved"] is True
