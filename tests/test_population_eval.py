"""Population evaluation: the vmapped population against one-by-one training (fitness,
local search, NaN isolation), and the process-pool and Ray backends against serial."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch

from learnreg.core.objectives import TaskError, TaskLoss
from learnreg.core.task import Split
from learnreg.data import sklearn_task
from learnreg.estimators import ProcessPoolEvaluator, RayEvaluator, SerialEvaluator, VmapEvaluator
from learnreg.estimators.evaluators import FitnessProblem, LocalSearch, evaluate_group
from learnreg.inits import RandomInit
from learnreg.losses import SymbolicLoss, TaylorLoss
from learnreg.models import MLP
from learnreg.optimizers import SGD, Adam

TREES = [
    "mul(-1.0, mul(y, log(fx)))",
    "square(sub(fx, y))",
    "mul(-1.0, mul(y, aq(fx, sub(fx, 1.0))))",
    "sub(abs(sub(y, fx)), mul(0.5, tanh(mul(y, fx))))",
]


def digits(hidden=(16,), double=False):
    task = sklearn_task("digits", batch_size=32)
    if double:
        task = dataclasses.replace(
            task,
            train=Split(task.train.x.double(), task.train.y),
            val=Split(task.val.x.double(), task.val.y),
        )
    # Importable by Ray's workers (a test-module function would not be).
    builder = _double_mlp if double else MLP
    task.model_fn = functools.partial(builder, (64,), 10, hidden=list(hidden))
    return task


def _double_mlp(*args, **kw):
    return MLP(*args, **kw).double()


def taylor_candidates(count: int, seed: int = 0) -> list[TaylorLoss]:
    """Cross-entropy-like coefficient vectors, perturbed (well-conditioned training)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0, 2.0, -2.0, 0.0])
    return [
        TaylorLoss(theta=(base + 0.3 * torch.randn(8, generator=g)).tolist()) for _ in range(count)
    ]


def problem(task, steps=60, **kw) -> FitnessProblem:
    options = {"objective": TaskLoss(), "optimizer": SGD(0.05, momentum=0.9, nesterov=True)}
    options.update(kw)
    return FitnessProblem([task], [7], init=RandomInit(), steps=steps, **options)


def fitness(results) -> list[float]:
    return [r.fitness for r in results]


@pytest.mark.parametrize(
    "optimizer", [SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), Adam(1e-3)]
)
def test_vmapped_fitness_equals_sequential_for_taylor_candidates(optimizer):
    task, losses = digits(), taylor_candidates(16)
    prob = problem(task, optimizer=optimizer)
    vmapped = fitness(VmapEvaluator().evaluate(prob, losses))
    sequential = fitness(SerialEvaluator().evaluate(prob, losses))
    assert vmapped == pytest.approx(sequential, abs=1e-5)
    assert len(set(vmapped)) == len(vmapped)  # candidates really differ


def test_vmapped_fitness_equals_sequential_for_different_trees():
    task = digits()
    losses = [SymbolicLoss(expression=t, seed=i) for i, t in enumerate(TREES)]
    prob = problem(task, objective=TaskError())
    assert fitness(VmapEvaluator().evaluate(prob, losses)) == pytest.approx(
        fitness(SerialEvaluator().evaluate(prob, losses)), abs=1e-5
    )


def test_vmapped_local_search_equals_sequential():
    """EvoMAL's hybrid: TruncatedUnroll on the node weights, then training (float64)."""
    task = digits(double=True)
    losses = [SymbolicLoss(expression=t, seed=i).double() for i, t in enumerate(TREES)]
    prob = problem(task, steps=20, local_search=LocalSearch(steps=6, lr=1e-2))
    together = evaluate_group(prob, copy.deepcopy(losses), batched=True)
    alone = evaluate_group(prob, copy.deepcopy(losses), batched=False)
    for a, b, loss in zip(together, alone, losses):
        assert a.fitness == pytest.approx(b.fitness, abs=1e-10)
        torch.testing.assert_close(a.state["weights"], b.state["weights"], rtol=0, atol=1e-10)
        assert not torch.equal(a.state["weights"], loss.weights.detach())  # it did move


