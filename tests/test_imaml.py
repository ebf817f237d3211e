"""iMAML (estimator ``implicit``): on a quadratic inner problem its meta-gradient equals the
closed-form implicit gradient and central finite differences of the exactly solved
proximal problem; on a nonlinear model it matches finite differences along random
directions; a short meta-training run on sine lowers the meta-validation loss; it refuses
what it cannot differentiate; its presets hold the paper's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST
from fewshot_util import context, episodic_meta_loss, roles, sine_family

from learnreg import config as configlib
from learnreg.core.bias import Biases
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import Split, Task, TaskFamily
from learnreg.core.trainer import MetaTrainer
from learnreg.errors import ConfigError
from learnreg.estimators import ImplicitProximal, MetaContext
from learnreg.experiment import build
from learnreg.inits import LearnedInit
from learnreg.losses import MSE
from learnreg.optimizers import SGD
from learnreg.runner import run

PRESETS = Path(__file__).resolve().parent.parent / "configs"
D, N = 4, 12


class FixedRegression(TaskFamily):
    """One least-squares task (support X, y; query Xv, yv), the same at every index."""

    def __init__(self, model_fn, seed=0):
        g = torch.Generator().manual_seed(seed)

        def normal(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64)

        x, xv, y, yv = normal(N, D), normal(N, D), normal(N, 1), normal(N, 1)
        self.task = Task(
            "lsq", "regression", Split(x, y), Split(xv, yv), Split(xv, yv), 1, 64, model_fn
        )

    def sample(self, index):
        return self.task


def linear(adapt=None):
    def build_model():
        model = torch.nn.Linear(D, 1).double()
        if adapt is not None:
            model.adapt_patterns = adapt
        return model

    return build_model


def quadratic_context(lam, adapt=None, seed=0):
    """The context of one least-squares task, with plain SGD at a step size that makes
    the inner loop converge on the proximal problem (1 / (largest eigenvalue + λ))."""
    family = FixedRegression(linear(adapt), seed)
    lr = float(1.0 / (torch.linalg.eigvalsh(design(family.task.train)[0]).max() + lam))
    model = family.task.build_model(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.weight.normal_()
        model.bias.normal_()
    biases = Biases(MSE(), SGD(lr), LearnedInit(model)).double()
    params = [p for p in biases.parameters() if p.requires_grad]
    outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
    return MetaContext(family, biases, TaskLoss(), outer, seed, torch.device("cpu")), family.task


def design(split):
    """The MSE of a linear model with bias as ½wᵀAw − bᵀw + c in w = [weight, bias]."""
    z = torch.cat([split.x, torch.ones(len(split), 1, dtype=torch.float64)], 1)
    return 2 * z.T @ z / len(split), 2 * z.T @ split.y[:, 0] / len(split)


def exact_query_loss(task, theta0, lam, adapted):
    """L_val(φ*(θ0)) with φ* from a direct solve of the proximal problem; the coordinates
    not in ``adapted`` stay at θ0."""
    a, b = design(task.train)
    av, bv = design(task.val)
    k = torch.tensor(adapted)
    held = torch.tensor([i for i in range(D + 1) if i not in adapted], dtype=torch.long)
    # stationarity in the adapted block: A_kk φ + A_kh θ_h − b_k + λ(φ − θ_k) = 0
    lhs = a[k][:, k] + lam * torch.eye(len(adapted), dtype=torch.float64)
    rhs = b[k] - a[k][:, held] @ theta0[held] + lam * theta0[k]
    phi = theta0.clone()
    phi[k] = torch.linalg.solve(lhs, rhs)
    c = (task.val.y**2).mean()
    return 0.5 * phi @ av @ phi - bv @ phi + c, phi, a, av, bv


def flat_init_grad(estimate):
    g = estimate.grads["init"]
    return torch.cat([g["theta.0"].flatten(), g["theta.1"].flatten()])


def theta0_of(ctx):
    return torch.cat([p.detach().flatten() for p in ctx.biases.init.theta])


@pytest.mark.parametrize("solver", ["cg", "normal_cg"])
def test_quadratic_meta_gradient_equals_the_closed_form_implicit_gradient(solver):
    lam = 0.7
    ctx, task = quadratic_context(lam)
    estimator = ImplicitProximal(
        lam=lam, steps=600, cg_steps=2 * (D + 1), cg_tol=0.0, solver=solver
    )
    estimate = estimator.estimate(ctx)
    theta0 = theta0_of(ctx)
    value, phi, a, av, bv = exact_query_loss(task, theta0, lam, list(range(D + 1)))
    closed = torch.linalg.solve(torch.eye(D + 1, dtype=torch.float64) + a / lam, av @ phi - bv)
    torch.testing.assert_close(flat_init_grad(estimate), closed, rtol=1e-9, atol=1e-11)
    assert estimate.metrics["meta_loss"] == pytest.approx(float(value), rel=1e-10)
    assert estimate.metrics["implicit/stationarity"] < 1e-10
    # and it is not the first-order (identity-Jacobian) gradient
    assert not torch.allclose(closed, av @ phi - bv, rtol=1e-2)


@pytest.mark.parametrize("adapt", [None, ["weight"]], ids=["all", "bias_held"])
def test_meta_gradient_matches_central_differences_of_the_direct_solve(adapt):
    """Every coordinate of θ0, including a held (not adapted) bias: it moves φ* through
    L_train and enters L_val directly, and the estimate includes both."""
    lam = 1.3
    ctx, task = quadratic_context(lam, adapt=adapt, seed=1)
    adapted = list(range(D)) if adapt else list(range(D + 1))
    estimate = ImplicitProximal(lam=lam, steps=600, cg_steps=2 * (D + 1), cg_tol=0.0).estimate(ctx)
    theta0, eps = theta0_of(ctx), 1e-6
    numeric = torch.zeros(D + 1, dtype=torch.float64)
    for i in range(D + 1):
        e = torch.zeros(D + 1, dtype=torch.float64)
        e[i] = eps
        up = exact_query_loss(task, theta0 + e, lam, adapted)[0]
        down = exact_query_loss(task, theta0 - e, lam, adapted)[0]
        numeric[i] = (up - down) / (2 * eps)
    torch.testing.assert_close(flat_init_grad(estimate), numeric, rtol=1e-6, atol=1e-8)


def test_nonlinear_meta_gradient_matches_finite_differences_along_random_directions():
    """A tanh MLP on one sine episode, the proximal problem solved to stationarity by the
    estimator's own inner loop: d/dε L_val(φ*(θ0 + εv)) = ⟨estimate, v⟩."""
    lam, steps = 10.0, 200
    family = sine_family(shots=6, queries=6)
    biases = roles(family, init="maml", loss="ce", lr=0.05)
    biases.optimizer = SGD(0.05).double()
    ctx = context(family, biases)
    estimator = ImplicitProximal(lam=lam, steps=steps, cg_steps=60, cg_tol=0.0)
    estimate = estimator.estimate(ctx)
    assert estimate.metrics["implicit/stationarity"] < 1e-9
    theta = list(biases.init.theta)
    grads = [estimate.grads["init"][f"theta.{i}"] for i in range(len(theta))]
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in theta]
        eps, values = 1e-4, []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(theta, v):
                    p.add_(sign * eps * d)
            estimator.next_index = 0  # the same episode
            values.append(estimator.estimate(ctx).metrics["meta_loss"])
            with torch.no_grad():
                for p, d in zip(theta, v):
                    p.sub_(sign * eps * d)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, v))
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_short_meta_training_on_sine_lowers_the_meta_validation_loss():
    """60 meta-steps from a random θ0 lower the query MSE of held-out episodes after 10
    plain SGD steps (no proximal term, as at meta-test) by more than a fifth."""
    torch.manual_seed(0)
    family = sine_family(shots=5, queries=5)
    biases = roles(family, init="maml", loss="ce")
    biases.optimizer = SGD(0.08).double()
    estimator = ImplicitProximal(lam=10.0, steps=10, cg_steps=5, meta_batch=4)
    trainer = MetaTrainer(
        family,
        biases,
        TaskLoss(),
        estimator,
        lambda p: torch.optim.Adam(p, lr=0.03),
        seed=0,
        device="cpu",
    )
    held_out = range(50_000, 50_030)  # episodes never drawn in meta-training
    before = episodic_meta_loss(trainer.ctx, held_out, steps=10)
    trainer.fit(60)
    after = episodic_meta_loss(trainer.ctx, held_out, steps=10)
    assert estimator.next_index == 240
    assert after < 0.8 * before, (before, after)


