"""Make heterogeneous-width outputs load with plain transformers after ``import llmprune``.

``import llmprune`` must stay cheap (the CLI's ``--help`` imports it; transformers and torch take
seconds), so nothing is imported here. Instead:

- when ``transformers.models.auto.configuration_auto`` is (or already was) imported, its
  ``CONFIG_MAPPING`` learns the ``llmprune_hetero_<family>`` model types *lazily*: the first time
  transformers asks for one, ``llmprune.model.hetero.register_family`` builds and registers that family's
  config, ``AutoModel`` and ``AutoModelForCausalLM`` classes;
- when ``peft.utils.constants`` is (or was) imported, PEFT's default-target tables get entries for
  those model types, so ``LoraConfig()`` without ``target_modules`` works.

Both are post-import hooks on a ``sys.meta_path`` finder that wraps the real loader.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
PEFT_CONSTANTS = "peft.utils.constants"


class _LazyHeteroTypes(dict):
    """``CONFIG_MAPPING._extra_content`` that registers a heterogeneous family on first lookup."""

    def _materialise(self, key: Any) -> None:
        from llmprune.model.hetero import MODEL_TYPE_PREFIX, hetero_families, register_family

        if isinstance(key, str) and key.startswith(MODEL_TYPE_PREFIX) and not dict.__contains__(self, key):
            family = key.removeprefix(MODEL_TYPE_PREFIX)
            if family in hetero_families():
                register_family(family)

    def __contains__(self, key: object) -> bool:
        self._materialise(key)
        return dict.__contains__(self, key)

    def __getitem__(self, key: Any) -> Any:
        self._materialise(key)
        return dict.__getitem__(self, key)


def _on_config_auto(module: types.ModuleType) -> None:
    mapping = getattr(module, "CONFIG_MAPPING", None)
    extra = getattr(mapping, "_extra_content", None)
    if isinstance(extra, dict) and not isinstance(extra, _LazyHeteroTypes):
        assert mapping is not None  # the table was read from it
        mapping._extra_content = _LazyHeteroTypes(extra)
    elif extra is None and mapping is not None:  # a transformers without the private table: register now
        from llmprune.model.hetero import register_auto_classes

        register_auto_classes()


def _on_peft_constants(module: types.ModuleType) -> None:
    from llmprune.model.hetero import register_peft_targets

    register_peft_targets(module)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then a callback on the finished module."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[types.ModuleType], None]) -> None:
        self.loader, self.callback = loader, callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        self.callback(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self.loader, name)


class _PostImportHooks(importlib.abc.MetaPathFinder):
    def __init__(self, hooks: dict[str, Callable[[types.ModuleType], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        callback = self.hooks.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, callback)
                return spec
        return None


HOOKS: dict[str, Callable[[types.ModuleType], None]] = {
    CONFIG_AUTO: _on_config_auto,
    PEFT_CONSTANTS: _on_peft_constants,
}


def install() -> None:
    """Apply the hooks to modules already imported and watch for the others (idempotent)."""
    for name, callback in HOOKS.items():
        if name in sys.modules:
            callback(sys.modules[name])
    if not any(isinstance(f, _PostImportHooks) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportHooks(HOOKS))
