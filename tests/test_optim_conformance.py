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


def _two_groups(model, first: dict, second: dict | None = None):
    return [
        {"params": list(model[0].parameters()), **first},
        {"params": list(model[2].parameters()), **(second or {})},
    ]


@pytest.mark.parametrize("name", NAMES)
def test_the_catalog_lists_every_group_option(name):
    from learnreg.optim.catalog import SWITCHES
    from learnreg.optim.groups import TORCH_KEYS

    model, _ = _problem()
    group = CATALOG[name].build(model.parameters(), LR).param_groups[0]
    accepted = set(group) - TORCH_KEYS - set(SWITCHES)
    assert accepted == set(CATALOG[name].options)


@pytest.mark.parametrize(
    "name, option", [(n, o) for n in NAMES for o in sorted(CATALOG[n].options)]
)
def test_every_group_option_changes_the_step(name, option):
    """An option a group accepts is read: setting it moves that group's parameters
    differently (the bug was weight_decay, accepted and ignored by LearnedOptimizer)."""
    entry, change = CATALOG[name], CATALOG[name].options[option]
    moved = []
    for values in (change.set, change.against):
        model, data = _problem()
        groups = _two_groups(model, values, values if change.every_group else None)
        opt = entry.build(groups, LR)
        _train(opt, model, data[:3])
        moved.append(_params(model[0]))
    assert any(not torch.equal(a, b) for a, b in zip(*moved)), f"{option} changed nothing"


@pytest.mark.parametrize("name", NAMES)
def test_an_option_the_optimizer_would_ignore_is_refused(name):
    entry = CATALOG[name]
    model, _ = _problem()
    with pytest.raises(ValueError, match=r"'no_such_option'.*Options it reads"):
        entry.build(_two_groups(model, {"no_such_option": 1.0}), LR)
    opt = entry.build(model[0].parameters(), LR)
    with pytest.raises(ValueError, match="no_such_option"):
        opt.add_param_group({"params": model[2].parameters(), "no_such_option": 1.0})
    assert len(opt.param_groups) == 1  # nothing half-added (nor to a base optimizer)
    if name.startswith("learned"):
        with pytest.raises(ValueError, match="weight_decay must be >= 0"):
            entry.build(_two_groups(model, {"weight_decay": -0.1}), LR)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_learned_mlp_weight_decay_is_adamw(weight_decay):
    """A fresh MLP rule is Adam(lr · step_mult); with weight_decay it is AdamW: the
    decay term is lr_AdamW · wd · θ, applied before the update."""
    from learnreg.optim import LearnedOptimizer

    model, data = _problem()
    model.double()
    twin = copy.deepcopy(model)
    lr = 2.0
    learned = LearnedOptimizer(
        _two_groups(model, {"weight_decay": weight_decay}, {"weight_decay": 0.1}), "mlp", lr=lr
    )
    step = learned.rule.step_mult
    adamw = torch.optim.AdamW(
        _two_groups(twin, {"weight_decay": weight_decay}, {"weight_decay": 0.1}),
        lr=lr * step,
        eps=learned.rule.eps,
    )
    for x, y in data * 3:
        for net, opt in ((model, learned), (twin, adamw)):
            opt.zero_grad()
            F.cross_entropy(net(x.double()), y).backward()
            opt.step()
    # the rule's decays are float32 buffers (0.9 is 0.9 + 2e-8): not bit-equal to AdamW's,
    # but 1000x closer than the decay moved the weights (18 steps of lr·wd = 1e-3 of θ)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_learned_weight_decay_scales_with_the_rules_step_size():
    """One step on a zero gradient is pure decay: θ · (1 − lr · nominal_lr · wd)."""
    from learnreg.optim import LearnedOptimizer

    for rule in ("mlp", "lstm", "meta_sgd"):
        model, _ = _problem()
        before = _params(model)
        opt = LearnedOptimizer(model.parameters(), rule, lr=0.5, weight_decay=0.2)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.rule.update = lambda grad, *a, **k: (torch.zeros_like(grad), {})  # no rule step
        opt.step()
        shrink = 1.0 - 0.5 * opt.rule.nominal_lr * 0.2
        for p, b in zip(model.parameters(), before):
            torch.testing.assert_close(p.detach(), b * shrink)


def test_sam_per_group_rho_matches_the_equation():
    """ε = (ρ₀ g₀, ρ₁ g₁) / ‖g‖ for two groups, then SGD from θ with ∇L(θ + ε)."""
    from torch.func import functional_call

    from learnreg.optim import SAM

    model, data = _problem()
    model.double()
    x, y = data[0][0].double(), data[0][1]
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}

    def grads(params):
        params = {n: p.clone().requires_grad_() for n, p in params.items()}
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        return dict(zip(names, torch.autograd.grad(loss, list(params.values()))))

    g = grads(theta)
    norm = torch.sqrt(sum((v * v).sum() for v in g.values()))
    rho = {n: 0.3 if n.startswith("0.") else 0.05 for n in names}
    gp = grads({n: theta[n] + rho[n] * g[n] / (norm + 1e-12) for n in names})
    opt = SAM(_two_groups(model, {"rho": 0.3}), torch.optim.SGD, rho=0.05, lr=LR)
    opt.step(_closure(opt, model, (x, y)))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), theta[n] - LR * gp[n], rtol=1e-12, atol=1e-14)


def test_method_options_named_like_base_options_get_their_own_key():
    """Adam's eps and SAM's eps are different numbers: SAM's is sam_eps in the group."""
    from learnreg.optim import SAM

    model, _ = _problem()
    opt = SAM(model.parameters(), torch.optim.Adam, eps=1e-3, lr=LR, betas=(0.8, 0.9))
    group = opt.param_groups[0]
    assert group["sam_eps"] == 1e-3 and group["eps"] == 1e-8
    assert opt.group_hyperparameters(group)["eps"] == 1e-3


@pytest.mark.parametrize("name", ["sam", "gsam", "gam"])
def test_options_that_must_agree_across_groups_are_refused_when_they_differ(name):
    model, data = _problem()
    opt = CATALOG[name].build(_two_groups(model, {"eps": 1e-3}), LR)
    with pytest.raises(ValueError, match="'eps' must be the same in every parameter group"):
        _train(opt, model, data[:1])


@pytest.mark.parametrize("name", ["learned-mlp", "asam"])
def test_a_state_saved_before_an_option_existed_loads_with_its_default(name):
    """Checkpoints written before weight_decay (LearnedOptimizer) or sam_eps (SAM around
    Adam) existed load, with the option at its default (no KeyError at the next step)."""
    entry = CATALOG[name]
    model, data = _problem()
    opt = entry.build(model.parameters(), LR)
    _train(opt, model, data[:2])
    saved = copy.deepcopy(opt.state_dict())
    new_key = "weight_decay" if name.startswith("learned") else "sam_eps"
    default = saved["param_groups"][0].pop(new_key)
    twin = copy.deepcopy(model)
    opt2 = entry.build(twin.parameters(), LR)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0][new_key] == default
    _train(opt, model, data[2:])
    _train(opt2, twin, data[2:])
    _assert_equal(_params(model), _params(twin))
