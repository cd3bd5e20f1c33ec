"""imgforge.pipelines.restore: the official pre/post-processing rules, stage wiring, sizes, grey/alpha/metadata.

Networks are tiny random copies of the official architectures (the manifest's `config` table shrinks them);
weights are read from a --weights-dir laid out like the official Global/checkpoints folder, so no download
happens here (tests/test_restore_cli.py covers the downloads)."""

from __future__ import annotations

import functools
import json
import io
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from imgforge.errors import ImgforgeError, InputError, ModelError
from imgforge.imageio import Picture, binary_mask
from imgforge.nets.face_spade import build_face_generator
from imgforge.nets.mapping import build_mapping
from imgforge.nets.scratch_unet import build_scratch_detector
from imgforge.nets.vae import build_vae
from imgforge.pipelines import restore as pipeline
from imgforge.plan import RunPlan

TINY_CONFIG = {"detector": {"wf": 2}, "vae": {"ngf": 16}, "mapping": {"mc": 128, "n_blocks": 1}}
# the HR mapping has a fixed number of blocks
TINY_CONFIG_TOML = ("config = {{ detector = {{ wf = 2 }}, vae_a = {{ ngf = 16 }}, vae_b = {{ ngf = 16 }}, "
                    "mapping = {{ mc = 128{blocks} }} }}")
ZIP_URL = "https://github.com/microsoft/Bringing-Old-Photos-Back-to-Life/releases/download/v1.0/global_checkpoints.zip"

# official checkpoint layout (Global/checkpoints/...) -> what the file holds
CHECKPOINT_FILES = {
    "detection/FT_Epoch_latest.pt": "detector",
    "restoration/VAE_A_quality/latest_net_G.pth": "vae_a",
    "restoration/VAE_B_quality/latest_net_G.pth": "vae_b_quality",
    "restoration/VAE_B_scratch/latest_net_G.pth": "vae_b_scratch",
    "restoration/mapping_quality/latest_net_mapping_net.pth": "mapping_quality",
    "restoration/mapping_scratch/latest_net_mapping_net.pth": "mapping_scratch",
    "restoration/mapping_Patch_Attention/latest_net_mapping_net.pth": "mapping_hr",
    # the face stage: tiny generators in the official Face_Enhancement layout, and the real YuNet model
    "Face_Enhancement/checkpoints/Setting_9_epoch_100/latest_net_G.pth": "face_256",
    "Face_Enhancement/checkpoints/FaceSR_512/latest_net_G.pth": "face_512",
    "face_detection_yunet_2023mar.onnx": "yunet",
}
FACE_NGF = 1
YUNET_MODEL = Path(__file__).parent / "data" / "face_detection_yunet_2023mar.onnx"


def _perturbed(net: torch.nn.Module, generator: torch.Generator) -> dict:
    """Random weights nudged so that nothing is trivially zero; the detector's last bias is lowered so that
    only part of the image counts as scratched."""
    state = {}
    for key, value in net.state_dict().items():
        if value.is_floating_point() and "running_var" not in key and "filt" not in key:
            value = value + 0.05 * torch.randn(value.shape, generator=generator)
        state[key] = value
    return state


def _calibrated_detector(net: torch.nn.Module, state: dict) -> dict:
    """Shift the last bias so that about 15% of a photo's pixels reach the 0.4 threshold (random weights
    alone give all or nothing)."""
    net.load_state_dict(state)
    grey = cv2.cvtColor(scratched_photo(256, 256), cv2.COLOR_RGB2GRAY)
    with torch.inference_mode():
        logits = net.eval()(torch.from_numpy(grey).float()[None, None] / 127.5 - 1)
    shift = math.log(0.4 / 0.6) - float(logits.quantile(0.85))
    return {**state, "last.1.bias": state["last.1.bias"] + shift}


