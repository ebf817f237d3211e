"""The estimator contract: ``estimate`` returns the meta-gradient as values (no ``.grad``,
no optimizer step), the trainer applies it, first-order MAML is the closed form it should
be, and online adaptation is declared and validated."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_task

from learnreg import cli
from learnreg.core.bias import Biases
from learnreg.core.estimator import Estimate, Estimator, MetaContext, meta_step
from learnreg.core.metaparams import meta_parameters
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import SingleTask
from learnreg.errors import ConfigError
from learnreg.estimators import TruncatedUnroll
from learnreg.inits import LearnedInit, RandomInit
from learnreg.losses import MSE, NeuralLoss
from learnreg.optimizers import SGD


class Untouchable:
    """An outer optimizer that fails the test when anything uses it."""

    def __getattr__(self, name):
        raise AssertionError(f"the estimator used ctx.outer.{name}")


def _linear_maml(task, lr: float, outer=None):
    """Biases of MAML on a linear model: MSE, SGD(lr), a learned θ0."""
    model = task.build_model(0)
    biases = Biases(MSE(), SGD(lr=lr), LearnedInit(model))
    if outer is None:
        params = biases.meta_parameters()
        outer = OuterOptimizer(
            params, torch.optim.SGD(params, lr=0.0), named=meta_parameters(biases)
        )
    ctx = MetaContext(SingleTask(task), biases, TaskLoss(), outer, 0, torch.device("cpu"))
    return biases, ctx


def _augmented(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _flat_grad(estimate: Estimate, init: LearnedInit) -> torch.Tensor:
    """The init role's gradient as one vector [w; b] (the linear model's order)."""
    grads = estimate.grads["init"]
    return torch.cat([grads[f"theta.{i}"].flatten() for i in range(len(init.names))])


@pytest.mark.parametrize("vmap", [False, True])
def test_first_order_maml_is_the_gradient_at_the_adapted_parameters(vmap):
    """Linear regression, two SGD steps from a learned θ0 = [w; b]: with X̃ = [X, 1],
    ∇L(θ) = (2/n) X̃ᵀ(X̃θ − y) and H = (2/n) X̃ᵀX̃. First-order MAML's meta-gradient is
    ∇ℓ(θ₂) at the adapted parameters; the second-order one is (I − αH₁)(I − αH₂)∇ℓ(θ₂)."""
    task = tiny_task("regression", c=1, hidden=())
    lr = 0.3
    estimates = {}
    for first_order in (True, False):
        biases, ctx = _linear_maml(task, lr, outer=Untouchable())
        unroll = TruncatedUnroll(
            window=2, horizon=2, meta_batch=2, first_order=first_order, vmap=vmap
        )
        estimates[first_order] = unroll.estimate(ctx)
        assert all(p.grad is None for p in biases.meta_parameters())  # values, not .grad

    # by hand: the same two runs (same seeds, same batch order), averaged
    _, ctx = _linear_maml(task, lr)
    theta0 = torch.cat([p.detach().flatten() for p in ctx.biases.init.theta])
    first, second, meta_losses = 0.0, 0.0, []
    for index in range(2):
        run = ctx.new_run("meta_train", index)
        theta, hessians = theta0.clone(), []
        for _ in range(2):
            x, y = run.next_train()
            xt = _augmented(x)
            hessians.append(2 / len(x) * xt.T @ xt)
            theta = theta - lr * 2 / len(x) * xt.T @ (xt @ theta - y[:, 0])
        x, y = run.val.next()
        vt = _augmented(x)
        meta_losses.append(((vt @ theta - y[:, 0]) ** 2).mean())
        g = 2 / len(x) * vt.T @ (vt @ theta - y[:, 0])
        eye = torch.eye(len(theta), dtype=theta.dtype)
        first = first + g / 2
        second = second + (eye - lr * hessians[0]) @ (eye - lr * hessians[1]) @ g / 2

    init = ctx.biases.init
    torch.testing.assert_close(_flat_grad(estimates[True], init), first, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(_flat_grad(estimates[False], init), second, rtol=1e-10, atol=1e-12)
    expected_loss = float(sum(meta_losses) / 2)
    for estimate in estimates.values():
        assert estimate.metrics["meta_loss"] == pytest.approx(expected_loss, rel=1e-12)
    # the curvature terms matter here: the two estimators differ by far more than rounding
    gap = (_flat_grad(estimates[True], init) - _flat_grad(estimates[False], init)).norm()
    assert gap > 0.3 * first.norm()


def test_first_order_gives_a_learned_loss_no_meta_gradient():
    """The loss role reaches the meta-objective only through the inner gradient, which
    first-order MAML treats as a constant: its entry is absent (zero), the init's is not."""
    task = tiny_task("regression", c=2)
    torch.manual_seed(0)
    loss = NeuralLoss("regression", 2, hidden=(4,)).double()
    for first_order, has_loss in ((True, False), (False, True)):
        biases = Biases(loss, SGD(lr=0.1), LearnedInit(task.build_model(0)))
        ctx = MetaContext(
            SingleTask(task), biases, TaskLoss(), Untouchable(), 0, torch.device("cpu")
        )
        grads = TruncatedUnroll(window=2, horizon=2, first_order=first_order).estimate(ctx).grads
        assert ("loss" in grads) is has_loss and grads["init"]["theta.0"].abs().max() > 0


