"""CMA-ES over the flat vector of a role's meta-parameters (TaylorGLO's search).

Uses the maintained ``cmaes`` package. The searcher works for any role with a fixed set
of tensor meta-parameters (TaylorGLO's 8 coefficients, a learned step-size schedule's
knots, a small learned initialization): a genome is the vector
:func:`learnreg.core.metaparams.flatten` makes of them, and
:func:`~learnreg.core.metaparams.unflatten` turns it back into the role's tensors.

References:
    Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv 1604.00772).
    Nomura & Shibata, "cmaes: A Simple yet Practical Python Library for CMA-ES"
    (arXiv 2402.01373).
    Gonzalez & Miikkulainen, TaylorGLO (arXiv 2002.00059): start at the zero vector, σ=1.2.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from cmaes import CMA
from torch import nn

from learnreg.core import metaparams
from learnreg.errors import CheckpointError, ConfigError
from learnreg.estimators.searchers.base import Searcher
from learnreg.registry import register

#: Rejected or diverged candidates are told this value: they rank last. CMA-ES only uses
#: the ranking, so any value above every real fitness works.
WORST = 1e30


def role_values(module: nn.Module) -> metaparams.MetaParams:
    """A role module's meta-parameters as values (detached), under one role key."""
    return {"role": {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}}


@register("searcher", "cmaes")
class CMAES(Searcher):
    """Covariance matrix adaptation over the searched role's meta-parameter vector.

    Args:
        population: candidates per generation (None: CMA-ES's default 4 + 3 ln d).
        sigma: initial step size (TaylorGLO: 1.2).
        start: ``zeros`` (TaylorGLO: the zero vector) or ``current`` (the role's values:
            a schedule's or an init's starting point).
    """

    def __init__(
        self,
        population: int | None = None,
        sigma: float = 1.2,
        start: Literal["zeros", "current"] = "zeros",
    ):
        if population is not None and population < 2:
            raise ConfigError(f"CMA-ES needs a population of at least 2, got {population}")
        if sigma <= 0:
            raise ConfigError(f"CMA-ES needs sigma > 0, got {sigma}")
        self.requested, self.sigma, self.start_at = population, sigma, start
        self.cma: CMA | None = None

    def start(self, template: nn.Module, seed: int) -> None:
        self.like = role_values(template)
        if not self.like["role"]:
            raise ConfigError(
                f"CMA-ES searches a role's meta-parameters, but {type(template).__name__} has "
                "none; use a learnable one (a `taylor` loss, a `schedule_sgd` optimizer...)."
            )
        vector = metaparams.flatten(self.like).double().cpu().numpy()
        mean = vector if self.start_at == "current" else np.zeros_like(vector)
        self.cma = CMA(mean=mean, sigma=self.sigma, population_size=self.requested, seed=seed)
        self.population = self.cma.population_size

    def ask(self) -> list[list[float]]:
        return [self.cma.ask().tolist() for _ in range(self.population)]

    def tell(self, genomes: list[list[float]], fitness: list[float | None]) -> None:
        self.cma.tell(
            [(np.asarray(g), WORST if f is None else float(f)) for g, f in zip(genomes, fitness)]
        )

    def build(self, genome: list[float], template: nn.Module, seed: int) -> nn.Module:
        module = copy.deepcopy(template)
        values = metaparams.unflatten(torch.tensor(genome, dtype=torch.float64), self.like)
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name in values["role"]:
                    param.copy_(values["role"][name])
        return module

    def describe(self, genome: list[float]) -> str:
        return "[" + ", ".join(f"{v:.4g}" for v in genome) + "]"

    def state_dict(self) -> dict:
        """The CMA-ES state as plain data: its arrays as float64 tensors, its RNG state."""
        state = {}
        for name, value in self.cma.__getstate__().items():
            if isinstance(value, np.ndarray):
                state[name] = torch.from_numpy(value.copy())
            elif isinstance(value, np.generic):
                state[name] = value.item()
            else:
                state[name] = value
        # cmaes pickles C as its upper triangle, which drops the rounding-level asymmetry
        # the updates leave; the full matrix makes a resumed search bit-identical.
        state["C"] = torch.from_numpy(self.cma._C.copy())
        kind, keys, pos, has_gauss, gauss = self.cma._rng.get_state()
        rng = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}
        rng.update(has_gauss=int(has_gauss), gauss=float(gauss), kind=str(kind))
        return {"cma": state, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        try:
            # (a checkpoint is read onto the run's device: numpy needs the CPU)
            attrs = {
                k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in state["cma"].items()
            }
            full_c = attrs.pop("C")
            cma = CMA.__new__(CMA)
            cma.__setstate__(attrs)
            cma._C = full_c
            rng = state["rng"]
            keys = rng["keys"].cpu().numpy().astype(np.uint32)
            cma._rng.set_state((rng["kind"], keys, rng["pos"], rng["has_gauss"], rng["gauss"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpointed CMA-ES state does not load: {exc}") from None
        if cma.dim != self.cma.dim:
            raise CheckpointError(
                f"the checkpointed CMA-ES searches {cma.dim} parameters, this role has {self.cma.dim}"
            )
        self.cma, self.population = cma, cma.population_size
