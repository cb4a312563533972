"""Týr's supernet: for every ``o`` and ``down`` module, pruned variants at ``center + kΔ``.

Built block by block on calibration data only: capture the block's inputs, fill both modules'
``H = XᵀX`` in one pass (dense block on the current inputs), prune each variant from the dense
weights with the local pruner (``local_prune.prune_module``), write the variants to disk as
safetensors (memory-mapped when read back), then compute the next block's inputs with
**expectation error accumulation**: the block runs with the density-weighted average of its
variants' weights, weights ∝ (1 − sparsity) and summing to one (the paper's version; the public
code propagates dense activations instead).

Only ``o_proj``/``down_proj`` weights differ between variants: a removed head's (group's) query
(and k, v) rows or a removed channel's gate/up rows only feed columns of ``o``/``down`` that are
exactly zero, so the rest of the block stays dense while searching and is sliced at export.
Peak memory: one block, the calibration activations and the variants of one block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmprune.alignment import Alignment
from llmprune.arch import ArchAdapter, Geometry
from llmprune.capture import LayerwiseRunner
from llmprune.masks import attn_grid_step, attn_params_kept
from llmprune.pruners.tyr.local_prune import ROUNDS, FirstOrder, prune_module_levels, unit_rows

#: Level offsets k of a supernet (methods.md §3: center ± kΔ, k = −4..4). Positive = denser.
LEVELS: tuple[int, ...] = tuple(range(-4, 5))
KEYS: tuple[str, ...] = ("o", "down")


@dataclass(frozen=True)
class ModuleType:
    """Geometry of one prunable module type: its units, their rows of ``V`` and their cost."""

    key: str  # "o" or "down"
    units: int
    rows: torch.Tensor  # [units, rows per unit]
    granularity: int  # kept counts are multiples of this (query heads: one per KV group)
    groups: list[list[int]] | None  # units that must lose equally many (query heads per KV group)
    geom: Geometry
    attn_unit: str = "group"

    def params(self, kept: int) -> int:
        """Decoder-linear parameters of one layer's module group keeping ``kept`` units."""
        if self.key == "o":
            return attn_params_kept(self.geom, self.attn_unit, kept)
        return kept * self.geom.mlp_unit_params

    def step(self, delta: float) -> int:
        """Δ as a fraction of the module's units, at least one unit (one granule)."""
        granules = self.units // self.granularity
        return max(1, int(round(delta * granules))) * self.granularity


def module_types(geom: Geometry, attn_unit: str, align: Alignment | None = None) -> dict[str, ModuleType]:
    """The two module types; with ``align`` their granularity is the ``--align`` grid."""
    d, g = geom.head_dim, geom.group_size
    attn_granule = attn_grid_step(geom, attn_unit, align)
    mlp_granule = align.width if align is not None else 1
    if attn_unit == "group":
        o = ModuleType("o", geom.num_kv_heads, unit_rows(geom.num_kv_heads, g * d), attn_granule, None, geom, attn_unit)
    else:
        groups = [[j * g + r for r in range(g)] for j in range(geom.num_kv_heads)]
        o = ModuleType("o", geom.num_heads, unit_rows(geom.num_heads, d), attn_granule, groups, geom, attn_unit)
    down = ModuleType(
        "down", geom.intermediate_size, unit_rows(geom.intermediate_size, 1), mlp_granule, None, geom, attn_unit
    )
    return {"o": o, "down": down}


def level_values(center: int, step: int, units: int) -> list[int]:
    """Kept units at each level offset of ``LEVELS``, clipped to ``[0, units]``."""
    return [min(max(center + k * step, 0), units) for k in LEVELS]


def expectation_weights(kept: list[int], units: int) -> torch.Tensor:
    """Averaging weights of distinct variants: ∝ density (1 − sparsity), summing to one.

    A module removed entirely has weight 0; if every variant is removed the weights are all 0
    (the averaged module is the empty one).
    """
    density = torch.tensor([k / units for k in kept], dtype=torch.float64)
    total = density.sum()
    if total <= 0:
        return torch.zeros_like(density, dtype=torch.float32)
    return (density / total).float()


@dataclass
class SupernetSpec:
    """Centers (kept units per module) and step (units per level) of one coarse-to-fine iteration."""

    centers: dict[str, list[int]]  # key -> per layer
    steps: dict[str, int]
    delta: float

    def levels(self, key: str, layer: int, units: int) -> list[int]:
        return level_values(self.centers[key][layer], self.steps[key], units)

    def to_json(self) -> dict:
        return {"centers": self.centers, "steps": self.steps, "delta": self.delta}


#: Upper bound of safetensors' per-tensor header entry and per-file header/padding (bytes).
TENSOR_HEADER_BYTES, HEADER_BYTES = 96, 64


def variant_bytes(mtype: ModuleType, kept: int) -> int:
    """On-disk bytes of one variant: float32 ``[hidden, in]`` weight + int64 kept units + headers."""
    return mtype.geom.hidden_size * mtype.rows.numel() * 4 + kept * 8 + 2 * TENSOR_HEADER_BYTES


