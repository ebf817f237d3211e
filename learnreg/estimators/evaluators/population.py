"""A population of candidate losses trained as one batched model with ``torch.func.vmap``.

Every candidate trains its own copy of the same freshly seeded base model on the same
batches. Instead of P separate runs, the P copies are stacked into one
:class:`PopulationModel` whose forward pass is the base model vmapped over the stacked
parameters, and the candidates' losses are summed (:class:`PopulationLoss`). Because the
copies are independent, the gradient of the sum with respect to the stacked parameters
holds every candidate's own gradient, and an elementwise optimizer applied to the stacked
tensors is every candidate's own update. So the ordinary
:func:`~learnreg.core.inner.inner_step` (and, for EvoMAL's local search, the ordinary
:class:`~learnreg.estimators.TruncatedUnroll`) trains the whole population at once, and a
candidate that diverges produces NaNs in its own slice only.

Homogeneous candidates (same loss class and structure, e.g. TaylorGLO's coefficient
vectors) are evaluated with ``vmap`` over ``functional_call`` on one loss module with the
stacked candidate parameters; heterogeneous ones (EvoMAL's different trees) in a loop
over the population dimension.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from learnreg.core.inner import InnerState
from learnreg.core.outer import OuterOptimizer
from learnreg.errors import NumericalError
from learnreg.losses.elementwise import ElementwiseLoss
from learnreg.optimizers.fixed import SGD, Adam

PREFIX = "base."


def _get(module: nn.Module, name: str) -> Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner), attr)


def _unprefixed(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len(PREFIX) :]: v for k, v in tensors.items()}


class PopulationModel(nn.Module):
    """``size`` copies of a base model as one module; the output is ``(size, *out)``.

    Its parameters and buffers are the base model's, stacked on a new leading dimension
    and named ``base.<name>``. Every copy starts from the base model's values and sees
    the same input. ``template`` keeps the unstacked base model (the structure the init
    role and per-candidate objectives use).

    Args:
        base: a freshly built model (its values seed every copy).
        size: the population size.
    """

    def __init__(self, base: nn.Module, size: int):
        super().__init__()
        self.size = size
        self.base = copy.deepcopy(base)
        object.__setattr__(self, "template", base)  # not a submodule: no duplicate params
        self.param_names = [n for n, _ in base.named_parameters()]
        self.buffer_names = [n for n, _ in base.named_buffers()]
        for name in self.param_names + self.buffer_names:
            owner, _, attr = name.rpartition(".")
            module = self.base.get_submodule(owner)
            value = _get(base, name).detach()
            stacked = value.unsqueeze(0).expand(size, *value.shape).clone()
            if name in self.param_names:
                setattr(module, attr, nn.Parameter(stacked))
            else:
                module.register_buffer(attr, stacked)

    def _apply(self, fn, recurse=True):  # .to(device) / .double() move the template too
        super()._apply(fn, recurse)
        self.template._apply(fn, recurse)
        return self

    def forward(self, x: Tensor) -> Tensor:
        # The current tensors: the stacked ones, or those functional_call swapped in.
        params = {n: _get(self.base, n) for n in self.param_names}
        buffers = {n: _get(self.base, n) for n in self.buffer_names}

        def one(p, b):
            return functional_call(self.base, (p, b), (x,))

        return vmap(one, randomness="different")(params, buffers)


class PopulationModelFn:
    """A picklable ``model_fn`` building a :class:`PopulationModel` around a task's model."""

    def __init__(self, model_fn: Callable[[], nn.Module], size: int):
        self.model_fn, self.size = model_fn, size

    def __call__(self) -> PopulationModel:
        return PopulationModel(self.model_fn(), self.size)


class PopulationInit(nn.Module):
    """The init role applied to the template, its parameters repeated for every copy."""

    def __init__(self, init: nn.Module, size: int):
        super().__init__()
        self.init, self.size = init, size

    def forward(self, model: PopulationModel, task=None) -> dict[str, Tensor]:
        params = self.init(model.template, task)
        return {
            PREFIX + n: p.unsqueeze(0).expand(self.size, *p.shape).clone()
            for n, p in params.items()
        }


class PopulationOptimizer(nn.Module):
    """The optimizer role on stacked parameters.

    SGD and Adam are elementwise, so they run directly on the stacked tensors (one call
    for the population); any other rule (a learned optimizer with per-tensor features)
    is vmapped over the population so it sees each copy separately.
    """

    def __init__(self, optimizer: nn.Module):
        super().__init__()
        self.optimizer = optimizer
        self.elementwise = type(optimizer) in (SGD, Adam)

    def init(self, params):
        return (
            self.optimizer.init(params) if self.elementwise else vmap(self.optimizer.init)(params)
        )

    def forward(self, grads, state, params, inplace: bool = False):
        if self.elementwise:
            return self.optimizer(grads, state, params)
        return vmap(lambda g, s, p: self.optimizer(g, s, p))(grads, state, params)


