"""Evaluation: perplexity per methods.md §0, parameter accounting, measured throughput."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from llmprune.errors import NumericalError

if TYPE_CHECKING:
    from transformers import GenerationMixin


@torch.no_grad()
def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    batch_size: int = 8,
    device: torch.device | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """exp(mean next-token NLL) over all windows; returns (perplexity, mean NLL).

    Each window of L tokens predicts its last L − 1 tokens; logits are upcast to float32.
    """
    device = device or next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        logits = model(batch, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        total_tokens += batch[:, 1:].numel()
        if progress:
            progress()
    mean_nll = total_nll / total_tokens
    if not math.isfinite(mean_nll):
        raise NumericalError("evaluation loss is not finite (fp16 overflow? use --dtype float32 or bfloat16)")
    return math.exp(mean_nll), mean_nll


def count_parameters(model: nn.Module, adapter) -> dict[str, int]:
    """Total parameters (tied weights once) and decoder-layer linear weights (methods.md §0)."""
    return {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_decoder_linear": adapter.decoder_linear_params(model),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def throughput(
    model: nn.Module,
    vocab_size: int,
    prefill_tokens: int = 256,
    decode_tokens: int = 64,
    batch_size: int = 1,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Prefill and decode tokens/s (median of ``repeats`` after ``warmup`` runs).

    Prefill: one forward over ``batch_size × prefill_tokens``. Decode: greedy generation of
    ``decode_tokens`` new tokens with the KV cache from a 16-token prompt, EOS ignored.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (batch_size, prefill_tokens), generator=gen).to(device)
    t_prefill = _timed(lambda: model(prompt, use_cache=False), device, warmup, repeats)

    short = prompt[:, :16]

    def decode() -> None:
        cast("GenerationMixin", model).generate(  # a causal LM; nn.Module does not declare generate
            short,
            attention_mask=torch.ones_like(short),
            max_new_tokens=decode_tokens,
            min_new_tokens=decode_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )

    t_decode = _timed(decode, device, warmup, repeats)
    return {
        "prefill_tokens_per_s": batch_size * prefill_tokens / t_prefill,
        "decode_tokens_per_s": batch_size * decode_tokens / t_decode,
        "speed_prefill_tokens": prefill_tokens,
        "speed_decode_tokens": decode_tokens,
        "speed_batch_size": batch_size,
        "speed_warmup": warmup,
        "speed_repeats": repeats,
    }
