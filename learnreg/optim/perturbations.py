"""The equations of SAM, ASAM, GSAM and GAM, written once, on lists of tensors.

Both users of these equations call the same code:

* the ``torch.optim`` wrappers (:mod:`learnreg.optim.sam`) apply them to ``p.grad``;
* the teacher meta-objectives (:mod:`learnreg.optim.teachers`) apply them to gradients
  from ``torch.func``.

A method is a :class:`Perturbation`: a fixed number of gradient evaluations (``passes``)
at points it chooses. After pass ``k`` (``k < passes - 1``), :meth:`Perturbation.ascend`
reads that pass's gradient and says where the next one is taken; after the last pass,
:meth:`Perturbation.direction` returns the update direction the base optimizer descends.
Anything a method must remember between passes goes into a ``memory`` dict of tensor
lists. Hyperparameters are floats, or one float per tensor (per-parameter-group values of
the wrappers).

References:
    Foret et al., "Sharpness-Aware Minimization", arXiv 2010.01412.
    Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization", arXiv 2102.11600.
    Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", arXiv 2203.08065.
    Zhang et al., "Gradient Norm Aware Minimization Seeks First-Order Flatness",
    arXiv 2303.03108.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Tensors = list[Tensor]
Scalar = float | Sequence[float]  # one value, or one value per tensor
Memory = dict[str, Tensors]


def global_norm(tensors: Tensors) -> Tensor:
    """‖v‖ of the concatenation of ``tensors`` (a 0-dim float32-or-wider tensor)."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)))


def dot(a: Tensors, b: Tensors) -> Tensor:
    """⟨a, b⟩ of the concatenations of ``a`` and ``b``."""
    dtype = torch.promote_types(a[0].dtype, torch.float32)
    return torch.stack([torch.sum(x * y, dtype=dtype) for x, y in zip(a, b)]).sum()


def scale(tensors: Tensors, factor: Scalar | Tensor) -> Tensors:
    """``factor · v`` for a number, a 0-dim tensor, or one number per tensor."""
    if isinstance(factor, Tensor):
        factor = factor.to(tensors[0].dtype)
    elif not isinstance(factor, (int, float)):
        factor = list(factor)
    return list(torch._foreach_mul(tensors, factor))


def combine(a: Tensors, b: Tensors, weight: Scalar) -> Tensors:
    """``w · a + (1 − w) · b`` elementwise, ``w`` a number or one number per tensor."""
    if isinstance(weight, (int, float)):
        return list(torch._foreach_add(scale(a, weight), b, alpha=1.0 - weight))
    return list(torch._foreach_add(scale(a, weight), scale(b, [1.0 - w for w in weight])))


def normalized(tensors: Tensors, radius: Scalar, eps: float = 1e-12) -> Tensors:
    """``radius · v / (‖v‖ + eps)``: a step of length ``radius`` along ``v``."""
    return scale(scale(tensors, 1.0 / (global_norm(tensors) + eps)), radius)


def sam_ascent(
    grads: Tensors,
    rho: Scalar,
    params: Tensors | None = None,
    adaptive: bool = False,
    eps: float = 1e-12,
) -> Tensors:
    """SAM's worst-case perturbation ε of radius ρ.

    SAM: ``ε = ρ · g / ‖g‖``. ASAM (``adaptive=True``): ``ε = ρ · w² ⊙ g / ‖|w| ⊙ g‖``
    (Kwon et al., with the normalization operator ``T_w = |w|``).
    """
    if not adaptive:
        return normalized(grads, rho, eps)
    if params is None:
        raise ValueError("adaptive SAM (ASAM) needs the parameters")
    magnitude = torch._foreach_abs(params)
    scaled = list(torch._foreach_mul(magnitude, grads))  # |w| ⊙ g
    direction = list(torch._foreach_mul(magnitude, scaled))  # w² ⊙ g
    return scale(scale(direction, 1.0 / (global_norm(scaled) + eps)), rho)


def orthogonal_part(v: Tensors, ref: Tensors, eps: float = 1e-12) -> Tensors:
    """The component of ``v`` orthogonal to ``ref``: ``v − (⟨v, ref⟩ / ‖ref‖²) · ref``."""
    coef = dot(v, ref) / (dot(ref, ref) + eps)
    return list(torch._foreach_sub(v, scale(ref, coef)))


def minus_orthogonal(v: Tensors, other: Tensors, ref: Tensors, weight: Scalar) -> Tensors:
    """``v − weight · (part of other orthogonal to ref)``."""
    return list(torch._foreach_sub(v, scale(orthogonal_part(other, ref), weight)))


@dataclass
class Move:
    """Where the next gradient is taken: ``origin + offset`` when ``from_origin``, else
    ``current point + offset``."""

    offset: Tensors
    from_origin: bool = True