@functools.lru_cache(maxsize=1)  # shared by both restore test modules
def tiny_checkpoints() -> dict[str, bytes]:
    """Official-layout relative path -> torch.save bytes of a tiny network (detector under "model_state")."""
    generator = torch.Generator().manual_seed(0)
    nets = {
        "detector": build_scratch_detector(**TINY_CONFIG["detector"]),
        "vae_a": build_vae(**TINY_CONFIG["vae"]),
        "vae_b_quality": build_vae(**TINY_CONFIG["vae"]),
        "vae_b_scratch": build_vae(**TINY_CONFIG["vae"]),
        "mapping_quality": build_mapping("quality", **TINY_CONFIG["mapping"]),
        "mapping_scratch": build_mapping("scratch", **TINY_CONFIG["mapping"]),
        "mapping_hr": build_mapping("hr", mc=TINY_CONFIG["mapping"]["mc"]),
        "face_256": build_face_generator(ngf=FACE_NGF),
        "face_512": build_face_generator(ngf=FACE_NGF),
    }
    states = {name: _perturbed(net, generator) for name, net in nets.items()}
    states["detector"] = {"model_state": _calibrated_detector(nets["detector"], states["detector"])}
    out = {"face_detection_yunet_2023mar.onnx": YUNET_MODEL.read_bytes()}
    for path, name in CHECKPOINT_FILES.items():
        if name == "yunet":
            continue
        buffer = io.BytesIO()
        torch.save(states[name], buffer)
        out[path] = buffer.getvalue()
    return out


# The shipped manifest's arch and networks of each model: the part of each VAE a restoration runs, the face
# generators' size; the face detector is a file read as it is.
NETWORKS = {"detector": '{ family = "oldphoto_detector" }', "vae_a": '{ family = "oldphoto_vae", parts = ["encoder"] }',
            "mapping": '{ family = "oldphoto_mapping" }', "vae_b": '{ family = "oldphoto_vae", parts = ["decoder"] }'}
FACE_MODELS = {f"face-enhance-{size}": ("face_spade", f'networks.generator = {{ family = "face_spade", settings = '
                                                      f'{{ size = {size} }} }}') for size in (256, 512)}
FACE_MODELS["face-detect-yunet"] = ("yunet", "networks = {}")


def manifest_tables(sources: dict[str, str]) -> str:
    """The three oldphoto models with tiny configs and the face-stage models (tiny generators, the real
    YuNet); `sources` maps an official-layout path to its inline table (a Hub or URL source)."""

    def model(name: str, files: dict[str, str]) -> str:
        if name.startswith("oldphoto"):
            arch, networks = "oldphoto", [f"networks.{role} = {NETWORKS[role]}" for role in files]
            config = TINY_CONFIG_TOML.format(blocks="" if name == "oldphoto-hr" else ", n_blocks = 1")
        else:
            (arch, line), config = FACE_MODELS[name], ""
            networks = [line]
        lines = [f"[models.{name}]", 'task = "restore"', f'arch = "{arch}"', 'description = "tiny"', config]
        lines += [f"files.{role} = {sources[path]}" for role, path in files.items()]
        return "\n".join(lines + networks) + "\n"

    return "\n".join([
        model("oldphoto-quality", {"vae_a": "restoration/VAE_A_quality/latest_net_G.pth",
                                   "mapping": "restoration/mapping_quality/latest_net_mapping_net.pth",
                                   "vae_b": "restoration/VAE_B_quality/latest_net_G.pth"}),
        model("oldphoto-scratch", {"detector": "detection/FT_Epoch_latest.pt",
                                   "vae_a": "restoration/VAE_A_quality/latest_net_G.pth",
                                   "mapping": "restoration/mapping_scratch/latest_net_mapping_net.pth",
                                   "vae_b": "restoration/VAE_B_scratch/latest_net_G.pth"}),
        model("oldphoto-hr", {"detector": "detection/FT_Epoch_latest.pt",
                              "vae_a": "restoration/VAE_A_quality/latest_net_G.pth",
                              "mapping": "restoration/mapping_Patch_Attention/latest_net_mapping_net.pth",
                              "vae_b": "restoration/VAE_B_scratch/latest_net_G.pth"}),
        model("face-enhance-256", {"generator": "Face_Enhancement/checkpoints/Setting_9_epoch_100/latest_net_G.pth"}),
        model("face-enhance-512", {"generator": "Face_Enhancement/checkpoints/FaceSR_512/latest_net_G.pth"}),
        model("face-detect-yunet", {"model": "face_detection_yunet_2023mar.onnx"}),
    ])


