"""Implicit differentiation of a proximal inner problem (iMAML).

Per task the inner problem is the proximal one around the init role's parameters θ0,

    φ*(θ0) = argmin_φ  L_train(φ) + (λ/2)·‖φ − θ0‖²,

solved approximately by ``steps`` steps of the inner optimizer role from θ0. At φ* the
stationarity condition ∇L_train(φ) + λ(φ − θ0) = 0 holds, so by the implicit function
theorem dφ*/dθ0 = (I + H/λ)⁻¹ with H = ∇²L_train(φ*), and the meta-gradient is

    dL_val(φ*)/dθ0 = (I + H/λ)⁻¹ ∇L_val(φ*),

one conjugate-gradient solve on Hessian-vector products instead of a backpropagation
through the inner steps: memory does not grow with ``steps``. torchopt's
``diff.implicit.custom_root`` turns the stationarity condition into that backward pass
and ``linear_solve.solve_cg`` solves it.

References:
    Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit Gradients"
    (NeurIPS 2019, arXiv 1909.04630), eqs. 3-7 and Algorithm 2.
    Blondel et al., "Efficient and Modular Implicit Differentiation" (arXiv 2105.15183):
    the ``custom_root`` construction torchopt follows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torchopt import linear_solve
from torchopt.diff.implicit import custom_root

from learnreg.core import distributed
from learnreg.core.estimator import Estimate, Estimator, MetaContext
from learnreg.core.inner import Batch, LossFn, Params, frozen_names
from learnreg.core.metaparams import meta_parameters
from learnreg.errors import ConfigError
from learnreg.registry import register

SOLVERS = {"cg": linear_solve.solve_cg, "normal_cg": linear_solve.solve_normal_cg}


def proximal_solution(
    model: nn.Module,
    theta0: Params,
    buffers: Params,
    batch: Batch,
    loss: LossFn,
    optimizer,
    lam: float,
    steps: int,
    solve: Callable,
) -> tuple[Params, Tensor, Tensor]:
    """The proximal inner solution φ* around ``theta0``, differentiable with respect to
    ``theta0`` by implicit differentiation (not through the inner steps).

    Parameters the model holds fixed (``adapt_patterns``) are not part of φ: they pass
    through unchanged, and the implicit gradient includes how they move φ*.

    Args:
        model: the base model (used functionally).
        theta0: the starting parameters by name (the init role's output, on its graph).
        buffers: the model's buffers.
        batch: the support set ``(inputs, targets)`` that ``L_train`` is the loss on.
        loss: the loss role.
        optimizer: the inner optimizer role; it minimizes the proximal objective.
        lam: the proximal strength λ.
        steps: inner steps of the optimizer.
        solve: a torchopt linear solver, ``solve(matvec, b) -> x``.

    Returns:
        The parameters at φ* by name, the norm of the stationarity residual
        ‖∇L_train(φ) + λ(φ − θ0)‖ at the returned φ (zero at an exact solution) and
        ``L_train`` there, both detached.
    """
    frozen = frozen_names(model)
    names = [k for k in theta0 if k not in frozen]
    held = [k for k in theta0 if k in frozen]
    x, y = batch

    def support_loss(phi: tuple, fixed: tuple) -> Tensor:
        params = {**dict(zip(names, phi)), **dict(zip(held, fixed))}
        return loss(functional_call(model, (params, buffers), (x,)), y)

    def stationarity(phi: tuple, theta: tuple, fixed: tuple) -> tuple:
        grads = torch.func.grad(support_loss)(phi, fixed)
        return tuple(g + lam * (p - t) for g, p, t in zip(grads, phi, theta))

    def solver(phi: tuple, theta: tuple, fixed: tuple):
        def proximal(current: Params) -> Tensor:
            distance = sum(((current[k] - t) ** 2).sum() for k, t in zip(names, theta))
            return support_loss(tuple(current[k] for k in names), fixed) + 0.5 * lam * distance

        current = dict(zip(names, phi))
        state = optimizer.init(current)
        for _ in range(steps):
            grads = torch.func.grad(proximal)(current)
            updates, state = optimizer(grads, state, current)
            current = {k: current[k] + updates[k] for k in names}
        phi = tuple(current[k] for k in names)
        residual = torch.sqrt(sum((r**2).sum() for r in stationarity(phi, theta, fixed)))
        return phi, (residual.detach(), support_loss(phi, fixed).detach())

    # the held parameters move φ* too (through L_train), so they are differentiated as well
    argnums = (1, 2) if held else 1
    implicit = custom_root(stationarity, argnums=argnums, has_aux=True, solve=solve)(solver)
    start = tuple(theta0[k].detach() for k in names)
    phi, (residual, value) = implicit(
        start, tuple(theta0[k] for k in names), tuple(theta0[k] for k in held)
    )
    params = {**dict(zip(names, phi)), **{k: theta0[k] for k in held}}
    return {k: params[k] for k in theta0}, residual, value


@register("estimator", "imaml")
class ImplicitMAML(Estimator):
    """iMAML: the meta-gradient of the init role by implicit differentiation of the
    proximal inner problem (module docstring), averaged over ``meta_batch`` fresh tasks
    per meta-step.

    ``L_train`` is the loss role on each task's whole train split (a few-shot episode's
    support set) and ``L_val`` the meta-objective on its validation batch (the query
    set). Meta-testing runs the optimizer role without the proximal term, as the
    paper's evaluation (and its code, ``lam = 0`` at test) does.

    Only the init role may learn: φ* minimizes the proximal support loss whatever
    optimizer reaches it, so a learned optimizer has no implicit gradient, and a learned
    loss's implicit gradient is not implemented here (use ``truncated_unroll``).

    Args:
        lam: the proximal strength λ (the paper: 2.0 on Omniglot). Larger λ keeps φ*
            closer to θ0 and the linear system better conditioned.
        steps: inner steps of the optimizer role on the proximal objective (16 in the
            paper's 5-way Omniglot runs); the implicit gradient assumes they reach φ*.
        cg_steps: conjugate-gradient iterations of the linear solve (5 in the paper).
        cg_tol: CG stops earlier when ‖residual‖ ≤ cg_tol·‖∇L_val‖.
        meta_batch: tasks per meta-step, over all processes.
        solver: ``cg`` (the paper's; needs H + λI positive definite, true when λ
            exceeds the most negative Hessian eigenvalue) or ``normal_cg`` (CG on the
            normal equations: any invertible system, squared condition number).
    """

    needs_outer = True
    online = False

    def __init__(
        self,
        lam: float = 2.0,
        steps: int = 16,
        cg_steps: int = 5,
        cg_tol: float = 1e-10,
        meta_batch: int = 1,
        solver: Literal["cg", "normal_cg"] = "cg",
    ):
        self.check_args(lam, steps, cg_steps, cg_tol, meta_batch, solver)
        self.lam, self.steps, self.meta_batch = float(lam), steps, meta_batch
        self.cg_steps, self.cg_tol, self.solver = cg_steps, float(cg_tol), solver
        self.next_index = 0

    @staticmethod
    def check_args(
        lam: float = 2.0,
        steps: int = 16,
        cg_steps: int = 5,
        cg_tol: float = 1e-10,
        meta_batch: int = 1,
        solver: str = "cg",
        **_,
    ) -> None:
        """Refuse settings with no proximal problem or no solve (also run when a config is
        loaded)."""
        if not lam > 0 or steps < 1 or cg_steps < 1 or not cg_tol >= 0 or meta_batch < 1:
            raise ConfigError(
                f"imaml needs lam > 0, steps >= 1, cg_steps >= 1, cg_tol >= 0 and meta_batch >= 1; "
                f"got {lam}, {steps}, {cg_steps}, {cg_tol}, {meta_batch}"
            )
        if solver not in SOLVERS:
            raise ConfigError(f"imaml solver must be one of {', '.join(SOLVERS)}, got {solver!r}")

    def estimate(self, ctx: MetaContext) -> Estimate:
        live = self._init_parameters(ctx)
        solve = SOLVERS[self.solver](maxiter=self.cg_steps, rtol=self.cg_tol, atol=0.0)
        query, support, residual = [], [], []
        for run in self._new_runs(ctx):
            params, res, value = proximal_solution(
                run.model,
                run.state.params,
                run.state.buffers,
                (run.task.train.x, run.task.train.y),
                ctx.biases.loss,
                ctx.biases.optimizer,
                self.lam,
                self.steps,
                solve,
            )
            state = replace(run.state, params=params, step=self.steps)
            query.append(ctx.objective(run.model, state, run.val.next(), run.task))
            support.append(value)
            residual.append(res)
        meta_loss = torch.stack(query).mean()
        with warnings.catch_warnings():
            # torchopt 0.7.3 still calls functorch.vjp (same function as torch.func.vjp)
            warnings.filterwarnings("ignore", message=".*functorch.vjp", category=FutureWarning)
            grads = torch.autograd.grad(meta_loss, list(live.values()), allow_unused=True)
        return Estimate(
            grads={
                "init": {
                    k: g if g is not None else torch.zeros_like(p)
                    for (k, p), g in zip(live.items(), grads)
                }
            },
            metrics={
                "meta_loss": float(meta_loss.detach()),
                "inner_loss": float(torch.stack(support).mean()),
                "imaml/stationarity": float(torch.stack(residual).mean()),
            },
        )

    def _init_parameters(self, ctx: MetaContext) -> dict[str, Tensor]:
        """The init role's live meta-parameters; refuses a context this estimator cannot
        differentiate."""
        live = meta_parameters(ctx.biases)
        others = sorted(set(live) - {"init"})
        if others:
            raise ConfigError(
                f"imaml differentiates only the init role, but the {' and '.join(others)} role "
                f"has meta-parameters: φ* minimizes the proximal support loss whatever optimizer "
                f"reaches it (a learned optimizer gets no implicit gradient) and a learned loss's "
                f"implicit gradient is not implemented; make {' and '.join(others)} fixed "
                f"(learnable: false or a fixed component) or use estimator truncated_unroll"
            )
        if "init" not in live:
            raise ConfigError(
                "imaml learns the init role, which has no meta-parameters here; use init: maml"
            )
        if not getattr(ctx.objective, "differentiable", True):
            raise ConfigError(
                "imaml needs a differentiable meta-objective (e.g. task_loss), not task_error"
            )
        return live["init"]

    def _new_runs(self, ctx: MetaContext) -> list:
        """This rank's share of one block of ``meta_batch`` fresh tasks."""
        share = distributed.shard(self.meta_batch)
        rank, world = distributed.rank_and_world()
        first = self.next_index + rank * share
        self.next_index += share * world
        return [ctx.new_run("meta_train", first + j) for j in range(share)]

    def state_dict(self) -> dict:
        return {"next_index": self.next_index}

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        self.next_index = int(state["next_index"])
