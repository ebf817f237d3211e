"""The functional inner loop trains exactly like ordinary PyTorch."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from learnreg.core.inner import InnerRun, init_state, inner_loop, inner_step
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy
from learnreg.optimizers import SGD, Adam


def _reference_trajectory(model, batches, opt_cls, **kw):
    model = copy.deepcopy(model)
    opt = opt_cls(model.parameters(), **kw)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return dict(model.named_parameters())


def test_inner_loop_matches_torch_optim(task):
    model = task.build_model(0)
    batches = [task.train.x[i : i + 8] for i in range(0, 40, 8)]
    batches = [(x, task.train.y[i * 8 : i * 8 + 8]) for i, x in enumerate(batches)]
    # torchopt computes Adam's bias correction 1 - b**t in float32 even for float64
    # parameters, hence the looser tolerance there.
    for role, (cls, kw), rtol in [
        (
            SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
            (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
            1e-10,
        ),
        (Adam(lr=0.01), (torch.optim.Adam, dict(lr=0.01)), 1e-4),
    ]:
        state = init_state(model, RandomInit(), role)
        with torch.no_grad():
            state = inner_loop(model, state, iter(batches), CrossEntropy(), role, len(batches))
        expected = _reference_trajectory(model, batches, cls, **kw)
        for name, p in expected.items():
            torch.testing.assert_close(state.params[name], p.detach(), rtol=rtol, atol=rtol * 1e-2)
        assert state.step == len(batches)


def test_differentiable_and_no_grad_steps_agree(task):
    model = task.build_model(1)
    state = init_state(model, RandomInit(), SGD(lr=0.1))
    batch = (task.train.x[:8], task.train.y[:8])
    with torch.no_grad():
        plain, loss_a = inner_step(model, state, batch, CrossEntropy(), SGD(lr=0.1))
    graph, loss_b = inner_step(model, state, batch, CrossEntropy(), SGD(lr=0.1))
    assert not any(p.requires_grad for p in plain.params.values())
    for k in plain.params:
        torch.testing.assert_close(plain.params[k], graph.params[k].detach())
    assert loss_a == loss_b


def test_inner_run_state_dict_continues_exactly(task):
    model = task.build_model(2)
    opt = Adam(lr=0.01)
    run = InnerRun(task, model, init_state(model, RandomInit(), opt), seed=5)
    with torch.no_grad():
        for _ in range(3):
            run.state, _ = inner_step(model, run.state, run.next_train(), CrossEntropy(), opt)
        saved = copy.deepcopy(run.state_dict())
        for _ in range(4):
            run.state, _ = inner_step(model, run.state, run.next_train(), CrossEntropy(), opt)
        clone = InnerRun(task, model, init_state(model, RandomInit(), opt), seed=5)
        clone.load_state_dict(saved)
        for _ in range(4):
            clone.state, _ = inner_step(model, clone.state, clone.next_train(), CrossEntropy(), opt)
    for k in run.state.params:
        assert torch.equal(run.state.params[k], clone.state.params[k])