def official_sources(zipped: set[str]) -> dict[str, str]:
    """Hub sources for the Hub copies, members of the release zip for `zipped` paths (as the real manifest)."""
    return {path: (f'{{ urls = ["{ZIP_URL}"], member = "checkpoints/{path}" }}' if path in zipped
                   else f'{{ hub = "leonelhs/zeroscratches", path = "{path}" }}')
            for path in CHECKPOINT_FILES}


ZIPPED = {"restoration/VAE_B_quality/latest_net_G.pth", "restoration/mapping_quality/latest_net_mapping_net.pth",
          "restoration/mapping_scratch/latest_net_mapping_net.pth"}


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, bytes]:
    return tiny_checkpoints()


@pytest.fixture
def weights_dir(tmp_path, checkpoints, write_manifest, monkeypatch):
    """A Global/ folder holding checkpoints/ as the official release unpacks, and the tiny manifest."""
    monkeypatch.delenv("IMGFORGE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may download
    root = tmp_path / "Global" / "checkpoints"
    for path, data in checkpoints.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    write_manifest(tmp_path, manifest_tables(official_sources(ZIPPED)))
    return root


def scratched_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """skimage's astronaut (NASA, public domain) resized, with white scratches drawn on it."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x0, x1 = rng.integers(0, width, 2)
        cv2.line(photo, (int(x0), 0), (int(x1), height - 1), (250, 250, 245), 1)
    return photo


# -- the official size and value rules ------------------------------------------------------------------------


def test_rounded_size_follows_python_round_like_the_official_code():
    for width, height in [(40, 24), (100, 150), (113, 75), (257, 511)]:
        for multiple in (4, 16):
            expected = (int(round(width / multiple) * multiple), int(round(height / multiple) * multiple))
            assert pipeline._rounded_size(width, height, multiple, False) == expected
    assert pipeline._rounded_size(40, 24, 16, False) == (32, 32)  # 2.5 -> 2 and 1.5 -> 2: halves to even


def test_scale_mode_puts_the_shorter_side_at_256():
    width, height = pipeline._rounded_size(300, 451, 4, True)
    assert width == 256 and height == int(round(451 / 300 * 256 / 4) * 4)
    width, height = pipeline._rounded_size(451, 300, 16, True)
    assert height == 256 and width % 16 == 0


def test_detection_size_short_side_256_in_multiples_of_16():
    for height, width in [(96, 144), (512, 512), (1200, 800)]:
        size = pipeline._detection_size(height, width)
        assert min(size) == 256 and all(side % 16 == 0 for side in size)
        assert math.isclose(size[0] / size[1], height / width, rel_tol=0.1)


def test_too_small_images_are_refused():
    with pytest.raises(InputError, match="too narrow"):
        pipeline._rounded_size(400, 7, 16, False)


def test_stretch_maps_the_whole_image_min_to_0_and_max_to_255():
    generator = torch.Generator().manual_seed(1)
    values = 0.2 + 0.5 * torch.rand(1, 3, 8, 8, generator=generator)
    stretched = pipeline._to_uint8(values, stretch=True).astype(np.float64)
    assert stretched.min() == 0 and stretched.max() == 255
    low, high = float(values.min()), float(values.max())
    expected = np.floor((values[0].permute(1, 2, 0).numpy() - low) / (high - low) * 255 + 0.5)
    assert np.abs(stretched - expected).max() <= 1  # float32 vs float64 at the .5 boundaries
    plain = pipeline._to_uint8(values, stretch=False)
    assert np.array_equal(plain, np.floor(values[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


def test_stretch_of_a_flat_image_does_not_divide_by_zero():
    assert not pipeline._to_uint8(torch.full((1, 3, 4, 4), 0.3), stretch=True).any()


def test_mask_array_reads_white_as_scratch():
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    assert binary_mask(grey).tolist() == [[False, False], [True, True]]
    assert binary_mask(np.array([[0.2, 0.7]])).tolist() == [[False, True]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = 255
    assert binary_mask(rgb).tolist() == [[True, False], [False, False]]


def test_settings_refuse_scratch_options_without_scratches():
    for kwargs in ({"hr": True}, {"mask_dilation": 2}):
        with pytest.raises(ImgforgeError, match="--no-scratches"):
            pipeline.Settings(scratches=False, **kwargs).check()
    with pytest.raises(ImgforgeError, match="--save-mask"):
        pipeline.Settings(scratches=False).check(save_mask=True)
    with pytest.raises(ImgforgeError, match="unknown mode"):
        pipeline.Settings(mode="crop").check()
    assert pipeline.Settings(hr=True).dilation == 3 and pipeline.Settings().dilation == 0
    assert pipeline.Settings(hr=True, mask_dilation=0).dilation == 0


# -- the stages, with tiny networks -----------------------------------------------------------------------------


def _plan(weights_dir, **options) -> RunPlan:
    return RunPlan.resolve(device="cpu", weights_dir=weights_dir, quiet=True, **options)


def test_detection_matches_the_official_steps(weights_dir):
    restorer = pipeline.Restorer(pipeline.Settings(), _plan(weights_dir))
    photo = scratched_photo(100, 150)
    work = restorer.prepare_scratch(pipeline.Work(photo))
    assert work.image.shape == (96, 144, 3)
    mask = restorer.detect_scratches(work).mask
    # detection.py, step by step: PIL bicubic to /16, "L", ToTensor, Normalize, bilinear to a short side of
    # 256, U-Net, sigmoid, nearest back, >= 0.4
    resized = Image.fromarray(photo).resize((144, 96), Image.BICUBIC)
    x = torch.from_numpy(np.array(resized.convert("L"))).float()[None, None] / 255
    x = (x - 0.5) / 0.5
    with torch.inference_mode():
        p = torch.sigmoid(restorer.run_network["detector"].module(F.interpolate(x, [256, 384], mode="bilinear")))
    expected = F.interpolate(p, [96, 144], mode="nearest")[0, 0] >= 0.4
    assert mask.dtype == bool and np.array_equal(mask, expected.numpy())
    assert 0 < mask.mean() < 1


def test_scratches_are_painted_white_before_encoding(weights_dir, monkeypatch):
    restorer = pipeline.Restorer(pipeline.Settings(), _plan(weights_dir))
    seen = []
    encode = restorer.run_network["vae_a"]
    monkeypatch.setitem(restorer.run_network, "vae_a", lambda x, **options: seen.append(x.clone()) or encode(x))
    image = scratched_photo(64, 64)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 5:50] = True
    restorer.restore_global(pipeline.Work(image, mask))
    x = seen[0][0].permute(1, 2, 0).numpy()
    assert np.all(x[mask] == 1.0)  # 255 after Normalize(0.5, 0.5)
    assert np.allclose(x[~mask], image[~mask] / 255 * 2 - 1, atol=1e-6)


def test_dilation_grows_the_mask_by_3x3_steps(weights_dir):
    restorer = pipeline.Restorer(pipeline.Settings(mask_dilation=2), _plan(weights_dir))
    mask = np.zeros((16, 16), bool)
    mask[8, 8] = True
    grown = restorer.dilate(pipeline.Work(np.zeros((16, 16, 3), np.uint8), mask)).mask
    assert grown.sum() == 25 and grown[6:11, 6:11].all()


@pytest.mark.parametrize("scratches,hr,mode", [(True, False, "full"), (False, False, "full"),
                                               (False, False, "scale"), (True, True, "full")])
def test_output_has_the_input_size(weights_dir, scratches, hr, mode):
    photo = scratched_photo(75, 113)
    result = pipeline.restore_image(photo, scratches=scratches, hr=hr, mode=mode, device="cpu",
                                    weights_dir=weights_dir)
    assert result.pixels.shape == (75, 113, 3) and result.pixels.dtype == np.uint8
    assert (result.mask is not None) == scratches
    if scratches:
        assert result.mask.shape == (75, 113)


def test_given_mask_is_used_as_is(weights_dir):
    photo = scratched_photo(64, 96)
    mask = np.zeros((64, 96), np.uint8)
    mask[30:34, :] = 255
    result = pipeline.restore_image(photo, mask=mask, device="cpu", weights_dir=weights_dir)
    assert np.array_equal(result.mask, mask > 0)
    with pytest.raises(InputError, match="same size"):
        pipeline.restore_image(photo, mask=mask[:32], device="cpu", weights_dir=weights_dir)


def test_grey_stays_grey_and_alpha_is_kept(weights_dir):
    rgba = np.dstack([scratched_photo(48, 64), np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.uint8)])
    result = pipeline.restore_image(rgba, scratches=False, device="cpu", weights_dir=weights_dir)
    assert result.pixels.shape == (48, 64, 3) and np.array_equal(result.alpha, rgba[:, :, 3])
    grey = cv2.cvtColor(scratched_photo(48, 64), cv2.COLOR_RGB2GRAY)
    result = pipeline.restore_image(grey, device="cpu", weights_dir=weights_dir)
    assert result.pixels.shape == (48, 64, 1)


def test_metadata_is_carried_to_the_output_file(weights_dir, tmp_path):
    source = tmp_path / "scan.jpg"
    exif = Image.Exif()
    exif[0x010E] = "grandma, 1931"  # ImageDescription
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(scratched_photo(64, 80)).save(source, exif=exif.tobytes(), icc_profile=icc, quality=90)
    report = pipeline.restore(source, tmp_path / "fixed.png", device="cpu", weights_dir=weights_dir, quiet=True)
    assert report.done == 1 and not report.failed
    with Image.open(tmp_path / "fixed.png") as out:
        assert out.size == (80, 64)
        assert out.info.get("icc_profile") == icc
        assert out.getexif().get(0x010E) == "grandma, 1931"


@pytest.mark.parametrize("scratches, hr", [(True, False), (False, False), (True, True)])
def test_onnx_backend_restores_like_torch(weights_dir, tmp_path, monkeypatch, scratches, hr):
    """--backend onnx: the detector, VAE encoder, mapping (the HR patch attention too) and VAE decoder as ONNX
    Runtime graphs."""
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "cache"))
    photo = scratched_photo(96, 128)
    settings = pipeline.Settings(scratches=scratches, hr=hr, faces=False)
    torch_run = pipeline.Restorer(settings, _plan(weights_dir))
    onnx_run = pipeline.Restorer(settings, _plan(weights_dir, backend="onnx"))
    assert onnx_run.provider == "onnxruntime:CPUExecutionProvider" and torch_run.provider == "torch:cpu"
    picture = Picture.from_array(photo)
    expected, actual = torch_run.run(picture), onnx_run.run(picture)
    if scratches:
        assert np.array_equal(actual.mask, expected.mask)
    assert np.abs(actual.pixels.astype(int) - expected.pixels.astype(int)).max() <= 1
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == (4 if scratches else 3)


@pytest.mark.parametrize("hr", [False, True])
def test_bf16_keeps_the_fp32_mask_and_stays_near_the_fp32_output(weights_dir, hr):
    photo = scratched_photo(96, 128)
    results = {precision: pipeline.restore_image(photo, hr=hr, device="cpu", precision=precision,
                                                 weights_dir=weights_dir) for precision in ("fp32", "bf16")}
    assert np.array_equal(results["bf16"].mask, results["fp32"].mask) and results["fp32"].mask.any()
    # tiny random networks amplify rounding (rounding only their input to bf16 moves ~2 levels on average,
    # the weights ~4.5): a nearby picture, far closer than an unrelated one; full-size figures in docs/restore.md
    levels = np.abs(results["bf16"].pixels.astype(int) - results["fp32"].pixels.astype(int))
    unrelated = np.abs(results["fp32"].pixels.astype(int) - results["fp32"].pixels[::-1].astype(int))
    assert 0 < levels.mean() < unrelated.mean() / 2


def test_reduced_precision_runs_networks_as_their_families_declare_on_copies(weights_dir):
    restorer = pipeline.Restorer(pipeline.Settings(), _plan(weights_dir, precision="bf16"))
    dtypes = {name: next(restorer.run_network[name].module.parameters()).dtype
              for name in ("detector", "vae_a", "mapping", "vae_b")}
    assert dtypes == {"detector": torch.float32, "vae_a": torch.bfloat16, "mapping": torch.bfloat16,
                      "vae_b": torch.bfloat16}
    mapping = restorer.run_network["mapping"].module
    assert mapping.NL.res_block[0].conv_block[1].weight.is_contiguous(memory_format=torch.channels_last)
    # the loaded networks themselves (what export traces) are untouched: float32, default layout
    assert all(next(network.module.parameters()).dtype == torch.float32 for network in restorer.networks)


def test_progress_within_a_photo_is_monotone_and_reaches_every_stage(weights_dir, monkeypatch):
    from imgforge.nets import nonlocal_attention
    from imgforge.progress import listening_within_item

    monkeypatch.setattr(nonlocal_attention, "QUERY_CHUNK_ROWS", 200)  # a 96x128 photo: 768 latent positions
    restorer = pipeline.Restorer(pipeline.Settings(), _plan(weights_dir))
    reports = []
    with listening_within_item(lambda fraction, stage: reports.append((fraction, stage))):
        restorer.run(Picture.from_array(scratched_photo(96, 128)))
    stages = [stage for _, stage in reports]
    begun = [stage for i, stage in enumerate(stages) if i == 0 or stage != stages[i - 1]]
    assert begun == ["detecting scratches", "encoding", "mapping", "mapping 1/4", "mapping 2/4", "mapping 3/4",
                     "mapping 4/4", "mapping", "decoding", "enhancing faces"]  # mapping: convolutions, attention
    decoding = [fraction for fraction, stage in reports if stage == "decoding"]
    assert len(decoding) > 3 and decoding[-1] > decoding[0]  # the decoder reports as its layers finish
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] < 1


def test_stage_shares_follow_the_measured_seconds():
    progress = pipeline.photo_progress(pipeline.Settings(faces=False), 512, 512)
    seconds = {"detecting scratches": pipeline.STAGE_SECONDS["detecting scratches"],
               "encoding": pipeline.STAGE_SECONDS["encoding"],
               "mapping": sum(pipeline.MAPPING_SECONDS["scratch"].values()),
               "decoding": pipeline.STAGE_SECONDS["decoding"]}
    assert progress.shares == pytest.approx({stage: value / sum(seconds.values()) for stage, value in seconds.items()})
    larger = pipeline.photo_progress(pipeline.Settings(faces=False), 1024, 1024)
    assert larger.shares["mapping"] > progress.shares["mapping"]  # the attention grows with the area squared


@pytest.mark.parametrize("change, error, message", [
    (("restoration/mapping_quality/latest_net_mapping_net.pth", "restoration/VAE_B_quality/latest_net_G.pth"),
     ModelError, "model 'oldphoto-quality', network mapping: the weights are oldphoto_vae weights, not oldphoto_mapping"),
    ((NETWORKS["vae_a"], '{ family = "oldphoto_vae" }'), ImgforgeError,
     "vae_a network has the parts encoder, decoder; its manifest table networks.vae_a must name the one"),
])
def test_the_manifest_says_what_each_network_is_and_runs(weights_dir, write_manifest, tmp_path, change, error,
                                                          message):
    """The restore model's networks come from its manifest table: a file of another family, or a VAE whose
    part is not named, is an error naming the model and the network."""
    write_manifest(tmp_path, manifest_tables(official_sources(ZIPPED)).replace(*change))
    with pytest.raises(error, match=message):
        pipeline.Restorer(pipeline.Settings(scratches=False, faces=False), _plan(weights_dir))


def test_restore_models_name_the_networks_the_restoration_composes(weights_dir):
    with pytest.raises(ImgforgeError, match="'face-enhance-256': a restore model has the networks mapping, vae_a, "
                                            r"vae_b \(and optionally detector\), not generator"):
        pipeline.load_model("face-enhance-256", device="cpu", weights_dir=weights_dir)


def test_export_of_a_restore_model_writes_its_four_graphs(weights_dir, tmp_path, monkeypatch):
    from imgforge.onnx.export import export_model

    report = export_model(tmp_path / "graphs", "oldphoto-scratch", weights_dir=weights_dir, quiet=True)
    assert sorted(path.name for path in report.graphs) == ["detector.onnx", "mapping.onnx", "vae_a_encoder.onnx",
                                                           "vae_b_decoder.onnx"]
    assert all(max(diffs) <= 1e-4 for diffs in report.differences.values())
    sidecar = json.loads((tmp_path / "graphs" / "mapping.json").read_text())
    assert [i["name"] for i in sidecar["inputs"]] == ["latent", "mask"] and sidecar["hyperparameters"]["kind"] == "scratch"
