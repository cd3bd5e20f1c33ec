"""A deployer's own code: runs imgforge's exported graphs with onnxruntime, numpy and Pillow alone, driven by
nothing but the sidecar JSON (no imgforge, no torch). tests/test_deployer.py checks that it reproduces
`imgforge translate` and `imgforge sample`; docs/onnx.md points deployers here as a worked example."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image


def _open(sidecar_path: Path) -> tuple[dict, onnxruntime.InferenceSession]:
    """The sidecar and a session over the graph it names (beside it)."""
    sidecar = json.loads(Path(sidecar_path).read_text(encoding="utf-8"))
    graph = Path(sidecar_path).with_name(sidecar["graph"])
    return sidecar, onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


def translate(sidecar_path: Path, image: Image.Image, seed: int | None = None) -> np.ndarray:
    """One image through the generator graph as its sidecar says; `seed` as `translate --seed` (official
    mode). Returns H x W x C uint8 at the image's size."""
    sidecar, session = _open(sidecar_path)
    recipe = sidecar["deploy"]
    pixels = image.convert(recipe["image_mode"]["input"])
    width, height = pixels.size
    size = (recipe["resize"]["width"], recipe["resize"]["height"])
    if pixels.size != size:
        pixels = pixels.resize(size, Image.BICUBIC)
    array = np.asarray(pixels)
    array = array[:, :, None] if array.ndim == 2 else array
    x = ((array.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    x = np.ascontiguousarray(x)
    feeds = {"input": x}
    dropout = recipe["dropout"]
    if dropout is not None:
        if seed is None:
            raise ValueError("this graph takes dropout masks: give the seed")
        digest = hashlib.blake2b(str(seed).encode() + b":" + x.tobytes(), digest_size=8).digest()
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little") >> 1))
        for mask in dropout["masks"]:
            shape = (mask["channels"], -(-x.shape[2] // mask["reduction"]), -(-x.shape[3] // mask["reduction"]))
            drawn = (rng.random(shape, dtype=np.float32) >= dropout["p"]).astype(np.float32)
            feeds[mask["input"]] = (drawn * np.float32(dropout["kept_value"]))[None]
    (output,) = session.run(["output"], feeds)
    result = ((output[0].transpose(1, 2, 0) + 1) / 2 * 255).astype(np.uint8)
    if result.shape[:2] != (height, width):
        grey = result.shape[2] == 1
        back = Image.fromarray(result[:, :, 0] if grey else result).resize((width, height), Image.BICUBIC)
        result = np.asarray(back)
        result = result[:, :, None] if grey else result
    return result


def sample(sidecar_path: Path, steps: int, noises: list[np.ndarray]) -> np.ndarray:
    """DDPM ancestral sampling with the U-Net graph as its sidecar says: `noises[0]` is x_T (N x C x H x W),
    then one per step with t > 0. Returns N x H x W x C uint8."""
    sidecar, session = _open(sidecar_path)
    recipe = sidecar["deploy"]
    schedule = recipe["schedule"]
    alpha_bar = np.array(schedule["alphas_cumprod"], dtype=np.float32)
    train = schedule["num_train_timesteps"]
    timesteps = [(steps - 1 - k) * (train // steps) for k in range(steps)]
    one = np.float32(1)
    x = noises[0].astype(np.float32)
    drawn = iter(noises[1:])
    for k, t in enumerate(timesteps):
        t_prev = timesteps[k + 1] if k + 1 < steps else -1
        eps = session.run(["eps"], {"sample": x, "timestep": np.full((x.shape[0],), t, np.float32)})[0]
        a_t = alpha_bar[t]
        a_p = alpha_bar[t_prev] if t_prev >= 0 else one
        alpha = a_t / a_p
        beta = one - alpha
        x0 = (x - (one - a_t) ** np.float32(0.5) * eps) / a_t ** np.float32(0.5)
        if schedule["clip_sample"]:
            limit = np.float32(schedule["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        coef_x0 = (a_p ** np.float32(0.5) * beta) / (one - a_t)
        coef_xt = alpha ** np.float32(0.5) * (one - a_p) / (one - a_t)
        x = coef_x0 * x0 + coef_xt * x
        if t > 0:
            if schedule["variance_type"] == "fixed_large":
                variance = beta
            else:
                variance = max((one - a_p) / (one - a_t) * beta, np.float32(1e-20))
            x = x + variance ** np.float32(0.5) * next(drawn).astype(np.float32)
    pixels = np.round(np.clip(x / np.float32(2) + np.float32(0.5), 0, 1) * np.float32(255)).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)
