"""Týr's supernet: for every ``o`` and ``down`` module, pruned variants at ``center + kΔ``.

Built block by block on calibration data only: capture the block's inputs, fill both modules'
``H = XᵀX`` in one pass (dense block on the current inputs), prune each variant from the dense
weights with the local pruner (``local_prune.prune_module``), write the variants to disk as
safetensors (memory-mapped when read back), then compute the next block's inputs with
**expectation error accumulation**: the block runs with the density-weighted average of its
variants' weights, weights ∝ (1 − sparsity) and summing to one (the paper's version; the public
code propagates dense activations instead), averaged from the stored variants.

A variant is stored compact: the kept units' input columns only (the removed ones are exact
zeros) in the model's dtype (the refit is computed in float32), with the kept unit indices; the
search, the averaging and the export scatter it back to dense coordinates one module at a time.
Under torchrun one copy per node: local rank 0 writes, the node's other ranks read its files.

Only ``o_proj``/``down_proj`` weights differ between variants: a removed head's (group's) query
(and k, v) rows or a removed channel's gate/up rows only feed columns of ``o``/``down`` that are
exactly zero, so the rest of the block stays dense while searching and is sliced at export.
Peak memory: one block, the calibration activations and the variants of one block.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmprune.core.masks import attn_grid_step, attn_params_kept
from llmprune.data.capture import LayerwiseRunner
from llmprune.model.alignment import Alignment
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.pruners.tyr.local_prune import LocalSettings, prune_module_levels, scatter_columns, unit_rows
from llmprune.runtime import distributed

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


#: safetensors' dtype names (the on-disk layout is computed exactly from them, ``file_bytes``).
DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


def file_bytes(tensors: list[tuple[str, str, list[int], int]]) -> int:
    """Exact size of the safetensors file holding ``(name, dtype name, shape, bytes per element)``.

    Mirrors safetensors' layout: an 8-byte length, a compact JSON header padded with spaces to a
    multiple of 8, then the data; tensors ordered by dtype (``I64`` before every float dtype) and
    then by name, which fixes the offsets written in the header (``test_reliability.py::``
    ``test_supernet_bytes_on_disk_equal_the_formula`` checks this against real files).
    """
    header: dict[str, dict] = {}
    offset = 0
    for name, dtype, shape, size in sorted(tensors, key=lambda t: (t[1] != "I64", t[0])):
        end = offset + math.prod(shape) * size
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        offset = end
    text = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + text + (-text) % 8 + offset


def layer_bytes(types: dict[str, ModuleType], levels: dict[str, list[int]], dtype: torch.dtype) -> int:
    """Bytes of one layer's file: per module type and distinct level, the kept columns' weight
    ``[hidden, kept · columns per unit]`` in ``dtype`` and the kept unit indices (int64)."""
    size = torch.empty((), dtype=dtype).element_size()
    tensors = []
    for key in KEYS:
        mtype = types[key]
        for kept in sorted(set(levels[key])):
            cols = kept * mtype.rows.shape[1]
            tensors.append((f"{key}.{kept}.weight", DTYPE_NAMES[dtype], [mtype.geom.hidden_size, cols], size))
            tensors.append((f"{key}.{kept}.units", "I64", [kept], 8))
    return file_bytes(tensors)


def iteration_spec(first: SupernetSpec, types: dict[str, ModuleType], iteration: int) -> SupernetSpec:
    """Iteration ``iteration``'s spec if the search kept ``first``'s centers (Δ halves each time)."""
    delta = first.delta / 2**iteration
    return SupernetSpec(first.centers, {k: types[k].step(delta) for k in KEYS}, delta)


def supernet_disk_need(
    types: dict[str, ModuleType],
    first: SupernetSpec,
    num_layers: int,
    iterations: int,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Peak disk use of Týr's supernets: one iteration's at a time (the previous one is deleted
    once the next iteration's search state is saved), the largest of them. The first iteration's
    is exact; a later one's is predicted with the first centers and its smaller Δ (its real
    centers come from the search: the driver checks its exact size again before building it)."""
    return max(
        Supernet(Path(), iteration_spec(first, types, t), types, num_layers, dtype=dtype).disk_bytes()
        for t in range(iterations)
    )


