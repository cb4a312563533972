"""The commands' runs: the run plan resolved once (``run_plan``), the pruning pipeline
(``pipeline``), recovery (``recover``), evaluation (``evaluation``, ``metrics``, ``tasks``),
``inspection``, ``remask``, the claim on OUT (``workspace``), ``--estimate`` (``estimate``) and the
end-of-run tables (``summary``).

May import: every stage below (``llmprune.pruners`` and down); only ``llmprune.cli`` imports it.
Commands do not import each other."""
