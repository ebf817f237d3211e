"""The leaner vmapped meta-step (issue 17) computes what it did: the MAML meta-gradient
equals an independent torchopt + torch.func.vmap reference over two meta-steps; runs that
end with their window get, when read, the states the window computed (replayed); the
model call without torch's tied-weights walk equals ``functional_call``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchopt
from fewshot_util import flat_grads, roles, sine_family
from torch import nn
from torch.func import functional_call, grad, vmap

from learnreg.core.estimator import derive_seed, meta_step
from learnreg.core.functional import call_model
from learnreg.core.inner_run import InnerRun
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.estimators import MetaContext, TruncatedUnroll, batched
from learnreg.models import MLP

WINDOW, BATCH = 3, 3


def _maml(keep_states=None):
    """MAML on float64 sine episodes (Nesterov SGD inner steps, Adam outer step)."""
    family = sine_family()
    biases = roles(family, lr=0.05)
    params = biases.meta_parameters()
    outer = OuterOptimizer(params, torch.optim.Adam(params, lr=1e-2), clip_grad_norm=1e3)
    ctx = MetaContext(family, biases, TaskLoss(), outer, 0, torch.device("cpu"))
    unroll = TruncatedUnroll(window=WINDOW, horizon=WINDOW, meta_batch=BATCH, vmap=True)
    if keep_states is not None:
        unroll._continue = lambda step: keep_states
    return ctx, unroll


def _reference(ctx):
    """The same meta-steps written with torchopt's functional API under vmap."""
    theta = {
        k: v.detach().clone().requires_grad_()
        for k, v in zip(ctx.biases.init.names, ctx.biases.init.theta)
    }
    model = ctx.model_for(ctx.family.sample(0), 0)
    inner = torchopt.sgd(0.05, momentum=0.9, nesterov=True)
    outer = torch.optim.Adam(theta.values(), lr=1e-2)

    def support_loss(p, x, y):
        return F.mse_loss(functional_call(model, p, (x,)), y)

    def adapt(theta, xs, ys, xq, yq):
        params, state = theta, inner.init(theta)
        for i in range(WINDOW):
            updates, state = inner.update(
                grad(support_loss)(params, xs[i], ys[i]), state, inplace=False
            )
            params = torchopt.apply_updates(params, updates, inplace=False)
        return F.mse_loss(functional_call(model, params, (xq,)), yq)

    def step(first):
        data = []
        for index in range(first, first + BATCH):
            task, seed = ctx.family.sample(index), derive_seed(ctx.seed, "meta_train", index)
            (xs, ys), (xq, yq) = (
                task.stream("train", seed).take(WINDOW),
                task.stream("val", seed + 1).take(1),
            )
            data.append((xs, ys, xq[0], yq[0]))
        outer.zero_grad()
        thetas = {k: v.expand(BATCH, *v.shape) for k, v in theta.items()}
        losses = vmap(adapt)(thetas, *(torch.stack(d) for d in zip(*data)))
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(theta.values(), 1e3)  # (not reached: torch clips with
        # norm + 1e-6 where learnreg has norm + 1e-12)
        grads = torch.cat([p.grad.flatten() for p in theta.values()])
        outer.step()
        return (
            float(losses.detach().mean()),
            grads,
            torch.cat([p.detach().flatten() for p in theta.values()]),
        )

    return step


def test_maml_meta_steps_equal_torchopt_with_vmap():
    ctx, unroll = _maml()
    reference = _reference(ctx)
    theta = list(ctx.biases.init.theta)
    for first in (0, BATCH):  # the second meta-step starts from the moved θ0
        meta_loss, grads, after = reference(first)
        metrics = meta_step(ctx, unroll)
        assert metrics["meta_loss"] == pytest.approx(meta_loss, rel=1e-12)
        assert grads.abs().max() > 1e-3
        torch.testing.assert_close(flat_grads(theta), grads, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(
            torch.cat([p.detach().flatten() for p in theta]), after, rtol=1e-12, atol=1e-14
        )


def test_runs_ending_with_their_window_replay_the_states_it_computed(monkeypatch):
    seen = []
    plain = batched.unroll_batched

    def spy(*args, **kwargs):
        seen.append(kwargs["keep_states"])
        return plain(*args, **kwargs)

    monkeypatch.setattr(batched, "unroll_batched", spy)
    results = []
    for keep in (True, None):  # states returned from vmap; the estimator's choice (replay)
        ctx, unroll = _maml(keep)
        grads = []
        for _ in range(2):
            meta_step(ctx, unroll)
            grads.append(flat_grads(ctx.biases.meta_parameters()).clone())
        results.append((grads, unroll.runs))  # read after the outer step moved θ0
    assert seen == [True, True, False, False]
    (grads_kept, kept), (grads_replayed, replayed) = results
    for a, b in zip(grads_kept, grads_replayed):
        assert torch.equal(a, b)
    for a, b in zip(kept, replayed):
        assert a.state.step == b.state.step == WINDOW
        for k in a.state.params:
            assert torch.equal(a.state.params[k], b.state.params[k])
            assert not b.state.params[k].requires_grad
        trees = [torch.utils._pytree.tree_leaves(r.state.opt_state) for r in (a, b)]
        assert len(trees[0]) == len(trees[1]) > 0
        assert all(torch.equal(x, y) for x, y in zip(*trees))


def test_only_runs_past_their_horizon_skip_the_states():
    unroll = TruncatedUnroll(window=2, horizon=6)
    assert [unroll._continue(step) for step in (0, 2, 4)] == [True, True, False]
    assert TruncatedUnroll(window=1, horizon=None)._continue(10**6)
    assert not TruncatedUnroll(window=5, horizon=5)._continue(0)


class _Tied(nn.Module):
    """Two layers sharing one weight (registered under two names)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_model_call_equals_functional_call_with_and_without_tied_weights():
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    for model in (MLP((3,), 2, hidden=(4,)), _Tied()):
        params = {k: torch.randn_like(v, requires_grad=True) for k, v in model.named_parameters()}
        ours, torchs = call_model(model, params, {}, x), functional_call(model, params, (x,))
        assert torch.equal(ours, torchs)
        mine = torch.autograd.grad(ours.square().sum(), list(params.values()))
        theirs = torch.autograd.grad(torchs.square().sum(), list(params.values()))
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    # the tied name follows the value given for its first name, as functional_call does
    tied = _Tied()
    params = {k: torch.zeros_like(v) for k, v in tied.named_parameters()}
    assert "b.weight" not in params and torch.equal(
        call_model(tied, params, {}, x), torch.zeros(5, 3)
    )


def test_a_window_drawn_at_once_gives_its_last_batch_when_read():
    task = sine_family().sample(0)
    run = InnerRun(task, None, None, seed=3)
    x, y = run.train.take(WINDOW)
    run.drew_window((x, y))
    last = run.last_batch
    assert torch.equal(last[0], x[-1]) and torch.equal(last[1], y[-1])
    assert run.last_batch is last  # cut out once
    batch = run.next_train()
    assert run.last_batch is batch
