"""Truncated antithetic ES: converges to the window's true meta-gradient, determinism,
arguments."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_task

from learnreg.core import metaparams
from learnreg.core.bias import Biases
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask
from learnreg.errors import ConfigError
from learnreg.estimators import MetaContext, TruncatedES, TruncatedUnroll
from learnreg.inits import RandomInit
from learnreg.losses import MSE
from learnreg.optimizers import MetaSGD


def meta_sgd_context(seed: int = 0) -> MetaContext:
    """A float64 MLP regression trained by Meta-SGD: 23 per-coordinate learning rates."""
    task = tiny_task("regression", c=2, hidden=(3,))
    biases = Biases(MSE(), MetaSGD(model=task.build_model(0), lr=0.05), RandomInit()).double()
    return MetaContext(SingleTask(task), biases, TaskLoss(), None, seed, torch.device("cpu"))


def backprop_gradient(ctx: MetaContext, window: int) -> torch.Tensor:
    """The window's exact meta-gradient: truncated backprop on the same run (run index 0,
    so the same model seed and batches as the estimators' first task)."""
    unroll = TruncatedUnroll(window=window, horizon=window, average=True, objective_batch="train")
    unroll.unroll(ctx, ctx.new_run("meta_train", 0))
    grad = torch.cat([p.grad.flatten() for p in ctx.biases.meta_parameters()])
    ctx.biases.zero_grad(set_to_none=True)
    return grad


def test_es_converges_to_the_true_gradient_with_many_pairs():
    ctx = meta_sgd_context()
    exact = backprop_gradient(ctx, window=3)
    es = TruncatedES(sigma=1e-3, pairs=4000, window=3, horizon=3, meta_batch=1)
    estimate = metaparams.flatten(es.estimate(ctx).grads)
    few = metaparams.flatten(
        TruncatedES(sigma=1e-3, pairs=8, window=3, horizon=3, meta_batch=1).estimate(ctx).grads
    )
    cosine = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    assert cosine(estimate, exact) > 0.99
    assert cosine(few, exact) < 0.9  # a few pairs are a noisy direction: the test can fail
    # the magnitude too, not only the direction
    assert estimate.norm().item() == pytest.approx(exact.norm().item(), rel=0.1)


def test_es_is_deterministic_and_both_copies_restart_from_one_state():
    ctx = meta_sgd_context()
    a, b = (TruncatedES(sigma=0.01, pairs=4, window=2, horizon=4) for _ in range(2))
    for _ in range(2):
        ga, gb = a.estimate(ctx), b.estimate(ctx)
        torch.testing.assert_close(
            metaparams.flatten(ga.grads), metaparams.flatten(gb.grads), rtol=0, atol=0
        )
        assert ga.metrics == gb.metrics and ga.metrics["meta_loss"] > 0
    for pos, neg in zip(a.pos, a.neg):
        assert pos.state is neg.state and pos.state.step == 4
    a.estimate(ctx)  # past the horizon: fresh runs on the next tasks
    assert a.next_index == 8 and a.pos[0].state.step == 2


def test_es_at_different_run_seeds_draws_different_noise():
    a = TruncatedES(sigma=0.01, pairs=2, window=2, horizon=2).estimate(meta_sgd_context(0))
    b = TruncatedES(sigma=0.01, pairs=2, window=2, horizon=2).estimate(meta_sgd_context(1))
    assert not torch.equal(metaparams.flatten(a.grads), metaparams.flatten(b.grads))


@pytest.mark.parametrize(
    "args, message",
    [
        ({"window": 3, "horizon": 10}, "multiple of it"),
        ({"pairs": 6, "meta_batch": 4}, "multiple of meta_batch"),
        ({"sigma": 0.0}, "sigma must be positive"),
    ],
)
def test_bad_arguments_name_the_problem(args, message):
    with pytest.raises(ConfigError, match=message):
        TruncatedES(**args)


def test_a_config_with_bad_pair_settings_is_refused_when_loaded():
    from learnreg import config

    base = {
        "task": {"_component_": "digits"},
        "optimizer": {"_component_": "learned_lr"},
        "estimator": {"_component_": "pes", "pairs": 6, "meta_batch": 4},
    }
    with pytest.raises(ConfigError, match="multiple of meta_batch"):
        config.load(base)
    with pytest.raises(ConfigError, match="sigma must be positive"):
        config.load({**base, "estimator": {"_component_": "es", "sigma": -1.0}})