def supernet_disk_need(types: dict[str, ModuleType], first: SupernetSpec, num_layers: int, iterations: int) -> int:
    """Peak disk use of Týr's supernets: the first iteration's exactly, and while iteration ``t``
    is built iteration ``t-1``'s is still on disk, so one more at its largest (all 9 levels)."""
    need = Supernet(Path(), first, types, num_layers).disk_bytes()
    if iterations > 1:
        need += sum(len(LEVELS) * variant_bytes(types[key], types[key].units) for key in KEYS) * num_layers
        need += num_layers * HEADER_BYTES
    return need


@dataclass
class Supernet:
    """Variants on disk: ``layer{i}.safetensors`` with ``{key}.{kept}.weight`` / ``.units``."""

    folder: Path
    spec: SupernetSpec
    types: dict[str, ModuleType]
    num_layers: int
    #: Settings of the run (``training.fingerprint``): a supernet built with others is rebuilt.
    fingerprint: dict = field(default_factory=dict)
    _handles: dict[int, object] = field(default_factory=dict, repr=False)

    # ----- files ----------------------------------------------------------------------------
    def layer_file(self, i: int) -> Path:
        return self.folder / f"layer{i:03d}.safetensors"

    @property
    def marker(self) -> Path:
        return self.folder / "supernet.json"

    def _marker_json(self) -> dict:
        return {**self.spec.to_json(), "fingerprint": self.fingerprint}

    def complete(self) -> bool:
        """True when every layer was built for exactly this spec and these settings (resume reuses it)."""
        if not self.marker.is_file():
            return False
        try:
            return json.loads(self.marker.read_text()) == self._marker_json()
        except ValueError:
            return False

    def levels(self, key: str, layer: int) -> list[int]:
        return self.spec.levels(key, layer, self.types[key].units)

    def _handle(self, i: int):
        if i not in self._handles:
            self._handles[i] = safe_open(str(self.layer_file(i)), framework="pt", device="cpu")
        return self._handles[i]

    def load(self, layer: int, key: str, kept: int) -> tuple[torch.Tensor, list[int]]:
        """The variant's weight ``[out, in]`` (dense coordinates) and kept unit indices."""
        handle = self._handle(layer)
        weight = handle.get_tensor(f"{key}.{kept}.weight")
        units = handle.get_tensor(f"{key}.{kept}.units").tolist()
        return weight, units

    def close(self) -> None:
        self._handles.clear()

    def disk_bytes(self) -> int:
        """Bytes :meth:`build` writes for this spec: per layer and module type, every distinct
        level's float32 weight (dense coordinates) and int64 unit list, plus safetensors headers."""
        return (
            sum(
                variant_bytes(self.types[key], kept)
                for i in range(self.num_layers)
                for key in KEYS
                for kept in set(self.levels(key, i))
            )
            + self.num_layers * HEADER_BYTES
        )

    # ----- building -------------------------------------------------------------------------
    @torch.no_grad()
    def build(
        self,
        model: torch.nn.Module,
        adapter: ArchAdapter,
        runner: LayerwiseRunner,
        device: torch.device,
        percdamp: float = 0.01,
        progress: Callable[[int], None] | None = None,
        first_order: FirstOrder = "none",
    ) -> None:
        """Build every layer's variants (block by block) and write them to ``folder``; ``runner``
        walks the calibration samples (``PruneContext.layerwise_runner``: --offload-dir honoured)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.marker.exists():
            self.marker.unlink()
        self.close()
        for i, layer in enumerate(adapter.layers(model)):
            home = next(layer.parameters()).device
            layer.to(device)
            stats = runner.collect(i, layer, KEYS, hessian=True)
            tensors: dict[str, torch.Tensor] = {}
            averaged: dict[str, torch.Tensor] = {}
            for key in KEYS:
                mtype = self.types[key]
                lin = adapter.linear(layer, key)
                W = lin.weight.detach().float()
                H = stats[key].hessian
                assert H is not None  # collected with hessian=True
                G = H @ W.t()
                kept_values = sorted(set(self.levels(key, i)))
                weights = expectation_weights(kept_values, mtype.units)
                avg = torch.zeros_like(W)
                results = prune_module_levels(
                    W,
                    H,
                    mtype.rows,
                    kept_values,
                    rounds=ROUNDS[key],
                    percdamp=percdamp,
                    groups=mtype.groups,
                    target=G,
                    first_order=first_order,
                )
                for kept, w in zip(kept_values, weights):
                    result = results[kept]
                    tensors[f"{key}.{kept}.weight"] = result.weight.cpu().contiguous()
                    tensors[f"{key}.{kept}.units"] = torch.tensor(result.kept, dtype=torch.int64)
                    avg += w * result.weight
                averaged[key] = avg
            tmp = self.layer_file(i).with_suffix(".tmp")
            save_file(tensors, str(tmp))
            tmp.replace(self.layer_file(i))
            # Expectation error accumulation: the next block sees the averaged variants.
            dense = {key: adapter.linear(layer, key).weight.detach().clone() for key in KEYS}
            for key in KEYS:
                adapter.linear(layer, key).weight.copy_(averaged[key].to(dense[key].dtype))
            runner.advance(layer)
            for key in KEYS:
                adapter.linear(layer, key).weight.copy_(dense[key])
            layer.to(home)
            del stats, tensors, averaged
            if progress:
                progress(i)
        self.marker.write_text(json.dumps(self._marker_json()))
