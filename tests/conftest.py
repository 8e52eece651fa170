"""Fixtures. The shared helpers themselves live in tests/helpers.py."""

from __future__ import annotations

import pytest
import torch

import mor
from helpers import preferred_checkpoint, shipped_checkpoints


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(0, 99, (2, 24))


@pytest.fixture(scope="session")
def shipped_names() -> list[str]:
    """Names of every shipped checkpoint; the session fails loudly when there are none."""
    return [f.name for f in shipped_checkpoints()]


@pytest.fixture(scope="session")
def checkpoint_name() -> str:
    """The routed checkpoint a test uses when any will do (see helpers.preferred_checkpoint)."""
    return preferred_checkpoint()


@pytest.fixture(scope="session")
def checkpoint(checkpoint_name):
    """(model, tokenizer) of `checkpoint_name`, loaded once per test session on the CPU."""
    return mor.load(checkpoint_name, device="cpu")
