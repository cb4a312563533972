"""What a run writes: the atomic folder export with safetensors, config, tokenizer, plan, sidecar
(``save``), export hygiene (``portable``) and the typed report (``report``).

May import: ``llmprune.core`` and below; never the training loop, a method or a command."""
