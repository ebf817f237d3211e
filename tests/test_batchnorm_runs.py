"""BatchNorm models train in the inner loop as nn.Module + torch.optim would train them:
running statistics move with each training-mode step, per run, in the graph-free and the
differentiable step alike."""

from __future__ import annotations

import copy

import torch
from torch import nn

from learnreg.core.compiled import graph_free_step
from learnreg.core.inner import init_state, inner_loop, inner_step
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy
from learnreg.optimizers import SGD

STEPS = 6


def _model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 5, generator=gen) * 2 + 1, torch.randint(0, 3, (16,), generator=gen))
        for _ in range(STEPS)
    ]
    return model.double(), [(x.double(), y) for x, y in batches]


def _reference(model, batches):
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    return dict(ref.named_parameters()), dict(ref.named_buffers())


def _check(state, model, batches):
    params, buffers = _reference(model, batches)
    for name, p in params.items():
        torch.testing.assert_close(state.params[name].detach(), p.detach(), rtol=1e-10, atol=1e-12)
    for name, b in buffers.items():  # running mean, var and the batch count moved as in torch
        torch.testing.assert_close(state.buffers[name], b, rtol=1e-10, atol=0)
    assert int(state.buffers["1.num_batches_tracked"]) == STEPS


def test_graph_free_steps_follow_torch_optim_with_batchnorm_statistics():
    model, batches = _model_and_batches()
    role = SGD(lr=0.1, momentum=0.9)
    state = init_state(model, RandomInit(), role)
    step = lambda *a: graph_free_step(*a, compile=False)  # noqa: E731
    state = inner_loop(model, state, iter(batches), CrossEntropy(), role, STEPS, step=step)
    _check(state, model, batches)
    assert (
        dict(model.named_buffers())["1.running_mean"].abs().max() == 0
    )  # the model's own: untouched


def test_differentiable_steps_follow_torch_optim_with_batchnorm_statistics():
    model, batches = _model_and_batches()
    role = SGD(lr=0.1, momentum=0.9)
    state = init_state(model, RandomInit(), role)
    for batch in batches:
        state, _ = inner_step(model, state, batch, CrossEntropy(), role)
    _check(state, model, batches)


def test_two_runs_of_one_model_keep_their_own_statistics():
    model, batches = _model_and_batches()
    role = SGD(lr=0.1)
    a = init_state(model, RandomInit(), role)
    b = init_state(model, RandomInit(), role)
    with torch.no_grad():
        a = inner_loop(model, a, iter(batches), CrossEntropy(), role, STEPS)
    assert int(b.buffers["1.num_batches_tracked"]) == 0
    assert b.buffers["1.running_mean"].abs().max() == 0
    assert a.buffers["1.running_mean"].abs().max() > 0
