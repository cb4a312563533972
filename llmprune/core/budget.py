"""Is a structured --sparsity reachable, and did the plan reach it?

Structured methods keep at least one attention unit and one MLP channel in every layer, so some
requests cannot be met at all (a usage error naming the largest reachable value); a plan whose
achieved sparsity misses the request by more than one MLP channel per layer is reported on
stderr and in the report instead of passing silently.
"""

from __future__ import annotations

import math

from llmprune.core.masks import max_structured_sparsity, one_unit_sparsity
from llmprune.errors import UsageError
from llmprune.model.alignment import Alignment
from llmprune.model.arch import Geometry


def check_reachable(geom: Geometry, sparsity: float, attn_unit: str, align: Alignment | None = None) -> None:
    """Raise a UsageError when no structured plan can remove ``sparsity`` of the decoder weights."""
    largest = max_structured_sparsity(geom, attn_unit, align)
    if sparsity > largest:
        shown = math.floor(largest * 10_000) / 10_000  # a value the user can pass back
        raise UsageError(
            f"--sparsity {sparsity} cannot be reached: every layer keeps at least one attention unit "
            f"(--attn-unit {attn_unit}) and one MLP channel{' on the --align grid' if align and not align.trivial else ''}; "
            f"the largest reachable --sparsity is {shown}"
        )


def miss_warning(geom: Geometry, requested: float, achieved: float, align: Alignment | None = None) -> str | None:
    """A sentence when ``achieved`` is further from ``requested`` than one MLP channel per layer."""
    tolerance = one_unit_sparsity(geom, align)
    if abs(achieved - requested) <= tolerance * (1 + 1e-9):
        return None
    return (
        f"achieved sparsity {achieved:.4f} misses the requested {requested} by {abs(achieved - requested):.4f}, "
        f"more than one MLP channel per layer ({tolerance:.4f}); the method's unit sizes cannot do better here"
    )
