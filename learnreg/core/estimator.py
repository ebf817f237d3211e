"""The estimator contract: what every estimator sees (a :class:`MetaContext`) and what it
returns (an :class:`Estimate`).

An estimator moves meta-parameters without knowing which bias they belong to. Each
meta-step it returns an estimate of the meta-gradient at the current meta-parameters (or,
for a search, the values it found); the trainer applies it with the outer optimizer, its
clipping and its non-finite guard (:class:`~learnreg.core.outer.OuterOptimizer`). So an
estimator never steps an optimizer, never writes ``.grad`` and works with any outer
optimizer; meta-parameters are values it can perturb, stack and vmap
(:mod:`learnreg.core.metaparams`).

References:
    Metz et al., learned_optimization (an estimator returns a gradient and the learner
    applies it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from learnreg.core.bias import Biases
from learnreg.core.inner import init_state
from learnreg.core.inner_run import InnerRun
from learnreg.core.metaparams import MetaParams, meta_parameters
from learnreg.core.outer import OuterOptimizer
from learnreg.errors import ConfigError


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (same parts, same seed, every run)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class MetaContext:
    """The pieces of a meta-training run that estimators use.

    Attributes:
        family: the :class:`~learnreg.core.task.TaskFamily` tasks are drawn from.
        biases: the roles being learned.
        objective: the meta-objective.
        outer: the outer optimizer (None for estimators that need none).
        seed: the run's seed; every inner run's seed derives from it.
        device: where tasks, models and states live.
        logger: the run's logger (None: none), for estimators that log more than the
            metrics their estimate returns (a search's population table).
    """

    family: Any
    biases: Biases
    objective: Any
    outer: OuterOptimizer | None
    seed: int
    device: torch.device
    logger: Any = None
    # the model shared by runs whose init role ignores the built weights: (model_fn, device, model)
    _shared_model: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def new_run(self, phase: str, index: int, task=None, defer_init: bool = False) -> InnerRun:
        """A fresh inner run: the ``index``-th task of the family (unless ``task`` is
        given) and a model seeded by ``(seed, phase, index)``.

        ``defer_init``: build the step-0 state when it is first read
        (:meth:`InnerRun.defer`), or together with the other runs of a batched meta-batch;
        only for runs used before the meta-parameters next change (the init role reads
        them then)."""
        return self.new_runs(phase, [index], defer_init, None if task is None else [task])[0]

    def new_runs(self, phase: str, indices, defer_init: bool = False, tasks=None) -> list[InnerRun]:
        """:meth:`new_run` for each of ``indices``, on the family's tasks (or ``tasks``,
        one per index): one call for a meta-batch, which looks the roles and a shared
        model up once instead of once per task."""
        init, optimizer, device, shared = self.biases.init, self.biases.optimizer, self.device, None
        runs = []
        for j, index in enumerate(indices):
            task = self.family.sample(index).to(device) if tasks is None else tasks[j]
            seed = derive_seed(self.seed, phase, index)
            if shared is not None and task.model_fn is shared[0]:
                model = shared[
                    1
                ]  # the model of this model_fn, shared: the init ignores its weights
            else:
                model = self._model_for(task, seed, init)
                if self._shared_model is not None and model is self._shared_model[2]:
                    shared = (task.model_fn, model)
            if defer_init:
                build = lambda m=model, t=task: init_state(m, init, optimizer, t)  # noqa: E731
                runs.append(InnerRun(task, model, None, seed, index, build=build))
            else:
                state = init_state(model, init, optimizer, task)
                runs.append(InnerRun(task, model, state, seed, index))
        return runs

    def model_for(self, task, seed: int):
        """The base model of a new run on ``task``: built and seeded by ``seed`` when the
        init role reads its weights; otherwise one model shared by every run of the same
        ``model_fn`` (the model is only ever called functionally, and building a seeded
        ``nn.Module`` per task whose weights the init discards was most of a MAML step)."""
        return self._model_for(task, seed, self.biases.init)

    def _model_for(self, task, seed: int, init):
        if getattr(init, "reads_model_weights", True) or task.model_fn is None:
            return task.build_model(seed).to(self.device)
        shared = self._shared_model
        if shared is None or shared[0] is not task.model_fn or shared[1] != self.device:
            model = task.build_model(seed).to(self.device)
            shared = self._shared_model = (task.model_fn, self.device, model)
        return shared[2]


@dataclass
class Estimate:
    """One meta-step's result.

    Attributes:
        grads: an estimate of d(meta-objective)/d(meta-parameters) at the current values,
            shaped like :func:`~learnreg.core.metaparams.meta_parameters` (a missing role
            or name counts as zero); None when the estimator gives no gradient.
        metrics: scalars to log; must hold ``meta_loss`` when ``grads`` is given. Names
            without a ``/`` are logged under ``meta/``.
        states: ``{role: state_dict}`` for the trainer to load into the roles (a search
            proposes values, not gradients); None: nothing to load.
    """

    grads: MetaParams | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    states: dict[str, dict] | None = None


class Estimator:
    """Base class of estimators: :meth:`estimate` is the one method to write."""

    #: whether the estimator's gradients need ``ctx.outer`` (gradient estimators do).
    needs_outer = True
    #: whether it can keep adapting along one run during meta-test (:meth:`attach`).
    online = False

    def estimate(self, ctx: MetaContext) -> Estimate:
        """One meta-step's estimate at the current meta-parameters."""
        raise NotImplementedError

    def applied(self, ctx: MetaContext, info: dict) -> None:
        """Called after the trainer applied :meth:`estimate`'s result; ``info`` holds the
        outer step's outcome (``skipped`` is 1.0 when the step was refused)."""
        return None

    def attach(self, run: InnerRun) -> None:
        """Adapt online along ``run`` only (online estimators; meta-test of online AdaLFL)."""
        raise ConfigError(
            f"{type(self).__name__} cannot adapt during meta-test (it is not an online "
            "estimator); remove meta_test.adapt or use truncated_unroll"
        )

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        return None

    def close(self) -> None:
        """Release what the estimator started (worker pools, a Ray instance); called when
        meta-training ends. A later :meth:`estimate` may start them again."""
        return None

    def export(self, directory, ctx: MetaContext) -> None:
        """Write estimator-specific outputs into the run's ``learned/`` folder (optional)."""
        return None


def meta_step(ctx: MetaContext, estimator: Estimator) -> dict[str, float]:
    """One meta-step: ``estimator``'s estimate, applied.

    A gradient goes to the outer optimizer (clipping, cross-rank averaging and the
    non-finite guard live there); a search's values are loaded into the roles. Then
    :meth:`Estimator.applied` sees the outcome.

    Returns:
        The estimate's metrics and the outer step's (``grad_norm``, ``skipped``...).
    """
    if ctx.outer is not None:
        if not ctx.outer.named:  # built from a bare parameter list: match by the roles' names
            ctx.outer.named = meta_parameters(ctx.biases)
        ctx.outer.begin()
    estimate = estimator.estimate(ctx)
    metrics = dict(estimate.metrics)
    info: dict = {}
    if estimate.grads is not None:
        if ctx.outer is None:
            raise ConfigError(
                f"{type(estimator).__name__} returned a meta-gradient, but there is no outer "
                "optimizer (no role has meta-parameters, or needs_outer is False)"
            )
        info = ctx.outer.apply(estimate.grads, float(metrics["meta_loss"]))
        metrics.update(info)
    roles = ctx.biases.roles()
    for role, state in (estimate.states or {}).items():
        roles[role].load_state_dict(state)
    estimator.applied(ctx, info)
    return metrics
