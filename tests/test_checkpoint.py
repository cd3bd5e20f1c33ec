"""checkpoint.load_state_dict: safetensors, torch pickles with weights_only, and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from imgforge.checkpoint import load_state_dict
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
