"""Fail fast when a hub id or hub dataset is asked for but the hub cannot be reached.

huggingface_hub retries a refused or timed-out connection with back-off for about half a minute
(five attempts) before transformers or datasets gives up; one plain TCP connection tells the same
thing at once. Models (:func:`require_hub`) and datasets (``llmprune.data.text``, through
:func:`unreachable_message`) share it.
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


def datasets_offline() -> bool:
    """True when the user asked datasets to work from its cache only (either switch)."""
    return offline() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def unreachable_message(what: str) -> str | None:
    """``None`` when the hub answers; else one line saying that it does not, for ``what``, and that
    HF_HUB_OFFLINE=1 uses a cached copy (the caller adds its local alternative)."""
    reason = unreachable_reason()
    if reason is None:
        return None
    return (
        f"cannot reach the Hugging Face hub at {endpoint()} for {what} ({reason}); "
        "set HF_HUB_OFFLINE=1 to use a cached copy"
    )


def require_hub(name: str) -> None:
    """Raise a one-line ModelLoadError for hub id ``name`` when the hub is unreachable.

    Does nothing offline (HF_HUB_OFFLINE=1: transformers reads its cache and reports misses itself).
    """
    if offline():
        return
    message = unreachable_message(repr(name))
    if message is not None:
        raise ModelLoadError(f"{message}, or pass a local model folder")
