"""EvoMAL's symbolic losses and the DEAP search over them: the compiled torch graph
against DEAP's own evaluation and sympy, parsing safety, canonical keys, export, repair,
and the GP searcher's reproducibility and resume."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
import sympy
import torch
from deap import gp

from learnreg import losses
from learnreg.errors import ConfigError
from learnreg.losses import SymbolicLoss
from learnreg.losses.expression import SYMBOLS, canonical
from learnreg.losses.gp import (
    PSET,
    GeneticProgramming,
    Tree,
    repair,
    tree_from_string,
)


def random_trees(count: int, seed: int = 0) -> list[Tree]:
    state = random.getstate()
    random.seed(seed)
    try:
        return [repair(Tree(gp.genHalfAndHalf(PSET, 2, 5))) for _ in range(count)]
    finally:
        random.setstate(state)


def grid(n: int = 40, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n, 3), generator=g).to(dtype)
    fx = torch.rand(n, 3, generator=g, dtype=dtype) * 0.98 + 0.01
    return y, fx


@pytest.mark.parametrize("seed", range(4))
def test_compiled_loss_equals_direct_evaluation_of_its_tree(seed):
    y, fx = grid()
    for tree in random_trees(10, seed):
        loss = SymbolicLoss(expression=str(tree), learnable=False).double()
        direct = gp.compile(tree, PSET)(y, fx)  # DEAP evaluates the tree with the same ops
        expected = torch.broadcast_to(torch.as_tensor(direct, dtype=torch.float64), y.shape)
        torch.testing.assert_close(loss.elementwise(y, fx), expected, equal_nan=True)


def test_weighted_tree_equals_its_sympy_formula():
    g = torch.Generator().manual_seed(1)  # regression values: no exact zeros to clamp
    y, fx = (torch.randn(40, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for i, tree in enumerate(random_trees(12, seed=7)):
        loss = SymbolicLoss(kind="regression", num_classes=3, expression=str(tree), seed=i).double()
        with torch.no_grad():
            loss.weights.copy_(1 + 0.3 * torch.randn(len(loss.weights), dtype=torch.float64))
        formula = loss.formula(digits=14, simplify=False)
        fn = sympy.lambdify(SYMBOLS["regression"], formula, "numpy")
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = np.broadcast_to(fn(y.numpy(), fx.numpy()), y.shape)
        got = loss.elementwise(y, fx).detach().numpy()
        # Where sympy's log(|a|) is infinite (a = 0) the protected log clamps |a| at 1e-7.
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-9, atol=1e-9)


def test_default_losses_are_cross_entropy_and_squared_error():
    logits, target = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))
    ce = SymbolicLoss(num_classes=5, learnable=False).double()
    torch.testing.assert_close(
        ce(logits, target), torch.nn.functional.cross_entropy(logits, target)
    )
    pred, y = torch.randn(8, 1, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    mse = SymbolicLoss(kind="regression", num_classes=1, learnable=False).double()
    torch.testing.assert_close(mse(pred, y), torch.nn.functional.mse_loss(pred, y))
    assert str(ce.formula()) == "-y*log(f(x))"


def test_node_weights_pass_central_finite_differences():
    logits, target = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    loss = SymbolicLoss(num_classes=4, expression="sub(aq(fx, y), mul(tanh(y), log(fx)))").double()
    weights = loss.weights.detach().clone().requires_grad_()

    def fn(w, logits):
        return torch.func.functional_call(loss, {"weights": w}, (logits, target))

    assert torch.autograd.gradcheck(fn, (weights, logits.clone().requires_grad_()))


@pytest.mark.parametrize(
    "text, message",
    [
        ("add(y)", "expected ','"),
        ("add(y, fx, y)", "expected ')'"),
        ("foo(y)", "unknown name 'foo'"),
        ("__import__('os')", "unexpected character"),
        ("", "empty expression"),
        ("add(y, fx) y", "after the end"),
    ],
)
def test_malformed_expressions_are_clear_errors(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SymbolicLoss(expression=text)


def test_canonical_form_identifies_equivalent_trees():
    assert canonical("add(y, fx)") == canonical("add(fx, y)")
    assert canonical("mul(y, sub(fx, fx))") == canonical("mul(y, sub(y, y))") == "0"
    assert canonical("square(fx)") != canonical("abs(fx)")


def test_state_dict_carries_the_tree_and_exports_round_trip(tmp_path):
    loss = SymbolicLoss(num_classes=3)
    other = SymbolicLoss(num_classes=3, expression="aq(square(sub(fx, y)), max(y, -1.0))", seed=5)
    loss.load_state_dict(other.state_dict())  # rebuilds the tree, then loads its weights
    assert loss.expression == other.expression and torch.equal(loss.weights, other.weights)
    path = losses.save(loss, tmp_path / "loss")
    doc = json.loads(path.read_text())
    assert doc["args"]["expression"] == other.expression
    assert "(f(x) - y)**2/sqrt(y**2 + 1)" in doc["description"]  # max(y, -1) = y for y >= 0
    loaded = losses.load(tmp_path / "loss")
    logits, target = torch.randn(5, 3), torch.randint(0, 3, (5,))
    torch.testing.assert_close(loaded(logits, target), other(logits, target))


def test_repair_adds_the_missing_terminals():
    for text in ("add(y, 1.0)", "square(fx)", "mul(-1.0, 1.0)"):
        tree = tree_from_string(text)
        names = {node.format() for node in repair(tree) if isinstance(node, gp.Terminal)}
        assert {"y", "fx"} <= names


def _run_gp(searcher: GeneticProgramming, generations: int, start: int = 0) -> list[list[str]]:
    out = []
    for g in range(start, start + generations):
        genomes = searcher.ask()
        out.append(genomes)
        searcher.tell(
            genomes, [None if i % 4 == 0 else len(s) / 100 + g for i, s in enumerate(genomes)]
        )
    return out


def test_gp_search_is_reproducible_resumable_and_leaves_random_alone():
    template = SymbolicLoss()
    first = GeneticProgramming(population=8)
    first.start(template, seed=3)
    random.seed(123)
    before = random.random()
    history = _run_gp(first, 5)
    random.seed(123)
    assert random.random() == before  # the search used its own stream
    again = GeneticProgramming(population=8)
    again.start(template, seed=3)
    assert _run_gp(again, 5) == history
    partial = GeneticProgramming(population=8)
    partial.start(template, seed=3)
    head = _run_gp(partial, 2)
    state = partial.state_dict()
    resumed = GeneticProgramming(population=8)
    resumed.start(template, seed=3)
    resumed.load_state_dict(state)
    assert head + _run_gp(resumed, 3, start=2) == history
    for genomes in history:
        for genome in genomes:
            tree = tree_from_string(genome)
            assert tree.height <= 10
            assert {"y", "fx"} <= {n.format() for n in tree if isinstance(n, gp.Terminal)}


def test_gp_needs_a_symbolic_loss_role():
    from learnreg.losses import TaylorLoss

    with pytest.raises(ConfigError, match="symbolic"):
        GeneticProgramming().start(TaylorLoss(), 0)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_a_forest_of_distinct_trees_equals_each_tree_alone(kind):
    """The population path (every height of every tree at once, learnreg.losses.forest)
    gives each tree's own value bit for bit, and each tree's own gradients for its node
    weights and its prediction slice, with distinct and repeated trees, a bare leaf and
    constant-only subtrees in one population."""
    trees = [str(t) for t in random_trees(9, seed=11)]
    trees += ["fx", "add(fx, mul(2.0, -1.0))", trees[0], trees[3]]
    num = 10 if kind == "classification" else 1
    losses = [SymbolicLoss(kind, num, expression=e, seed=i).double() for i, e in enumerate(trees)]
    g = torch.Generator().manual_seed(2)
    preds = torch.randn(len(losses), 16, num, generator=g, dtype=torch.float64)
    preds.requires_grad_(True)
    if kind == "classification":
        target = torch.randint(0, num, (16,), generator=g)
    else:
        target = torch.randn(16, 1, generator=g, dtype=torch.float64)
    together = SymbolicLoss.population_values(losses, preds, target)
    alone = torch.stack([loss(p, target) for loss, p in zip(losses, preds)])
    assert torch.equal(together, alone)
    scale = torch.arange(1.0, len(losses) + 1, dtype=torch.float64)  # distinct per tree
    inputs = [preds, *(loss.weights for loss in losses)]
    got = torch.autograd.grad((together * scale).sum(), inputs)
    want = torch.autograd.grad((alone * scale).sum(), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_forest_needs_an_operation_per_primitive_and_height_not_per_node():
    """The schedule's size: 16 distinct trees of up to 27 nodes (208 in all) take one
    gather and at most one operation per primitive at each height."""
    from learnreg.losses.forest import plan

    trees = tuple(str(t) for t in random_trees(16, seed=3))
    p = plan(trees)
    nodes = sum(len(SymbolicLoss(expression=t).nodes) for t in trees)
    operations = sum(len(level.ops) for level in p.levels)
    assert len(p.levels) == max(_height(t) for t in trees)
    assert all(len({name for name, _ in level.ops}) == len(level.ops) for level in p.levels)
    assert operations < nodes / 3


def _height(expression: str) -> int:
    return tree_from_string(expression).height
