"""SAM (and ASAM), GSAM and GAM as ``torch.optim`` wrappers around any base optimizer.

Each names its phases the way its paper's algorithm does: SAM and GSAM take
``first_step()`` (perturb) and ``second_step()`` (restore and descend); GAM takes
``first_step()``, ``second_step()``, ``third_step()`` and ``fourth_step()``. All accept
``step(closure)``, which makes *every* pass itself, the first included: the closure
computes the loss and calls ``backward()``, and ``step`` calls it once per pass. Code
ported from davda54/sam, whose ``step(closure)`` expects the first ``backward()`` to
have been made before it, passes ``first_pass_done=True`` to SAM's and GSAM's ``step``
(otherwise it pays for one pass more than it needs). See :class:`~learnreg.optim.perturbed.PerturbedOptimizer` for the
mechanics and :mod:`learnreg.optim.perturbations` for the equations.
"""

from __future__ import annotations

import torch
from torch import nn

from learnreg.optim.batchnorm import frozen_bn_stats
from learnreg.optim.perturbations import GAMPerturbation, GSAMPerturbation, SAMPerturbation
from learnreg.optim.perturbed import PerturbedOptimizer


class _TwoPass(PerturbedOptimizer):
    def step(self, closure=None, *, first_pass_done: bool = False):
        """One full step.

        Args:
            closure: re-evaluates the loss and calls ``backward()`` (None: finish a step
                the phase API started).
            first_pass_done: davda54/sam's convention: the gradients at the unperturbed
                parameters are already in ``.grad`` (``loss.backward()`` came before
                ``step``), so the closure is called once, at the perturbed parameters.
                False (the default): ``step`` calls the closure for both passes.

        Returns:
            The closure's loss at the unperturbed parameters; None when
            ``first_pass_done`` (that loss was the caller's own) or without a closure.
        """
        if closure is None or not first_pass_done:
            return super().step(closure)
        self.first_step(zero_grad=True)
        with frozen_bn_stats(self.model), torch.enable_grad():
            closure()
        self.second_step()
        return None

    def first_step(self, zero_grad: bool = False) -> None:
        """Perturb the parameters from the gradients of the first pass."""
        self.ascend(zero_grad)

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore the parameters and step the base optimizer with the method's direction."""
        self.step()
        if zero_grad:
            self.zero_grad()


class SAM(_TwoPass):
    """Sharpness-Aware Minimization (Foret et al., arXiv 2010.01412) and ASAM.

    ``ε = ρ · g / ‖g‖`` (ASAM: ``ε = ρ · w² ⊙ g / ‖|w| ⊙ g‖``), then the base optimizer
    steps from ``w`` with ``∇L(w + ε)``. Two forward/backward passes per step.

    Args:
        params: parameters or parameter groups (None when ``base_optimizer`` is built).
        base_optimizer: a ``torch.optim.Optimizer`` class (built with ``**base_kwargs``)
            or instance.
        rho: neighbourhood radius (0.05; ASAM's paper uses 2.0 with ``adaptive=True``).
        adaptive: ASAM's scale-invariant neighbourhood (Kwon et al., arXiv 2102.11600).
        eps: added to norms before dividing.
        model: lets ``step(closure)`` keep BatchNorm statistics still in the second pass.
        **base_kwargs: the base optimizer's arguments (``lr``...).

    ``step(closure)`` calls the closure for both passes (it computes the loss *and*
    ``backward()``); with ``first_pass_done=True`` it follows davda54/sam instead, where
    ``loss.backward()`` at the unperturbed weights comes before ``step`` and the closure
    is only the second pass.

    Example::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        def closure():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.zero_grad()
        opt.step(closure)  # two passes, both made by step

        # davda54/sam's convention: the first pass is yours, the closure the second.
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step(closure, first_pass_done=True)
    """

    perturbation = SAMPerturbation()
    nonnegative = ("rho", "eps")

    def __init__(
        self,
        params,
        base_optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eps: float = 1e-12,
        model: nn.Module | None = None,
        **base_kwargs,
    ):
        defaults = {"rho": rho, "adaptive": adaptive, "eps": eps}
        super().__init__(params, base_optimizer, defaults, model, **base_kwargs)