@dataclass
class Supernet:
    """Variants on disk: ``layer{i}.safetensors`` with ``{key}.{kept}.weight`` (the kept input
    columns only, ``[hidden, kept · columns per unit]``, in the model's dtype) and
    ``{key}.{kept}.units`` (the kept unit indices, int64)."""

    folder: Path
    spec: SupernetSpec
    types: dict[str, ModuleType]
    num_layers: int
    #: Settings of the run (``training.fingerprint``): a supernet built with others is rebuilt.
    fingerprint: dict = field(default_factory=dict)
    #: Dtype the variants are stored in: the model's (the refit itself is float32).
    dtype: torch.dtype = torch.float32
    _handles: dict[int, object] = field(default_factory=dict, repr=False)

    # ----- files ----------------------------------------------------------------------------
    def layer_file(self, i: int) -> Path:
        return self.folder / f"layer{i:03d}.safetensors"

    @property
    def marker(self) -> Path:
        return self.folder / "supernet.json"

    def _marker_json(self) -> dict:
        return {**self.spec.to_json(), "dtype": DTYPE_NAMES[self.dtype], "fingerprint": self.fingerprint}

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

    def columns(self, key: str, units: list[int]) -> torch.Tensor:
        """Input columns of ``units`` (int64), in the order of a variant's compact weight."""
        return self.types[key].rows[units].reshape(-1)

    def load(self, layer: int, key: str, kept: int) -> tuple[torch.Tensor, list[int]]:
        """The variant's compact weight ``[out, kept columns]`` (stored dtype) and kept unit indices."""
        handle = self._handle(layer)
        weight = handle.get_tensor(f"{key}.{kept}.weight")
        units = handle.get_tensor(f"{key}.{kept}.units").tolist()
        return weight, units

    def load_dense(self, layer: int, key: str, kept: int) -> tuple[torch.Tensor, list[int]]:
        """The variant's weight in dense coordinates ``[out, in]`` (zeros in the removed columns)."""
        weight, units = self.load(layer, key, kept)
        return scatter_columns(weight, self.columns(key, units), self.types[key].rows.numel()), units

    def expectation(self, layer: int, key: str) -> torch.Tensor:
        """Σ_k w_k·W_k over the layer's distinct variants (float32, dense coordinates), w ∝ density;
        read from the stored variants, so every rank of a node averages the same numbers."""
        mtype = self.types[key]
        kept_values = sorted(set(self.levels(key, layer)))
        weights = expectation_weights(kept_values, mtype.units)
        avg = torch.zeros(mtype.geom.hidden_size, mtype.rows.numel())
        for kept, w in zip(kept_values, weights):
            compact, units = self.load(layer, key, kept)
            if units:
                avg[:, self.columns(key, units)] += w * compact.float()
        return avg

    def close(self) -> None:
        self._handles.clear()

    def disk_bytes(self) -> int:
        """Bytes :meth:`build` writes for this spec (``layer_bytes`` of every layer)."""
        return sum(
            layer_bytes(self.types, {key: self.levels(key, i) for key in KEYS}, self.dtype)
            for i in range(self.num_layers)
        )

    # ----- building -------------------------------------------------------------------------
    @torch.no_grad()
    def build(
        self,
        model: torch.nn.Module,
        adapter: ArchAdapter,
        runner: LayerwiseRunner,
        device: torch.device,
        local: LocalSettings = LocalSettings(),
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Build every layer's variants (block by block) and write them to ``folder``; ``runner``
        walks the calibration samples (``PruneContext.layerwise_runner``: --offload-dir honoured).

        Under torchrun every rank takes part in the statistics (collectives), local rank 0 alone
        prunes and writes, the others wait at a barrier and read its files (``folder`` must be
        local rank 0's: ``distributed.node_shared_path``)."""
        writer = distributed.is_local_main()
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.marker.exists():
                self.marker.unlink()
        self.close()
        for i, layer in enumerate(adapter.layers(model)):
            home = next(layer.parameters()).device
            layer.to(device)
            stats = runner.collect(i, layer, KEYS, hessian=True)
            if writer:
                self._write_layer(i, layer, adapter, stats, local)
            del stats
            distributed.barrier()  # the layer's file is complete before any rank reads it
            # Expectation error accumulation: the next block sees the averaged variants.
            dense = {key: adapter.linear(layer, key).weight.detach().clone() for key in KEYS}
            for key in KEYS:
                adapter.linear(layer, key).weight.copy_(self.expectation(i, key).to(dense[key].dtype))
            runner.advance(layer)
            for key in KEYS:
                adapter.linear(layer, key).weight.copy_(dense[key])
            del dense  # else this layer's o/down copies stay alive through the next layer's pruning
            layer.to(home)
            if progress:
                progress(i)
        if writer:
            self.marker.write_text(json.dumps(self._marker_json()))
        distributed.barrier()

    def _write_layer(
        self,
        i: int,
        layer: torch.nn.Module,
        adapter: ArchAdapter,
        stats: dict,
        local: LocalSettings,
    ) -> None:
        """Prune every level of the layer's modules from the dense weights; write them atomically."""
        tensors: dict[str, torch.Tensor] = {}
        for key in KEYS:
            mtype = self.types[key]
            W = adapter.linear(layer, key).weight.detach().float()
            H = stats[key].hessian
            assert H is not None  # collected with hessian=True
            kept_values = sorted(set(self.levels(key, i)))
            results = prune_module_levels(
                W,
                H,
                mtype.rows,
                kept_values,
                rounds=local.rounds(key),
                percdamp=local.percdamp,
                groups=mtype.groups,
                target=H @ W.t(),
                first_order=local.first_order,
            )
            for kept in kept_values:
                result = results[kept]
                tensors[f"{key}.{kept}.weight"] = result.compact.to(self.dtype).cpu().contiguous()
                tensors[f"{key}.{kept}.units"] = torch.tensor(result.kept, dtype=torch.int64)
        tmp = self.layer_file(i).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self.layer_file(i))
