"""Týr's optional final pass (``--final-prune sequential``): the searched widths pruned again on real inputs.

The supernet's variants are pruned on *expected* inputs (each block sees the density-weighted
average of the earlier blocks' variants: expectation error accumulation) because the widths are
not known while it is built. Once the search has fixed them, the inputs every block will see in
the output model are known: the outputs of the blocks before it at their final widths. This pass
walks the blocks as SparseGPT does and runs the same local pruner (``local_prune.prune_module``)
at each searched width from the dense weights on those inputs: ``o`` first, then ``down`` on the
inputs the pruned ``o`` gives. Same widths, same parameter count; only which units are kept and
the refit of ``o``/``down`` change.

Tried and not taken (select split, docs/global.md): refitting against the dense model's output on
the same tokens (``G = X̃ᵀX·V_dense``, a second activation stream) scored worse in an exploratory run than the local
pruner's own target on the new inputs (``G = X̃ᵀX̃·V_dense``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmprune.data.capture import LayerwiseRunner
from llmprune.model.arch import ArchAdapter
from llmprune.pruners.tyr.local_prune import LocalResult, LocalSettings, prune_module
from llmprune.pruners.tyr.supernet import KEYS, ModuleType


@torch.no_grad()
def prune_sequentially(
    adapter: ArchAdapter,
    runner: LayerwiseRunner,
    kept: dict[tuple[int, str], int],
    types: dict[str, ModuleType],
    local: LocalSettings,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[int, str], LocalResult]:
    """Every layer's ``o`` and ``down`` pruned to ``kept[(layer, key)]`` units on the inputs of
    the already pruned layers before it. The model's ``o``/``down`` weights hold the pruned ones
    afterwards (zeros in the removed columns): the caller puts the dense ones back
    (``search.Evaluator.restore_dense``, which keeps them anyway)."""
    results: dict[tuple[int, str], LocalResult] = {}

    def process(i: int, layer: torch.nn.Module) -> None:
        for key in KEYS:  # down's inputs come through the pruned o
            linear = adapter.linear(layer, key)
            hessian = runner.collect(i, layer, [key], hessian=True)[key].hessian
            assert hessian is not None  # collected with hessian=True
            mtype = types[key]
            result = prune_module(
                linear.weight,
                hessian,
                mtype.rows,
                kept[(i, key)],
                rounds=local.rounds(key),
                percdamp=local.percdamp,
                groups=mtype.groups,
                first_order=local.first_order,
            )
            linear.weight.copy_(result.weight.to(linear.weight.dtype))
            # kept like a supernet variant: the model's dtype, in host memory
            result.compact = result.compact.to("cpu", linear.weight.dtype)
            results[(i, key)] = result

    runner.run(process, progress=progress)  # each layer advances the inputs pruned
    return results
