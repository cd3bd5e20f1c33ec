"""The face stage of old-photo restoration (the official run.py stages 2-4): detect faces on the restored
photo, align each to the generator's size, enhance them in batches, blend them back."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(faces: list[np.ndarray]) -> torch.Tensor:
    """uint8 S x S x 3 RGB faces -> (N, 3, S, S) in [-1, 1], as FaceTestDataset reads the aligned PNGs
    (ToTensor, Normalize(0.5, 0.5), float32)."""
    pixels = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2)
    return pixels.float().div(255).sub_(0.5).div_(0.5)


def to_uint8(generated: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] -> uint8 N x S x S x 3 as test_face.py saves them: ((g + 1) / 2) * 255 + 0.5,
    clamped and truncated (i.e. rounded), in float32."""
    values = ((generated.float() + 1) / 2).mul_(255).add_(0.5).clamp_(0, 255)
    return values.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
