"""The two calls every functional step makes, made cheap where nobody differentiates:
the model at given parameters (:func:`call_model`) and the gradient of a scalar function
of a dict of tensors (:func:`value_and_grad`, by plain autograd outside transforms).

Both give exactly what ``torch.func.functional_call`` and ``torch.func.grad_and_value``
give (``tests/test_inner.py``); they only skip work that cannot change the result.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Params = dict[str, Tensor]

#: models known to share no tensor between two names (``functional_call`` need not untie)
_UNTIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def call_model(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> Tensor:
    """``functional_call(model, (params, buffers), (x,))``, without its per-call search
    for tied weights (a walk over every submodule) on a model known to have none."""
    mapping = {**params, **buffers} if buffers else params
    if torch.compiler.is_compiling():  # dynamo: no global cache to trace (it fails on it)
        return functional_call(model, mapping, (x,))
    untied = _UNTIED.get(model)
    if untied is None:
        named = [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
        untied = _UNTIED[model] = len({id(t) for _, t in named}) == len(named)
    return functional_call(model, mapping, (x,), tie_weights=not untied)


def call_stacked(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> Tensor:
    """P copies of ``model`` at stacked parameters and buffers (leading dimension P) on one
    shared batch ``x``: the model's own ``stacked_forward(params, x)`` where it has one and
    no buffers (:class:`~learnreg.models.MLP`: one batched product per layer), else
    ``vmap`` over :func:`call_model`. Populations and the tuned grid call their copies
    through it."""
    stacked = getattr(model, "stacked_forward", None)
    if stacked is not None and not buffers:
        return stacked(params, x)
    return vmap(lambda p, b: call_model(model, p, b, x), randomness="different")(params, buffers)


def plain_autograd_allowed() -> bool:
    """Whether a gradient may be taken by plain ``torch.autograd.grad`` instead of
    ``torch.func``: gradients are off (nobody differentiates through the result) and no
    ``torch.func`` transform or ``torch.compile`` trace is active (``requires_grad_`` and
    ``autograd.grad`` are refused inside the former; dynamo would break its graph)."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()  # first: dynamo folds it, tracing nothing after
        # private, but the only way to ask whether a functorch transform is running
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def value_and_grad(fn: Callable[..., Tensor], params: Params, *args: Any) -> tuple[Params, Tensor]:
    """``torch.func.grad_and_value(fn)(params, *args)``: the gradient of a scalar function
    of a dict of tensors, and its value.

    Where :func:`plain_autograd_allowed` (a graph-free step outside any transform), it is
    taken by ``torch.autograd.grad`` on detached copies of ``params``: the same backward
    kernels, so the same numbers (``tests/test_inner.py`` pins trajectories bit for bit),
    at about half the cost of a small model's ``torch.func`` step. Elsewhere (meta-training,
    under ``vmap``, compiled) it is ``torch.func``, differentiable and transformable.

    Args:
        fn: a scalar function ``fn(params, *args)``.
        params: the tensors to differentiate with respect to, by name.
        *args: further inputs, not differentiated; tensors ``fn`` updates in place (a
            model's BatchNorm statistics) must come in here, since ``torch.func`` refuses
            in-place updates of tensors a function captures.

    Returns:
        The gradients by name (zeros for tensors ``fn`` does not use) and the value
        (detached on the autograd path; ``torch.func``'s otherwise).
    """
    if not plain_autograd_allowed():
        return torch.func.grad_and_value(fn)(params, *args)
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        value = fn(leaves, *args)
        if not value.requires_grad:  # fn ignores params: torch.func's zero gradient
            return {k: torch.zeros_like(v) for k, v in params.items()}, value.detach()
        grads = torch.autograd.grad(value, tuple(leaves.values()), materialize_grads=True)
    return dict(zip(leaves, grads)), value.detach()
