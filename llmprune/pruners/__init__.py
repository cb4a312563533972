"""Pruning methods. Each is declared in a torch-free ``<name>_options.py`` (names, summary,
``Options``; the registry imports every such module, so the command line knows every method without
torch) and implemented in ``<name>.py`` (or a package), imported when a run needs it."""
