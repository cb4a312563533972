"""The model's original weights, read on demand from the input checkpoint instead of a host copy.

A method that must return to the original weights (ProxSparse: its anchor, its masks' starting
point, the OBS refit) used to keep a float32 copy of every targeted weight in host memory: 28 GB
at 8B, 280 GB at 70B. :class:`OriginalWeights` instead memory-maps the input safetensors (the OS
pages them in and out; nothing is pinned) and hands out one weight at a time, cast to the dtype
the model was loaded in (so its values are exactly those the model started with) and then to
float32 for the arithmetic. When the checkpoint cannot serve a weight (not safetensors, e.g. a GGUF file, a key
renamed by transformers' conversion, a shape that differs, values that differ from the loaded
model) it falls back to a copy in the model's own dtype, never float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def safetensors_files(model: str) -> list[Path]:
    """The ``*.safetensors`` files of a local folder, or of a hub id's cached snapshot (no download);
    none for a single-file input (a GGUF file: its quantized tensors cannot be memory-mapped as the
    model's weights, so every weight is a copy)."""
    folder = Path(model).expanduser()
    if folder.is_file():
        return []
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model, allow_patterns=["*.safetensors"], local_files_only=True))
        except Exception:  # not cached: the caller falls back to copies
            return []
    return sorted(folder.glob("*.safetensors"))


class OriginalWeights(Mapping[str, torch.Tensor]):
    """``name → float32 weight`` of the linear modules ``targets`` (module names), as loaded."""

    def __init__(self, model_source: str, targets: Mapping[str, nn.Linear]) -> None:
        from safetensors import safe_open

        self.names = list(targets)
        self.dtypes = {name: lin.weight.dtype for name, lin in targets.items()}
        self.handles: dict[str, Any] = {}
        self.copies: dict[str, torch.Tensor] = {}
        files: dict[str, Any] = {}
        for path in safetensors_files(model_source):
            opened = safe_open(str(path), framework="pt")  # memory-mapped
            for key in opened.keys():
                files[key] = opened
        for i, (name, lin) in enumerate(targets.items()):
            handle = files.get(f"{name}.weight")
            if handle is not None and tuple(handle.get_slice(f"{name}.weight").get_shape()) == tuple(lin.weight.shape):
                self.handles[name] = handle
                # the first weight from the file must equal the loaded one, else trust no file weight
                if i == 0 and not torch.equal(self._read(name).to(lin.weight.device), lin.weight.detach().float()):
                    self.handles.clear()
                    break
        for name, lin in targets.items():
            if name not in self.handles:
                self.copies[name] = lin.weight.detach().cpu().clone()  # the model's dtype

    @property
    def mapped(self) -> int:
        """How many weights are read from the checkpoint (the rest are copies)."""
        return len(self.handles)

    def _read(self, name: str) -> torch.Tensor:
        return self.handles[name].get_tensor(f"{name}.weight").to(self.dtypes[name]).float()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.handles:
            return self._read(name)
        return self.copies[name].float()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
