"""Width alignment (``--align N``, ``--align-heads T``): widths that kernels, quantizers and
tensor-parallel servers can use.

GGUF quantization works on blocks of 32 (Q8_0) or 256 (K-quants) input elements, and vLLM splits
heads and MLP channels across tensor-parallel ranks with divisibility checks. With ``--align N``
every kept width (query heads × head_dim, KV heads × head_dim, MLP channels) is a multiple of N;
with ``--align-heads T`` every kept query-head and KV-head count is divisible by T. A module
pruned to nothing (0 units) and a module kept whole are always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd, lcm
from typing import Any

from llmprune.model.arch import Geometry

#: Widths that are not multiples of this block GGUF's smallest quantization block; warn about them.
QUANT_BLOCK = 32
#: DeciLM / Nemotron-NAS MLP widths are multiples of this (vLLM's and llama.cpp's ffn_mult rule).
DECI_FFN_MULTIPLE = 256


@dataclass(frozen=True)
class Alignment:
    """Grid of kept widths: ``width`` (elements) and ``heads`` (head counts)."""

    width: int = 1
    heads: int = 1
    #: attention kept whole or removed (the DeciLM format has a fixed number of query heads)
    whole_attention: bool = False

    @classmethod
    def of(cls, settings: Any) -> Alignment:
        """From PruneSettings (or any object with ``align``/``align_heads``; absent means 1)."""
        return cls(int(getattr(settings, "align", 1) or 1), int(getattr(settings, "align_heads", 1) or 1))

    @property
    def trivial(self) -> bool:
        return self.width == 1 and self.heads == 1 and not self.whole_attention

    def for_deci(self) -> Alignment:
        """The widths the DeciLM format expresses without padding: attention whole or no-op, MLP
        widths multiples of 256 (``--search-space deci``)."""
        return Alignment(lcm(self.width, DECI_FFN_MULTIPLE), self.heads, whole_attention=True)

    def head_multiple(self, geom: Geometry) -> int:
        """Head counts must be multiples of this (width grid in heads, and the TP size)."""
        return lcm(self.width // gcd(self.width, geom.head_dim), self.heads)

    def attn_granule(self, geom: Geometry, attn_unit: str) -> int:
        """Kept attention units are multiples of this.

        ``group`` units are KV groups (u KV heads, u·g query heads: u must be a head multiple);
        ``query`` units are query heads, balanced over the (all kept) KV groups.
        """
        if self.whole_attention:
            return geom.attn_unit_count(attn_unit)
        multiple = self.head_multiple(geom)
        return multiple if attn_unit == "group" else lcm(geom.num_kv_heads, multiple)

    def round_channels(self, channels: float, dense: int) -> int:
        """MLP width on the grid nearest ``channels``, at least one grid step, at most ``dense``."""
        n = self.width
        k = int(round(channels / n)) * n
        return min(max(k, min(n, dense)), dense)

    def allowed_channels(self, k: int, dense: int) -> bool:
        return k in (0, dense) or k % self.width == 0

    def report(self) -> dict[str, Any]:
        return {
            "align": self.width,
            "align_heads": self.heads,
            **({"whole_attention": True} if self.whole_attention else {}),
        }


def misaligned_widths(widths: list[dict[str, int]], head_dim: int, block: int = QUANT_BLOCK) -> list[str]:
    """Human-readable widths (of ``PrunePlan.layer_widths()``) that are not multiples of ``block``."""
    bad = []
    for w in widths:
        for name, value in (
            ("attention", w["heads"] * head_dim),
            ("kv", w["kv_heads"] * head_dim),
            ("mlp", w["channels"]),
        ):
            if value and value % block:
                bad.append(f"layer {w['layer']} {name} {value}")
    return bad


def alignment_report(settings: Any, plan: Any, log: Any) -> dict[str, Any]:
    """The ``alignment`` report entry of a structured plan; warns (via ``log``) when widths are not
    multiples of ``QUANT_BLOCK`` (GGUF falls back to F16 for such tensors, GPU kernels slow down)."""
    if plan.kind != "structured" or not plan.layers:
        return {}
    align = Alignment.of(settings)
    bad = misaligned_widths(plan.layer_widths(), plan.dense["head_dim"])
    if bad:
        log(
            f"[yellow]warning:[/] {len(bad)} widths are not multiples of {QUANT_BLOCK} (first: {bad[0]}); "
            f"GGUF quantization and GPU kernels prefer aligned widths: rerun with --align {QUANT_BLOCK} (or 64, 128)"
        )
    return {"alignment": {**align.report(), "block": QUANT_BLOCK, "misaligned_widths": bad}}
