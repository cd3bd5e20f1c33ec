"""`imgforge export`: checked graphs with sidecars, from a checkpoint or a zoo model; fp16 graphs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from imgforge.cli import main
from imgforge.hub import sha256_of
from imgforge.nets.mapping import build_mapping
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from imgforge.nets.registry import get_family
from test_registry import FAMILIES, TINY_UNET, family_network
from test_sample_cli import write_folder
from test_zoo import write_zoo_files


def test_export_checkpoint_writes_checked_graph_and_sidecar(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "latest_net_G.pth"
    torch.save(build_generator(GeneratorOptions("unet_128", "batch", 4, True)).state_dict(), path)
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path / "out")]) == 0
    sidecar = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert sidecar["family"] == "pix2pix_unet" and sidecar["size_rule"] == {"multiple": 128, "min_side": 128}
    assert [i["name"] for i in sidecar["inputs"]] == ["input", "dropout0", "dropout1"]
    assert len(sidecar["check"]["sizes"]) == 2 and max(sidecar["check"]["max_abs_diff_vs_torch"]) <= 1e-4
    assert len(sidecar["source"]["sha256"]) == 64 and "per-image" in sidecar["test_time"]
    assert "generator.onnx" in capsys.readouterr().out


def test_fp16_export_keeps_float32_io(tmp_path):
    import onnx

    torch.manual_seed(0)
    path = tmp_path / "g.pth"
    torch.save(build_generator(GeneratorOptions("resnet_6blocks", "instance", 4)).state_dict(), path)
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path), "--precision", "fp16", "-q"]) == 0
    graph = onnx.load(str(tmp_path / "generator.onnx"))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)


@pytest.mark.parametrize("kind", ["scratch", "hr"])
def test_attention_mapping_graphs_loop_over_query_chunks(tmp_path, monkeypatch, kind):
    """The exported attention (scratch: partial non-local; hr: patch attention) is an ONNX Loop: one graph,
    bounded tiles, any size."""
    import onnx

    from imgforge.onnx.cache import cached_runner

    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr("imgforge.nets.oldphoto_onnx.AFFINITY_TILE_ELEMENTS", 2**12)  # ~10 loop iterations
    torch.manual_seed(0)
    mapping = build_mapping(kind, mc=128, **({"n_blocks": 1} if kind == "scratch" else {}))
    for parameter in mapping.parameters():
        parameter.data += 0.05 * torch.randn_like(parameter)
    (export,) = get_family("oldphoto_mapping").describe(mapping).exports
    runner = cached_runner(export, torch.device("cpu"))
    (graph,) = (tmp_path / "onnx").glob("*.onnx")
    assert "Loop" in {node.op_type for node in onnx.load(str(graph)).graph.node}
    for size in ((48, 64), (80, 96)):
        latent, mask = export.example_inputs(*size)
        if kind == "hr":  # the example has patches to fill and patches to fill from at the coarsest scale
            touched = torch.nn.functional.interpolate(mask, latent.shape[2:], mode="bilinear") > 0
            share = torch.nn.functional.avg_pool2d(touched.float(), 8)
            assert (share > 0.6).any() and (share <= 0.6).any()
        with torch.no_grad():
            expected = mapping(latent, mask)
        assert (runner(latent, mask) - expected).abs().max() < 1e-4


# the face graph is checked at 256 px; the FID Inception, full size (its only size), at 299 px
@pytest.mark.parametrize("family", [pytest.param(name, marks=pytest.mark.slow)
                                    if name in ("face_spade", "fid_inception") else name for name in FAMILIES])
def test_export_checkpoint_of_each_family(family, tmp_path):
    """`imgforge export --checkpoint FILE` for a file of every family: checked graphs, sidecars naming it."""
    net, _ = family_network(family)
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    if family == "ddpm_unet":  # GroupNorm groups leave no trace in the weights: a diffusers config.json says them
        (tmp_path / "config.json").write_text(json.dumps(TINY_UNET))
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    sidecars = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    exports = get_family(family).describe(net).exports
    assert len(sidecars) == len(exports) and all(s["family"] == family for s in sidecars)
    assert all((tmp_path / "out" / s["graph"]).is_file() for s in sidecars)


def test_export_a_diffusers_folder(tmp_path):
    """`--checkpoint FOLDER`: the folder `sample --model` takes exports its U-Net with its config.json."""
    folder = write_folder(tmp_path / "ddpm", layout="pipeline")
    assert main(["export", "--checkpoint", str(folder), "-o", str(tmp_path / "out"), "-q"]) == 0
    sidecar = json.loads((tmp_path / "out" / "unet.json").read_text())
    assert sidecar["family"] == "ddpm_unet" and sidecar["hyperparameters"]["norm_num_groups"] == 4


@pytest.mark.slow  # the face graph is checked at 256 px
def test_export_a_face_model_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGFORGE_MANIFEST", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = write_zoo_files("face-enhance-256", tmp_path / "weights")
    assert main(["export", "face-enhance-256", "-o", str(tmp_path / "out"), "--weights-dir", str(weights), "-q"]) == 0
    sidecar = json.loads((tmp_path / "out" / "generator_face_generator.json").read_text())
    assert sidecar["family"] == "face_spade" and sidecar["size_rule"] == {"multiple": 256, "min_side": 256}


# -- where export writes (issue 16, item 12) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "latest_net_G.pth"
    torch.save(build_generator(GeneratorOptions("unet_128", "batch", 2, True)).state_dict(), path)
    return path


def _left_behind(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob(".*")) if folder.exists() else []


@pytest.mark.parametrize("dangling", [False, True])
def test_export_never_writes_through_a_symlink(tiny_checkpoint, tmp_path, capfd, dangling):
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    victim = outside / "victim.json"
    if not dangling:
        victim.write_text("keep me")
    (out / "generator.json").symlink_to(Path("..") / "outside" / "victim.json")
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out), "-q"]) == 1
    err = capfd.readouterr().err.strip()
    assert "outside the output folder" in err and len(err.splitlines()) == 1
    assert (victim.read_text() == "keep me") if not dangling else not victim.exists()
    assert not (out / "generator.onnx").exists() and _left_behind(out) == []


def test_a_folder_in_the_way_is_one_line(tiny_checkpoint, tmp_path, capfd):
    (tmp_path / "out" / "generator.onnx").mkdir(parents=True)
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "-q"]) == 1
    err = capfd.readouterr().err.strip()
    assert "a folder is in the way" in err and len(err.splitlines()) == 1 and "internal error" not in err
    assert _left_behind(tmp_path / "out") == []


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tiny_checkpoint, tmp_path):
    import resource
    import subprocess
    import sys

    def small_files() -> None:  # ulimit -f 200: a write past 200 KB fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "imgforge", "export", "--checkpoint", str(tiny_checkpoint), "-o",
                           str(out), "-q"], capture_output=True, text=True, preexec_fn=small_files,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 1, done.stderr
    err = done.stderr.strip()
    assert "cannot write" in err and "File too large" in err and len(err.splitlines()) == 1
    assert not (out / "generator.onnx").exists() and _left_behind(out) == []


def test_a_read_only_output_folder_is_one_line(tiny_checkpoint, tmp_path, monkeypatch, capfd):
    import errno

    from imgforge import imageio

    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):  # as a read-only mount answers (root ignores a chmod)
        if Path(path).parent == out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(imageio.os, "open", read_only)
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(out), "-q"]) == 1
    err = capfd.readouterr().err.strip()
    assert "Read-only file system" in err and len(err.splitlines()) == 1 and "internal error" not in err
    assert list(out.iterdir()) == []


def test_export_quiet_prints_nothing_but_errors(tiny_checkpoint, tmp_path, capfd):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert capfd.readouterr() == ("", "")
    sidecar = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert sidecar["graph_sha256"] == sha256_of(tmp_path / "out" / "generator.onnx")


# -- the ONNX cache checks what it runs (issue 16, item 14) ------------------------------------------------------


def _generator_export(seed: int, netG: str = "unet_128"):
    torch.manual_seed(seed)
    net = build_generator(GeneratorOptions(netG, "instance", 2, False)).eval()
    return net, get_family("pix2pix_unet" if netG.startswith("unet") else "pix2pix_resnet").describe(net).exports[0]


@pytest.mark.parametrize("intruder", ["another network", "same network, other weights"])
def test_a_swapped_cached_graph_is_exported_again_before_it_runs(tmp_path, monkeypatch, intruder):
    from imgforge.onnx.cache import cached_runner

    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    net, export = _generator_export(0)
    cached_runner(export, torch.device("cpu"))
    (graph,) = (tmp_path / "onnx").glob("generator-*.onnx")
    other_net, other = _generator_export(1, "resnet_6blocks" if intruder == "another network" else "unet_128")
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "other"))
    cached_runner(other, torch.device("cpu"))
    (other_graph,) = (tmp_path / "other" / "onnx").glob("generator-*.onnx")
    graph.write_bytes(other_graph.read_bytes())  # the intruder under the first graph's name
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    runner = cached_runner(export, torch.device("cpu"))
    image = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert (runner(image) - net(image)).abs().max() < 1e-4
    assert sha256_of(graph) != sha256_of(other_graph)
    assert json.loads(graph.with_suffix(".json").read_text())["graph_sha256"] == sha256_of(graph)
