"""imgforge.nets.registry: every family recognises its own weights, reads its hyperparameters from the shapes,
rebuilds the same network, and names contradictions; `imgforge.load_model` and `models inspect` go through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import imgforge
from eval_oracles import keep_unit_scale_
from imgforge.cli import main
from imgforge.errors import ModelError
from imgforge.nets import registry
from imgforge.nets.ddpm_unet import DDPMUNet
from imgforge.nets.face_spade import build_face_generator
from imgforge.nets.fid_inception import FIDInception
from imgforge.nets.lpips_alex import LPIPSAlex
from imgforge.nets.mapping import build_mapping
from imgforge.nets.patchgan import DiscriminatorOptions, PatchDiscriminator
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from imgforge.nets.scratch_unet import build_scratch_detector
from imgforge.nets.vae import build_vae

KEYS = Path(__file__).parent / "fixtures" / "conformance" / "keys"
TINY_UNET = {"sample_size": 16, "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
             **{"flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "downsample_padding": 0,
                "attention_head_dim": None}}


def _tiny_networks() -> dict[str, tuple[torch.nn.Module, dict]]:
    """family -> (a small random network, the options the registry must read back)."""
    torch.manual_seed(0)
    return {
        "pix2pix_unet": (build_generator(GeneratorOptions("unet_128", "batch", 4, True, 1, 3)),
                         {"netG": "unet_128", "norm": "batch", "ngf": 4, "input_nc": 1, "output_nc": 3}),
        "pix2pix_resnet": (build_generator(GeneratorOptions("resnet_6blocks", "instance", 4, True)),
                           {"netG": "resnet_6blocks", "norm": "instance", "dropout": True}),
        "ddpm_unet": (DDPMUNet(TINY_UNET).eval(), {"block_out_channels": (8, 16), "layers_per_block": 1}),
        "oldphoto_detector": (build_scratch_detector(wf=2, depth=3), {"wf": 2, "depth": 3, "batch_norm": True}),
        "oldphoto_vae": (build_vae(ngf=16, mc=32), {"ngf": 16, "mc": 32, "n_downsampling": 3, "start_r": 1}),
        # mc below 128 has the official keys but cannot run (the last conv takes 128 channels, as officially)
        "oldphoto_mapping": (build_mapping("scratch", mc=128, n_blocks=1), {"kind": "scratch", "mc": 128,
                                                                           "n_blocks": 1}),
        "face_spade": (build_face_generator(ngf=2), {"ngf": 2}),
        "patchgan": (PatchDiscriminator(DiscriminatorOptions(6, 4, 2)).eval(), {"input_nc": 6, "ndf": 4, "n_layers": 2}),
        "lpips_alex": (LPIPSAlex().eval(), {}),  # one size only: full size, 2.5 M parameters
    }


def _full_size_fid_inception() -> tuple[torch.nn.Module, dict]:
    """The FID Inception has one size only (24 M parameters, built in a fraction of a second): the full-size
    network, with random weights that keep its activations at unit scale, so that its ONNX check compares
    numbers of that scale."""
    torch.manual_seed(0)
    return keep_unit_scale_(FIDInception()).eval(), {"dims": 2048}


# every family, for the tests that each family must pass (tests/test_families.py)
FAMILIES = [*_tiny_networks(), "fid_inception"]


def family_network(name: str) -> tuple[torch.nn.Module, dict]:
    """A network of the family `name` and the options the registry must read back from its weights."""
    return _full_size_fid_inception() if name == "fid_inception" else _tiny_networks()[name]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_detects_and_rebuilds_its_weights(name):
    net, expected = family_network(name)
    state = net.state_dict()
    overrides = {"norm_num_groups": 4} if name == "ddpm_unet" else {}  # GroupNorm groups leave no trace
    loaded, family = registry.load(state, **overrides)
    assert family.name == name and registry.detect(state) is family
    assert [f.name for f in registry.families().values() if f.detect(state)] == [name]  # whatever the order
    facts = family.describe(loaded)
    assert {key: facts.hyperparameters[key] for key in expected} == expected
    assert facts.parameters == sum(p.numel() for p in net.parameters())
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
    assert facts.exports and all(export.input_names and export.output_names for export in facts.exports)


@pytest.mark.parametrize("keys, family, expected", [
    ("pix2pix_unet256_ngf64_batch", "pix2pix_unet", {"netG": "unet_256", "ngf": 64, "norm": "batch"}),
    ("resnet6_ngf64_instance", "pix2pix_resnet", {"netG": "resnet_6blocks", "norm": "instance"}),
    ("cyclegan_resnet9_ngf64_instance", "pix2pix_resnet", {"netG": "resnet_9blocks"}),
    ("ddpm_cifar10_32", "ddpm_unet", {"block_out_channels": (128, 256, 256, 256)}),
    ("ddpm_256", "ddpm_unet", {"block_out_channels": (128, 128, 256, 256, 512, 512)}),
    ("oldphoto_detection_unet_wf6", "oldphoto_detector", {"wf": 6, "depth": 4, "conv_num": 2}),
    ("oldphoto_vae_ngf64", "oldphoto_vae", {"ngf": 64, "mc": 64, "spatio_size": 64}),
    ("oldphoto_mapping_quality", "oldphoto_mapping", {"kind": "quality", "mc": 512, "n_blocks": 6}),
    ("oldphoto_mapping_scratch", "oldphoto_mapping", {"kind": "scratch", "mc": 512, "n_blocks": 6}),
    ("oldphoto_mapping_patch_attention_hr", "oldphoto_mapping", {"kind": "hr", "mc": 512}),
    ("fid_inception_pt_2015_12_05", "fid_inception", {"dims": 2048}),
    ("lpips_alex_v0.1", "lpips_alex", {}),
])
def test_official_full_size_layouts(keys, family, expected):
    """The official checkpoints' key layouts are recognised and their options read (zero weights)."""
    layout = json.loads((KEYS / f"{keys}.keys.json").read_text())
    state = {k: torch.zeros(shape, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
             for k, shape in layout.items()}
    net, found = registry.load(state)
    assert found.name == family
    facts = found.describe(net)
    assert {key: facts.hyperparameters[key] for key in expected} == expected
    assert facts.parameters == sum(v.numel() for k, v in state.items() if "running" not in k and "batches" not in k
                                   and "filt" not in k)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_builds_a_fresh_network_from_its_hyperparameters(name):
    """build(describe(net).hyperparameters): the same keys and shapes, new random weights, training mode."""
    net, _ = family_network(name)
    family = registry.get_family(name)
    built = family.build(family.describe(net).hyperparameters)
    assert built.training and not any(p.is_meta for p in built.parameters())
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert family.describe(built).hyperparameters == family.describe(net).hyperparameters
    assert any(not torch.equal(built.state_dict()[k], v) for k, v in net.state_dict().items() if v.is_floating_point())


def test_pix2pix_build_is_the_official_initialisation():
    """init_weights(net, "normal", 0.02): conv weights N(0, 0.02) with zero biases, BatchNorm weights N(1, 0.02);
    seeded, the same numbers twice."""
    config = {"netG": "unet_256", "norm": "batch", "ngf": 8}
    torch.manual_seed(3)
    net = registry.build("pix2pix_unet", config)
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 registry.build("pix2pix_unet", config).state_dict().values()))
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.mean().item()) < 1e-3 and abs(weights.std().item() - 0.02) < 1e-3
    assert all(m.bias is None or not m.bias.any() for m in convs)
    gammas = torch.cat([m.weight for m in norms])
    assert abs(gammas.mean().item() - 1) < 0.01 and abs(gammas.std().item() - 0.02) < 0.005
    assert not torch.cat([m.bias for m in norms]).any()
    assert net.options == GeneratorOptions("unet_256", "batch", 8, False)


