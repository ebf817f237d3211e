"""A meta-batch's set-up made in one call (issue 17): ``MetaContext.new_runs`` gives the
runs ``new_run`` gives one by one, the batched unroll's per-run fallback (an optimizer
whose state cannot be built for the whole meta-batch) gives the batched meta-gradient, a
task's split under two names moves once, and the outer step uses only the estimate."""

from __future__ import annotations

import pytest
import torch
from fewshot_util import flat_grads, roles, sine_family

from learnreg.core.bias import Biases
from learnreg.core.estimator import derive_seed, meta_step
from learnreg.core.inner import init_state
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import Split, Task
from learnreg.estimators import MetaContext, TruncatedUnroll, batch_start
from learnreg.inits import RandomInit


def _context(init: str):
    family = sine_family()
    biases = roles(family)
    if init == "random":  # reads the built weights: a seeded model per run
        biases = Biases(biases.loss, biases.optimizer, RandomInit())
    return MetaContext(family, biases, TaskLoss(), None, 0, torch.device("cpu"))


@pytest.mark.parametrize("init", ["maml", "random"])
@pytest.mark.parametrize("defer_init", [False, True])
def test_new_runs_are_the_runs_built_one_by_one(init, defer_init):
    ctx = _context(init)
    runs = ctx.new_runs("meta_train", range(2, 5), defer_init=defer_init)
    assert [r.index for r in runs] == [2, 3, 4]
    assert all(r.fresh is defer_init and r.step == 0 for r in runs)
    models = {id(r.model) for r in runs}
    assert len(models) == (1 if init == "maml" else 3)  # shared only when the weights are unread
    biases = ctx.biases
    for run in runs:  # the old construction: the task, a seeded model, its streams
        task = ctx.family.sample(run.index)
        seed = derive_seed(0, "meta_train", run.index)
        state = init_state(task.build_model(seed), biases.init, biases.optimizer, task)
        assert run.seed == seed
        assert torch.equal(run.task.train.x, task.train.x)
        assert torch.equal(run.train.perm, task.stream("train", seed).perm)
        assert torch.equal(run.val.perm, task.stream("val", seed + 1).perm)
        for k, v in state.params.items():
            assert torch.equal(run.state.params[k], v)
        assert not run.fresh and run.step == 0  # built on first read


def test_new_run_with_a_given_task_uses_it():
    ctx = _context("maml")
    task = ctx.family.sample(7)
    run = ctx.new_run("meta_test", 0, task=task)
    assert run.task is task and run.index == 0


def _meta_gradient():
    family = sine_family()
    biases = roles(family)
    params = biases.meta_parameters()
    outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
    ctx = MetaContext(family, biases, TaskLoss(), outer, 0, torch.device("cpu"))
    unroll = TruncatedUnroll(window=3, horizon=3, meta_batch=3, vmap=True)
    loss = meta_step(ctx, unroll)["meta_loss"]
    return loss, flat_grads(params).clone()


def test_the_per_run_fallback_of_a_batched_start_gives_the_same_meta_gradient(monkeypatch):
    loss, grads = _meta_gradient()
    # initial_states returns None when the optimizer's state cannot be built for the
    # whole meta-batch at once: each run then builds its own, stacked
    monkeypatch.setattr(batch_start, "initial_states", lambda runs, init, optimizer: None)
    fallback_loss, fallback = _meta_gradient()
    assert grads.abs().max() > 1e-4
    assert fallback_loss == pytest.approx(loss, rel=1e-12)
    torch.testing.assert_close(fallback, grads, rtol=1e-10, atol=1e-14)


def test_a_split_under_two_names_moves_once():
    train, query = (
        Split(torch.randn(4, 1), torch.randn(4, 1)),
        Split(torch.randn(3, 1), torch.randn(3, 1)),
    )
    episode = Task("sine", "regression", train, query, query, num_classes=1)
    assert episode.to("cpu") is episode
    moved = episode.to("meta")
    assert moved.val is moved.test and moved.val.x.device.type == "meta"
    assert moved.train.x.device.type == "meta"
    other = Split(torch.randn(3, 1), torch.randn(3, 1))
    separate = Task("sine", "regression", train, query, other, num_classes=1).to("meta")
    assert separate.test is not separate.val and separate.test.y.device.type == "meta"


def test_the_outer_step_ignores_a_stale_gradient():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    outer = OuterOptimizer([w], torch.optim.SGD([w], lr=0.5), named={"init": {"w": w}})
    w.grad = torch.tensor([100.0, 100.0])  # left over from elsewhere: not the estimate's
    info = outer.apply({"init": {"w": torch.tensor([1.0, -1.0])}}, 0.3)
    assert info["skipped"] == 0.0 and info["grad_norm"] == pytest.approx(2**0.5)
    torch.testing.assert_close(w.detach(), torch.tensor([0.5, 2.5]))
