"""EvoMAL's symbolic losses: expression trees compiled to torch with a weight on every node.

The trees (their primitives, parser and evaluator) are :mod:`learnreg.losses.expression`.
Terminals are ``y`` (the target; one-hot for classification) and ``fx`` (the prediction;
softmax probabilities for classification). Compiled, every node's output is multiplied by
a learnable weight (initialized to ``1 + 0.001·N(0, 1)``), which EvoMAL's local search
tunes by unrolled differentiation. The reference code leaves the root's weight unused;
here the root is weighted too, so the overall scale of the loss (an implicit learning
rate) is learnable as well.

References:
    Raymond, Chen, Xue, Zhang, "Learning Symbolic Model-Agnostic Loss Functions via
    Meta-Learning", TPAMI 2023 (arXiv 2209.08907).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sympy
import torch
from torch import Tensor, nn

from learnreg.losses.elementwise import ElementwiseLoss
from learnreg.losses.expression import PRIMITIVES, SYMBOLS, canonical, evaluate, format_nodes, parse
from learnreg.losses.forest import evaluate_forest
from learnreg.registry import register

# the tree helpers lived here before learnreg.losses.expression; their names still resolve
__all__ = ["DEFAULT_EXPRESSIONS", "PRIMITIVES", "SYMBOLS", "SymbolicLoss", "canonical", "parse"]

DEFAULT_EXPRESSIONS = {
    "classification": "mul(-1.0, mul(y, log(fx)))",  # cross-entropy
    "regression": "square(sub(fx, y))",  # squared error
}


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

    @staticmethod
    def population_values(losses: list, preds: Tensor, target: Tensor) -> Tensor:
        """Each loss on its own slice of ``preds`` (``(P, N, ...)``), shape ``(P,)``.

        Trees of one kind, distinct or not, are evaluated together one height at a time
        (:mod:`learnreg.losses.forest`: an operation per primitive and height, not two per
        node of every tree); anything else as :class:`ElementwiseLoss` does."""
        first = losses[0]
        if not all(isinstance(x, SymbolicLoss) and x.kind == first.kind for x in losses):
            return ElementwiseLoss.population_values(losses, preds, target)
        targets, elements = first.elements(preds, target)
        weights = [x.weights for x in losses]
        return first.reduce(
            evaluate_forest([x.expression for x in losses], targets, elements, weights)
        )

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
