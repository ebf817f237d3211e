"""Many expression trees evaluated together, one height at a time.

A GP population holds mostly distinct trees, so grouping trees of one expression (one
walk at their stacked weights) rarely applies to it; walking each tree costs two
operations per node (its primitive and its weight) in the forward pass and as many in
the backward pass, hundreds of small kernels per step for a population of 16. Every
primitive is elementwise, so the nodes of one height in all trees that apply one
primitive are one operation on their stacked arguments, and the arguments of a whole
height are one gather: the operations per step grow with (heights × primitives present),
not with the population's size.

:func:`plan` turns the trees into that schedule once (cached by their expressions); each
step :func:`evaluate_forest` runs it. Values are those of
:func:`learnreg.losses.expression.evaluate` on each tree alone, bit for bit (the same
elementwise operations on the same values, each node's weight applied last).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from learnreg.losses.expression import PRIMITIVES, Node, parse

_LEAVES = ("y", "fx", "const")  # the order of the leaf rows in the value table


@dataclass(frozen=True, eq=False)  # identity: plans are cached objects
class Level:
    """The nodes of one height. ``gather`` lists the value-table rows of their arguments,
    primitive by primitive (``ops``: name, node count), argument by argument; ``weights``
    the nodes' global weight indices in that order."""

    gather: Tensor
    ops: tuple[tuple[str, int], ...]
    weights: Tensor

    @property
    def sizes(self) -> list[int]:
        """The rows of ``gather`` per argument, in order."""
        return [count for name, count in self.ops for _ in range(PRIMITIVES[name].arity)]


@dataclass(frozen=True, eq=False)  # identity: plans are cached objects
class Plan:
    """The schedule of a forest. The value table's rows are the leaves (every ``y``,
    then every ``fx``, then the constants), then each level's nodes in its order."""

    num_y: int
    fx_tree: Tensor  # for each fx leaf, the tree (the prediction slice) it reads
    constants: tuple[float, ...]
    leaf_weights: Tensor
    levels: tuple[Level, ...]
    roots: Tensor  # each tree's root row


@functools.lru_cache(maxsize=64)
def plan(expressions: tuple[str, ...]) -> Plan:
    """The schedule of the trees ``expressions`` (prefix strings)."""
    # every node by its global index (trees one after another, prefix order within):
    # (tree, node, height, children's global indices)
    nodes: list = []
    roots = []
    for t, tree in enumerate(parse(e) for e in expressions):
        base, heights = len(nodes), {}
        roots.append(base)
        nodes.extend([None] * len(tree))
        for i, children in _children(tree):
            heights[i] = 1 + max(heights[c] for c in children) if children else 0
            nodes[base + i] = (t, tree[i], heights[i], [base + c for c in children])

    def kind(g: int) -> str:
        node = nodes[g][1]
        return node.name if node.arity or node.name in ("y", "fx") else "const"

    def order(g: int) -> tuple:  # by height, leaves by kind, primitives by name
        k = kind(g)
        return (nodes[g][2], _LEAVES.index(k) if k in _LEAVES else len(_LEAVES), k, g)

    by_height: dict[int, list[int]] = {}
    for g in sorted(range(len(nodes)), key=order):
        by_height.setdefault(nodes[g][2], []).append(g)
    leaves = by_height.pop(0)
    row = {g: r for r, g in enumerate(leaves)}
    levels = []
    for height in sorted(by_height):
        members = by_height[height]  # each primitive's nodes contiguous
        ops = tuple(
            (name, sum(kind(g) == name for g in members))
            for name in dict.fromkeys(map(kind, members))
        )
        gather = []
        for name, _ in ops:
            same = [g for g in members if kind(g) == name]
            for a in range(PRIMITIVES[name].arity):
                gather += [row[nodes[g][3][a]] for g in same]
        levels.append(Level(torch.tensor(gather), ops, torch.tensor(members)))
        row.update({g: len(row) + r for r, g in enumerate(members)})
    return Plan(
        num_y=sum(kind(g) == "y" for g in leaves),
        fx_tree=torch.tensor([nodes[g][0] for g in leaves if kind(g) == "fx"], dtype=torch.long),
        constants=tuple(nodes[g][1].value for g in leaves if kind(g) == "const"),
        leaf_weights=torch.tensor(leaves),
        levels=tuple(levels),
        roots=torch.tensor([row[g] for g in roots]),
    )


def evaluate_forest(
    expressions: Sequence[str], y: Tensor, fx: Tensor, weights: Sequence[Tensor]
) -> Tensor:
    """Each tree at the target ``y`` and its own prediction slice, every node's output
    times its weight.

    Args:
        expressions: G trees in prefix form.
        y: the target elements, shared (broadcast against a slice of ``fx``).
        fx: the predictions, ``(G, *shape)``: tree g reads ``fx[g]``.
        weights: G tensors, one weight per node of each tree (prefix order).

    Returns:
        ``(G, *shape)``: tree g's value at every element.
    """
    p = _on(plan(tuple(expressions)), fx.device)
    shape, ones = fx.shape[1:], (1,) * (fx.dim() - 1)
    flat = torch.cat([w.reshape(-1) for w in weights]).to(fx.dtype)
    constants = torch.tensor(p.constants, dtype=fx.dtype, device=fx.device)
    leaves = torch.cat(
        [
            y.to(fx.dtype).expand(p.num_y, *shape),
            fx.index_select(0, p.fx_tree),
            constants.view(-1, *ones).expand(-1, *shape),
        ]
    )
    values = leaves * flat[p.leaf_weights].view(-1, *ones)
    for level in p.levels:
        # one gather per height, split into the primitives' arguments (one backward each)
        args = iter(values.index_select(0, level.gather).split(level.sizes))
        outputs = [
            PRIMITIVES[name].torch_fn(*(next(args) for _ in range(PRIMITIVES[name].arity)))
            for name, _ in level.ops
        ]
        block = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        values = torch.cat([values, block * flat[level.weights].view(-1, *ones)])
    return values.index_select(0, p.roots)


@functools.lru_cache(maxsize=64)
def _on(p: Plan, device: torch.device) -> Plan:
    """The plan with its index tensors on ``device`` (moved once, not every step)."""
    if device.type == "cpu":
        return p
    move = functools.partial(torch.Tensor.to, device=device)
    return Plan(
        p.num_y,
        move(p.fx_tree),
        p.constants,
        move(p.leaf_weights),
        tuple(Level(move(v.gather), v.ops, move(v.weights)) for v in p.levels),
        move(p.roots),
    )


def _children(nodes: Sequence[Node]):
    """(index, child indices) of every node, children before their parents (reversed
    prefix order, as :func:`learnreg.losses.expression.evaluate` walks a tree)."""
    out, stack = [], []
    for i in range(len(nodes) - 1, -1, -1):
        out.append((i, [stack.pop() for _ in range(nodes[i].arity)]))
        stack.append(i)
    return out
