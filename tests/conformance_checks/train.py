"""Conformance checks for the GAN training kinds: one official optimisation step after another from the
fixture's initial weights, through imgforge's own step (imgforge/train/pix2pix.py, cyclegan.py), compared
loss by loss and, after every step, tensor by tensor with the official state dicts."""

from __future__ import annotations

from pathlib import Path

import torch

from imgforge.nets.patchgan import DiscriminatorOptions, PatchDiscriminator
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from imgforge.train.cyclegan import CycleGANStep
from imgforge.train.gan import ImagePool, adam
from imgforge.train.pix2pix import Pix2PixStep

from .common import assert_close, load_fixture

_NETG = {7: "unet_128", 8: "unet_256", 6: "resnet_6blocks", 9: "resnet_9blocks"}


def _part(io: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in io.items() if k.startswith(prefix)}


def _generator(config: dict):
    netG = _NETG[config.get("num_downs", config.get("n_blocks"))]
    return build_generator(GeneratorOptions(netG, config["norm"], config["ngf"], config["use_dropout"],
                                            config.get("input_nc", 3), config.get("output_nc", 3)))


def _discriminator(config: dict) -> PatchDiscriminator:
    return PatchDiscriminator(DiscriminatorOptions(config["input_nc"], config["ndf"], config["n_layers"],
                                                   config["norm"]))


def _check_losses(config: dict, io: dict, step: int, losses: dict) -> None:
    tolerance = config["tolerance"]["loss_rel"]
    expected_names = {k.split(".")[-1] for k in io if k.startswith(f"step{step}.loss.")}
    assert set(losses) == expected_names, f"losses {sorted(losses)} != {sorted(expected_names)}"
    for name, value in losses.items():
        expected = io[f"step{step}.loss.{name}"].item()
        assert abs(value.item() - expected) <= tolerance * abs(expected), \
            f"step {step} loss {name}: {value.item():.8g} != {expected:.8g}"


def _check_after(config: dict, io: dict, step: int, nets: dict) -> None:
    loose = set(config.get("roundoff_only_keys", ()))
    allowance = 2 * 2e-4 * (step + 1)  # README: round-off-only biases move by up to 2 * lr per step
    for name, net in nets.items():
        expected = _part(io, f"after{step}.{name}.")
        actual = net.state_dict()
        assert set(actual) == set(expected), f"{name}: keys differ from the official state dict"
        for key, value in expected.items():
            tol = allowance if f"{name}.{key}" in loose else config["tolerance"]["weights_abs"]
            assert_close(f"after{step}.{name}.{key}", actual[key], value, tol)


def check_pix2pix_step(folder: Path, config: dict) -> None:
    _, io = load_fixture(folder)
    G, D = _generator(config["generator"]), _discriminator(config["discriminator"])
    G.load_state_dict(_part(io, "initial.G."))
    D.load_state_dict(_part(io, "initial.D."))
    G.train(), D.train()
    step = Pix2PixStep(G, D, D, adam(G.parameters(), 2e-4, 0.5), adam(D.parameters(), 2e-4, 0.5),
                       gan_mode=config["losses"]["gan_mode"], lambda_l1=_lambda_l1(config))
    for k in range(config["steps"]):
        losses = step(io[f"step{k}.real_A"], io[f"step{k}.real_B"])
        assert_close(f"step{k}.fake_B", step.fake_B, io[f"step{k}.fake_B"], config["tolerance"]["fake_B_abs"])
        _check_losses(config, io, k, losses)
        _check_after(config, io, k, {"G": G, "D": D})


def _lambda_l1(config: dict) -> float:
    """λ of the G loss formula the fixture states ("... + L1(fake_B, B) * 100.0")."""
    return float(config["losses"]["G"].rsplit("*", 1)[1].strip().split()[0])


def check_cyclegan_step(folder: Path, config: dict) -> None:
    _, io = load_fixture(folder)
    generator = dict(config["generators"], input_nc=3, output_nc=3)
    nets = {"G_A": _generator(generator), "G_B": _generator(generator),
            "D_A": _discriminator(config["discriminators"]), "D_B": _discriminator(config["discriminators"])}
    for name, net in nets.items():
        net.load_state_dict(_part(io, f"initial.{name}."))
        net.train()
    losses_config = config["losses"]
    optimizer_G = adam(list(nets["G_A"].parameters()) + list(nets["G_B"].parameters()), 2e-4, 0.5)
    optimizer_D = adam(list(nets["D_A"].parameters()) + list(nets["D_B"].parameters()), 2e-4, 0.5)
    step = CycleGANStep(nets, nets, optimizer_G, optimizer_D, gan_mode=losses_config["gan_mode"].split()[0],
                        lambda_a=losses_config["lambda_A"], lambda_b=losses_config["lambda_B"],
                        lambda_identity=losses_config["lambda_identity"], pools=(ImagePool(50, 0), ImagePool(50, 1)))
    for k in range(config["steps"]):
        losses = step(io[f"step{k}.real_A"], io[f"step{k}.real_B"])
        _check_losses(config, io, k, losses)
        _check_after(config, io, k, nets)


CHECKS = {"train.pix2pix_step": check_pix2pix_step, "train.cyclegan_step": check_cyclegan_step}
