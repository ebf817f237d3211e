"""TruncatedUnroll computes the true meta-gradient; online AdaLFL is the textbook update."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_task
from torch.func import functional_call

from learnreg.core.bias import Biases
from learnreg.core.estimator import meta_step
from learnreg.core.inner import inner_loop
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import SingleTask
from learnreg.core.trainer import MetaTrainer
from learnreg.errors import ConfigError
from learnreg.estimators import MetaContext, TruncatedUnroll
from learnreg.inits import RandomInit
from learnreg.losses import NeuralLoss
from learnreg.optimizers import SGD, Adam


def _context(task, biases, seed=0):
    params = biases.meta_parameters()
    outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
    return MetaContext(SingleTask(task), biases, TaskLoss(), outer, seed, torch.device("cpu"))


def _neural_biases(task, optimizer):
    torch.manual_seed(0)
    loss = NeuralLoss(
        task.kind, task.num_classes, hidden=(5, 5), activation="smooth_leaky_relu"
    ).double()
    return Biases(loss, optimizer, RandomInit())


def _meta_loss(ctx, window, objective_batch):
    """The meta-objective of a fresh run after ``window`` steps, without gradients."""
    run = ctx.new_run("meta_train", 0)
    with torch.no_grad():
        state = inner_loop(
            run.model,
            run.state,
            iter(run.next_train, None),
            ctx.biases.loss,
            ctx.biases.optimizer,
            window,
        )
        batch = run.val.next() if objective_batch == "val" else run.last_batch
        return ctx.objective(run.model, state, batch, run.task).item()


@pytest.mark.parametrize("kind", ["classification", "regression"])
@pytest.mark.parametrize("window", [1, 3])
def test_meta_gradient_matches_central_finite_differences(kind, window):
    task = tiny_task(kind, c=3 if kind == "classification" else 2)
    biases = _neural_biases(task, SGD(lr=0.3, momentum=0.9))
    ctx = _context(task, biases)
    unroll = TruncatedUnroll(window=window, horizon=window, fast_path=False)
    unroll.unroll(ctx, ctx.new_run("meta_train", 0))
    analytic = torch.cat([p.grad.flatten() for p in biases.meta_parameters()])

    eps, numeric = 1e-6, []
    for p in biases.meta_parameters():
        for i in range(p.numel()):
            with torch.no_grad():
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + eps
                up = _meta_loss(ctx, window, "val")
                p.view(-1)[i] = old - eps
                down = _meta_loss(ctx, window, "val")
                p.view(-1)[i] = old
            numeric.append((up - down) / (2 * eps))
    numeric = torch.tensor(numeric, dtype=analytic.dtype)
    assert analytic.abs().max() > 1e-6, "the test problem must have a non-trivial meta-gradient"
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "make_opt",
    [lambda: SGD(lr=0.2), lambda: SGD(lr=0.1, momentum=0.9, nesterov=True), lambda: Adam(lr=0.01)],
)
@pytest.mark.parametrize("kind", ["classification", "regression"])
@pytest.mark.parametrize("objective_batch", ["val", "train"])
def test_fast_path_equals_double_backward(make_opt, kind, objective_batch):
    task = tiny_task(kind, c=3 if kind == "classification" else 2)
    grads = []
    for fast in (True, False):
        biases = _neural_biases(task, make_opt())
        ctx = _context(task, biases)
        run = ctx.new_run("meta_train", 0)
        unroll = TruncatedUnroll(
            window=1, horizon=None, objective_batch=objective_batch, fast_path=fast
        )
        for _ in range(3):  # later steps have a non-trivial optimizer state
            ctx.outer.zero_grad()
            meta_loss, _ = unroll.unroll(ctx, run)
        grads.append(
            ([p.grad.clone() for p in biases.meta_parameters()], meta_loss, run.state.params)
        )
    (g_fast, l_fast, p_fast), (g_slow, l_slow, p_slow) = grads
    assert l_fast == pytest.approx(l_slow, rel=1e-12)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for k in p_fast:
        torch.testing.assert_close(p_fast[k], p_slow[k], rtol=1e-12, atol=1e-14)


def test_online_adalfl_equals_hand_written_one_step_unroll():
    """Online AdaLFL (Raymond et al., Alg. 2): a base step under the learned loss, then a
    meta step on the task loss of the same batch at the new parameters, forever."""
    task = tiny_task(seed=3)
    lr, meta_lr, steps = 0.5, 0.01, 6
    biases = _neural_biases(task, SGD(lr=lr))
    reference_loss = copy.deepcopy(biases.loss)
    trainer = MetaTrainer(
        SingleTask(task),
        biases,
        TaskLoss(),
        TruncatedUnroll(window=1, horizon=None, objective_batch="train"),
        lambda p: torch.optim.Adam(p, lr=meta_lr),
        device="cpu",
    )
    trainer.fit(steps, progress=False)
    run = trainer.estimator.runs[0]

    # The same run by hand: same initial model, same batches.
    model = run.model
    fresh = trainer.ctx.new_run("meta_train", 0)
    params = {k: v.clone() for k, v in fresh.state.params.items()}
    meta_opt = torch.optim.Adam(reference_loss.parameters(), lr=meta_lr)
    for _ in range(steps):
        x, y = fresh.next_train()
        p = {k: v.requires_grad_() for k, v in params.items()}
        base = reference_loss(functional_call(model, p, (x,)), y)
        g = torch.autograd.grad(base, list(p.values()), create_graph=True)
        new = {k: v - lr * gi for (k, v), gi in zip(p.items(), g)}
        meta = F.cross_entropy(functional_call(model, new, (x,)), y)
        meta_opt.zero_grad()
        meta.backward()
        meta_opt.step()
        params = {k: v.detach() for k, v in new.items()}

    for a, b in zip(biases.loss.parameters(), reference_loss.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for k in params:
        torch.testing.assert_close(run.state.params[k], params[k], rtol=1e-10, atol=1e-12)
    assert run.state.step == steps


def test_horizon_resets_runs_and_meta_batch_averages():
    task = tiny_task()
    biases = _neural_biases(task, SGD(lr=0.1))
    ctx = _context(task, biases)
    unroll = TruncatedUnroll(window=2, horizon=4, meta_batch=2)
    meta_step(ctx, unroll)
    first = list(unroll.runs)  # held, so that new runs cannot reuse their ids
    meta_step(ctx, unroll)
    assert all(a is b for a, b in zip(unroll.runs, first)) and len(unroll.runs) == len(first)
    assert all(r.state.step == 4 for r in unroll.runs)
    meta_step(ctx, unroll)
    assert not any(r is old for r in unroll.runs for old in first)
    assert [r.index for r in unroll.runs] == [2, 3]


def test_invalid_window_and_horizon_are_rejected():
    with pytest.raises(ConfigError, match="horizon >= window"):
        TruncatedUnroll(window=5, horizon=2)
