"""SAM, ASAM, GSAM and GAM match their papers' update equations for one step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from learnreg.optim import GAM, GSAM, SAM, frozen_bn_stats
from learnreg.optim import perturbations as pt


def _problem(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)
    x = torch.randn(16, 5, dtype=dtype)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def _flat_loss(model, x, y):
    """L as a function of one flat parameter vector (the hand computation's view)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def loss(vec):
        parts = dict(zip(names, (t.view(s) for t, s in zip(vec.split(sizes), shapes))))
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    return loss, theta


def _grad(loss, vec):
    vec = vec.detach().requires_grad_()
    return torch.autograd.grad(loss(vec), vec)[0]


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


LR = 0.1


def _expected_sam(loss, theta, rho, adaptive):
    g = _grad(loss, theta)
    if adaptive:
        eps = rho * theta**2 * g / torch.linalg.vector_norm(theta.abs() * g)
    else:
        eps = rho * g / torch.linalg.vector_norm(g)
    return theta - LR * _grad(loss, theta + eps)


def _expected_gsam(loss, theta, rho_t, alpha, lr):
    g = _grad(loss, theta)
    g_p = _grad(loss, theta + rho_t * g / g.norm())
    g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
    return theta - lr * (g_p - alpha * g_perp)


def _expected_gam(loss, theta, rho, rho_p, alpha, beta, gamma):
    """The paper's Algorithm 2, written out on flat vectors."""
    g0 = _grad(loss, theta)
    g1 = _grad(loss, theta + rho_p * g0 / g0.norm())
    h0 = g1 - g0
    theta2 = theta + rho * h0 / h0.norm()
    g2 = _grad(loss, theta2)
    g3 = _grad(loss, theta2 + rho_p * g2 / g2.norm())
    h_plus = alpha * g1 + (1 - alpha) * g3
    h_minus = beta * g0 + (1 - beta) * g2
    h_perp = h_minus - (h_minus @ h_plus) / (h_plus @ h_plus) * h_plus
    return theta - LR * (h_plus - gamma * h_perp)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("mode", ["closure", "phases"])
def test_sam_matches_equation(adaptive, mode):
    model, x, y = _problem()
    loss, theta = _flat_loss(model, x, y)
    rho = 2.0 if adaptive else 0.05
    expected = _expected_sam(loss, theta, rho, adaptive)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, lr=LR)
    if mode == "closure":
        opt.step(_closure(opt, model, x, y))
    else:
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    torch.testing.assert_close(_flat(model), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(expected, theta - LR * _grad(loss, theta), atol=1e-8)


@pytest.mark.parametrize("mode", ["closure", "phases"])
def test_gsam_matches_equation_with_rho_following_lr(mode):
    model, x, y = _problem()
    loss, theta = _flat_loss(model, x, y)
    opt = GSAM(model.parameters(), torch.optim.SGD, rho_max=0.1, rho_min=0.02, alpha=0.4, lr=LR)
    opt.param_groups[0]["lr"] = LR / 4  # what a scheduler does: rho_t moves with the lr
    rho_t = 0.02 + (0.1 - 0.02) * (LR / 4) / LR
    expected = _expected_gsam(loss, theta, rho_t, 0.4, LR / 4)
    if mode == "closure":
        opt.step(_closure(opt, model, x, y))
    else:
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step()
    torch.testing.assert_close(_flat(model), expected, atol=1e-6, rtol=0)


def test_gsam_with_alpha_zero_is_sam():
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    gsam = GSAM(model.parameters(), torch.optim.SGD, rho_max=0.05, rho_min=0.05, lr=LR)
    sam = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=LR)
    gsam.step(_closure(gsam, model, x, y))
    sam.step(_closure(sam, twin, x, y))
    torch.testing.assert_close(_flat(model), _flat(twin), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["closure", "phases"])
def test_gam_matches_algorithm_2(mode):
    model, x, y = _problem()
    loss, theta = _flat_loss(model, x, y)
    hp = dict(rho=0.2, rho_prime=0.03, alpha=0.1, beta=0.3, gamma=0.5)
    expected = _expected_gam(
        loss, theta, hp["rho"], hp["rho_prime"], hp["alpha"], hp["beta"], hp["gamma"]
    )
    opt = GAM(model.parameters(), torch.optim.SGD, lr=LR, **hp)
    if mode == "closure":
        opt.step(_closure(opt, model, x, y))
    else:
        for phase in (opt.first_step, opt.second_step, opt.third_step, opt.fourth_step):
            F.cross_entropy(model(x), y).backward()
            phase(zero_grad=True)
    torch.testing.assert_close(_flat(model), expected, atol=1e-6, rtol=0)


