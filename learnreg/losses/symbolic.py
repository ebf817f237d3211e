"""EvoMAL's symbolic losses: expression trees compiled to torch with a weight on every node.

An expression is written in prefix form, the way DEAP prints a tree:
``mul(-1.0, mul(y, log(fx)))``. Terminals are ``y`` (the target; one-hot for
classification), ``fx`` (the prediction; softmax probabilities for classification) and
numeric constants (the GP search uses +1 and -1). Primitives are EvoMAL's, with its
protected operators:

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

Compiled, every node's output is multiplied by a learnable weight (initialized to
``1 + 0.001·N(0, 1)``), which EvoMAL's local search tunes by unrolled differentiation. The
reference code leaves the root's weight unused; here the root is weighted too, so the
overall scale of the loss (an implicit learning rate) is learnable as well. Parsing never
evaluates text: only the names above and numeric literals are accepted.

References:
    Raymond, Chen, Xue, Zhang, "Learning Symbolic Model-Agnostic Loss Functions via
    Meta-Learning", TPAMI 2023 (arXiv 2209.08907).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import sympy
import torch
from torch import Tensor, nn

from learnreg.errors import ConfigError
from learnreg.losses.elementwise import ElementwiseLoss
from learnreg.registry import register

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
DEFAULT_EXPRESSIONS = {
    "classification": "mul(-1.0, mul(y, log(fx)))",  # cross-entropy
    "regression": "square(sub(fx, y))",  # squared error
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


@register("loss", "symbolic")
class SymbolicLoss(ElementwiseLoss):
    """A loss given by an expression tree over (y, f(x)) with a weight on every node.

    Classification: ``y`` one-hot, ``f(x)`` softmax probabilities; the loss is the batch
    mean of the sum over classes of the tree. Regression: ``y`` target, ``f(x)`` raw
    prediction; the batch mean of the sum over outputs.

    Args:
        kind: ``classification`` or ``regression`` (injected).
        num_classes: classes, or regression outputs (injected).
        expression: the tree in prefix form (default: cross-entropy, or squared error).
        learnable: node weights are meta-parameters initialized to ``1 + 0.001·N(0,1)``
            (EvoMAL); False fixes them at exactly 1 (GP without local search).
        seed: seeds the weights' initial noise.
    """

    value_args = ("seed",)  # only sets initial weights; trees with one expression vmap together

    def __init__(
        self,
        kind: Literal["classification", "regression"] = "classification",
        num_classes: int = 10,
        expression: str | None = None,
        learnable: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        self.kind, self.num_classes, self.learnable = kind, num_classes, learnable
        self.set_expression(
            DEFAULT_EXPRESSIONS[kind] if expression is None else expression, seed=seed
        )

    def set_expression(
        self, expression: str, weights: Sequence[float] | Tensor | None = None, seed: int = 0
    ) -> None:
        """Replace the tree (and its weights: given, or freshly initialized from ``seed``)."""
        self.nodes = parse(expression)
        self.expression = format_nodes(self.nodes)
        self.init_args.update(expression=self.expression, seed=seed)
        if weights is None:
            generator = torch.Generator().manual_seed(seed)
            noise = 0.001 * torch.randn(len(self.nodes), generator=generator)
            weights = 1 + noise if self.learnable else torch.ones(len(self.nodes))
        weights = torch.as_tensor(weights, dtype=torch.float32).detach().clone()
        if weights.shape != (len(self.nodes),):
            raise ValueError(f"{len(self.nodes)} nodes need as many weights, got {weights.shape}")
        old = getattr(self, "weights", None)
        device = old.device if old is not None else weights.device
        self.weights = nn.Parameter(weights.to(device), requires_grad=self.learnable)
        self.register_buffer(
            "code", torch.tensor(list(self.expression.encode()), dtype=torch.uint8)
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        code = state_dict.get(prefix + "code")
        if code is not None:
            expression = bytes(code.tolist()).decode()
            if expression != self.expression:  # a checkpoint of another tree: rebuild first
                self.set_expression(expression, state_dict[prefix + "weights"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    population_parameter = "weights"

    def population_key(self) -> tuple:
        """Trees of one expression differ only in their node weights."""
        return (self.kind, self.expression)

    def elementwise(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The weighted tree at every (target, prediction) element, broadcast to their shape."""
        return self.elementwise_at(self.weights, target, prediction)

    def elementwise_at(self, values: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        """:meth:`elementwise` with node weights ``values`` (``(..., nodes)``, leading
        dimensions broadcast against the elements')."""
        weights = values.to(prediction.dtype).unbind(-1)
        value = evaluate(self.nodes, target, prediction, weights)
        shape = prediction.shape  # the training path: a target of the prediction's shape
        if target.shape != shape[len(shape) - target.dim() :]:  # plots pass grids
            shape = torch.broadcast_shapes(target.shape, prediction.shape)
        return value if value.shape == shape else value.expand(shape)

    def formula(self, digits: int = 2, simplify: bool = True) -> sympy.Expr:
        """The loss as a sympy expression in ``y`` and ``f(x)``, weights rounded to ``digits``.

        Weights within rounding of 1 print as 1. ``simplify`` runs ``sympy.simplify`` on
        trees of up to 60 nodes (larger ones keep sympy's automatic canonical form).
        """
        weights = []
        for w in self.weights.detach().tolist():
            rounded = round(w, digits)
            weights.append(sympy.Integer(1) if rounded == 1 else sympy.Float(rounded, digits + 1))
        expr = evaluate(self.nodes, *SYMBOLS[self.kind], weights, ops="sympy")
        return sympy.simplify(expr) if simplify and len(self.nodes) <= 60 else expr

    def describe(self) -> str:
        reduce = "sum over classes" if self.kind == "classification" else "sum over outputs"
        return f"loss = mean over batch of {reduce} of {self.formula()}   [tree: {self.expression}]"
