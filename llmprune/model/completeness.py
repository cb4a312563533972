"""A model folder must hold every tensor the model needs.

transformers fills a missing tensor with random values and only logs it; pruning or evaluating
such a model gives silently wrong results, so a missing tensor is a load error here. A tied
``lm_head`` (stored once, as the embedding) is not missing.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def check_loading_info(info: dict[str, Any], model: Any, where: str) -> None:
    """Raise when ``from_pretrained(..., output_loading_info=True)`` reported missing keys."""
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
    import torch
    from transformers import AutoModelForCausalLM

    from llmprune.model.hetero import register_auto_classes

    register_auto_classes()
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # an architecture we cannot build: the loader will say so
        return None
    persistent = set(model.state_dict())
    return persistent - tied_names(model)
