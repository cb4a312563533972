"""The process a run lives in, knowing no model: torch.distributed ranks (``distributed``), atomic
writes (``atomic``), the output lock (``lock``), SIGTERM as an interruption (``signals``), progress
bars (``progress``), memory budgets and peaks (``memory``, ``memtrack``).

May import: ``llmprune.errors`` and ``llmprune.settings`` only."""
