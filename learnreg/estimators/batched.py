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

import optree
import torch
from torch import Tensor, nn

from learnreg.core.inner import InnerRun, InnerState, inner_step
from learnreg.core.population import stack, unstack
from learnreg.errors import ConfigError


def stackable(runs: list[InnerRun]) -> bool:
    """Whether the runs' parameters, optimizer states and data have equal shapes."""

    def signature(run: InnerRun):
        leaves = optree.tree_leaves(run.state.opt_state)
        return (
            [(k, tuple(v.shape), v.dtype) for k, v in run.state.params.items()],
            [(k, tuple(v.shape)) for k, v in run.state.buffers.items()],
            [tuple(t.shape) if isinstance(t, Tensor) else t for t in leaves],
            tuple(run.task.train.x.shape[1:]),
            tuple(run.task.val.x.shape[1:]),
            run.train.batch_size,
            run.val.batch_size,
            run.state.step,
        )

    first = signature(runs[0])
    return all(signature(run) == first for run in runs[1:])


def check_vmappable(model: nn.Module) -> None:
    """Reject models whose forward pass writes to a buffer (BatchNorm running statistics)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            raise ConfigError(
                f"model layer {name!r} tracks BatchNorm running statistics, which vmap cannot "
                "batch; use track_running_stats=False (or the conv4 backbone), or set "
                "estimator.vmap=false"
            )


def stack_shared(members: list):
    """:func:`~learnreg.core.population.stack`, except that a leaf which is one and the same
    tensor in every member (fresh runs' θ0 from an init role that returns its own
    meta-parameters) is broadcast: an ``expand`` view, no copy, whose gradient is one sum
    over the runs instead of one accumulation per run. The values are the same; a
    meta-gradient through it differs from the stacked one by float rounding only. Only
    for tensors nothing writes in place (parameters: the inner step makes new ones)."""

    def one(*leaves):
        first = leaves[0]
        if all(leaf is first for leaf in leaves[1:]):
            return first.expand(len(leaves), *first.shape)
        return torch.stack(leaves)

    return optree.tree_map(one, *members)


def window_data(run: InnerRun, window: int, objective_batch: str, average: bool):
    """A run's data for one window, gathered at once (the batches of ``window`` calls of
    ``next``, :meth:`~learnreg.core.task.BatchStream.take`), in the order the sequential
    unroll draws them; sets ``run.last_batch``.

    Returns:
        ``(batches, targets)``: the window's training batches ``(steps, batch, ...)`` and
        the batches the objective scores (one per scored step: every step when
        ``average``, else the last).
    """
    batches = run.train.take(window)
    run.last_batch = (batches[0][-1], batches[1][-1])
    if objective_batch == "val":
        return batches, run.val.take(window if average else 1)
    x, y = batches  # the objective scores the training batches of the scored steps
    return batches, (batches if average else (x[-1:], y[-1:]))


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
    total, scored = 0.0, 0
    for i in range(window):
        state, base_loss = inner_step(
            model, state, (batches[0][i], batches[1][i]), loss, optimizer, first_order=first_order
        )
        if average or i == window - 1:
            total = total + objective(model, state, (targets[0][scored], targets[1][scored]), task)
            scored += 1
    return (total / window if average else total), base_loss, state


def unroll_batched(
    runs: list[InnerRun],
    loss,
    optimizer,
    objective,
    window: int,
    objective_batch: str,
    average: bool,
    leaves: list[Tensor],
    scale: float,
    first_order: bool = False,
) -> tuple[list[Tensor | None], list[float], list[float]]:
    """Advance every run by ``window`` steps in one vmapped computation and return
    ``scale · Σ_runs ∂(meta-loss)/∂leaves``.

    Each run draws its batches from its own streams in the same order as the sequential
    unroll, so both paths see identical data (:func:`window_data`).

    Args:
        runs: inner runs with equal shapes (:func:`stackable`).
        loss, optimizer: the loss and optimizer roles.
        objective: the meta-objective, ``objective(model, state, batch, task)``.
        window, objective_batch, average: as in
            :class:`~learnreg.estimators.unroll.TruncatedUnroll`.
        leaves: the meta-parameters to differentiate with respect to.
        scale: multiplies every run's meta-loss (``1 / meta_batch``).
        first_order: treat the inner gradients as constants (first-order MAML).

    Returns:
        One gradient per leaf (None where no run depends on it), and per-run meta-losses
        and last base losses. The runs continue from their new, detached states.
    """
    model, task, step0 = runs[0].model, runs[0].task, runs[0].state.step
    check_vmappable(model)
    params = stack_shared([r.state.params for r in runs])
    members = [
        (r.state.buffers, r.state.opt_state) + window_data(r, window, objective_batch, average)
        for r in runs
    ]

    def one_run(params, buffers, opt_state, batches, targets):
        state = InnerState(params, buffers, opt_state, step0)
        meta_loss, base_loss, state = unroll_window(
            model, task, loss, optimizer, objective, state, batches, targets, average, first_order
        )
        return meta_loss, base_loss, state.params, state.opt_state

    meta_loss, base_loss, new_params, new_opt = torch.func.vmap(one_run)(params, *stack(members))
    grads = torch.autograd.grad(scale * meta_loss.sum(), leaves, allow_unused=True)
    # detached once, stacked, then split: each run's state is as InnerState.detach leaves it
    new_params, new_opt = optree.tree_map(
        lambda t: t.detach() if isinstance(t, Tensor) else t, (new_params, new_opt)
    )
    for run, params, opt_state in zip(runs, unstack(new_params), unstack(new_opt, len(runs))):
        run.state = InnerState(params, run.state.buffers, opt_state, step0 + window)
    return list(grads), meta_loss.detach().tolist(), base_loss.detach().tolist()
