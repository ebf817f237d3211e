"""The functional inner loop: one pure step function for meta-training, fitness
evaluation and meta-testing.

The base model is an ``nn.Module`` used only as a function of a dict of parameters
(``torch.func.functional_call``); its own ``.parameters()`` are never trained. Gradients
come from ``torch.func.grad_and_value``, so the same :func:`inner_step` is

* differentiable with respect to the meta-parameters of the loss, optimizer and init
  roles under ordinary autograd (a truncated unroll backpropagates through it),
* cheap and graph-free under ``torch.no_grad()`` (meta-testing, fitness evaluation):
  there the base gradient is taken by plain ``torch.autograd.grad``
  (:func:`learnreg.core.functional.value_and_grad`), which gives the same numbers as
  ``torch.func`` without its per-call transform overhead, large next to the arithmetic of
  a small model,
* vmappable over a population of meta-parameters (:mod:`learnreg.estimators.evaluator`).

Which parameters the inner loop adapts is a property of the model: a model with an
``adapt_patterns`` attribute (shell-style name patterns, set by the ``adapt_only`` model
component or a model's own ``adapt`` argument) adapts only the parameters matching one of
them; the others are held fixed (they still carry the init role's meta-gradient through
the forward pass). Without the attribute every parameter adapts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import optree
from torch import Tensor, nn

from learnreg.core.functional import call_model, value_and_grad

Params = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class InnerState:
    """Everything a base-training run carries from one step to the next.

    Attributes:
        params: the base model's parameters by name.
        buffers: the base model's buffers (BatchNorm statistics), updated in place.
        opt_state: the optimizer role's state pytree.
        step: inner steps taken since this run started.
    """

    params: Params
    buffers: Params
    opt_state: Any
    step: int = 0

    def detach(self) -> InnerState:
        """Cut the graph to earlier steps (the truncation of a truncated unroll)."""
        return replace(
            self,
            params={k: v.detach() for k, v in self.params.items()},
            opt_state=optree.tree_map(
                lambda t: t.detach() if isinstance(t, Tensor) else t, self.opt_state
            ),
        )


def frozen_names(model: nn.Module) -> frozenset[str]:
    """The parameters the inner loop holds fixed: those matching none of the model's
    ``adapt_patterns`` (empty when the model has none: everything adapts)."""
    patterns = getattr(model, "adapt_patterns", None)
    if patterns is None:
        return frozenset()
    return frozenset(
        k for k, _ in model.named_parameters() if not any(fnmatchcase(k, p) for p in patterns)
    )


def forward(model: nn.Module, state: InnerState, x: Tensor) -> Tensor:
    """The base model's output at the state's parameters."""
    return call_model(model, state.params, state.buffers, x)


def init_state(model: nn.Module, init, optimizer, task=None) -> InnerState:
    """The state at step 0: the init role's parameters and a fresh optimizer state.

    Args:
        model: a freshly built base model (its parameters seed the random init).
        init: the init role, ``init(model, task) -> params``.
        optimizer: the optimizer role (``init(params) -> state``).
        task: passed to the init role (task-conditioned inits use it).
    """
    params = init(model, task)
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    frozen = frozen_names(model)
    adapted = {k: v for k, v in params.items() if k not in frozen}
    return InnerState(params, buffers, optimizer.init(adapted), 0)


def inner_step(
    model: nn.Module,
    state: InnerState,
    batch: Batch,
    loss: LossFn,
    optimizer,
    first_order: bool = False,
) -> tuple[InnerState, Tensor]:
    """One base-model update: gradient of the loss role, then the optimizer role.

    Differentiable with respect to ``state`` and every meta-parameter the roles hold,
    unless called under ``torch.no_grad()``.

    Args:
        model: the base model (used functionally).
        state: the current inner state.
        batch: ``(inputs, targets)``.
        loss: the loss role, ``loss(pred, target) -> scalar``.
        optimizer: the optimizer role, ``optimizer(grads, opt_state, params) -> (updates, opt_state)``.
        first_order: treat the base gradient as a constant (detached), so a meta-gradient
            through this step skips its second-order terms (first-order MAML); the update
            still depends on the parameters and on the optimizer role's meta-parameters.

    Returns:
        The next state and the (detached) base loss at the current parameters.
    """
    x, y = batch
    frozen = frozen_names(model)
    adapted = {k: v for k, v in state.params.items() if k not in frozen} if frozen else state.params
    fixed = {k: v for k, v in state.params.items() if k in frozen}

    # the buffers go in as an argument, not a closure: torch.func refuses in-place updates
    # of captured tensors, and BatchNorm updates its running statistics in place
    def base_loss(adapted: Params, buffers: Params) -> Tensor:
        params = {**adapted, **fixed} if fixed else adapted
        return loss(call_model(model, params, buffers, x), y)

    grads, value = value_and_grad(base_loss, adapted, state.buffers)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    updates, opt_state = optimizer(grads, state.opt_state, adapted)
    # held parameters pass through as the same tensors: bit-identical, graph intact
    params = {k: p if k in frozen else p + updates[k] for k, p in state.params.items()}
    return InnerState(params, state.buffers, opt_state, state.step + 1), value.detach()


def inner_loop(
    model: nn.Module,
    state: InnerState,
    batches: Iterator[Batch],
    loss: LossFn,
    optimizer,
    steps: int,
    callback: Callable[[InnerState, Tensor], None] | None = None,
    step: Callable | None = None,
) -> InnerState:
    """Take ``steps`` inner steps; ``callback(state, base_loss)`` runs after each one.

    Under ``torch.no_grad()`` this is plain training; otherwise the returned state
    carries the graph of all ``steps`` updates. ``step`` replaces :func:`inner_step`
    (same arguments), e.g. :func:`learnreg.core.compiled.graph_free_step` for a compiled
    graph-free loop.
    """
    step = step or inner_step
    for _ in range(steps):
        state, value = step(model, state, next(batches), loss, optimizer)
        if callback is not None:
            callback(state, value)
    return state