def test_a_diverging_candidate_is_discarded_and_does_not_touch_the_others():
    task, losses = digits(), taylor_candidates(4)
    blowup = TaylorLoss(theta=[0.0, 0.0, 3e38, 0.0, 0.0, 0.0, 0.0, 0.0])  # overflows float32
    prob = problem(task)
    results = VmapEvaluator().evaluate(prob, [losses[0], blowup, *losses[1:]])
    assert math.isnan(results[1].fitness) and "non-finite fitness" in results[1].reason
    alone = SerialEvaluator().evaluate(prob, losses)
    healthy = [results[0], *results[2:]]
    assert fitness(healthy) == pytest.approx(fitness(alone), abs=1e-5)


def test_max_batch_splits_the_population_without_changing_fitness():
    task, losses = digits(), taylor_candidates(5)
    prob = problem(task)
    assert fitness(VmapEvaluator(max_batch=2).evaluate(prob, losses)) == pytest.approx(
        fitness(VmapEvaluator().evaluate(prob, losses)), abs=1e-5
    )


@pytest.mark.slow
def test_process_pool_backend_equals_serial():
    task, losses = digits(), taylor_candidates(4)
    prob = problem(task)
    pool = ProcessPoolEvaluator(workers=2)
    try:
        assert fitness(pool.evaluate(prob, losses)) == pytest.approx(
            fitness(SerialEvaluator().evaluate(prob, losses)), abs=1e-5
        )
    finally:
        pool.close()


@pytest.mark.slow
def test_ray_backend_on_a_local_instance_equals_serial():
    ray = pytest.importorskip("ray")
    task = digits()
    losses = [SymbolicLoss(expression=t, seed=i) for i, t in enumerate(TREES)]
    prob = problem(task, steps=30, local_search=LocalSearch(steps=3))
    serial = SerialEvaluator().evaluate(prob, copy.deepcopy(losses))
    evaluator = RayEvaluator(num_cpus=2, tasks=2)
    try:
        remote = evaluator.evaluate(prob, copy.deepcopy(losses))
        assert ray.is_initialized()
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1")
    finally:
        evaluator.close()
    assert fitness(remote) == pytest.approx(fitness(serial), abs=1e-5)
    for a, b in zip(remote, serial):
        torch.testing.assert_close(a.state["weights"], b.state["weights"], rtol=1e-4, atol=1e-4)


def test_a_candidate_whose_local_search_diverges_is_discarded_alone():
    task = digits(double=True)
    losses = [SymbolicLoss(expression=t, seed=i).double() for i, t in enumerate(TREES[:3])]
    with torch.no_grad():
        losses[1].weights[0] = float("nan")  # every meta-gradient of this one is NaN
    prob = problem(task, steps=10, local_search=LocalSearch(steps=12, lr=1e-2))
    together = evaluate_group(prob, copy.deepcopy(losses), batched=True)
    assert math.isnan(together[1].fitness) and "local search diverged" in together[1].reason
    alone = evaluate_group(prob, copy.deepcopy([losses[0], losses[2]]), batched=True)
    assert [together[0].fitness, together[2].fitness] == pytest.approx(fitness(alone), abs=1e-10)


def test_local_search_leaves_a_parameterless_candidate_alone():
    """Cross-entropy next to a tree (``benchmarks.loss_search.ce_fitness`` scores CE under
    EvoMAL's local search): CE trains as it would without local search, the tree as it
    would alone."""
    from learnreg.losses import CrossEntropy

    task = digits(double=True)
    tree = SymbolicLoss(expression=TREES[1], seed=0).double()
    searched = problem(task, steps=10, local_search=LocalSearch(steps=3, lr=1e-2))
    both = evaluate_group(searched, [CrossEntropy(), copy.deepcopy(tree)], batched=False)
    plain = evaluate_group(problem(task, steps=10), [CrossEntropy()], batched=False)
    tree_alone = evaluate_group(searched, [copy.deepcopy(tree)], batched=False)
    assert both[0].fitness == pytest.approx(plain[0].fitness, abs=1e-12)
    assert both[1].fitness == pytest.approx(tree_alone[0].fitness, abs=1e-12)
    only_ce = evaluate_group(searched, [CrossEntropy()], batched=False)
    assert only_ce[0].fitness == pytest.approx(plain[0].fitness, abs=1e-12)


