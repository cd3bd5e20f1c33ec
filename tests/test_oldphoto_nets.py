"""The "Bringing Old Photos Back to Life" networks: official key manifests, the bounded-memory attention
against the straightforward (positions x positions) formulation, and the HR patch attention against an
independent per-patch computation. Network outputs are covered by the conformance fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conformance_checks.common import TOLERANCE, load_fixture
from imgforge.errors import ModelError
from imgforge.nets import nonlocal_attention
from imgforge.nets import oldphoto_blocks as blocks
from imgforge.nets.mapping import build_mapping
from imgforge.nets.nonlocal_attention import PartialNonLocalBlock, PatchAttention, latent_validity, masked_attention
from imgforge.nets.scratch_unet import ScratchUNet, build_scratch_detector
from imgforge.nets.vae import GlobalGeneratorDCDCv2, build_vae

FIXTURES = Path(__file__).parent / "fixtures" / "conformance"
KEYS = FIXTURES / "keys"

# name of the key manifest, builder, parameter count from the official networks (shared/notes/oldphoto.md)
OFFICIAL = {
    "oldphoto_detection_unet_wf6": (ScratchUNet, 37_626_177),
    "oldphoto_vae_ngf64": (GlobalGeneratorDCDCv2, 872_131),
    "oldphoto_mapping_quality": (lambda: build_mapping("quality"), 36_135_232),
    "oldphoto_mapping_scratch": (lambda: build_mapping("scratch"), 51_344_704),
    "oldphoto_mapping_patch_attention_hr": (lambda: build_mapping("hr"), 73_904_448),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_full_size_state_dict_equals_official_manifest(name):
    build, parameter_count = OFFICIAL[name]
    with torch.device("meta"):
        net = build()
    expected = json.loads((KEYS / f"{name}.keys.json").read_text())
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == expected
    assert sum(p.numel() for p in net.parameters()) == parameter_count


def test_detector_unwraps_model_state_and_loads_strictly():
    source = ScratchUNet(wf=2)
    torch.nn.init.normal_(source.last[1].weight)
    net = build_scratch_detector({"model_state": source.state_dict()}, wf=2)
    assert torch.equal(net.last[1].weight, source.last[1].weight)
    assert not net.training
    with pytest.raises(ModelError, match="missing: last.1.bias"):
        build_scratch_detector({k: v for k, v in source.state_dict().items() if k != "last.1.bias"}, wf=2)


def test_vae_rejects_wrong_shapes_in_one_line():
    state = build_vae(mc=8, ngf=8).state_dict()
    with pytest.raises(ModelError, match="wrong shape") as err:
        build_vae(state)
    assert "\n" not in str(err.value)


def test_unknown_mapping_kind():
    with pytest.raises(ModelError, match="quality, scratch, hr"):
        build_mapping("sharpen")


def test_vae_shapes():
    vae = build_vae(ngf=8, mc=8)
    with torch.inference_mode():
        latent = vae.encode(torch.rand(2, 3, 32, 24) * 2 - 1)
        image = vae.decode(latent)
    assert latent.shape == (2, 8, 8, 6) and image.shape == (2, 3, 32, 24)
    assert image.abs().max() <= 1


# ---- the partial non-local attention --------------------------------------------------------------------

def straightforward_attention(queries, keys, values, valid):
    """The official formulation: the whole affinity matrix, softmax, mask, F.normalize(p=1), matmul."""
    affinity = F.softmax(queries @ keys.t(), dim=1)
    return F.normalize(valid[None, :] * affinity, p=1, dim=1) @ values


def _random_qkv(generator, positions=300, channels=16, scale=1.0):
    def draw(*shape):
        return torch.randn(*shape, generator=generator) * scale
    return draw(positions, channels), draw(positions, channels), draw(positions, channels)


MASKS = {
    "random": lambda g, n: (torch.rand(n, generator=g) > 0.3).float(),
    "no scratch": lambda g, n: torch.ones(n),
    "all scratch": lambda g, n: torch.zeros(n),
    "one usable key": lambda g, n: torch.nn.functional.one_hot(torch.tensor(7), n).float(),
}


@pytest.fixture(params=["fused", "explicit"])
def attention_path(request, monkeypatch):
    """The fused kernel (what runs on the CPU and most GPUs) and the explicit tiles it falls back to."""
    if request.param == "explicit":
        monkeypatch.setattr(nonlocal_attention, "FUSED_BACKENDS", [])  # no kernel allowed: the fallback runs
    return request.param


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("chunk_rows", [7, 300])
def test_masked_attention_equals_straightforward(mask_name, chunk_rows, attention_path):
    g = torch.Generator().manual_seed(chunk_rows)
    queries, keys, values = _random_qkv(g)
    valid = MASKS[mask_name](g, len(keys))
    expected = straightforward_attention(queries, keys, values, valid)
    actual = masked_attention(queries, keys, values, valid, chunk_bytes=chunk_rows * 4 * len(keys))
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)
    if mask_name == "all scratch":
        assert torch.equal(actual, torch.zeros_like(actual))


def test_masked_attention_keeps_the_official_eps_when_usable_keys_are_negligible(attention_path):
    # affinities of hundreds: the usable keys' softmax share underflows below 1e-12, where F.normalize
    # stops renormalising; a softmax restricted to usable keys would differ there.
    g = torch.Generator().manual_seed(5)
    queries, keys, values = _random_qkv(g, positions=64, channels=8, scale=6.0)
    valid = (torch.arange(64) % 5 == 0).float()
    expected = straightforward_attention(queries, keys, values, valid)
    actual = masked_attention(queries, keys, values, valid, chunk_bytes=16 * 4 * 64)
    share = (F.softmax(queries @ keys.t(), dim=1) * valid).sum(1)
    assert (share < 1e-12).any() and (share > 1e-3).any()
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_masked_attention_in_bfloat16_stays_near_float32():
    g = torch.Generator().manual_seed(2)
    queries, keys, values = _random_qkv(g, positions=256, channels=32, scale=0.5)
    valid = MASKS["random"](g, 256)
    expected = straightforward_attention(queries, keys, values, valid)
    actual = masked_attention(*(t.bfloat16() for t in (queries, keys, values)), valid)
    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected).abs().max() < 0.05 * expected.abs().max()


def straightforward_validity(mask, size):
    """The resize rule written out: unusable where a bilinear resize is positive or the nearest pixel is a scratch."""
    bilinear = F.interpolate(mask, size, mode="bilinear", align_corners=False)
    nearest = F.interpolate(mask, size, mode="nearest")
    return ((bilinear <= 0) & (nearest == 0)).float()


def test_partial_nonlocal_block_chunked_equals_straightforward(monkeypatch):
    monkeypatch.setattr(nonlocal_attention, "QUERY_CHUNK_ROWS", 10)
    g = torch.Generator().manual_seed(0)
    block = PartialNonLocalBlock(8, chunk_bytes=4 * 4 * 48)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(2, 8, 6, 8, generator=g)
    mask = (torch.rand(2, 1, 24, 32, generator=g) > 0.9).float()
    mask[1] = 0  # second image without scratches
    with torch.inference_mode():
        actual = block(x, mask)
        valid = straightforward_validity(mask, (6, 8))
        expected = []
        for i in range(2):
            rows = x[i].flatten(1)
            theta, phi, gx = (F.conv2d(x[i:i + 1], c.weight, c.bias)[0].flatten(1) for c in (block.theta, block.phi, block.g))
            y = straightforward_attention(theta.t(), phi.t(), gx.t(), valid[i].flatten()).t().reshape(1, 8, 6, 8)
            w_y = block.res_block(block.W(y))
            expected.append(valid[i] * rows.view(1, 8, 6, 8) + (1 - valid[i]) * w_y)
    assert torch.allclose(actual, torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert torch.equal(actual[1], x[1])  # no scratch: every position keeps its feature


# ---- HR patch attention (no conformance fixture: checked against a per-patch computation) ------------------

def per_patch_composition(x, mask, p):
    """Independent formulation of the official inference_forward composition for one image."""
    _, c, h, w = x.shape
    touched = F.interpolate(mask, (h, w), mode="bilinear", align_corners=False)
    touched = (touched > 0).float()
    rows, cols = h // p, w // p
    patches = [x[0, :, r * p:(r + 1) * p, q * p:(q + 1) * p] for r in range(rows) for q in range(cols)]
    scratched = [touched[0, 0, r * p:(r + 1) * p, q * p:(q + 1) * p].mean() > 0.6
                 for r in range(rows) for q in range(cols)]
    sources = [i for i, s in enumerate(scratched) if not s]
    out = torch.zeros_like(x)
    for i, patch in enumerate(patches):
        if scratched[i]:
            sims = torch.stack([F.cosine_similarity(patch.flatten(), patches[j].flatten(), dim=0, eps=1e-12)
                                for j in sources])
            patch = patches[sources[int(sims.argmax())]]
        r, q = divmod(i, cols)
        out[0, :, r * p:(r + 1) * p, q * p:(q + 1) * p] = patch
    return out, touched


@pytest.mark.parametrize("size", [(8, 12), (10, 13)])
def test_patch_attention_equals_per_patch_computation(size):
    g = torch.Generator().manual_seed(1)
    block = PatchAttention(4, patch_size=2, chunk_bytes=64)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    z = torch.randn(1, 4, *size, generator=g)
    mask = torch.zeros(1, 1, size[0] * 4, size[1] * 4)
    mask[..., 8:20, 4:30] = 1
    with torch.inference_mode():
        features = block.res_block(z)
        composed, touched = per_patch_composition(features, mask, 2)
        expected = block.F_Combine(torch.cat((z, composed, touched), 1))
        actual = block(z, mask)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_patch_attention_without_scratches_keeps_features():
    block = PatchAttention(4, patch_size=4)
    z = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 32, 32)
    with torch.inference_mode():
        expected = block.F_Combine(torch.cat((z, block.res_block(z), mask[..., :8, :8]), 1))
        assert torch.allclose(block(z, mask), expected, atol=1e-6)


def test_hr_mapping_runs_at_reduced_width():
    torch.manual_seed(0)
    net = build_mapping("hr", mc=128)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:40, :] = 1
    with torch.inference_mode():
        out = net(torch.randn(1, 64, 16, 16), mask)
    assert out.shape == (1, 64, 16, 16) and torch.isfinite(out).all()


def test_latent_validity_resize_rule():
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(2, 1, 40, 52, generator=g) > 0.97).float()
    assert torch.equal(latent_validity(mask, (10, 13)), straightforward_validity(mask, (10, 13)))


# ---- banded convolutions and the whole chain under tight memory settings -----------------------------------

@pytest.mark.parametrize("mode", ["reflect", "zeros"])
@pytest.mark.parametrize("kernel, stride, pad", [(3, 1, 1), (7, 1, 3), (4, 2, 1)])
def test_banded_conv_equals_padded_conv(monkeypatch, mode, kernel, stride, pad):
    monkeypatch.setattr(blocks, "BAND_ELEMENTS", 300)
    g = torch.Generator().manual_seed(kernel)
    conv = torch.nn.Conv2d(5, 4, kernel, stride)
    parts = [torch.randn(2, 3, 17, 11, generator=g), torch.randn(2, 2, 17, 11, generator=g)]
    padded = F.pad(torch.cat(parts, 1), (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
    expected = F.conv2d(padded, conv.weight, conv.bias, stride)
    with torch.inference_mode():
        actual = blocks.conv2d_banded(conv, parts, pad, mode)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_scratch_fixture_with_banded_convs_and_small_attention_chunks(monkeypatch):
    monkeypatch.setattr(blocks, "BAND_ELEMENTS", 4000)
    folder = FIXTURES / "oldphoto_scratch_chain"
    weights, io = load_fixture(folder)
    ref = json.loads((folder / "config.json").read_text())["reference"]
    vae_config = {k: ref["vae"][k] for k in ("ngf", "k_size", "n_downsampling")} | {"mc": ref["vae"]["opt"]["mc"]}
    strip = lambda prefix: {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}  # noqa: E731
    vae_a, vae_b = build_vae(strip("vae_a."), **vae_config), build_vae(strip("vae_b."), **vae_config)
    mapping = build_mapping("scratch", strip("mapping."), mc=ref["mapping"]["mc"],
                            n_blocks=ref["mapping"]["n_blocks"], chunk_bytes=3 * 4 * 256)
    with torch.inference_mode():  # each step from the reference's input, as the conformance check does
        latent = vae_a.encode(io["input"])
        mapped = mapping(io["latent"], io["mask"])
        output = vae_b.decode(io["latent_mapped"])
    for name, actual in (("latent", latent), ("latent_mapped", mapped), ("output", output)):
        assert (actual - io[name]).abs().max() <= TOLERANCE, name


@pytest.mark.parametrize("height", [9, 16])
def test_banded_transposed_conv_equals_whole(monkeypatch, height):
    monkeypatch.setattr(blocks, "BAND_ELEMENTS", 400)
    conv = torch.nn.ConvTranspose2d(3, 4, kernel_size=4, stride=2, padding=1)
    x = torch.randn(2, 3, height, 7)
    with torch.inference_mode():
        assert torch.allclose(blocks.conv_transpose2d_banded(conv, x), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("band_bytes", [2**22, 700])
def test_banded_instance_norm_equals_instance_norm(monkeypatch, channels_last, band_bytes):
    monkeypatch.setattr(blocks, "NORM_BAND_BYTES", band_bytes)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 23, 9, generator=g) * 3 + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.relu(F.instance_norm(x))
    actual = blocks.instance_norm_(x.clone(), relu=True)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert actual.is_contiguous(memory_format=torch.channels_last) == channels_last
    half = x.bfloat16()
    expected = F.relu(F.instance_norm(half.float()))
    half = blocks.instance_norm_(half, relu=True)  # statistics in float32: only the output is rounded
    assert (half.float() - expected).abs().max() <= 2**-8 * expected.abs().max()


def test_banded_conv_keeps_channels_last(monkeypatch):
    monkeypatch.setattr(blocks, "BAND_ELEMENTS", 300)
    conv = torch.nn.Conv2d(4, 5, 3)
    x = torch.randn(1, 4, 15, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        actual = blocks.conv2d_banded(conv, x, 1, "reflect")
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(actual, conv(F.pad(x, (1,) * 4, mode="reflect")), rtol=1e-5, atol=1e-6)
