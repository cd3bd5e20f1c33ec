"""checkpoint.load_state_dict: safetensors, torch pickles with weights_only, and one-line refusals."""

from __future__ import annotations

import json
import os
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from helpers import make_image, stderr_lines
from imgforge.checkpoint import MAX_DEPTH, building, load_state_dict, tensors
from imgforge.cli import main
from imgforge.errors import ModelError


class NotATensor:
    """A class a weights_only unpickler must refuse to build."""


def _state() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(2, 3, 3, 3), "conv.bias": torch.arange(2.0)}


def _assert_same(loaded: dict, expected: dict) -> None:
    assert sorted(loaded) == sorted(expected)  # safetensors stores keys sorted
    for key, tensor in expected.items():
        assert loaded[key].device.type == "cpu" and torch.equal(loaded[key], tensor)


def test_safetensors(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), state)


@pytest.mark.parametrize("name, zipped", [("w.pth", True), ("w.pt", True), ("old.pth", False), ("w.bin", True)])
def test_torch_pickles(tmp_path, name, zipped):
    state = _state()
    torch.save(state, tmp_path / name, _use_new_zipfile_serialization=zipped)
    _assert_same(load_state_dict(tmp_path / name), state)


def test_nested_dict_is_returned_as_stored(tmp_path):
    state = _state()
    torch.save({"model_state": state, "epoch": 3}, tmp_path / "w.ckpt")
    loaded = load_state_dict(tmp_path / "w.ckpt")
    assert loaded["epoch"] == 3
    _assert_same(loaded["model_state"], state)


def test_pickle_with_a_custom_class_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1), "extra": NotATensor()}, tmp_path / "w.pth")
    with pytest.raises(ModelError) as error:
        load_state_dict(tmp_path / "w.pth")
    message = str(error.value)
    assert "without running pickled code" in message and "NotATensor" in message and "\n" not in message


def test_non_dict_is_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "w.pth")
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "w.pth")


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors", "old.pth"])
def test_truncated_files_are_one_line_errors(tmp_path, name):
    complete = tmp_path / ("full" + name)
    if name.endswith(".safetensors"):
        save_file(_state(), str(complete))
    else:
        torch.save(_state(), complete, _use_new_zipfile_serialization=not name.startswith("old"))
    data = complete.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) - 40])
    with pytest.raises(ModelError) as error:
        load_state_dict(tmp_path / name)
    assert "corrupt or truncated" in str(error.value) and "\n" not in str(error.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_state_dict(tmp_path / "nothing.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_state_dict(tmp_path / "empty.pth")


# -- hostile files (issue 16, item 13) --------------------------------------------------------------------------


def test_shared_children_are_visited_once_and_depth_is_bounded(tmp_path):
    nested = {"w": torch.zeros(2)}
    for _ in range(80):  # 2.5 KB on disk, 2^80 paths when walked naively
        nested = {"a": nested, "b": nested}
    torch.save(nested, tmp_path / "shared.pth")
    assert (tmp_path / "shared.pth").stat().st_size < 4096
    with pytest.raises(ModelError, match=f"deeper than {MAX_DEPTH} levels"):
        load_state_dict(tmp_path / "shared.pth")


def test_shared_children_within_the_depth_bound_are_walked_once():
    leaf = {"w": torch.zeros(2)}
    nested = {"a": leaf, "b": leaf}
    assert [key for key, _ in tensors(nested)] in (["a.w"], ["b.w"])


def test_records_declaring_more_bytes_than_the_file_holds_are_refused_before_reading(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "small.pth")
    source = zipfile.ZipFile(tmp_path / "small.pth")
    with zipfile.ZipFile(tmp_path / "zeros.pth", "w") as crafted:
        for info in source.infolist():
            if info.filename.endswith("data/0"):  # 64 MiB of zeros deflated into ~64 KB
                crafted.writestr(zipfile.ZipInfo(info.filename), bytes(64 << 20), zipfile.ZIP_DEFLATED)
            else:
                crafted.writestr(info, source.read(info))
    with pytest.raises(ModelError, match=r"declares \d+ bytes of records in a file of \d+ bytes"):
        load_state_dict(tmp_path / "zeros.pth")


def test_an_expanded_tensor_is_refused_with_its_shape(tmp_path):
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1).expand(20000, 3, 4, 4)}, tmp_path / "expanded.pth")
    with pytest.raises(ModelError, match="'conv.weight' of shape 20000×3×4×4 is stored as 1 value"):
        load_state_dict(tmp_path / "expanded.pth")


