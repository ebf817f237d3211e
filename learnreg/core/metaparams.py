"""Meta-parameters as values: one dict of tensors per role, and the roles evaluated at any
values without copying or mutating a module.

A role (loss, optimizer, init) is an ``nn.Module`` whose parameters that require grad are
its meta-parameters. Estimators that perturb them (ES, PES), stack them (a population of
candidates, a meta-batch) or differentiate with respect to explicit leaves (implicit
differentiation) work on *values*: a :data:`MetaParams` pytree, ``{role: {name: tensor}}``.
:func:`call_at` runs any code with the roles' meta-parameters replaced by such values. It
is ``torch.func.functional_call`` underneath, so it composes with ``torch.func.vmap``
(batched values: one call evaluates a whole population) and with autograd (gradients flow
into the values).

References:
    torch.func.functional_call / stack_module_state (the functional view of modules).
    Metz et al., learned_optimization: meta-parameters are values, estimators return
    gradients for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

#: ``{role: {parameter name inside the role: tensor}}``
MetaParams = dict[str, dict[str, Tensor]]


def meta_parameters(biases: nn.Module) -> MetaParams:
    """The live meta-parameters of every role, by role (roles with none are left out).

    Args:
        biases: a :class:`~learnreg.core.bias.Biases` (anything with ``roles()``).

    Returns:
        The ``nn.Parameter`` objects themselves (not copies), named as in
        ``role.named_parameters()``.
    """
    out: MetaParams = {}
    for role, module in biases.roles().items():
        learned = {n: p for n, p in module.named_parameters() if p.requires_grad}
        if learned:
            out[role] = learned
    return out


def values_of(biases: nn.Module) -> MetaParams:
    """A snapshot of the meta-parameters: detached clones, same structure."""
    return {
        role: {n: p.detach().clone() for n, p in params.items()}
        for role, params in meta_parameters(biases).items()
    }


class _Scope(nn.Module):
    """Holds the roles as submodules so one ``functional_call`` can swap all of them."""

    def __init__(self, roles: dict[str, nn.Module]):
        super().__init__()
        for role, module in roles.items():
            self.add_module(role, module)

    def forward(self, fn: Callable, args: tuple, kwargs: dict):
        return fn(*args, **kwargs)


def call_at(biases: nn.Module, values: MetaParams, fn: Callable, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` with the roles' meta-parameters replaced by ``values``.

    Inside ``fn`` every role (``biases.loss``, ``biases.optimizer``, ``biases.init``) reads
    the given tensors instead of its own parameters; roles or names that ``values`` leaves
    out keep their live parameters. Nothing is copied and the modules are unchanged
    afterwards. Under ``torch.func.vmap`` with batched ``values`` this evaluates a whole
    population; under autograd, gradients flow into ``values``.

    Args:
        biases: the :class:`~learnreg.core.bias.Biases` whose roles ``fn`` uses.
        values: ``{role: {name: tensor}}`` (see :func:`meta_parameters` for the names).
        fn: what to run (an inner step, a window of an unroll, a fitness run).

    Returns:
        Whatever ``fn`` returns.
    """
    roles = biases.roles()
    unknown = set(values) - set(roles)
    if unknown:
        raise KeyError(f"no role named {sorted(unknown)}; roles are {sorted(roles)}")
    flat = {f"{role}.{name}": v for role, named in values.items() for name, v in named.items()}
    return functional_call(_Scope(roles), flat, (fn, args, kwargs), strict=False)


def flatten(values: MetaParams) -> Tensor:
    """All values as one 1-D vector: roles in order, then names in order."""
    parts = [t.reshape(-1) for named in values.values() for t in named.values()]
    return torch.cat(parts) if parts else torch.zeros(0)


def unflatten(vector: Tensor, like: MetaParams) -> MetaParams:
    """The inverse of :func:`flatten`: ``vector`` cut into ``like``'s shapes (its dtype and
    device are kept)."""
    needed = sum(t.numel() for named in like.values() for t in named.values())
    if needed != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the structure needs {needed}")
    out: MetaParams = {}
    offset = 0
    for role, named in like.items():
        out[role] = {}
        for name, t in named.items():
            n = t.numel()
            out[role][name] = vector[offset : offset + n].reshape(t.shape)
            offset += n
    return out
