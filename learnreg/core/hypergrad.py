"""An exact one-step meta-gradient that never differentiates twice through the model.

For one inner step ``θ' = θ + U_ψ(g)`` with ``g = ∇_θ M_φ(f_θ(x), y)`` and a meta-objective
``ℓ(θ')``, write ``e = ∂M_φ/∂pred`` (an N×C tensor), so ``g = J_fᵀ e`` with ``J_f`` the
model's Jacobian at θ. Then with ``w = ∂ℓ/∂g`` (a reverse pass through ``U_ψ``):

    ∂ℓ/∂φ = (∂e/∂φ)ᵀ (J_f w),        ∂ℓ/∂ψ = (∂U_ψ/∂ψ)ᵀ ∂ℓ/∂θ'.

``J_f w`` is one Jacobian-vector product of the model, computed by differentiating the
(linear in ``e``) gradient ``J_fᵀ e`` with respect to ``e``; the second-order terms stay
inside the small loss network. This costs about 2.5 model passes fewer than
backpropagating through ``∇_θ M_φ`` and gives the same gradient (see the tests). It
applies when θ does not depend on the meta-parameters (a detached state: every
window-1 step of online AdaLFL and ML3), which :func:`applies` checks.

The meta-gradient is returned as values (one tensor per meta-parameter leaf asked for),
never accumulated into ``.grad``: the caller decides what to do with it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from learnreg.core.inner import Batch, InnerState, frozen_names


def applies(state: InnerState) -> bool:
    """True when the state's parameters carry no graph to the meta-parameters."""
    return not any(p.requires_grad for p in state.params.values())


def one_step(
    model,
    state: InnerState,
    batch: Batch,
    loss,
    optimizer,
    meta_objective,
    leaves: list[Tensor],
    scale: float = 1.0,
):
    """Take one inner step and return ``scale · ∂ℓ/∂leaves``.

    Args:
        model, state, batch, loss, optimizer: as in :func:`~learnreg.core.inner.inner_step`.
        meta_objective: ``ℓ(new_state) -> scalar``.
        leaves: the meta-parameters to differentiate with respect to (the roles' live
            parameters, :func:`~learnreg.core.metaparams.meta_parameters`).
        scale: multiplies the gradient (``1/meta_batch``).

    Returns:
        ``(new_state, meta_loss, base_loss, grads)``: the detached state after the step,
        the meta-loss and the base loss before the step (both detached), and one gradient
        per leaf (None where ℓ does not depend on it).
    """
    x, y = batch
    frozen = frozen_names(model)  # held fixed by the inner loop, as in inner_step
    names = [k for k in state.params if k not in frozen]
    fixed = {k: state.params[k].detach() for k in frozen}
    theta = [state.params[k].detach().requires_grad_() for k in names]
    pred = functional_call(model, ({**dict(zip(names, theta)), **fixed}, state.buffers), (x,))
    pred_leaf = pred.detach().requires_grad_()
    base_loss = loss(pred_leaf, y)
    (e,) = torch.autograd.grad(base_loss, pred_leaf, create_graph=True)
    cotangent = e.detach().requires_grad_()
    grads = torch.autograd.grad(pred, theta, cotangent, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, theta)]
    g_leaf = [g.detach().requires_grad_() for g in grads]
    base = {k: t.detach() for k, t in zip(names, theta)}
    updates, opt_state = optimizer(dict(zip(names, g_leaf)), state.opt_state, base)
    params = {k: fixed[k] if k in frozen else base[k] + updates[k] for k in state.params}
    new_state = InnerState(params, state.buffers, opt_state, state.step + 1)
    meta_loss = meta_objective(new_state)
    # ∂ℓ/∂ψ (the update's own dependence on the meta-parameters) and ∂ℓ/∂g, in one pass
    outs = torch.autograd.grad(scale * meta_loss, g_leaf + leaves, allow_unused=True)
    result = list(outs[len(g_leaf) :])
    w = [torch.zeros_like(g) if o is None else o for g, o in zip(g_leaf, outs[: len(g_leaf)])]
    (jvp,) = torch.autograd.grad(grads, cotangent, w, allow_unused=True)
    if jvp is not None and e.requires_grad:  # ∂ℓ/∂φ = (∂e/∂φ)ᵀ (J_f w)
        through_e = torch.autograd.grad(e, leaves, jvp, allow_unused=True)
        result = [a if b is None else b if a is None else a + b for a, b in zip(result, through_e)]
    return new_state.detach(), meta_loss.detach(), base_loss.detach(), result
