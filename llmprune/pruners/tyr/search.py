"""Týr's evolutionary search over the supernet, coarse to fine.

A candidate is one level offset ``k ∈ [−4, 4]`` per module (``o`` and ``down`` of every layer).
Offspring come from 1–4 **swaps**: one module one level denser and another module of the same type
one level sparser, accepted only if the parameter count is exactly unchanged (``--budget-split
free`` adds cross-type swaps: ``a`` attention moves against ``b`` MLP moves with exactly equal
parameters). Fitness is KL(dense ‖ pruned) on the dense model's cached top-k logits over
calibration tokens. Multi-fidelity selection per generation: all offspring on a small token batch
→ the best ``survivors[0]`` on a larger one → the best ``survivors[1]`` plus the parent on the
largest (fixed) batch → the best becomes the parent (elitist, so the logged fitness never rises).

Coarse to fine: iterations with Δ = 12.5%, 6.25%, … of each module's units, each centred on the
previous result and re-pruned from the dense weights (a new supernet).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from llmprune.model.arch import ArchAdapter
from llmprune.pruners.tyr.supernet import KEYS, LEVELS, ModuleType, Supernet
from llmprune.runtime import atomic, distributed
from llmprune.train.loop import load_artefact, save_artefact

LOW, HIGH = LEVELS[0], LEVELS[-1]


# ----- the search space -------------------------------------------------------------------------
@dataclass
class SearchSpace:
    """Modules (layer, key), their kept units per level and the parameter cost of a level."""

    modules: list[tuple[int, str]]
    levels: list[list[int]]  # per module: kept units at each k in LEVELS
    types: dict[str, ModuleType]

    @classmethod
    def from_supernet(cls, supernet: Supernet) -> SearchSpace:
        modules = [(i, key) for i in range(supernet.num_layers) for key in KEYS]
        return cls(modules, [supernet.levels(key, i) for i, key in modules], supernet.types)

    def kept(self, m: int, k: int) -> int:
        return self.levels[m][k - LOW]

    def params(self, m: int, k: int) -> int:
        return self.types[self.modules[m][1]].params(self.kept(m, k))

    def total_params(self, state: tuple[int, ...]) -> int:
        return sum(self.params(m, k) for m, k in enumerate(state))

    def kept_map(self, state: tuple[int, ...]) -> dict[tuple[int, str], int]:
        return {mod: self.kept(m, k) for m, (mod, k) in enumerate(zip(self.modules, state))}

    def type_params(self, state: tuple[int, ...], key: str) -> int:
        return sum(self.params(m, k) for m, k in enumerate(state) if self.modules[m][1] == key)

    # ----- moves --------------------------------------------------------------------------
    def move_delta(self, state: list[int], m: int, direction: int) -> int | None:
        """Parameter change of moving module ``m`` one level (+1 denser, −1 sparser), or None."""
        k = state[m] + direction
        if k < LOW or k > HIGH:
            return None
        delta = self.params(m, k) - self.params(m, state[m])
        return delta if delta != 0 else None

    def _pick(
        self, state: list[int], key: str, direction: int, gen: torch.Generator, want: int | None = None
    ) -> int | None:
        options = [m for m, (_, t) in enumerate(self.modules) if t == key]
        options = [
            m
            for m in options
            if (d := self.move_delta(state, m, direction)) is not None and (want is None or d == want)
        ]
        if not options:
            return None
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    def swap_within(self, state: list[int], key: str, gen: torch.Generator) -> bool:
        """One module of type ``key`` denser and another sparser, with exactly equal parameters."""
        a = self._pick(state, key, +1, gen)
        if a is None:
            return False
        gain = self.move_delta(state, a, +1)
        assert gain is not None  # _pick only returns modules that can move
        saved = list(state)
        state[a] += 1
        b = self._pick(state, key, -1, gen, want=-gain)
        if b is None or b == a:
            state[:] = saved
            return False
        state[b] -= 1
        return True

    def swap_across(self, state: list[int], ratio: tuple[int, int], gen: torch.Generator) -> bool:
        """``ratio[0]`` attention moves one way against ``ratio[1]`` MLP moves the other way."""
        n_attn, n_mlp = ratio
        direction = 1 if float(torch.rand((), generator=gen)) < 0.5 else -1
        saved = list(state)
        total = 0
        for key, n, d in (("o", n_attn, direction), ("down", n_mlp, -direction)):
            for _ in range(n):
                m = self._pick(state, key, d, gen)
                if m is None:
                    state[:] = saved
                    return False
                total += cast(int, self.move_delta(state, m, d))  # _pick only returns modules that can move
                state[m] += d
        if total != 0:
            state[:] = saved
            return False
        return True


def cross_ratio(
    space: SearchSpace, steps: dict[str, int], max_attn: int = 4, max_mlp: int = 16
) -> tuple[int, int] | None:
    """Smallest numbers of attention and MLP level moves with equal nominal parameters."""
    o, down = space.types["o"], space.types["down"]
    if o.attn_unit != "group":
        per_attn = 2 * o.geom.hidden_size * o.geom.head_dim * steps["o"]  # q rows + o columns
    else:
        per_attn = steps["o"] * o.geom.attn_unit_params("group")
    per_mlp = steps["down"] * down.geom.mlp_unit_params
    frac = Fraction(per_attn, per_mlp)
    n_attn, n_mlp = frac.denominator, frac.numerator
    if n_attn > max_attn or n_mlp > max_mlp:
        return None
    return n_attn, n_mlp


def mutate(
    space: SearchSpace,
    parent: tuple[int, ...],
    gen: torch.Generator,
    free_ratio: tuple[int, int] | None,
    max_swaps: int = 4,
    tries: int = 50,
) -> tuple[int, ...]:
    """An offspring: 1–``max_swaps`` budget-preserving swaps applied to ``parent``."""
    state = list(parent)
    n_swaps = int(torch.randint(1, max_swaps + 1, (1,), generator=gen))
    done = 0
    for _ in range(tries):
        if done == n_swaps:
            break
        if free_ratio is not None and float(torch.rand((), generator=gen)) < 0.25:
            ok = space.swap_across(state, free_ratio, gen)
        else:
            key = KEYS[int(torch.randint(len(KEYS), (1,), generator=gen))]
            ok = space.swap_within(state, key, gen)
        done += int(ok)
    return tuple(state)


# ----- fitness --------------------------------------------------------------------------------
class Evaluator:
    """Loads candidates into the (dense) model and measures KL(dense ‖ pruned) on top-k logits."""

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchAdapter,
        tokens: torch.Tensor,
        topk: int,
        device: torch.device,
        batch_size: int,
        cache: Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.model, self.adapter, self.tokens = model, adapter, tokens
        self.device, self.batch_size = device, batch_size
        self.layers = adapter.layers(model)
        self.dense = {
            (i, key): adapter.linear(layer, key).weight.detach().clone()
            for i, layer in enumerate(self.layers)
            for key in KEYS
        }
        self.loaded: dict[tuple[int, str], Any] = {}
        self.topk = min(topk, cast(Any, model).config.vocab_size)  # a Hugging Face model's config
        # With --resume, rank 0's cache (refused when made with other settings) on every rank;
        # otherwise every rank computes its shard of rows and rank 0 writes the cache (atomically).
        fp = fingerprint or {}
        data = load_artefact(cache, fp, resume) if cache is not None else None
        if data is not None:
            self.top_idx, self.top_logp = data["idx"], data["logp"]
        else:
            self.top_idx, self.top_logp = self._dense_topk()
            if cache is not None:
                save_artefact(cache, {"idx": self.top_idx, "logp": self.top_logp}, fp)

    @torch.no_grad()
    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device), use_cache=False).logits.float()

    @torch.no_grad()
    def _dense_topk(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, seqlen = self.tokens.shape
        lo, hi = distributed.shard_range(n)  # all rows without a process group
        idx = [torch.zeros(0, seqlen, self.topk, dtype=torch.int32)]
        logp = [torch.zeros(0, seqlen, self.topk, dtype=torch.float32)]
        for start in range(lo, hi, self.batch_size):
            logits = self._logits(self.tokens[start : min(start + self.batch_size, hi)])
            values, index = torch.topk(logits, self.topk, dim=-1)
            idx.append(index.to(torch.int32).cpu())
            logp.append(torch.log_softmax(values, dim=-1).cpu())  # renormalised over the top-k
        return distributed.gather_rows(torch.cat(idx), n, lo), distributed.gather_rows(torch.cat(logp), n, lo)

    @torch.no_grad()
    def load(self, supernet: Supernet, kept: dict[tuple[int, str], int]) -> None:
        """Put a candidate's variants in place; only modules whose level changed are reloaded."""
        for (i, key), k in kept.items():
            tag = (id(supernet), k)
            if self.loaded.get((i, key)) == tag:
                continue
            compact, units = supernet.load(i, key, k)
            target = self.adapter.linear(self.layers[i], key).weight
            target.zero_()  # the removed columns (not stored)
            if units:
                columns = supernet.columns(key, units).to(target.device)
                target[:, columns] = compact.to(dtype=target.dtype, device=target.device)
            self.loaded[(i, key)] = tag

    @torch.no_grad()
    def restore_dense(self) -> None:
        for (i, key), w in self.dense.items():
            self.adapter.linear(self.layers[i], key).weight.copy_(w)
        self.loaded.clear()

    @torch.no_grad()
    def kl(self, rows: torch.Tensor) -> float:
        """Mean over tokens of KL(p̃ ‖ q) on the dense top-k (p̃ renormalised over the top-k,
        q the pruned model's full softmax), float32.

        Under torchrun each rank scores its shard of ``rows``; the sums and token counts are
        all-reduced, so every rank returns the same token-weighted mean over all rows."""
        count: float
        if distributed.is_enabled():
            lo, hi = distributed.shard_range(rows.numel())
            total, count = self._kl_sums(rows[lo:hi])
            total, count = distributed.all_reduce_floats([total, count])
            return total / count
        total, count = self._kl_sums(rows)
        return total / count

    @torch.no_grad()
    def _kl_sums(self, rows: torch.Tensor) -> tuple[float, int]:
        total, count = 0.0, 0
        for start in range(0, rows.numel(), self.batch_size):
            sel = rows[start : start + self.batch_size]
            logq = torch.log_softmax(self._logits(self.tokens[sel]), dim=-1)
            idx = self.top_idx[sel].to(logq.device).long()
            logp = self.top_logp[sel].to(logq.device)
            q_top = torch.gather(logq, -1, idx)
            total += float((logp.exp() * (logp - q_top)).sum())
            count += logp.shape[0] * logp.shape[1]
        return total, count


