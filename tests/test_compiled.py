"""Compiled graph-free paths equal their eager counterparts (issue 17, item 2).

Each test compiles a tiny model once or twice (seconds on the CPU); the eager reference
is the same function without ``torch.compile``.
"""

from __future__ import annotations

import copy

import optree
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from learnreg.core import compiled
from learnreg.core.compiled import graph_free_step
from learnreg.core.inner import init_state, inner_loop, inner_step
from learnreg.eval.meta_test import meta_test_run
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy, NeuralLoss
from learnreg.models import MLP
from learnreg.optim import LearnedOptimizer
from learnreg.optimizers import SGD, Adam, MLPRule


def _problem(seed=0, optimizer=None):
    torch.manual_seed(seed)
    model = MLP((6,), 3, hidden=(8,))
    optimizer = optimizer or SGD(0.1, momentum=0.9, nesterov=True)
    state = init_state(model, RandomInit(), optimizer)
    batches = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(4)]
    return model, optimizer, state, batches


def _assert_states_close(a, b):
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-5, atol=1e-6)
    for x, y in zip(optree.tree_leaves(a.opt_state), optree.tree_leaves(b.opt_state)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert a.step == b.step


def test_compiled_step_follows_the_eager_trajectory():
    """Four SGD (Nesterov) steps: the momentum transform's first step and later ones
    compile to different graphs; every state and loss along the way equals eager's."""
    model, optimizer, state, batches = _problem()
    counters.clear()
    eager, fast = state, state
    for batch in batches:
        with torch.no_grad():
            eager, loss_eager = inner_step(model, eager, batch, CrossEntropy(), optimizer)
        fast, loss_fast = graph_free_step(model, fast, batch, CrossEntropy(), optimizer)
        torch.testing.assert_close(loss_fast, loss_eager, rtol=1e-6, atol=1e-7)
        _assert_states_close(fast, eager)
    assert fast.params["1.weight"].ne(state.params["1.weight"]).any()  # it trained
    # one graph each, no graph break (the label check is skipped while tracing)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compiled_step_with_a_learned_loss_carries_no_graph():
    """A learned loss whose meta-parameters require grad, Adam as the optimizer role,
    gradients enabled around the call: the compiled step equals eager's graph-free step
    and its results carry no graph (meta-training's differentiable step stays eager)."""
    model, optimizer, state, batches = _problem(1, Adam(0.01))
    loss = NeuralLoss(num_classes=3, hidden=(4,))
    assert all(p.requires_grad for p in loss.parameters())
    counters.clear()
    eager, fast = state, state
    for batch in batches[:3]:
        with torch.no_grad():
            eager, _ = inner_step(model, eager, batch, loss, optimizer)
        fast, value = graph_free_step(model, fast, batch, loss, optimizer)
        assert not value.requires_grad
        assert not any(p.requires_grad for p in fast.params.values())
        _assert_states_close(fast, eager)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_inner_loop_with_the_compiled_step_equals_eager_with_callback():
    model, optimizer, state, batches = _problem(2)
    seen_eager, seen_fast = [], []
    with torch.no_grad():
        eager = inner_loop(
            model, state, iter(batches), CrossEntropy(), optimizer, 4,
            callback=lambda s, v: seen_eager.append((s.step, float(v))),
        )  # fmt: skip
    fast = inner_loop(
        model, state, iter(batches), CrossEntropy(), optimizer, 4,
        callback=lambda s, v: seen_fast.append((s.step, float(v))), step=graph_free_step,
    )  # fmt: skip
    _assert_states_close(fast, eager)
    assert [s for s, _ in seen_fast] == [s for s, _ in seen_eager] == [1, 2, 3, 4]
    assert [v for _, v in seen_fast] == pytest.approx([v for _, v in seen_eager], rel=1e-6)


def _failing_compiler(*_):
    """Stands in for torch.compile failing (no C compiler, an untraceable operation)."""

    def compiled(*args, **kwargs):
        raise RuntimeError("backend compiler failed: no working C++ compiler")

    return compiled


def test_compile_failure_falls_back_to_eager_once(monkeypatch):
    monkeypatch.setattr(compiled, "FAILED", {})
    monkeypatch.setattr(compiled, "_compiled", _failing_compiler)
    model, optimizer, state, batches = _problem(3)
    loss = CrossEntropy()
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        fast, value = graph_free_step(model, state, batches[0], loss, optimizer)
    with torch.no_grad():
        eager, expected = inner_step(model, state, batches[0], loss, optimizer)
    _assert_states_close(fast, eager)
    assert float(value) == float(expected)
    assert len(compiled.FAILED) == 1 and "no working C++" in next(iter(compiled.FAILED.values()))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second attempt, no second warning
        graph_free_step(model, fast, batches[1], loss, optimizer)


def test_a_wrong_batch_raises_the_eager_error_and_is_not_remembered(monkeypatch):
    monkeypatch.setattr(compiled, "FAILED", {})
    model, optimizer, state, _ = _problem(4)
    bad = (torch.randn(10, 5), torch.randint(0, 3, (10,)))  # 5 features, the model takes 6
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        graph_free_step(model, state, bad, CrossEntropy(), optimizer)
    assert compiled.FAILED == {}


def _lo_problem(compile: bool, chunk: int):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 2))  # 92 parameters
    rule = MLPRule(hidden=(8, 8))
    with torch.no_grad():  # a rule that is not Adam: the MLP's output matters
        for p in rule.net[-1].parameters():
            p.normal_(0.0, 0.5)
    opt = LearnedOptimizer(model.parameters(), rule, chunk_size=chunk, compile=compile)
    return model, opt