def test_build_from_a_diffusers_config_json():
    net = registry.build("ddpm_unet", {"_class_name": "UNet2DModel", **TINY_UNET})
    assert net.training and net(torch.zeros(1, 3, 16, 16), 5).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("name, config, message", [
    ("pix2pix_unet", {"netG": "resnet_9blocks"}, "pix2pix_unet config needs netG unet_128 or unet_256"),
    ("pix2pix_resnet", {"netG": "resnet_9blocks", "ndf": 64}, "unknown pix2pix_resnet hyperparameter.*ndf"),
    ("pix2pix_resnet", {"netG": "resnet_9blocks", "norm": "group"}, "unknown norm 'group'"),
    ("ddpm_unet", {"block_out_channels": [8], "attention": 1}, "unknown U-Net config field.*attention"),
    ("oldphoto_mapping", {"mc": 32}, "needs kind quality, scratch, hr"),
    ("oldphoto_vae", {"width": 3}, "unknown oldphoto_vae hyperparameter.*width.*it takes input_nc"),
    ("face_spade", ["ngf"], "must be a dict"),
])
def test_a_bad_build_config_is_a_one_line_error(name, config, message):
    with pytest.raises(ModelError, match=message):
        registry.build(name, config)


def test_contradicting_override_is_one_line_error():
    net, _ = _tiny_networks()["oldphoto_mapping"]
    with pytest.raises(ModelError, match="n_blocks 3 contradicts the weights.*n_blocks 1"):
        registry.load(net.state_dict(), n_blocks=3)
    generator, _ = _tiny_networks()["pix2pix_resnet"]
    with pytest.raises(ModelError, match="--netG"):
        registry.load(generator.state_dict(), netG="resnet_9blocks")


