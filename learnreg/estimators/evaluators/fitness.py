"""What a candidate's fitness is, and computing it for a group of candidates at once.

A candidate is a module of the searched role (``problem.role``: a loss, an optimizer or an
init); the other two roles are the problem's own. Fitness = the meta-objective (e.g.
validation error) on the whole validation split after training a freshly seeded model
with the candidate for ``steps`` inner steps (a partial run, no meta-gradients), averaged
over ``seeds`` runs. Every candidate sees the same model seeds and batch order. With a
:class:`LocalSearch` (EvoMAL's hybrid), the candidate's own meta-parameters are first
tuned by one-step unrolls from fresh models (Adam), and the tuned candidate is then
trained from a fresh model as above.

:func:`evaluate_group` trains a group as one population (:class:`~.population.Population`:
``vmap`` over the candidates' stacked meta-parameter values, or over the stacked models
with the candidates called in turn when they cannot be stacked) or one candidate as a
plain run; the two give the same fitness to float tolerance (see the tests).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from learnreg import components
from learnreg.core.bias import Biases
from learnreg.core.compiled import graph_free
from learnreg.core.estimator import derive_seed
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import Task
from learnreg.errors import ConfigError
from learnreg.estimators.evaluators.population import Population


@dataclass
class LocalSearch:
    """EvoMAL's local search on a candidate's meta-parameters before its fitness run.

    Attributes:
        steps: meta-steps (EvoMAL: 250), each one differentiable inner step from a fresh
            model (a one-step truncated unroll, reset every meta-step as ML3's).
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

    @classmethod
    def from_spec(cls, spec: dict | None) -> LocalSearch | None:
        """A config's ``local_search`` mapping, checked (None: off).

        Raises:
            ConfigError: not a mapping, an unknown key, or an objective without gradients.
        """
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise ConfigError(
                f"local_search must be a mapping such as {{steps: 250, lr: 0.001}}, got {spec!r}"
            )
        spec = dict(spec)
        if "objective" in spec:
            spec["objective"] = components.instantiate("objective", spec["objective"])
        try:
            search = cls(**spec)
        except TypeError as exc:
            raise ConfigError(
                f"local_search: {exc}; valid keys: steps, lr, objective, objective_batch, clip"
            ) from None
        if not getattr(search.objective, "differentiable", True):
            raise ConfigError(
                "local_search needs a differentiable objective (e.g. task_loss), not task_error"
            )
        return search


@dataclass
class FitnessProblem:
    """Everything a fitness evaluation needs besides the candidates; picklable when the
    tasks' ``model_fn`` is (built from a config it is), so it ships to worker processes.

    Attributes:
        tasks: the task of each fitness run (a single-task family repeats one task).
        seeds: the model seed of each fitness run (shared by every candidate).
        optimizer, init: the optimizer and init roles (the searched one is ignored).
        objective: the fitness meta-objective (lower is better).
        steps: inner steps of each fitness run.
        local_search: EvoMAL's local search, or None.
        seed: seeds the local search's runs.
        device: where to train.
        val_batch: validation examples per objective call (memory bound).
        loss: the loss role (needed unless the loss is the searched role).
        role: the searched role, ``loss``, ``optimizer`` or ``init``.
        compile: run the graph-free fitness steps through ``torch.compile``
            (:func:`~learnreg.core.compiled.graph_free`; eager where it cannot compile).
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
    loss: nn.Module | None = None
    role: str = "loss"
    compile: bool = False

    def biases(self, candidate: nn.Module) -> Biases:
        """The roles one candidate trains with: the problem's, the candidate in its role."""
        roles = {"loss": self.loss, "optimizer": self.optimizer, "init": self.init}
        return Biases(**{**roles, self.role: candidate})

    # Roles hold closures (torchopt's transformations) that pickle cannot carry; they
    # travel as the recipe learnreg exports them by: class, constructor args, tensors.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for role in ("loss", "optimizer", "init"):
            state[role] = None if state[role] is None else recipe(state[role])
        return state

    def __setstate__(self, state: dict) -> None:
        for role in ("loss", "optimizer", "init"):
            state[role] = None if state[role] is None else rebuild(state[role])
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
    after a local search, the tuned candidate's state."""

    fitness: float
    reason: str | None = None
    state: dict | None = None


def evaluate_group(problem: FitnessProblem, candidates: list[nn.Module], batched: bool = True):
    """Fitness of every candidate (one population when ``batched``, else one by one).

    Returns:
        One :class:`Evaluation` per candidate, in order.
    """
    if not batched and len(candidates) != 1:
        return [e for c in candidates for e in evaluate_group(problem, [c], False)]
    device = torch.device(problem.device)
    members = Population([problem.biases(c.to(device)) for c in candidates], problem.role)
    failed = local_search(problem, members) if problem.local_search is not None else {}
    total = torch.zeros(len(candidates), dtype=torch.float64)
    step = _compiled_step() if problem.compile else Population.step
    with torch.no_grad():
        for task, seed in zip(problem.tasks, problem.seeds):
            task = task.to(device)
            model = task.build_model(seed).to(device)
            state = members.init(model, task)
            stream = task.stream("train", seed)
            for _ in range(problem.steps):
                state = step(members, model, state, stream.next())
            total += split_values(members, problem, model, state, task)
    results = []
    for index, (candidate, value) in enumerate(zip(candidates, (total / len(problem.tasks)))):
        value, reason = float(value), failed.get(index)
        if reason is None and not math.isfinite(value):
            reason = f"non-finite fitness ({value}) after {problem.steps} training steps"
        state = None
        if problem.local_search is not None:
            state = {k: v.detach().cpu() for k, v in candidate.state_dict().items()}
        results.append(Evaluation(math.nan if reason else value, reason, state))
    return results


@functools.cache
def _compiled_step():
    """One compiled population step per process (dynamo caches graphs by structure)."""
    return graph_free(Population.step)


def split_values(members: Population, problem: FitnessProblem, model, state, task):
    """The fitness objective over the whole validation split, in chunks (example-weighted)."""
    split, total = task.val, 0.0
    for start in range(0, len(split), problem.val_batch):
        batch = (
            split.x[start : start + problem.val_batch],
            split.y[start : start + problem.val_batch],
        )
        values = members.objective(problem.objective, model, state, batch, task)
        total = total + values.double().cpu() * len(batch[0])
    return total / len(split)


def local_search(problem: FitnessProblem, members: Population) -> dict[int, str]:
    """Tune each candidate's meta-parameters in place: every step, one differentiable
    inner step from a fresh model, the objective after it, and a per-candidate Adam step
    (clipped; a non-finite step is refused and the candidate restored, and a candidate
    refused ``max_bad`` times in a row is dropped while the others go on).

    A candidate without learnable parameters (cross-entropy scored as a reference, a
    tree whose weights are frozen) has nothing to tune and is left as it is.

    Returns:
        ``{index: reason}`` for candidates whose meta-gradients diverged.
    """
    ls, device, max_bad = problem.local_search, torch.device(problem.device), 10
    params = [[p for p in c.parameters() if p.requires_grad] for c in members.candidates]
    adams = {i: torch.optim.Adam(ps, lr=ls.lr) for i, ps in enumerate(params) if ps}
    if not adams:
        return {}
    good = [[p.detach().clone() for p in ps] for ps in params]
    bad, failed = [0] * len(params), {}
    seed, task = derive_seed(problem.seed, "local_search"), problem.tasks[0].to(device)
    for step in range(ls.steps):
        run_seed = derive_seed(seed, "meta_train", step)
        model = task.build_model(run_seed).to(device)
        batch = task.stream("train", run_seed).next()
        objective_batch = (
            batch if ls.objective_batch == "train" else task.stream("val", run_seed + 1).next()
        )
        with torch.enable_grad():
            state = members.step(model, members.init(model, task), batch)
            values = members.objective(ls.objective, model, state, objective_batch, task)
            values.sum().backward()
        for i, adam in adams.items():
            ps = params[i]
            if i not in failed and _outer_step(adam, ps, float(values[i].detach()), ls.clip):
                good[i], bad[i] = [p.detach().clone() for p in ps], 0
            elif i not in failed:
                with torch.no_grad():
                    for p, saved in zip(ps, good[i]):
                        p.copy_(saved)
                bad[i] += 1
                if bad[i] >= max_bad:
                    failed[i] = f"local search diverged: {bad[i]} consecutive non-finite meta-steps"
            adam.zero_grad(set_to_none=True)
    return failed


def _outer_step(adam, params, meta_loss: float, clip: float | None) -> bool:
    """Clip and apply one candidate's meta-gradient; False when it or the result is not finite."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() if grads else 0.0
    if not (math.isfinite(meta_loss) and math.isfinite(norm)):
        return False
    if clip is not None and norm > clip:
        for g in grads:
            g.mul_(clip / (norm + 1e-12))
    adam.step()
    return all(bool(torch.isfinite(p).all()) for p in params)
