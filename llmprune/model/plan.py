"""PrunePlan: the plain-data contract between a strategy and surgery/export.

A structured plan lists, per layer, the query heads, KV heads and MLP channels to keep (indices
into the dense model). A 2:4 plan lists the targeted modules; the boolean masks themselves travel
in memory beside the plan (they are as large as the weights) and end up as zeros in the export.
Replacement weights (Týr's least-squares refit, merged LoRA) also travel in memory only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmprune.model.arch import Geometry

PLAN_FILE = "llmprune_plan.json"


class LayerPlan(BaseModel):
    """Kept units of one decoder layer (indices into the dense layer, sorted)."""

    index: int
    heads: list[int] = Field(description="kept query heads")
    kv_heads: list[int] = Field(description="kept KV heads")
    channels: list[int] = Field(description="kept MLP intermediate channels")

    @model_validator(mode="after")
    def _sorted_unique(self) -> LayerPlan:
        for name in ("heads", "kv_heads", "channels"):
            values = getattr(self, name)
            if values != sorted(set(values)):
                raise ValueError(f"layer {self.index}: {name} must be sorted and unique")
        return self


class PrunePlan(BaseModel):
    """What to remove from a model; saved as ``llmprune_plan.json`` beside the weights."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    format_version: int = 1
    kind: Literal["structured", "semi24"]
    strategy: str
    method: str
    attn_unit: Literal["group", "query"] = "group"
    dense: dict[str, int] = Field(default_factory=dict, description="dense geometry")
    layers: list[LayerPlan] = Field(default_factory=list)
    semi24_targets: list[str] = Field(default_factory=list, description="modules with 2:4 masks")
    # In-memory payloads, never serialised.
    masks: dict[str, torch.Tensor] = Field(default_factory=dict, exclude=True, repr=False)
    weights: dict[str, torch.Tensor] = Field(default_factory=dict, exclude=True, repr=False)

    # ----- constructors ---------------------------------------------------------------------
    @classmethod
    def dense_structured(
        cls, geom: Geometry, strategy: str, method: str, attn_unit: Literal["group", "query"] = "group"
    ) -> PrunePlan:
        """A structured plan that keeps everything (the identity)."""
        layers = [
            LayerPlan(
                index=i,
                heads=list(range(geom.num_heads)),
                kv_heads=list(range(geom.num_kv_heads)),
                channels=list(range(geom.intermediate_size)),
            )
            for i in range(geom.num_layers)
        ]
        return cls(
            kind="structured",
            strategy=strategy,
            method=method,
            attn_unit=attn_unit,
            dense=geometry_dict(geom),
            layers=layers,
        )

    # ----- queries --------------------------------------------------------------------------
    @property
    def is_uniform(self) -> bool:
        """True when every layer keeps the same numbers of heads, KV heads and channels."""
        widths = {(len(lp.heads), len(lp.kv_heads), len(lp.channels)) for lp in self.layers}
        return len(widths) <= 1

    def layer_widths(self) -> list[dict[str, int]]:
        return [
            {"layer": lp.index, "heads": len(lp.heads), "kv_heads": len(lp.kv_heads), "channels": len(lp.channels)}
            for lp in self.layers
        ]

    # ----- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        path = Path(folder) / PLAN_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder_or_file: Path) -> PrunePlan:
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / PLAN_FILE
        return cls.model_validate(json.loads(path.read_text()))


def geometry_dict(geom: Geometry) -> dict[str, int]:
    return {
        "hidden_size": geom.hidden_size,
        "num_heads": geom.num_heads,
        "num_kv_heads": geom.num_kv_heads,
        "head_dim": geom.head_dim,
        "intermediate_size": geom.intermediate_size,
        "num_layers": geom.num_layers,
    }


def units_to_heads(kept_units: list[int], geom: Geometry, attn_unit: str) -> tuple[list[int], list[int]]:
    """Translate kept attention units into kept query heads and KV heads.

    ``group`` units are KV groups: keeping group j keeps KV head j and its g query heads.
    ``query`` units are query heads; the KV heads all stay, and every group must keep the same
    number of query heads (HF's ``repeat_kv`` maps query head h to KV head h // g).
    """
    g = geom.group_size
    units = sorted(kept_units)
    if attn_unit == "group":
        heads = [j * g + r for j in units for r in range(g)]
        return heads, units
    per_group = [[h for h in units if h // g == j] for j in range(geom.num_kv_heads)]
    counts = {len(p) for p in per_group}
    if len(counts) != 1:
        raise ValueError(f"query-head pruning must keep the same number of heads per KV group, got {sorted(counts)}")
    kv = list(range(geom.num_kv_heads)) if units else []
    return units, kv
