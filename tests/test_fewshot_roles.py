"""Few-shot roles: MAML's meta-gradient is the true derivative, and every NPBML component
starts as the identity, so at initialization it reproduces plain MAML."""

from __future__ import annotations

import pytest
import torch
from fewshot_util import context, digits_family, episodic_meta_loss, flat_grads, roles, sine_family

from learnreg.core.estimator import meta_step
from learnreg.estimators import TruncatedUnroll
from learnreg.losses import CrossEntropy, TaskPlusLearned
from learnreg.models import Conv4, FiLM, add_film
from learnreg.optimizers import SGD, PreconditionedSGD
from learnreg.tracking.export import load_bias, save_bias

STEPS = 3


def _meta_gradient(ctx, meta_batch=2, steps=STEPS):
    unroll = TruncatedUnroll(window=steps, horizon=steps, meta_batch=meta_batch)
    meta_step(ctx, unroll)
    return unroll


def _coordinates(role, per_tensor, seed=0):
    """A few seeded flat coordinates of every meta-parameter tensor of ``role``."""
    g = torch.Generator().manual_seed(seed)
    return [
        (p, int(i))
        for p in role.parameters()
        for i in torch.randperm(p.numel(), generator=g)[:per_tensor]
    ]


def _grads_at(coords):
    return torch.tensor(
        [0.0 if p.grad is None else p.grad.view(-1)[i].item() for p, i in coords],
        dtype=torch.float64,
    )


def _finite_differences(ctx, coords, indices, eps=1e-6):
    """Central differences of the episodic meta-loss at ``coords`` = [(param, flat index)]."""
    out = []
    for p, i in coords:
        with torch.no_grad():
            old = p.view(-1)[i].item()
            p.view(-1)[i] = old + eps
            up = episodic_meta_loss(ctx, indices, STEPS)
            p.view(-1)[i] = old - eps
            down = episodic_meta_loss(ctx, indices, STEPS)
            p.view(-1)[i] = old
        out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("family_fn", [digits_family, sine_family], ids=["digits", "sine"])
def test_maml_meta_gradient_matches_central_finite_differences(family_fn):
    family = family_fn()
    biases = roles(family, init="maml", optimizer="sgd", loss="ce", lr=0.1)
    ctx = context(family, biases)
    _meta_gradient(ctx)
    coords = _coordinates(biases.init, per_tensor=3)
    analytic = _grads_at(coords)
    numeric = _finite_differences(ctx, coords, [0, 1])
    assert analytic.abs().max() > 1e-4
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("mode", ["warp", "kronecker", "diagonal"])
def test_npbml_meta_gradient_of_every_role_matches_finite_differences(mode):
    """FiLM init, preconditioner and FiLM-modulated learned loss together, each role's
    meta-parameters moved off their identity start so every path carries gradient."""
    family = digits_family(film=True)
    biases = roles(family, init="film", optimizer="precond", loss="learned_film", mode=mode)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in biases.meta_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ctx = context(family, biases)
    _meta_gradient(ctx)
    coords = [c for role in biases.roles().values() for c in _coordinates(role, per_tensor=1)]
    analytic = _grads_at(coords)
    numeric = _finite_differences(ctx, coords, [0, 1])
    assert (analytic.abs() > 1e-6).float().mean() > 0.8
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-8)


def _trajectory_and_grads(biases, family, steps=5):
    """The inner trajectory of one episode and the meta-gradient of θ0 and the loss."""
    ctx = context(family, biases)
    unroll = _meta_gradient(ctx, meta_batch=1, steps=steps)
    shared = list(biases.init.base.theta if hasattr(biases.init, "base") else biases.init.theta)
    return unroll.runs[0].state.params, flat_grads(shared), unroll.runs[0]


@pytest.mark.parametrize("mode", ["warp", "kronecker", "diagonal"])
@pytest.mark.parametrize("family_fn", [digits_family, sine_family], ids=["digits", "sine"])
def test_preconditioner_at_identity_reproduces_maml(mode, family_fn):
    family = family_fn()
    plain, _, _ = _trajectory_and_grads(roles(family, optimizer="sgd"), family)
    maml = roles(family, optimizer="sgd")
    warped = roles(family, optimizer="precond", mode=mode)
    (p_a, g_a, _), (p_b, g_b, _) = (_trajectory_and_grads(b, family) for b in (maml, warped))
    for k in p_a:
        torch.testing.assert_close(p_b[k], p_a[k], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_b, g_a, rtol=1e-10, atol=1e-14)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in warped.optimizer.parameters())


def test_learned_loss_at_initialization_is_the_task_loss_exactly():
    torch.manual_seed(0)
    logits, labels = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 5, (12,))
    for film in (False, True):
        loss = TaskPlusLearned("classification", 5, film=film).double()
        assert loss(logits, labels).item() == CrossEntropy()(logits, labels).item()
    family = digits_family()
    (p_a, g_a, _), (p_b, g_b, _) = (
        _trajectory_and_grads(roles(family, loss=name), family) for name in ("ce", "learned_film")
    )
    for k in p_a:
        assert torch.equal(p_a[k], p_b[k])
    torch.testing.assert_close(g_b, g_a, rtol=1e-12, atol=0.0)