def test_resumed_estimator_draws_the_same_tasks():
    family = sine_family(shots=4, queries=4)
    biases = roles(family, init="maml", loss="ce")
    biases.optimizer = SGD(0.05).double()
    ctx = context(family, biases)
    a = ImplicitProximal(steps=3, meta_batch=2)
    a.estimate(ctx)
    b = ImplicitProximal(steps=3, meta_batch=2)
    b.load_state_dict(a.state_dict(), ctx)
    ga, gb = a.estimate(ctx).grads["init"], b.estimate(ctx).grads["init"]
    for k in ga:
        assert torch.equal(ga[k], gb[k])


@pytest.mark.parametrize(
    "loss, optimizer, message",
    [
        ("learned", "sgd", "only the init role, but the loss role"),
        ("ce", "precond", "only the init role, but the optimizer role"),
    ],
)
def test_refuses_learned_roles_other_than_the_init(loss, optimizer, message):
    family = sine_family(shots=4, queries=4)
    ctx = context(family, roles(family, init="maml", loss=loss, optimizer=optimizer))
    with pytest.raises(ConfigError, match=message):
        ImplicitProximal(steps=2).estimate(ctx)


@pytest.mark.parametrize(
    "override", ["estimator.lam=0", "estimator.cg_steps=0", "estimator.solver=lu"]
)
def test_bad_settings_are_refused_when_the_config_loads(override):
    with pytest.raises(ConfigError, match=override.split(".")[1].split("=")[0]):
        configlib.load(PRESETS / "imaml" / "sine.yaml", [override, "device=cpu"])


