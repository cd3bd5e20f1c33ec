"""Helpers shared by the conformance checks."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

TOLERANCE = 1e-4  # fixtures README: max abs difference for network outputs and chained steps


def load_fixture(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, io) tensors of a fixture folder; weights may be absent (pure-function kinds)."""
    weights_path = folder / "weights.safetensors"
    weights = load_file(str(weights_path)) if weights_path.exists() else {}
    return weights, load_file(str(folder / "io.safetensors"))


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float = TOLERANCE) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol}"