def test_wrong_arch_and_unknown_weights_name_the_families():
    net, _ = _tiny_networks()["oldphoto_vae"]
    with pytest.raises(ModelError, match="the weights are oldphoto_vae weights, not pix2pix"):
        registry.load(net.state_dict(), "pix2pix")
    with pytest.raises(ModelError, match="match no network family") as failure:
        registry.load({"encoder.weight": torch.zeros(2)})
    assert all(name in str(failure.value) for name in registry.families())
    with pytest.raises(ModelError, match="unknown architecture 'gan'"):
        registry.load(net.state_dict(), "gan")


def test_load_model_of_a_restore_model_outside_the_builtin_names(tmp_path, write_manifest, monkeypatch):
    """imgforge.load_model used to raise StopIteration for a restore model it did not know by name."""
    torch.manual_seed(0)
    files = {"vae_a": build_vae(ngf=16), "mapping": build_mapping("quality", mc=32, n_blocks=1),
             "vae_b": build_vae(ngf=16)}
    lines = ["[models.my-restorer]", 'task = "restore"', 'arch = "oldphoto"', 'description = "mine"']
    for role, net in files.items():
        torch.save(net.state_dict(), tmp_path / f"{role}.pth")
        lines.append(f'files.{role} = {{ urls = ["https://example.org/{role}.pth"] }}')
    lines += ['networks.vae_a = { parts = ["encoder"] }', "networks.mapping = {}", 'networks.vae_b = { parts = ["decoder"] }']
    write_manifest(tmp_path, "\n".join(lines) + "\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    restorer = imgforge.load_model("my-restorer", device="cpu", weights_dir=tmp_path, quiet=True)
    assert restorer.settings.kind == "quality" and "detector" not in restorer.run_network
    mapping = next(network.module for network in restorer.networks if network.role == "mapping")
    assert torch.equal(mapping.state_dict()["model.0.weight"], files["mapping"].state_dict()["model.0.weight"])


def test_models_inspect(tmp_path, write_manifest, capsys):
    from imgforge.hub import sha256_of

    generator, _ = _tiny_networks()["pix2pix_resnet"]
    path = tmp_path / "latest_net_G.pth"
    torch.save(generator.state_dict(), path)
    (tmp_path / "notes.pt").write_bytes(b"")  # not a network: skipped in a folder
    write_manifest(tmp_path, f'''
        [models.mine]
        task = "translate"
        arch = "pix2pix"
        description = "d"
        files.generator = {{ urls = ["https://example.org/g.pth"], sha256 = "{sha256_of(path)}" }}
        [models.same-layout]
        task = "translate"
        arch = "pix2pix"
        description = "d"
        config = {{ netG = "resnet_6blocks", norm = "instance", ngf = 4 }}
        files.generator = {{ urls = ["https://example.org/h.pth"] }}
        [models.other-layout]
        task = "translate"
        arch = "pix2pix"
        description = "d"
        config = {{ netG = "resnet_9blocks" }}
        files.generator = {{ urls = ["https://example.org/i.pth"] }}
    ''')
    assert main(["models", "inspect", str(tmp_path), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["family"] == "pix2pix_resnet" and record["hyperparameters"]["ngf"] == 4
    assert record["zoo_by_sha256"] == ["mine"] and record["zoo_by_layout"] == ["same-layout"]
    assert main(["models", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pix2pix_resnet" in out and "mine (sha256)" in out and "same-layout (layout)" in out
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "odd.pth")
    assert main(["models", "inspect", str(tmp_path / "odd.pth")]) == 1
    err = capsys.readouterr().err
    assert "no network family" in err and "ddpm_unet" in err and "\n" not in err.strip()


def test_detection_order_does_not_depend_on_import_order():
    """A broad detector imported first (the mapping network's) must not claim a PatchGAN's weights."""
    import subprocess
    import sys

    code = ("import imgforge.nets.mapping; from imgforge.nets import registry; "
            "from imgforge.nets.patchgan import PatchDiscriminator, DiscriminatorOptions; "
            "print(registry.detect(PatchDiscriminator(DiscriminatorOptions()).state_dict()).name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "patchgan"
