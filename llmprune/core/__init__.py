"""The numerical kernels every method shares, each written once: widths and N:M masks (``masks``),
importance scores (``scoring``), the OBS update and Hessian damping (``obs``), the 2:4 proximal
operator (``prox``), distillation losses (``distill``), LoRA (``lora``), the sparsity budget's
reachability (``budget``) and the memory model's shared terms (``memory_model``).

May import: ``llmprune.data``, ``llmprune.model`` and below; never a method, the training loop or a
command."""
