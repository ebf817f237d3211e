"""PES: unbiased where truncated backprop is not, vmap equals the loop, resume equals an
uninterrupted run bit for bit, two gloo ranks equal one process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from antithetic_util import full_unroll_gradient, quadratic_context
from conftest import Interrupt, interrupted_at
from scipy import stats

import learnreg
from learnreg.core import metaparams
from learnreg.estimators import PES, TruncatedUnroll

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
    a, b = (PES(sigma=0.05, pairs=4, window=5, horizon=10, meta_batch=2, vmap=v) for v in (True, False))
    ctx_a, ctx_b = quadratic_context(), quadratic_context()
    for _ in range(3):
        ga, gb = a.estimate(ctx_a), b.estimate(ctx_b)
        torch.testing.assert_close(ga.grads, gb.grads, rtol=1e-12, atol=1e-15)
