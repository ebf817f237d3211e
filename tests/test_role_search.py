"""Role-generic search: the learned step-size schedule (schedule_sgd) against its closed
form and torch.optim, populations of optimizer and init candidates against plain runs,
and CMA-ES improving an optimizer's schedule and an init on constructed problems."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from learnreg.core.bias import Biases
from learnreg.core.estimator import derive_seed
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask
from learnreg.core.trainer import MetaTrainer
from learnreg.data.tabular import tensor_task
from learnreg.errors import ConfigError
from learnreg.estimators import Evolution, SerialEvaluator, VmapEvaluator
from learnreg.estimators.evaluators import FitnessProblem, evaluate_group
from learnreg.inits import RandomInit
from learnreg.inits.learned import LearnedInit
from learnreg.losses import MSE
from learnreg.models import MLP
from learnreg.optim import LearnedOptimizer
from learnreg.optimizers import SGD, ScheduleSGD
from learnreg.tracking.export import load_bias, save_bias


def regression(features: int = 5, examples: int = 400, noise: float = 0.1, hidden=()):
    """y = x·w* + noise, standardized; a linear model (or an MLP with ``hidden``)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, features, generator=g)
    w = torch.linspace(-2, 2, features).unsqueeze(1)
    y = x @ w + noise * torch.randn(examples, 1, generator=g)
    task = tensor_task(x, y, "regression", batch_size=32)
    task.model_fn = functools.partial(MLP, (features,), 1, hidden=list(hidden))
    return task


def test_the_schedule_interpolates_log_learning_rates_between_knots():
    rule = ScheduleSGD(knots=3, horizon=5, log_lrs=[0.0, -1.0, -2.0])
    expected = [math.exp(v) for v in (0.0, -0.5, -1.0, -1.5, -2.0, -2.0, -2.0)]
    assert rule.schedule(7) == pytest.approx(expected, rel=1e-6)
    # d lr_t / d log_lr_k is lr_t times the knot's hat weight (here 1/2 each at step 2)
    rule.lr_at(2).backward()
    assert rule.log_lrs.grad.tolist() == pytest.approx([0.5 * expected[1], 0.5 * expected[1], 0.0])
    assert ScheduleSGD(lr=0.3, knots=1).schedule(3) == pytest.approx([0.3] * 3)


def test_an_exported_schedule_is_a_drop_in_torch_optimizer(tmp_path):
    rule = ScheduleSGD(knots=2, horizon=3, log_lrs=[math.log(0.5), math.log(0.1)])
    save_bias(rule, tmp_path / "optimizer")
    loaded = load_bias(tmp_path / "optimizer", role="optimizer")
    model = torch.nn.Linear(3, 1)
    reference = [p.detach().clone() for p in model.parameters()]
    opt = LearnedOptimizer(model.parameters(), loaded)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    for lr in rule.schedule(4):
        opt.zero_grad()
        model(x).square().mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        reference = [r - lr * g for r, g in zip(reference, grads)]
        for p, r in zip(model.parameters(), reference):
            torch.testing.assert_close(p.detach(), r)
            r.copy_(p.detach())  # follow the optimizer's own trajectory


def problem(task, role, steps=20, **roles) -> FitnessProblem:
    return FitnessProblem([task], [3], steps=steps, objective=TaskLoss(), role=role, **roles)


def test_vmapped_optimizer_and_init_candidates_equal_plain_runs():
    task = regression(hidden=(8,))
    schedules = [ScheduleSGD(knots=3, horizon=20, log_lrs=[-3 + i, -2, -3 - i]) for i in range(3)]
    mixed = [*schedules, ScheduleSGD(lr=0.05, knots=2, horizon=20)]  # other shapes: mixed path
    prob = problem(task, "optimizer", loss=MSE(), init=RandomInit(), optimizer=None)
    for candidates in (schedules, mixed):
        vmapped = [e.fitness for e in VmapEvaluator().evaluate(prob, candidates)]
        plain = [e.fitness for e in SerialEvaluator().evaluate(prob, candidates)]
        assert vmapped == pytest.approx(plain, rel=1e-5) and len(set(plain)) == len(plain)
    inits = []
    for seed in range(3):
        torch.manual_seed(seed)
        inits.append(LearnedInit(task.build_model(seed)))
    prob = problem(task, "init", loss=MSE(), optimizer=SGD(0.05), init=None)
    vmapped = [e.fitness for e in evaluate_group(prob, inits)]
    plain = [e.fitness for e in evaluate_group(prob, inits, batched=False)]
    assert vmapped == pytest.approx(plain, rel=1e-5) and len(set(plain)) == len(plain)


def search(task, biases, role, generations, steps, sigma=1.0, population=8) -> MetaTrainer:
    estimator = Evolution(
        {"_component_": "cmaes", "population": population, "sigma": sigma, "start": "current"},
        "vmap",
        fitness_steps=steps,
        role=role,
    )
    trainer = MetaTrainer(SingleTask(task), biases, TaskLoss(), estimator, seed=0, device="cpu")
    return trainer.fit(generations, progress=False)