RAY_DRIVER = """
import ray
from learnreg.estimators.evaluators.backends import RayEvaluator

evaluator = RayEvaluator(num_cpus=1, tasks=1)
ray_module = evaluator._ray()
assert ray_module.get(ray_module.remote(lambda: 1).remote()) == 1  # a worker exists too
print("ready", flush=True)
import time
time.sleep(600)
"""


@pytest.mark.slow
def test_no_ray_process_outlives_a_killed_driver(tmp_path):
    """SIGKILL the driver of a local Ray instance: every process it started (Ray's
    gcs_server, raylet, DashboardAgent, RuntimeEnvAgent, workers) is gone soon after
    (before the watchdog, the two agents stayed forever)."""
    pytest.importorskip("ray")
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root = Path(__file__).resolve().parent.parent
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    driver = subprocess.Popen(
        [sys.executable, "-c", RAY_DRIVER],
        env={**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    started = []
    try:
        assert driver.stdout.readline().strip() == "ready"
        started = psutil.Process(driver.pid).children(recursive=True)
        names = {p.name() for p in started}
        assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        alive = started
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.2)
        assert not alive, f"outlived the driver: {[p.name() for p in alive]}"
    finally:
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if driver.poll() is None:
            driver.kill()


def test_population_values_of_grouped_losses_equal_each_loss_alone():
    """Trees of one expression (and TaylorLosses) are one broadcast evaluation at their
    stacked parameters: values and each candidate's own parameter gradients are those of
    the candidate evaluated alone, in the candidates' order."""
    g = torch.Generator().manual_seed(1)
    trees = [SymbolicLoss(expression=TREES[i % 3], seed=i) for i in (0, 1, 3, 2, 4, 6, 5)]
    for losses in (trees, taylor_candidates(5)):
        preds = torch.randn(len(losses), 12, 10, generator=g, dtype=torch.float64)
        target = torch.randint(0, 10, (12,), generator=g)
        losses = [loss.double() for loss in losses]
        together = type(losses[0]).population_values(losses, preds, target)
        alone = torch.stack([loss(p, target) for loss, p in zip(losses, preds)])
        torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)
        mixed_weights = torch.arange(1.0, len(losses) + 1, dtype=torch.float64)
        params = [next(loss.parameters()) for loss in losses]
        grads_together = torch.autograd.grad((together * mixed_weights).sum(), params)
        grads_alone = torch.autograd.grad((alone * mixed_weights).sum(), params)
        for a, b in zip(grads_together, grads_alone):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_vmapped_fitness_equals_sequential_for_trees_sharing_expressions():
    task = digits()
    losses = [SymbolicLoss(expression=TREES[i % 3], seed=i) for i in range(7)]
    prob = problem(task, steps=30, objective=TaskLoss())
    assert fitness(VmapEvaluator().evaluate(prob, losses)) == pytest.approx(
        fitness(SerialEvaluator().evaluate(prob, losses)), abs=1e-5
    )


@pytest.mark.parametrize("hidden, activation", [([16], "relu"), ([8, 12], "tanh"), ([], "relu")])
def test_mlp_stacked_forward_equals_vmap_over_functional_call(hidden, activation):
    """The population's model call (`MLP.stacked_forward`: one batched product per layer)
    gives vmap-over-functional_call's outputs and parameter gradients."""
    from torch.func import functional_call, vmap

    model = MLP((3, 4), 5, hidden=hidden, activation=activation).double()
    g = torch.Generator().manual_seed(0)
    params = {
        n: torch.randn(6, *p.shape, generator=g, dtype=torch.float64).requires_grad_()
        for n, p in model.named_parameters()
    }
    x = torch.randn(7, 3, 4, generator=g, dtype=torch.float64)
    want = vmap(lambda p: functional_call(model, p, (x,)))(params)
    got = model.stacked_forward(params, x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn(want.shape, generator=g, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad((got * weights).sum(), list(params.values())),
        torch.autograd.grad((want * weights).sum(), list(params.values())),
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
