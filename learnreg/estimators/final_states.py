"""The states a batched window leaves its runs: split per run when first read, and, for
runs that end with the window, replayed without a graph instead of returned from vmap.

A meta-batch's runs are made and finished together, and a finished meta-batch is usually
dropped unread (MAML's episodes end with their window). Returning its final parameters
and optimizer states from ``torch.func.vmap`` only to drop them cost a few percent of a
small model's meta-step (each output is unwrapped from its batch level, detached and
kept: about 370 of the ~5,400 Python calls of a MAML sine meta-step), so
:func:`~learnreg.estimators.batched.unroll_batched` returns them only when a run goes on;
otherwise a run that is read all the same (a test, a checkpoint) gets its state from
:func:`replayer`: the same window, vmapped again under ``torch.no_grad()`` at the
meta-parameter values of the meta-step that ran it (the outer step has moved them since).
The inner gradients inside are computed as before (``torch.func.grad`` ignores an outer
``no_grad``) on the same inputs, so the values are the ones the window computed, to the
last bit for the MLPs (``tests/test_lean_meta_step.py``, ``tests/test_deferred_runs.py``)
and to float rounding for convolutions, whose CPU kernels may pick another algorithm
without autograd (1 ulp in float64 on an Intel Xeon; bit-equal on an AMD EPYC).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from learnreg.core.bias import Biases
from learnreg.core.inner import InnerState
from learnreg.core.metaparams import call_at
from learnreg.core.population import unstack


class FinalStates:
    """A batched window's detached result, split into per-run states when one is first
    read (:meth:`~learnreg.core.inner_run.InnerRun.defer`).

    Args:
        result: returns the stacked ``(params, opt_state)`` (called at most once).
        buffers: the runs' buffers, stacked (fresh runs) or one dict per run.
        step: the runs' inner step after the window.
        n: how many runs.
    """

    def __init__(self, result: Callable[[], tuple], buffers, step: int, n: int):
        self.result, self.buffers, self.step, self.n = result, buffers, step, n
        self.states: list[InnerState] | None = None

    def member(self, i: int) -> InnerState:
        if self.states is None:
            params, opt_state = self.result()
            buffers = self.buffers
            if isinstance(buffers, dict):  # stacked (fresh runs): split like the rest
                buffers = unstack(buffers, self.n)
            parts = zip(unstack(params, self.n), buffers, unstack(opt_state, self.n))
            self.states = [InnerState(p, b, o, self.step) for p, b, o in parts]
            self.result = self.buffers = None
        return self.states[i]


def replayer(roles: tuple, leaves: list[Tensor], begin: Callable, one_run: Callable, data):
    """A function that recomputes a window's final states, graph-free, at the values the
    meta-parameters ``leaves`` have now (copied, since the outer step will change them).

    Args:
        roles: the ``(init, loss, optimizer)`` roles the window ran with.
        leaves: their meta-parameters (each one a parameter of a role).
        begin: returns the window's start ``(params, buffers, opt_state)``, stacked; it is
            called inside the replay, so a start the init role builds reads the copies.
        one_run: the window of one run, ``one_run(*start, *data)`` returning
            ``(meta_loss, base_loss, params, opt_state)``.
        data: the window's stacked ``(batches, targets)``.

    Returns:
        A function returning the stacked ``(params, opt_state)``.
    """
    with torch.no_grad():
        values = [leaf.detach().clone() for leaf in leaves]

    def replay():
        scope = Biases(roles[1], roles[2], roles[0])
        names = {
            id(p): (role, name)
            for role, module in scope.roles().items()
            for name, p in module.named_parameters()
        }
        at: dict = {}
        for leaf, value in zip(leaves, values):
            if id(leaf) not in names:
                raise RuntimeError("a replayed window's meta-parameter belongs to no role")
            role, name = names[id(leaf)]
            at.setdefault(role, {})[name] = value

        def window():
            _, _, params, opt_state = torch.func.vmap(one_run)(*begin(), *data)
            return params, opt_state

        with torch.no_grad():
            return call_at(scope, at, window)

    return replay
