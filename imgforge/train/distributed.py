"""The processes of one training run: alone, under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the
environment) or as the workers of Ray Train (which sets the process group up itself). Every process runs
the same loop on its share of the global batch; gradients are averaged by DistributedDataParallel and batch
statistics are taken over the global batch (SyncBatchNorm on GPUs, `GlobalBatchNorm` below on CPUs, where
PyTorch's SyncBatchNorm does not run), so N processes compute what one process computes on the whole batch.
Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ImgforgeError


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among `world` processes and the GPU index it owns on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the group was made here (torchrun) and is destroyed here; Ray owns its own

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(device_type: str) -> Processes:
    """This process's place: from an existing process group (Ray Train), from torchrun's environment
    (the group is made here: nccl for CUDA, gloo otherwise), or alone."""
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    backend = "nccl" if device_type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    except (RuntimeError, ValueError) as exc:
        raise ImgforgeError(f"cannot join the {world} training processes ({backend}): {' '.join(str(exc).split())}") \
            from None
    return Processes(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", 0)), owns_group=True)


def leave(processes: Processes) -> None:
    if processes.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def process_device(device: torch.device, processes: Processes) -> torch.device:
    """Each process of a multi-GPU run takes the GPU of its local rank."""
    if device.type == "cuda" and processes.distributed and device.index is None:
        device = torch.device("cuda", processes.local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the global batch of every process (mean, then the
    biased variance around it), through differentiable all-reduces, so gradients flow across processes as in
    one process holding the whole batch. Same parameters and buffers as BatchNorm2d (same state dict keys).
    Used on CPUs (gloo); GPUs use torch's SyncBatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        count = torch.tensor([x.numel() / channels], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / total
        with torch.no_grad():
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.num_batches_tracked.add_(1)
            unbiased = var * (total / (total - 1).clamp(min=1))
            self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        out = centred * scale.view(1, -1, 1, 1)
        return out + self.bias.view(1, -1, 1, 1) if self.bias is not None else out


def synchronise_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm2d taking global-batch statistics (in place; parameters kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm):
            synced = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, device=device)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            synchronise_batch_norm(child, device)
    return module


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def wrap(module: nn.Module, processes: Processes, device: torch.device) -> nn.Module:
    """The module as its training step calls it: DistributedDataParallel across the processes (gradients
    averaged during backward), itself when alone."""
    if not processes.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def average(values: dict[str, torch.Tensor], processes: Processes) -> dict[str, float]:
    """The mean over the processes of each value (a loss), as floats."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    if processes.distributed:
        stacked = stacked.to(_collective_device())
        dist.all_reduce(stacked)
        stacked = stacked / processes.world
    return dict(zip(values, stacked.cpu().tolist()))


def any_process(flag: bool, processes: Processes) -> bool:
    """True on every process when `flag` is true on any (a Ctrl-C seen by one stops them all together)."""
    if not processes.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value)
    return bool(value.item() > 0)


def gather(obj: object, processes: Processes) -> list:
    """`obj` of every process, in rank order (each process's RNG and method state, for the checkpoint)."""
    if not processes.distributed:
        return [obj]
    gathered: list = [None] * processes.world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_flag(flag: bool, processes: Processes) -> bool:
    """Rank 0's value of `flag` on every process."""
    if not processes.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.broadcast(value, 0)
    return bool(value.item() > 0)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