class GSAM(_TwoPass):
    """Surrogate Gap Guided SAM (Zhuang et al., arXiv 2203.08065).

    The radius follows the base learning rate,
    ``ρ_t = ρ_min + (ρ_max − ρ_min) · (lr − lr_min) / (lr_max − lr_min)``; with
    ``g_p = ∇L(w + ρ_t g/‖g‖)`` and ``g_⊥`` the part of ``g`` orthogonal to ``g_p``, the
    base optimizer steps with ``g_p − α · g_⊥``. SAM is ``ρ_max = ρ_min, α = 0``.

    Args:
        params, base_optimizer, adaptive, eps, model, **base_kwargs: as in :class:`SAM`.
        rho_max, rho_min: the radius at the largest and smallest learning rate.
        alpha: weight of the surrogate-gap term.
        lr_max: learning rate where ``ρ_t = ρ_max``; default: each group's learning rate
            when the wrapper is built (``initial_lr`` once a scheduler set it).
        lr_min: learning rate where ``ρ_t = ρ_min``.
    """

    perturbation = GSAMPerturbation()
    nonnegative = ("rho_max", "rho_min", "alpha", "eps")

    def __init__(
        self,
        params,
        base_optimizer,
        rho_max: float = 0.05,
        rho_min: float = 0.05,
        alpha: float = 0.0,
        adaptive: bool = False,
        eps: float = 1e-12,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        model: nn.Module | None = None,
        **base_kwargs,
    ):
        defaults = {
            "rho_max": rho_max,
            "rho_min": rho_min,
            "alpha": alpha,
            "adaptive": adaptive,
            "eps": eps,
            "lr_max": lr_max,
            "lr_min": lr_min,
        }
        super().__init__(params, base_optimizer, defaults, model, **base_kwargs)

    def init_group(self, group):
        if self.option(group, "lr_max") is None:  # the group's learning rate when it joined
            group[self.option_keys["lr_max"]] = group.get("initial_lr", group["lr"])

    def group_hyperparameters(self, group):
        lr = float(group["lr"])
        lr_max, lr_min = float(self.option(group, "lr_max")), float(self.option(group, "lr_min"))
        rho_max, rho_min = self.option(group, "rho_max"), self.option(group, "rho_min")
        if lr_max == lr_min:
            rho_t = rho_max
        else:
            rho_t = rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)
        return {
            "rho_t": rho_t,
            "alpha": self.option(group, "alpha"),
            "adaptive": self.option(group, "adaptive"),
            "eps": self.option(group, "eps"),
        }


class GAM(PerturbedOptimizer):
    """Gradient norm Aware Minimization (Zhang et al., arXiv 2303.03108), Algorithm 2.

    Four passes per step (see :class:`~learnreg.optim.perturbations.GAMPerturbation` for
    the equations). Follows the paper's ``h₋ = β g0 + (1 − β) g2``; the public code's
    ``g0 + β g2`` is not reproduced.

    Args:
        params, base_optimizer, eps, model, **base_kwargs: as in :class:`SAM`.
        rho: radius of the gradient-norm ascent (0.2 on CIFAR).
        rho_prime: radius of the loss ascent (0.03).
        alpha: weight of ``g1`` against ``g3`` in ``h₊`` (0.1).
        beta: weight of ``g0`` against ``g2`` in ``h₋`` (0.1).
        gamma: how much of ``h₋``'s part orthogonal to ``h₊`` is removed (0.05).
    """

    perturbation = GAMPerturbation()
    nonnegative = ("rho", "rho_prime", "gamma", "eps")

    def __init__(
        self,
        params,
        base_optimizer,
        rho: float = 0.2,
        rho_prime: float = 0.03,
        alpha: float = 0.1,
        beta: float = 0.1,
        gamma: float = 0.05,
        eps: float = 1e-12,
        model: nn.Module | None = None,
        **base_kwargs,
    ):
        defaults = {
            "rho": rho,
            "rho_prime": rho_prime,
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "eps": eps,
        }
        super().__init__(params, base_optimizer, defaults, model, **base_kwargs)

    def first_step(self, zero_grad: bool = False) -> None:
        """From ``g0 = ∇L(θ)``: move to ``θ + ρ′ g0/‖g0‖``."""
        self.ascend(zero_grad)

    def second_step(self, zero_grad: bool = False) -> None:
        """From ``g1``: move to ``θ2 = θ + ρ h0/‖h0‖``, ``h0 = g1 − g0``."""
        self.ascend(zero_grad)

    def third_step(self, zero_grad: bool = False) -> None:
        """From ``g2 = ∇L(θ2)``: move to ``θ2 + ρ′ g2/‖g2‖``."""
        self.ascend(zero_grad)

    def fourth_step(self, zero_grad: bool = False) -> None:
        """From ``g3``: restore ``θ`` and step the base optimizer along GAM's direction."""
        self.step()
        if zero_grad:
            self.zero_grad()
