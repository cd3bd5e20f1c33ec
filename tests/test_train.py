"""The shared trainer (imgforge/train/trainer.py) through the GAN methods: the run folder, exact resume after
Ctrl-C, the batch plan, logging and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from imgforge.checkpoint import load_state_dict
from imgforge.cli import main
from imgforge.errors import ImgforgeError
from imgforge.imageio import read_image
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from imgforge.train import trainer
from imgforge.train.api import train_cyclegan, train_pix2pix
from imgforge.train.plan import BatchPlan
from train_helpers import TINY_GAN, aligned_dataset, unpaired_dataset


# --- the batch plan -------------------------------------------------------------------------------------------

def test_plan_shares_each_global_batch_among_processes_whatever_their_number():
    one = BatchPlan(10, 4, seed=3, steps=7)
    for world in (2, 4):
        plans = [BatchPlan(10, 4, seed=3, steps=7, world=world, rank=r) for r in range(world)]
        for step in range(7):
            assert sum((p.local_batch(step) for p in plans), []) == one.global_batch(step)


def test_plan_epochs_visit_every_sample_once_in_a_seeded_order():
    plan = BatchPlan(5, 2, seed=0, epochs=2)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6  # the last batch of an epoch holds one sample
    first = [i for s in range(3) for i, _ in plan.global_batch(s)]
    second = [i for s in range(3, 6) for i, _ in plan.global_batch(s)]
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    assert BatchPlan(5, 2, seed=0, epochs=2).global_batch(4) == plan.global_batch(4)
    assert BatchPlan(5, 2, seed=1, epochs=2).global_batch(0) != plan.global_batch(0)
    numbers = [k for s in range(6) for _, k in plan.global_batch(s)]
    assert numbers == list(range(10))  # every sample of the run has its own number (its random draws)


def test_plan_drops_a_last_batch_that_processes_cannot_share():
    assert BatchPlan(5, 2, seed=0, epochs=1, world=2).steps_per_epoch == 2
    with pytest.raises(ImgforgeError, match="split evenly"):
        BatchPlan(5, 3, seed=0, epochs=1, world=2)


def test_plan_resumes_with_the_batches_the_run_would_have_taken():
    plan = BatchPlan(7, 3, seed=5, steps=9)
    assert list(plan.batches(4)) == list(plan.batches(0))[4:]


# --- the run folder -------------------------------------------------------------------------------------------

def test_pix2pix_run_folder_is_the_official_layout(tmp_path):
    data = aligned_dataset(tmp_path / "data", count=2)
    run = tmp_path / "run"
    result = train_pix2pix(data, run, **TINY_GAN)
    assert result.step == 2 and set(result.losses) == {"G_GAN", "G_L1", "D_real", "D_fake"}
    for name in ("latest_net_G.pth", "latest_net_D.pth", "1_net_G.pth", "1_net_D.pth", "options.json", "log.jsonl",
                 "samples/epoch_001.png", "train_state/latest.pt"):
        assert (run / name).is_file(), name
    fresh = build_generator(GeneratorOptions("resnet_6blocks", "batch", 4, True)).state_dict()
    saved = load_state_dict(run / "latest_net_G.pth")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in fresh.items()}
    grid = read_image(run / "samples" / "epoch_001.png").pixels  # 2 rows of input | output | target, 4 px apart
    assert grid.shape == (2 * 32 + 4, 3 * 32 + 2 * 4, 3)
    options = json.loads((run / "options.json").read_text())
    assert options["method"] == "pix2pix" and options["options"]["lambda_l1"] == 100.0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "losses" in r] == [1, 2]


def test_a_finished_run_is_not_overwritten_and_resume_needs_the_same_options(tmp_path):
    data = aligned_dataset(tmp_path / "data", count=2)
    train_pix2pix(data, tmp_path / "run", **TINY_GAN)
    with pytest.raises(ImgforgeError, match="--resume"):
        train_pix2pix(data, tmp_path / "run", **TINY_GAN)
    with pytest.raises(ImgforgeError, match="lambda_l1"):
        train_pix2pix(data, tmp_path / "run", **dict(TINY_GAN, resume=True), lambda_l1=10.0)
    with pytest.raises(ImgforgeError, match="nothing to resume"):
        train_pix2pix(data, tmp_path / "other", **dict(TINY_GAN, resume=True))


class _PressedAfter:
    """Stands in for the Ctrl-C watcher: 'pressed' from the n-th step on."""

    steps = 2

    def __init__(self):
        self.reads = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @property
    def pressed(self) -> bool:
        self.reads += 1
        return self.reads >= self.steps


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_resume_after_ctrl_c_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, method):
    # dropout on and a pool that fills up: the RNG states, the pool and the data order must all be restored
    if method == "pix2pix":
        data, run_training, extra = aligned_dataset(tmp_path / "data", count=3), train_pix2pix, {}
        names = ("G", "D")
    else:
        data, run_training, extra = unpaired_dataset(tmp_path / "data"), train_cyclegan, {"pool_size": 2}
        names = ("G_A", "G_B", "D_A", "D_B")
    options = dict(TINY_GAN, epochs=1, epochs_decay=1, dropout=True, flip=True, load_size=36, **extra)
    run_training(data, tmp_path / "whole", **options)

    monkeypatch.setattr(trainer, "_CtrlC", _PressedAfter)
    with pytest.raises(KeyboardInterrupt, match="saved the run at step 2 of 6.*--resume"):
        run_training(data, tmp_path / "cut", **options)
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "2_net_G.pth").exists() and not (tmp_path / "cut" / "2_net_G_A.pth").exists()
    result = run_training(data, tmp_path / "cut", **dict(options, resume=True))
    assert result.step == 6
    for name in names:
        whole = load_state_dict(tmp_path / "whole" / f"latest_net_{name}.pth")
        resumed = load_state_dict(tmp_path / "cut" / f"latest_net_{name}.pth")
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name
    logged = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
              if "losses" in json.loads(line)]
    assert logged == [1, 2, 3, 4, 5, 6]


# --- the CLI ----------------------------------------------------------------------------------------------------

def test_cli_json_lines_and_translate_loads_the_trained_generator(tmp_path, capsys):
    data = aligned_dataset(tmp_path / "data", count=2)
    run = tmp_path / "run"
    code = main(["train", "pix2pix", str(data), "-o", str(run), "--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4",
                 "--load-size", "32", "--crop-size", "32", "--epochs", "1", "--epochs-decay", "0", "--log-every", "1",
                 "--loader-workers", "0", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines if "losses" in line] == [1, 2]
    assert lines[-1]["summary"]["step"] == 2
    image = data / "train" / "0.png"
    code = main(["translate", str(image), "-o", str(tmp_path / "out.png"), "--checkpoint",
                 str(run / "latest_net_G.pth"), "--aligned"])
    assert code == 0 and (tmp_path / "out.png").is_file()


def test_cli_bad_dataset_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    code = main(["train", "pix2pix", str(tmp_path / "empty"), "-o", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "no training images" in err and "Traceback" not in err


# --- fine-tuning and precision ----------------------------------------------------------------------------------

def test_from_a_run_folder_or_a_file_starts_from_its_weights(tmp_path):
    data = aligned_dataset(tmp_path / "data", count=2)
    train_pix2pix(data, tmp_path / "first", **TINY_GAN)
    trained = load_state_dict(tmp_path / "first" / "latest_net_G.pth")
    tuned = train_pix2pix(data, tmp_path / "tuned", **dict(TINY_GAN, lr=0.0), start_from=str(tmp_path / "first"))
    assert tuned.step == 2
    for name in ("G", "D"):  # lr 0: the weights stay those it started from (running statistics move on)
        before = load_state_dict(tmp_path / "first" / f"latest_net_{name}.pth")
        after = load_state_dict(tmp_path / "tuned" / f"latest_net_{name}.pth")
        assert all(torch.equal(before[k], after[k]) for k in before if k.endswith(("weight", "bias"))), name
    train_pix2pix(data, tmp_path / "file", **dict(TINY_GAN, lr=0.0),
                  start_from=str(tmp_path / "first" / "latest_net_G.pth"))
    from_file = load_state_dict(tmp_path / "file" / "latest_net_G.pth")
    assert torch.equal(from_file["model.1.weight"], trained["model.1.weight"])
    with pytest.raises(ImgforgeError, match="--ngf"):
        train_pix2pix(data, tmp_path / "wrong", **dict(TINY_GAN, ngf=8), start_from=str(tmp_path / "first"))


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    data = aligned_dataset(tmp_path / "data", count=2)
    result = train_pix2pix(data, tmp_path / "run", **TINY_GAN, precision="bf16")
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    assert load_state_dict(tmp_path / "run" / "latest_net_G.pth")["model.1.weight"].dtype == torch.float32