# ----- one iteration of generations ------------------------------------------------------------
@dataclass
class SearchConfig:
    generations: int = 8
    offspring: int = 16
    select_tokens: tuple[int, int, int] = (1024, 2048, 4096)
    survivors: tuple[int, int] = (4, 2)
    budget_split: str = "fixed"


@dataclass
class GenerationRecord:
    iteration: int
    generation: int
    delta: float
    best_fitness: float
    improved: bool
    params: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rows_for(tokens: int, seqlen: int, available: int) -> int:
    return max(1, min(available, math.ceil(tokens / seqlen)))


@dataclass
class IterationState:
    """What a checkpoint holds: where the search is and everything needed to continue it."""

    iteration: int
    generation: int  # generations finished in this iteration
    parent: tuple[int, ...]
    parent_fitness: float | None
    centers: dict[str, list[int]]
    rng: torch.Tensor
    log: list[dict[str, Any]] = field(default_factory=list)
    supernet_seconds: float = 0.0
    search_seconds: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict)  # settings a resume must match

    def save(self, path: Path) -> None:
        atomic.save_torch({**self.__dict__, "parent": list(self.parent)}, path)

    @classmethod
    def load(cls, path: Path) -> IterationState:
        data = torch.load(path, weights_only=False)
        data["parent"] = tuple(data["parent"])
        return cls(**data)


