"""One mechanism for running many members at once: a meta-batch of tasks, a population of
candidate biases, the perturbation pairs of an evolution strategy.

A *member* is any pytree of tensors (meta-parameter values, an inner state, batches, or a
tuple of them). Members of equal structure and shapes are stacked on a new leading
dimension and run as one ``torch.func.vmap`` call; members that cannot be stacked (symbolic
losses of different shapes, tasks of different sizes) run one after another, with the same
results. Autograd flows through both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch
from torch import Tensor, nn


def _signature(member) -> tuple | None:
    leaves, spec = optree.tree_flatten(member)
    if not all(isinstance(t, Tensor) for t in leaves):
        return None  # vmap maps tensors only
    return spec, [(tuple(t.shape), t.dtype, t.device) for t in leaves]


def stackable(members: list) -> bool:
    """Whether the members are pytrees of tensors with one structure and equal shapes,
    dtypes and devices."""
    if not members:
        return False
    first = _signature(members[0])
    return first is not None and all(_signature(m) == first for m in members[1:])


def stack(members: list):
    """The members stacked leaf by leaf on a new leading dimension."""
    return optree.tree_map(lambda *xs: torch.stack(xs), *members)


def unstack(tree, n: int | None = None) -> list:
    """The inverse of :func:`stack`: ``n`` members (default: the leading size)."""
    leaves, spec = optree.tree_flatten(tree)
    if not leaves:
        return [optree.tree_unflatten(spec, []) for _ in range(n or 0)]
    # one unbind per leaf (views, as leaf[i] would be) rather than one indexing per member
    parts = [leaf.unbind(0) for leaf in leaves]
    if n is not None and n > len(parts[0]):
        raise IndexError(f"unstack: asked for {n} members, the leaves hold {len(parts[0])}")
    members = list(zip(*parts))[:n]
    return [optree.tree_unflatten(spec, list(member)) for member in members]


def map_members(
    fn: Callable[..., Any],
    members: list,
    *shared,
    vectorize: bool = True,
    randomness: str = "error",
):
    """``fn(member, *shared)`` for every member, as one vmapped call when possible.

    Args:
        fn: a function of one member and the shared arguments; its output is a pytree of
            tensors (or anything, on the sequential path).
        members: the members (pytrees).
        shared: arguments every member sees unchanged (broadcast, not mapped).
        vectorize: use ``torch.func.vmap`` when the members are :func:`stackable`;
            False always loops (a reference, or code vmap cannot batch).
        randomness: passed to ``vmap`` (``error``, ``same`` or ``different``).

    Returns:
        The outputs stacked on a new leading dimension, in member order; on the
        sequential path, a list when the outputs cannot be stacked.
    """
    if vectorize and len(members) > 1 and stackable(members):
        in_dims = (0,) + (None,) * len(shared)
        return torch.func.vmap(fn, in_dims=in_dims, randomness=randomness)(stack(members), *shared)
    outputs = [fn(member, *shared) for member in members]
    return stack(outputs) if stackable(outputs) else outputs


def modules_stackable(modules: list[nn.Module]) -> bool:
    """Whether the modules differ only in their parameter values, so that one of them
    evaluated at the others' stacked parameters (``functional_call`` under ``vmap``)
    stands for all: same class, same constructor arguments (except those the class lists
    in ``value_args``, which only set initial values), same parameter names, shapes and
    dtypes, and equal buffers (a symbolic loss's tree is one)."""
    if not modules:
        return False
    first = modules[0]
    ignored = set(getattr(type(first), "value_args", ()))

    def args(module):
        return {k: v for k, v in module.__dict__.get("init_args", {}).items() if k not in ignored}

    def buffers(module):
        return dict(module.named_buffers())

    reference = buffers(first)
    return all(
        type(m) is type(first)
        and args(m) == args(first)
        and stackable([dict(m.named_parameters()), dict(first.named_parameters())])
        and buffers(m).keys() == reference.keys()
        and all(torch.equal(b, reference[k]) for k, b in buffers(m).items())
        for m in modules[1:]
    )


def stack_parameters(modules: list[nn.Module]) -> dict[str, Tensor]:
    """Every parameter of the modules stacked by name (``torch.func.stack_module_state``'s
    parameters, but differentiable into each module's own tensors)."""
    return stack([dict(m.named_parameters()) for m in modules])
