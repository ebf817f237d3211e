"""Genetic programming over loss expression trees with DEAP (EvoMAL's search), a
searcher of :class:`~learnreg.estimators.Evolution` for the loss role.

The primitive set is :data:`learnreg.losses.expression.PRIMITIVES` with terminals ``y``,
``fx``, +1 and -1. One generation follows the EvoMAL reference: double tournament
selection (fitness tournaments of 4, parsimony size 1), then for each selected tree
one-point crossover with probability 0.7, else uniform subtree mutation (new subtrees of
depth 0-2, ramped half-and-half) with probability 0.25, else reproduction; an offspring
taller than the height limit (10) is replaced by its parent. A tree lacking ``y`` or
``fx`` is repaired: a random terminal becomes a random arithmetic node over both. The
initial population is ramped half-and-half of depth 2-4. Genomes are expression strings.

References:
    Raymond et al., EvoMAL (arXiv 2209.08907); Koza, "Genetic Programming" (1992);
    Luke & Panait, "Fighting bloat with nonparametric parsimony pressure" (double
    tournament); Fortin et al., "DEAP: Evolutionary Algorithms Made Easy", JMLR 2012.
"""

from __future__ import annotations

import copy
import functools
import random

import torch
from deap import base, gp, tools

from learnreg.core.estimator import derive_seed
from learnreg.errors import CheckpointError, ConfigError
from learnreg.estimators.searchers.base import (
    OwnRandom,
    Searcher,
    python_rng_from,
    python_rng_state,
)
from learnreg.losses.base import LossRole
from learnreg.losses.expression import PRIMITIVES, canonical, parse
from learnreg.losses.symbolic import SymbolicLoss
from learnreg.registry import register


def _on_tensors(fn):
    """``fn`` with Python numbers (DEAP's constant terminals) turned into tensors."""

    def apply(*args):
        like = next((a for a in args if torch.is_tensor(a)), None)
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        return fn(*(a if torch.is_tensor(a) else torch.tensor(a, dtype=dtype) for a in args))

    return apply


def primitive_set() -> gp.PrimitiveSet:
    """EvoMAL's primitive set, evaluable by ``deap.gp.compile`` on torch tensors."""
    pset = gp.PrimitiveSet("loss", 2)
    pset.renameArguments(ARG0="y", ARG1="fx")
    for prim in PRIMITIVES.values():  # arithmetic first: repair draws from the first four
        pset.addPrimitive(_on_tensors(prim.torch_fn), prim.arity, name=prim.name)
    pset.addTerminal(1.0)
    pset.addTerminal(-1.0)
    return pset


PSET = primitive_set()
ARITHMETIC = [p for p in PSET.primitives[PSET.ret] if p.name in ("add", "sub", "mul", "aq")]


class Fitness(base.Fitness):
    weights = (-1.0,)  # minimized


class Tree(gp.PrimitiveTree):
    """A DEAP tree that carries its fitness (what DEAP's selection operators read)."""

    def __init__(self, content):
        super().__init__(content)
        self.fitness = Fitness()


def tree_from_string(expression: str) -> Tree:
    """A DEAP tree from an expression string, through learnreg's safe parser (DEAP's own
    ``from_string`` would ``eval`` unknown tokens)."""
    return Tree([PSET.mapping[node.name] for node in parse(expression)])


def repair(tree: Tree) -> Tree:
    """Ensure ``tree`` holds both ``y`` and ``fx`` (EvoMAL's constraint), in place."""
    names = {node.format() for node in tree if isinstance(node, gp.Terminal)}
    if {"y", "fx"} <= names:
        return tree
    op = random.choice(ARITHMETIC)
    args = [PSET.mapping["y"], PSET.mapping["fx"]]
    random.shuffle(args)
    index = random.choice([i for i, node in enumerate(tree) if isinstance(node, gp.Terminal)])
    tree[index : index + 1] = [op, *args]
    return tree


