"""SAM under DDP on two CPU processes (gloo): the first pass inside no_sync perturbs with
each rank's own gradient; the second pass's gradient is averaged across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from learnreg.optim import SAM

LR, RHO = 0.1, 0.05


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _shard(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (10,), generator=g
    )


def _worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = nn.parallel.DistributedDataParallel(_model())
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    x, y = _shard(rank)
    with model.no_sync():
        F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    torch.save([p.detach() for p in model.parameters()], f"{out_file}.{rank}")
    dist.destroy_process_group()


def _expected():
    model = _model()
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    perturbed_grads = []
    for rank in range(2):
        x, y = _shard(rank)
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        norm = torch.sqrt(sum((t * t).sum() for t in g))
        with torch.no_grad():
            for p, t, gi in zip(params, theta, g):
                p.copy_(t + RHO * gi / norm)
        perturbed_grads.append(torch.autograd.grad(F.cross_entropy(model(x), y), params))
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
    return [t - LR * (a + b) / 2 for t, a, b in zip(theta, *perturbed_grads)]


def test_sam_with_no_sync_matches_per_rank_perturbations(tmp_path):
    out = tmp_path / "params"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    expected = _expected()
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
