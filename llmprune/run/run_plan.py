"""A run's plan, resolved once: every setting a command was given, or left to ``auto``, turned
into the values the stages then read (device, compute and save dtypes, seqlen, the seed every
rank shares, the geometry and reachability of the target, where the weights wait, the recovery
options). Frozen: a stage never re-decides what was decided here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmprune.core.budget import check_reachable
from llmprune.errors import UsageError
from llmprune.model.alignment import Alignment
from llmprune.model.arch import ArchAdapter, Geometry
from llmprune.model.loading import (
    checkpoint_dtype,
    load_config,
    resolve_device,
    resolve_dtype,
    resolve_seqlen,
    save_dtype_for,
)
from llmprune.model.streaming import streaming_on
from llmprune.pruners.base import Pruner
from llmprune.run.estimate import streaming_needed
from llmprune.runtime import distributed
from llmprune.settings import PruneSettings, RunSettings
from llmprune.train.recovery import RecoveryOptions


@dataclass(frozen=True)
class RunPlan:
    """What every command that loads a model resolves: the settings with seed and seqlen filled
    in, the model's config, the device and the two dtypes."""

    settings: Any  # RunSettings, resolved
    config: Any
    device: torch.device
    compute_dtype: torch.dtype
    save_dtype: torch.dtype


def resolve_run(settings: RunSettings, config: Any) -> RunPlan:
    """Seed (rank 0's, broadcast), device (this rank's), seqlen, compute and save dtypes."""
    settings = settings.model_copy(update={"seed": distributed.broadcast_seed(settings.seed)})
    device = distributed.device_for(resolve_device(settings.device))
    settings = settings.model_copy(update={"seqlen": resolve_seqlen(settings.seqlen, config)})
    compute_dtype = resolve_dtype(settings.dtype, device, checkpoint_dtype(config))
    return RunPlan(settings, config, device, compute_dtype, save_dtype_for(settings, config, device))


@dataclass(frozen=True)
class PruneRunPlan(RunPlan):
    """A pruning run: the above, plus the dense geometry, whether the weights wait on the host
    (layer-wise methods keep them there in the saved dtype; streamed ones in the compute dtype),
    whether calibration text is read, and the recovery stage's options (None without ``--recover``)."""

    geometry: Geometry | None = None
    layerwise: bool = False
    on_host: bool = False
    needs_calibration: bool = True
    recovery: RecoveryOptions | None = None
    #: ``--stream-weights`` as asked (``settings`` holds it as run): the recovery stage decides anew
    #: with the pruned model's weights.
    stream_asked: str = "auto"


def check_ranks(settings: PruneSettings, pruner: type[Pruner]) -> None:
    """Under torchrun every rank needs its share of the calibration rows."""
    world = distributed.world_size()
    needs_calibration = pruner.needs_calibration or settings.recover is not None
    if world > 1 and needs_calibration and min(settings.nsamples, settings.batch_size) < world:
        raise UsageError(
            f"with {world} ranks, --nsamples ({settings.nsamples}) and --batch-size "
            f"({settings.batch_size}) must be at least {world} (each rank needs its share)"
        )


def recovery_options(settings: PruneSettings) -> RecoveryOptions | None:
    """``--recover``'s options, validated with their defaults (None without it)."""
    return None if settings.recover is None else RecoveryOptions.model_validate(settings.recover)


def resolve_prune(settings: PruneSettings, pruner: Pruner) -> PruneRunPlan:
    """Everything a pruning run decides before reading a weight: fails early (an unreachable
    sparsity, a format that cannot express the model, an option the model refuses)."""
    config = load_config(settings.model)
    if settings.export_format == "deci":  # fail before the pruning work, not at export
        from llmprune.model.deci import check_exportable

        check_exportable(config)
    recovery = recovery_options(settings)
    if recovery is not None:  # the report records the options with their defaults
        settings = settings.model_copy(update={"recover": recovery.model_dump(mode="json")})
    run = resolve_run(settings, config)
    settings = run.settings
    geom = ArchAdapter.for_config(config).geometry(config)
    if settings.strategy != "semi24":  # before the weights are read
        check_reachable(geom, settings.sparsity, settings.attn_unit, Alignment.of(settings))
    pruner.check(settings, geom)
    cls = type(pruner)
    on_host = not cls.layerwise and streaming_on(
        settings, run.device, lambda: not streaming_needed(settings, config, distributed.world_size())
    )
    settings = settings.model_copy(update={"stream_weights": "on" if on_host else "off"})  # as run
    return PruneRunPlan(
        settings=settings,
        config=config,
        device=run.device,
        compute_dtype=run.compute_dtype,
        save_dtype=run.save_dtype,
        geometry=geom,
        layerwise=cls.layerwise,
        on_host=on_host,
        needs_calibration=cls.needs_calibration or recovery is not None,
        recovery=recovery,
        stream_asked=run.settings.stream_weights,
    )
