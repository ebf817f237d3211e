"""Compiled graph-free inner steps: :func:`~learnreg.core.inner.inner_step` under
``torch.no_grad()``, through ``torch.compile``, with an eager fallback.

Meta-test runs, population fitness evaluation and the frozen-loss meta-test train the
base model with the roles held fixed: no meta-gradient flows, so the step is a pure
function of ``(parameters, buffers, optimizer state, batch)`` that ``torch.compile`` can
fuse into a few kernels. On the small models these runs use, the eager step is bound by
Python, ``torch.func`` and pytree overhead, not arithmetic; compiling removes most of it.

What is compiled and what is not:

* compiled: the graph-free step (the base-model gradient by ``torch.func.grad_and_value``
  and the optimizer role's update), one graph per model/role structure. ``torch.compile``
  guards on structure, not on instances, so a new model of the same architecture or a
  new role with the same settings reuses the graph (torchopt's momentum transforms keep a
  Python ``first_call`` flag, so their first step has a graph of its own).
* never compiled: the differentiable step of meta-training. Its meta-gradient
  backpropagates through the inner gradient (a double backward), which
  ``torch.compile``'s AOTAutograd does not support; it stays eager.

When compilation fails (no C compiler, an operation dynamo cannot trace), the step runs
eagerly from then on for that structure and one ``RuntimeWarning`` names the reason.
Compiled and eager steps agree to float rounding (``tests/test_compiled.py``); the first
call of each structure pays the compile time (seconds on a CPU). A compiled loop is
``inner_loop(..., step=graph_free_step)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn

from learnreg.core.inner import Batch, InnerState, LossFn, inner_step

#: (function, argument structure) pairs whose compilation failed, with the reason
FAILED: dict[Hashable, str] = {}
_COMPILED: dict[Callable, Callable] = {}


def _pure_step(model, loss, optimizer, params, buffers, opt_state, x, y):
    state, value = inner_step(
        model, InnerState(params, buffers, opt_state, 0), (x, y), loss, optimizer
    )
    return state.params, state.opt_state, value


def _compiled(fn: Callable) -> Callable:
    # created on first use: importing learnreg never starts dynamo
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def structure_key(*parts) -> Hashable:
    """What a compiled graph depends on, as far as failures are remembered: each module's
    type and its parameters' and buffers' names, shapes and dtypes (other objects: their
    type)."""
    key = []
    for part in parts:
        if isinstance(part, nn.Module):
            tensors = [*part.named_parameters(), *part.named_buffers()]
            key.append((type(part), tuple((n, tuple(t.shape), t.dtype) for n, t in tensors)))
        else:
            key.append(type(part))
    return tuple(key)


def graph_free(fn: Callable, compile: bool = True) -> Callable:
    """``fn`` under ``torch.no_grad()``, through ``torch.compile`` when ``compile``.

    For pure step functions of a frozen run: :func:`graph_free_step`, or a population's
    step (``graph_free(Population.step)`` takes the population as its first argument).
    Where compilation fails, ``fn`` runs eagerly from then on for arguments of that
    structure, after one ``RuntimeWarning`` naming the reason; an error of ``fn`` itself
    is raised by its eager run.

    Args:
        fn: the function (a plain function; dynamo guards on its arguments' structure).
        compile: False: just ``fn`` under ``torch.no_grad()``.

    Returns:
        A function with ``fn``'s arguments and results.
    """
    name = getattr(fn, "__qualname__", repr(fn))

    def eager(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    if not compile:
        return eager

    def run(*args, **kwargs):
        key = (name, structure_key(*args))
        if key in FAILED:
            return eager(*args, **kwargs)
        try:
            with torch.no_grad():
                return _compiled(fn)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compile failure; a real error re-raises below
            result = eager(*args, **kwargs)  # raises if the call itself is wrong
            FAILED[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(
                f"torch.compile failed for {name} ({FAILED[key]}); running it eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            return result

    return run


def graph_free_step(
    model: nn.Module,
    state: InnerState,
    batch: Batch,
    loss: LossFn,
    optimizer,
    compile: bool = True,
) -> tuple[InnerState, Tensor]:
    """One inner step without a graph, compiled when ``compile`` (eager otherwise).

    Equal to ``inner_step`` under ``torch.no_grad()`` to float rounding; the arguments and
    results are :func:`~learnreg.core.inner.inner_step`'s. The returned tensors never carry
    a graph, even when called with gradients enabled.

    Args:
        model: the base model (used functionally).
        state: the current inner state.
        batch: ``(inputs, targets)``.
        loss: the loss role (held fixed).
        optimizer: the optimizer role (held fixed).
        compile: use the compiled step (falls back to eager where compilation fails).

    Returns:
        The next state and the base loss at the current parameters.
    """
    x, y = batch
    params, opt_state, value = graph_free(_pure_step, compile)(
        model, loss, optimizer, state.params, state.buffers, state.opt_state, x, y
    )
    return InnerState(params, state.buffers, opt_state, state.step + 1), value