@pytest.mark.parametrize("name", ["sine", "fmnist_5w1s"])
def test_presets_hold_the_papers_settings(name):
    if "fmnist" in name and not os.path.isdir(FASHION_MNIST):
        pytest.skip("Fashion-MNIST not installed")
    cfg = configlib.load(PRESETS / "imaml" / f"{name}.yaml", ["device=cpu"])
    maml = configlib.load(PRESETS / "maml" / f"{name}_paper.yaml", ["device=cpu"])
    est = cfg["estimator"]
    # iMAML's 5-way Omniglot: lam 2.0, 16 inner GD steps, 5 CG steps; 16 steps at meta-test
    assert (est["_component_"], est["lam"], est["steps"], est["cg_steps"]) == (
        "implicit",
        2.0,
        16,
        5,
    )
    assert cfg["meta_test"]["steps"] == 16 and cfg["meta_test"]["seeds"] == 600
    assert cfg["optimizer"]["_component_"] == "sgd" and not cfg["optimizer"].get("momentum")
    assert cfg["task"] == maml["task"] and cfg["model"] == maml["model"]
    assert "NOT the paper's own" in cfg["description"]
    exp = build(cfg)
    assert isinstance(exp.trainer.estimator, ImplicitProximal)
    assert type(exp.trainer.biases.init).__name__ == "LearnedInit"
    assert exp.trainer.ctx.outer is not None and exp.trainer.ctx.outer.scheduler is None


def test_vmapped_inner_steps_give_the_looped_meta_gradient():
    family = sine_family(shots=4, queries=4)
    biases = roles(family, init="maml", loss="ce")
    biases.optimizer = SGD(0.05).double()
    ctx = context(family, biases)
    looped = ImplicitProximal(steps=4, meta_batch=3, vmap=False).estimate(ctx)
    vmapped = ImplicitProximal(steps=4, meta_batch=3, vmap=True).estimate(ctx)
    for k, g in looped.grads["init"].items():
        torch.testing.assert_close(vmapped.grads["init"][k], g, rtol=1e-10, atol=1e-12)
    assert vmapped.metrics["meta_loss"] == pytest.approx(looped.metrics["meta_loss"], rel=1e-12)


def test_a_run_with_a_learned_optimizer_is_refused_before_anything_is_written(tmp_path):
    overrides = [
        "optimizer={_component_: preconditioned_sgd, mode: diagonal, lr: 0.01}",  # Meta-SGD
        "meta_steps=2",
        "logger.backends=[none]",
        "device=cpu",
    ]
    with pytest.raises(ConfigError, match="only the init role, but the optimizer role"):
        run(PRESETS / "imaml" / "sine.yaml", overrides, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
