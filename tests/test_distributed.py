"""Multi-process meta-training: 2 ranks on the gloo backend (2 CPU processes on loopback)
give the meta-gradient of 1 process on the same tasks, and a 2-process ``torchrun`` run
learns what a 1-process run learns."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fewshot_util import context, digits_family, flat_grads, roles

from learnreg.estimators import TruncatedUnroll
from learnreg.tracking.export import load_bias

ROOT = Path(__file__).resolve().parent.parent
SPEC = dict(init="film", optimizer="precond", loss="learned_film", mode="warp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meta_step(vmap: bool, rank: int = 0):
    """One NPBML meta-step (meta-batch 4, 3 inner steps) on float64 digits episodes."""
    family = digits_family(film=True)
    biases = roles(family, **SPEC)
    if rank:  # rank 0's meta-parameters must win: the outer optimizer broadcasts them
        with torch.no_grad():
            for p in biases.meta_parameters():
                p.add_(1.0)
    ctx = context(family, biases)
    unroll = TruncatedUnroll(window=3, horizon=3, meta_batch=4, vmap=vmap)
    metrics = unroll.step(ctx)
    return {
        "grads": flat_grads(biases.meta_parameters()),
        "params": torch.cat([p.detach().flatten() for p in biases.meta_parameters()]),
        "meta_loss": torch.tensor(metrics["meta_loss"]),
        "indices": torch.tensor([r.index for r in unroll.runs]),
    }


def _worker(rank: int, world: int, port: int, out: str, vmap: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.save(_meta_step(vmap, rank), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("vmap", [False, True], ids=["loop", "vmap"])
def test_two_gloo_ranks_give_the_single_process_meta_gradient(tmp_path, vmap):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), vmap), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _meta_step(vmap)
    assert ranks[0]["indices"].tolist() == [0, 1] and ranks[1]["indices"].tolist() == [2, 3]
    for r in ranks:
        torch.testing.assert_close(r["grads"], single["grads"], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(r["params"], single["params"], rtol=0, atol=0)
        assert r["meta_loss"].item() == pytest.approx(single["meta_loss"].item(), rel=1e-12)


SINE_CONFIG = {
    "method": "maml",
    "seed": 0,
    "task": {"_component_": "sine", "shots": 5, "queries": 5},
    "model": {"_component_": "mlp", "hidden": [8]},
    "init": {"_component_": "maml"},
    "optimizer": {"_component_": "preconditioned_sgd", "mode": "diagonal", "lr": 0.05},
    "estimator": {
        "_component_": "truncated_unroll",
        "window": 2,
        "horizon": 2,
        "meta_batch": 4,
        "vmap": True,
    },
    "meta_optimizer": {"_component_": "adam", "lr": 0.01},
    "meta_lr_schedule": {"_component_": "cosine"},
    "meta_grad_clip": 10.0,
    "meta_steps": 4,
    "meta_test": {"steps": 2, "seeds": 3, "eval_every": 0},
    "logger": {"backends": ["none"]},
}


def test_torchrun_two_processes_learn_what_one_process_learns(tmp_path):
    import yaml

    config = tmp_path / "sine.yaml"
    config.write_text(yaml.safe_dump(SINE_CONFIG))
    # ROOT first, keeping a PYTHONPATH the environment needs (packages installed there).
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    command += ["-m", "learnreg.cli", "run", str(config), "--out", str(tmp_path / "two")]
    subprocess.run(command + ["--no-progress"], check=True, env=env, cwd=tmp_path, timeout=600)
    from learnreg.runner import run

    single = run(config, out=tmp_path / "one", progress=False)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["meta_steps"] == single["meta_steps"] == 4 and two["meta_test_seeds"] == 3
    for role in ("init", "optimizer"):
        a = load_bias(tmp_path / "one" / "learned" / role).state_dict()
        b = load_bias(tmp_path / "two" / "learned" / role).state_dict()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert two["test"]["mse"] == pytest.approx(single["test"]["mse"], rel=1e-4)


def test_meta_batch_must_split_evenly_over_processes(monkeypatch):
    from learnreg.core import distributed
    from learnreg.errors import ConfigError

    monkeypatch.setattr(distributed, "rank_and_world", lambda: (1, 3))
    assert distributed.shard(6) == 2
    with pytest.raises(ConfigError, match="meta_batch=4 does not split evenly over 3"):
        distributed.shard(4)


@pytest.mark.parametrize(
    "device, gpus, local_rank, expect",
    [
        ("auto", 0, 1, ("gloo", None)),  # no GPU
        ("cpu", 2, 1, ("gloo", None)),
        ("auto", 2, 1, ("nccl", 1)),  # a GPU per process
        ("cuda", 1, 1, ("gloo", 0)),  # two processes share one GPU: NCCL cannot
        ("cuda:0", 2, 1, ("gloo", None)),  # an explicit GPU is left as the config says
    ],
)
def test_backend_and_gpu_of_each_process(monkeypatch, device, gpus, local_rank, expect):
    from learnreg.core import distributed

    monkeypatch.delenv("LEARNREG_DEVICE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    seen = {"gpu": None}
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: seen.update(gpu=i))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: seen.update(backend=backend))
    monkeypatch.setattr(distributed, "is_active", lambda: True)
    assert distributed.init_from_env(device)
    assert (seen["backend"], seen["gpu"]) == expect
