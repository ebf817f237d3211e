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

import optree
import torch
from torch import Tensor

from learnreg.core.inner import InnerState, inner_step
from learnreg.core.inner_run import InnerRun, defer_each, drew_windows
from learnreg.estimators.batch_start import check_vmappable, initial_states, stackable, start_states
from learnreg.estimators.final_states import FinalStates, replayer

# stackable, check_vmappable and initial_states lived here before batch_start.py
__all__ = [
    "check_vmappable",
    "initial_states",
    "stackable",
    "unroll_batched",
    "unroll_window",
    "window_data",
    "windows_data",
]


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


def _replayable(start: tuple, rebuilt: bool) -> bool:
    """Whether the final states of runs that end with this window may be replayed
    graph-free when read instead of returned from vmap (unwrapping, detaching and keeping
    them was ~370 Python calls of a MAML sine meta-step's ~5,400). A start rebuilt from
    the init role can be; one that holds meta-parameters otherwise cannot."""
    return rebuilt or not any(
        isinstance(t, Tensor) and t.requires_grad for t in optree.tree_leaves(start[::2])
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
    start, buffers, rebuilt = start_states(runs, init, optimizer)
    data = windows_data(runs, window, objective_batch, average)

    def one_run(params, buffers, opt_state, batches, targets, states: bool = True):
        state = InnerState(params, buffers, opt_state, step0)
        meta_loss, base_loss, state = unroll_window(
            model, task, loss, optimizer, objective, state, batches, targets, average, first_order
        )
        if not states:
            return meta_loss, base_loss
        return meta_loss, base_loss, state.params, state.opt_state

    replay = not keep_states and _replayable(start, rebuilt)
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
