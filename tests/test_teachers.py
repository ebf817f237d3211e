"""Teacher meta-objectives: the regularized loss as value, the optimizer's direction as
gradient, from the same equations as the torch.optim wrappers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_task
from torch import nn

from learnreg import registry
from learnreg.core.bias import Biases
from learnreg.core.inner import InnerState
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import SingleTask
from learnreg.estimators import MetaContext, TruncatedUnroll
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy
from learnreg.optim import GAM, GSAM, SAM
from learnreg.optim.teachers import GAMTeacher, GSAMTeacher, SAMTeacher
from learnreg.optimizers import MLPRule

PAIRS = {
    "sam": (SAMTeacher(rho=0.05), lambda ps: SAM(ps, torch.optim.SGD, rho=0.05, lr=1.0)),
    "asam": (
        SAMTeacher(rho=0.5, adaptive=True),
        lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, adaptive=True, lr=1.0),
    ),
    "gsam": (
        GSAMTeacher(rho=0.05, alpha=0.3),
        lambda ps: GSAM(ps, torch.optim.SGD, rho_max=0.05, rho_min=0.05, alpha=0.3, lr=1.0),
    ),
    "gam": (
        GAMTeacher(beta=0.3, gamma=0.4),
        lambda ps: GAM(ps, torch.optim.SGD, beta=0.3, gamma=0.4, lr=1.0),
    ),
}


def _setup():
    task = tiny_task()
    model = task.build_model(0)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    return task, model, params, task.stream("val", 0).next()


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_gradient_is_the_optimizers_direction(name):
    teacher, build = PAIRS[name]
    task, model, params, batch = _setup()
    value = teacher(model, InnerState(params, {}, None), batch, task)
    grads = torch.autograd.grad(value, list(params.values()))

    twin = copy.deepcopy(model)  # SGD with lr 1: the displacement is minus the direction
    opt = build(twin.parameters())

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(twin(batch[0]), batch[1])
        loss.backward()
        return loss

    opt.step(closure)
    for g, p0, p1 in zip(grads, params.values(), twin.parameters()):
        torch.testing.assert_close(g, (p0 - p1).detach(), rtol=1e-9, atol=1e-12)


def test_sam_value_is_the_perturbed_loss():
    task, model, params, (x, y) = _setup()
    value = SAMTeacher(rho=0.1)(model, InnerState(params, {}, None), (x, y), task)
    names = list(params)
    loss = lambda ps: F.cross_entropy(torch.func.functional_call(model, ps, (x,)), y)  # noqa: E731
    g = torch.autograd.grad(loss(params), list(params.values()))
    norm = torch.sqrt(sum((t * t).sum() for t in g))
    perturbed = {k: params[k] + 0.1 * gi / norm for k, gi in zip(names, g)}
    assert value.item() == pytest.approx(loss(perturbed).item(), rel=1e-12)
    assert value.item() > loss(params).item()


def test_teacher_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    task = tiny_task()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    saved = {k: v.clone() for k, v in buffers.items()}
    GAMTeacher()(model, InnerState(params, buffers, None), task.stream("val", 0).next(), task)
    for k in buffers:
        assert torch.equal(buffers[k], saved[k])


def test_teachers_are_registered_objectives():
    for name, cls in (("sam", SAMTeacher), ("gsam", GSAMTeacher), ("gam", GAMTeacher)):
        assert registry.lookup("objective", name) is cls


def test_window_one_fast_path_agrees_with_the_generic_unroll():
    """The exact one-step hypergradient and full backprop see the same teacher gradient."""
    task = tiny_task()
    grads = []
    for fast in (True, False):
        torch.manual_seed(0)
        rule = MLPRule(hidden=(6,), step_mult=0.05).double()
        with torch.no_grad():
            for p in rule.parameters():
                p.add_(0.2 * torch.randn_like(p))
        biases = Biases(CrossEntropy(), rule, RandomInit())
        params = biases.meta_parameters()
        outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
        ctx = MetaContext(SingleTask(task), biases, GSAMTeacher(alpha=0.5), outer, 0, "cpu")
        TruncatedUnroll(window=1, horizon=1, fast_path=fast).unroll(ctx, ctx.new_run("m", 0))
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert grads[0].abs().max() > 1e-8
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
