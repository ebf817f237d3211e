"""Every learnreg optimizer (one table: learnreg.optim.catalog) passes the same checks."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnreg.optim.catalog import CATALOG

NAMES = sorted(CATALOG)
LR = 0.05


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    data = [(torch.randn(12, 5), torch.randint(0, 3, (12,))) for _ in range(6)]
    return model, data


def _closure(opt, model, batch):
    x, y = batch

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _train(opt, model, batches, step=None):
    step = step or opt.step
    for batch in batches:
        step(_closure(opt, model, batch))


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _assert_equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name):
    entry = CATALOG[name]
    model, data = _problem()
    opt = entry.build(model.parameters(), LR)
    _train(opt, model, data[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed, _ = _problem(seed=1)  # different weights and a differently seeded rule
    resumed.load_state_dict(saved["model"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        opt2 = entry.build(resumed.parameters(), LR * 3)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == LR
    _train(opt, model, data[3:])
    _train(opt2, resumed, data[3:])
    _assert_equal(_params(model), _params(resumed))


@pytest.mark.parametrize("name", NAMES)
def test_scheduler_changes_the_step(name):
    entry = CATALOG[name]
    moves = {}
    for factor in (0.0, 0.5, 1.0):
        model, data = _problem()
        before = _params(model)
        opt = entry.build(model.parameters(), LR)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch, f=factor: f)
        _train(opt, model, data[:1])
        sched.step()
        moves[factor] = [a - b for a, b in zip(_params(model), before)]
    assert all(torch.count_nonzero(m) == 0 for m in moves[0.0])  # lr 0: parameters unchanged
    assert any(not torch.equal(a, b) for a, b in zip(moves[0.5], moves[1.0]))
    if entry.lr_linear:
        for half, full in zip(moves[0.5], moves[1.0]):
            torch.testing.assert_close(half, 0.5 * full, rtol=1e-5, atol=1e-7)  # float32 ulps


@pytest.mark.parametrize("name", NAMES)
def test_closure_returns_the_loss_and_matches_manual_passes(name):
    entry = CATALOG[name]
    model, data = _problem()
    twin = copy.deepcopy(model)
    opt = entry.build(model.parameters(), LR)
    x, y = data[0]
    expected = F.cross_entropy(model(x), y).item()
    loss = opt.step(_closure(opt, model, data[0]))
    assert loss.item() == pytest.approx(expected, abs=1e-7)

    manual = entry.build(twin.parameters(), LR)
    for phase in range(entry.passes):
        manual.zero_grad(set_to_none=True)
        F.cross_entropy(twin(x), y).backward()
        if phase < entry.passes - 1:
            manual.ascend()
    manual.step()
    _assert_equal(_params(model), _params(twin))


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_different_learning_rates(name):
    entry = CATALOG[name]
    model, data = _problem()
    single = copy.deepcopy(model)
    first, second = model[0], model[2]
    groups = [{"params": first.parameters()}, {"params": second.parameters(), "lr": 0.0}]
    opt = entry.build(groups, LR)
    frozen = _params(second)
    _train(opt, model, data[:2])
    _assert_equal(_params(second), frozen)

    # the moving group moves as it would with the same lr in a single group, first step
    model2, _ = _problem()
    opt2 = entry.build(model2.parameters(), LR)
    _train(opt2, model2, data[:1])
    grouped, _ = _problem()
    opt3 = entry.build(
        [{"params": grouped[0].parameters()}, {"params": grouped[2].parameters(), "lr": 0.0}],
        LR,
    )
    _train(opt3, grouped, data[:1])
    for a, b in zip(grouped[0].parameters(), model2[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    del single


@pytest.mark.parametrize("name", NAMES)
def test_zero_grad(name):
    model, data = _problem()
    opt = CATALOG[name].build(model.parameters(), LR)
    x, y = data[0]
    F.cross_entropy(model(x), y).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    F.cross_entropy(model(x), y).backward()
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_equals_eager(name):
    torch._dynamo.reset()
    entry = CATALOG[name]
    model, data = _problem()
    twin = copy.deepcopy(model)
    eager = entry.build(model.parameters(), LR)
    compiled = entry.build(twin.parameters(), LR)
    _train(eager, model, data[:2])
    _train(compiled, twin, data[:2], step=torch.compile(compiled.step))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
