"""Peak bytes of live tensors, on any device (the CPU has no allocator statistics to ask).

:class:`TensorPeak` is a dispatch mode: every tensor an operator returns is counted by its
storage (views and in-place results share one) until Python's last reference to that storage
dies. It measures what :mod:`llmprune.run.estimate` predicts — tensors, not the interpreter, the
libraries or allocator slack (RSS sees those too) — so the two can be compared on CPU.
Tensors created before the mode (or by code that bypasses the dispatcher, e.g. memory-mapped
safetensors) are not counted; copies made from them are.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    """``with TensorPeak() as m: ...`` then ``m.peak`` (bytes) and ``m.current``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, Any] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> Any:
        def callback(_: object) -> None:
            self.current -= nbytes
            self.live.pop(key, None)

        return callback

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                key = id(storage)
                if key in self.live:
                    continue
                nbytes = storage.nbytes()
                self.live[key] = weakref.ref(storage, self._release(key, nbytes))
                self.current += nbytes
                self.peak = max(self.peak, self.current)
        return out