@pytest.mark.parametrize("fast_path", [True, False])
def test_estimate_equals_the_gradient_unroll_accumulates(fast_path):
    """``estimate`` (values) and ``unroll`` (into ``.grad``, for inspection) give the same
    numbers bit for bit, on the one-step fast path and the generic one."""
    task = tiny_task()
    grads = []
    for use_estimate in (True, False):
        torch.manual_seed(0)
        loss = NeuralLoss("classification", 3, hidden=(4,)).double()
        biases = Biases(loss, SGD(lr=0.3), RandomInit())
        ctx = MetaContext(
            SingleTask(task), biases, TaskLoss(), Untouchable(), 0, torch.device("cpu")
        )
        unroll = TruncatedUnroll(window=1, horizon=None, meta_batch=2, fast_path=fast_path)
        if use_estimate:
            estimate = unroll.estimate(ctx)
            grads.append([g for named in estimate.grads.values() for g in named.values()])
        else:
            unroll._refresh_runs(ctx)
            for run in unroll.runs:
                unroll.unroll(ctx, run, scale=0.5)
            grads.append([p.grad for p in biases.meta_parameters()])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_a_refused_outer_step_starts_fresh_runs():
    """``applied`` sees the outer step's outcome: a skipped (non-finite) step drops the
    runs, whose states may be garbage; an accepted one keeps them."""
    _, ctx = _linear_maml(tiny_task("regression", c=1, hidden=()), 0.1)
    unroll = TruncatedUnroll(window=1, horizon=None)
    meta_step(ctx, unroll)
    run = unroll.runs[0]
    unroll.applied(ctx, {"skipped": 0.0})
    assert unroll.runs == [run]
    unroll.applied(ctx, {"skipped": 1.0})
    assert unroll.runs == []


def test_meta_step_applies_the_estimate_with_the_outer_optimizer():
    """The trainer's step: the outer optimizer moves the meta-parameters along the
    returned gradient (plain SGD: θ − lr·g), and its info joins the metrics."""
    biases, ctx = _linear_maml(tiny_task("regression", c=1, hidden=()), 0.1)
    params = biases.meta_parameters()
    ctx.outer = OuterOptimizer(
        params, torch.optim.SGD(params, lr=0.5), named=meta_parameters(biases)
    )
    before = [p.detach().clone() for p in params]
    probe = TruncatedUnroll(window=1, horizon=1)
    expected = probe.estimate(
        MetaContext(ctx.family, biases, ctx.objective, Untouchable(), 0, ctx.device)
    )
    metrics = meta_step(ctx, TruncatedUnroll(window=1, horizon=1))
    assert metrics["skipped"] == 0.0 and metrics["meta_loss"] == expected.metrics["meta_loss"]
    for index, (p, b) in enumerate(zip(params, before)):
        torch.testing.assert_close(p.detach(), b - 0.5 * expected.grads["init"][f"theta.{index}"])


class Offline(Estimator):
    def estimate(self, ctx):
        return Estimate()


def test_online_adaptation_is_declared_on_the_contract(capsys, tmp_path):
    assert TruncatedUnroll.online and not Offline.online
    with pytest.raises(ConfigError, match="cannot adapt during meta-test"):
        Offline().attach(None)
    capsys.readouterr()
    rc = cli.main(
        [
            "run",
            "quickstart",
            "meta_test.adapt={_component_: evolution}",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "meta_test.adapt" in err and "'evolution' cannot adapt online" in err, err
    assert "truncated_unroll" in err  # the fix: an online estimator
    assert not (tmp_path / "run").exists()  # refused before anything was written
