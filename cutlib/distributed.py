"""Several processes: ``torchrun --nproc_per_node N -m cutlib train ...`` runs one process per GPU
with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).

``batch_size`` is the GLOBAL batch: each of the N processes takes batch_size / N images of every
batch, so a run gives the same steps, epochs and schedule whatever N, and its checkpoint resumes on
any number of processes. Each model names the networks to wrap (``ddp_networks``) and refuses the
configurations it cannot synchronise (``check_distributed``).
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from cutlib.device import resolve_device


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process. Launched by torchrun (WORLD_SIZE > 1), it joins
    the process group: NCCL with one GPU per process (cuda:LOCAL_RANK), or gloo on CPUs."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class DistributedNetwork(DistributedDataParallel):
    """DDP around one network, still answering the generator's ``encode``.

    Why this works for CUT, whose step calls G(x, taps) and then G.encode(G(x)): DDP averages a
    parameter's gradient in a hook that fires when autograd has summed ALL of that parameter's
    contributions in one backward. The forward through DDP arms those hooks; ``encode`` runs the
    wrapped module directly, and its gradients join the same sums before the one backward of the
    G step, so each parameter is averaged once, over everything. Every parameter gets a gradient
    in that backward, so find_unused_parameters (a graph search every step) is not needed; the one
    setting that starves the decoder, nce_decoder_grad=False with lambda_gan=0, would need it. A
    frozen D (requires_grad False) called in the G step produces no gradient: DDP waits for none.
    """

    def encode(self, x: torch.Tensor, taps) -> list[torch.Tensor]:
        return self.module.encode(x, taps)

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # inference (sample grids on rank 0 alone): nothing to average
            return self.module(*args, **kwargs)
        return super().forward(*args, **kwargs)


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (checkpoints hold its plain state dict, no "module." prefix)."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def no_buffer_sync(ddp_parameters=None) -> dict[str, bool]:
    """DDP's keyword for "do not broadcast the buffers at every forward": ``forward_sync_buffers=False``
    from torch 2.13, where ``broadcast_buffers`` is deprecated; ``broadcast_buffers=False`` before (a GPU
    machine's image may hold an older torch than the course's pin). ``ddp_parameters``: the names
    DistributedDataParallel takes (default: this torch's)."""
    names = inspect.signature(DistributedDataParallel.__init__).parameters if ddp_parameters is None else ddp_parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in names else {"broadcast_buffers": False}


def distribute(model, device: torch.device) -> None:
    """Wrap the networks ``model.ddp_networks`` names in DistributedNetwork, in place (the optimisers
    keep the same parameters), after ``model.check_distributed()`` accepted the configuration."""
    names = getattr(model, "ddp_networks", None)
    if not names:
        raise ValueError(f"{type(model).__name__} cannot train on several processes (it names no ddp_networks); "
                         "run it without torchrun")
    model.check_distributed()
    for name in names:  # buffers are constants (blur filters): synced once at init only
        net = getattr(model, name)
        setattr(model, name, DistributedNetwork(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                **no_buffer_sync()))


def average_losses(losses: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each loss over the processes: the log shows the global batch, and a NaN anywhere stops all."""
    values = torch.tensor([losses[k] for k in sorted(losses)], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / dist.get_world_size() for k, v in zip(sorted(losses), values.tolist())}
