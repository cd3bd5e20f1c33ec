"""The GAN training pieces (imgforge/train/gan.py) and the PatchGAN discriminator family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file

from imgforge.nets import registry
from imgforge.nets.patchgan import DiscriminatorOptions, PatchDiscriminator
from imgforge.nets.pix2pix import GeneratorOptions, MaskedDropout
from imgforge.train.gan import GANLoss, ImagePool, Schedule, adam, dropout_masks, new_discriminator, new_generator
from imgforge.train.pix2pix import Pix2PixStep

KEYS = Path(__file__).parent / "fixtures" / "conformance" / "train_pix2pix_unet256_batchnorm"


def test_pix2pix_generator_trains_with_the_official_dropout():
    # the official unet_256 has Dropout(0.5) in the three decoder blocks below the innermost
    G = new_generator(GeneratorOptions("unet_256", "batch", 2, dropout=True))
    assert len([m for m in G.modules() if isinstance(m, MaskedDropout)]) == 3
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    torch.manual_seed(0)
    masks = dropout_masks(G, images)
    assert [tuple(m.shape) for m in masks] == [(2, 16, 4, 4), (2, 16, 8, 8), (2, 16, 16, 16)]
    values = torch.cat([m.flatten() for m in masks])
    assert set(values.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - 0.5)
    assert 0.35 < (values > 0).float().mean().item() < 0.65

    def fake_after_one_step(seed: int) -> torch.Tensor:
        torch.manual_seed(1)
        G = new_generator(GeneratorOptions("unet_256", "batch", 2, dropout=True))
        D = new_discriminator(DiscriminatorOptions(6, 2, 3, "batch"))
        step = Pix2PixStep(G, D, D, adam(G.parameters(), 2e-4, 0.5), adam(D.parameters(), 2e-4, 0.5),
                           gan_mode="vanilla", lambda_l1=100.0, generator=G)
        torch.manual_seed(seed)
        step(images, -images)
        return step.fake_B

    same, again, other = fake_after_one_step(0), fake_after_one_step(0), fake_after_one_step(1)
    assert torch.equal(same, again)
    assert (same - other).abs().max() > 1e-3  # the noise z of the paper: other masks, another output


def test_dropout_masks_are_none_without_dropout():
    G = new_generator(GeneratorOptions("resnet_6blocks", "instance", 2, dropout=False))
    assert dropout_masks(G, torch.zeros(1, 3, 16, 16)) == []


def test_patchgan_has_the_official_keys_and_is_detected():
    expected = {"model.0.weight": (64, 6, 4, 4), "model.0.bias": (64,), "model.2.weight": (128, 64, 4, 4),
                "model.3.weight": (128,), "model.5.weight": (256, 128, 4, 4), "model.8.weight": (512, 256, 4, 4),
                "model.11.weight": (1, 512, 4, 4), "model.11.bias": (1,)}
    with torch.device("meta"):
        state = PatchDiscriminator(DiscriminatorOptions()).state_dict()
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "model.2.bias" not in state  # no bias before BatchNorm, as in the official code
    fixture = json.loads((KEYS / "config.json").read_text())["discriminator"]
    net = PatchDiscriminator(DiscriminatorOptions(6, fixture["ndf"], 3, "batch"))
    loaded, family = registry.load(net.state_dict())
    assert family.name == "patchgan" and family.describe(loaded).hyperparameters == {
        "input_nc": 6, "ndf": fixture["ndf"], "n_layers": 3, "norm": "batch"}
    instance = PatchDiscriminator(DiscriminatorOptions(3, 8, 2, "instance"))
    assert registry.detect(instance.state_dict()).name == "patchgan"
    assert PatchDiscriminator(DiscriminatorOptions(3, 8, 3, "batch"))(torch.zeros(1, 3, 70, 70)).shape == (1, 1, 6, 6)


def test_gan_losses_follow_the_official_targets():
    prediction = torch.tensor([[0.5, -1.0]])
    assert GANLoss("lsgan")(prediction, True).item() == pytest.approx(((0.5 - 1) ** 2 + 4) / 2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(prediction, torch.zeros_like(prediction))
    assert GANLoss("vanilla")(prediction, False).item() == pytest.approx(bce.item())


def test_linear_schedule_is_the_official_lr_policy():
    schedule = Schedule(epochs=2, epochs_decay=3)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = schedule.scheduler(optimizer)
    rates = []
    for _ in range(5):  # the rate each of the 5 epochs trains with
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25])


def test_image_pool_returns_its_input_until_full_then_mixes():
    pool = ImagePool(2, seed=0)
    first, second = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 2.0)
    assert torch.equal(pool.query(first), first) and torch.equal(pool.query(second), second)
    seen = {pool.query(torch.full((1, 1, 1, 1), 3.0 + i)).item() for i in range(20)}
    assert seen & {1.0, 2.0} and any(v >= 3 for v in seen)
    restored = ImagePool(2, seed=5)
    restored.load_state_dict(pool.state_dict(), torch.device("cpu"))
    probe = torch.full((1, 1, 1, 1), 99.0)
    assert torch.equal(pool.query(probe), restored.query(probe))


@pytest.mark.parametrize("fixture", ["train_pix2pix_unet256_batchnorm", "train_cyclegan_resnet9_instancenorm"])
def test_a_seed_draws_the_initial_weights_the_official_code_draws(fixture):
    # the fixtures' initial weights: torch.manual_seed(seed), then each network built and init_weights'd in turn
    folder = KEYS.parent / fixture
    config = json.loads((folder / "config.json").read_text())
    io = load_file(str(folder / "io.safetensors"))
    torch.manual_seed(config["seed"])
    if "generator" in config:
        g, d = config["generator"], config["discriminator"]
        nets = {"G": new_generator(GeneratorOptions(g["netG"], g["norm"], g["ngf"], False)),
                "D": new_discriminator(DiscriminatorOptions(d["input_nc"], d["ndf"], d["n_layers"], d["norm"]))}
    else:
        g, d = config["generators"], config["discriminators"]
        generator = GeneratorOptions("resnet_9blocks", g["norm"], g["ngf"], False)
        discriminator = DiscriminatorOptions(d["input_nc"], d["ndf"], d["n_layers"], d["norm"])
        nets = {"G_A": new_generator(generator), "G_B": new_generator(generator),
                "D_A": new_discriminator(discriminator), "D_B": new_discriminator(discriminator)}
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            assert torch.equal(value, io[f"initial.{name}.{key}"]), f"{name}.{key}"
