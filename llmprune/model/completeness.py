"""A model folder must hold every tensor the model needs, each of the shape its config implies.

transformers fills a missing tensor with random values and only logs it; pruning or evaluating
such a model gives silently wrong results, so a missing tensor is a load error here. A tied
``lm_head`` (stored once, as the embedding) is not missing. A tensor of the wrong shape is a load
error too, named in one line (transformers' own message spans a report of many lines).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from llmprune.errors import ModelLoadError

SHOWN = 3


def missing_tensor_error(missing: Iterable[str], where: str) -> ModelLoadError:
    """The one-line error naming the first missing tensors and how many there are."""
    names = sorted(missing)
    first = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    return ModelLoadError(
        f"{where} lacks {len(names)} tensor(s) the model needs (first: {first}); they would be randomly initialised"
    )


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def shape_mismatch_error(mismatched: Mapping[str, tuple[Iterable[int], Iterable[int]]], where: str) -> ModelLoadError:
    """The one-line error naming the first tensor whose stored shape differs from the config's.

    ``mismatched`` maps a tensor name to ``(expected shape, found shape)``.
    """
    names = sorted(mismatched)
    expected, found = mismatched[names[0]]
    more = f" (and {len(names) - 1} more tensor(s) of the wrong shape)" if len(names) > 1 else ""
    return ModelLoadError(
        f"{where} holds tensor {names[0]} of shape {_shape(found)}, but its config.json implies "
        f"{_shape(expected)}{more}"
    )


def check_shapes(found: Mapping[str, Iterable[int]], expected: Mapping[str, Iterable[int]], where: str) -> None:
    """Raise when a tensor present in both maps has a different shape in ``found``."""
    mismatched = {
        name: (expected[name], shape)
        for name, shape in found.items()
        if name in expected and tuple(shape) != tuple(expected[name])
    }
    if mismatched:
        raise shape_mismatch_error(mismatched, where)


def check_loading_info(info: dict[str, Any], model: Any, where: str) -> None:
    """Raise when ``from_pretrained(..., output_loading_info=True)`` reported missing keys or
    (under ``ignore_mismatched_sizes=True``) tensors of the wrong shape."""
    mismatched = info.get("mismatched_keys") or ()
    if mismatched:  # (name, shape in the checkpoint, shape the config implies)
        raise shape_mismatch_error({name: (want, got) for name, got, want in mismatched}, where)
    missing = set(info.get("missing_keys") or ()) - tied_names(model)
    if missing:
        raise missing_tensor_error(missing, where)


def tied_names(model: Any) -> set[str]:
    """Parameter names that share storage with another parameter (tied ``lm_head``)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied)


def expected_tensors(config: Any) -> set[str] | None:
    """Names of the tensors a checkpoint of ``config`` must hold (built on the meta device).

    ``None`` when the config cannot be instantiated here (then nothing can be checked).
    """
    shapes = expected_shapes(config)
    return None if shapes is None else set(shapes)


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]] | None:
    """Name → shape of the tensors a checkpoint of ``config`` must hold (built on the meta device).

    ``None`` when the config cannot be instantiated here (then nothing can be checked).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from llmprune.model.hetero import register_auto_classes

    register_auto_classes()
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture we cannot build: the loader will say so
        return None
    tied = tied_names(model)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items() if name not in tied}