class Perturbation:
    """One method's sequence of gradient evaluations (see the module docstring)."""

    #: forward/backward passes per step.
    passes: int = 2
    #: names of hyperparameters the equations read.
    hyperparameters: tuple[str, ...] = ()
    #: names of ``memory`` entries that must be copies (the wrappers reuse ``p.grad``).
    remembers: tuple[str, ...] = ()

    def ascend(self, phase: int, grads: Tensors, origin: Tensors, memory: Memory, hp) -> Move:
        raise NotImplementedError

    def direction(self, grads: Tensors, memory: Memory, hp) -> Tensors:
        raise NotImplementedError

    def loss(self, losses: list[Tensor], hp) -> Tensor:
        """The regularized loss: the scalar whose gradient (perturbations held fixed) is
        the ascent part of :meth:`direction`. ``losses[k]`` is the loss of pass ``k``."""
        raise NotImplementedError


class SAMPerturbation(Perturbation):
    """SAM / ASAM: ``g_p = ∇L(w + ε)``, ``ε`` from :func:`sam_ascent`; descend ``g_p``.

    Hyperparameters: ``rho``, ``adaptive``, ``eps``.
    """

    passes = 2
    hyperparameters = ("rho", "adaptive", "eps")

    def ascend(self, phase, grads, origin, memory, hp):
        return Move(sam_ascent(grads, hp["rho"], origin, hp["adaptive"], hp["eps"]))

    def direction(self, grads, memory, hp):
        return grads

    def loss(self, losses, hp):
        return losses[1]


class GSAMPerturbation(Perturbation):
    """GSAM: perturb like SAM with radius ``rho_t``; with ``g_p = ∇L(w + ε)`` and
    ``g_⊥`` the part of ``g = ∇L(w)`` orthogonal to ``g_p``, descend ``g_p − α · g_⊥``.

    SAM is the special case ``α = 0``. Hyperparameters: ``rho_t``, ``alpha``,
    ``adaptive``, ``eps``.
    """

    passes = 2
    hyperparameters = ("rho_t", "alpha", "adaptive", "eps")
    remembers = ("grad",)

    def ascend(self, phase, grads, origin, memory, hp):
        memory["grad"] = grads
        return Move(sam_ascent(grads, hp["rho_t"], origin, hp["adaptive"], hp["eps"]))

    def direction(self, grads, memory, hp):
        return minus_orthogonal(grads, memory["grad"], grads, hp["alpha"])

    def loss(self, losses, hp):
        return losses[1]


class GAMPerturbation(Perturbation):
    """GAM, first-order-flatness variant (Zhang et al., Algorithm 2)::

        g0 = ∇L(θ)
        g1 = ∇L(θ + ρ′ g0/‖g0‖)               h0 = g1 − g0
        g2 = ∇L(θ2),  θ2 = θ + ρ h0/‖h0‖
        g3 = ∇L(θ2 + ρ′ g2/‖g2‖)
        h₊ = α g1 + (1 − α) g3                 h₋ = β g0 + (1 − β) g2
        descend h₊ − γ · (part of h₋ orthogonal to h₊)

    This follows the paper: ``h₋`` weighs ``g0`` by ``β``. The authors' public code
    uses coefficient 1 on ``g0`` (``h₋ = g0 + β g2``); that contradicts the algorithm
    as published and is not reproduced. Hyperparameters: ``rho``, ``rho_prime``,
    ``alpha``, ``beta``, ``gamma``, ``eps``.
    """

    passes = 4
    hyperparameters = ("rho", "rho_prime", "alpha", "beta", "gamma", "eps")
    remembers = ("g0", "g1")

    def ascend(self, phase, grads, origin, memory, hp):
        if phase == 0:
            memory["g0"] = grads
            return Move(normalized(grads, hp["rho_prime"], hp["eps"]))
        if phase == 1:
            memory["g1"] = grads
            h0 = list(torch._foreach_sub(grads, memory["g0"]))
            return Move(normalized(h0, hp["rho"], hp["eps"]))
        # phase 2: h₋ replaces g0 (one buffer instead of two), then climb from θ2
        memory["h_minus"] = combine(memory.pop("g0"), grads, hp["beta"])
        return Move(normalized(grads, hp["rho_prime"], hp["eps"]), from_origin=False)

    def direction(self, grads, memory, hp):
        h_plus = combine(memory["g1"], grads, hp["alpha"])
        return minus_orthogonal(h_plus, memory["h_minus"], h_plus, hp["gamma"])

    def loss(self, losses, hp):
        alpha = hp["alpha"] if isinstance(hp["alpha"], (int, float)) else hp["alpha"][0]
        return alpha * losses[1] + (1.0 - alpha) * losses[3]
