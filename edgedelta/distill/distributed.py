"""Devices and data parallelism. A run started by `torchrun` or `accelerate launch` (env
WORLD_SIZE > 1) joins the process group (NCCL on CUDA, gloo on CPU); one process is a plain
run. Gradients are averaged with ONE flat all-reduce per optimizer step instead of wrapping
the model in DistributedDataParallel: the hybrid swaps modules between steps, which DDP's
fixed parameter/bucket registration does not allow, and the trainable set (deltas) is small.
Every process draws the same replacement mask (seeded by step), so graphs agree."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def use_autocast(self) -> bool:
        return self.device.type == "cuda"

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched with WORLD_SIZE > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if local_world > 1:  # processes on one machine split its cores instead of oversubscribing
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        # a single process keeps torch's default: all physical cores (or what the caller set)
    return DistContext(rank, world, local, dev)


def average_gradients(params: list[torch.nn.Parameter], ctx: DistContext, extra: list[float]) -> list[float]:
    """Average the gradients of `params` over processes and sum the `extra` scalars (e.g. a
    stop request, loss sums) in the same all-reduce. A parameter that received no gradient on
    any process keeps grad None, so AdamW skips it exactly as a single process would."""
    if ctx.world == 1:
        return extra
    device = params[0].device if params else ctx.device
    has = [float(p.grad is not None) for p in params]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
                     + [torch.tensor(has + list(extra), dtype=torch.float32, device=device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    off = 0
    flags = flat[flat.numel() - len(extra) - len(params):flat.numel() - len(extra)]
    for i, p in enumerate(params):
        n = p.numel()
        if flags[i] > 0:
            g = (flat[off:off + n] / ctx.world).view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        off += n
    return flat[flat.numel() - len(extra):].tolist()

