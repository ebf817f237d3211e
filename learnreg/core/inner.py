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
from functools import partial
from typing import Any

import optree
from torch import Tensor, nn

from learnreg.core.functional import call_model, value_and_grad
from learnreg.errors import CheckpointError

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


class InnerRun:
    """A live base-training run: a task, its model, the inner state and seeded batch streams.

    Estimators keep these between meta-steps (a persistent online run) or replace them
    after a horizon. ``state_dict()`` captures everything needed to continue it exactly.

    Args:
        task: the :class:`~learnreg.core.task.Task` being trained on.
        model: a freshly built model for ``task`` (on the run's device).
        state: the inner state at step 0 (None: one set later with :meth:`defer`, or
            built by ``build``).
        seed: seeds the model and the batch order; equal seeds give equal runs.
        index: which run of the estimator's sequence this is (for resuming).
        build: builds the step-0 state on first read, instead of ``state`` (as
            :meth:`defer` with ``fresh``).
    """

    def __init__(
        self,
        task,
        model: nn.Module,
        state: InnerState | None,
        seed: int,
        index: int = 0,
        build: Callable[[], InnerState] | None = None,
    ):
        self.task, self.model = task, model
        self._state, self._pending = state, build
        # step: inner steps taken (known without building a deferred state); fresh: the
        # state is a deferred step-0 state not built yet, which a batched unroll may build
        # together with its meta-batch's. Attributes, not properties: a meta-batch reads
        # them for every run every meta-step, and a property is a Python call each time.
        self.step = state.step if state is not None else 0
        self.fresh = build is not None
        self.seed, self.index = seed, index
        self.train = task.stream("train", seed)
        self.val = task.stream("val", seed + 1)
        self._last_batch: Batch | None = None
        self._last_window: Batch | None = None
        self.diverged_at: int | None = None  # inner step at which the base loss became non-finite
        self.update_norms: dict[int, float] = {}  # ‖Δθ‖ at the logged meta-test steps

    @property
    def state(self) -> InnerState:
        """The inner state; a deferred one (:meth:`defer`) is built on first read."""
        if self._pending is not None:
            self._state, self._pending, self.fresh = self._pending(), None, False
        return self._state

    @state.setter
    def state(self, value: InnerState) -> None:
        self._state, self._pending, self.fresh, self.step = value, None, False, value.step

    def defer(self, build: Callable[[], InnerState], step: int, fresh: bool = False) -> None:
        """Make the state ``build()``, built on first read. A meta-batch's runs are made
        and finished together every meta-step, and most are dropped unread: deferring
        spares a per-run ``init_state`` at the start (``fresh``: ``build`` gives the
        step-0 state) and the split of the batched result at the end
        (:func:`defer_each`).

        Args:
            build: returns the state (called at most once).
            step: the state's ``step`` (known without building it).
            fresh: ``build`` gives the run's step-0 state (``init_state``).
        """
        self._state, self._pending, self.step, self.fresh = None, build, step, fresh

    @property
    def last_batch(self) -> Batch | None:
        """The last training batch the run drew (None before the first)."""
        if self._last_window is not None:  # a window drawn at once: its last batch
            x, y = self._last_window
            self._last_batch, self._last_window = (x[-1], y[-1]), None
        return self._last_batch

    @last_batch.setter
    def last_batch(self, batch: Batch | None) -> None:
        self._last_batch, self._last_window = batch, None

    def drew_window(self, batches: Batch) -> None:
        """Record that the run drew ``batches`` (stacked, ``(steps, batch, ...)``) at once:
        :attr:`last_batch` becomes their last, cut out only when read."""
        self._last_window = batches

    def next_train(self) -> Batch:
        self.last_batch = self.train.next()
        return self.last_batch

    def state_dict(self) -> dict:
        """The run as plain tensors and numbers (the optimizer state as its pytree leaves)."""

        return {
            "seed": self.seed,
            "index": self.index,
            "step": self.state.step,
            "params": {k: v.detach() for k, v in self.state.params.items()},
            "buffers": dict(self.state.buffers),
            "opt_leaves": [
                t.detach() if isinstance(t, Tensor) else t
                for t in optree.tree_leaves(self.state.opt_state)
            ],
            "train": self.train.state_dict(),
            "val": self.val.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a run saved by :meth:`state_dict` (the optimizer state's structure comes
        from this run's freshly initialized state, its values from ``sd``)."""
        device = next(iter(self.state.params.values())).device
        leaves, spec = optree.tree_flatten(self.state.opt_state)
        if len(leaves) != len(sd["opt_leaves"]):
            raise CheckpointError(
                "the checkpointed optimizer state does not match the optimizer role; was the optimizer changed?"
            )
        opt_leaves = [v.to(device) if isinstance(v, Tensor) else v for v in sd["opt_leaves"]]
        self.state = InnerState(
            params={k: v.to(device) for k, v in sd["params"].items()},
            buffers={k: v.to(device) for k, v in sd["buffers"].items()},
            opt_state=optree.tree_unflatten(spec, opt_leaves),
            step=int(sd["step"]),
        )
        self.train.load_state_dict(sd["train"])
        self.val.load_state_dict(sd["val"])


# one call for a whole meta-batch, where a method call per run was a Python call per task


def defer_each(runs: list[InnerRun], member: Callable[[int], InnerState], step: int) -> None:
    """Make run ``i``'s state ``member(i)``, built on first read (:meth:`InnerRun.defer`
    for every run, ``fresh=False``)."""
    for i, run in enumerate(runs):
        run._state, run._pending, run.step, run.fresh = None, partial(member, i), step, False


def drew_windows(runs: list[InnerRun], windows: list[Batch]) -> None:
    """:meth:`InnerRun.drew_window` for every run: run ``i`` drew ``windows[i]``."""
    for run, window in zip(runs, windows):
        run._last_window = window
