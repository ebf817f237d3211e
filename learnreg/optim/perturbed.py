"""The machinery shared by SAM, GSAM and GAM: a ``torch.optim.Optimizer`` that takes
several gradient passes per step around any base optimizer.

The equations live in :mod:`learnreg.optim.perturbations`; this module only moves the
parameters between evaluation points, keeps the copies it needs, and hands the final
direction to the base optimizer. Parameter groups are the base optimizer's own list, so
LR schedulers, ``add_param_group`` and per-group hyperparameters reach both.

Buffers held during a step: a copy of the parameters (restoring them exactly, also in
bfloat16) plus what the method remembers: SAM 1, GSAM 2, GAM 3 parameter-sized buffers.
They are freed after the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from learnreg.optim.batchnorm import frozen_bn_stats
from learnreg.optim.groups import check_group_options
from learnreg.optim.perturbations import Perturbation

#: hyperparameters that must be equal in every parameter group (they are not per-tensor).
GLOBAL_HYPERPARAMETERS = ("adaptive", "eps")


def build_base_optimizer(params, base_optimizer, base_kwargs: dict) -> torch.optim.Optimizer:
    """The base optimizer: built from a class and ``base_kwargs``, or an instance as is."""
    if isinstance(base_optimizer, torch.optim.Optimizer):
        if base_kwargs:
            raise TypeError(
                f"base_optimizer is already built; keyword arguments {sorted(base_kwargs)} "
                "would be ignored. Pass the class instead, or configure the instance."
            )
        if params is not None:
            given = {id(p) for p in _flatten_params(params)}
            own = {id(p) for g in base_optimizer.param_groups for p in g["params"]}
            if given != own:
                raise ValueError(
                    "params differ from the base optimizer's parameters; pass params=None "
                    "with a built base optimizer, or pass the optimizer class."
                )
        return base_optimizer
    if isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
        return base_optimizer(params, **base_kwargs)
    raise TypeError(
        f"base_optimizer must be a torch.optim.Optimizer class or instance, got {base_optimizer!r}"
    )


def _flatten_params(params) -> list[Tensor]:
    params = list(params)
    if params and isinstance(params[0], dict):
        return [p for g in params for p in g["params"]]
    return params


@dataclass
class StepProgress:
    """Where the current step is. Kept in its own object and mutated in place:
    ``torch.compile`` drops integer attribute updates made on an ``Optimizer`` itself."""

    phase: int = 0
    origin: list[Tensor] | None = None
    memory: dict[str, list[Tensor]] = field(default_factory=dict)
    active: list[Tensor] = field(default_factory=list)
    group_index: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.phase, self.origin, self.memory, self.active, self.group_index = 0, None, {}, [], []


class PerturbedOptimizer(torch.optim.Optimizer):
    """Runs ``perturbation.passes`` gradient passes per step around ``base_optimizer``.

    Two ways to drive it:

    * ``step(closure)``: the closure recomputes the loss and its gradients
      (``loss.backward()``); it is called once per pass. With ``model`` given, the
      extra passes run inside :func:`~learnreg.optim.batchnorm.frozen_bn_stats`.
    * The phase API, for ``GradScaler``, gradient accumulation and DDP ``no_sync``:
      after each backward pass but the last call :meth:`ascend` (named ``first_step``...
      in the subclasses); after the last one :meth:`unperturb` (parameters back,
      ``.grad`` holds the update direction) and ``step()`` (the base step).

    Args:
        params: parameters or parameter groups (None with a built base optimizer).
        base_optimizer: a ``torch.optim.Optimizer`` class or instance.
        defaults: the method's hyperparameters (stored in every parameter group).
        model: optional; lets ``step(closure)`` freeze BatchNorm statistics in extra passes.
        **base_kwargs: arguments of the base optimizer class (``lr``, ``momentum``...).
    """

    perturbation: Perturbation
    #: hyperparameters that must be >= 0 in every group.
    nonnegative: tuple[str, ...] = ()

    def __init__(
        self,
        params,
        base_optimizer,
        defaults: dict[str, Any],
        model: nn.Module | None = None,
        **base_kwargs,
    ):
        self.base_optimizer = build_base_optimizer(params, base_optimizer, base_kwargs)
        # A hyperparameter named like one of the base optimizer's options (eps with Adam,
        # alpha with RMSprop, rho with Adadelta) gets a prefixed group key ("sam_eps"):
        # one shared key would hand the method the base optimizer's value, silently.
        prefix = type(self).__name__.lower()
        self.option_keys = {
            name: f"{prefix}_{name}" if name in self.base_optimizer.defaults else name
            for name in defaults
        }
        defaults = {self.option_keys[name]: value for name, value in defaults.items()}
        super().__init__(self.base_optimizer.param_groups, defaults)
        self.param_groups = self.base_optimizer.param_groups  # one shared list
        self.model = model
        self._progress = StepProgress()

    # -- parameter groups -------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (and so to this one). Its options must be
        this method's hyperparameters or the base optimizer's (``ValueError`` otherwise:
        neither would read them)."""
        check_group_options(
            param_group,
            {*self.defaults, *self.base_optimizer.defaults},
            f"{type(self).__name__} around {type(self.base_optimizer).__name__}",
        )
        groups = self.base_optimizer.param_groups
        if not any(g is param_group for g in groups):
            self.base_optimizer.add_param_group(param_group)
            param_group = groups[-1]
        for name, value in self.defaults.items():
            param_group.setdefault(name, value)
        for name in self.nonnegative:
            if not self.option(param_group, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {self.option(param_group, name)}")
        self.init_group(param_group)

    def option(self, group: dict[str, Any], name: str) -> Any:
        """The value of this method's hyperparameter ``name`` in ``group`` (whatever its key)."""
        return group[self.option_keys[name]]

    def init_group(self, group: dict[str, Any]) -> None:
        """Called once per parameter group when it joins (subclasses fill derived values)."""

    def group_hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        """The equations' hyperparameters for one group (subclasses derive more)."""
        return {name: self.option(group, name) for name in self.option_keys}

    # -- the phases ---------------------------------------------------------------------
    @property
    def phase(self) -> int:
        """Passes consumed this step (0: idle; ``passes``: parameters restored, ready)."""
        return self._progress.phase

    @torch.no_grad()
    def ascend(self, zero_grad: bool = False) -> None:
        """Read the current pass's gradients and move the parameters to where the next
        pass is taken."""
        if self._progress.phase >= self.perturbation.passes - 1:
            raise RuntimeError(
                f"{type(self).__name__} has taken all {self.perturbation.passes - 1} ascent "
                "phases of this step; finish it with unperturb() and step()."
            )
        if self._progress.phase == 0:
            self._start()
        grads = self._grads()
        move = self.perturbation.ascend(
            self._progress.phase,
            grads,
            self._progress.origin,
            self._progress.memory,
            self._hyperparameters(),
        )
        self._keep_copies(grads)
        if move.from_origin and self._progress.phase > 0:
            torch._foreach_copy_(self._progress.active, self._progress.origin)
        torch._foreach_add_(self._progress.active, move.offset)
        self._progress.phase += 1
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def unperturb(self) -> None:
        """After the last pass: restore the parameters exactly and put the method's update
        direction into ``.grad`` (a ``GradScaler`` may unscale and check it next)."""
        if self._progress.phase != self.perturbation.passes - 1:
            raise RuntimeError(
                f"unperturb() comes after the last pass; {type(self).__name__} has taken "
                f"{self._progress.phase} of {self.perturbation.passes - 1} ascent phases this step."
            )
        grads = self._grads()
        direction = self.perturbation.direction(
            grads, self._progress.memory, self._hyperparameters()
        )
        torch._foreach_copy_(self._progress.active, self._progress.origin)
        if direction is not grads:
            torch._foreach_copy_(grads, direction)
        self._progress.origin, self._progress.memory = None, {}
        self._progress.phase = self.perturbation.passes

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One full step with ``closure``; without one, finish the step the phase API
        started (restore if needed, then the base optimizer's step).

        Returns:
            The closure's loss at the unperturbed parameters (None without a closure).
        """
        loss = None
        if closure is not None:
            if self._progress.phase != 0:
                raise RuntimeError("step(closure) called in the middle of a phased step")
            closure = torch.enable_grad()(closure)
            loss = closure()
            for _ in range(self.perturbation.passes - 1):
                self.ascend(zero_grad=True)
                with frozen_bn_stats(self.model):
                    closure()
        if self._progress.phase == 0:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that re-evaluates the loss and "
                "its gradients, or the phase API first (first_step() ... then step())."
            )
        if self._progress.phase < self.perturbation.passes:
            self.unperturb()
        self.base_optimizer.step()
        self._progress.reset()
        return loss

    # -- bookkeeping ------------------------------------------------------------------
    def _start(self) -> None:
        progress = self._progress
        progress.active, progress.group_index = [], []
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None:
                    progress.active.append(p)
                    progress.group_index.append(index)
        if not progress.active:
            raise RuntimeError("no parameter has a gradient: call backward() before the first step")
        progress.origin = [p.detach().clone() for p in progress.active]

    def _grads(self) -> list[Tensor]:
        for p in self._progress.active:
            if p.grad is None:  # no gradient at a perturbed point: a zero gradient
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self._progress.active]

    def _keep_copies(self, grads: list[Tensor]) -> None:
        """Memory entries that alias ``.grad`` must be copied before the next backward."""
        for name, tensors in self._progress.memory.items():
            if tensors and tensors[0] is grads[0]:
                self._progress.memory[name] = [t.clone() for t in tensors]

    def _hyperparameters(self) -> dict[str, Any]:
        per_group = [self.group_hyperparameters(g) for g in self.param_groups]
        out: dict[str, Any] = {}
        for name in per_group[0]:
            values = [hp[name] for hp in per_group]
            if all(v == values[0] for v in values):
                out[name] = values[0]
            elif name in GLOBAL_HYPERPARAMETERS:
                raise ValueError(
                    f"{name!r} must be the same in every parameter group, got {values}"
                )
            else:
                out[name] = [float(values[i]) for i in self._progress.group_index]
        return out

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups carry this method's hyperparameters).

        Raises:
            RuntimeError: in the middle of a step, when the parameters are perturbed.
        """
        if self._progress.phase != 0:
            raise RuntimeError("state_dict() in the middle of a step; save between steps")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        for group in self.param_groups:  # a state saved before a hyperparameter existed
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self._progress.reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_optimizer!r})"
