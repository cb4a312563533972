"""The plumbing under every learned method and the recovery stage: the resumable, distributed
training loop (``loop``), checkpoint cadence (``cadence``), batch order and plots (``trace``), and
the recovery objective and weight training (``recovery``). A method supplies only its math.

May import: ``llmprune.core`` and below; never a method, ``llmprune.export`` or a command."""
