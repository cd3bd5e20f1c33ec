"""The same fixtures through ONNX Runtime: each network exported from the registry's description (the graphs
`--backend onnx` and `imgforge export` use), run on the stored inputs, compared with the stored outputs.
Tolerance: the fixtures' own (1e-4) for every kind; measured differences are in docs/onnx.md."""

from __future__ import annotations

from pathlib import Path

import torch

from imgforge.eval.features import to_network_input
from imgforge.onnx.cache import cached_runner
from imgforge.nets import registry

from .common import TOLERANCE, assert_close, load_fixture
from .ddpm import unet_of
from .eval import DIMS, image_pairs, image_sets, narrowed_inception, narrowed_lpips
from .oldphoto import _split
from .pix2pix import build_generator_of

CPU = torch.device("cpu")


def _graph(family: str, net: torch.nn.Module, part: str | None = None, **settings):
    exports = registry.get_family(family).describe(net, **settings).exports
    return cached_runner(next(e for e in exports if part in (None, e.name)), CPU)


def check_generator(folder: Path, config: dict) -> None:
    net, io = build_generator_of(folder, config)
    family = "pix2pix_unet" if config["kind"] == "pix2pix.unet" else "pix2pix_resnet"
    # "testmode": per-image statistics without dropout, which is the graph of --no-dropout
    mode = "no-dropout" if config.get("mode") == "testmode" else "eval"
    assert_close(config["name"], _graph(family, net, mode=mode)(io["input"]), io["output"], TOLERANCE)


def check_unet(folder: Path, config: dict) -> None:
    unet, io = unet_of(folder, config)
    eps = _graph("ddpm_unet", unet)(io["sample"], io["timestep"].float().expand(io["sample"].shape[0]))
    assert_close("eps", eps, io["eps"])


def check_sampler_steps(folder: Path, config: dict) -> None:
    """Every step's eps from the reference's own x (the update itself is the torch sampler's, checked apart)."""
    unet, io = unet_of(folder, config)
    graph = _graph("ddpm_unet", unet)
    parts = ["head.", "tail."] if "head.x_in" in io else [""]
    for part in parts:
        key_t = f"{part}t" if part else "timesteps"
        for i, t in enumerate(int(t) for t in io[key_t]):
            x = io[f"{part}x_in"] if i == 0 else io[f"{part}x_out"][i - 1]
            assert_close(f"{part}eps[{i}]", graph(x, torch.full((x.shape[0],), float(t))), io[f"{part}eps"][i])


def check_scratch_unet(folder: Path, config: dict) -> None:
    weights, io = load_fixture(folder)
    net, family = registry.load(weights)
    assert family.name == "oldphoto_detector" and family.describe(net).hyperparameters["wf"] == config["reference"]["wf"]
    assert_close("logits", _graph(family.name, net)(io["input"]), io["logits"])


def check_chain(folder: Path, config: dict) -> None:
    weights, io = load_fixture(folder)
    vae_a, _ = registry.load(_split(weights, "vae_a."), "oldphoto")
    mapping, _ = registry.load(_split(weights, "mapping."), "oldphoto")
    vae_b, _ = registry.load(_split(weights, "vae_b."), "oldphoto")
    assert_close("latent", _graph("oldphoto_vae", vae_a, "encoder")(io["input"]), io["latent"])
    inputs = (io["latent"],) if config["kind"] == "oldphoto.chain_quality" else (io["latent"], io["mask"])
    assert_close("latent_mapped", _graph("oldphoto_mapping", mapping)(*inputs), io["latent_mapped"])
    assert_close("output", _graph("oldphoto_vae", vae_b, "decoder")(io["latent_mapped"]), io["output"])


def check_face_generator(folder: Path, config: dict) -> None:
    weights, io = load_fixture(folder)
    net, _ = registry.load(weights, "face_spade")
    size = config["reference"]["opt"]["load_size"]
    assert_close("output", _graph("face_spade", net, size=size)(io["degraded_image"]), io["output"])


def check_fid_inception(folder: Path, config: dict) -> None:
    """The graph takes the resized, rescaled images (its input is 299x299 in [-1, 1]: docs/eval.md). The
    first block's graph and the whole network's: the other two are prefixes of the latter, and two graphs of
    one weights file must not share a cache entry."""
    for dims in (min(DIMS), max(DIMS)):
        net, io = narrowed_inception(folder, config, dims)
        graph = _graph("fid_inception", net)
        for name, images in image_sets(io).items():
            assert_close(f"{name}.features_{dims}", graph(to_network_input(images)), io[f"{name}.features_{dims}"])


def check_lpips_alex(folder: Path, config: dict) -> None:
    """The graph takes both images scaled to [-1, 1] (docs/eval.md) and gives the distance of each pair."""
    net, io = narrowed_lpips(folder, config)
    graph = _graph("lpips_alex", net)
    for name, (x, y) in image_pairs(io).items():
        scaled = [images.permute(0, 3, 1, 2).float() / 127.5 - 1 for images in (x, y)]
        assert_close(f"{name}.distance", graph(*scaled), io[f"{name}.distance"], config["tolerance_abs"])


CHECKS = {
    "pix2pix.unet": check_generator,
    "pix2pix.resnet": check_generator,
    "ddpm.unet": check_unet,
    "ddpm.ddpm_steps": check_sampler_steps,
    "ddpm.ddim_steps": check_sampler_steps,
    "oldphoto.scratch_unet": check_scratch_unet,
    "oldphoto.chain_quality": check_chain,
    "oldphoto.chain_scratch": check_chain,
    "face.spade_generator": check_face_generator,
    "eval.fid_inception": check_fid_inception,
    "eval.lpips_alex": check_lpips_alex,
}
