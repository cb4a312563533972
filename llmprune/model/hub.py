"""Fail fast when a hub id is given but the hub cannot be reached.

huggingface_hub retries a refused or timed-out connection with back-off for about half a minute
before transformers gives up; one plain TCP connection tells the same thing at once.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from llmprune.errors import ModelLoadError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 5.0


def offline() -> bool:
    """True when the user asked huggingface_hub to work from its cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT


def unreachable_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when a TCP connection to the hub endpoint opens, else why it did not."""
    url = urlparse(endpoint())
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__


def require_hub(name: str) -> None:
    """Raise a one-line ModelLoadError for hub id ``name`` when the hub is unreachable.

    Does nothing offline (HF_HUB_OFFLINE=1: transformers reads its cache and reports misses itself).
    """
    if offline():
        return
    reason = unreachable_reason()
    if reason is not None:
        raise ModelLoadError(
            f"cannot reach the Hugging Face hub at {endpoint()} for {name!r} ({reason}); "
            "set HF_HUB_OFFLINE=1 to use a cached copy, or pass a local model folder"
        )