def test_compiled_learned_optimizer_follows_the_eager_trajectory():
    """Three steps of the MLP rule, compiled chunk update vs eager, in chunks of 40 of
    the 92 coordinates (two graphs: full chunks and the last)."""
    eager_model, eager = _lo_problem(False, 40)
    fast_model, fast = _lo_problem(True, 40)
    torch.manual_seed(6)
    for _ in range(3):
        x = torch.randn(16, 7)
        for model, opt in ((eager_model, eager), (fast_model, fast)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        for p, q in zip(eager_model.parameters(), fast_model.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
    for a, b in zip(eager.state_dict()["state"].values(), fast.state_dict()["state"].values()):
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-8)


def test_learned_optimizer_compile_failure_falls_back(monkeypatch):
    monkeypatch.setattr(compiled, "FAILED", {})
    monkeypatch.setattr(compiled, "_compiled", _failing_compiler)
    torch.manual_seed(7)
    model = nn.Linear(4, 3)
    twin = copy.deepcopy(model)
    rule = MLPRule(hidden=(4,))
    opts = [
        LearnedOptimizer(model.parameters(), rule, compile=True),
        LearnedOptimizer(twin.parameters(), copy.deepcopy(rule)),
    ]
    x = torch.randn(8, 4)
    for m in (model, twin):
        m(x).sum().backward()
    with pytest.warns(RuntimeWarning, match="_chunk_update"):
        opts[0].step()
    opts[1].step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert [name for name, _ in compiled.FAILED] == ["_chunk_update"]


def _meta_test_trainer(compile: bool):
    from learnreg import config as configlib
    from learnreg.experiment import build

    cfg = configlib.load(
        {"task": {"_component_": "digits"}, "model": {"_component_": "mlp", "hidden": [8]}},
        ["logger.backends=[none]", "device=cpu", f"meta_test.compile={str(compile).lower()}"],
    )
    return build(cfg).trainer


def test_meta_test_compile_switch_gives_the_eager_run():
    """``meta_test.compile: true`` routes the frozen meta-test steps through the compiled
    step; the run ends where the eager one does."""
    runs = []
    for compile in (False, True):
        trainer = _meta_test_trainer(compile)
        assert trainer.compile_meta_test is compile
        task = trainer.ctx.family.meta_test_task(0)
        run, _ = meta_test_run(trainer, trainer.ctx.biases, task, 0, 6, None, "learned")
        runs.append(run)
    assert not compiled.FAILED  # compiled, not the eager fallback
    assert runs[1].state.step == runs[0].state.step == 6
    for k, v in runs[0].state.params.items():
        torch.testing.assert_close(runs[1].state.params[k], v, rtol=1e-5, atol=1e-6)


def test_meta_test_compile_must_be_a_bool():
    from learnreg import config as configlib
    from learnreg.errors import ConfigError

    with pytest.raises(ConfigError, match="meta_test.compile must be true or false"):
        configlib.load(
            {"task": {"_component_": "digits"}, "model": {"_component_": "mlp"}},
            ["meta_test.compile=3"],
        )


@pytest.mark.parametrize("batched", [True, False])
def test_fitness_with_the_compiled_population_step_equals_eager(batched, monkeypatch):
    """Population fitness (TaylorGLO candidates) with the population's step compiled,
    vmapped over the candidates and one by one: the fitness values are eager's (the
    wiring a ``compile`` switch of the evaluators makes: ``graph_free(Population.step)``)."""
    import functools

    from learnreg.core.compiled import graph_free
    from learnreg.core.objectives import TaskError
    from learnreg.data import sklearn_task
    from learnreg.estimators.evaluators import population as population_module
    from learnreg.estimators.evaluators.fitness import FitnessProblem, evaluate_group
    from learnreg.losses import TaylorLoss

    task = sklearn_task("digits", batch_size=32)
    task.model_fn = functools.partial(MLP, task.input_shape, task.out_features, hidden=[8])
    base = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0, 2.0, -2.0, 0.0])
    g = torch.Generator().manual_seed(0)
    losses = [
        TaylorLoss("classification", 10, (base + 0.1 * torch.randn(8, generator=g)).tolist())
        for _ in range(2)
    ]
    problem = FitnessProblem(
        [task], [1], SGD(0.05, momentum=0.9), RandomInit(), TaskError(), steps=4
    )
    eager = [e.fitness for e in evaluate_group(problem, copy.deepcopy(losses), batched)]
    step = population_module.Population.step
    monkeypatch.setattr(population_module.Population, "step", graph_free(step))
    counters.clear()
    fast = [e.fitness for e in evaluate_group(problem, copy.deepcopy(losses), batched)]
    assert fast == pytest.approx(eager, abs=1.5 / len(task.val))  # one example may flip
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert not counters["graph_break"], dict(counters["graph_break"])
