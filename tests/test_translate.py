"""The translate pipeline in memory: official pre/post-processing, the three test-time modes, seeds and
batching, sizes, grey models, aligned pairs, loading a checkpoint with and without options, backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgforge.errors import ImgforgeError, ModelError
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from imgforge.pipelines.translate import (
    Translator,
    load_generator,
    split_aligned,
    tensor_to_uint8,
    translate_image,
)
from imgforge.plan import RunPlan


def tiny(netG="unet_256", norm="batch", dropout=True, ngf=4, seed=0, **channels):
    torch.manual_seed(seed)
    net = build_generator(GeneratorOptions(netG=netG, norm=norm, ngf=ngf, dropout=dropout, **channels))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        for name, buffer in net.named_buffers():  # running statistics unlike any image's own
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn_like(buffer) * 0.5)
            elif name.endswith("running_var"):
                buffer.copy_(0.2 + torch.rand_like(buffer))
    return net.eval()


def picture(height, width, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_tensor_to_uint8_truncates_like_tensor2im():
    values = torch.tensor([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0]).reshape(1, 1, 1, 6)
    expected = ((values.numpy().transpose(0, 2, 3, 1) + 1) / 2 * 255)  # 0, 0.1275, 127.5, 191.25, 254.87, 255
    assert tensor_to_uint8(values).ravel().tolist() == [0, 0, 127, 191, 254, 255]
    assert tensor_to_uint8(values).ravel().tolist() == np.floor(expected).ravel().astype(int).tolist()


def test_preprocessing_is_the_official_transform():
    image = Image.fromarray(picture(37, 53))
    prepared = Translator(tiny(), mode="eval").prepare(image)
    resized = np.asarray(image.resize((256, 256), Image.BICUBIC), dtype=np.float32)
    expected = (torch.from_numpy(resized).permute(2, 0, 1) / 255 - 0.5) / 0.5
    assert prepared.tensor.shape == (1, 3, 256, 256)
    assert torch.equal(prepared.tensor[0], expected)


def test_official_mode_is_reproducible_with_a_seed_and_batching_changes_nothing():
    net = tiny()
    images = [Image.fromarray(picture(64, 64, seed=i)) for i in range(3)]
    first = Translator(net, mode="official", seed=7)
    tensors = [first.prepare(image).tensor for image in images]
    together = first.run(tensors)
    alone = [Translator(net, mode="official", seed=7).run([t])[0] for t in tensors]
    for a, b in zip(together, alone):
        assert (a - b).abs().max() < 1e-5
    other_seed = Translator(net, mode="official", seed=8).run(tensors[:1])[0]
    assert (other_seed - together[0]).abs().max() > 1e-3


def test_the_three_modes_differ_and_only_official_uses_dropout():
    net = tiny()
    image = picture(32, 48)
    official = Translator(net, mode="official", seed=1)
    no_dropout = Translator(net, mode="no-dropout")
    evaluation = Translator(net, mode="eval")
    assert official.uses_dropout and not no_dropout.uses_dropout and not evaluation.uses_dropout
    results = [official(image), no_dropout(image), evaluation(image)]
    assert all(r.shape == (32, 48, 3) and r.dtype == np.uint8 for r in results)
    assert not np.array_equal(results[0], results[1]) and not np.array_equal(results[1], results[2])
    assert np.array_equal(no_dropout(image), results[1])  # deterministic without dropout


def test_no_dropout_equals_the_official_train_mode_with_dropout_layers_off():
    net = tiny()
    image = Image.fromarray(picture(40, 40))
    translator = Translator(net, mode="no-dropout")
    prepared = translator.prepare(image)
    ours = translator.run([prepared.tensor])[0]
    reference = tiny()
    reference.train()
    for module in reference.modules():
        if type(module).__name__ == "MaskedDropout":
            module.eval()
    with torch.no_grad():
        official = reference(prepared.tensor)
    assert (ours - official).abs().max() < 1e-5


def test_native_size_crops_resnet_outputs_back():
    net = tiny("resnet_6blocks", "instance", dropout=False)
    translator = Translator(net, mode="eval", size="native")
    image = picture(37, 53)
    prepared = translator.prepare(Image.fromarray(image))
    assert prepared.tensor.shape[-2:] == (40, 56)
    assert translator(image).shape == (37, 53, 3)


@pytest.mark.parametrize("netG, size, message", [
    ("unet_256", 300, "not a multiple of 256"),
    ("unet_256", "native", "needs a resnet generator"),
    ("resnet_6blocks", 66, "not a multiple of 4"),
    ("resnet_6blocks", "big", "number of pixels or 'native'"),
])
def test_bad_sizes_are_refused(netG, size, message):
    net = tiny(netG, "instance", dropout=False)
    with pytest.raises(ImgforgeError, match=message):
        Translator(net, size=size)


def test_other_processing_sizes_still_return_the_input_size():
    translator = Translator(tiny("unet_128", "batch", dropout=False), mode="eval", size=128)
    assert translator.prepare(Image.fromarray(picture(30, 70))).tensor.shape[-2:] == (128, 128)
    assert translator(picture(30, 70)).shape == (30, 70, 3)


def test_grey_models_read_and_write_grey():
    translator = Translator(tiny("resnet_6blocks", "instance", False, input_nc=1, output_nc=1), mode="eval")
    for image in (picture(20, 28, 1), picture(20, 28, 3), picture(20, 28, 4)):
        assert translator.prepare(Image.fromarray(image)).tensor.shape[1] == 1
        assert translator(image).shape == (20, 28, 1)


def test_aligned_pairs_are_split_as_the_official_loader_does():
    pair = Image.fromarray(picture(10, 21))
    a, b = split_aligned(pair, "AtoB")
    assert a.size == (10, 10) and b.size == (11, 10)
    assert np.array_equal(np.asarray(a), np.asarray(pair)[:, :10])
    source, target = split_aligned(pair, "BtoA")
    assert np.array_equal(np.asarray(source), np.asarray(b)) and np.array_equal(np.asarray(target), np.asarray(a))


def save(net, tmp_path, name="latest_net_G.pth"):
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path


def test_a_checkpoint_runs_without_options_and_options_override(tmp_path):
    path = save(tiny("resnet_9blocks", "instance", dropout=True), tmp_path)
    net = load_generator(checkpoint=path)
    assert net.options == GeneratorOptions("resnet_9blocks", "instance", 4, True)
    with pytest.raises(ModelError, match=r"--norm \(batch asked, instance in the file\)"):
        load_generator(checkpoint=path, norm="batch")
    with pytest.raises(ModelError, match="--no-dropout"):
        load_generator(checkpoint=path, dropout=False)


def test_unet_dropout_defaults_to_the_official_on_and_can_be_left_out(tmp_path):
    path = save(tiny("unet_256", "batch"), tmp_path)
    assert load_generator(checkpoint=path).options.dropout is True
    assert load_generator(checkpoint=path, dropout=False).dropout_layers() == []


def test_model_and_checkpoint_are_exclusive(tmp_path):
    with pytest.raises(ImgforgeError, match="not both"):
        load_generator("pix2pix-facades-label2photo", tmp_path / "x.pth")
    with pytest.raises(ImgforgeError, match="--checkpoint"):
        load_generator()


def test_translate_image_in_memory(tmp_path):
    path = save(tiny(), tmp_path)
    image = picture(33, 45)
    first = translate_image(image, checkpoint=path, seed=3)
    assert first.shape == (33, 45, 3) and first.dtype == np.uint8
    assert np.array_equal(translate_image(Image.fromarray(image), checkpoint=path, seed=3), first)
    floats = translate_image(image.astype(np.float32) / 255, checkpoint=path, mode="eval")
    assert np.array_equal(floats, translate_image(image, checkpoint=path, mode="eval"))


def test_onnx_backend_matches_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "cache"))
    net = tiny()
    images = [Image.fromarray(picture(64, 64, seed=i)) for i in range(2)]
    for mode in ("official", "eval"):
        torch_run = Translator(net, mode=mode, seed=5, plan=RunPlan.resolve(backend="torch"))
        onnx_run = Translator(net, mode=mode, seed=5, plan=RunPlan.resolve(backend="onnx"))
        tensors = [torch_run.prepare(image).tensor for image in images]
        expected = torch_run.run(tensors)
        actual = onnx_run.run(tensors)
        assert max((a - e).abs().max().item() for a, e in zip(actual, expected)) < 1e-4
    # the eval and the per-image-statistics graphs are cached apart
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def test_bf16_stays_close_to_fp32():
    net = tiny("resnet_6blocks", "instance", dropout=False)
    image = picture(32, 32)
    full = Translator(net, mode="eval")(image).astype(int)
    half = Translator(net, mode="eval", plan=RunPlan.resolve(precision="bf16"))(image).astype(int)
    assert np.abs(full - half).max() <= 8
