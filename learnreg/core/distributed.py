"""Multi-process meta-training: tasks split across ranks, meta-gradients all-reduced.

DistributedDataParallel cannot carry second-order gradients (its hooks fire during the
inner ``torch.func.grad`` and cannot see through the unroll), so learnreg does what DDP
does by hand, once per meta-step: every rank unrolls its own share of the tasks, averages
the meta-gradient over its tasks, and :class:`~learnreg.core.outer.OuterOptimizer`
averages the meta-parameters' ``.grad`` over ranks (one flat ``all_reduce``) before the
outer step. Meta-parameters are broadcast from rank 0 when the outer optimizer is built,
so all ranks start and stay identical.

Under ``torchrun`` the process group is created from the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): ``gloo`` on CPU, ``nccl`` on CUDA with a
GPU per process (gloo when processes share a GPU).
Outside ``torchrun`` every function here is a no-op for a world of one process.

When a rank dies, the collective the others are in fails; they raise
:class:`~learnreg.errors.DistributedError` (one ``error:`` line from the CLI, exit 2)
instead of gloo's or NCCL's traceback. The run directory still holds the last
checkpoint: re-running the same command, or ``torchrun --max_restarts=N``, resumes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import optree
import torch
import torch.distributed as dist
from torch import Tensor

from learnreg.errors import ConfigError, DistributedError


def is_active() -> bool:
    """True inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if not is_active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0)."""
    return rank_and_world()[0] == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group ``torchrun`` describes in the environment (once).

    Args:
        device: the run's device setting. When it resolves to CUDA without an index
            (``cuda``, or ``auto`` with CUDA present and ``$LEARNREG_DEVICE`` unset or
            ``cuda``), this process is pinned to ``cuda:LOCAL_RANK`` and reduces over NCCL;
            a node with fewer GPUs than processes shares them round-robin
            (``cuda:LOCAL_RANK % GPUs``) and reduces over gloo, since NCCL needs a GPU of
            its own per process. Otherwise (CPU, or an explicit ``cuda:N``) gloo.

    Returns:
        Whether the process is part of a multi-process group.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        from learnreg.core.trainer import resolve_device  # the run's rule (import cycle)

        resolved = resolve_device(device)
        pin = resolved.type == "cuda" and resolved.index is None and torch.cuda.is_available()
        gpus = torch.cuda.device_count() if pin else 0
        if gpus:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        dist.init_process_group("nccl" if gpus and gpus >= processes else "gloo")
    return is_active()


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn the backend's failure of a collective (a peer died: "Connection closed by
    peer", a timeout) into one :class:`DistributedError` that says what to do."""
    try:
        yield
    except (RuntimeError, dist.DistBackendError) as exc:
        rank, world = rank_and_world()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"rank {rank} of {world}: another process of this run stopped during {what} "
            f"({first[:200]}); re-run the same command to resume from the last checkpoint "
            "(torchrun --max_restarts=N does it automatically)"
        ) from None


def all_reduce_mean_(tensors: list[Tensor]) -> None:
    """Average ``tensors`` over ranks, in place, with one collective on a flat buffer."""
    if not is_active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    with _collective("the meta-gradient all-reduce"):
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    _unflatten_into(flat / dist.get_world_size(), tensors)


def broadcast_(tensors: list[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values."""
    if not is_active() or not tensors:
        return
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        with _collective("the meta-parameter broadcast"):
            dist.broadcast(flat, src)
        _unflatten_into(flat, tensors)


def gather_to_main(obj) -> list | None:
    """Every rank's ``obj`` (tensors moved to the CPU), in rank order, on rank 0; None on
    the other ranks. A collective: every rank must call it at the same point. Without a
    process group: ``[obj]``."""
    obj = optree.tree_map(lambda t: t.detach().cpu() if isinstance(t, Tensor) else t, obj)
    if not is_active():
        return [obj]
    rank, world = rank_and_world()
    gathered = [None] * world if rank == 0 else None
    with _collective("a checkpoint's gather of every rank's state"):
        dist.gather_object(obj, gathered, dst=0)
    return gathered


def all_gather(obj) -> list:
    """Every rank's ``obj`` (tensors moved to the CPU), in rank order, on every rank.
    A collective; without a process group: ``[obj]``."""
    obj = optree.tree_map(lambda t: t.detach().cpu() if isinstance(t, Tensor) else t, obj)
    if not is_active():
        return [obj]
    gathered = [None] * dist.get_world_size()
    with _collective("an all-gather of every rank's results"):
        dist.all_gather_object(gathered, obj)
    return gathered


_GATHERING = [False]


@contextlib.contextmanager
def gathering_state() -> Iterator[None]:
    """Inside, ``state_dict()`` of estimators with per-rank state (live inner runs)
    gathers every rank's to rank 0 (:func:`gather_to_main`), so rank 0's checkpoint
    holds them all. Every rank must enter it at the same points (the runner's rank 0
    when it checkpoints during meta-training, the other ranks in step with it);
    outside it, per-rank state is left out of ``state_dict()``."""
    _GATHERING[0] = True
    try:
        yield
    finally:
        _GATHERING[0] = False


def is_gathering_state() -> bool:
    """Whether :func:`gathering_state` is active (and there is more than one process)."""
    return _GATHERING[0] and is_active()


def _unflatten_into(flat: Tensor, tensors: list[Tensor]) -> None:
    """Copy consecutive slices of ``flat`` back into ``tensors`` (the inverse of ``cat``)."""
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(chunk.view_as(t))


def shard(count: int, what: str = "meta_batch") -> int:
    """This rank's share of ``count`` tasks.

    Raises:
        ConfigError: when ``count`` does not split evenly, since unequal shares would
            weight the ranks' averaged meta-gradients unequally.
    """
    _, world = rank_and_world()
    if count % world:
        raise ConfigError(
            f"{what}={count} does not split evenly over {world} processes; "
            f"use a multiple of {world} (or run with --nproc_per_node dividing it)"
        )
    return count // world
