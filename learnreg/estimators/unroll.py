"""Truncated backpropagation through the inner loop.

References:
    Bechtle et al., "Meta Learning via Learned Loss" (offline, window 1, reset each step).
    Raymond et al., "Meta-Learning Adaptive Loss Functions" (online, window 1, no reset).
    Andrychowicz et al., "Learning to learn by gradient descent by gradient descent"
    (window T inside a horizon N); Metz et al., 2019, on truncation bias.
    Finn et al., "Model-Agnostic Meta-Learning" (arXiv 1703.03400): the episodic regime,
    ``window = horizon = K`` with every run starting from the init role's parameters.
"""

from __future__ import annotations

from typing import Literal

import torch

from learnreg.core import distributed, hypergrad
from learnreg.core.estimator import Estimate, Estimator, MetaContext
from learnreg.core.inner import inner_step
from learnreg.core.inner_run import InnerRun
from learnreg.core.metaparams import meta_parameters
from learnreg.errors import ConfigError
from learnreg.estimators import batched
from learnreg.estimators.batch_start import stackable
from learnreg.registry import register


def _add(total, grad):
    """A running sum of per-run gradients where None means "no gradient yet"."""
    if grad is None:
        return total
    return grad if total is None else total + grad


@register("estimator", "truncated_unroll")
class TruncatedUnroll(Estimator):
    """Keep inner runs alive; every meta-step, unroll ``window`` differentiable inner steps,
    differentiate the meta-objective with respect to the meta-parameters, detach and go on.
    The trainer applies the returned gradient (:class:`~learnreg.core.estimator.Estimate`).

    With ``window = horizon = K`` every meta-step starts fresh runs (few-shot episodes)
    whose parameters come from the init role, so the meta-gradient reaches a learned
    initialization (MAML); with a persistent run it cannot, since the init was used
    outside the window.

    Under ``torchrun`` the meta-batch is split across processes: rank ``r`` of ``W``
    unrolls runs ``r·B/W … (r+1)·B/W − 1`` of each meta-step's block of ``B`` new runs,
    and the outer optimizer averages the meta-gradients over ranks.

    Args:
        window: inner steps per meta-step (the truncation length).
        horizon: inner steps after which a run is replaced by a fresh one (None: never,
            the online regime). ML3 is ``window=1, horizon=1``; online AdaLFL
            ``window=1, horizon=None``; learned optimizers ``window=T, horizon=N``;
            MAML and NPBML ``window=horizon=K``.
        meta_batch: inner runs (tasks) averaged per meta-step, over all processes.
        objective_batch: ``val`` (a held-out validation batch) or ``train`` (the last
            inner training batch, as ML3's and AdaLFL's reference code do).
        average: average the objective over every step of the window (the L2L
            convention) instead of taking it at the end only.
        fast_path: use the exact one-step meta-gradient of :mod:`learnreg.core.hypergrad`
            when it applies (window 1, objective at the end); False forces the generic
            double backward (same result, slower).
        vmap: unroll the meta-batch as one vectorized run (:mod:`.batched`) when the
            runs have equal shapes (same meta-gradient, fewer and larger kernels).
        first_order: treat the inner gradients as constants (first-order MAML, Finn et
            al. 2017 §5.2): the meta-gradient is the objective's gradient at the adapted
            parameters, reaching the init role through the identity and the optimizer
            role through its update; a learned loss gets none (its only path is the
            second-order one).
    """

    online = True  # attach(run) adapts along one meta-test run

    def __init__(
        self,
        window: int = 1,
        horizon: int | None = 1,
        meta_batch: int = 1,
        objective_batch: Literal["val", "train"] = "val",
        average: bool = False,
        fast_path: bool = True,
        vmap: bool = False,
        first_order: bool = False,
    ):
        self.check_args(window, horizon, meta_batch)
        self.window, self.horizon, self.meta_batch = window, horizon, meta_batch
        self.objective_batch, self.average, self.fast_path = objective_batch, average, fast_path
        self.vmap, self.first_order = vmap, first_order
        self.attached = False
        self.runs: list[InnerRun] = []
        self.next_index = 0

    @staticmethod
    def check_args(window: int = 1, horizon: int | None = 1, meta_batch: int = 1, **_) -> None:
        """Refuse windows and horizons that do not fit together (also run when a config is
        loaded). A run is replaced after whole windows only, so a horizon that is not a
        multiple of the window would silently be cut to its last whole window."""
        if window < 1 or (horizon is not None and horizon < window) or meta_batch < 1:
            raise ConfigError(
                f"need window >= 1, horizon >= window (or None), meta_batch >= 1; got {window}, {horizon}, {meta_batch}"
            )
        if horizon is not None and horizon % window:
            raise ConfigError(
                f"estimator horizon {horizon} is not a multiple of window {window}: inner runs "
                f"advance by whole windows, so it would be cut to {horizon // window * window}. Use horizon {horizon // window * window} or "
                f"{-(-horizon // window) * window}, or a window that divides {horizon}."
            )

    def estimate(self, ctx: MetaContext) -> Estimate:
        """Unroll every run of the meta-batch by one window and return the mean
        meta-gradient (as values: nothing is written to ``.grad``)."""
        self._refresh_runs(ctx)
        roles = meta_parameters(ctx.biases)
        keys = [(role, name) for role, named in roles.items() for name in named]
        leaves = [roles[role][name] for role, name in keys]
        scale = 1.0 / len(self.runs)
        if self.vmap and len(self.runs) > 1 and stackable(self.runs):
            total, losses, base = batched.unroll_batched(
                self.runs,
                ctx.biases.init,
                ctx.biases.loss,
                ctx.biases.optimizer,
                ctx.objective,
                self.window,
                self.objective_batch,
                self.average,
                leaves,
                scale,
                self.first_order,
                keep_states=self._continue(self.runs[0].step),
            )
        else:
            total, losses, base = [None] * len(leaves), [], []
            for run in self.runs:
                grads, meta_loss, base_loss = self.unroll_grads(ctx, run, leaves, scale)
                total = [_add(t, g) for t, g in zip(total, grads)]
                losses.append(meta_loss)
                base.append(base_loss)
        grads: dict = {}
        for (role, name), grad in zip(keys, total):
            if grad is not None:  # a leaf no run depends on keeps no gradient (not a zero)
                grads.setdefault(role, {})[name] = grad
        meta_loss = float(sum(losses) / len(losses))
        # inner_loss: the inner loop's own (learned) loss, in that loss's units.
        return Estimate(grads, {"meta_loss": meta_loss, "inner_loss": float(sum(base) / len(base))})

    def _continue(self, step: int) -> bool:
        """Whether runs at inner step ``step`` go on after this window (else the next
        :meth:`_refresh_runs` replaces them)."""
        return self.horizon is None or step + 2 * self.window <= self.horizon

    def applied(self, ctx: MetaContext, info: dict) -> None:
        """A refused outer step (non-finite meta-gradient) may mean garbage inner states:
        meta-training starts fresh runs (an attached meta-test run goes on)."""
        if info.get("skipped") and not self.attached:
            self.runs = []

    def unroll_grads(
        self, ctx: MetaContext, run: InnerRun, leaves: list, scale: float = 1.0
    ) -> tuple[list, float, float]:
        """Advance ``run`` by ``window`` steps and return ``scale · ∂(meta-loss)/∂leaves``;
        the run continues from the detached state.

        Returns:
            One gradient per leaf (None where the meta-loss does not depend on it), the
            meta-loss and the last base (inner) loss.
        """
        biases, model, task = ctx.biases, run.model, run.task

        def objective(state):
            batch = run.val.next() if self.objective_batch == "val" else run.last_batch
            return ctx.objective(model, state, batch, task)

        if (
            self.fast_path
            and self.window == 1
            and not self.first_order
            and hypergrad.applies(run.state)
        ):
            run.state, meta_loss, base_loss, grads = hypergrad.one_step(
                model,
                run.state,
                run.next_train(),
                biases.loss,
                biases.optimizer,
                objective,
                leaves,
                scale,
            )
            return grads, float(meta_loss), base_loss

        state, total = run.state, 0.0
        for i in range(self.window):
            state, base_loss = inner_step(
                model, state, run.next_train(), biases.loss, biases.optimizer, self.first_order
            )
            if self.average or i == self.window - 1:
                total = total + objective(state)
        meta_loss = total / self.window if self.average else total
        grads = torch.autograd.grad(scale * meta_loss, leaves, allow_unused=True)
        run.state = state.detach()
        return list(grads), float(meta_loss.detach()), float(base_loss)

    def unroll(self, ctx: MetaContext, run: InnerRun, scale: float = 1.0) -> tuple[float, float]:
        """:meth:`unroll_grads` into every meta-parameter's ``.grad`` (accumulated, like
        ``backward``): for inspecting one run's meta-gradient. :meth:`estimate` never
        writes ``.grad``.

        Returns:
            The meta-loss and the last base (inner) loss.
        """
        leaves = [p for named in meta_parameters(ctx.biases).values() for p in named.values()]
        grads, meta_loss, base_loss = self.unroll_grads(ctx, run, leaves, scale)
        for leaf, grad in zip(leaves, grads):
            if grad is not None:
                leaf.grad = grad if leaf.grad is None else leaf.grad + grad
        return meta_loss, base_loss

    def attach(self, run: InnerRun) -> None:
        """Adapt online along ``run`` only: it is never reset or replaced (the meta-test
        phase of online AdaLFL)."""
        self.runs, self.horizon, self.meta_batch, self.attached = [run], None, 1, True

    def _refresh_runs(self, ctx: MetaContext) -> None:
        """Drop runs past their horizon and start new ones. Runs of one meta-batch live and
        end together on every rank, so each rank takes its slice of one block of indices."""
        if self.attached:
            return
        if self.horizon is not None:
            self.runs = [r for r in self.runs if r.step + self.window <= self.horizon]
        missing = distributed.shard(self.meta_batch) - len(self.runs)
        if missing > 0:
            rank, world = distributed.rank_and_world()
            first = self.next_index + rank * missing
            # deferred: estimate() unrolls them right away, at these meta-parameters
            self.runs += ctx.new_runs("meta_train", range(first, first + missing), defer_init=True)
            self.next_index += missing * world

    def state_dict(self) -> dict:
        """Progress and live runs (all ranks' runs, in rank order, which is index order).

        With several processes each rank holds different runs: inside
        :func:`~learnreg.core.distributed.gathering_state` (the runner's checkpoints
        during meta-training) they are gathered to rank 0, whose checkpoint then holds
        them all; outside it they are left out."""
        runs = [r.state_dict() for r in self.runs]
        if distributed.is_active():
            gathered = (
                distributed.gather_to_main(runs) if distributed.is_gathering_state() else None
            )
            runs = [sd for rank_runs in gathered or [] for sd in rank_runs]
        return {"next_index": self.next_index, "runs": runs}

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        """Restore progress and this rank's share of the saved runs: the saved runs split
        evenly over the ranks in index order, as :meth:`_refresh_runs` deals them out."""
        self.next_index = int(state["next_index"])
        self.runs = []
        saved = state["runs"]
        rank, world = distributed.rank_and_world()
        if len(saved) % world:
            return  # not dealt out by any run of this world size: start fresh runs
        share = len(saved) // world
        for sd in saved[rank * share : (rank + 1) * share]:
            run = ctx.new_run("meta_train", int(sd["index"]))
            run.load_state_dict(sd)
            self.runs.append(run)
