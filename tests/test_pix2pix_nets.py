"""The pix2pix / CycleGAN generators: official keys and sizes, reading options from weights, loading files
as the official loader does, and the per-image test-time statistics."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from imgforge.checkpoint import load_state_dict
from imgforge.errors import ModelError
from imgforge.nets.pix2pix import GeneratorOptions, build_generator, infer_options, load_weights

KEYS = Path(__file__).parent / "fixtures" / "conformance" / "keys"


def small(netG: str, norm: str = "batch", dropout: bool = False, ngf: int = 4, **channels) -> GeneratorOptions:
    return GeneratorOptions(netG=netG, norm=norm, ngf=ngf, dropout=dropout, **channels)


def perturbed(options: GeneratorOptions, seed: int = 0) -> torch.nn.Module:
    """A generator whose weights and running statistics are far from their initial values."""
    torch.manual_seed(seed)
    net = build_generator(options)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn_like(buffer) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand_like(buffer))
    return net.eval()


@pytest.mark.parametrize("manifest, options, parameters", [
    ("pix2pix_unet256_ngf64_batch", GeneratorOptions("unet_256", "batch", 64, True), 54_413_955),
    ("unet128_ngf64_batch", GeneratorOptions("unet_128", "batch", 64, True), 41_828_995),
    ("resnet6_ngf64_instance", GeneratorOptions("resnet_6blocks", "instance", 64, False), 7_837_699),
    ("cyclegan_resnet9_ngf64_instance", GeneratorOptions("resnet_9blocks", "instance", 64, False), 11_378_179),
])
def test_full_size_keys_and_shapes_equal_the_official_manifests(manifest, options, parameters):
    expected = json.loads((KEYS / f"{manifest}.keys.json").read_text())
    net = build_generator(options)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == expected
    assert sum(p.numel() for p in net.parameters()) == parameters
    assert infer_options(net.state_dict())[0] == options


@pytest.mark.parametrize("netG", ["unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_options_are_read_back_from_the_weights(netG, norm):
    dropout = netG.startswith("resnet")  # a U-Net's dropout has no weights: read back as the default, True
    options = small(netG, norm, dropout=dropout, ngf=3, input_nc=1, output_nc=2)
    found, dropout_known = infer_options(build_generator(options).state_dict())
    assert found == GeneratorOptions(netG, norm, 3, True, 1, 2)
    assert dropout_known == netG.startswith("resnet")


def test_resnet_dropout_is_read_from_the_shifted_block_index():
    without = build_generator(small("resnet_6blocks", "instance", dropout=False)).state_dict()
    assert "model.10.conv_block.5.weight" in without
    assert infer_options(without)[0].dropout is False


def test_foreign_weights_are_named_as_such():
    with pytest.raises(ModelError, match="not a pix2pix/CycleGAN generator"):
        infer_options({"encoder.weight": torch.zeros(1)})


def test_metadata_and_bare_batchnorm_files_load_as_officially(tmp_path):
    net = perturbed(small("unet_256", "batch", dropout=True))
    state = OrderedDict((k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked"))
    state._metadata = net.state_dict()._metadata  # says "BatchNorm version 2": strict torch would want counters
    state["_metadata"] = {"": {"version": 1}}  # and as a key, as some converters store it
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    fresh = build_generator(small("unet_256", "batch", dropout=True))
    load_weights(fresh, load_state_dict(path))
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


def test_stale_instance_norm_statistics_are_dropped():
    net = perturbed(small("resnet_6blocks", "instance"))
    state = dict(net.state_dict())
    for index in (2, 5, 8):  # the InstanceNorm layers of the stem, as 2018 CycleGAN files carry them
        channels = state[f"model.{index - 1}.weight"].shape[0]
        state[f"model.{index}.running_mean"] = torch.randn(channels)
        state[f"model.{index}.running_var"] = torch.rand(channels) + 0.5
        state[f"model.{index}.num_batches_tracked"] = torch.tensor(7)
    fresh = build_generator(small("resnet_6blocks", "instance"))
    load_weights(fresh, state)
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


def test_other_extra_keys_are_refused():
    net = build_generator(small("resnet_6blocks", "instance"))
    state = dict(net.state_dict(), **{"model.1.extra": torch.zeros(1)})
    with pytest.raises(ModelError, match="unexpected model.1.extra"):
        load_weights(build_generator(small("resnet_6blocks", "instance")), state)


@pytest.mark.parametrize("asked, file, flag", [
    (small("resnet_9blocks", "instance", dropout=False), small("resnet_9blocks", "instance", dropout=True),
     "--no-dropout"),
    (small("resnet_9blocks", "batch"), small("unet_256", "batch"), "--netG"),
    (small("resnet_9blocks", "batch"), small("resnet_9blocks", "instance"), "--norm"),
    (small("unet_256", "batch", ngf=8), small("unet_256", "batch", ngf=4), "--ngf"),
    (small("resnet_6blocks", "instance"), small("resnet_9blocks", "instance"), "--netG"),
])
def test_a_mismatch_names_the_option(asked, file, flag):
    with pytest.raises(ModelError) as error:
        load_weights(build_generator(asked), build_generator(file).state_dict())
    message = str(error.value)
    assert flag in message and "\n" not in message
    others = {"--netG", "--norm", "--ngf", "--no-dropout"} - {flag}
    assert not any(other + " (" in message for other in others), message


def test_non_tensor_values_are_refused():
    net = build_generator(small("resnet_6blocks", "instance"))
    with pytest.raises(ModelError, match="not a tensor"):
        load_weights(net, dict(net.state_dict(), epoch=3))


@pytest.mark.parametrize("netG, norm", [("unet_256", "batch"), ("resnet_6blocks", "batch"),
                                        ("resnet_6blocks", "instance")])
def test_per_image_statistics_do_not_depend_on_the_batch(netG, norm):
    net = perturbed(small(netG, norm))
    net.use_image_statistics(True)
    images = torch.rand(3, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        together = net(images)
        alone = torch.cat([net(images[i:i + 1]) for i in range(3)])
        net.use_image_statistics(False)
        running = net(images)
    assert (together - alone).abs().max() < 1e-5
    if norm == "batch":
        assert (together - running).abs().max() > 0.05  # the two BatchNorm modes really differ


def test_per_image_statistics_equal_official_train_mode_batchnorm_on_one_image():
    net = perturbed(small("unet_256", "batch"))
    reference = perturbed(small("unet_256", "batch"))
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    net.use_image_statistics(True)
    with torch.no_grad():
        ours = net(image)
        reference.train()  # the official test mode: BatchNorm on the batch's statistics (no dropout here)
        official = reference(image)
    assert (ours - official).abs().max() < 1e-5


def test_dropout_masks_reach_every_dropout_layer():
    net = perturbed(small("unet_256", "batch", dropout=True))
    layers = net.dropout_layers()
    assert len(layers) == 3
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    ones = [torch.ones(1, *layer.mask_shape(256, 256)) for layer in layers]
    with torch.no_grad():
        plain = net(image)
        assert torch.equal(net(image, *ones), plain)
        zeroed = [torch.zeros_like(mask) for mask in ones]
        assert (net(image, *zeroed) - plain).abs().max() > 1e-3
        assert all(layer.mask is None for layer in layers)  # masks live for one call only
