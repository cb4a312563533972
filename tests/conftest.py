"""Shared fixtures (tiny model folders, calibration text) and hooks; helpers are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: hub look-ups fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers import FAMILIES, SAMPLE_TEXT, save_tiny_model  # noqa: E402  (after the offline switches)


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``gpu`` are skipped on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_text(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text(SAMPLE_TEXT)
    return path


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    return save_tiny_model(tmp_path / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a model folder, shared by one test module."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", "llama")


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """SAMPLE_TEXT as a calibration file, shared by one test module."""
    path = tmp_path_factory.mktemp("data") / "calib.txt"
    path.write_text(SAMPLE_TEXT)
    return path
