"""What a candidate loss's fitness is, and computing it for a group of candidates.

Fitness = the meta-objective (e.g. validation error) on the whole validation split after
training a freshly seeded model with the candidate for ``steps`` inner steps (a partial
run, no meta-gradients), averaged over ``seeds`` runs. Every candidate sees the same
model seeds and batch order. With a :class:`LocalSearch` (EvoMAL's hybrid), the
candidate's own meta-parameters are first tuned by a short
:class:`~learnreg.estimators.TruncatedUnroll` (one-step unrolls from fresh models, Adam),
and the tuned loss is then trained from a fresh model as above.

:func:`evaluate_group` runs one group either batched (the whole group as one vmapped
population, :mod:`~learnreg.estimators.evaluators.population`) or as a single plain run;
the two give the same fitness to float tolerance (see the tests).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from learnreg.core.bias import Biases
from learnreg.core.inner import init_state, inner_loop
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask, Task
from learnreg.estimators.base import MetaContext, derive_seed
from learnreg.estimators.evaluators.population import (
    PopulationInit,
    PopulationLoss,
    PopulationModelFn,
    PopulationObjective,
    PopulationOptimizer,
    PopulationOuter,
)
from learnreg.estimators.unroll import TruncatedUnroll


@dataclass
class LocalSearch:
    """EvoMAL's local search on a candidate's meta-parameters before its fitness run.

    Attributes:
        steps: meta-steps (EvoMAL: 250), each one differentiable inner step from a fresh
            model (``TruncatedUnroll(window=1, horizon=1)``).
        lr: Adam learning rate (EvoMAL: 1e-3).
        objective: the differentiable meta-objective (default: the task's own loss).
        objective_batch: ``train`` (the step's own batch, as EvoMAL's code) or ``val``.
        clip: per-candidate meta-gradient norm clip (None: none).
    """

    steps: int = 250
    lr: float = 1e-3
    objective: nn.Module = field(default_factory=TaskLoss)
    objective_batch: Literal["train", "val"] = "train"
    clip: float | None = None


@dataclass
class FitnessProblem:
    """Everything a fitness evaluation needs besides the candidates; picklable when the
    tasks' ``model_fn`` is (built from a config it is), so it ships to worker processes.

    Attributes:
        tasks: the task of each fitness run (a single-task family repeats one task).
        seeds: the model seed of each fitness run (shared by every candidate).
        optimizer, init: the (fixed) optimizer and init roles.
        objective: the fitness meta-objective (lower is better).
        steps: inner steps of each fitness run.
        local_search: EvoMAL's local search, or None.
        seed: seeds the local search's runs.
        device: where to train.
        val_batch: validation examples per objective call (memory bound).
    """

    tasks: list[Task]
    seeds: list[int]
    optimizer: nn.Module
    init: nn.Module
    objective: nn.Module
    steps: int
    local_search: LocalSearch | None = None
    seed: int = 0
    device: str = "cpu"
    val_batch: int = 1024

    # Roles hold closures (torchopt's transformations) that pickle cannot carry; they
    # travel as the recipe learnreg exports them by: class, constructor args, tensors.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["optimizer"], state["init"] = recipe(self.optimizer), recipe(self.init)
        return state

    def __setstate__(self, state: dict) -> None:
        state["optimizer"], state["init"] = rebuild(state["optimizer"]), rebuild(state["init"])
        self.__dict__.update(state)


def recipe(role: nn.Module) -> dict:
    """A picklable description of a :class:`~learnreg.core.bias.Bias` (a role class
    without its own constructor, like ``RandomInit``, records no arguments)."""
    state = {k: v.detach().cpu() for k, v in role.state_dict().items()}
    return {"class": type(role), "args": role.__dict__.get("init_args", {}), "state": state}


def rebuild(description: dict) -> nn.Module:
    role = description["class"](**description["args"])
    role.load_state_dict(description["state"])
    return role


@dataclass
class Evaluation:
    """One candidate's result: its fitness (NaN when it failed, with the reason) and,
    after a local search, the tuned loss's state."""

    fitness: float
    reason: str | None = None
    state: dict | None = None


class Group:
    """The roles a group of candidates trains with: batched (a vmapped population) or,
    for a group of one, the plain roles themselves."""

    def __init__(self, problem: FitnessProblem, losses: list[nn.Module], batched: bool):
        self.problem, self.losses, self.batched = problem, losses, batched
        if batched:
            self.loss = PopulationLoss(losses)
            self.optimizer = PopulationOptimizer(problem.optimizer)
            self.init = PopulationInit(problem.init, len(losses))
        else:
            (self.loss,), self.optimizer, self.init = losses, problem.optimizer, problem.init

    def task(self, task: Task) -> Task:
        if not self.batched:
            return task
        return dataclasses.replace(
            task, model_fn=PopulationModelFn(task.model_fn, len(self.losses))
        )

    def objective(self, objective: nn.Module) -> nn.Module:
        return PopulationObjective(objective) if self.batched else objective

    def values(self, objective, model, state, batch, task) -> torch.Tensor:
        """The objective of every member, shape ``(P,)``."""
        if self.batched:
            return PopulationObjective(objective).values(model, state, batch, task)
        return objective(model, state, batch, task).reshape(1)


def evaluate_group(problem: FitnessProblem, losses: list[nn.Module], batched: bool = True):
    """Fitness of every loss in ``losses`` (one vmapped population when ``batched``).

    Returns:
        One :class:`Evaluation` per loss, in order.
    """
    if not batched and len(losses) != 1:
        return [e for loss in losses for e in evaluate_group(problem, [loss], False)]
    device = torch.device(problem.device)
    losses = [loss.to(device) for loss in losses]
    group = Group(problem, losses, batched)
    failed = local_search(problem, group) if problem.local_search is not None else {}
    total = torch.zeros(len(losses), dtype=torch.float64)
    with torch.no_grad():
        for task, seed in zip(problem.tasks, problem.seeds):
            task = group.task(task.to(device))
            model = task.build_model(seed).to(device)
            state = init_state(model, group.init, group.optimizer, task)
            state = inner_loop(
                model, state, task.stream("train", seed), group.loss, group.optimizer, problem.steps
            )
            total += split_values(group, problem, model, state, task)
    fitness = (total / len(problem.tasks)).tolist()
    results = []
    for index, (loss, value) in enumerate(zip(losses, fitness)):
        state = None
        if problem.local_search is not None:
            state = {k: v.detach().cpu() for k, v in loss.state_dict().items()}
        reason = failed.get(index)
        if reason is None and not math.isfinite(value):
            reason = f"non-finite fitness ({value}) after {problem.steps} training steps"
        results.append(Evaluation(math.nan if reason else value, reason, state))
    return results


def split_values(group: Group, problem: FitnessProblem, model, state, task) -> torch.Tensor:
    """The fitness objective over the whole validation split, in chunks (example-weighted)."""
    split, total, count = task.val, 0.0, 0
    for start in range(0, len(split), problem.val_batch):
        batch = (
            split.x[start : start + problem.val_batch],
            split.y[start : start + problem.val_batch],
        )
        values = group.values(problem.objective, model, state, batch, task)
        total = total + values.double().cpu() * len(batch[0])
        count += len(batch[0])
    return total / count


def local_search(problem: FitnessProblem, group: Group) -> dict[int, str]:
    """Tune each candidate's meta-parameters in place with a one-step
    :class:`~learnreg.estimators.TruncatedUnroll` (reset every meta-step, as ML3/EvoMAL).

    Returns:
        ``{index: reason}`` for candidates whose meta-gradients diverged.
    """
    ls, device = problem.local_search, torch.device(problem.device)
    outer = PopulationOuter(
        group.losses, lambda params: torch.optim.Adam(params, lr=ls.lr), ls.clip
    )
    ctx = MetaContext(
        SingleTask(group.task(problem.tasks[0].to(device))),
        Biases(group.loss, group.optimizer, group.init),
        group.objective(ls.objective),
        outer,
        derive_seed(problem.seed, "local_search"),
        device,
    )
    unroll = TruncatedUnroll(window=1, horizon=1, objective_batch=ls.objective_batch)
    with torch.enable_grad():
        for _ in range(ls.steps):
            unroll.step(ctx)
    return dict(outer.failed)
