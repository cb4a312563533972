"""Pieces shared by the learned methods' loops: the seeded batch order and PNG figures.

Both ``minimax`` and ``proxsparse`` train on the calibration samples in an order that must be a
pure function of (step, seed), so that ``--resume`` replays exactly the batches an uninterrupted
run would see; and every long run leaves a plot of its trace beside its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def batch_rows(step: int, n: int, bs: int, seed: int) -> torch.Tensor:
    """Sequences of one step: epoch-wise seeded permutations, a pure function of (step, seed)."""
    per_epoch = max(n // bs, 1)
    epoch, j = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return perm[j * bs : (j + 1) * bs]


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    return plt


def save_figure(fig: Any, path: Path, dpi: int = 90) -> Path:
    """Lay out, write and close a figure (creating its folder)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
