"""Data parallelism: 2 CPU processes (gloo), each with half of every global batch, end
with the same model and loss curve as 1 process with the whole batch."""

import os
import socket

import torch
import torch.multiprocessing as mp

from edgedelta.distill.api import distill
from edgedelta.distill.config import DistillConfig

from .common import make_pair, rows

CFG = dict(tokens=16 * 4 * 4, seq_len=16, batch_size=4, lr=3e-3, schedule="linear", p0=0.4, ramp_frac=0.6,
           warmup_frac=0.0, recon_tokens=32, recon_epochs=1, trainable=["deltas", "gates", "norms"])


def _state(student):
    return {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}


def _worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch.distributed as dist

    teacher, student = make_pair()
    res = distill(student, DistillConfig(**CFG), None, teacher=teacher, train_rows=rows(), progress=False, device="cpu")
    if rank == 0:
        torch.save({"state": _state(student), "loss": [r["loss"] for r in res.log]}, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    torch.set_num_threads(1)
    teacher, student = make_pair()
    ref = distill(student, DistillConfig(**CFG), None, teacher=teacher, train_rows=rows(), progress=False, device="cpu")
    ref_state = _state(student)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    assert len(got["loss"]) == len(ref.log) == 4
    assert torch.allclose(torch.tensor(got["loss"]), torch.tensor([r["loss"] for r in ref.log]), rtol=1e-4, atol=1e-7)
    assert got["state"].keys() == ref_state.keys()
    for k, v in ref_state.items():
        assert torch.allclose(got["state"][k], v, rtol=1e-4, atol=1e-6), k