@register("searcher", "gp")
class GeneticProgramming(Searcher):
    """DEAP genetic programming over :class:`~learnreg.losses.symbolic.SymbolicLoss` trees.

    Args:
        population: trees per generation (EvoMAL: 25).
        crossover: probability of one-point crossover (0.7).
        mutation: probability of uniform subtree mutation (0.25); otherwise reproduction.
        tournament: fitness tournament size of the double tournament (4).
        parsimony: size tournament parameter in [1, 2] (1: no size pressure, EvoMAL).
        max_height: height limit of offspring (10).
        init_height: (min, max) depth of the ramped half-and-half initial trees (2, 4).
        mutation_height: (min, max) depth of mutation subtrees (0, 2).
    """

    role = "loss"

    def __init__(
        self,
        population: int = 25,
        crossover: float = 0.7,
        mutation: float = 0.25,
        tournament: int = 4,
        parsimony: float = 1.0,
        max_height: int = 10,
        init_height: tuple[int, int] | list[int] = (2, 4),
        mutation_height: tuple[int, int] | list[int] = (0, 2),
    ):
        if population < 2 or crossover < 0 or mutation < 0 or crossover + mutation > 1:
            raise ConfigError(
                "gp needs population >= 2 and crossover + mutation <= 1 (non-negative); "
                f"got population={population}, crossover={crossover}, mutation={mutation}"
            )
        if not 1 <= parsimony <= 2:
            raise ConfigError(f"gp parsimony must lie in [1, 2] (DEAP), got {parsimony}")
        self.population, self.crossover, self.mutation = population, crossover, mutation
        self.tournament, self.parsimony, self.max_height = tournament, parsimony, max_height
        self.init_height, self.mutation_height = tuple(init_height), tuple(mutation_height)
        self.trees: list[Tree] = []  # the current population, with fitness once told
        self.offspring: list[Tree] = []

    def start(self, template: LossRole, seed: int) -> None:
        if not isinstance(template, SymbolicLoss):
            raise ConfigError(
                f"the gp searcher evolves SymbolicLoss trees, but the loss role is {type(template).__name__}; "
                "set `loss: {_component_: symbolic}`."
            )
        self.kind, self.seed = template.kind, seed
        self.random = OwnRandom(seed)

    def ask(self) -> list[str]:
        with self.random.active():
            if not self.trees:
                low, high = self.init_height
                trees = [Tree(gp.genHalfAndHalf(PSET, low, high)) for _ in range(self.population)]
                self.offspring = [self._repaired(t, None) for t in trees]
            else:
                self.offspring = self._vary(self._select())
        return [str(t) for t in self.offspring]

    def _select(self) -> list[Tree]:
        return tools.selDoubleTournament(
            self.trees, self.population, self.tournament, self.parsimony, fitness_first=False
        )

    def _vary(self, selected: list[Tree]) -> list[Tree]:
        """EvoMAL's variation: crossover, else mutation, else reproduction, per selected tree."""
        low, high = self.mutation_height
        new_subtree = functools.partial(gp.genHalfAndHalf, min_=low, max_=high)
        offspring = []
        for parent in selected:
            draw = random.random()
            child = copy.deepcopy(parent)
            if draw < self.crossover:
                child, _ = gp.cxOnePoint(child, copy.deepcopy(random.choice(selected)))
            elif draw < self.crossover + self.mutation:
                (child,) = gp.mutUniform(child, new_subtree, PSET)
            offspring.append(self._repaired(child, parent))
        return offspring

    def _repaired(self, tree: Tree, parent: Tree | None) -> Tree:
        tree = repair(tree)
        if parent is not None and tree.height > self.max_height:
            tree = copy.deepcopy(parent)
        del tree.fitness.values
        return tree

    def tell(self, genomes: list[str], fitness: list[float | None]) -> None:
        for tree, value in zip(self.offspring, fitness):
            tree.fitness.values = (float("inf") if value is None else float(value),)
        self.trees, self.offspring = self.offspring, []

    def build(self, genome: str, template: LossRole, seed: int) -> SymbolicLoss:
        return SymbolicLoss(
            kind=template.kind,
            num_classes=template.num_classes,
            expression=genome,
            learnable=template.learnable,
            seed=derive_seed(seed, self.key(genome)),
        ).to(template.weights.device)

    def key(self, genome: str) -> str:
        return canonical(genome, self.kind)

    def state_dict(self) -> dict:
        return {
            "trees": [str(t) for t in self.trees],
            "fitness": [t.fitness.values[0] for t in self.trees],
            "rng": python_rng_state(self.random.state),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.trees = [tree_from_string(s) for s in state["trees"]]
            for tree, value in zip(self.trees, state["fitness"]):
                tree.fitness.values = (float(value),)
            self.random.state = python_rng_from(state["rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpointed GP population does not load: {exc}") from None
        self.offspring = []
