"""llmprune: structured, global and 2:4 pruning for Hugging Face causal LMs."""

__version__ = "0.1.0"