def run_generations(
    space: SearchSpace,
    supernet: Supernet,
    evaluator: Evaluator,
    config: SearchConfig,
    state: IterationState,
    gen: torch.Generator,
    delta: float,
    checkpoint: Callable[[IterationState], None],
    on_generation: Callable[[GenerationRecord], None] | None = None,
) -> IterationState:
    """Run the remaining generations of one iteration, checkpointing after each."""
    n_rows, seqlen = evaluator.tokens.shape
    r1, r2, r3 = (rows_for(t, seqlen, n_rows) for t in config.select_tokens)
    large = torch.arange(r3)
    free = cross_ratio(space, supernet.spec.steps) if config.budget_split == "free" else None

    def fitness(candidate: tuple[int, ...], rows: torch.Tensor) -> float:
        evaluator.load(supernet, space.kept_map(candidate))
        return evaluator.kl(rows)

    budget = space.total_params(state.parent)
    if state.parent_fitness is None:  # the iteration's starting point (generation 0)
        t0 = time.perf_counter()
        state.parent_fitness = fitness(state.parent, large)
        record = GenerationRecord(
            state.iteration, 0, delta, state.parent_fitness, False, budget, time.perf_counter() - t0
        )
        state.log.append(record.to_json())
        state.search_seconds += record.seconds
        checkpoint(state)
    while state.generation < config.generations:
        t0 = time.perf_counter()
        parent = state.parent
        pool: list[tuple[int, ...]] = []
        seen = {parent}
        for _ in range(config.offspring * 10):
            if len(pool) == config.offspring:
                break
            child = mutate(space, parent, gen, free)
            if child not in seen:
                seen.add(child)
                pool.append(child)
        improved = False
        if pool:
            small = torch.randperm(n_rows, generator=gen)[:r1]
            medium = torch.randperm(n_rows, generator=gen)[:r2]
            scored = sorted(((fitness(c, small), n, c) for n, c in enumerate(pool)))
            stage2 = [c for _, _, c in scored[: config.survivors[0]]]
            scored = sorted(((fitness(c, medium), n, c) for n, c in enumerate(stage2)))
            finalists = [c for _, _, c in scored[: config.survivors[1]]]
            best, best_fit = parent, state.parent_fitness
            for c in finalists:
                f = fitness(c, large)
                if f < best_fit:
                    best, best_fit = c, f
            improved = best != parent
            state.parent, state.parent_fitness = best, best_fit
        if space.total_params(state.parent) != budget:  # every move is exact; never happens
            raise RuntimeError("search lost the parameter budget")
        state.generation += 1
        record = GenerationRecord(
            state.iteration,
            state.generation,
            delta,
            state.parent_fitness,
            improved,
            space.total_params(state.parent),
            time.perf_counter() - t0,
        )
        state.log.append(record.to_json())
        state.search_seconds += record.seconds
        state.rng = gen.get_state()
        checkpoint(state)
        if on_generation:
            on_generation(record)
    return state
