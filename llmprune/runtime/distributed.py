"""``torch.distributed`` for llmprune: one process group when launched by ``torchrun``, nothing otherwise.

``torchrun --nproc_per_node N -m llmprune ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``init`` then creates the default process group (NCCL when
the run uses CUDA, gloo on CPU) with a finite timeout, so an error on one rank cannot hang the
others forever. Without those variables (or with ``WORLD_SIZE=1``) nothing is initialised and
every helper below is the identity / a no-op: single-process runs are exactly what they were.

What is distributed (see docs/distributed.md):

* calibration statistics: ``LayerwiseRunner`` takes its shard of the calibration rows
  (``shard_range``) and all-reduces the float32 sums ``Σx²``, ``XᵀX`` and the token counts, so
  every rank holds the statistics of all samples and computes the same deterministic prune;
* Týr's search fitness: each rank scores its shard of the selected rows; ``(Σ KL, tokens)`` are
  all-reduced, so the token-weighted mean is the single-process one and every rank makes the
  same selection with the same seeded generator;
* mask learning (minimax, ProxSparse): ``data_parallel`` wraps the trainable tensors in a real
  ``DistributedDataParallel`` module; each rank takes its shard of every step's batch.

Only rank 0 writes (output folder, checkpoints, traces, plots); ``on_main`` runs a function on
rank 0 and hands its result (or its error) to every rank; ``main_decides`` hands rank 0's yes/no
to every rank (a time-based checkpoint, so that all ranks checkpoint at the same step). Files the
ranks of one node share (Týr's supernet) are written by local rank 0 into its folder
(``node_shared_path``); the others wait at a barrier and read them memory-mapped.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Seconds any collective (including the final barrier while rank 0 exports) may wait for a peer.
TIMEOUT_ENV = "LLMPRUNE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0

_owned = False  # True when ``init`` created the process group (so ``cleanup`` destroys it)


def _dist():
    import torch.distributed as dist

    return dist


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def env_rank() -> int:
    """RANK set by torchrun (0 when absent); valid before and after the group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_enabled() -> bool:
    """True inside an initialised process group of more than one rank."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if is_enabled() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_enabled() else 1


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    """Rank 0 (also true without a process group)."""
    return rank() == 0


def is_local_main() -> bool:
    """Local rank 0 of this node (also true without a process group): the rank that writes the
    files the ranks of one node share (Týr's supernet)."""
    return local_rank() == 0 if is_enabled() else True


def node_id() -> str:
    """This node: its host name and torchrun's node rank (``GROUP_RANK``)."""
    return f"{socket.gethostname()}:{os.environ.get('GROUP_RANK', '0')}"


def backend() -> str | None:
    return _dist().get_backend() if is_enabled() else None


def group_record() -> dict[str, dict[str, object]]:
    """``{"distributed": {world_size, backend}}`` for a run's report under torchrun, else ``{}``."""
    return {"distributed": {"world_size": world_size(), "backend": backend()}} if is_enabled() else {}


def timeout_seconds() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def init(device: str = "auto") -> bool:
    """Create the default process group when launched with ``WORLD_SIZE > 1``.

    ``device`` is the ``--device`` request: NCCL when it resolves to CUDA, gloo otherwise. Returns
    True when a group of several ranks is active (created here or earlier by the caller).
    """
    global _owned
    dist = _dist()
    if is_enabled():
        return True
    if env_world_size() <= 1 or not dist.is_available():
        return False
    use_cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend="nccl" if use_cuda else "gloo",
        timeout=datetime.timedelta(seconds=timeout_seconds()),
    )
    _owned = True
    return is_enabled()


def cleanup() -> None:
    """Destroy the process group if ``init`` created it."""
    global _owned
    dist = _dist()
    if _owned and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def device_for(requested: torch.device) -> torch.device:
    """Per-rank device: ``cuda:LOCAL_RANK`` for a CUDA request inside a group, else unchanged."""
    if is_enabled() and requested.type == "cuda":
        return torch.device("cuda", local_rank())
    return requested


# ----- collectives ------------------------------------------------------------------------------
def _comm_device() -> torch.device:
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it); identity without a group."""
    if not is_enabled():
        return tensor
    dev = _comm_device()
    if tensor.device == dev:
        _dist().all_reduce(tensor)
        return tensor
    buf = tensor.to(dev)
    _dist().all_reduce(buf)
    tensor.copy_(buf)
    return tensor


def all_reduce_floats(values: Sequence[float]) -> list[float]:
    """Sums over ranks of a few Python numbers, in float64."""
    if not is_enabled():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return [float(v) for v in all_reduce_sum(t)]


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank."""
    if not is_enabled():
        return bool(flag)
    return all_reduce_floats([1.0 if flag else 0.0])[0] > 0


