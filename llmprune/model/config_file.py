"""A local model folder's ``config.json`` as plain data, without transformers (``--estimate``).

``AutoConfig`` imports transformers and torch (seconds) and fills absent keys with its config
class's defaults, which differ between families (``tie_word_embeddings``, ``head_dim``,
``num_key_value_heads``). So the plain reading is used only when the file states every key the
estimate reads and names a supported family; otherwise (a hub id, a key left to its default, a
heterogeneous or DeciLM output, an unreadable file) the caller loads the config with transformers
(``llmprune.model.loading.load_config``), which also words every error.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from llmprune.model.arch import family_for_model_type

#: The keys the estimate reads (``core.memory_model.shape_of_config`` and ``Request.of``) that a
#: config class may default differently from the memory model's own fallbacks.
ESTIMATE_KEYS: tuple[str, ...] = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "num_hidden_layers",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
)


def read_plain_config(name: str) -> SimpleNamespace | None:
    """The config of a local folder as attributes, or None when transformers must read it."""
    file = Path(name).expanduser() / "config.json"
    try:
        data = json.loads(file.read_text()) if file.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(key) is None for key in ESTIMATE_KEYS):
        return None
    if family_for_model_type(data.get("model_type")) is None:  # unsupported, heterogeneous or DeciLM
        return None
    return SimpleNamespace(**{str(k): v for k, v in data.items()})
