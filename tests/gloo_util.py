"""Two-process tests over gloo: spawn ranks that each run one function inside a process
group and hand its result back through a file (``torch.save``: tensors and plain data)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous or ``torchrun``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.save(fn(*args, rank=rank), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, out: Path, *args, world: int = 2) -> list:
    """``fn(*args, rank=r)`` on each of ``world`` gloo ranks; their results, by rank.

    ``fn`` must be a module-level function (spawned processes import it by name)."""
    mp.spawn(_rank, args=(world, free_port(), str(out), fn, args), nprocs=world, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world)]
