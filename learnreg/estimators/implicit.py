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
from learnreg.core.population import map_members, unstack
from learnreg.errors import ConfigError
from learnreg.registry import register

SOLVERS = {"cg": linear_solve.solve_cg, "normal_cg": linear_solve.solve_normal_cg}


class ProximalProblem:
    """One model's proximal inner problem, L_train(φ) + (λ/2)·‖φ − θ0‖², as pure functions
    of tuples of tensors (so they vmap over tasks and torchopt can differentiate them).

    Parameters the model holds fixed (``adapt_patterns``) are not part of φ: they pass
    through unchanged, and the implicit gradient includes how they move φ*.

    Args:
        model: the base model (used functionally).
        names: the parameter names in the order of the tuples.
        loss: the loss role.
        lam: the proximal strength λ.
    """

    def __init__(self, model: nn.Module, names: list[str], loss: LossFn, lam: float):
        frozen = frozen_names(model)
        self.model, self.loss, self.lam = model, loss, lam
        self.names = [k for k in names if k not in frozen]
        self.held = [k for k in names if k in frozen]

    def split(self, params: Params) -> tuple[tuple, tuple]:
        """``params`` as (adapted φ, held) tuples."""
        return tuple(params[k] for k in self.names), tuple(params[k] for k in self.held)

    def join(self, phi: tuple, fixed: tuple) -> Params:
        return {**dict(zip(self.names, phi)), **dict(zip(self.held, fixed))}

    def support_loss(self, phi: tuple, fixed: tuple, buffers: Params, batch: Batch) -> Tensor:
        x, y = batch
        return self.loss(functional_call(self.model, (self.join(phi, fixed), buffers), (x,)), y)

    def stationarity(self, phi, theta, fixed, buffers, batch) -> tuple:
        """∇L_train(φ) + λ(φ − θ0): zero at the proximal solution."""
        grads = torch.func.grad(self.support_loss)(phi, fixed, buffers, batch)
        return tuple(g + self.lam * (p - t) for g, p, t in zip(grads, phi, theta))

    def solve(self, member: tuple, optimizer, steps: int) -> tuple:
        """``steps`` optimizer-role steps on the proximal objective from θ0 (graph-free).

        Args:
            member: ``(theta, fixed, buffers, batch)`` of one task.

        Returns:
            φ, the stationarity residual norm there and L_train there.
        """
        theta, fixed, buffers, batch = member

        def proximal(current: Params) -> Tensor:
            phi = tuple(current[k] for k in self.names)
            distance = sum(((p - t) ** 2).sum() for p, t in zip(phi, theta))
            return self.support_loss(phi, fixed, buffers, batch) + 0.5 * self.lam * distance

        current = dict(zip(self.names, theta))
        state = optimizer.init(current)
        for _ in range(steps):
            grads = torch.func.grad(proximal)(current)
            updates, state = optimizer(grads, state, current)
            current = {k: current[k] + updates[k] for k in self.names}
        phi = tuple(current[k] for k in self.names)
        residual = self.stationarity(phi, theta, fixed, buffers, batch)
        norm = torch.sqrt(sum((r**2).sum() for r in residual))
        return phi, norm, self.support_loss(phi, fixed, buffers, batch)

    def implicit(self, phi, theta0: Params, buffers: Params, batch: Batch, solve) -> Params:
        """The parameters at the solution ``phi``, differentiable with respect to
        ``theta0`` through the implicit function theorem: torchopt's ``custom_root`` on
        the stationarity condition, its linear system solved by ``solve``."""
        theta, fixed = self.split(theta0)

        def at_solution(phi, theta, fixed, buffers, batch):  # the solver: φ is found already
            return phi

        # the held parameters move φ* too (through L_train), so they are differentiated as well
        argnums = (1, 2) if self.held else 1
        root = custom_root(self.stationarity, argnums=argnums, solve=solve)(at_solution)
        return self.join(root(phi, theta, fixed, buffers, batch), fixed)


