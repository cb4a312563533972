"""Text in, activations out: text sources, calibration and evaluation windows (``text``) and the
layer-by-layer activation capture with its float32 statistics (``capture``).

May import: ``llmprune.model`` and below."""
