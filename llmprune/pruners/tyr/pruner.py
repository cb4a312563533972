"""``global --method tyr``: Týr-the-Pruner — supernet plus evolutionary search (methods.md §3).

The driver: start from the uniform widths of the budget, then for each coarse-to-fine iteration
(Δ = delta, delta/2, …) build a supernet centred on the current distribution (re-pruned from the
dense weights, ``llmprune.pruners.tyr.supernet``), run the evolutionary search over it
(``llmprune.pruners.tyr.search``), and centre the next iteration on the result. The final distribution is
materialised from the last supernet: kept heads/KV heads/channels per layer and the refit
``o_proj``/``down_proj`` weights (dense coordinates) as ``plan.weights``.

Checkpoints (``ctx.work_dir``): ``search_state.pt`` after every generation (iteration, generation,
parent, its fitness, RNG state, log), the dense top-k logits, and the current iteration's
supernet (the previous one is deleted once the next iteration's state is saved: one supernet on
disk at a time; under torchrun one per node, ``distributed.node_shared_path``). With
``--resume`` the run continues from the last finished generation and ends exactly where an
uninterrupted run with the same seed would.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, cast

import torch

from llmprune.core.masks import uniform_widths
from llmprune.core.memory_model import (
    Request,
    Resources,
    activation_bytes_per_token,
    hessian_bytes,
    layerwise_resources,
    weight_terms,
)
from llmprune.errors import OutputExistsError, ResumeError, UsageError
from llmprune.model.alignment import Alignment
from llmprune.model.arch import Geometry
from llmprune.model.plan import LayerPlan, PrunePlan, units_to_heads
from llmprune.pruners.base import PruneContext, Pruner, PruneResult
from llmprune.pruners.tyr.final_prune import prune_sequentially
from llmprune.pruners.tyr.local_prune import LocalSettings
from llmprune.pruners.tyr.search import Evaluator, IterationState, SearchConfig, SearchSpace, run_generations
from llmprune.pruners.tyr.supernet import (
    KEYS,
    ModuleType,
    Supernet,
    SupernetSpec,
    module_types,
    supernet_disk_need,
)
from llmprune.pruners.tyr_options import TyrMethod, TyrOptions, _int_list
from llmprune.runtime import distributed
from llmprune.train.loop import Event, check_fingerprint, fingerprint, notify
from llmprune.train.trace import pyplot, save_figure

STATE_FILE = "search_state.pt"
LOG_FILE = "tyr_search_log.json"
PLOT_FILE = "tyr_kept_fraction.png"


def local_settings(o: TyrOptions) -> LocalSettings:
    """The local pruner's options, as the supernet and the final prune take them."""
    return LocalSettings(o.percdamp, o.first_order, o.mlp_rounds)


