"""The step-0 states of a vectorized meta-batch: which runs can be stacked, the models
vmap accepts, and the stacked parameters, buffers and optimizer states fresh runs start
from (built together instead of once per run). :func:`learnreg.estimators.batched.unroll_batched`
unrolls from them.
"""

from __future__ import annotations

import weakref
from typing import Any

import optree
import torch
from torch import Tensor, nn

from learnreg.core.inner import frozen_names
from learnreg.core.inner_run import InnerRun
from learnreg.core.population import stack
from learnreg.errors import ConfigError


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


def start_states(runs: list[InnerRun], init, optimizer) -> tuple[tuple, Any, bool]:
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
