"""Training in several processes (torchrun, Ray Train; CPU, gloo) ends with the weights of one process, and a
run killed with SIGKILL resumes from its last save to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import free_ports, kill_when_written
from imgforge.checkpoint import load_state_dict
from imgforge.cli import main
from imgforge.train.api import train_pix2pix
from imgforge.train.state import load_training_state
from train_helpers import aligned_dataset

# batch norm in both networks: with global-batch statistics, 2 x 2 images train as 1 x 4 does
OPTIONS = dict(netG="resnet_6blocks", ngf=4, ndf=4, load_size=36, crop_size=32, epochs=1, epochs_decay=1,
               dropout=False, batch_size=4, loader_workers=0, quiet=True, log_every=1)
FLAGS = ["--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--load-size", "36", "--crop-size", "32",
         "--epochs", "1", "--epochs-decay", "1", "--no-dropout", "--batch-size", "4", "--loader-workers", "0",
         "--log-every", "1", "--quiet"]


def assert_same_weights(first, second, names=("G", "D"), tolerance: float = 1e-5) -> None:
    for name in names:
        a, b = load_state_dict(first / f"latest_net_{name}.pth"), load_state_dict(second / f"latest_net_{name}.pth")
        assert a.keys() == b.keys()
        worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        assert worst <= tolerance, f"{name}: {worst:.3g}"


@pytest.fixture
def reference(tmp_path):
    data = aligned_dataset(tmp_path / "data", count=8)
    train_pix2pix(data, tmp_path / "one", **OPTIONS)
    return data, tmp_path / "one"


@pytest.mark.slow
def test_torchrun_two_processes_train_as_one(tmp_path, reference):
    data, one = reference
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_ports(1)[0]), "-m", "imgforge", "train", "pix2pix", str(data), "-o",
               str(tmp_path / "two"), *FLAGS]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert load_training_state(tmp_path / "two")["processes"][1]["rng"]  # each process's state is saved
    assert_same_weights(one, tmp_path / "two")


@pytest.mark.slow
def test_ray_train_two_workers_train_as_one(tmp_path, reference, capsys, ray_address):
    pytest.importorskip("ray.train.torch")
    data, one = reference
    code = main(["train", "pix2pix", str(data), "-o", str(tmp_path / "two"), *FLAGS, "--engine", "ray",
                 "--workers", "2", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines if "losses" in line] == [1, 2, 3, 4]  # the workers' log, on the driver
    assert lines[-1]["summary"]["step"] == 4 and set(lines[-1]["summary"]["losses"]) == {"G_GAN", "G_L1", "D_real",
                                                                                          "D_fake"}
    assert_same_weights(one, tmp_path / "two")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(tmp_path, reference):
    data, one = reference
    command = [sys.executable, "-m", "imgforge", "train", "pix2pix", str(data), "-o", str(tmp_path / "run"), *FLAGS,
               "--save-every", "1", "--save-epoch-every", "1", "--batch-size", "1", "--epochs", "2"]
    uninterrupted = tmp_path / "whole"
    whole = subprocess.run([*command[:7], str(uninterrupted), *command[8:]], capture_output=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when_written(process, tmp_path / "run", "*_net_G.pth", 3, timeout=600)  # latest, 1_ and 2_: mid-run
    saved = load_training_state(tmp_path / "run")  # whole: written beside and renamed into place
    assert 0 < saved["step"] < saved["total_steps"]
    resumed = subprocess.run([*command, "--resume"], capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(uninterrupted, tmp_path / "run", tolerance=0.0)
    assert torch.equal(load_state_dict(uninterrupted / "2_net_G.pth")["model.1.weight"],
                       load_state_dict(tmp_path / "run" / "2_net_G.pth")["model.1.weight"])


def test_ray_train_at_an_address_where_nothing_answers_fails_in_one_line(tmp_path):
    pytest.importorskip("ray.train.torch")
    data = aligned_dataset(tmp_path / "data", count=2)
    # a process of its own: this one may have joined the tests' Ray already
    completed = subprocess.run([sys.executable, "-m", "imgforge", "train", "pix2pix", str(data), "-o",
                                str(tmp_path / "run"), *FLAGS, "--engine", "ray", "--ray-address",
                                f"127.0.0.1:{free_ports(1)[0]}"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    err = completed.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot connect to the Ray cluster at 127.0.0.1:"), err
