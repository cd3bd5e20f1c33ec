"""imgforge eval fid / fid-stats / kid / is: FID equals pytorch-fid's with the same (random, calibrated,
full-size) Inception weights file; statistics merge exactly; KID and IS follow their definitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_oracles import calibrated_state_dict, reference_inception, write_fid_weights, write_image_set
from imgforge.cli import main
from imgforge.eval import features as features_module
from imgforge.eval import set_metrics
from imgforge.eval.statistics import (FeatureStatistics, GaussianStatistics, frechet_distance, inception_score,
                                      kernel_inception_distance)
from imgforge.nets import registry
from imgforge.nets.fid_inception import build_fid_inception


@pytest.fixture(scope="session")
def fid_weights(tmp_path_factory) -> Path:
    """TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth holding a calibrated random network."""
    torch_home = tmp_path_factory.mktemp("torch-home")
    return write_fid_weights(torch_home, calibrated_state_dict())


@pytest.fixture
def torch_home(fid_weights, monkeypatch) -> Path:
    """pytorch-fid reads the weights from here without downloading; imgforge is given the folder."""
    monkeypatch.setenv("TORCH_HOME", str(fid_weights.parents[2]))
    monkeypatch.delenv("IMGFORGE_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("IMGFORGE_MANIFEST", raising=False)
    return fid_weights.parent


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    return (write_image_set(root / "real", 6, seed=1),
            write_image_set(root / "fake", 5, seed=2, tint=(40, -20, 0)))


def _pytorch_fid(paths, dims: int) -> float:
    from pytorch_fid.fid_score import calculate_fid_given_paths

    return float(calculate_fid_given_paths([str(p) for p in paths], 50, "cpu", dims, num_workers=0))


def _cli_json(capsys, args) -> dict:
    capsys.readouterr()
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_fid_equals_pytorch_fid_with_fewer_images_than_features(torch_home, image_sets, capsys):
    """dims 64 (pytorch-fid's --dims 64): 6 and 5 images give rank-deficient covariances; same value, not NaN."""
    real, fake = image_sets
    expected = _pytorch_fid([real, fake], 64)
    result = _cli_json(capsys, ["eval", "fid", str(real), str(fake), "--dims", "64", "--json", "-q",
                                "--weights-dir", str(torch_home)])
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert abs(result["fid"] - expected) <= 1e-3 * expected
    assert result["images"] == [6, 5] and result["dims"] == 64


def test_stats_files_are_pytorch_fids_both_ways(torch_home, image_sets, tmp_path, capsys):
    from pytorch_fid.fid_score import save_fid_stats

    real, fake = image_sets
    theirs, ours = tmp_path / "theirs.npz", tmp_path / "ours.npz"
    save_fid_stats([str(real), str(theirs)], 50, "cpu", 64, num_workers=0)
    assert main(["eval", "fid-stats", str(real), "-o", str(ours), "--dims", "64", "-q",
                 "--weights-dir", str(torch_home)]) == 0
    with np.load(theirs) as a, np.load(ours) as b:
        assert np.allclose(a["mu"], b["mu"], rtol=1e-5, atol=1e-7)
        assert np.allclose(a["sigma"], b["sigma"], rtol=1e-4, atol=1e-8)
        assert int(b["count"]) == 6
    with_theirs = _cli_json(capsys, ["eval", "fid", "--stats", str(theirs), str(fake), "--dims", "64", "--json",
                                     "-q", "--weights-dir", str(torch_home)])
    expected = _pytorch_fid([ours, fake], 64)  # pytorch-fid reads imgforge's file
    assert abs(with_theirs["fid"] - expected) <= 1e-3 * expected


@pytest.mark.slow
@pytest.mark.timeout(1800)  # pytorch-fid's sqrtm of a 2048² matrix: a minute alone, far more on a shared machine
def test_fid_2048_equals_pytorch_fid(torch_home, image_sets, capsys):
    """pool3, the FID everyone reports (pytorch-fid's scipy sqrtm of a 2048² matrix is the slow part)."""
    real, fake = image_sets
    expected = _pytorch_fid([real, fake], 2048)
    result = _cli_json(capsys, ["eval", "fid", str(real), str(fake), "--json", "-q", "--weights-dir", str(torch_home)])
    assert abs(result["fid"] - expected) <= 1e-3 * expected


def test_network_equals_pytorch_fids_blocks():
    """Same keys as pytorch-fid's network and the same pool3 features (TF's pooling quirks included)."""
    torch.manual_seed(3)
    reference = reference_inception()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    reference.eval()
    state = reference.state_dict()
    net, family = registry.load(state)
    assert family.name == "fid_inception" and net.state_dict().keys() == state.keys()
    assert family.describe(net).hyperparameters == {"dims": 2048}
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        expected = x
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            expected = getattr(reference, name)(expected)
        expected = expected.mean(dim=(2, 3))
        got = net(x)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        assert torch.allclose(net.logits(got, bias=True), reference.fc(expected), atol=1e-4)
    fresh = family.build({"dims": 64})
    assert fresh.training and fresh.dims == 64 and fresh.state_dict().keys() == state.keys()
    without_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert torch.equal(build_fid_inception(without_counters).Mixed_7c.branch_pool.conv.weight,
                       state["Mixed_7c.branch_pool.conv.weight"])


def test_statistics_merge_exactly_and_match_numpy():
    rng = np.random.default_rng(0)
    features = rng.gamma(2.0, 0.3, (40, 16))
    whole = FeatureStatistics.of(features)
    merged = FeatureStatistics.of(features[:13]).merge(FeatureStatistics.of(features[13:]))
    assert merged.count == 40
    assert np.allclose(merged.mean, features.mean(axis=0), rtol=1e-12)
    assert np.allclose(merged.covariance, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    assert np.allclose(whole.covariance, merged.covariance, rtol=1e-12, atol=1e-14)
    # averaging the two halves' covariances would not give the covariance of the whole set
    halves = (np.cov(features[:13], rowvar=False) + np.cov(features[13:], rowvar=False)) / 2
    assert not np.allclose(halves, np.cov(features, rowvar=False), rtol=1e-3)


@pytest.mark.parametrize("count", [5, 200])
def test_frechet_distance_equals_pytorch_fids(count):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(count)
    a, b = rng.gamma(2.0, 0.3, (count, 32)), rng.gamma(2.2, 0.3, (count, 32)) + 0.05
    first, second = (GaussianStatistics(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (a, b))
    expected = calculate_frechet_distance(first.mu, first.sigma, second.mu, second.sigma)
    value = frechet_distance(first, second)
    assert np.isfinite(value) and abs(value - expected) <= 1e-6 * abs(expected)
    assert abs(frechet_distance(first, first)) < 1e-5  # square roots of rounding-level eigenvalues


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (12, 8)), rng.normal(0.3, 1, (10, 8))
    mean, std, size = kernel_inception_distance(x, y, subsets=3, subset_size=100)
    assert size == 10 and std >= 0
    # with the whole of y in each subset, the estimate's y-y and x-y terms are fixed; check one subset by hand
    value, _, _ = kernel_inception_distance(x[:10], y, subsets=1, subset_size=10)
    k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # noqa: E731
    m = 10
    expected = ((k(x[:10], x[:10]).sum() - np.trace(k(x[:10], x[:10]))) / (m * (m - 1))
                + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1)) - 2 * k(x[:10], y).mean())
    assert value == pytest.approx(expected, rel=1e-10)
    far, _, _ = kernel_inception_distance(x, y + 3, subsets=3, subset_size=10)
    assert far > 10 * abs(mean)


