"""Black-box search over one role: one meta-step is one generation of a searcher.

The searched role is ``role``: the loss (TaylorGLO, EvoMAL), the optimizer (e.g. the
knots of a learned step-size schedule) or the init. Each generation the searcher
proposes genomes; each is built into a candidate module of that role,
looked up in the fitness cache (keyed by a canonical form, when the searcher has one),
passed through the filters (rejected candidates are never trained), and the rest are
evaluated by the evaluator: fitness = the meta-objective after a partial training run
with the candidate, no meta-gradients (EvoMAL first tunes the candidate's weights with
short one-step unrolls). The searcher is told every fitness; a candidate that was
rejected or produced a NaN/Inf fitness ranks last and is logged with its reason, never
stopping the search. Each generation's :class:`~learnreg.core.estimator.Estimate` carries
no gradient but the best candidate so far as ``states={role: state_dict}``, which the
trainer loads, so the role always holds it. The whole search state is plain data, so the
runner checkpoints it every generation and a resumed search ends exactly where an
uninterrupted one does.

Under ``torchrun`` every process runs the same searcher and filters, trains its share
of the candidates, and the fitnesses are all-gathered: the single-process search (the
Ray evaluator, which spreads a population itself, is refused there).

References:
    Gonzalez & Miikkulainen, TaylorGLO (arXiv 2002.00059).
    Raymond et al., EvoMAL (arXiv 2209.08907).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

from learnreg import components
from learnreg.core import distributed
from learnreg.core.bias import is_learned
from learnreg.errors import ConfigError
from learnreg.estimators.base import Estimate, Estimator, MetaContext, derive_seed
from learnreg.estimators.evaluators.backends import Evaluator, split
from learnreg.estimators.evaluators.fitness import Evaluation, FitnessProblem, LocalSearch
from learnreg.estimators.filters import Equivalent, make_filter
from learnreg.estimators.generation import (
    Candidate,
    generation_metrics,
    log_population,
    log_rejections,
)
from learnreg.estimators.searchers.base import Searcher
from learnreg.registry import register


@register("estimator", "evolution")
class Evolution(Estimator):
    """Evolutionary search over one role (TaylorGLO with CMA-ES, EvoMAL with GP, CMA-ES
    over a learned optimizer's or init's meta-parameters).

    Args:
        searcher: ``cmaes`` (any role) or ``gp`` (loss trees): a name, a
            ``{_component_: ...}`` spec or an object.
        evaluator: ``vmap`` (default), ``serial``, ``processes`` or ``ray``.
        fitness_steps: inner steps of each fitness run (TaylorGLO MNIST: 2000; EvoMAL 500).
        fitness_seeds: fitness runs averaged (model seeds, or tasks of a family).
        filters: pre-training filters (registered ``filter`` components; the loss role
            has ``taylor_invariant`` and ``prediction_descent``), names or specs.
        local_search: EvoMAL's hybrid: ``{steps, lr, objective, objective_batch, clip}``
            (see :class:`~learnreg.estimators.evaluators.LocalSearch`); None: off.
        cache: reuse the fitness of canonically equal candidates.
        val_batch: validation examples per objective call.
        compile: compile the graph-free fitness runs' inner step (``torch.compile``,
            eager where it cannot); pays off when ``fitness_steps`` is in the thousands.
        role: the searched role: ``loss``, ``optimizer`` or ``init``.
    """

    needs_outer = False
    online = False

    def __init__(
        self,
        searcher: dict | str | Searcher = "cmaes",
        evaluator: dict | str | Evaluator = "vmap",
        fitness_steps: int = 500,
        fitness_seeds: int = 1,
        filters: list | tuple = (),
        local_search: dict | None = None,
        cache: bool = True,
        val_batch: int = 1024,
        compile: bool = False,
        role: Literal["loss", "optimizer", "init"] = "loss",
    ):
        if fitness_steps < 1 or fitness_seeds < 1:
            raise ConfigError(
                f"fitness_steps and fitness_seeds must be >= 1, got {fitness_steps}, {fitness_seeds}"
            )
        self.searcher = _component("searcher", searcher)
        self.evaluator = _component("evaluator", evaluator)
        self.filters = [make_filter(spec) for spec in filters]
        self.local_search = LocalSearch.from_spec(local_search)
        self.fitness_steps, self.fitness_seeds = fitness_steps, fitness_seeds
        self.use_cache, self.val_batch, self.role = cache, val_batch, role
        self.compile = compile
        for part in (self.searcher, *self.filters):
            wanted = getattr(part, "role", None)
            if wanted not in (None, role):
                raise ConfigError(
                    f"the {type(part).__name__} searches the {wanted} role, but this search's "
                    f"role is {role!r}; set `role: {wanted}` or choose a searcher/filter for {role}"
                )
        self.problem: FitnessProblem | None = None
        self.generation, self.cache, self.history = 0, {}, []
        self.best: dict = {}

    def _bind(self, ctx: MetaContext) -> None:
        """On first use: seed the searcher, fix the template and the fitness problem."""
        if self.problem is not None:
            return
        if distributed.is_active() and getattr(self.evaluator, "one_per_run", False):
            raise ConfigError(
                f"the {type(self.evaluator).__name__} spreads the population itself; under "
                "torchrun every process would start its own. Run the search as one process, "
                "or use the vmap, serial or processes evaluator (torchrun shards their work)"
            )
        searched = ctx.biases.roles()[self.role]
        self.template = copy.deepcopy(searched)
        if self.local_search is not None and not is_learned(searched):
            raise ConfigError(
                f"local_search tunes the {self.role}'s meta-parameters, but it has none that "
                "learn (learnable: false?)"
            )
        self.searcher.start(self.template, derive_seed(ctx.seed, "search"))
        self.problem = FitnessProblem(
            tasks=[ctx.family.sample(s).to(ctx.device) for s in range(self.fitness_seeds)],
            seeds=[derive_seed(ctx.seed, "fitness", s) for s in range(self.fitness_seeds)],
            optimizer=ctx.biases.optimizer,
            init=ctx.biases.init,
            loss=ctx.biases.loss,
            role=self.role,
            objective=ctx.objective,
            steps=self.fitness_steps,
            local_search=self.local_search,
            seed=ctx.seed,
            device=str(ctx.device),
            val_batch=self.val_batch,
            compile=self.compile,
        )

    def estimate(self, ctx: MetaContext) -> Estimate:
        """One generation: ask, look up, filter, evaluate, tell. The estimate holds the
        ``search/`` metrics and the best candidate so far as the role's state."""
        self._bind(ctx)
        self.generation += 1
        genomes = self.searcher.ask()
        candidates = [
            Candidate(g, self.searcher.key(g) if self.use_cache else None) for g in genomes
        ]
        fresh = self._look_up(candidates)
        fresh, losses = self._filter(fresh, ctx)
        self._evaluate(fresh, losses)
        self._remember(candidates)
        fitness = [c.fitness if math.isfinite(c.fitness) else None for c in candidates]
        self.searcher.tell(genomes, fitness)
        self._update_best(candidates)
        metrics = self._metrics(candidates)
        self.history.append({"generation": self.generation, **metrics})
        self._log_table(candidates, ctx)
        states = {self.role: self.best["state"]} if self.best else None
        return Estimate(metrics=metrics, states=states)

    def _look_up(self, candidates: list[Candidate]) -> list[Candidate]:
        """Fill in cached fitness; returns the candidates still to be judged."""
        for c in candidates:
            if c.key is not None and c.key in self.cache:
                c.fitness, c.reason = self.cache[c.key]
                c.status = "cached"
        return [c for c in candidates if c.status == "pending"]

    def _filter(self, fresh: list[Candidate], ctx: MetaContext):
        """Build the candidates' modules and run the filters; returns the survivors."""
        modules = [self.searcher.build(c.genome, self.template, ctx.seed) for c in fresh]
        for filt in self.filters:
            verdicts = filt(modules, ctx)
            for c, verdict in zip(fresh, verdicts):
                if isinstance(verdict, Equivalent):  # behaves like a trained one: its fitness
                    c.status, c.fitness, c.reason = "equivalent", verdict.fitness, verdict.reason
                elif verdict is not None:
                    c.status, c.reason = "rejected", verdict
            modules = [m for m, v in zip(modules, verdicts) if v is None]
            fresh = [c for c, v in zip(fresh, verdicts) if v is None]
        return fresh, modules

    def _evaluate(self, fresh: list[Candidate], modules: list) -> None:
        for c, module, result in zip(fresh, modules, self._sharded_fitness(modules)):
            c.fitness, c.reason = result.fitness, result.reason or ""
            c.status = "evaluated" if result.reason is None else "discarded"
            c.state = result.state or {k: v.detach().cpu() for k, v in module.state_dict().items()}
        for filt in self.filters:
            if hasattr(filt, "tell"):
                filt.tell(modules, [c.fitness for c in fresh])

    def _sharded_fitness(self, modules: list) -> list:
        """The evaluator's results for ``modules``, each process evaluating its share."""
        rank, world = distributed.rank_and_world()
        if world == 1:
            return self.evaluator.evaluate(self.problem, modules)
        shares = split(list(range(len(modules))), world) if modules else []
        mine = [modules[i] for i in shares[rank]] if rank < len(shares) else []
        local = [
            (r.fitness, r.reason, r.state) for r in self.evaluator.evaluate(self.problem, mine)
        ]
        return [Evaluation(*r) for part in distributed.all_gather(local) for r in part]

    def _remember(self, candidates: list[Candidate]) -> None:
        """Log rejected and discarded candidates with their reasons; fill the cache."""
        log_rejections(self.generation, candidates, self.searcher.describe)
        for c in candidates:
            if c.key is not None and c.status != "cached":
                self.cache[c.key] = [c.fitness, c.reason]

    def _update_best(self, candidates: list[Candidate]) -> None:
        scored = [c for c in candidates if c.state is not None and math.isfinite(c.fitness)]
        winner = min(scored, key=lambda c: c.fitness, default=None)
        if winner is not None and winner.fitness < self.best.get("fitness", math.inf):
            self.best = {
                "fitness": winner.fitness,
                "genome": self.searcher.describe(winner.genome),
                "generation": self.generation,
                "state": winner.state,
            }

    def _metrics(self, candidates: list[Candidate]) -> dict[str, float]:
        before = self.history[-1]["search/total_evaluated"] if self.history else 0
        return generation_metrics(candidates, self.best.get("fitness", math.nan), before)

    def _log_table(self, candidates: list[Candidate], ctx: MetaContext) -> None:
        log_population(ctx.logger, self.generation, candidates, self.searcher.describe)

    def close(self) -> None:
        """Close the evaluator (its process pool or local Ray instance)."""
        self.evaluator.close()

    def export(self, directory, ctx: MetaContext) -> None:
        """Write the search's outputs: the searched role's description and plot (when it
        has them), the fitness history."""
        from learnreg.estimators.report import write_search_report

        module = ctx.biases.roles()[self.role]
        write_search_report(directory, module, self.history, self.best, role=self.role)

    def state_dict(self) -> dict:
        return {
            "generation": self.generation,
            "searcher": self.searcher.state_dict() if self.problem is not None else None,
            "cache": dict(self.cache),
            "history": list(self.history),
            "best": dict(self.best),
            "filters": [f.state_dict() for f in self.filters],
        }

    def load_state_dict(self, state: dict, ctx: MetaContext) -> None:
        self._bind(ctx)
        self.generation = int(state["generation"])
        if state["searcher"] is not None:
            self.searcher.load_state_dict(state["searcher"])
        self.cache, self.history, self.best = (
            dict(state["cache"]),
            list(state["history"]),
            dict(state["best"]),
        )
        for filt, filter_state in zip(self.filters, state.get("filters", [])):
            filt.load_state_dict(filter_state)


def _component(kind: str, spec):
    if isinstance(spec, (str, dict)):
        return components.instantiate(kind, spec)
    return spec
