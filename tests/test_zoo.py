"""imgforge.zoo and imgforge.load_model: every zoo model's networks load by name through the registry, as the
manifest's `networks` tables say; a weights folder, a diffusers folder and a file load too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_sample_cli import TINY_UNET, tiny_weights, write_folder

import imgforge
from imgforge import zoo
from imgforge.checkpoint import load_state_dict
from imgforge.errors import ImgforgeError, ManifestError, ModelError, RunWideError, WeightsUnavailable
from imgforge.manifest import DEFAULT_MANIFEST, load_manifest
from imgforge.nets import registry
from imgforge.nets.ddpm_unet import DDPMUNet
from imgforge.nets.face_spade import FaceSPADEGenerator
from imgforge.nets.lpips_alex import LPIPSAlex
from imgforge.pipelines.restore import Restorer
from imgforge.pipelines.sample import DiffusionModel

SHIPPED = load_manifest(DEFAULT_MANIFEST)
# A small configuration of each family (Family.build) standing in for a zoo file.
TINY_CONFIGS = {
    "pix2pix_unet": {"netG": "unet_256", "ngf": 2, "dropout": True},
    "pix2pix_resnet": {"netG": "resnet_9blocks", "norm": "instance", "ngf": 2},
    "oldphoto_detector": {"wf": 1, "depth": 2},
    "oldphoto_vae": {"ngf": 4, "mc": 8},
    "face_spade": {"ngf": 1},
    "fid_inception": {"dims": 64},
    "lpips_alex": {},
}


def _tiny_state(model: str, family: str) -> dict:
    if family == "oldphoto_mapping":
        kind = "quality" if "quality" in model else "hr" if model.endswith("-hr") else "scratch"
        config = {"kind": kind, "mc": 8, **({} if kind == "hr" else {"n_blocks": 1})}
    else:
        config = TINY_CONFIGS[family]
    return registry.build(family, config).state_dict()


def write_zoo_files(name: str, folder: Path) -> Path:
    """The files of a shipped zoo model, tiny, at their manifest paths under `folder` (a weights folder)."""
    entry = SHIPPED[name]
    for spec in zoo.network_specs(entry).values():
        path = folder / entry.files[spec.file].path
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec.config_file is not None:
            (folder / entry.files[spec.config_file].path).write_text(json.dumps(TINY_UNET))
            (folder / entry.files["scheduler"].path).write_text(json.dumps({"num_train_timesteps": 1000}))
            state = tiny_weights()
        else:
            state = _tiny_state(name, spec.family)
        if spec.package_file is not None:  # the file holds what the package does not ship
            shipped = load_state_dict(zoo.package_file(entry, spec.package_file))
            state = {key: value for key, value in state.items() if key not in shipped}
        if path.suffix == ".safetensors":
            save_file(state, path)
        else:
            torch.save(state, path)
    return folder


@pytest.fixture
def shipped_manifest(monkeypatch):
    monkeypatch.delenv("IMGFORGE_MANIFEST", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", [name for name, entry in SHIPPED.items() if entry.networks != {}])
def test_every_zoo_model_loads_its_networks_by_name(name, tmp_path, shipped_manifest):
    """The shipped manifest names each model's networks; each loads through the registry as its family."""
    entry = SHIPPED[name]
    specs = zoo.network_specs(entry)
    assert specs, f"{name}: the manifest lists no networks (add networks.NAME tables, or networks = {{}})"
    # the manifest's config names the official ngf 64; the tiny files are ngf 2
    options = {net: {"ngf": 2} for net, spec in specs.items() if spec.family.startswith("pix2pix")}
    loaded = zoo.model_networks(name, weights_dir=write_zoo_files(name, tmp_path), quiet=True, options=options)
    assert [network.role for network in loaded] == list(specs)
    for network in loaded:
        spec = specs[network.role]
        assert spec.family in (network.family.name, network.family.arch)
        assert network.parts is None or {e.name for e in network.exports()} == set(network.parts)
        assert network.exports(), f"{name}: network {network.role} has nothing to export"


@pytest.mark.parametrize("name, expected", [
    ("face-enhance-256", FaceSPADEGenerator), ("ddpm-cifar10-32", DiffusionModel), ("oldphoto-hr", Restorer),
    ("cyclegan-horse2zebra", torch.nn.Module),
])
def test_load_model_by_name(name, expected, tmp_path, shipped_manifest):
    options = {"ngf": 2} if name.startswith("cyclegan") else {}
    loaded = imgforge.load_model(name, weights_dir=write_zoo_files(name, tmp_path), quiet=True, **options)
    assert isinstance(loaded, expected)
    if name == "face-enhance-256":
        assert not loaded.training and loaded.ngf == 1


def test_lpips_alex_is_torchvision_alexnet_with_the_lpips_package_linear_layers(tmp_path, shipped_manifest):
    """The backbone file as torchvision saves it (features and classifier), the linear layers the package's."""
    torch.manual_seed(0)
    backbone = {k: v for k, v in LPIPSAlex().state_dict().items() if k.startswith("features.")}
    backbone["classifier.6.weight"] = torch.zeros(1000, 4096)  # torchvision's; not part of LPIPS
    torch.save(backbone, tmp_path / SHIPPED["lpips-alex"].files["backbone"].path)
    net = imgforge.load_model("lpips-alex", weights_dir=tmp_path, quiet=True)
    assert isinstance(net, LPIPSAlex) and not net.training
    state = net.state_dict()
    linear = load_state_dict(zoo.package_file(SHIPPED["lpips-alex"], "lpips/weights/v0.1/alex.pth"))
    assert sorted(linear) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert all(torch.equal(state[k], v) for k, v in [*linear.items(), *backbone.items()] if k in state)