def proximal_solutions(
    runs: list, loss: LossFn, optimizer, lam: float, steps: int, solve, vmap: bool = True
):
    """Every run's proximal solution φ* around its own θ0 (``run.state.params``), on its
    task's whole train split; differentiable with respect to θ0 by implicit
    differentiation, never through the inner steps.

    The inner steps of runs that share one buffer-free model and equal shapes run as one
    ``torch.func.vmap`` (:func:`learnreg.core.population.map_members`); each task's linear
    solve runs on its own, as the paper's per-task conjugate gradient does.

    Returns:
        A list of ``(params, residual norm, L_train)`` per run (the last two detached).
    """
    names = list(runs[0].state.params)
    problems = [ProximalProblem(run.model, names, loss, lam) for run in runs]
    members = []
    for problem, run in zip(problems, runs):
        theta, fixed = problem.split({k: v.detach() for k, v in run.state.params.items()})
        members.append((theta, fixed, run.state.buffers, (run.task.train.x, run.task.train.y)))
    shared = all(r.model is runs[0].model for r in runs) and not any(r.state.buffers for r in runs)
    if shared:
        found = map_members(
            lambda m: problems[0].solve(m, optimizer, steps), members, vectorize=vmap
        )
        found = found if isinstance(found, list) else unstack(found, len(members))
    else:
        found = [p.solve(m, optimizer, steps) for p, m in zip(problems, members)]
    out = []
    for problem, run, member, (phi, residual, value) in zip(problems, runs, members, found):
        params = problem.implicit(phi, run.state.params, member[2], member[3], solve)
        out.append(({k: params[k] for k in names}, residual.detach(), value.detach()))
    return out


@register("estimator", "implicit")
class ImplicitProximal(Estimator):
    """Implicit differentiation (iMAML's estimator): the meta-gradient of the init role by implicit differentiation of the
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
        vmap: run the meta-batch's inner steps as one ``torch.func.vmap`` when the tasks
            have equal shapes and a buffer-free model (same result, fewer kernels).
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
        vmap: bool = True,
    ):
        self.check_args(lam, steps, cg_steps, cg_tol, meta_batch, solver)
        self.vmap = vmap
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
                f"the implicit estimator needs lam > 0, steps >= 1, cg_steps >= 1, cg_tol >= 0 and meta_batch >= 1; "
                f"got {lam}, {steps}, {cg_steps}, {cg_tol}, {meta_batch}"
            )
        if solver not in SOLVERS:
            raise ConfigError(
                f"the implicit estimator's solver must be one of {', '.join(SOLVERS)}, got {solver!r}"
            )

    def estimate(self, ctx: MetaContext) -> Estimate:
        live = self._init_parameters(ctx)
        solve = SOLVERS[self.solver](maxiter=self.cg_steps, rtol=self.cg_tol, atol=0.0)
        runs = self._new_runs(ctx)
        solved = proximal_solutions(
            runs, ctx.biases.loss, ctx.biases.optimizer, self.lam, self.steps, solve, self.vmap
        )
        query = []
        for run, (params, _, _) in zip(runs, solved):
            state = replace(run.state, params=params, step=self.steps)
            query.append(ctx.objective(run.model, state, run.val.next(), run.task))
        support = [value for _, _, value in solved]
        residual = [res for _, res, _ in solved]
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
                "implicit/stationarity": float(torch.stack(residual).mean()),
            },
        )

    def _init_parameters(self, ctx: MetaContext) -> dict[str, Tensor]:
        """The init role's live meta-parameters; refuses a context this estimator cannot
        differentiate."""
        live = meta_parameters(ctx.biases)
        others = sorted(set(live) - {"init"})
        if others:
            raise ConfigError(
                f"the implicit estimator differentiates only the init role, but the {' and '.join(others)} role "
                f"has meta-parameters: φ* minimizes the proximal support loss whatever optimizer "
                f"reaches it (a learned optimizer gets no implicit gradient) and a learned loss's "
                f"implicit gradient is not implemented; make {' and '.join(others)} fixed "
                f"(learnable: false or a fixed component) or use estimator truncated_unroll"
            )
        if "init" not in live:
            raise ConfigError(
                "the implicit estimator learns the init role, which has no meta-parameters here; use a learned init role"
            )
        if not getattr(ctx.objective, "differentiable", True):
            raise ConfigError(
                "the implicit estimator needs a differentiable meta-objective (e.g. task_loss), not task_error"
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