def same_structure(losses: list[nn.Module]) -> bool:
    """Whether the losses differ only in their parameter values (one module can then be
    vmapped over their stacked parameters): same class, same constructor arguments
    (except those a class lists in ``value_args``, which only set initial parameter
    values), same parameter shapes and equal buffers."""
    first = losses[0]
    shapes = [(n, p.shape) for n, p in first.named_parameters()]
    buffers = dict(first.named_buffers())
    ignored = set(getattr(type(first), "value_args", ()))

    def args(loss):
        return {k: v for k, v in loss.__dict__.get("init_args", {}).items() if k not in ignored}

    for loss in losses[1:]:
        if type(loss) is not type(first) or args(loss) != args(first):
            return False
        if [(n, p.shape) for n, p in loss.named_parameters()] != shapes:
            return False
        other = dict(loss.named_buffers())
        if other.keys() != buffers.keys() or not all(
            torch.equal(other[k], buffers[k]) for k in buffers
        ):
            return False
    return True


class PopulationLoss(nn.Module):
    """The sum over candidates of each candidate's loss on its own slice of predictions.

    Args:
        losses: one loss module per population member.
    """

    def __init__(self, losses: list[nn.Module]):
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.shared = same_structure(losses)
        first = losses[0]
        self.elementwise = isinstance(first, ElementwiseLoss) and all(
            isinstance(loss, ElementwiseLoss) and loss.kind == first.kind for loss in losses
        )
        if self.shared:  # the Parameter objects, gathered once (stacked per call for autograd)
            named = [dict(loss.named_parameters()) for loss in losses]
            self.members = {n: [params[n] for params in named] for n in named[0]}

    def values(self, pred: Tensor, target: Tensor) -> Tensor:
        """Each candidate's loss, shape ``(P,)``; ``pred`` is ``(P, N, ...)``."""
        if not self.shared and self.elementwise:  # one softmax / one-hot for everyone
            targets, preds = self.losses[0].elements(pred, target)
            return torch.stack(
                [loss.reduce(loss.elementwise(targets, p)) for loss, p in zip(self.losses, preds)]
            )
        if not self.shared:
            return torch.stack([loss(p, target) for loss, p in zip(self.losses, pred)])
        first = self.losses[0]
        stacked = {n: torch.stack(params) for n, params in self.members.items()}
        buffers = dict(first.named_buffers())
        return vmap(lambda p, out: functional_call(first, (p, buffers), (out, target)))(
            stacked, pred
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.values(pred, target).sum()


class PopulationObjective(nn.Module):
    """A meta-objective evaluated on every copy (vmapped); ``forward`` sums them, so its
    gradient reaches each candidate's meta-parameters from its own copy only."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective
        self.differentiable = getattr(objective, "differentiable", True)

    def values(self, model: PopulationModel, state: InnerState, batch, task) -> Tensor:
        def one(params, buffers):
            return self.objective(model.template, InnerState(params, buffers, None), batch, task)

        return vmap(one, randomness="different")(
            _unprefixed(state.params), _unprefixed(state.buffers)
        )

    def forward(self, model, state, batch, task) -> Tensor:
        return self.values(model, state, batch, task).sum()


class PopulationOuter:
    """One :class:`~learnreg.core.outer.OuterOptimizer` per candidate, behind the outer
    optimizer's interface: a candidate whose meta-gradient stays non-finite is frozen and
    reported in ``failed`` while the others go on.

    Args:
        losses: the candidates (each one's trainable parameters get their own optimizer).
        make_optimizer: builds a torch optimizer over one candidate's parameters.
        clip_grad_norm: per-candidate meta-gradient clipping.
        max_bad_steps: consecutive non-finite meta-steps before a candidate is dropped.
    """

    def __init__(self, losses, make_optimizer, clip_grad_norm=None, max_bad_steps: int = 10):
        self.members = []
        for loss in losses:
            params = [p for p in loss.parameters() if p.requires_grad]
            self.members.append(
                OuterOptimizer(params, make_optimizer(params), clip_grad_norm, max_bad_steps)
            )
        self.failed: dict[int, str] = {}

    def zero_grad(self) -> None:
        for member in self.members:
            member.zero_grad()

    def step(self, meta_loss: float) -> dict[str, float]:
        norms = []
        for index, member in enumerate(self.members):
            if index in self.failed:
                member.zero_grad()
                continue
            try:  # each candidate is judged by its own meta-gradient
                norms.append(member.step(0.0)["grad_norm"])
            except NumericalError as exc:
                self.failed[index] = f"local search diverged: {exc}"
        skipped = float(len(self.failed) == len(self.members))
        return {"grad_norm": max(norms, default=0.0), "skipped": skipped}