def test_a_package_file_of_a_missing_package_is_one_line(tmp_path, write_manifest, monkeypatch):
    torch.save(LPIPSAlex().state_dict(), tmp_path / "alex.pth")
    write_manifest(tmp_path, """
        [models.mine]
        task = "eval"
        arch = "lpips_alex"
        description = "d"
        files.backbone = { urls = ["https://example.org/alex.pth"] }
        networks.lpips = { file = "backbone", package_file = "no_such_package_here/weights/alex.pth" }
    """)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RunWideError, match="model 'mine' needs the no_such_package_here package, which ships "
                                           "weights/alex.pth: pip install no_such_package_here"):
        imgforge.load_model("mine", weights_dir=tmp_path, quiet=True)


def test_the_yunet_model_is_no_network(shipped_manifest):
    with pytest.raises(ModelError, match="face-detect-yunet.*no network imgforge builds"):
        imgforge.load_model("face-detect-yunet")


def test_load_model_of_folders_and_files(tmp_path):
    diffusers = write_folder(tmp_path / "ddpm")
    assert isinstance(imgforge.load_model(diffusers), DiffusionModel)
    assert isinstance(imgforge.load_model(str(diffusers)), DiffusionModel)
    pipeline = write_folder(tmp_path / "pipe", layout="pipeline")
    assert isinstance(imgforge.load_model(pipeline), DiffusionModel)
    torch.manual_seed(0)
    face = registry.build("face_spade", {"ngf": 1})
    torch.save(face.state_dict(), tmp_path / "face.pth")
    loaded = imgforge.load_model(tmp_path / "face.pth")
    assert isinstance(loaded, FaceSPADEGenerator) and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in face.state_dict().items())
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "restoration").mkdir(parents=True)
    torch.save(registry.build("oldphoto_vae", {"ngf": 4, "mc": 8}).state_dict(), checkpoints / "restoration" / "a.pth")
    torch.save({"step": torch.tensor(3)}, checkpoints / "optimizer.pth")  # no network: passed over in a folder
    (unet,) = zoo.path_networks(diffusers)
    assert (unet.role, unet.family.name) == ("unet", "ddpm_unet") and unet.module.config.sample_size == 8
    networks = {n.role: n for n in zoo.path_networks(checkpoints)}
    assert list(networks) == ["vae"] and networks["vae"].family.name == "oldphoto_vae"
    # every network below the folder, named after its file where several are of a kind
    assert set(imgforge.load_model(tmp_path)) == {"ddpm_diffusion_pytorch_model", "pipe_unet_diffusion_pytorch_model",
                                                  "face_generator", "vae"}


def test_a_manifest_network_of_the_wrong_family_is_named(tmp_path, write_manifest, monkeypatch):
    torch.save(registry.build("oldphoto_vae", {"ngf": 4, "mc": 8}).state_dict(), tmp_path / "g.pth")
    write_manifest(tmp_path, """
        [models.faces]
        task = "restore"
        arch = "face_spade"
        description = "d"
        files.generator = { urls = ["https://example.org/g.pth"] }
        networks.generator = { family = "face_spade" }
    """)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="model 'faces', network generator: the weights are oldphoto_vae"):
        imgforge.load_model("faces", weights_dir=tmp_path)
    with pytest.raises(ImgforgeError, match="loads as its networks: load_model takes offline=, weights_dir=, "
                                            "quiet= only, not device="):
        imgforge.load_model("faces", weights_dir=tmp_path, device="cpu")
    with pytest.raises(ModelError, match="no network unet; it has generator"):
        zoo.model_networks("faces", names=["unet"], weights_dir=tmp_path)


def test_without_a_networks_table_every_weights_file_is_a_network(tmp_path, write_manifest, monkeypatch):
    torch.save(DDPMUNet(TINY_UNET).state_dict(), tmp_path / "w.pth")
    (tmp_path / "c.json").write_text(json.dumps(TINY_UNET))
    write_manifest(tmp_path, """
        [models.m]
        task = "sample"
        arch = "ddpm_unet"
        description = "d"
        config = { norm_num_groups = 4 }
        files.weights = { urls = ["https://example.org/w.pth"] }
        files.config = { urls = ["https://example.org/c.json"] }
    """)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (network,) = zoo.model_networks("m", weights_dir=tmp_path)
    assert network.role == "weights" and network.module.config.block_out_channels == (8, 16)


def test_unknown_names_and_missing_paths():
    with pytest.raises(ManifestError, match="unknown model 'no-such-model'"):
        imgforge.load_model("no-such-model")
    with pytest.raises(ModelError, match="no such model, file or folder"):
        imgforge.load_model("./nowhere.pth")


# ---- from the hostile batch (issue 8): a user's restore model ------------------------------------------------------


def test_load_model_of_a_restore_model_from_a_user_manifest(tmp_path, monkeypatch, write_manifest):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    write_manifest(tmp_path, """
        [models.my-restore]
        task = "restore"
        arch = "oldphoto"
        description = "a restore model of my own"
        files.vae_a = { hub = "me/mine", path = "restoration/VAE_A_quality/latest_net_G.pth" }
        files.vae_b = { hub = "me/mine", path = "restoration/VAE_B_quality/latest_net_G.pth" }
        files.mapping = { hub = "me/mine", path = "restoration/mapping_quality/latest_net_mapping.pth" }
    """)
    with pytest.raises(WeightsUnavailable, match="of model 'my-restore' is not cached"):
        imgforge.load_model("my-restore")