def main_decides(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "a checkpoint is due" by rank 0's clock), so that all
    ranks take the same branch; ``flag`` itself without a group. Every rank must call it."""
    if not is_enabled():
        return bool(flag)
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    _dist().broadcast(box, src=0)
    return bool(box.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled); identity without a group."""
    if not is_enabled():
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src, device=_comm_device() if backend() == "nccl" else None)
    return box[0]


def node_shared_path(path: Path) -> Path:
    """Local rank 0's ``path`` on every rank of its node (``path`` itself without a group).

    The ranks of one node then read one copy of a large file that local rank 0 writes (Týr's
    supernet), instead of each writing its own into its private scratch folder.
    """
    if not is_enabled():
        return path
    entries: list[Any] = [None] * world_size()
    _dist().all_gather_object(entries, (node_id(), local_rank(), str(path)))
    for node, local, shared in entries:
        if node == node_id() and local == 0:
            return Path(shared)
    raise RuntimeError(f"no local rank 0 on node {node_id()} (LOCAL_RANK must start at 0 on every node)")


def broadcast_seed(seed: int) -> int:
    """Rank 0's seed on every rank (every random choice then agrees)."""
    return int(broadcast_object(int(seed)))


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    An exception on rank 0 is re-raised on every rank (so no rank waits for a peer that failed).
    """
    if not is_enabled():
        return fn()
    payload: Any = None
    if is_main():
        try:
            payload = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - handed to every rank
            payload = ("err", err)
    try:
        kind, value = broadcast_object(payload)
    except Exception as err:  # an unpicklable exception or result
        raise RuntimeError(f"rank 0 failed and its error could not be shared: {payload!r}") from err
    if kind == "err":
        raise value
    return value


def barrier() -> None:
    if is_enabled():
        _dist().barrier()


# ----- sharding ---------------------------------------------------------------------------------
def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous slice ``[start, stop)`` of ``n`` rows (sizes differ by at most one)."""
    w, r = world_size(), rank()
    return (n * r) // w, (n * (r + 1)) // w


def shard_rows(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a ``[N, ...]`` tensor (all of them without a group)."""
    if not is_enabled():
        return tensor
    start, stop = shard_range(tensor.shape[0])
    return tensor[start:stop]


def gather_rows(local: torch.Tensor, total: int, start: int) -> torch.Tensor:
    """The full ``[total, ...]`` tensor from every rank's rows ``[start, start + len(local))``.

    Zero-filled then summed, so the result is exact (x + 0 = x) for any dtype.
    """
    if not is_enabled():
        return local
    full = torch.zeros((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    full[start : start + local.shape[0]] = local
    return all_reduce_sum(full)


# ----- data parallel training ---------------------------------------------------------------------
class TrainableParameters(nn.Module):
    """The trainable tensors of a learned pruner as one module, so that they can be wrapped by
    ``DistributedDataParallel``; ``forward`` runs the pruner's own forward closure.

    The parameters are shared with wherever they live (mask scores, widths, LoRA adapters inside
    the model, or the model's weights for ProxSparse): nothing is copied, and the frozen rest of
    the model is not part of the module (DDP neither broadcasts nor reduces it).
    """

    def __init__(self, params: Sequence[torch.Tensor], forward: Callable[..., Any]) -> None:
        super().__init__()
        self.trainable = nn.ParameterList(list(params))
        self._forward = [forward]  # a list: not registered as a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward[0](*args, **kwargs)


def data_parallel(
    params: Sequence[torch.Tensor], forward: Callable[..., Any], find_unused_parameters: bool = False
) -> Callable[..., Any]:
    """``forward`` itself without a group; otherwise a DDP module over ``params`` calling ``forward``.

    Gradients of ``params`` are averaged over ranks during ``backward`` (DDP's bucketed
    all-reduce). Callers weight their data loss by ``world · rows_local / rows_global`` so the
    average equals the gradient of the global mean when shards differ in size.
    """
    if not is_enabled():
        return forward
    from torch.nn.parallel import DistributedDataParallel as DDP

    module = TrainableParameters(params, forward)
    device_ids = None
    first = module.trainable[0] if len(module.trainable) else None
    if first is not None and first.device.type == "cuda":
        device_ids = [first.device.index]
    return DDP(module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=find_unused_parameters)


def loss_weight(local_rows: int, global_rows: int) -> float:
    """Factor on a rank's mean data loss so that DDP's average is the global mean's gradient."""
    if not is_enabled() or global_rows == 0:
        return 1.0
    return world_size() * local_rows / global_rows
