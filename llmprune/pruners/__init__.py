"""Built-in pruning methods; importing this package registers them."""

from llmprune.pruners import baselines  # noqa: F401