def fitness_of(task, biases, role, steps) -> float:
    """The fitness the search gives the role's current module (same seed, same split)."""
    seeds = [derive_seed(0, "fitness", 0)]
    prob = FitnessProblem([task], seeds, biases.optimizer, biases.init, TaskLoss(), steps)
    prob.loss, prob.role = biases.loss, role
    (result,) = evaluate_group(prob, [biases.roles()[role]], batched=False)
    return result.fitness


def test_cmaes_over_the_optimizer_role_improves_a_learned_schedule():
    """A constant learning rate of 1e-3 barely moves a linear regression in 30 steps; the
    search over the 3 log-lr knots must find a schedule with a far lower validation MSE,
    and the optimizer role must hold it afterwards."""
    task = regression()
    biases = Biases(MSE(), ScheduleSGD(lr=1e-3, knots=3, horizon=30), RandomInit())
    before = fitness_of(task, biases, "optimizer", 30)
    trainer = search(task, biases, "optimizer", generations=6, steps=30)
    best = trainer.estimator.best
    assert best["fitness"] < 0.3 * before
    assert fitness_of(task, trainer.biases, "optimizer", 30) == pytest.approx(best["fitness"])
    assert torch.equal(trainer.biases.optimizer.log_lrs.detach(), best["state"]["log_lrs"])
    assert sum(trainer.biases.optimizer.schedule()) > 30 * 1e-3  # it learned to step further
    history = [r["search/best_fitness"] for r in trainer.estimator.history]
    assert history == sorted(history, reverse=True)


def test_cmaes_over_the_init_role_improves_the_starting_point():
    """Five small SGD steps from a random linear model leave a large error; the search
    over the 6 initial weights must lower the validation MSE after those steps."""
    task = regression()
    torch.manual_seed(0)
    biases = Biases(MSE(), SGD(0.01), LearnedInit(task.build_model(0)))
    before = fitness_of(task, biases, "init", 5)
    trainer = search(task, biases, "init", generations=8, steps=5, sigma=0.5)
    assert trainer.estimator.best["fitness"] < 0.5 * before
    assert fitness_of(task, trainer.biases, "init", 5) == pytest.approx(
        trainer.estimator.best["fitness"]
    )


def test_a_searcher_or_filter_of_another_role_is_refused():
    with pytest.raises(ConfigError, match="searches the loss role"):
        Evolution("gp", role="optimizer")
    with pytest.raises(ConfigError, match="searches the loss role"):
        Evolution("cmaes", filters=["taylor_invariant"], role="init")
    with pytest.raises(ConfigError, match="unknown filter"):
        Evolution("cmaes", filters=["taylor_invariants"])


SCHEDULE_RUN = {
    "method": "cmaes_schedule",
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [16]},
    "loss": {"_component_": "ce"},
    "optimizer": {"_component_": "schedule_sgd", "lr": 0.01, "knots": 3, "horizon": 20},
    "objective": {"_component_": "task_error"},
    "estimator": {
        "_component_": "evolution",
        "role": "optimizer",
        "searcher": {"_component_": "cmaes", "population": 4, "start": "current"},
        "fitness_steps": 20,
    },
    "meta_steps": 2,
    "meta_test": {"steps": 20, "seeds": 1, "eval_every": 20},
    "baseline": {"optimizer": {"_component_": "sgd", "lr": 0.01}},
    "logger": {"backends": []},
}


def test_a_schedule_search_run_exports_a_drop_in_optimizer(tmp_path):
    import json

    import learnreg

    learnreg.run(SCHEDULE_RUN, out=tmp_path, progress=False)
    learned = tmp_path / "learned"
    for name in ("optimizer.json", "optimizer_formula.txt", "optimizer.png", "search_history.json"):
        assert (learned / name).is_file(), name
    best = json.loads((learned / "search_history.json").read_text())["best"]
    model = torch.nn.Linear(64, 10)
    opt = LearnedOptimizer.from_run(tmp_path, model.parameters())
    knots = opt.rule.log_lrs.tolist()  # the best genome, as the exported rule
    assert best["genome"] == "[" + ", ".join(f"{v:.4g}" for v in knots) + "]"
    assert knots != pytest.approx([math.log(0.01)] * 3)  # the search moved it


def test_the_cmaes_schedule_preset_searches_the_optimizer_role():
    from learnreg import config as configlib
    from learnreg.experiment import build

    trainer = build(
        configlib.load("configs/cmaes_schedule/digits_mlp.yaml", ["device=cpu"])
    ).trainer
    estimator = trainer.estimator
    assert estimator.role == "optimizer" and not estimator.needs_outer
    assert isinstance(trainer.biases.optimizer, ScheduleSGD)
    assert trainer.biases.optimizer.horizon == estimator.fitness_steps == 1000
