"""fp16 ONNX graphs, two ways, against the fp32 torch output: onnxconverter-common's convert_float_to_float16
(keep_io_types=True) of the fp32 graph, and imgforge's export of a half copy of the network with float32
inputs and outputs (`imgforge export --precision fp16`). Networks and inputs: the conformance fixtures.
Runs on ONNX Runtime's CPU provider (pass --device cuda with onnxruntime-gpu for the GPU kernels).

    python benchmarks/onnx_fp16.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from conformance_checks.common import load_fixture  # noqa: E402
from conformance_checks.ddpm import unet_of  # noqa: E402
from conformance_checks.oldphoto import _split  # noqa: E402
from conformance_checks.pix2pix import build_generator_of  # noqa: E402

from imgforge.onnx.export import export_graph  # noqa: E402
from imgforge.nets import registry  # noqa: E402
from imgforge.onnx.session import OnnxRunner  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "tests" / "fixtures" / "conformance"


def cases():
    """(label, Export, inputs) for every network kind of the fixtures."""
    def config(name):
        return json.loads((FIXTURES / name / "config.json").read_text())

    def family(name):
        return registry.get_family(name)

    net, io = build_generator_of(FIXTURES / "cyclegan_resnet9_eval", config("cyclegan_resnet9_eval"))
    yield "pix2pix resnet (eval)", family("pix2pix_resnet").describe(net, mode="eval").exports[0], (io["input"],)
    net, io = build_generator_of(FIXTURES / "pix2pix_unet256_testmode", config("pix2pix_unet256_testmode"))
    yield ("pix2pix unet (no-dropout)", family("pix2pix_unet").describe(net, mode="no-dropout").exports[0],
           (io["input"],))
    unet, io = unet_of(FIXTURES / "ddpm_unet_cifar_tiny", config("ddpm_unet_cifar_tiny"))
    yield "ddpm unet", family("ddpm_unet").describe(unet).exports[0], (io["sample"], io["timestep"].float())
    weights, io = load_fixture(FIXTURES / "oldphoto_scratch_unet")
    yield "oldphoto detector", family("oldphoto_detector").describe(registry.load(weights)[0]).exports[0], (io["input"],)
    weights, io = load_fixture(FIXTURES / "oldphoto_scratch_chain")
    vae_a, mapping, vae_b = (registry.load(_split(weights, prefix), "oldphoto")[0]
                             for prefix in ("vae_a.", "mapping.", "vae_b."))
    yield "oldphoto vae encoder", family("oldphoto_vae").describe(vae_a).exports[0], (io["input"],)
    yield "oldphoto scratch mapping", family("oldphoto_mapping").describe(mapping).exports[0], (io["latent"], io["mask"])
    yield "oldphoto vae decoder", family("oldphoto_vae").describe(vae_b).exports[1], (io["latent_mapped"],)


def converted(export, path: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    export_graph(export, path, precision="fp32")
    onnx.save(float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def difference(path: Path, device: torch.device, inputs, expected: torch.Tensor) -> str:
    try:
        got = OnnxRunner(path, device)(*inputs).cpu()
    except Exception as exc:  # onnxruntime refuses some converted graphs
        reason = " ".join(str(exc).split("failed:")[-1].split())
        return f"fails to load ({reason[:60]})"
    error = (got - expected).abs()
    return f"max {error.max().item():.3g}, mean {error.mean().item():.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    device = torch.device(parser.parse_args().device)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        for label, export, inputs in cases():
            with torch.no_grad():
                expected = export.module(*inputs)
            converter, half = Path(tmp, "converted.onnx"), Path(tmp, "half.onnx")
            converted(export, converter)
            export_graph(export, half, precision="fp16")
            print(f"{label:26s} converter: {difference(converter, device, inputs, expected):40s} "
                  f"half export: {difference(half, device, inputs, expected)}", flush=True)


if __name__ == "__main__":
    main()
