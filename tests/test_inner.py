"""The functional inner loop trains exactly like ordinary PyTorch."""

from __future__ import annotations

import copy

import optree
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from learnreg.core.functional import _UNTIED, call_model, plain_autograd_allowed, value_and_grad
from learnreg.core.inner import init_state, inner_loop, inner_step
from learnreg.core.inner_run import InnerRun
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy, TaylorLoss
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


def _bn_model(frozen: bool = False) -> torch.nn.Module:
    torch.manual_seed(3)
    # batch statistics only: torch.func's grad refuses BatchNorm's in-place running stats
    norm = torch.nn.BatchNorm1d(16, track_running_stats=False)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), norm, torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )
    if frozen:  # the inner loop adapts the head only (held parameters pass through)
        model.adapt_patterns = ("3.*",)
    return model


@pytest.mark.parametrize(
    "role",
    [
        SGD(lr=0.1),
        SGD(lr=0.1, momentum=0.9),
        SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        Adam(lr=0.01),
    ],
    ids=["sgd", "momentum", "nesterov_wd", "adam"],
)
@pytest.mark.parametrize("frozen", [False, True], ids=["all", "head_only"])
@pytest.mark.parametrize("learned_loss", [False, True], ids=["ce", "taylor"])
def test_graph_free_step_follows_the_torch_func_trajectory_bit_for_bit(role, frozen, learned_loss):
    """Under no_grad the step takes its gradient by plain autograd; with gradients on it
    is torch.func's. After 12 steps (float32, a batch-normalized MLP, a loss with
    meta-parameters or without, all parameters adapted or the head only) parameters,
    optimizer state and losses are the same bits."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))]
    batches *= 12
    loss = TaylorLoss("classification", 3, [0.1, 0.5, 0.2, -0.1, 0.3, 2.0, -2.0, 0.1])
    loss = loss if learned_loss else CrossEntropy()
    runs = []
    for grad_enabled in (False, True):
        model = _bn_model(frozen)
        state = init_state(model, RandomInit(), role)
        values = []
        with torch.set_grad_enabled(grad_enabled):
            assert plain_autograd_allowed() is not grad_enabled
            for batch in batches:
                state, value = inner_step(model, state, batch, loss, role)
                values.append(value)
        runs.append((state, torch.stack(values).detach()))
    (plain, plain_values), (func, func_values) = runs
    assert not any(p.requires_grad for p in plain.params.values())
    assert torch.equal(plain_values, func_values)
    for k in func.params:
        assert torch.equal(plain.params[k], func.params[k].detach()), k
    for a, b in zip(optree.tree_leaves(plain.opt_state), optree.tree_leaves(func.opt_state)):
        assert torch.equal(a, b.detach())
    if frozen:
        assert torch.equal(plain.params["0.weight"], _bn_model().state_dict()["0.weight"])


def test_value_and_grad_gives_torch_func_zeros_for_unused_parameters():
    params = {"used": torch.randn(3), "unused": torch.randn(2)}

    def fn(p):
        return (p["used"] ** 2).sum()

    with torch.no_grad():
        grads, value = value_and_grad(fn, params)
        constant, _ = value_and_grad(lambda p: torch.tensor(1.0), params)
    assert torch.equal(grads["used"], 2 * params["used"])
    assert torch.equal(grads["unused"], torch.zeros(2))
    assert value == fn(params) and not value.requires_grad
    assert all(torch.equal(c, torch.zeros_like(params[k])) for k, c in constant.items())


def test_plain_autograd_is_refused_inside_vmap():
    seen = []

    def probe(x):
        seen.append(plain_autograd_allowed())
        return x

    with torch.no_grad():
        torch.func.vmap(probe)(torch.zeros(2, 1))
        seen.append(plain_autograd_allowed())
    assert seen == [False, True]


def test_call_model_unties_shared_weights_and_skips_the_search_on_untied_models():
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3)
    tied = torch.nn.Sequential(shared, torch.nn.Tanh(), shared)  # "2.*" is "0.*"
    new = {k: torch.randn_like(v) for k, v in tied.named_parameters()}  # names 0.* only
    x = torch.randn(5, 3)
    expected = torch.tanh(x @ new["0.weight"].T + new["0.bias"]) @ new["0.weight"].T + new["0.bias"]
    torch.testing.assert_close(call_model(tied, new, {}, x), expected)
    untied = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3))
    params = {k: torch.randn_like(v) for k, v in untied.named_parameters()}
    assert torch.equal(call_model(untied, params, {}, x), functional_call(untied, params, (x,)))
    assert _UNTIED[untied] and not _UNTIED[tied]