def test_out_of_memory_while_building_names_the_largest_tensor():
    state = {"small": torch.zeros(2), "nested": {"big": torch.zeros(20, 3, 4, 4)}}
    with pytest.raises(ModelError) as error, building(state, "w.pth"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 51 GB")
    assert "'nested.big' is 20×3×4×4" in str(error.value) and "--batch-size" not in str(error.value)
    with pytest.raises(ValueError), building(state, "w.pth"):  # anything else passes through
        raise ValueError("not about memory")


@pytest.mark.parametrize("data", [bytes(range(256)) * 8, b"\x80\x02h\x65", b"PK\x03\x04 broken"])
def test_random_bytes_are_called_corrupt(tmp_path, data):
    (tmp_path / "junk.pth").write_bytes(data)
    with pytest.raises(ModelError) as error:
        load_state_dict(tmp_path / "junk.pth")
    assert "corrupt" in str(error.value) and "besides tensors" not in str(error.value)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_is_not_a_regular_file(tmp_path, kind):
    path = tmp_path / "w.pth"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="not a regular file"):
        load_state_dict(path)


def test_non_finite_weights_are_refused_naming_the_tensor(here, capfd):
    weights = {"model.0.weight": torch.ones(2, 2), "model.1.bias": torch.tensor([0.0, float("nan")])}
    save_file(weights, str(here / "nan.safetensors"))
    torch.save({"state": {"w": torch.tensor([float("inf")])}}, here / "inf.pth")
    with pytest.raises(ModelError, match=r"nan.safetensors: tensor 'model.1.bias' holds NaN or infinite values"):
        load_state_dict(here / "nan.safetensors")
    with pytest.raises(ModelError, match=r"inf.pth: tensor 'state.w' holds NaN or infinite values"):
        load_state_dict(here / "inf.pth")
    make_image(here / "a.png")
    assert main(["translate", "a.png", "-o", "out", "--checkpoint", "nan.safetensors"]) == 1
    assert stderr_lines(capfd) == ["error: nan.safetensors: tensor 'model.1.bias' holds NaN or infinite values; "
                                   "the weights are damaged"]


def test_a_checkpoint_that_is_a_folder_is_called_one(here, capfd):
    make_image(here / "a.png")
    (here / "run" / "latest").mkdir(parents=True)
    assert main(["translate", "a.png", "-o", "out", "--checkpoint", "run/latest"]) == 1
    assert stderr_lines(capfd) == ["error: run/latest is a folder, not a weights file (give the .pth or "
                                   ".safetensors file inside it)"]


def test_models_inspect_reports_a_junk_file_in_a_folder_and_goes_on(tmp_path, capsys):
    from imgforge.nets.pix2pix import GeneratorOptions, build_generator

    torch.save(build_generator(GeneratorOptions(netG="unet_128", ngf=2)).state_dict(), tmp_path / "a_good.pth")
    (tmp_path / "b_junk.pth").write_bytes(b"\x80\x02h\x65")  # a pickle whose memo lookup fails (KeyError 101)
    (tmp_path / "c_random.pth").write_bytes(bytes(range(256)))
    assert main(["models", "inspect", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    (record,) = json.loads(captured.out)
    assert record["path"].endswith("a_good.pth") and record["family"] == "pix2pix_unet"
    assert "b_junk.pth (corrupt or truncated?)" in captured.err and "c_random.pth (corrupt" in captured.err
    assert "internal error" not in captured.err