def test_film_layers_at_identity_leave_the_network_unchanged():
    torch.manual_seed(0)
    plain = Conv4((1, 8, 8), 3, hidden=4, blocks=2).double()
    modulated = add_film(Conv4((1, 8, 8), 3, hidden=4, blocks=2).double())
    modulated.load_state_dict(plain.state_dict(), strict=False)
    assert sum(isinstance(m, FiLM) for m in modulated.modules()) == 2
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(plain(x), modulated(x))


def test_film_init_at_identity_reproduces_maml_and_learns():
    """On a FiLM model, the FiLM init starts exactly at MAML's θ0 (equal trajectory and
    θ0 meta-gradient); its generators still receive a meta-gradient."""
    family = digits_family(film=True)
    maml, film = roles(family, init="maml"), roles(family, init="film")
    (p_a, g_a, _), (p_b, g_b, _) = (_trajectory_and_grads(b, family) for b in (maml, film))
    for k in p_a:
        assert torch.equal(p_a[k], p_b[k])
    assert torch.equal(g_a, g_b)
    assert max(p.grad.abs().max() for p in film.init.generators.parameters()) > 0


def test_film_init_conditions_on_the_support_set():
    family = digits_family(film=True)
    biases = roles(family, init="film")
    with torch.no_grad():
        for p in biases.init.generators.parameters():
            p.normal_(0, 0.1)
    model = family.representative().build_model(0)
    a = biases.init(model, family.sample(0))
    b = biases.init(model, family.sample(1))
    gammas = [k for k in a if k.endswith("gamma")]
    assert gammas and all(not torch.equal(a[k], b[k]) for k in gammas)
    shared = [k for k in a if not k.endswith(("gamma", "beta"))]
    assert all(a[k] is b[k] for k in shared)


@pytest.mark.parametrize("mode", ["warp", "kronecker", "diagonal"])
def test_roles_export_and_load_back(tmp_path, mode):
    family = digits_family(film=True)
    biases = roles(family, init="film", optimizer="precond", loss="learned_film", mode=mode)
    with torch.no_grad():
        for p in biases.meta_parameters():
            p.add_(torch.randn_like(p))
    for name, role in biases.roles().items():
        save_bias(role, tmp_path / name)
        loaded = load_bias(tmp_path / name, role=name).double()
        for (k, a), (_, b) in zip(role.state_dict().items(), loaded.state_dict().items()):
            torch.testing.assert_close(a, b, msg=k)
    grads = {
        k: torch.randn_like(v) for k, v in family.representative().build_model(0).named_parameters()
    }
    params = {k: torch.zeros_like(v) for k, v in grads.items()}
    opt = load_bias(tmp_path / "optimizer", role="optimizer").double()
    u1, _ = opt(grads, opt.init(params), params)
    u2, _ = biases.optimizer(grads, biases.optimizer.init(params), params)
    for k in u1:  # the rebuilt role holds float32 tensors, as every loaded bias does
        torch.testing.assert_close(u1[k], u2[k], rtol=1e-5, atol=1e-6)


def test_meta_sgd_is_the_diagonal_preconditioner_with_learned_rates():
    model = torch.nn.Linear(3, 2).double()
    opt = PreconditionedSGD(model, lr=0.1, mode="diagonal").double()
    with torch.no_grad():
        opt.preconditioners[0].rates.copy_(torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    grads = {k: torch.ones_like(v) for k, v in model.named_parameters()}
    updates, _ = opt(grads, opt.init(grads), dict(model.named_parameters()))
    torch.testing.assert_close(updates["weight"], -opt.preconditioners[0].rates.detach())
    torch.testing.assert_close(updates["bias"], torch.full((2,), -0.1, dtype=torch.float64))
    assert isinstance(SGD(0.1), SGD)


def test_roles_built_for_another_model_say_so():
    from learnreg.errors import ConfigError
    from learnreg.inits import FiLMInit, LearnedInit
    from learnreg.models import MLP

    conv, mlp = Conv4((1, 8, 8), 3, hidden=4, blocks=2), MLP((4,), 3, hidden=(5,))
    with pytest.raises(ConfigError, match="build the role from the same model spec"):
        LearnedInit(conv)(mlp)
    opt = PreconditionedSGD(conv)
    grads = {k: torch.zeros_like(v) for k, v in mlp.named_parameters()}
    with pytest.raises(ConfigError, match="same model spec"):
        opt(grads, opt.init(grads), grads)
    with pytest.raises(ConfigError, match="model with FiLM layers"):
        FiLMInit(conv)
