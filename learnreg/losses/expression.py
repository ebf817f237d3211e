"""Expression trees over ``(y, f(x))`` for EvoMAL's symbolic losses: parsing, printing,
evaluation in torch or sympy, and the canonical form the GP search caches by.

An expression is written in prefix form, the way DEAP prints a tree:
``mul(-1.0, mul(y, log(fx)))``. Terminals are ``y`` (the target), ``fx`` (the prediction)
and numeric constants. Primitives are EvoMAL's, with its protected operators:

==========  =====  ==========================================
name        arity  value
==========  =====  ==========================================
add/sub/mul  2     a + b, a - b, a · b
aq           2     analytic quotient a / sqrt(1 + b²)
min/max      2     elementwise minimum / maximum
sign/abs     1     sign(a), |a|
square       1     a²
tanh         1     tanh(a)
log          1     log(clamp(|a|, 1e-7))
sqrt         1     sqrt(clamp(|a|, 1e-7))
==========  =====  ==========================================

Parsing never evaluates text: only the names above and numeric literals are accepted.

References:
    Raymond, Chen, Xue, Zhang, "Learning Symbolic Model-Agnostic Loss Functions via
    Meta-Learning", TPAMI 2023 (arXiv 2209.08907).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
import torch
from torch import Tensor

from learnreg.errors import ConfigError

EPS = 1e-7


@dataclass(frozen=True)
class Primitive:
    """One function node: its arity, its torch implementation and its sympy form."""

    name: str
    arity: int
    torch_fn: Callable[..., Tensor]
    sympy_fn: Callable[..., sympy.Expr]


PRIMITIVES: dict[str, Primitive] = {
    p.name: p
    for p in (
        Primitive("add", 2, torch.add, lambda a, b: a + b),
        Primitive("sub", 2, torch.sub, lambda a, b: a - b),
        Primitive("mul", 2, torch.mul, lambda a, b: a * b),
        Primitive(
            "aq", 2, lambda a, b: a * torch.rsqrt(1 + b * b), lambda a, b: a / sympy.sqrt(1 + b**2)
        ),
        Primitive("min", 2, torch.minimum, sympy.Min),
        Primitive("max", 2, torch.maximum, sympy.Max),
        Primitive("sign", 1, torch.sign, sympy.sign),
        Primitive("square", 1, torch.square, lambda a: a**2),
        Primitive("abs", 1, torch.abs, sympy.Abs),
        Primitive("tanh", 1, torch.tanh, sympy.tanh),
        Primitive(
            "log", 1, lambda a: torch.log(a.abs().clamp_min(EPS)), lambda a: sympy.log(sympy.Abs(a))
        ),
        Primitive(
            "sqrt",
            1,
            lambda a: torch.sqrt(a.abs().clamp_min(EPS)),
            lambda a: sympy.sqrt(sympy.Abs(a)),
        ),
    )
}
TERMINALS = ("y", "fx")
#: The symbols formulas print with, per task kind: the target and the prediction (a
#: probability in (0, 1] for classification, so ``log(|f(x)|)`` prints as ``log(f(x))``).
SYMBOLS = {
    "classification": (
        sympy.Symbol("y", nonnegative=True),
        sympy.Symbol("f(x)", positive=True),
    ),
    "regression": (sympy.Symbol("y", real=True), sympy.Symbol("f(x)", real=True)),
}

_TOKEN = re.compile(r"\s*(?:([A-Za-z_]\w*)|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(.))")


@dataclass(frozen=True)
class Node:
    """A node of a parsed expression: a primitive name, a terminal name or a constant."""

    name: str
    arity: int = 0
    value: float | None = None  # constants only


def parse(expression: str) -> list[Node]:
    """Parse a prefix expression into its nodes in prefix (DEAP) order.

    Raises:
        ConfigError: on unknown names, wrong arities or malformed text.
    """
    tokens = _tokenize(expression)
    nodes: list[Node] = []
    pos = _parse_node(tokens, 0, nodes, expression)
    if pos != len(tokens):
        raise ConfigError(f"expression {expression!r}: unexpected {tokens[pos][1]!r} after the end")
    return nodes


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN.finditer(expression.strip()):
        name, number, other = match.groups()
        if name is not None:
            tokens.append(("name", name))
        elif number is not None:
            tokens.append(("number", number))
        elif other is not None:
            if other not in "(),":
                raise ConfigError(f"expression {expression!r}: unexpected character {other!r}")
            tokens.append(("punct", other))
    if not tokens:
        raise ConfigError("empty expression; e.g. `square(sub(fx, y))`")
    return tokens


def _parse_node(tokens, pos: int, out: list[Node], text: str) -> int:
    if pos >= len(tokens):
        raise ConfigError(f"expression {text!r} ends early")
    kind, token = tokens[pos]
    if kind == "number":
        out.append(Node(token, 0, float(token)))
        return pos + 1
    if kind != "name":
        raise ConfigError(f"expression {text!r}: expected a name or a number, got {token!r}")
    if token in TERMINALS:
        out.append(Node(token))
        return pos + 1
    if token not in PRIMITIVES:
        valid = ", ".join([*PRIMITIVES, *TERMINALS])
        raise ConfigError(f"expression {text!r}: unknown name {token!r}; valid names: {valid}")
    arity = PRIMITIVES[token].arity
    out.append(Node(token, arity))
    pos = _expect(tokens, pos + 1, "(", text)
    for i in range(arity):
        pos = _parse_node(tokens, pos, out, text)
        pos = _expect(tokens, pos, "," if i < arity - 1 else ")", text)
    return pos


def _expect(tokens, pos: int, punct: str, text: str) -> int:
    if pos >= len(tokens) or tokens[pos] != ("punct", punct):
        got = tokens[pos][1] if pos < len(tokens) else "the end"
        raise ConfigError(f"expression {text!r}: expected {punct!r}, got {got!r} (wrong arity?)")
    return pos + 1


def format_nodes(nodes: Sequence[Node]) -> str:
    """The prefix string of ``nodes`` (inverse of :func:`parse`)."""

    def build(i: int) -> tuple[str, int]:
        node = nodes[i]
        if node.arity == 0:
            return node.name, i + 1
        args, j = [], i + 1
        for _ in range(node.arity):
            text, j = build(j)
            args.append(text)
        return f"{node.name}({', '.join(args)})", j

    return build(0)[0]


def evaluate(nodes: Sequence[Node], y, fx, weights: Sequence | None, ops: str = "torch"):
    """Evaluate the tree on ``(y, fx)``, each node's output times its weight.

    Args:
        nodes: the parsed tree (prefix order).
        y, fx: target and prediction (tensors, or sympy symbols with ``ops="sympy"``).
        weights: one per node (None: all 1).
        ops: ``torch`` or ``sympy``.
    """
    stack: list = []
    for i in range(len(nodes) - 1, -1, -1):  # reversed prefix order: children before parents
        node = nodes[i]
        if node.arity == 0:
            value = y if node.name == "y" else fx if node.name == "fx" else _constant(node, ops, y)
        else:
            args = [stack.pop() for _ in range(node.arity)]
            prim = PRIMITIVES[node.name]
            value = (prim.torch_fn if ops == "torch" else prim.sympy_fn)(*args)
        stack.append(value if weights is None else weights[i] * value)
    return stack.pop()


def _constant(node: Node, ops: str, like):
    if ops == "sympy":
        return (
            sympy.Integer(int(node.value)) if node.value.is_integer() else sympy.Float(node.value)
        )
    return _tensor_constant(node.value, like.dtype, like.device)


@functools.lru_cache(maxsize=256)
def _tensor_constant(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(value, dtype=dtype, device=device)  # shared; never written to


def canonical(expression: str, kind: str = "classification") -> str:
    """A canonical form of the unweighted expression (sympy's automatic simplification),
    equal for trees that differ only by commutativity, duplicated work and the like. The
    fitness cache of the GP search is keyed by it."""
    return str(evaluate(parse(expression), *SYMBOLS[kind], None, ops="sympy"))
