"""Multi-process meta-training: 2 ranks on the gloo backend (2 CPU processes on loopback)
give the meta-gradient of 1 process on the same tasks, and a 2-process ``torchrun`` run
learns what a 1-process run learns."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from fewshot_util import context, digits_family, flat_grads, roles
from gloo_util import free_port, run_ranks

from learnreg.core.estimator import meta_step
from learnreg.estimators import TruncatedUnroll
from learnreg.tracking.checkpoint import load_checkpoint
from learnreg.tracking.export import load_bias

ROOT = Path(__file__).resolve().parent.parent
SPEC = dict(init="film", optimizer="precond", loss="learned_film", mode="warp")


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
    metrics = meta_step(ctx, unroll)
    return {
        "grads": flat_grads(biases.meta_parameters()),
        "params": torch.cat([p.detach().flatten() for p in biases.meta_parameters()]),
        "meta_loss": torch.tensor(metrics["meta_loss"]),
        "indices": torch.tensor([r.index for r in unroll.runs]),
    }


@pytest.mark.parametrize("vmap", [False, True], ids=["loop", "vmap"])
def test_two_gloo_ranks_give_the_single_process_meta_gradient(tmp_path, vmap):
    ranks = run_ranks(_meta_step, tmp_path, vmap)
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
    command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
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


ONLINE_CONFIG = {  # online AdaLFL-style meta-training: the inner runs live across meta-steps
    "method": "adalfl",
    "seed": 0,
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [16]},
    "loss": {"_component_": "neural", "hidden": [8]},
    "optimizer": {"_component_": "sgd", "lr": 0.05},
    "estimator": {
        "_component_": "truncated_unroll",
        "window": 1,
        "horizon": None,
        "meta_batch": 2,
        "objective_batch": "train",
    },
    "meta_optimizer": {"_component_": "adam", "lr": 0.01},
    "meta_steps": 200,
    "checkpoint_every": 4,
    "meta_test": {"steps": 20, "seeds": 1, "eval_every": 0},
    "logger": {"backends": []},
}


def _torchrun(config: Path, out: Path, nproc: int = 2) -> subprocess.Popen:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    command += ["-m", "learnreg.cli", "run", str(config), "--out", str(out), "--no-progress"]
    return subprocess.Popen(
        command,
        env=env,
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process under it (torchrun starts its ranks in sessions
    of their own, so a process-group kill would leave them running)."""
    import psutil

    parent = psutil.Process(proc.pid)
    victims = [parent, *parent.children(recursive=True)]
    for p in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def _meta_steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_text().count('"meta_step"') if path.exists() else 0


def _run_result(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    files = sorted((out / "learned").iterdir()) + sorted((out / "final").iterdir())
    return {
        "summary": {k: v for k, v in summary.items() if not k.endswith("_seconds")},
        "metrics": (out / "metrics.jsonl").read_text().splitlines(),
        "files": {p.name: p.read_bytes() for p in files},
    }


@pytest.mark.slow
def test_two_rank_online_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    """Every rank's live inner runs (and RNG) are in rank 0's checkpoint: a 2-process
    online run SIGKILLed mid-meta-training resumes to the uninterrupted result, bit for
    bit (before, the resumed ranks started fresh inner runs and the result differed)."""
    import time

    import yaml

    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump(ONLINE_CONFIG))
    reference = _torchrun(config, tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    out = tmp_path / "faulty"
    proc = _torchrun(config, out)
    while proc.poll() is None and _meta_steps_logged(out) < 10:  # past two checkpoints
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    _kill_tree(proc)
    assert not (out / "summary.json").exists()
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["run"]["phase"] == "fit" and len(state["trainer"]["estimator"]["runs"]) == 2
    resumed = _torchrun(config, out)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert _run_result(out) == _run_result(tmp_path / "reference")


def _rank_processes(config: Path, out: Path, world: int = 2) -> list[subprocess.Popen]:
    """The processes torchrun would start, started by hand (so the test, not torchrun's
    agent, decides which one dies and nothing else stops the survivor)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
        }
        command = [sys.executable, "-m", "learnreg.cli", "run", str(config), "--out", str(out)]
        procs.append(
            subprocess.Popen(
                [*command, "--no-progress"],
                env=env,
                cwd=config.parent,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_when_one_rank_dies_the_other_exits_with_one_error_line(tmp_path, victim):
    import signal
    import time

    import yaml

    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump({**ONLINE_CONFIG, "meta_steps": 100000}))
    out = tmp_path / "run"
    procs = _rank_processes(config, out)
    try:
        while _meta_steps_logged(out) < 3:
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()
            time.sleep(0.01)
        procs[victim].send_signal(signal.SIGKILL)
        survivor = procs[1 - victim]
        assert survivor.wait(timeout=120) == 2
        stderr = survivor.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"error: rank {1 - victim} of 2: another process of this run")
    assert "re-run the same command to resume" in lines[0] and "--max_restarts" in lines[0]


def _search(rank: int = 0) -> dict:
    """Three CMA-ES generations, the fitness computed one candidate at a time."""
    from test_evolution import CMAES, make_trainer

    from learnreg.estimators.evaluators.backends import SerialEvaluator
    from learnreg.losses import TaylorLoss

    class Recording(SerialEvaluator):
        seen: list[int] = []

        def evaluate(self, problem, losses):
            Recording.seen.append(len(losses))
            return super().evaluate(problem, losses)

    trainer = make_trainer(TaylorLoss(), {**CMAES, "evaluator": Recording()})
    trainer.fit(3, progress=False)
    return {
        "history": json.dumps(trainer.estimator.history, sort_keys=True),
        "best": trainer.estimator.best["genome"],
        "loss": {k: v.clone() for k, v in trainer.biases.loss.state_dict().items()},
        "evaluated": Recording.seen,
    }


@pytest.mark.slow
def test_evolution_shards_the_population_over_ranks(tmp_path):
    """Two ranks evaluate half of each generation each and end with the search a single
    process runs (same history, best genome, loss role)."""
    ranks = run_ranks(_search, tmp_path)
    single = _search()
    for r in ranks:
        assert r["history"] == single["history"] and r["best"] == single["best"]
        for k, v in single["loss"].items():
            assert torch.equal(r["loss"][k], v)
    for gen, total in enumerate(single["evaluated"]):  # each rank trained its half
        assert ranks[0]["evaluated"][gen] + ranks[1]["evaluated"][gen] == total
        assert abs(ranks[0]["evaluated"][gen] - ranks[1]["evaluated"][gen]) <= 1
    assert sum(single["evaluated"]) > 0


def test_evolution_refuses_the_ray_evaluator_under_torchrun(monkeypatch):
    from test_evolution import CMAES, make_trainer

    from learnreg.core import distributed
    from learnreg.errors import ConfigError
    from learnreg.estimators.evaluators.backends import RayEvaluator
    from learnreg.losses import TaylorLoss

    trainer = make_trainer(TaylorLoss(), {**CMAES, "evaluator": RayEvaluator()})
    monkeypatch.setattr(distributed, "is_active", lambda: True)
    with pytest.raises(ConfigError, match="under torchrun every process would start its own"):
        trainer.fit(1, progress=False)
    assert trainer.meta_step == 0 and not trainer.estimator.evaluator.started
