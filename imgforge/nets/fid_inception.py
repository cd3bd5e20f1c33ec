"""The Inception-v3 of FID: TensorFlow's 2015-12-05 graph as ported by pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`, which torch-fidelity and torchmetrics use too).

State-dict keys equal torchvision's `inception_v3(num_classes=1008, aux_logits=False)`. The TF graph differs from
torchvision's network in three places, kept here: the average pools of the A, C and first E blocks leave the
padding out of the mean, the last E block pools with a max, and the classifier has 1008 classes.

The network takes images already resized to 299x299 and scaled to [-1, 1] (imgforge.eval.features does that)
and returns the features of the block `dims` names (pytorch-fid's --dims: 64, 192, 768 or 2048 = pool3),
spatially averaged; `logits(pool3)` are the 1008 classifier outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Descriptor, Export, Family, check_overrides, construct, parameter_count, register
from .vae import load_official_weights

# feature width -> the last block it needs (pytorch-fid's BLOCK_INDEX_BY_DIM)
BLOCK_OF_DIMS = {64: 0, 192: 1, 768: 2, 2048: 3}
CLASSES = 1008


class Conv(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, as TF's graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _mean_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3 average pool: the zero padding does not count in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1 = Conv(cin, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x):
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), double,
                          self.branch_pool(_mean_pool(x))], 1)


class BlockB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), double, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockC(nn.Module):
    """Factorised 7x7 convolutions."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, column = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, **row)
        self.branch7x7_3 = Conv(c7, 192, **column)
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, **column)
        self.branch7x7dbl_3 = Conv(c7, c7, **row)
        self.branch7x7dbl_4 = Conv(c7, c7, **column)
        self.branch7x7dbl_5 = Conv(c7, 192, **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = x
        for step in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{step}")(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_mean_pool(x))], 1)


class BlockD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
        seven = x
        for step in range(1, 5):
            seven = getattr(self, f"branch7x7x3_{step}")(seven)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockE(nn.Module):
    """Expanded filter bank; the last one of the TF graph pools with a max instead of a mean."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _mean_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double), self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Inception-v3 as FID, KID and IS use it; `forward(x)` gives the spatially averaged features of width
    `dims` for N x 3 x 299 x 299 inputs in [-1, 1]."""

    def __init__(self, dims: int = 2048):
        super().__init__()
        if dims not in BLOCK_OF_DIMS:
            raise ValueError(f"dims must be one of {', '.join(map(str, BLOCK_OF_DIMS))}, not {dims}")
        self.dims = dims
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, CLASSES)

    def stages(self) -> list[list[nn.Module]]:
        """The four stages whose ends give 64, 192, 768 and 2048 features."""
        stem = [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, _MaxPool()]
        return [stem, [self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, _MaxPool()],
                [self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                 self.Mixed_6d, self.Mixed_6e],
                [self.Mixed_7a, self.Mixed_7b, self.Mixed_7c]]

    def extra_repr(self) -> str:
        return f"dims={self.dims}"  # printed, so the ONNX graph cache tells the feature blocks apart

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages()[:BLOCK_OF_DIMS[self.dims] + 1]:
            for layer in stage:
                x = layer(x)
        return x.mean(dim=(2, 3))

    def logits(self, pool3: torch.Tensor, *, bias: bool = False) -> torch.Tensor:
        """The 1008 class logits of pool3 features. Without the bias by default: the Inception Score's
        original code (improved-GAN's inception_score.py) multiplies pool3 by the softmax layer's weight only."""
        return F.linear(pool3, self.fc.weight, self.fc.bias if bias else None)


class _MaxPool(nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, kernel_size=3, stride=2)


def build_fid_inception(state_dict: dict | None = None, dims: int = 2048) -> FIDInception:
    """The network (eval mode, CPU), with `state_dict` loaded strictly when given. BatchNorm counters
    (`num_batches_tracked`) may be absent, as in files saved by older PyTorch; they are never used here."""
    if state_dict is None:
        return FIDInception(dims).eval()
    with torch.device("meta"):  # no random initialisation of 24 M weights that are overwritten next
        net = FIDInception(dims)
    net = net.to_empty(device="cpu")
    counters = {k: torch.zeros((), dtype=torch.long) for k in net.state_dict() if k.endswith("num_batches_tracked")}
    load_official_weights(net, {**counters, **state_dict}, "FID Inception")
    return net.eval()


# --- the registry --------------------------------------------------------------------------------------------


def _looks_like(state: dict) -> bool:
    return "Mixed_7c.branch_pool.conv.weight" in state and "Conv2d_1a_3x3.conv.weight" in state \
        and tuple(state.get("fc.weight", torch.empty(0)).shape) == (CLASSES, 2048)


def load_fid_inception(state_dict: dict, **overrides) -> FIDInception:
    options = check_overrides("fid_inception", {}, overrides)
    return build_fid_inception(state_dict, **options)


def describe_fid_inception(net: FIDInception) -> Descriptor:
    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(0)) * 2 - 1,)

    io = {"images": "N x 3 x 299 x 299 float32 in [-1, 1]: RGB / 255 resized bilinearly (align_corners False, "
                    "no antialiasing) to 299x299, then 2x - 1",
          "features": f"N x {net.dims} float32: the spatial mean of the block's activations (pool3 for 2048)"}
    return Descriptor(
        family="fid_inception", task="eval", in_channels=3, out_channels=net.dims, size_multiple=1, min_side=299,
        precisions=("fp32",), parameters=parameter_count(net), hyperparameters={"dims": net.dims},
        exports=(Export("features", net, example_inputs, ("images",), ("features",), {"images": {0: "batch"},
                        "features": {0: "batch"}}, io, 1, 299),),
        test_time="eval: running BatchNorm statistics; fixed 299x299 input",
    )


register(Family(
    "fid_inception", "fid_inception", "eval", "Inception-v3 of FID/KID/IS (TF 2015-12-05 graph, pytorch-fid's port)",
    detect=_looks_like, load=load_fid_inception, describe=describe_fid_inception,
    build=lambda config: construct("fid_inception", FIDInception, config),
))
