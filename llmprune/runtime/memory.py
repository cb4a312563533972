"""How much memory there is, and how much this process took: the device budget a plan must fit
(``--gpu-memory``, the free CUDA memory, or the available host RAM) and the peaks a report records.
Knows no model and no method: the memory model (``llmprune.core.memory_model``) asks it."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

GIB = 2**30


def device_type(device: str) -> str:
    """``cuda`` or ``cpu`` for ``--device`` (auto: cuda when this machine has one)."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


#: The device size a plan assumes when it names a CUDA device this machine does not have and
#: ``--gpu-memory`` is not given (``--estimate --device cuda`` on a laptop): printed as an assumption.
ASSUMED_GPU_GIB = 80.0


def budget_assumed(settings: Any) -> bool:
    """True when :func:`memory_budget` plans for :data:`ASSUMED_GPU_GIB` (no such device here)."""
    if device_type(settings.device) != "cuda" or getattr(settings, "gpu_memory", None) is not None:
        return False
    import torch

    return not torch.cuda.is_available()


def memory_budget(settings: Any, in_use: int = 0) -> int:
    """Bytes the predicted peak must fit: ``--gpu-memory`` if given, else the free memory of the
    CUDA device (:data:`ASSUMED_GPU_GIB` when this machine has none, so that a plan for a GPU is
    one that GPU would accept), else (CPU) the available host RAM. ``in_use``: bytes of what the
    estimate counts that is already loaded (the model's weights, during a run), added back."""
    if device_type(settings.device) == "cuda":
        gib = getattr(settings, "gpu_memory", None)
        if gib is not None:
            return int(gib * GIB)
        if budget_assumed(settings):
            return int(ASSUMED_GPU_GIB * GIB)
        return free_device_bytes(settings.device) + in_use
    return available_host_bytes() + in_use


def available_host_bytes() -> int:
    """Host RAM a new allocation can get (``MemAvailable``; total RAM where /proc is absent)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def free_device_bytes(device: str) -> int:
    """Free memory of a CUDA device (what the pre-flight check compares with)."""
    import torch

    dev = torch.device(device if device not in ("auto", "cuda") else f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    return int(torch.cuda.mem_get_info(dev)[0])


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB.

    Linux's VmHWM belongs to this program alone; ``ru_maxrss`` would also include the RSS of a
    parent that forked us (it survives exec), which inflates numbers in benchmark subprocesses.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of CUDA allocations) in MiB."""
    import torch

    peak = {"peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
