"""Helpers for the few-shot tests: float64 episodes from scikit-learn digits, tiny models,
the NPBML stack of roles, and the episodic meta-loss evaluated without gradients."""

from __future__ import annotations

from dataclasses import replace

import torch

from learnreg.core.bias import Biases
from learnreg.core.inner import inner_loop
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import Split, TaskFamily
from learnreg.data import FewShotEpisodes, SineEpisodes
from learnreg.estimators import MetaContext
from learnreg.inits import FiLMInit, LearnedInit
from learnreg.losses import CrossEntropy, TaskPlusLearned
from learnreg.models import MLP, Conv4, add_film
from learnreg.optimizers import SGD, PreconditionedSGD


class Float64(TaskFamily):
    """The same episodes with float64 inputs (and targets, for regression)."""

    def __init__(self, family: TaskFamily):
        self.family = family

    def _cast(self, task):
        def cast(s: Split) -> Split:
            y = s.y.double() if s.y.is_floating_point() else s.y
            return Split(s.x.double(), y)

        return replace(task, train=cast(task.train), val=cast(task.val), test=cast(task.test))

    def sample(self, index: int):
        return self._cast(self.family.sample(index))

    def meta_test_task(self, index: int):
        return self._cast(self.family.meta_test_task(index))


def digits_family(ways=3, shots=2, queries=3, film=False) -> Float64:
    """Few-shot digits (8x8) with a tiny float64 conv4 (4 channels, 2 blocks)."""

    def model(input_shape, out_features):
        net = Conv4(input_shape, out_features, hidden=4, blocks=2).double()
        return add_film(net) if film else net

    return Float64(FewShotEpisodes("digits", ways, shots, queries, model=model))


def sine_family(shots=4, queries=5, film=False) -> Float64:
    def model(input_shape, out_features):
        net = MLP(input_shape, out_features, hidden=(8, 8), activation="tanh").double()
        return add_film(net) if film else net

    return Float64(SineEpisodes(shots, queries, model=model))


def roles(family, init="maml", optimizer="sgd", loss="ce", mode="warp", lr=0.05, seed=0) -> Biases:
    """A combination of few-shot roles for ``family``'s representative episode (float64)."""
    task = family.representative()
    model = task.build_model(seed)
    torch.manual_seed(seed)
    kind, classes = task.kind, task.num_classes
    loss_role = {
        "ce": lambda: CrossEntropy() if kind == "classification" else _mse(),
        "learned": lambda: TaskPlusLearned(kind, classes, hidden=(6, 6)),
        "learned_film": lambda: TaskPlusLearned(kind, classes, hidden=(6, 6), film=True),
    }[loss]()
    opt_role = {
        "sgd": lambda: SGD(lr, momentum=0.9, nesterov=True),
        "precond": lambda: PreconditionedSGD(model, lr=lr, momentum=0.9, nesterov=True, mode=mode),
    }[optimizer]()
    init_role = {"maml": lambda: LearnedInit(model), "film": lambda: FiLMInit(model)}[init]()
    return Biases(loss_role, opt_role, init_role).double()


def _mse():
    from learnreg.losses import MSE

    return MSE()


def context(family, biases, seed=0) -> MetaContext:
    params = biases.meta_parameters()
    outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
    return MetaContext(family, biases, TaskLoss(), outer, seed, torch.device("cpu"))


def episodic_meta_loss(ctx, indices, steps) -> float:
    """Mean query loss after ``steps`` inner steps from the init, without gradients."""
    total = 0.0
    with torch.no_grad():
        for i in indices:
            run = ctx.new_run("meta_train", i)
            state = inner_loop(
                run.model,
                run.state,
                iter(run.next_train, None),
                ctx.biases.loss,
                ctx.biases.optimizer,
                steps,
            )
            total += ctx.objective(run.model, state, run.val.next(), run.task).item()
    return total / len(indices)


def flat_grads(params) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )
