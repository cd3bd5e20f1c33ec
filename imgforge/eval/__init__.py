"""Metrics of generated and restored images (docs/eval.md), imported lazily:

    fid(real, fake, ...)            -> MetricResult   Fréchet Inception Distance (pytorch-fid's numbers)
    kid(real, fake, ...)            -> MetricResult   Kernel Inception Distance (torch-fidelity's defaults)
    inception_score(images, ...)    -> MetricResult   Inception Score (10 splits)
    fid_stats(images, output, ...)  -> SetResult      reference statistics (.npz: mu, sigma), resumable
    pairs(predictions, references)  -> PairsResult    PSNR, SSIM, LPIPS, L1 per pair and their mean

A set is inputs (files, folders, globs, s3://) or, for fid, a statistics .npz.
"""

from __future__ import annotations

from importlib import import_module

# public name -> the module defining it (modules are not named like the functions, which they would shadow)
_API = {"fid": "set_metrics", "kid": "set_metrics", "fid_stats": "set_metrics", "inception_score": "set_metrics",
        "MetricResult": "set_metrics", "SetResult": "set_metrics", "pairs": "pairwise", "PairsResult": "pairwise"}

__all__ = list(_API)


def __getattr__(name: str):
    if name == "inception_score":
        return import_module(".set_metrics", __name__).inception_score_of
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'imgforge.eval' has no attribute {name!r}")
