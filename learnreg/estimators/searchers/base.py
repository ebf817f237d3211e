"""The searcher contract: propose a generation of candidates, learn from their fitness.

A searcher owns the search distribution or population (CMA-ES's mean and covariance, a
GP population) and nothing else: it does not train anything. The
:class:`~learnreg.estimators.evolution.Evolution` estimator asks it for a generation of
*genomes* (plain data: a list of floats, an expression string), builds each into a
module of the searched role with :meth:`Searcher.build`, has them evaluated, and tells it
their fitness. A searcher that only makes sense for one role (genetic programming over
loss trees) names it in :attr:`Searcher.role`; the estimator refuses it for another.
Its state is plain data (tensors, numbers, strings, lists, dicts), so a search resumes
from a ``weights_only`` checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Genome = Any


class Searcher:
    """Base class of black-box searchers over a role's candidates (lower fitness is better)."""

    #: candidates per generation (set by ``start`` at the latest).
    population: int
    #: the role this searcher's genomes describe (None: any role with tensor meta-parameters).
    role: str | None = None

    def start(self, template: nn.Module, seed: int) -> None:
        """Bind to the role being searched (a copy of its module) and seed the search."""
        raise NotImplementedError

    def ask(self) -> list[Genome]:
        """The next generation's genomes."""
        raise NotImplementedError

    def tell(self, genomes: list[Genome], fitness: list[float | None]) -> None:
        """Fitness of every genome ``ask`` returned, in order; ``None`` marks a candidate
        that was rejected or diverged (it ranks last)."""
        raise NotImplementedError

    def build(self, genome: Genome, template: nn.Module, seed: int) -> nn.Module:
        """The role module a genome stands for (a new module; ``template`` is unchanged)."""
        raise NotImplementedError

    def key(self, genome: Genome) -> str | None:
        """A canonical key for the fitness cache (None: never cached)."""
        return None

    def describe(self, genome: Genome) -> str:
        return str(genome)

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


def python_rng_state(state: tuple) -> dict:
    """``random.getstate()`` as plain data (a tensor of its 625 words)."""
    version, internal, gauss = state
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def python_rng_from(plain: dict) -> tuple:
    return (
        int(plain["version"]),
        tuple(int(v) for v in plain["internal"].tolist()),
        plain["gauss"],
    )


class OwnRandom:
    """A private stream of Python's ``random`` module for libraries (DEAP) that draw from
    the global one: ``with own:`` swaps the private state in, and back out afterwards, so
    the search is reproducible whatever else uses ``random``."""

    def __init__(self, seed: int):
        self.state = random.Random(seed).getstate()

    @contextmanager
    def active(self) -> Iterator[None]:
        saved = random.getstate()
        random.setstate(self.state)
        try:
            yield
        finally:
            self.state = random.getstate()
            random.setstate(saved)
