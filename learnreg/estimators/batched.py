"""A meta-batch of inner runs unrolled as one vectorized run (``torch.func.vmap``).

Few-shot episodes of one family have equal shapes: the same model, support and query
sizes. Their inner loops are then one batched computation: parameters, optimizer states
and batches are stacked along a new leading dimension and :func:`inner_step` runs under
``vmap`` with the meta-parameters of the roles shared (captured, not mapped). Autograd
flows through ``vmap``, so one ``torch.autograd.grad`` gives the same meta-gradient as the
Python loop over runs (see ``tests/test_batched_unroll.py``) with a few large kernels instead of
many small ones.

Models must not update buffers in place (``BatchNorm`` with running statistics): vmap
cannot batch an in-place update of an unbatched buffer. The few-shot backbone normalizes
with batch statistics only (:class:`learnreg.models.conv4.BatchStatNorm`).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import optree
import torch
from torch import Tensor, nn

from learnreg.core.inner import (
    InnerRun,
    InnerState,
    defer_each,
    drew_windows,
    frozen_names,
    inner_step,
)
from learnreg.core.population import stack
from learnreg.errors import ConfigError
from learnreg.estimators.final_states import FinalStates, replayer


def _fresh_on_one_model(runs: list[InnerRun]) -> bool:
    """Whether every run's step-0 state is still deferred (:attr:`InnerRun.fresh`) and
    all share one model."""
    model = runs[0].model
    return all([run.fresh and run.model is model for run in runs])


def stackable(runs: list[InnerRun]) -> bool:
    """Whether the runs' parameters, optimizer states and data have equal shapes. Runs
    whose step-0 state is still deferred on one shared model (:func:`_fresh_on_one_model`)
    are checked on their data only: one model, one init role and one optimizer role give
    them states of one shape (:func:`initial_states`), and building them here would
    undo the deferral."""
    # list comprehensions, not a function per run (a Python call each)
    data = [
        (r.task.train.x.shape[1:], r.task.val.x.shape[1:], r.train.batch_size, r.val.batch_size)
        + (r.step,)
        for r in runs
    ]
    if not _fresh_on_one_model(runs):

        def states(run: InnerRun):
            leaves = optree.tree_leaves(run.state.opt_state)
            return (
                [(k, tuple(v.shape), v.dtype) for k, v in run.state.params.items()],
                [(k, tuple(v.shape)) for k, v in run.state.buffers.items()],
                [tuple(t.shape) if isinstance(t, Tensor) else t for t in leaves],
            )

        data = [states(run) + d for run, d in zip(runs, data)]
    return data.count(data[0]) == len(data)


#: models that passed :func:`check_vmappable` (a meta-batch's shared model is checked once)
_VMAPPABLE: weakref.WeakSet = weakref.WeakSet()


def check_vmappable(model: nn.Module) -> None:
    """Reject models whose forward pass writes to a buffer (BatchNorm running statistics)."""
    if model in _VMAPPABLE:
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            raise ConfigError(
                f"model layer {name!r} tracks BatchNorm running statistics, which vmap cannot "
                "batch; use track_running_stats=False (or the conv4 backbone), or set "
                "estimator.vmap=false"
            )
    _VMAPPABLE.add(model)


#: models that hold buffers (checked once per model: most few-shot models hold none)
_BUFFERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _has_buffers(model: nn.Module) -> bool:
    if model not in _BUFFERED:
        _BUFFERED[model] = next(model.buffers(), None) is not None
    return _BUFFERED[model]


def stack_shared(members: list):
    """:func:`~learnreg.core.population.stack`, except that a leaf which is one and the same
    tensor in every member (fresh runs' θ0 from an init role that returns its own
    meta-parameters) is broadcast: an ``expand`` view, no copy, whose gradient is one sum
    over the runs instead of one accumulation per run. The values are the same; a
    meta-gradient through it differs from the stacked one by float rounding only. Only
    for tensors nothing writes in place (parameters: the inner step makes new ones)."""

    def one(*leaves):
        if len(set(map(id, leaves))) == 1:  # one tensor in every member
            return leaves[0].expand(len(leaves), *leaves[0].shape)
        return torch.stack(leaves)

    return optree.tree_map(one, *members)


def initial_states(runs: list[InnerRun], init, optimizer):
    """The step-0 states of fresh runs sharing one model, stacked: the values
    :func:`~learnreg.core.inner.init_state` gives each run, built together (θ0 broadcast
    where the init role returns the same tensors for every task, :func:`stack_shared`;
    the optimizer state from one vmapped ``optimizer.init`` instead of one call per run).

    Returns:
        ``(params, buffers, opt_state)`` stacked over the runs, or None when the
        optimizer's ``init`` cannot be vmapped (then each run builds its own state).
    """
    model, n = runs[0].model, len(runs)
    if getattr(init, "reads_task", True):
        members = [init(model, run.task) for run in runs]
        params = stack_shared(members)
    else:  # one θ0 for every task: one call, broadcast (what stack_shared makes of it)
        members = [init(model, runs[0].task)]
        params = {k: v.expand(n, *v.shape) for k, v in members[0].items()}
    buffers = {}
    if _has_buffers(model):
        buffers = {k: torch.stack([b.detach()] * n) for k, b in model.named_buffers()}
    frozen = frozen_names(model)
    adapted = {k: v for k, v in params.items() if k not in frozen}
    # list comprehensions, not generators: each item of a generator is a Python call
    if all([v.stride(0) == 0 for v in adapted.values()]):  # θ0 is one tensor for every run
        if getattr(optimizer, "elementwise", False):
            # coordinatewise: its init on the stacked parameters is every run's own, when
            # each state leaf is stacked too (not a scalar count); zeros_like of a
            # broadcast view is a fresh tensor, so each run owns its state
            opt_state = optimizer.init(adapted)
            leaves = optree.tree_leaves(opt_state)
            if all([isinstance(t, Tensor) and t.dim() and t.shape[0] == n for t in leaves]):
                if any([t.stride(0) == 0 for t in leaves]):  # a leaf repeating θ0 itself
                    opt_state = optree.tree_map(lambda t: t.contiguous(), opt_state)
                return params, buffers, opt_state
        # an optimizer's init is a function of the parameters: one call (on the first
        # run's own tensors, which the broadcast views repeat), one copy per run
        one = optimizer.init({k: v for k, v in members[0].items() if k not in frozen})
        return params, buffers, optree.tree_map(lambda t: torch.stack([t] * n), one)
    try:
        opt_state = torch.func.vmap(optimizer.init)(adapted)
    except (RuntimeError, ValueError):  # e.g. an init returning non-tensors or reading values
        return None
    # a leaf that does not depend on the parameters comes out of vmap broadcast (a
    # stride-0 view); optimizers may write their state in place, so each run gets its own
    opt_state = optree.tree_map(lambda t: t.contiguous(), opt_state)
    return params, buffers, opt_state


def window_data(run: InnerRun, window: int, objective_batch: str, average: bool):
    """A run's data for one window, gathered at once (the batches of ``window`` calls of
    ``next``, :meth:`~learnreg.core.task.BatchStream.take`), in the order the sequential
    unroll draws them; sets ``run.last_batch``.

    Returns:
        ``(batches, targets)``: the window's training batches ``(steps, batch, ...)`` and
        the batches the objective scores (one per scored step: every step when
        ``average``, else the last).
    """
    (batches,), targets = windows_data([run], window, objective_batch, average, stacked=False)
    return batches, targets[0]


def windows_data(
    runs: list[InnerRun], window: int, objective_batch: str, average: bool, stacked: bool = True
):
    """:func:`window_data` of every run (one call for a meta-batch), stacked over the runs
    (``stacked``) or as one pair per run.

    Returns:
        ``(batches, targets)``: stacked, ``(runs, steps, batch, ...)`` tensors; else lists
        with one entry per run.
    """
    batches = [run.train.take(window) for run in runs]
    drew_windows(runs, batches)  # run.last_batch: the window's last, cut out when read
    if objective_batch == "val":
        targets = [run.val.take(window if average else 1) for run in runs]
    elif average:  # the objective scores the training batches of every step
        targets = batches
    else:  # ... or of the last step
        targets = [(x[-1:], y[-1:]) for x, y in batches]
    if not stacked:
        return batches, targets
    return tuple(tuple(map(torch.stack, zip(*pairs))) for pairs in (batches, targets))


def unroll_window(
    model,
    task,
    loss,
    optimizer,
    objective,
    state: InnerState,
    batches,
    targets,
    average: bool,
    first_order: bool = False,
):
    """``len(batches)`` inner steps from ``state`` and the window's meta-loss (the mean over
    the scored steps when ``average``, else the last one's), as one pure function that
    ``vmap`` can batch over runs or over perturbed meta-parameters.

    Returns:
        ``(meta_loss, last base loss, state)``.
    """
    window = batches[0].shape[0]
    total, scored = None, 0
    for i in range(window):
        state, base_loss = inner_step(
            model, state, (batches[0][i], batches[1][i]), loss, optimizer, first_order=first_order
        )
        if average or i == window - 1:
            value = objective(model, state, (targets[0][scored], targets[1][scored]), task)
            # the first scored step starts the sum: no ``0.0 +`` op (and backward node)
            total = value if total is None else total + value
            scored += 1
    return (total / window if average else total), base_loss, state


def _start(runs: list[InnerRun], init, optimizer) -> tuple[tuple, Any, bool]:
    """The stacked step-0 states ``(params, buffers, opt_state)`` of a meta-batch, the
    buffers its runs continue with (the stacked copies for fresh runs, each run's own
    otherwise), and whether the init and optimizer roles rebuilt them (fresh runs of one
    model), so that they can be rebuilt again for a replay."""
    start = initial_states(runs, init, optimizer) if _fresh_on_one_model(runs) else None
    if start is not None:  # None: the optimizer's init cannot be vmapped, each run builds its own
        return start, start[1], True
    params = stack_shared([r.state.params for r in runs])
    buffers = [r.state.buffers for r in runs]
    return (
        (params,) + stack([(b, r.state.opt_state) for r, b in zip(runs, buffers)]),
        buffers,
        False,
    )


def unroll_batched(
    runs: list[InnerRun],
    init,
    loss,
    optimizer,
    objective,
    window: int,
    objective_batch: str,
    average: bool,
    leaves: list[Tensor],
    scale: float,
    first_order: bool = False,
    keep_states: bool = True,
) -> tuple[list[Tensor | None], list[float], list[float]]:
    """Advance every run by ``window`` steps in one vmapped computation and return
    ``scale · Σ_runs ∂(meta-loss)/∂leaves``.

    Each run draws its batches from its own streams in the same order as the sequential
    unroll, so both paths see identical data (:func:`window_data`).

    Args:
        runs: inner runs with equal shapes (:func:`stackable`).
        init, loss, optimizer: the init, loss and optimizer roles (the init role builds
            the step-0 states of fresh runs, :func:`initial_states`).
        objective: the meta-objective, ``objective(model, state, batch, task)``.
        window, objective_batch, average: as in
            :class:`~learnreg.estimators.unroll.TruncatedUnroll`.
        leaves: the meta-parameters to differentiate with respect to.
        scale: multiplies every run's meta-loss (``1 / meta_batch``).
        first_order: treat the inner gradients as constants (first-order MAML).
        keep_states: whether a run goes on from the new states. False (the runs end after
            this window): the states are not returned from vmap, and a run whose state is
            read all the same gets it replayed without a graph at this window's
            meta-parameters (:func:`~learnreg.estimators.final_states.replayer`).

    Returns:
        One gradient per leaf (None where no run depends on it), and per-run meta-losses
        and last base losses. The runs continue from their new, detached states (split
        out of the batched result when first read).
    """
    model, task, step0, n = runs[0].model, runs[0].task, runs[0].step, len(runs)
    check_vmappable(model)
    start, buffers, rebuilt = _start(runs, init, optimizer)
    data = windows_data(runs, window, objective_batch, average)

    def one_run(params, buffers, opt_state, batches, targets, states: bool = True):
        state = InnerState(params, buffers, opt_state, step0)
        meta_loss, base_loss, state = unroll_window(
            model, task, loss, optimizer, objective, state, batches, targets, average, first_order
        )
        if not states:
            return meta_loss, base_loss
        return meta_loss, base_loss, state.params, state.opt_state

    # States no run continues from are not returned from vmap (unwrapping, detaching and
    # keeping them was ~370 Python calls of a MAML sine meta-step's ~5,400): they are
    # replayed graph-free if ever read.
    # A start holding meta-parameters other than through the init role cannot be replayed.
    replay = not keep_states and (
        rebuilt
        or not any(
            isinstance(t, Tensor) and t.requires_grad for t in optree.tree_leaves(start[::2])
        )
    )
    if replay:
        meta_loss, base_loss = torch.func.vmap(functools.partial(one_run, states=False))(
            *start, *data
        )
    else:
        meta_loss, base_loss, new_params, new_opt = torch.func.vmap(one_run)(*start, *data)
    # the scale enters as the output gradient: the same products as ``scale * sum`` in
    # backward, without that op in the graph
    total = meta_loss.sum()
    grads = torch.autograd.grad(total, leaves, torch.full_like(total, scale), allow_unused=True)
    if replay:

        def begin():
            return initial_states(runs, init, optimizer) if rebuilt else start

        read = replayer((init, loss, optimizer), leaves, begin, one_run, data)
    else:
        # detached once, stacked; each run's state is as InnerState.detach would leave it
        detached = optree.tree_map(
            lambda t: t.detach() if isinstance(t, Tensor) else t, (new_params, new_opt)
        )
        read = lambda: detached  # noqa: E731
    final = FinalStates(read, buffers, step0 + window, n)
    defer_each(runs, final.member, step0 + window)
    return list(grads), meta_loss.detach().tolist(), base_loss.detach().tolist()
