"""The model and its family: the architecture adapter and family table (``arch``), loading from a
hub id or folder (``loading``, ``hub``, ``completeness``), the plan a strategy hands over (``plan``)
and the surgery that applies it (``surgery``), width grids (``alignment``), heterogeneous and
DeciLM modeling (``hetero``, ``autoregister``, ``deci``), weight streaming (``streaming``,
``layer_forward``) and the input checkpoint's original weights (``originals``). Family-specific
code lives here and nowhere else.

May import: ``llmprune.runtime``, ``llmprune.settings``, ``llmprune.errors``."""