def test_inception_score_bounds():
    uniform = np.zeros((20, 1008))
    assert inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0))
    confident = np.full((20, 1008), -50.0)
    confident[np.arange(20), np.arange(20)] = 50.0  # 20 different classes, each certain
    mean, std = inception_score(confident, splits=1)
    assert mean == pytest.approx(20.0, rel=1e-6) and std == 0.0
    assert inception_score(confident, splits=2)[0] == pytest.approx(10.0, rel=1e-6)


def test_is_and_kid_commands(torch_home, image_sets, capsys):
    real, fake = image_sets
    scored = _cli_json(capsys, ["eval", "is", str(real), str(fake), "--splits", "2", "--json", "-q",
                                "--weights-dir", str(torch_home)])
    assert scored["images"] == [11] and 1.0 <= scored["is"] <= 1008 and scored["splits"] == 2
    distance = _cli_json(capsys, ["eval", "kid", str(real), str(fake), "--dims", "64", "--subsets", "5",
                                  "--json", "-q", "--weights-dir", str(torch_home)])
    assert distance["subset_size"] == 5 and np.isfinite(distance["kid"]) and distance["images"] == [6, 5]


def test_fid_stats_resumes_after_an_interruption(torch_home, image_sets, tmp_path, monkeypatch):
    real, _ = image_sets
    whole = set_metrics.fid_stats(real, tmp_path / "whole.npz", dims=64, quiet=True, weights_dir=torch_home)
    monkeypatch.setattr(set_metrics, "CHECKPOINT_SECONDS", 0.0)  # save the partial sums after every image
    original = features_module.FeatureWorker.load
    calls = []

    def interrupted(self, job):
        calls.append(job)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, job)

    output = tmp_path / "resumed.npz"
    monkeypatch.setattr(features_module.FeatureWorker, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        set_metrics.fid_stats(real, output, dims=64, batch_size=1, quiet=True, weights_dir=torch_home)
    partial = tmp_path / "resumed.partial.npz"
    counted, done = FeatureStatistics.load_partial(partial)
    assert counted.count == len(done) == 3 and not output.exists()
    monkeypatch.setattr(features_module.FeatureWorker, "load", original)
    seen = []
    monkeypatch.setattr(features_module.FeatureWorker, "load", lambda self, job: seen.append(job) or original(self, job))
    resumed = set_metrics.fid_stats(real, output, dims=64, quiet=True, weights_dir=torch_home)
    assert len(seen) == 3 and resumed.count == 6 and not partial.exists()
    assert np.allclose(resumed.statistics.mu, whole.statistics.mu, rtol=1e-12)
    assert np.allclose(resumed.statistics.sigma, whole.statistics.sigma, rtol=1e-9, atol=1e-14)


def test_bad_inputs_are_one_line_errors(torch_home, image_sets, tmp_path, capsys):
    real, fake = image_sets
    broken = tmp_path / "broken.npz"
    np.savez(broken, something=np.zeros(3))
    assert main(["eval", "fid", "--stats", str(broken), str(fake), "--dims", "64", "-q"]) == 1
    assert "holds no FID statistics" in capsys.readouterr().err
    assert main(["eval", "fid", str(real)]) == 2
    assert main(["eval", "fid-stats", str(real), "-o", str(tmp_path / "x.txt"), "-q"]) == 1
    assert "must end in .npz" in capsys.readouterr().err
    (fake_with_junk := tmp_path / "junk").mkdir()
    for image in sorted(fake.iterdir())[:3]:
        (fake_with_junk / image.name).write_bytes(image.read_bytes())
    (fake_with_junk / "zz_broken.png").write_bytes(b"not a png")
    code = main(["eval", "fid", str(real), str(fake_with_junk), "--dims", "64", "--json", "-q",
                 "--weights-dir", str(torch_home)])
    captured = capsys.readouterr()
    assert code == 3 and json.loads(captured.out)["images"] == [6, 3]
    assert "zz_broken.png" in captured.err


@pytest.mark.slow
def test_ray_statistics_equal_local(ray_address, torch_home, image_sets, tmp_path, capsys):
    """Features computed by two Ray workers are summed on the driver: the same statistics as one process."""
    real, fake = image_sets
    local, distributed = tmp_path / "local.npz", tmp_path / "ray.npz"
    common = [str(real), str(fake), "--dims", "64", "-q", "--weights-dir", str(torch_home), "--batch-size", "3"]
    assert main(["eval", "fid-stats", *common, "-o", str(local)]) == 0
    assert main(["eval", "fid-stats", *common, "-o", str(distributed), "--engine", "ray", "--workers", "2",
                 "--ray-address", ray_address]) == 0
    with np.load(local) as a, np.load(distributed) as b:
        assert int(a["count"]) == int(b["count"]) == 11
        # the same sums; only the features differ by float32 rounding, as convolutions of other batch sizes do
        assert np.allclose(a["mu"], b["mu"], rtol=1e-6) and np.allclose(a["sigma"], b["sigma"], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_gives_the_cpus_fid(torch_home, image_sets):
    real, fake = image_sets
    on_cpu = set_metrics.fid(real, fake, dims=768, device="cpu", quiet=True, weights_dir=torch_home)
    on_gpu = set_metrics.fid(real, fake, dims=768, device="cuda", quiet=True, weights_dir=torch_home)
    assert abs(on_gpu.value - on_cpu.value) <= 1e-4 * on_cpu.value


def test_fid_of_images_in_memory_equals_the_files(torch_home, image_sets, tmp_path):
    """What a training run calls with its samples: the same FID as the files."""
    from PIL import Image

    real, fake = image_sets
    reference = set_metrics.fid_stats(real, tmp_path / "real.npz", dims=64, quiet=True, weights_dir=torch_home)
    # the same batches of 2 both ways: oneDNN's convolutions may round differently at another batch size
    from_files = set_metrics.fid(tmp_path / "real.npz", fake, dims=64, quiet=True, weights_dir=torch_home,
                                 batch_size=2).value
    images = np.stack([np.array(Image.open(path)) for path in sorted(fake.iterdir())])
    in_memory = set_metrics.fid_of_images([images[:2], images[2:]], tmp_path / "real.npz", weights_dir=torch_home,
                                          batch_size=2)
    assert in_memory == pytest.approx(from_files, rel=1e-9) and reference.count == 6
