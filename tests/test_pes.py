"""PES: unbiased where truncated backprop is not, vmap equals the loop, resume equals an
uninterrupted run bit for bit, two gloo ranks equal one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from antithetic_util import full_unroll_gradient, quadratic_context
from conftest import Interrupt, interrupted_at
from gloo_util import free_port, run_ranks
from scipy import stats

import learnreg
from learnreg.core import metaparams
from learnreg.estimators import PES, TruncatedUnroll
from learnreg.tracking.checkpoint import load_checkpoint

HORIZON, WINDOW = 100, 10


def pes_horizon_mean(seed: int, pairs: int = 64, sigma: float = 0.05) -> float:
    """PES's estimates of one horizon's windows at fixed meta-parameters, averaged: in
    expectation the gradient of the loss averaged over the horizon."""
    ctx = quadratic_context(seed)
    pes = PES(sigma=sigma, pairs=pairs, window=WINDOW, horizon=HORIZON, meta_batch=1)
    grads = [pes.estimate(ctx).grads["optimizer"]["log_scale"] for _ in range(HORIZON // WINDOW)]
    return torch.stack(grads).mean().item()


def truncated_backprop_mean() -> float:
    """Truncated backprop over the same horizon (windows of 10, the state detached between
    them), averaged over the windows: deterministic on this full-batch problem."""
    ctx = quadratic_context()
    unroll = TruncatedUnroll(window=WINDOW, horizon=HORIZON, average=True, objective_batch="train")
    run = ctx.new_run("meta_train", 0)
    for _ in range(HORIZON // WINDOW):
        unroll.unroll(ctx, run, scale=WINDOW / HORIZON)
    return ctx.biases.optimizer.log_scale.grad.item()


def test_pes_is_unbiased_for_the_full_unroll_gradient_where_truncated_backprop_is_not():
    full = full_unroll_gradient(quadratic_context(), HORIZON)
    truncated = truncated_backprop_mean()
    samples = torch.tensor([pes_horizon_mean(seed) for seed in range(16)], dtype=torch.float64)
    n = len(samples)
    half = stats.t.ppf(0.995, n - 1) * samples.std().item() / n**0.5  # a 99% t interval
    low, high = samples.mean().item() - half, samples.mean().item() + half
    assert low <= full <= high, (low, full, high)
    # truncation's short-horizon bias: well outside PES's interval, and far from the truth
    assert not low <= truncated <= high and abs(truncated - full) > 0.3 * abs(full)
    assert full < truncated < 0  # both say "raise the step size"; truncation too little


def test_accumulated_perturbations_restart_with_the_runs():
    ctx = quadratic_context()
    pes = PES(sigma=0.05, pairs=4, window=5, horizon=10, meta_batch=2)
    pes.estimate(ctx)
    first = pes.noise(ctx, metaparams.flatten(metaparams.values_of(ctx.biases)))  # next step's
    xi = pes.accumulated.clone()
    pes.estimate(ctx)
    torch.testing.assert_close(pes.accumulated, xi + first, rtol=0, atol=0)
    assert [r.index for r in pes.pos] == [0, 0, 1, 1] and pes.pos[0].state.step == 10
    third = pes.noise(ctx, metaparams.flatten(metaparams.values_of(ctx.biases)))
    pes.estimate(ctx)  # the horizon: new runs (the next two tasks), ξ from zero
    assert [r.index for r in pes.pos] == [2, 2, 3, 3] and pes.pos[0].state.step == 5
    torch.testing.assert_close(pes.accumulated, third, rtol=0, atol=0)
    assert pes.steps == 3 and not torch.equal(third, first)


def test_vmapped_copies_give_the_loop_estimate():
    a, b = (
        PES(sigma=0.05, pairs=4, window=5, horizon=10, meta_batch=2, vmap=v) for v in (True, False)
    )
    ctx_a, ctx_b = quadratic_context(), quadratic_context()
    for _ in range(3):
        ga, gb = a.estimate(ctx_a), b.estimate(ctx_b)
        torch.testing.assert_close(ga.grads, gb.grads, rtol=1e-12, atol=1e-15)


CONFIG = {
    "method": "lo-pes",
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [8]},
    "optimizer": {"_component_": "mlp", "hidden": [4]},
    # windows of 2 inside runs of 6: the checkpoints at meta-steps 4 and 8 hold live runs
    # part-way through their horizon and a non-zero ξ
    "estimator": {
        "_component_": "pes",
        "sigma": 0.01,
        "pairs": 4,
        "window": 2,
        "horizon": 6,
        "meta_batch": 2,
    },
    "meta_optimizer": {"_component_": "adam", "lr": 0.01},
    "meta_steps": 10,
    "checkpoint_every": 4,
    "meta_test": {"steps": 10, "seeds": 1},
    "baseline": {"tune": {"enabled": False}},
    "logger": {"backends": []},
}


def _records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_interrupted_pes_run_resumes_bit_for_bit(tmp_path):
    reference = learnreg.run(CONFIG, out=tmp_path / "ref", progress=False)
    with interrupted_at(PES, "estimate", 7), pytest.raises(Interrupt):
        learnreg.run(CONFIG, out=tmp_path / "run", progress=False)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    estimator = saved["trainer"]["estimator"]
    assert estimator["steps"] == 4 and len(estimator["runs"]) == 4
    assert estimator["accumulated"].abs().sum() > 0  # ξ of a run part-way through its horizon

    resumed = learnreg.run(CONFIG, out=tmp_path / "run", progress=False)
    strip = lambda s: {k: v for k, v in s.items() if not k.endswith("_seconds")}  # noqa: E731
    assert strip(resumed) == strip(reference)
    assert _records(tmp_path / "run") == _records(tmp_path / "ref")
    learned = "learned/optimizer.safetensors"
    assert (tmp_path / "run" / learned).read_bytes() == (tmp_path / "ref" / learned).read_bytes()


def _meta_train(rank: int = 0) -> dict:
    """Four PES meta-steps of Meta-SGD on a tiny regression (4 pairs on 2 tasks, runs of
    two windows): the meta-parameters, and the checkpointed estimator state."""
    from test_es import meta_sgd_context

    from learnreg.core import distributed
    from learnreg.core.trainer import MetaTrainer

    ctx = meta_sgd_context()
    if rank:  # rank 0's meta-parameters must win: the outer optimizer broadcasts them
        with torch.no_grad():
            ctx.biases.optimizer.lr.add_(1.0)
    pes = PES(sigma=0.01, pairs=4, window=2, horizon=4, meta_batch=2)
    trainer = MetaTrainer(ctx.family, ctx.biases, ctx.objective, pes, seed=ctx.seed, device="cpu")
    trainer.fit(3, progress=False)
    with distributed.gathering_state():
        state = pes.state_dict()
    out = {
        "params": metaparams.flatten(metaparams.values_of(trainer.biases)),
        "indices": torch.tensor([r.index for r in pes.pos]),
    }
    if state["runs"]:  # rank 0 (the other ranks' checkpoint state is left empty)
        flat = lambda sd: torch.cat([v.flatten() for v in sd["params"].values()])  # noqa: E731
        out["accumulated"] = state["accumulated"]
        out["run_params"] = torch.cat([flat(p) for pair in state["runs"] for p in pair])
    return out


def test_two_gloo_ranks_learn_what_one_process_learns(tmp_path):
    ranks = run_ranks(_meta_train, tmp_path)
    single = _meta_train()
    # each rank holds its two pairs (rank 0 the first task's, rank 1 the second's)
    assert ranks[0]["indices"].tolist() == [2, 2] and ranks[1]["indices"].tolist() == [3, 3]
    for r in ranks:
        torch.testing.assert_close(r["params"], single["params"], rtol=1e-12, atol=1e-14)
    # rank 0's checkpoint holds every rank's runs and ξ, as one process's does
    torch.testing.assert_close(ranks[0]["accumulated"], single["accumulated"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["run_params"], single["run_params"], rtol=1e-12, atol=1e-14)
    assert "accumulated" not in ranks[1]


def test_torchrun_two_processes_learn_what_one_process_learns(tmp_path):
    """Through the CLI and the runner (rank 0 checkpoints and meta-tests, the other rank
    returns when meta-training ends)."""
    import os
    import subprocess
    import sys

    import yaml

    from learnreg.tracking.export import load_bias

    config = tmp_path / "pes.yaml"
    small = {"meta_steps": 4, "checkpoint_every": 2, "meta_test": {"steps": 5, "seeds": 1}}
    config.write_text(yaml.safe_dump({**CONFIG, **small}))
    root = Path(__file__).resolve().parent.parent
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    command += ["-m", "learnreg.cli", "run", str(config), "--out", str(tmp_path / "two")]
    subprocess.run([*command, "--no-progress"], check=True, env=env, cwd=tmp_path, timeout=600)
    single = learnreg.run(config, out=tmp_path / "one", progress=False)
    saved = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["trainer"]["estimator"]
    assert saved["steps"] == 4  # rank 0's estimator took every meta-step
    a = load_bias(tmp_path / "one" / "learned" / "optimizer").state_dict()
    b = load_bias(tmp_path / "two" / "learned" / "optimizer").state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-4)