class GlobalTyr(Pruner, TyrMethod):
    options: TyrOptions

    @classmethod
    def resources(cls, request: Request) -> Resources:
        """The layer-wise supernet build (one layer and its Hessians on the device) beside the
        search's whole-model forwards (the weights, streamed or not, one batch of activations and
        logits, the dense o/down weights to put variants back); the work folder's largest supernet
        and top-k cache (:func:`disk_need`, the pre-check's own numbers)."""
        q, o = request, TyrOptions.model_validate(request.options)
        shape, P = q.shape, q.shape.params
        built = layerwise_resources(q, hessians=True)  # host, offloaded inputs and flops of the build
        res = Resources(host=built.host, disk=built.disk, flops=built.flops)
        res.terms.update(weight_terms(P * q.b, shape.layers, q.layer_bytes, q.stream))
        res.terms["search forward"] = (
            q.batch * q.seqlen * (activation_bytes_per_token(shape, q.b) + 2 * shape.vocab * 4)
        )
        dense_copies = shape.layers * (shape.heads * shape.head_dim + shape.intermediate) * shape.hidden * q.b
        if q.stream:  # the layers wait on the host in the run dtype (the saved copy is counted above)
            res.host += max(0, P * q.b - P * q.saved) + dense_copies
        else:
            res.terms["dense o/down copies"] = dense_copies
        hessians, inverse = hessian_bytes(shape)
        res.terms["one layer (float32)"] = (shape.layer_linear + 2 * shape.hidden) * 4
        res.terms["hessians"] = hessians
        res.terms["Hessian inverse (working copies)"] = inverse
        res.disk += sum(cls.work_folder_bytes(q, o))
        candidates = o.iterations * o.generations * o.offspring
        res.flops += candidates * 2 * P * q.calib_tokens / 4
        if o.final_prune == "sequential":  # o's and down's statistics, advance
            res.flops += 3 * 2 * P * q.calib_tokens
        res.transfers = candidates * math.ceil(q.nsamples / 4 / max(q.batch, 1)) * q.streamed_bytes
        return res

    @staticmethod
    def work_folder_bytes(q: Request, o: TyrOptions) -> tuple[int, int]:
        """Peak work-folder disk, (largest supernet, dense top-k cache), at the uniform start
        widths, the supernet compact in the run dtype (2-byte dtypes take the same space)."""
        shape = q.shape
        geom = Geometry(shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate, shape.layers)
        types, k_attn, k_mlp = start_widths(q.settings, o, geom)
        dtype = torch.float32 if q.b == 4 else torch.bfloat16
        rows = q.nsamples if o.search_nsamples is None else min(o.search_nsamples, q.nsamples)
        return disk_need(o, types, k_attn, k_mlp, dtype, rows * q.seqlen, shape.vocab)

    def search_config(self) -> SearchConfig:
        o = self.options
        return SearchConfig(
            generations=o.generations,
            offspring=o.offspring,
            select_tokens=cast("tuple[int, int, int]", _int_list(o.select_tokens, 3, "--select-tokens")),
            survivors=cast("tuple[int, int]", _int_list(o.survivors, 2, "--survivors")),
            budget_split=o.budget_split,
        )

    def check_disk(self, ctx: PruneContext, types, k_attn: int, k_mlp: int, dtype: torch.dtype) -> int:
        """Refuse to start when the work folder's disk cannot hold the largest supernet and the
        dense top-k cache (``disk_need``); returns the estimated bytes still to be written. Under
        torchrun each node's local rank 0 checks its own disk (it writes the node's supernet;
        rank 0 also the cache); the others write nothing large."""
        s, o = ctx.settings, self.options
        assert ctx.calib is not None  # prune() checked it
        work = Path(ctx.work_dir)
        rows = ctx.calib.shape[0] if o.search_nsamples is None else min(o.search_nsamples, ctx.calib.shape[0])
        vocab = cast(Any, ctx.model).config.vocab_size  # a Hugging Face model's config
        supernet, cache = disk_need(o, types, k_attn, k_mlp, dtype, rows * ctx.calib.shape[1], vocab)
        need = (supernet if distributed.is_local_main() else 0) + (cache if distributed.is_main() else 0)
        existing = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) if work.exists() else 0
        need = max(need - existing, 0)  # --resume: what is already on disk counts
        work.mkdir(parents=True, exist_ok=True)
        cleanup = None if s.resume else work
        refuse_if_short(need, work, "(free some space or choose an output -o on a larger disk)", cleanup)
        return need

    # ----------------------------------------------------------------------------------------
    def prune(self, ctx: PruneContext) -> PruneResult:
        s, o = ctx.settings, self.options
        if ctx.calib is None:
            raise UsageError("global --method tyr needs calibration text (--calib)")
        model, adapter = ctx.model, ctx.adapter
        geom = adapter.geometry(model)
        types, k_attn, k_mlp = start_widths(s, o, geom)
        n_layers = geom.num_layers
        config = self.search_config()
        work = Path(ctx.work_dir)
        state_path = work / STATE_FILE
        dtype = adapter.linear(adapter.layers(model)[0], "o").weight.dtype  # the supernet's storage dtype
        disk_need = self.check_disk(ctx, types, k_attn, k_mlp, dtype)
        root = distributed.node_shared_path(work / "supernet")  # one supernet per node
        fp = fingerprint(s, ctx.calib, o)  # carried by the search state, the top-k cache and the supernets
        gen = torch.Generator().manual_seed(s.seed)
        state: IterationState | None = None

        def load_state() -> IterationState | None:
            if not (s.resume and state_path.is_file()):
                return None
            try:
                return IterationState.load(state_path)
            except Exception as err:  # a truncated checkpoint is not resumable
                raise ResumeError(f"--resume: cannot read {state_path}: {err}") from err

        def save_state(st: IterationState) -> None:  # only rank 0 writes checkpoints
            if distributed.is_main():
                st.save(state_path)

        state = distributed.on_main(load_state)  # rank 0's checkpoint, on every rank
        if state is not None:
            check_fingerprint(state.fingerprint, fp, STATE_FILE)
            gen.set_state(state.rng)
            ctx.progress.log(f"resuming global tyr at iteration {state.iteration + 1}, generation {state.generation}")
        pool = ctx.calib if o.search_nsamples is None else ctx.calib[: o.search_nsamples]
        t0 = time.perf_counter()
        evaluator = Evaluator(
            model,
            adapter,
            pool,
            o.topk_logits,
            ctx.device,
            s.batch_size,
            cache=work / "dense_topk.pt",
            fingerprint=fp,
            resume=s.resume,
        )
        dense_topk_seconds = time.perf_counter() - t0
        centers = {"o": [k_attn] * n_layers, "down": [k_mlp] * n_layers}
        supernet = None
        it = state.iteration if state is not None else 0
        while it < o.iterations:
            delta = o.delta / 2**it
            if state is None or state.iteration != it:
                prev = state
                state = IterationState(
                    iteration=it,
                    generation=0,
                    parent=(0,) * (2 * n_layers),
                    parent_fitness=None,
                    centers=centers,
                    rng=gen.get_state(),
                    log=prev.log if prev else [],
                    supernet_seconds=prev.supernet_seconds if prev else 0.0,
                    search_seconds=prev.search_seconds if prev else 0.0,
                    fingerprint=fp,
                )
                save_state(state)
            # The saved state holds this iteration's centers: earlier supernets are never read again.
            distributed.barrier()
            if distributed.is_local_main():
                for old in root.glob("iter*"):
                    if old.name != f"iter{it}":
                        shutil.rmtree(old, ignore_errors=True)
            spec = SupernetSpec(centers=state.centers, steps={k: types[k].step(delta) for k in KEYS}, delta=delta)
            supernet = Supernet(root / f"iter{it}", spec, types, n_layers, fingerprint=fp, dtype=dtype)
            if distributed.any_rank(not supernet.complete()):  # every rank builds (collectives) or none
                if it > 0:  # its centers are known now: its exact size
                    need = supernet.disk_bytes() if distributed.is_local_main() else 0
                    refuse_if_short(need, root, "(free some space, then rerun with --resume)")
                evaluator.restore_dense()
                t1 = time.perf_counter()
                task = ctx.progress.task(f"supernet {it + 1}/{o.iterations} Δ={delta:.4g}", total=n_layers)
                supernet.build(model, adapter, ctx.layerwise_runner(), ctx.device, local_settings(o), task)
                state.supernet_seconds += time.perf_counter() - t1
                save_state(state)
            space = SearchSpace.from_supernet(supernet)
            task = ctx.progress.task(f"search {it + 1}/{o.iterations} Δ={delta:.4g}", total=config.generations)
            task.advance(state.generation)

            def on_generation(record, task=task) -> None:
                task.advance()
                task.info(best_kl=record.best_fitness)
                notify(Event(self.method, "step", record.generation))

            state = run_generations(
                space,
                supernet,
                evaluator,
                config,
                state,
                gen,
                delta,
                checkpoint=save_state,
                on_generation=on_generation,
            )
            kept = space.kept_map(state.parent)
            centers = {key: [kept[(i, key)] for i in range(n_layers)] for key in KEYS}
            it += 1

        assert supernet is not None and state is not None
        evaluator.restore_dense()
        plan = self.materialize(ctx, supernet, space.kept_map(state.parent), geom, types)
        evaluator.restore_dense()
        supernet.close()
        report, files = self.outputs(ctx, plan, state, geom, k_attn, k_mlp, dense_topk_seconds)
        return PruneResult(plan, report={"supernet_disk_estimate_bytes": disk_need, **report}, files=files)

    # ----------------------------------------------------------------------------------------
    def materialize(
        self,
        ctx: PruneContext,
        supernet: Supernet,
        kept: dict[tuple[int, str], int],
        geom: Geometry,
        types: dict[str, ModuleType],
    ) -> PrunePlan:
        """Plan with each layer's kept units and the refit o/down weights (dense coordinates): the
        supernet's variants, or (``--final-prune sequential``) pruned again on the real inputs
        (the model must be dense on entry; its o/down weights are not afterwards)."""
        s, o = ctx.settings, self.options
        plan = PrunePlan.dense_structured(geom, self.strategy, self.method, s.attn_unit)
        if o.final_prune == "sequential":
            task = ctx.progress.task("final prune at the searched widths", total=geom.num_layers)
            final = prune_sequentially(ctx.adapter, ctx.layerwise_runner(), kept, types, local_settings(o), task)
            variant = {k: (r.weight, r.kept) for k, r in final.items()}
        else:
            variant = {(i, key): supernet.load_dense(i, key, kept[(i, key)]) for (i, key) in kept}
        for i in range(geom.num_layers):
            w_o, units_o = variant[(i, "o")]
            w_d, units_d = variant[(i, "down")]
            heads, kv_heads = units_to_heads(units_o, geom, s.attn_unit)
            plan.layers[i] = LayerPlan(index=i, heads=heads, kv_heads=kv_heads, channels=sorted(units_d))
            if heads:
                plan.weights[ctx.adapter.linear_name(i, "o")] = w_o
            if units_d:
                plan.weights[ctx.adapter.linear_name(i, "down")] = w_d
        return plan

    def outputs(
        self,
        ctx: PruneContext,
        plan: PrunePlan,
        state: IterationState,
        geom,
        k_attn: int,
        k_mlp: int,
        dense_topk_seconds: float,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The report fields and the files (search log; the kept-fraction plot on rank 0)."""
        attn_total = geom.num_heads
        attn = [len(lp.heads) / attn_total for lp in plan.layers]
        mlp = [len(lp.channels) / geom.intermediate_size for lp in plan.layers]
        start = next((r["best_fitness"] for r in state.log if r["generation"] == 0 and r["iteration"] == 0), None)
        log = {
            "options": self.options.model_dump(mode="json"),
            "uniform_start": {"attn_units": k_attn, "mlp_channels": k_mlp, "fitness": start},
            "final_fitness": state.parent_fitness,
            "kept_fraction": {"attention": attn, "mlp": mlp},
            "generations": state.log,
        }
        files: dict[str, Any] = {LOG_FILE: log}
        if distributed.is_main():  # only rank 0 exports: no plot elsewhere
            plot = plot_kept_fraction(
                Path(ctx.work_dir) / PLOT_FILE,
                attn,
                mlp,
                k_attn / geom.attn_unit_count(plan.attn_unit),
                k_mlp / geom.intermediate_size,
                ctx.settings.sparsity,
                title=f"Týr global pruning, {ctx.settings.sparsity:.0%} sparsity, "
                f"{self.options.budget_split} budget split: kept fraction per layer",
            )
            if plot is not None:
                files[PLOT_FILE] = plot
        report = {
            "time_supernet_s": state.supernet_seconds,
            "time_search_s": state.search_seconds,
            "time_dense_topk_s": dense_topk_seconds,
            "search_start_fitness": start,
            "search_final_fitness": state.parent_fitness,
            "kept_fraction_attention": attn,
            "kept_fraction_mlp": mlp,
        }
        return report, files


def start_widths(settings: Any, options: TyrOptions, geom: Geometry) -> tuple[dict[str, ModuleType], int, int]:
    """The module types (on the search space's grid) and the uniform widths the search starts from."""
    align = Alignment.of(settings) if options.search_space == "full" else Alignment.of(settings).for_deci()
    k_attn, k_mlp = uniform_widths(geom, settings.sparsity, settings.attn_unit, align)
    return module_types(geom, settings.attn_unit, align), k_attn, k_mlp


def disk_need(
    options: TyrOptions,
    types: dict[str, ModuleType],
    k_attn: int,
    k_mlp: int,
    dtype: torch.dtype,
    search_tokens: int,
    vocab: int,
) -> tuple[int, int]:
    """Bytes on disk at the peak: (the largest supernet, the dense top-k cache of the search's
    ``search_tokens``: int32 index + float32 log-probability per kept logit). Used by the
    pre-check and by the memory model (:meth:`GlobalTyr.resources`)."""
    n_layers = types["o"].geom.num_layers
    first = SupernetSpec(
        centers={"o": [k_attn] * n_layers, "down": [k_mlp] * n_layers},
        steps={k: types[k].step(options.delta) for k in KEYS},
        delta=options.delta,
    )
    cache = search_tokens * min(options.topk_logits, vocab) * 8
    return supernet_disk_need(types, first, n_layers, options.iterations, dtype), cache


def refuse_if_short(need: int, folder: Path, hint: str, cleanup: Path | None = None) -> None:
    """Stop every rank when any rank's ``folder`` has less free disk than its ``need`` (bytes);
    the short rank names its numbers (and removes ``cleanup``, a fresh run's work folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if not distributed.any_rank(need > free):
        return
    if need > free:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise OutputExistsError(
            f"not enough disk space for the Týr supernet: need {need / 1e9:.2f} GB, free {free / 1e9:.2f} GB "
            f"in {folder} {hint}"
        )
    raise OutputExistsError(f"not enough disk space for the Týr supernet on another rank's disk {hint}")


def plot_kept_fraction(
    path: Path,
    attn: list[float],
    mlp: list[float],
    uni_attn: float,
    uni_mlp: float,
    sparsity: float,
    title: str | None = None,
) -> Path | None:
    """Bar chart of per-layer kept fraction (attention, MLP) against the uniform widths."""
    plt = pyplot()
    if plt is None:
        return None
    n = len(attn)
    x = torch.arange(n).numpy()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * n + 2), 3.6))
    ax.bar(x - 0.2, attn, width=0.4, label="attention (query heads kept)")
    ax.bar(x + 0.2, mlp, width=0.4, label="MLP (channels kept)")
    ax.axhline(uni_attn, color="C0", ls="--", lw=1, label="uniform attention")
    ax.axhline(uni_mlp, color="C1", ls=":", lw=1, label="uniform MLP")
    ax.set_xlabel("layer")
    ax.set_ylabel("kept fraction")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(x)
    ax.set_title(title or f"Týr global pruning, {sparsity:.0%} sparsity: kept fraction per layer")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return save_figure(fig, path, dpi=110)
