"""Fresh meta-batch runs built together (step-0 states deferred, then built as one stacked
state; the batched result split into per-run states only when read) follow the same
trajectory as runs whose states are built one by one when they are made."""

from __future__ import annotations

import pytest
import torch
from fewshot_util import digits_family, flat_grads, roles, sine_family

from learnreg.core.bias import Biases
from learnreg.core.estimator import meta_step
from learnreg.core.inner import init_state
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.estimators import MetaContext, TruncatedUnroll
from learnreg.estimators.batch_start import initial_states
from learnreg.optimizers import Adam

SETTINGS = {
    "maml-sine-sgd": (sine_family, dict(init="maml", optimizer="sgd", loss="ce")),
    "film-digits-precond": (
        lambda: digits_family(film=True),
        dict(init="film", optimizer="precond", loss="learned_film", mode="warp"),
    ),
    "maml-sine-adam": (sine_family, None),  # Adam's state has scalar counts per leaf
}


def _biases(name):
    make, spec = SETTINGS[name]
    family = make()
    if spec is None:
        maml = roles(family)
        return family, Biases(maml.loss, Adam(0.01, eps_root=1e-16).double(), maml.init)
    return family, roles(family, **spec)


def _trajectory(name, defer: bool, vmap: bool = True, steps: int = 2):
    """Meta-steps with a moving outer optimizer, so the second meta-step's runs start
    from updated meta-parameters: its meta-loss, meta-gradients, and the runs at the end."""
    family, biases = _biases(name)
    params = biases.meta_parameters()
    outer = OuterOptimizer(params, torch.optim.Adam(params, lr=1e-2), clip_grad_norm=10.0)
    ctx = MetaContext(family, biases, TaskLoss(), outer, 0, torch.device("cpu"))
    if not defer:  # every run builds its state when it is made
        make = ctx.new_runs
        ctx.new_runs = lambda phase, indices, defer_init=False, tasks=None: make(phase, indices)
    unroll = TruncatedUnroll(window=3, horizon=3, meta_batch=3, vmap=vmap)
    losses, grads = [], []
    for _ in range(steps):
        losses.append(meta_step(ctx, unroll)["meta_loss"])
        grads.append(flat_grads(params).clone())
    return losses, grads, unroll.runs


@pytest.mark.parametrize("name", list(SETTINGS))
def test_deferred_meta_batch_follows_the_eager_trajectory(name):
    losses, grads, runs = _trajectory(name, defer=True)
    eager_losses, eager_grads, eager_runs = _trajectory(name, defer=False)
    assert all(r.fresh is False for r in runs)
    assert losses[0] != losses[1]  # two different meta-batches, at different meta-parameters
    assert grads[1].abs().max() > 1e-4
    assert losses == eager_losses
    for a, b in zip(grads, eager_grads):
        assert torch.equal(a, b)
    for run, eager in zip(runs, eager_runs):
        assert run.step == eager.step == run.state.step == 3
        for k, v in eager.state.params.items():
            # float64 rounding, not bit equality: the runs' final states are read back from
            # a graph-free replay, and whether its conv kernels round the last bit as the
            # eager path's do depends on the CPU (bit-equal on an AMD EPYC, 1 ulp apart on
            # an Intel Xeon for the FiLM conv model); the meta-losses and meta-gradients
            # above stay bit-equal on both
            torch.testing.assert_close(run.state.params[k], v, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_deferred_batched_meta_batch_equals_the_python_loop(name):
    losses, grads, runs = _trajectory(name, defer=True)
    loop_losses, loop_grads, loop_runs = _trajectory(name, defer=False, vmap=False)
    # batched kernels: float64 rounding, carried through one Adam step into the second
    assert losses == pytest.approx(loop_losses, rel=1e-10)
    for a, b in zip(grads, loop_grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    for run, loop in zip(runs, loop_runs):
        for k, v in loop.state.params.items():
            torch.testing.assert_close(run.state.params[k], v, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_initial_states_are_the_per_run_states_stacked(name):
    family, biases = _biases(name)
    ctx = MetaContext(family, biases, TaskLoss(), None, 0, torch.device("cpu"))
    runs = [ctx.new_run("meta_train", i, defer_init=True) for i in range(3)]
    assert all(r.fresh and r.step == 0 for r in runs)
    params, buffers, opt_state = initial_states(runs, biases.init, biases.optimizer)
    assert all(r.fresh for r in runs)  # nothing was built run by run
    for i, run in enumerate(runs):
        one = init_state(run.model, biases.init, biases.optimizer, run.task)
        for k, v in one.params.items():
            assert torch.equal(params[k][i], v)
        for k, v in one.buffers.items():
            assert torch.equal(buffers[k][i], v)
        mine = torch.utils._pytree.tree_leaves(opt_state)
        theirs = torch.utils._pytree.tree_leaves(one.opt_state)
        assert len(mine) == len(theirs) > 0
        for a, b in zip(mine, theirs):
            assert torch.equal(a[i], b)
    for leaf in torch.utils._pytree.tree_leaves(opt_state):  # each run owns its state
        assert leaf.stride(0) != 0 or leaf.shape[0] == 1
        leaf[0].add_(1)
        assert not torch.equal(leaf[0], leaf[1])


def test_a_deferred_state_is_built_once_on_first_read():
    family, biases = _biases("maml-sine-sgd")
    ctx = MetaContext(family, biases, TaskLoss(), None, 0, torch.device("cpu"))
    run = ctx.new_run("meta_train", 0, defer_init=True)
    calls = []
    build = run._pending
    run.defer(lambda: calls.append(1) or build(), 0, fresh=True)
    assert run.fresh and run.step == 0 and not calls
    state = run.state
    assert calls == [1] and not run.fresh and run.state is state and calls == [1]
    eager = ctx.new_run("meta_train", 0)
    for k, v in eager.state.params.items():
        assert torch.equal(state.params[k], v)


def test_moving_a_task_to_its_own_device_copies_nothing():
    task = sine_family().sample(0)
    assert task.to("cpu") is task and task.train.to(torch.device("cpu")) is task.train
    assert len(task.train) == task.train.x.shape[0] == 4