def test_gam_follows_the_paper_not_the_public_code():
    """The public code's h₋ = g0 + β g2 gives a different step; we take β g0 + (1−β) g2."""
    model, x, y = _problem()
    loss, theta = _flat_loss(model, x, y)
    opt = GAM(model.parameters(), torch.optim.SGD, lr=LR, beta=0.3, gamma=0.5)
    opt.step(_closure(opt, model, x, y))
    g0 = _grad(loss, theta)
    g1 = _grad(loss, theta + 0.03 * g0 / g0.norm())
    theta2 = theta + 0.2 * (g1 - g0) / (g1 - g0).norm()
    g2 = _grad(loss, theta2)
    g3 = _grad(loss, theta2 + 0.03 * g2 / g2.norm())
    h_plus = 0.1 * g1 + 0.9 * g3
    code_minus = g0 + 0.3 * g2
    code_step = theta - LR * (
        h_plus - 0.5 * (code_minus - (code_minus @ h_plus) / (h_plus @ h_plus) * h_plus)
    )
    assert (code_step - _flat(model)).abs().max() > 1e-6


def test_buffers_held_per_method():
    """Parameter-sized buffers held between passes: SAM 1, GSAM 2, GAM 3."""
    for cls, passes, expected in ((SAM, 2, 1), (GSAM, 2, 2), (GAM, 4, 3)):
        model, x, y = _problem()
        opt = cls(model.parameters(), torch.optim.SGD, lr=LR)
        held = []
        for _ in range(passes - 1):
            F.cross_entropy(model(x), y).backward()
            opt.ascend(zero_grad=True)
            held.append(1 + len(opt._progress.memory))
        assert max(held) == expected, cls.__name__
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_batchnorm_statistics_move_once_per_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    twin = copy.deepcopy(model)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    opt = GAM(model.parameters(), torch.optim.SGD, lr=LR, model=model)
    opt.step(_closure(opt, model, x, y))
    twin(x)  # one forward pass at the unperturbed weights
    bn, ref = model[1], twin[1]
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    with frozen_bn_stats(model):
        model(x + 1.0)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)


def test_grad_scaler_phase_recipe_matches_unscaled_step():
    """GradScaler: perturbations are scale-invariant, so first_step runs on scaled
    gradients; unperturb() assembles the direction before scaler.step unscales it."""
    model, x, y = _problem(torch.float32)
    twin = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = GSAM(model.parameters(), torch.optim.SGD, alpha=0.3, lr=LR)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    opt.unperturb()
    scaler.step(opt)
    scaler.update()
    ref = GSAM(twin.parameters(), torch.optim.SGD, alpha=0.3, lr=LR)
    ref.step(_closure(ref, twin, x, y))
    torch.testing.assert_close(_flat(model), _flat(twin), atol=1e-6, rtol=1e-5)


def test_grad_scaler_overflow_skips_and_restores():
    model, x, y = _problem(torch.float32)
    before = _flat(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=LR)
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(F.cross_entropy(model(x), y) * float("inf")).backward()
    opt.unperturb()
    scaler.step(opt)  # found inf: no base step
    scaler.update()
    torch.testing.assert_close(_flat(model), before, atol=0, rtol=0)
    assert scaler.get_scale() < 2.0**10


def test_gradient_accumulation_equals_full_batch():
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=LR)
    for _ in range(2):  # two passes, each accumulated over two half batches
        for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:])):
            (F.cross_entropy(model(xb), yb) / 2).backward()
        if opt.phase == 0:
            opt.first_step(zero_grad=True)
    opt.second_step(zero_grad=True)
    ref = SAM(twin.parameters(), torch.optim.SGD, lr=LR)
    ref.step(_closure(ref, twin, x, y))
    torch.testing.assert_close(_flat(model), _flat(twin), atol=1e-10, rtol=0)


def test_errors_name_the_fix():
    model, x, y = _problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=LR)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    with pytest.raises(RuntimeError, match="backward"):
        opt.first_step()
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        SAM(model.parameters(), "sgd", lr=LR)
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1.0, lr=LR)
    base = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(TypeError, match="already built"):
        SAM(None, base, lr=0.2)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="middle of a step"):
        opt.state_dict()


def test_teacher_and_wrapper_share_the_equations():
    """The module-level functions are what both call; check them on closed forms."""
    a = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]
    assert float(pt.global_norm(a)) == 5.0
    step = pt.normalized(a, 2.0)
    torch.testing.assert_close(float(pt.global_norm(step)), 2.0)
    ortho = pt.orthogonal_part([torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 0.0])])
    torch.testing.assert_close(ortho[0], torch.tensor([0.0, 1.0]))


def test_add_param_group_reaches_the_base_optimizer():
    model, x, y = _problem()
    opt = GSAM(model[0].parameters(), torch.optim.SGD, rho_max=0.1, rho_min=0.0, lr=LR)
    opt.add_param_group({"params": model[2].parameters(), "lr": LR / 2})
    assert opt.base_optimizer.param_groups is opt.param_groups
    group = opt.param_groups[1]
    assert group["lr_max"] == LR / 2 and group["alpha"] == 0.0
    before = _flat(model)
    opt.step(_closure(opt, model, x, y))
    assert (_flat(model) - before).abs().min() >= 0 and not torch.equal(_flat(model), before)
    assert opt.group_hyperparameters(group)["rho_t"] == pytest.approx(0.1)
