"""Wrapping every decoder layer's ``forward`` for the length of a block, and putting back exactly
what was there: weight streaming and gradient checkpointing both wrap it, nested, and each must
restore the other's wrapper, not delete it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn


@contextlib.contextmanager
def wrapped_forwards(
    layers: Sequence[nn.Module], wrap: Callable[[int, Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    """``layer.forward = wrap(index, layer.forward)`` for every layer, undone on exit."""
    previous = [vars(layer).get("forward") for layer in layers]
    for i, layer in enumerate(layers):
        layer.forward = wrap(i, layer.forward)
    try:
        yield
    finally:
        for layer, before in zip(layers, previous):
            if before is None:
                vars(layer).pop("forward", None)
            else:
                layer.forward = before
