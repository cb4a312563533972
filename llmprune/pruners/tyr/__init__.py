"""``global --method tyr`` (Týr-the-Pruner, methods.md §3) and the code only it uses.

* ``local_prune``: the local OBS pruner of one ``o``/``down`` module with least-squares refit;
* ``supernet``: the on-disk supernet of variants, built block by block;
* ``search``: the evolutionary coarse-to-fine search with top-k KL fitness;
* ``final_prune``: the searched widths pruned again layer by layer on the pruned model's inputs;
* ``pruner``: the driver, registered as ``global --method tyr``.
"""

from llmprune.pruners.tyr.pruner import GlobalTyr, TyrOptions, plot_kept_fraction

__all__ = ["GlobalTyr", "TyrOptions", "plot_kept_fraction"]
