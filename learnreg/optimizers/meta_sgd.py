"""Meta-SGD: a learned learning rate for every parameter coordinate (Li et al.,
"Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv 1707.09835)."""

from __future__ import annotations

import math

import torch
from torch import nn

from learnreg.errors import ConfigError
from learnreg.optimizers.flat import FlatRule
from learnreg.registry import register


@register("optimizer", "meta_sgd")
class MetaSGD(FlatRule):
    """Meta-SGD: a meta-learned learning rate for every parameter coordinate.

    ``θ ← θ − α ⊙ g`` with ``α`` of the model's own shape.

    ``α`` is one flat vector over all parameters (in the model's parameter order), so
    an update is one elementwise product. Only the shapes are exported, not the model.

    Args:
        shapes: the parameter shapes, in order (from ``model`` when omitted).
        lr: the initial learning rate of every coordinate.
        model: a built model whose parameter shapes to use (injected by configs).
    """

    chunk_size = None

    def __init__(
        self,
        shapes: list[list[int]] | None = None,
        lr: float = 0.01,
        model: nn.Module | None = None,
    ):
        super().__init__()
        if shapes is None:
            if model is None:
                raise ConfigError("meta_sgd needs the parameter shapes: pass `shapes` or a `model`")
            shapes = [list(p.shape) for p in model.parameters()]
        self.shapes = [list(s) for s in shapes]
        self.lr = nn.Parameter(torch.full((sum(math.prod(s) for s in self.shapes),), float(lr)))
        self.init_args = {"shapes": self.shapes, "lr": lr}  # exportable: no model object
        self.nominal_lr = float(lr)

    def check_shapes(self, shapes: list[list[int]]) -> None:
        if shapes != self.shapes:
            raise ConfigError(
                f"meta_sgd was built for parameter shapes {self.shapes}, got {shapes}; "
                "its learning rates belong to one architecture"
            )

    def update(self, grad, param, slots, aux, step, where):
        return -self.weights(self.lr, grad.dtype)[where] * grad, {}
