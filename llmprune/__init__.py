"""llmprune: structured, global and 2:4 pruning for Hugging Face causal LMs."""

__version__ = "0.1.0"

# Heterogeneous-width (`llmprune global`) outputs load with plain transformers after
# `import llmprune`; the hooks import nothing until transformers/PEFT are imported.
from llmprune.model.autoregister import install as _install_autoregister

_install_autoregister()
