"""Antithetic perturbation pairs of persistent inner runs: what ES and PES share.

Every meta-step draws one Gaussian perturbation ``ε_i ~ N(0, σ²I)`` of the meta-parameter
values per pair ``i``. The pair's two copies, at ``θ + ε_i`` and ``θ − ε_i``, each advance
an inner run of their own by ``window`` steps without a graph, vmapped over all copies
that share a task (:func:`learnreg.core.population.map_members` over
:func:`learnreg.core.metaparams.call_at`). The estimate is

    g = 1 / (2σ² P) · Σ_i w_i · (L(θ + ε_i) − L(θ − ε_i))

where ``L`` is the window's meta-loss and ``w_i`` a direction the subclass chooses: the
current perturbation (truncated ES) or the perturbations accumulated since the run began
(PES). Runs are replaced after ``horizon`` inner steps, all pairs together.

The noise of pair ``i`` at meta-step ``k`` comes from its own generator seeded by
``derive_seed(run seed, estimator name, k, i)``, so a run is deterministic, a resumed run
draws what an uninterrupted one draws, and ranks of a ``torchrun`` job (each holding a
slice of the pairs) draw what one process draws.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from learnreg.core import distributed, metaparams
from learnreg.core.estimator import Estimate, Estimator, MetaContext, derive_seed
from learnreg.core.inner import InnerState
from learnreg.core.inner_run import InnerRun
from learnreg.core.population import map_members, unstack
from learnreg.errors import ConfigError
from learnreg.estimators.batch_start import check_vmappable
from learnreg.estimators.batched import unroll_window, window_data


def check_pair_args(
    sigma: float, window: int, horizon: int, pairs: int, meta_batch: int | None
) -> None:
    """Refuse settings whose runs or pairs would not fit together (also run when a config
    is loaded)."""
    if not sigma > 0:
        raise ConfigError(f"estimator sigma must be positive, got {sigma!r}")
    if window < 1 or horizon < window or horizon % window:
        raise ConfigError(
            f"need window >= 1 and a horizon that is a multiple of it (runs advance by whole "
            f"windows); got window {window}, horizon {horizon}"
        )
    if pairs < 1 or (meta_batch is not None and (meta_batch < 1 or pairs % meta_batch)):
        raise ConfigError(
            f"pairs ({pairs}) must be >= 1 and a multiple of meta_batch ({meta_batch}): "
            "every task gets the same number of pairs"
        )


class AntitheticPairs(Estimator):
    """Base of :class:`~learnreg.estimators.es.TruncatedES` and
    :class:`~learnreg.estimators.pes.PES` (see the module docstring).

    Subclasses set :attr:`name` and define :meth:`directions` (the ``w_i``) and, when the
    two copies must restart from one state, :meth:`after_window`.

    Args:
        sigma: standard deviation of each perturbation coordinate.
        pairs: antithetic pairs per meta-step, over all processes.
        window: inner steps per meta-step.
        horizon: inner steps after which every run is replaced by a fresh one.
        meta_batch: tasks per horizon, the pairs spread evenly over them (None: one task
            per pair). Pairs on one task share its model seed and batch order.
        objective_batch: ``train`` (the training batch just stepped on) or ``val``.
        average: average the meta-loss over every step of the window (the L2L meta-loss)
            rather than taking it at the window's end.
        vmap: run the copies of a task as one vectorized computation (False: a loop).
    """

    name = "antithetic"

    def __init__(
        self,
        sigma: float = 0.01,
        pairs: int = 8,
        window: int = 10,
        horizon: int = 100,
        meta_batch: int | None = None,
        objective_batch: Literal["train", "val"] = "train",
        average: bool = True,
        vmap: bool = True,
    ):
        self.check_args(sigma, window, horizon, pairs, meta_batch)
        self.sigma, self.pairs, self.window, self.horizon = float(sigma), pairs, window, horizon
        self.meta_batch = meta_batch or pairs
        self.objective_batch, self.average, self.vmap = objective_batch, average, vmap
        self.steps = 0  # estimates made: with the run seed, it names every noise draw
        self.next_index = 0
        self.pos: list[InnerRun] = []
        self.neg: list[InnerRun] = []
        self.accumulated: Tensor | None = None  # (local pairs, D): PES's Σ ε since reset

    @staticmethod
    def check_args(sigma=0.01, window=10, horizon=100, pairs=8, meta_batch=None, **_) -> None:
        check_pair_args(sigma, window, horizon, pairs, meta_batch)

    # -- what subclasses define --------------------------------------------------------
    def directions(self, eps: Tensor) -> Tensor:
        """The ``w_i`` multiplying each pair's loss difference (``eps``: this step's ε)."""
        raise NotImplementedError

    def after_window(self) -> None:
        """Called after the copies advanced (before the estimate is returned)."""

    # -- one meta-step -----------------------------------------------------------------
    def estimate(self, ctx: MetaContext) -> Estimate:
        self._refresh_runs(ctx)
        theta = metaparams.values_of(ctx.biases)
        flat = metaparams.flatten(theta)
        eps = self.noise(ctx, flat)
        with torch.no_grad():
            losses, base = self._advance(ctx, theta, flat, eps)
        plus, minus = losses[0::2], losses[1::2]
        weights = self.directions(eps)
        coeff = (plus - minus) / (2 * self.sigma**2 * len(self.pos))
        grads = metaparams.unflatten(coeff.to(flat.dtype) @ weights, theta)
        self.after_window()
        self.steps += 1
        summary = torch.stack([(plus + minus).mean() / 2, base.mean(), (plus - minus).abs().mean()])
        distributed.all_reduce_mean_([summary])  # every rank logs the same numbers
        meta_loss, inner_loss, spread = summary.tolist()
        return Estimate(
            grads=grads,
            metrics={"meta_loss": meta_loss, "inner_loss": inner_loss, "delta_loss": spread},
        )

    def applied(self, ctx: MetaContext, info: dict) -> None:
        if info.get("skipped"):  # the runs may hold garbage: start again
            self.pos, self.neg, self.accumulated = [], [], None

    def noise(self, ctx: MetaContext, flat: Tensor) -> Tensor:
        """This rank's perturbations ``(local pairs, D)``, one seeded generator per pair
        (drawn on the CPU, so every device draws the same numbers)."""
        rows = []
        for g in self._global_pairs():
            gen = torch.Generator().manual_seed(derive_seed(ctx.seed, self.name, self.steps, g))
            rows.append(torch.randn(flat.numel(), generator=gen, dtype=flat.dtype))
        return (torch.stack(rows) * self.sigma).to(flat.device)

    def _advance(self, ctx: MetaContext, theta, flat: Tensor, eps: Tensor) -> tuple:
        """Advance every copy by one window. Returns the meta-losses, interleaved
        ``(+, −)`` per pair, and the copies' last base losses."""
        losses = torch.empty(2 * len(self.pos), dtype=flat.dtype, device=flat.device)
        base = torch.empty_like(losses)
        by_task: dict[int, list[int]] = {}
        for j, run in enumerate(self.pos):
            by_task.setdefault(run.index, []).append(j)
        for pair_ids in by_task.values():
            copies = [(j, s) for j in pair_ids for s in (0, 1)]
            runs = [(self.pos if s == 0 else self.neg)[j] for j, s in copies]
            values = [
                metaparams.unflatten(flat + (eps[j] if s == 0 else -eps[j]), theta)
                for j, s in copies
            ]
            meta_loss, base_loss = self._advance_task(ctx, runs, values)
            where = torch.tensor([2 * j + s for j, s in copies], device=flat.device)
            losses[where], base[where] = meta_loss.to(losses.dtype), base_loss.to(base.dtype)
        return losses, base

    def _advance_task(self, ctx: MetaContext, runs: list[InnerRun], values: list) -> tuple:
        """One window of every copy on one task (a shared model), vmapped over copies."""
        biases, model, task, step0 = ctx.biases, runs[0].model, runs[0].task, runs[0].state.step
        avg = self.average
        if self.vmap:
            check_vmappable(model)
        members = [
            (v, r.state.params, r.state.buffers, r.state.opt_state)
            + window_data(r, self.window, self.objective_batch, self.average)
            for r, v in zip(runs, values)
        ]

        def one_window(v, params, buffers, opt_state, batches, targets):
            state = InnerState(params, buffers, opt_state, step0)
            roles = biases.loss, biases.optimizer, ctx.objective
            meta_loss, base_loss, state = metaparams.call_at(
                biases, v, lambda: unroll_window(model, task, *roles, state, batches, targets, avg)
            )
            return meta_loss, base_loss, state.params, state.opt_state

        meta_loss, base_loss, params, opt_state = map_members(
            lambda m: one_window(*m), members, vectorize=self.vmap
        )
        for run, p, o in zip(runs, unstack(params, len(runs)), unstack(opt_state, len(runs))):
            run.state = InnerState(p, run.state.buffers, o, step0 + self.window)
        return meta_loss, base_loss

    # -- runs --------------------------------------------------------------------------
    def _global_pairs(self) -> range:
        """The global indices of this rank's pairs (rank r of W holds a contiguous slice)."""
        local = distributed.shard(self.pairs, "pairs")
        rank, _ = distributed.rank_and_world()
        return range(rank * local, (rank + 1) * local)

    def _task_of(self, pair: int) -> int:
        return pair // (self.pairs // self.meta_batch)

    def _refresh_runs(self, ctx: MetaContext) -> None:
        """Replace every run at the horizon (all pairs started together, so they end
        together), and the accumulated perturbations with them."""
        if self.pos and self.pos[0].state.step + self.window > self.horizon:
            self.pos, self.neg, self.accumulated = [], [], None
        if not self.pos:
            indices = [self.next_index + self._task_of(g) for g in self._global_pairs()]
            self.pos, self.neg = self._pair_runs(ctx, indices)
            self.next_index += self.meta_batch

    @staticmethod
    def _pair_runs(ctx: MetaContext, indices: list[int]) -> tuple[list, list]:
        """Two fresh runs per pair; pairs on one task share its task, model and initial
        state (the copies differ only in the meta-parameters they run at)."""
        first: dict[int, InnerRun] = {}
        pos, neg = [], []
        for index in indices:
            if index not in first:
                first[index] = ctx.new_run("meta_train", index)
            r = first[index]
            for side in (pos, neg):
                side.append(InnerRun(r.task, r.model, r.state, r.seed, r.index))
        return pos, neg

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Progress, live runs and accumulated perturbations. Under ``torchrun`` rank 0's
        checkpoint holds every rank's (inside
        :func:`~learnreg.core.distributed.gathering_state`), else they are left out."""
        local = {
            "runs": [[p.state_dict(), n.state_dict()] for p, n in zip(self.pos, self.neg)],
            "accumulated": self.accumulated,
        }
        if distributed.is_active():
            gathered = (
                distributed.gather_to_main(local) if distributed.is_gathering_state() else None
            )
            pieces = gathered or []
            acc = [g["accumulated"] for g in pieces]
            local = {
                "runs": [r for g in pieces for r in g["runs"]],
                "accumulated": torch.cat(acc) if acc and all(a is not None for a in acc) else None,
            }
        return {"steps": self.steps, "next_index": self.next_index, **local}

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        """Restore progress and this rank's slice of the saved pairs."""
        self.steps, self.next_index = int(state["steps"]), int(state["next_index"])
        self.pos, self.neg, self.accumulated = [], [], None
        saved = state["runs"]
        if len(saved) != self.pairs:
            return  # none live (or a different setup): start fresh runs
        pairs = self._global_pairs()
        mine = saved[pairs.start : pairs.stop]
        self.pos, self.neg = self._pair_runs(ctx, [int(p["index"]) for p, _ in mine])
        for run, sd in zip(self.pos + self.neg, [p for p, _ in mine] + [n for _, n in mine]):
            run.load_state_dict(sd)
        acc = state.get("accumulated")
        if acc is not None:
            self.accumulated = acc[pairs.start : pairs.stop].to(ctx.device)
